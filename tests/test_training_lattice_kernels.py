"""The Triton kernels of the slack-CTC lattice against the PyTorch loops, run by Triton's interpreter on the CPU.

On CUDA the losses use the kernels. Triton's interpreter runs the same kernel code on CPU tensors, but only when
TRITON_INTERPRET=1 is set before Triton is first imported, so `test_kernels_under_the_interpreter` runs this
file's `interpreted_*` tests in a fresh process with it set. Skipped where Triton is not installed.
"""

import os
import subprocess
import sys

import pytest
import torch

from hf_mdlm.training import lattice_kernels, losses
from test_training_losses import make_case

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in the interpreter's own process")

CASES = [  # seed, batch, seq, vocab, p_slack, p_mask, other_pins
    (0, 3, 12, 6, 0.3, 0.7, False),
    (1, 4, 20, 5, 0.5, 0.5, True),  # pins away from the anchor: -inf emissions inside the band
    (2, 2, 9, 4, 0.0, 1.0, False),  # no slack: a band of width 1
    (3, 5, 16, 7, 0.8, 0.3, True),  # mostly slack, most positions pinned
    (4, 2, 40, 6, 0.5, 0.6, False),  # a band wider than the 16-state minimum block
]


def test_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                             "interpreted"], env=env, capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def _lattice(case, dtype):
    seed, batch, seq, vocab, p_slack, p_mask, other_pins = case
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(seed, batch, seq, vocab, p_slack, p_mask,
                                                                    other_pins=other_pins, dtype=dtype)
    canvas = losses._Canvas(inputs, clean, loss_mask, mask_id, slack_id)
    e_target, e_slack, *_ = losses._band_emissions(canvas, logits, slack_id)
    return e_target.to(dtype), e_slack.to(dtype), canvas.num_slack


def _same(a, b, tol):
    """Two lattices of log-probabilities agree: -inf (unreachable states) at the same places, no NaN or +inf in
    either, and the finite values within `tol`."""
    for lattice in (a, b):
        assert not torch.isnan(lattice).any() and not torch.isposinf(lattice).any()
    assert torch.equal(torch.isneginf(a), torch.isneginf(b))
    finite = torch.isfinite(a)
    assert torch.allclose(a[finite], b[finite], rtol=tol, atol=tol)


def test_the_lattice_comparison_catches_nan_and_inf():
    good = torch.tensor([[-1.0, float("-inf"), -3.0]])
    _same(good, good.clone(), 1e-12)
    for planted in (float("nan"), float("inf"), float("-inf"), -1.5):
        bad = good.clone()
        bad[0, 0] = planted
        with pytest.raises(AssertionError):
            _same(bad, good, 1e-12)


@needs_interpreter
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_interpreted_kernels_match_the_pytorch_recursions(case, dtype, monkeypatch):
    e_target, e_slack, num_slack = _lattice(case, dtype)
    assert e_target.shape[-1] > 1 or case[4] == 0.0
    alpha, log_scale = losses._forward_alpha(e_target, e_slack)
    beta = losses._backward_beta(e_target, e_slack, num_slack, log_scale)
    monkeypatch.setattr(lattice_kernels, "usable", lambda tensor: True)  # the kernels, on CPU tensors
    alpha_k, log_scale_k = losses._forward_alpha(e_target, e_slack)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert alpha_k.shape == alpha.shape and log_scale_k.shape == log_scale.shape
    _same(alpha_k, alpha, tol)
    _same(log_scale_k, log_scale, tol)
    beta_k = losses._backward_beta(e_target, e_slack, num_slack, log_scale)
    _same(beta_k, beta, tol)


@needs_interpreter
def test_interpreted_loss_and_gradient_through_the_kernels(monkeypatch):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(5, 3, 14, 6, 0.4, 0.6, other_pins=True)

    def loss_and_grad():
        x = logits.clone().requires_grad_(True)
        loss = losses.slack_ctc_loss(x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id,
                                     loss_mask=loss_mask)
        (loss * torch.tensor([1.0, 2.0, 3.0], dtype=loss.dtype)).sum().backward()
        return loss.detach(), x.grad

    reference = loss_and_grad()
    calls = []
    monkeypatch.setattr(lattice_kernels, "usable", lambda tensor: calls.append(tensor.shape) or True)
    through_kernels = loss_and_grad()
    assert len(calls) == 2  # forward and backward both took the kernel path
    torch.testing.assert_close(through_kernels[0], reference[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(through_kernels[1], reference[1], rtol=1e-12, atol=1e-12)


def test_only_cuda_tensors_take_the_kernels():
    assert not lattice_kernels.usable(torch.zeros(2, 3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seq,slack", [(64, 8), (1024, 64), (700, 300)])
def test_cuda_kernels_match_the_cpu_loss_and_gradient(seq, slack):
    """The whole loss on CUDA (kernels) against the CPU's PyTorch loops in float64, bf16 logits as in training."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(seq)
    batch, vocab = 3, 50
    mask_id, slack_id = vocab - 2, vocab - 1
    clean = torch.randint(0, vocab - 2, (batch, seq), generator=g)
    for row in range(batch):
        clean[row, torch.randperm(seq, generator=g)[: slack - row]] = slack_id  # a different k per row
    loss_mask = torch.ones(batch, seq, dtype=torch.bool)
    loss_mask[1, seq - seq // 4:] = False  # a shorter canvas
    inputs = torch.where(torch.rand(batch, seq, generator=g) < 0.6, mask_id, clean)
    logits = torch.randn(batch, seq, vocab, generator=g).to(torch.bfloat16)
    kwargs = dict(mask_token_id=mask_id, slack_token_id=slack_id)

    def loss_and_grad(device, dtype):
        x = logits.to(device=device, dtype=dtype).requires_grad_(True)
        loss = losses.slack_ctc_loss(x, inputs.to(device), clean.to(device), loss_mask=loss_mask.to(device), **kwargs)
        loss.sum().backward()
        return loss.detach().double().cpu(), x.grad.double().cpu()

    assert lattice_kernels.usable(torch.zeros(1, 1, 1, device="cuda"))
    ref_loss, ref_grad = loss_and_grad("cpu", torch.float64)
    loss, grad = loss_and_grad("cuda", torch.bfloat16)  # float32 lattice, bf16 gradient
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=1e-3)
    # the gradient is bf16: its rounding (2^-7 relative, at most 2 ulps) plus the float32 lattice's cancellation
    # error; the earlier atol of 2e-3 let through 10% errors at this vocabulary (gradients of ~1/50)
    torch.testing.assert_close(grad, ref_grad, rtol=2 * 2**-7, atol=1e-6)
