"""Tests for hf_mdlm.training.losses: masked CE, slack-CTC (both backward variants), diffusion_loss.

The reference for slack-CTC is an explicit enumeration of the alignment set A
(every placement of the k slack tokens on the canvas, the targets filling the
rest in order, kept when it agrees with the pins), differentiated by autograd
in float64.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mdlm.training import losses
from hf_mdlm.training.losses import DiffusionLoss, diffusion_loss, masked_cross_entropy, slack_ctc_loss
from hf_mdlm.training.canvas import CosineSchedule, LinearSchedule

BACKWARDS = ["analytic", "autograd"]


# ----------------------------------------------------------------------------- references


def _canvas_lists(row_ids, row_mask):
    return [int(row_ids[p]) for p in range(len(row_mask)) if row_mask[p]]


def brute_slack_ctc(logits, input_ids, clean_ids, loss_mask, mask_id, slack_id, shift=0):
    """-log sum over A by enumerating slack placements; float64, differentiable. With `shift` 1 (a next-token
    model) canvas position p emits from the model's output at p - 1 (position 0 from its own)."""
    out = []
    for b in range(logits.shape[0]):
        positions = [p for p in range(logits.shape[1]) if loss_mask[b, p]]
        canvas = [int(clean_ids[b, p]) for p in positions]
        pins = [int(input_ids[b, p]) for p in positions]
        y = [v for v in canvas if v != slack_id]
        length, k = len(canvas), len(canvas) - len(y)
        logp = torch.log_softmax(logits[b].double(), dim=-1)
        terms = []
        for slots in itertools.combinations(range(length), k):
            targets = iter(y)
            align = [slack_id if j in slots else next(targets) for j in range(length)]
            if any(pin != mask_id and pin != a for pin, a in zip(pins, align)):
                continue
            score = logits.new_zeros((), dtype=torch.float64)
            for j, (pin, a) in enumerate(zip(pins, align)):
                if pin == mask_id:
                    score = score + logp[max(positions[j] - shift, 0), a]
            terms.append(score)
        assert terms, "reference: infeasible case"
        out.append(-torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out)


def _merge_repeats_drop_blank(seq, blank):
    merged = [v for j, v in enumerate(seq) if j == 0 or v != seq[j - 1]]
    return [v for v in merged if v != blank]


def brute_by_product(logits, input_ids, clean_ids, loss_mask, mask_id, slack_id, collapse):
    """-log sum over every canvas in V^L that matches the pins and collapses to y (tiny cases only)."""
    out = []
    vocab = logits.shape[-1]
    for b in range(logits.shape[0]):
        positions = [p for p in range(logits.shape[1]) if loss_mask[b, p]]
        canvas = [int(clean_ids[b, p]) for p in positions]
        pins = [int(input_ids[b, p]) for p in positions]
        # The labels: the anchor's own image under the collapse (standard CTC also merges its runs).
        y = [v for v in canvas if v != slack_id] if collapse == "slack" else _merge_repeats_drop_blank(canvas, slack_id)
        logp = torch.log_softmax(logits[b].double(), dim=-1)
        choices = [range(vocab) if pin == mask_id else [pin] for pin in pins]
        terms = []
        for align in itertools.product(*choices):
            if collapse == "slack":
                image = [v for v in align if v != slack_id]
            else:
                image = _merge_repeats_drop_blank(list(align), slack_id)
            if image != y:
                continue
            score = logits.new_zeros((), dtype=torch.float64)
            for j, (pin, a) in enumerate(zip(pins, align)):
                if pin == mask_id:
                    score = score + logp[positions[j], a]
            terms.append(score)
        assert terms, "reference: infeasible case"
        out.append(-torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out)


# ----------------------------------------------------------------------------- random cases


def make_case(seed, batch, seq, vocab, p_slack, p_mask, other_pins=False, slack_first=False, dtype=torch.float64):
    """A random feasible batch.

    The canvas of each row is a random, possibly non-contiguous, subset of the
    positions after a prompt.  Targets come from a small alphabet so repeats are
    common.  With ``other_pins`` the unmasked canvas positions are pinned to a
    random alignment of y other than the anchor (still feasible).
    """
    g = torch.Generator().manual_seed(seed)
    if slack_first:
        slack_id, mask_id = 0, 1
    else:
        slack_id, mask_id = vocab - 1, vocab - 2
    regular = [v for v in range(vocab) if v not in (slack_id, mask_id)]
    clean = torch.randint(0, vocab, (batch, seq), generator=g)  # prompt/padding: anything
    loss_mask = torch.zeros(batch, seq, dtype=torch.bool)
    inputs = clean.clone()
    for b in range(batch):
        prompt = int(torch.randint(0, max(1, seq // 3) + 1, (), generator=g))
        loss_mask[b, prompt:] = torch.rand(seq - prompt, generator=g) < 0.85
        positions = loss_mask[b].nonzero().flatten().tolist()
        canvas = []
        for _ in positions:
            if float(torch.rand((), generator=g)) < p_slack:
                canvas.append(slack_id)
            else:
                canvas.append(regular[int(torch.randint(0, len(regular), (), generator=g))])
        pinned_values = list(canvas)
        if other_pins and canvas:
            y = [v for v in canvas if v != slack_id]
            k = len(canvas) - len(y)
            slots = set(torch.randperm(len(canvas), generator=g)[:k].tolist())
            it = iter(y)
            pinned_values = [slack_id if j in slots else next(it) for j in range(len(canvas))]
        for p, c, pin in zip(positions, canvas, pinned_values):
            clean[b, p] = c
            masked = float(torch.rand((), generator=g)) < p_mask
            inputs[b, p] = mask_id if masked else pin
        # Non-canvas input tokens are unconstrained (the slack/mask ids may occur there).
        outside = ~loss_mask[b]
        inputs[b, outside] = torch.randint(0, vocab, (int(outside.sum()),), generator=g)
    logits = (torch.randn(batch, seq, vocab, generator=g, dtype=torch.float64) * 2.0).to(dtype)
    return logits, inputs, clean, loss_mask, mask_id, slack_id


def _loss_and_grad(fn, logits, weights):
    logits = logits.detach().clone().requires_grad_(True)
    value = fn(logits)
    if not value.requires_grad:  # e.g. the reference when nothing is masked
        return value.detach(), torch.zeros_like(logits)
    (grad,) = torch.autograd.grad((value * weights).sum(), logits, allow_unused=True, materialize_grads=True)
    return value.detach(), grad


def _assert_close(a, b, tol=1e-8):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


case_params = dict(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    seq=st.integers(1, 10),
    vocab=st.integers(4, 6),
    p_slack=st.sampled_from([0.0, 0.2, 0.4, 0.7]),
    p_mask=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    other_pins=st.booleans(),
    slack_first=st.booleans(),
)


# ----------------------------------------------------------------------------- brute force


def test_placement_enumeration_equals_product_enumeration():
    # The reference itself: enumerating slack placements is the same set as
    # enumerating V^L and keeping the canvases that collapse to y.
    for seed in range(6):
        case = make_case(seed, 2, 6, 4, 0.35, 0.6, other_pins=seed % 2 == 0)
        logits, inputs, clean, loss_mask, mask_id, slack_id = case
        a = brute_slack_ctc(logits, inputs, clean, loss_mask, mask_id, slack_id)
        b = brute_by_product(logits, inputs, clean, loss_mask, mask_id, slack_id, "slack")
        _assert_close(a, b, 1e-12)


@pytest.mark.parametrize("backward", BACKWARDS)
@settings(max_examples=80, deadline=None)
@given(**case_params)
def test_slack_ctc_matches_brute_force(backward, seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(
        seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first
    )
    weights = torch.rand(batch, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.5
    fast = _loss_and_grad(
        lambda x: slack_ctc_loss(
            x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, _backward=backward
        ),
        logits,
        weights,
    )
    ref = _loss_and_grad(
        lambda x: brute_slack_ctc(x, inputs, clean, loss_mask, mask_id, slack_id), logits, weights
    )
    assert fast[0].dtype == torch.float64
    _assert_close(fast[0], ref[0])
    _assert_close(fast[1], ref[1])


@settings(max_examples=40, deadline=None)
@given(**case_params)
def test_next_token_alignment_matches_brute_force(seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first):
    """A next-token model's emissions, read through logits_for_tokens, give the slack-CTC (and CE) of the canvas
    whose position p emits from output p - 1: values and gradients against the enumeration."""
    from types import SimpleNamespace

    from hf_mdlm.generation_mdlm import logits_for_tokens

    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(
        seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first
    )
    config = SimpleNamespace(prediction_shift=1)
    weights = torch.rand(batch, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.5
    fast = _loss_and_grad(lambda x: slack_ctc_loss(logits_for_tokens(x, config), inputs, clean, mask_token_id=mask_id,
                                                   slack_token_id=slack_id, loss_mask=loss_mask), logits, weights)
    ref = _loss_and_grad(lambda x: brute_slack_ctc(x, inputs, clean, loss_mask, mask_id, slack_id, shift=1),
                         logits, weights)
    _assert_close(fast[0], ref[0])
    _assert_close(fast[1], ref[1])
    masked = loss_mask & (inputs == mask_id)
    ce = masked_cross_entropy(logits_for_tokens(logits, config), clean, masked)
    logp = torch.log_softmax(logits.double(), -1)
    for b in range(batch):
        expected = sum(-logp[b, max(p - 1, 0), clean[b, p]] for p in range(seq) if masked[b, p])
        _assert_close(ce[b], torch.as_tensor(expected, dtype=torch.float64))


def test_slack_ctc_repeated_targets_hand_case():
    # Canvas [a, a, slack], all masked: A = {a a s, a s a, s a a}.
    logits = torch.randn(1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, slack, mask = 0, 3, 2
    clean = torch.tensor([[a, a, slack]])
    inputs = torch.full_like(clean, mask)
    lm = torch.ones(1, 3, dtype=torch.bool)
    lp = torch.log_softmax(logits[0], -1)
    expected = -torch.logsumexp(
        torch.stack(
            [
                lp[0, a] + lp[1, a] + lp[2, slack],
                lp[0, a] + lp[1, slack] + lp[2, a],
                lp[0, slack] + lp[1, a] + lp[2, a],
            ]
        ),
        0,
    )
    for backward in BACKWARDS:
        got = slack_ctc_loss(logits, inputs, clean, mask_token_id=mask, slack_token_id=slack, loss_mask=lm, _backward=backward)
        _assert_close(got[0], expected, 1e-12)


# ----------------------------------------------------------------------------- against torch's ctc_loss


def _doubled_frame_ctc(logits, inputs, clean, loss_mask, mask_id, slack_id):
    """Slack-CTC through F.ctc_loss: every canvas position is followed by a frame forced to blank.

    With a blank between any two canvas positions, standard CTC can neither
    stretch a label over two positions nor merge two equal neighbours, so its
    alignments are exactly the slack-CTC ones.  Pinned positions become frames
    with all their mass on the pinned token.
    """
    forced = -1e5  # exp() underflows to exactly 0 in float64
    frames, targets, in_lens, tgt_lens = [], [], [], []
    logp = torch.log_softmax(logits.double(), -1)
    vocab = logits.shape[-1]
    for b in range(logits.shape[0]):
        rows = []
        for p in range(logits.shape[1]):
            if not loss_mask[b, p]:
                continue
            if inputs[b, p] == mask_id:
                rows.append(logp[b, p])
            else:
                rows.append(torch.full((vocab,), forced, dtype=torch.float64).index_fill(0, inputs[b, p], 0.0))
            rows.append(torch.full((vocab,), forced, dtype=torch.float64).index_fill(0, torch.tensor(slack_id), 0.0))
        frames.append(torch.stack(rows))
        y = [int(v) for v in clean[b][loss_mask[b]] if v != slack_id]
        targets.append(torch.tensor(y, dtype=torch.long))
        in_lens.append(len(rows))
        tgt_lens.append(len(y))
    t_max = max(in_lens)
    padded = torch.stack([F.pad(f, (0, 0, 0, t_max - f.shape[0]), value=forced) for f in frames], dim=1)
    return F.ctc_loss(
        padded, torch.cat(targets), torch.tensor(in_lens), torch.tensor(tgt_lens), blank=slack_id, reduction="none"
    )


def _distinct_target_case(seed, batch=3, length=7, vocab=12, k_max=3):
    g = torch.Generator().manual_seed(seed)
    slack_id, mask_id = 0, 1
    clean = torch.zeros(batch, length, dtype=torch.long)
    loss_mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        canvas_len = length - b  # ragged canvases
        k = int(torch.randint(0, k_max + 1, (), generator=g))
        y = (torch.randperm(vocab - 2, generator=g)[: canvas_len - k] + 2).tolist()
        slots = set(torch.randperm(canvas_len, generator=g)[:k].tolist())
        it = iter(y)
        clean[b, :canvas_len] = torch.tensor([slack_id if j in slots else next(it) for j in range(canvas_len)])
        loss_mask[b, :canvas_len] = True
    inputs = torch.where(loss_mask, torch.full_like(clean, mask_id), clean)
    logits = torch.randn(batch, length, vocab, dtype=torch.float64, generator=g)
    return logits, inputs, clean, loss_mask, mask_id, slack_id


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("seed", range(4))
def test_no_pins_distinct_targets_equals_torch_ctc_loss(backward, seed):
    logits, inputs, clean, loss_mask, mask_id, slack_id = _distinct_target_case(seed)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    ours = _loss_and_grad(
        lambda x: slack_ctc_loss(
            x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, _backward=backward
        ),
        logits,
        weights,
    )
    ref = _loss_and_grad(lambda x: _doubled_frame_ctc(x, inputs, clean, loss_mask, mask_id, slack_id), logits, weights)
    _assert_close(ours[0], ref[0])
    _assert_close(ours[1], ref[1])
    # Plain CTC on the raw emissions also lets a label span several positions,
    # so it sums over a superset of A: its NLL is never larger than ours.
    plain = F.ctc_loss(
        torch.log_softmax(logits, -1).transpose(0, 1),
        clean[loss_mask & (clean != slack_id)],
        loss_mask.sum(1),
        (loss_mask & (clean != slack_id)).sum(1),
        blank=slack_id,
        reduction="none",
    )
    assert bool((plain <= ours[0] + 1e-12).all())


@settings(max_examples=25, deadline=None)
@given(**case_params)
def test_pins_and_repeats_equal_torch_ctc_loss_on_doubled_frames(
    seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first
):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(
        seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first
    )
    if int(loss_mask.sum(1).min()) == 0:
        return  # F.ctc_loss needs a frame per row
    weights = torch.ones(batch, dtype=torch.float64)
    ours = _loss_and_grad(
        lambda x: slack_ctc_loss(x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask),
        logits,
        weights,
    )
    ref = _loss_and_grad(lambda x: _doubled_frame_ctc(x, inputs, clean, loss_mask, mask_id, slack_id), logits, weights)
    _assert_close(ours[0], ref[0])
    _assert_close(ours[1], ref[1])


# ----------------------------------------------------------------------------- CTC vs CE


@settings(max_examples=30, deadline=None)
@given(**case_params)
def test_ctc_never_exceeds_ce_and_equals_it_without_slack(
    seed, batch, seq, vocab, p_slack, p_mask, other_pins, slack_first
):
    # Pins from the anchor (other_pins=False) so the anchor is in A.
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(
        seed, batch, seq, vocab, p_slack, p_mask, False, slack_first
    )
    ctc = slack_ctc_loss(logits, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    masked = loss_mask & (inputs == mask_id)
    ce = masked_cross_entropy(logits, clean, masked)
    assert bool((ctc <= ce + 1e-12).all())
    no_slack = ~(loss_mask & (clean == slack_id)).any(1)
    _assert_close(ctc[no_slack], ce[no_slack], 1e-12)


def test_ctc_strictly_below_ce_with_slack():
    logits, inputs, clean, loss_mask, mask_id, slack_id = _distinct_target_case(0, k_max=3)
    clean[0, 1] = slack_id  # make sure row 0 has slack
    ctc = slack_ctc_loss(logits, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    ce = masked_cross_entropy(logits, clean, loss_mask & (inputs == mask_id))
    assert float(ctc[0]) < float(ce[0]) - 1e-6


# ----------------------------------------------------------------------------- dtypes, extremes


@pytest.mark.parametrize("backward", BACKWARDS)
def test_bf16_logits_give_float32_answer(backward):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(3, 3, 64, 50, 0.15, 0.5, dtype=torch.float32)
    logits = logits * 3
    kwargs = dict(mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, _backward=backward)
    weights = torch.tensor([1.0, 2.0, 0.5])
    bf16 = logits.to(torch.bfloat16)
    v16, g16 = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), bf16, weights)
    v_up, g_up = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), bf16.float(), weights)
    v32, _ = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), logits, weights)
    assert v16.dtype == torch.float32 and g16.dtype == torch.bfloat16
    # Same math on the same (rounded) numbers: float32 agreement.
    torch.testing.assert_close(v16, v_up, rtol=1e-6, atol=1e-5)
    # The gradient is float32 math rounded once to bf16.
    torch.testing.assert_close(g16.float(), g_up.to(torch.bfloat16).float(), rtol=0, atol=0)
    # Against unrounded float32 logits: within bf16 input rounding.
    torch.testing.assert_close(v16, v32, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("backward", BACKWARDS)
def test_float32_gradient_accuracy_on_a_long_canvas(backward):
    # A long canvas with a large total NLL (thousands of nats): the float32
    # gradient must stay close to the float64 one (an unscaled forward-backward
    # loses about three digits here).
    g = torch.Generator().manual_seed(0)
    seq, vocab, k = 768, 40, 48
    mask_id, slack_id = vocab - 2, vocab - 1
    clean = torch.randint(0, vocab - 2, (1, seq), generator=g)
    clean[0, torch.randperm(seq, generator=g)[:k]] = slack_id
    loss_mask = torch.ones(1, seq, dtype=torch.bool)
    inputs = torch.where(torch.rand(1, seq, generator=g) < 0.6, mask_id, clean)
    logits = torch.randn(1, seq, vocab, generator=g, dtype=torch.float64) * 3
    kwargs = dict(mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, _backward=backward)
    ones = torch.ones(1, dtype=torch.float64)
    v64, g64 = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), logits, ones)
    v32, g32 = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), logits.float(), ones.float())
    assert float(v64) > 1000
    assert abs(float(v32) - float(v64)) / float(v64) < 1e-6
    assert float((g32.double() - g64).abs().max() / g64.abs().max()) < 1e-4


def test_float32_math_under_fp16_for_masked_ce():
    logits, inputs, clean, loss_mask, mask_id, _ = make_case(4, 2, 32, 40, 0.0, 0.6, dtype=torch.float32)
    masked = loss_mask & (inputs == mask_id)
    half = (logits * 5).half()
    got = masked_cross_entropy(half, clean, masked)
    ref = masked_cross_entropy(half.float(), clean, masked)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p_mask", [0.0, 0.5, 1.0])
def test_extreme_logits_stay_finite(backward, dtype, p_mask):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(5, 3, 12, 8, 0.3, p_mask, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    signs = torch.randint(0, 2, logits.shape, generator=g) * 2 - 1
    logits = (signs * 1e4).to(dtype)
    weights = torch.ones(3)
    kwargs = dict(mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, _backward=backward)
    value, grad = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), logits, weights.to(logits.dtype))
    assert bool(torch.isfinite(value).all()) and bool(torch.isfinite(grad.float()).all())
    assert bool((value >= 0).all())
    if p_mask == 0.0:
        # Nothing masked: A = {anchor}, probability 1.
        assert torch.equal(value, torch.zeros_like(value))
        assert not bool(grad.any())


def test_nothing_in_the_canvas_and_empty_batch():
    logits = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 4, (2, 4))
    none = torch.zeros(2, 4, dtype=torch.bool)
    value = slack_ctc_loss(logits, ids, ids, mask_token_id=4, slack_token_id=5, loss_mask=none)
    assert torch.equal(value, torch.zeros(2, dtype=torch.float64))
    value.sum().backward()
    assert not bool(logits.grad.any())
    empty = slack_ctc_loss(
        torch.randn(0, 4, 6), ids[:0], ids[:0], mask_token_id=4, slack_token_id=5, loss_mask=none[:0]
    )
    assert empty.shape == (0,)


def test_non_canvas_positions_are_ignored():
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(9, 2, 10, 6, 0.3, 0.6)
    logits = logits.clone().requires_grad_(True)
    kwargs = dict(mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    base = slack_ctc_loss(logits, inputs, clean, **kwargs)
    base.sum().backward()
    assert not bool(logits.grad[~loss_mask].any())
    # Changing tokens and logits outside the canvas changes nothing.
    outside = ~loss_mask
    clean2, inputs2, logits2 = clean.clone(), inputs.clone(), logits.detach().clone()
    clean2[outside] = slack_id
    inputs2[outside] = mask_id
    logits2[outside] = 123.0
    _assert_close(slack_ctc_loss(logits2, inputs2, clean2, **kwargs), base.detach(), 0)


def test_chunked_logsumexp_matches_single_chunk(monkeypatch):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(11, 3, 10, 6, 0.3, 0.8)
    kwargs = dict(mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    full = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), logits, weights)
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", {"cpu": 7})  # one row per chunk
    chunked = _loss_and_grad(lambda x: slack_ctc_loss(x, inputs, clean, **kwargs), logits, weights)
    _assert_close(full[0], chunked[0], 1e-13)
    _assert_close(full[1], chunked[1], 1e-13)


def test_accelerators_take_bigger_chunks_than_the_cpu():
    # CPU: cache-sized chunks (2 rows of LLaDA's vocabulary); an accelerator: ~64 MB chunks, few kernel launches.
    assert len(losses._row_chunks(4096, 126464, "cpu")) == 2048
    assert len(losses._row_chunks(4096, 126464, "cuda")) == 32
    assert losses._row_chunks(3, 10**9, "cuda") == [slice(0, 1), slice(1, 2), slice(2, 3)]  # never under one row


@pytest.mark.parametrize("backward", BACKWARDS)
def test_gradcheck(backward):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(2, 2, 6, 5, 0.3, 0.7, other_pins=True)
    logits = logits.clone().requires_grad_(True)

    def fn(x):
        return slack_ctc_loss(
            x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, _backward=backward
        )

    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda x: masked_cross_entropy(x, clean, loss_mask), (logits,), eps=1e-6, atol=1e-7)


def test_default_backward_is_analytic():
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(1, 2, 6, 5, 0.3, 0.7)
    logits.requires_grad_(True)
    out = slack_ctc_loss(logits, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    assert "BandedSlackCTC" in type(out.grad_fn).__name__


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("collapse", ["slack", "ctc"])
@pytest.mark.parametrize("backward", BACKWARDS)
def test_infeasible_example_names_its_index(collapse, backward):
    logits, inputs, clean, loss_mask, mask_id, slack_id = _distinct_target_case(1)
    # Row 2: pin a canvas position to a token that is not in its target.
    pos = int(loss_mask[2].nonzero()[0])
    absent = [v for v in range(2, 12) if v not in clean[2][loss_mask[2]].tolist()]
    inputs[2, pos] = absent[0]
    with pytest.raises(ValueError, match=r"infeasible example 2\b"):
        slack_ctc_loss(
            logits,
            inputs,
            clean,
            mask_token_id=mask_id,
            slack_token_id=slack_id,
            loss_mask=loss_mask,
            collapse=collapse,
            _backward=backward,
        )


def test_infeasible_several_examples_listed():
    logits, inputs, clean, loss_mask, mask_id, slack_id = _distinct_target_case(1)
    # Pinning every canvas position to slack leaves no room for the targets.
    inputs[0][loss_mask[0]] = slack_id
    inputs[2][loss_mask[2]] = slack_id
    with pytest.raises(ValueError, match=r"examples 0, 2\b"):
        slack_ctc_loss(logits, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)


def test_slack_ctc_blames_the_model_for_a_minus_inf_target():
    from hf_mdlm import slack_ctc_loss

    vocab, mask, slack = 8, 7, 6
    clean = torch.tensor([[1, 2, 3, 4]])
    noised = torch.tensor([[1, mask, 3, mask]])
    loss_mask = torch.ones_like(clean, dtype=torch.bool)
    logits = torch.zeros(1, 4, vocab)
    assert torch.isfinite(slack_ctc_loss(logits, noised, clean, mask_token_id=mask, slack_token_id=slack,
                                         loss_mask=loss_mask)).all()
    logits[0, 1, 2] = float("-inf")  # the model forbids the token the target needs at a masked position
    logits[0, 1, slack] = float("-inf")
    with pytest.raises(ValueError, match="the model gives log-probability -inf to tokens the target needs"):
        slack_ctc_loss(logits, noised, clean, mask_token_id=mask, slack_token_id=slack, loss_mask=loss_mask)
    inconsistent = torch.tensor([[5, mask, 3, mask]])  # a pinned token that is not the target's
    with pytest.raises(ValueError, match="inconsistent"):
        slack_ctc_loss(torch.zeros(1, 4, vocab), inconsistent, clean, mask_token_id=mask, slack_token_id=slack,
                       loss_mask=loss_mask)


def test_on_an_accelerator_infeasibility_is_asserted_without_a_host_sync(monkeypatch):
    """Where reading values would stall the device, the loss skips value checks and asserts feasibility
    asynchronously (torch._assert_async): still an error, never a silent inf."""
    logits, inputs, clean, loss_mask, mask_id, slack_id = _distinct_target_case(1)
    monkeypatch.setattr(losses, "values_are_free", lambda tensor: False)
    reads = []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or [])
    inputs[2][loss_mask[2]] = slack_id
    with pytest.raises(RuntimeError, match="no alignment that agrees with its unmasked canvas tokens"):
        slack_ctc_loss(logits, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    assert reads == []


def test_argument_errors():
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(0, 2, 6, 5, 0.3, 0.5)
    kw = dict(mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
    with pytest.raises(ValueError, match="mask_token_id"):
        slack_ctc_loss(logits, inputs, clean, **{**kw, "mask_token_id": None})
    with pytest.raises(ValueError, match="slack_token_id"):
        slack_ctc_loss(logits, inputs, clean, **{**kw, "slack_token_id": None})
    with pytest.raises(ValueError, match="differ"):
        slack_ctc_loss(logits, inputs, clean, **{**kw, "slack_token_id": mask_id})
    with pytest.raises(ValueError, match="vocabulary"):
        slack_ctc_loss(logits, inputs, clean, **{**kw, "slack_token_id": 99})
    with pytest.raises(ValueError, match="input_ids"):
        slack_ctc_loss(logits, inputs[:, :-1], clean, **kw)
    with pytest.raises(ValueError, match="clean_ids"):
        slack_ctc_loss(logits, inputs, clean.float(), **kw)
    with pytest.raises(ValueError, match="loss_mask"):
        slack_ctc_loss(logits, inputs, clean, **{**kw, "loss_mask": loss_mask.long()})
    with pytest.raises(ValueError, match="logits"):
        slack_ctc_loss(logits[0], inputs, clean, **kw)
    with pytest.raises(ValueError, match="floating"):
        slack_ctc_loss(logits.long(), inputs, clean, **kw)
    with pytest.raises(ValueError, match="collapse"):
        slack_ctc_loss(logits, inputs, clean, **kw, collapse="merge")
    with pytest.raises(ValueError, match="masked"):
        masked_cross_entropy(logits, clean, loss_mask[:, :-1])


# ----------------------------------------------------------------------------- standard-CTC ablation


@pytest.mark.parametrize("seed", range(3))
def test_collapse_ctc_equals_torch_ctc_loss_with_repeats(seed):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab, slack_id, mask_id = 3, 8, 5, 0, 1
    clean = torch.randint(2, 4, (batch, length), generator=g)  # two tokens: many repeats
    loss_mask = torch.ones(batch, length, dtype=torch.bool)
    loss_mask[1, 6:] = False
    # Insert slack so every repeated pair can be separated: each second position is slack.
    clean[:, 1::2] = slack_id
    inputs = torch.where(loss_mask, torch.full_like(clean, mask_id), clean)
    logits = torch.randn(batch, length, vocab, dtype=torch.float64, generator=g)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    ours = _loss_and_grad(
        lambda x: slack_ctc_loss(
            x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, collapse="ctc"
        ),
        logits,
        weights,
    )

    def torch_ctc(x):
        targets = [clean[b][loss_mask[b] & (clean[b] != slack_id)] for b in range(batch)]
        return F.ctc_loss(
            torch.log_softmax(x, -1).transpose(0, 1),
            torch.cat(targets),
            loss_mask.sum(1),
            torch.tensor([len(t) for t in targets]),
            blank=slack_id,
            reduction="none",
        )

    ref = _loss_and_grad(torch_ctc, logits, weights)
    _assert_close(ours[0], ref[0])
    _assert_close(ours[1], ref[1])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    seq=st.integers(1, 6),
    p_mask=st.sampled_from([0.3, 0.7, 1.0]),
    slack_first=st.booleans(),
)
def test_collapse_ctc_matches_brute_force_with_pins(seed, seq, p_mask, slack_first):
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(
        seed, 2, seq, 4, 0.4, p_mask, False, slack_first
    )
    weights = torch.tensor([1.0, 0.7], dtype=torch.float64)
    fn = lambda x: slack_ctc_loss(  # noqa: E731
        x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask, collapse="ctc"
    )
    # The labels are B(anchor), so the anchor is always a path: adjacent repeats merge instead of failing.
    ref = _loss_and_grad(
        lambda x: brute_by_product(x, inputs, clean, loss_mask, mask_id, slack_id, "ctc"), logits, weights
    )
    ours = _loss_and_grad(fn, logits, weights)
    _assert_close(ours[0], ref[0])
    _assert_close(ours[1], ref[1])


# ----------------------------------------------------------------------------- masked CE


def test_masked_cross_entropy_matches_reference():
    logits, inputs, clean, loss_mask, mask_id, _ = make_case(6, 3, 10, 6, 0.2, 0.6)
    masked = loss_mask & (inputs == mask_id)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    def reference(x):
        nll = -torch.log_softmax(x, -1).gather(-1, clean[..., None])[..., 0]
        return (nll * masked).sum(1)

    ours = _loss_and_grad(lambda x: masked_cross_entropy(x, clean, masked), logits, weights)
    ref = _loss_and_grad(reference, logits, weights)
    _assert_close(ours[0], ref[0], 1e-12)
    _assert_close(ours[1], ref[1], 1e-12)


# ----------------------------------------------------------------------------- diffusion_loss


def _tiny_diffusion_case():
    # Row 0: prompt [7], canvas [a, slack, b] with positions 1, 2 masked.
    # Row 1: prompt [7, 7], canvas [a, b], nothing masked, one pad position outside.
    a, b, mask, slack = 0, 1, 2, 3
    logits = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    clean = torch.tensor([[7, a, slack, b], [7, 7, a, b]])
    inputs = torch.tensor([[7, mask, mask, b], [7, 7, a, b]])
    loss_mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    masked = inputs == mask
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    return logits, inputs, clean, loss_mask, masked, t, mask, slack, a, b


@pytest.mark.parametrize("normalization,norm_row0,norm_row1", [("canvas", 3, 2), ("masked", 2, 1), ("batch_tokens", 1, 1)])
def test_diffusion_loss_hand_computed(normalization, norm_row0, norm_row1):
    logits, inputs, clean, loss_mask, masked, t, mask, slack, a, b = _tiny_diffusion_case()
    lp = torch.log_softmax(logits, -1)
    ce0 = -(lp[0, 1, a] + lp[0, 2, slack])
    # Canvas positions 1, 2 masked, 3 pinned to b: A = {a s b, s a b}.
    ctc0 = -torch.logaddexp(lp[0, 1, a] + lp[0, 2, slack], lp[0, 1, slack] + lp[0, 2, a])
    eps = 1e-3
    w = 1.0 / ((1 - eps) * t + eps)
    out = diffusion_loss(
        logits,
        inputs,
        clean,
        masked=masked,
        loss_mask=loss_mask,
        t=t,
        schedule=LinearSchedule(eps),
        mask_token_id=mask,
        slack_token_id=slack,
        ce_weight=0.3,
        ctc_weight=0.7,
        normalization=normalization,
    )
    assert isinstance(out, DiffusionLoss)
    _assert_close(out.ce, torch.stack([ce0, torch.zeros((), dtype=torch.float64)]), 1e-12)
    _assert_close(out.ctc, torch.stack([ctc0, torch.zeros((), dtype=torch.float64)]), 1e-12)
    _assert_close(out.weight, w, 1e-12)
    _assert_close(out.normalizer, torch.tensor([norm_row0, norm_row1], dtype=torch.float64), 0)
    expected0 = w[0] * (0.3 * ce0 + 0.7 * ctc0) / norm_row0
    _assert_close(out.per_example, torch.stack([expected0, torch.zeros((), dtype=torch.float64)]), 1e-12)


def test_diffusion_loss_ce_only():
    logits, inputs, clean, loss_mask, masked, t, mask, slack, a, b = _tiny_diffusion_case()
    schedule = CosineSchedule(1e-3)
    out = diffusion_loss(
        logits, inputs, clean, masked=masked, loss_mask=loss_mask, t=t, schedule=schedule,
        mask_token_id=None, slack_token_id=None, ce_weight=1.0, ctc_weight=0.0,
    )
    assert out.ctc is None
    expected = schedule.weight(t) * masked_cross_entropy(logits, clean, masked) / loss_mask.sum(1)
    _assert_close(out.per_example, expected, 1e-12)


def test_diffusion_loss_shared_ce_matches_separate_gradients():
    logits, inputs, clean, loss_mask, mask_id, slack_id = make_case(12, 3, 10, 6, 0.3, 0.6)
    masked = loss_mask & (inputs == mask_id)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    schedule = LinearSchedule()

    def combined(x):
        return diffusion_loss(
            x, inputs, clean, masked=masked, loss_mask=loss_mask, t=t, schedule=schedule,
            mask_token_id=mask_id, slack_token_id=slack_id, ce_weight=0.4, ctc_weight=1.5,
        ).per_example

    def separate(x):
        ce = masked_cross_entropy(x, clean, masked)
        ctc = slack_ctc_loss(x, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask)
        return schedule.weight(t) * (0.4 * ce + 1.5 * ctc) / loss_mask.sum(1).clamp(min=1)

    ours = _loss_and_grad(combined, logits, weights)
    ref = _loss_and_grad(separate, logits, weights)
    _assert_close(ours[0], ref[0], 1e-12)
    _assert_close(ours[1], ref[1], 1e-12)


def test_diffusion_loss_errors():
    logits, inputs, clean, loss_mask, masked, t, mask, slack, a, b = _tiny_diffusion_case()
    kw = dict(masked=masked, loss_mask=loss_mask, t=t, schedule=LinearSchedule(), mask_token_id=mask, slack_token_id=slack)
    with pytest.raises(ValueError, match="per_token"):
        diffusion_loss(logits, inputs, clean, **kw, normalization="per_token")
    with pytest.raises(ValueError, match="slack_token_id"):
        diffusion_loss(logits, inputs, clean, **{**kw, "slack_token_id": None})
    bad = masked.clone()
    bad[1, 3] = True
    with pytest.raises(ValueError, match="masked"):
        diffusion_loss(logits, inputs, clean, **{**kw, "masked": bad})
    outside = masked.clone()
    outside[0, 0] = True
    with pytest.raises(ValueError, match="outside loss_mask"):
        diffusion_loss(logits, inputs, clean, **{**kw, "masked": outside})
    with pytest.raises(ValueError, match=r"\(2,\)"):
        diffusion_loss(logits, inputs, clean, **{**kw, "t": t[:1]})
    # what MDLMTrainingArguments refuses is refused here too (the loss is public API)
    for weights, message in (({"ce_weight": 0.0, "ctc_weight": 0.0}, "both 0"), ({"ce_weight": -1.0}, "ce_weight"),
                             ({"ctc_weight": float("nan")}, "ctc_weight")):
        with pytest.raises(ValueError, match=message):
            diffusion_loss(logits, inputs, clean, **kw, **weights)
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        diffusion_loss(logits, inputs, clean, **{**kw, "t": torch.tensor([-0.9, 0.5], dtype=torch.float64)})


def test_a_minus_inf_logit_at_a_clean_token_is_named_or_left_out():
    """Position 0's anchor token 1 has logit -inf; the alignment (slack, 1, 2) still exists. Pure slack-CTC
    (ce_weight 0) gives its finite value, log 56 = -log(1/7 * 1/8) (was NaN: 0 * inf); a CE that counts is an error
    naming the example (was +inf, silently)."""
    import math

    mask, slack = 6, 5
    clean, noised = torch.tensor([[1, slack, 2]]), torch.tensor([[mask, mask, 2]])
    loss_mask = torch.ones(1, 3, dtype=torch.bool)
    logits = torch.zeros(1, 3, 8, dtype=torch.float64, requires_grad=True)
    logits.data[0, 0, 1] = float("-inf")
    kw = dict(masked=noised == mask, loss_mask=loss_mask, t=torch.tensor([1.0]), schedule=LinearSchedule(),
              mask_token_id=mask, slack_token_id=slack)
    out = diffusion_loss(logits, noised, clean, **kw, ce_weight=0.0, ctc_weight=1.0)
    assert out.per_example.item() == pytest.approx(math.log(56) / 3, abs=1e-12)
    out.per_example.sum().backward()
    assert torch.isfinite(logits.grad).all()
    for weights in ({"ce_weight": 1.0, "ctc_weight": 1.0}, {"ce_weight": 1.0, "ctc_weight": 0.0}):
        with pytest.raises(ValueError, match=r"CE is not finite for example\(s\) \[0\].*-inf"):
            diffusion_loss(logits, noised, clean, **kw, **weights)


def test_per_block_errors_name_the_example_and_an_empty_canvas_still_backpropagates():
    mask, slack = 6, 5
    clean = torch.tensor([[1, slack, 2, 3]] * 3)
    loss_mask = torch.ones(3, 4, dtype=torch.bool)
    noised = torch.where(loss_mask, mask, clean)
    noised[1, 0] = 4  # example 1 pins a token its target lacks: no alignment
    blocks = (torch.arange(4) // 2)[None].expand(3, -1)
    kw = dict(t=torch.full((3,), 0.5), schedule=LinearSchedule(), mask_token_id=mask, slack_token_id=slack)
    for per_block in (None, blocks):  # the same message with and without blocks (was "example 2": a block's index)
        with pytest.raises(ValueError, match="infeasible example 1:"):
            diffusion_loss(torch.zeros(3, 4, 8), noised, clean, masked=noised == mask, loss_mask=loss_mask, **kw,
                           blocks=per_block)
    logits = torch.zeros(3, 4, 8, requires_grad=True)
    nothing = torch.zeros(3, 4, dtype=torch.bool)
    out = diffusion_loss(logits, clean, clean, masked=nothing, loss_mask=nothing, **kw, blocks=blocks)
    out.per_example.sum().backward()  # raised "does not require grad" (the whole-canvas path did not)
    assert out.per_example.tolist() == [0.0] * 3 and logits.grad.abs().sum() == 0


def test_the_per_block_loss_reads_the_logits_in_place(monkeypatch):
    """Each block's lattice selects its log-probabilities from the batch's logits: no (blocks, block, V) copy of the
    logits is made (it doubled the loss's peak memory: 512 against 265 MiB at canvas 1024, vocabulary 126k)."""
    read = []
    selected = losses._selected_log_probs

    def recording(logits, *args):
        read.append(logits)
        return selected(logits, *args)

    monkeypatch.setattr(losses, "_selected_log_probs", recording)
    mask, slack = 6, 5
    clean = torch.tensor([[1, slack, 2, 3, 2, slack], [3, 3, slack, 1, 2, 2]])
    loss_mask = torch.ones(2, 6, dtype=torch.bool)
    noised = torch.where(torch.tensor([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 0]]).bool(), mask, clean)
    logits = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(masked=noised == mask, loss_mask=loss_mask, t=torch.full((2,), 0.5), schedule=LinearSchedule(),
              mask_token_id=mask, slack_token_id=slack, blocks=(torch.arange(6) // 3)[None].expand(2, -1))
    diffusion_loss(logits, noised, clean, **kw)
    assert read and all(tensor is logits for tensor in read)


def test_second_derivatives_of_the_slack_ctc_are_refused_by_name():
    """create_graph=True failed with "logaddexp(): functions with out=... don't support automatic differentiation"."""
    logits, inputs, clean, loss_mask, masked, t, mask, slack, a, b = _tiny_diffusion_case()
    logits.requires_grad_(True)
    out = diffusion_loss(logits, inputs, clean, masked=masked, loss_mask=loss_mask, t=t, schedule=LinearSchedule(),
                         mask_token_id=mask, slack_token_id=slack)
    with pytest.raises(RuntimeError, match="slack-CTC has no second derivatives"):
        torch.autograd.grad(out.per_example.sum(), logits, create_graph=True)


# ----------------------------------------------------------------------------- fuzz


def _documented(error: Exception) -> bool:
    """The errors the losses document: a ValueError naming a bad argument, or the RuntimeError of a canvas whose
    pinned tokens admit no alignment."""
    return isinstance(error, ValueError) or (
        isinstance(error, RuntimeError) and "no alignment that agrees with its unmasked canvas tokens" in str(error))


def test_fuzz_diffusion_loss_is_finite_and_shaped_or_a_documented_error():
    """300 random calls (shapes, ids, masks, pins, weights, options, some of them invalid): each returns finite
    per-example values of shape (B,) with finite gradients, or raises a documented error; never NaN or a crash."""
    g = torch.Generator().manual_seed(0)
    outcomes = {"ok": 0, "error": 0}
    for case in range(300):
        def pick(*values):
            return values[int(torch.randint(len(values), (1,), generator=g))]

        batch, seq, vocab = pick(1, 2, 3), pick(1, 2, 5, 9), pick(3, 4, 8, 40)
        mask_id, slack_id = vocab - 1, pick(vocab - 2, vocab - 1, vocab)  # sometimes equal to [MASK] or outside
        clean = torch.randint(0, vocab, (batch, seq), generator=g)
        loss_mask = torch.rand(batch, seq, generator=g) < pick(0.0, 0.5, 1.0)
        masked = loss_mask & (torch.rand(batch, seq, generator=g) < pick(0.0, 0.5, 1.0))
        if pick(True, False, False, False, False):  # an invalid mask: masked outside the canvas
            masked = torch.rand(batch, seq, generator=g) < 0.5
        inputs = torch.where(masked, torch.full_like(clean, mask_id), clean)
        logits = (torch.randn(batch, seq, vocab, generator=g, dtype=pick(torch.float32, torch.float64))
                  * pick(1.0, 30.0)).requires_grad_(True)
        try:
            out = diffusion_loss(logits, inputs, clean, masked=masked, loss_mask=loss_mask,
                                 t=torch.rand(batch, generator=g).clamp_min(1e-3), schedule=LinearSchedule(1e-3),
                                 mask_token_id=mask_id, slack_token_id=slack_id,
                                 ce_weight=pick(0.0, 1.0), ctc_weight=pick(0.0, 0.5, 1.0),
                                 normalization=pick("canvas", "masked", "batch_tokens", "tokens"),
                                 collapse=pick("slack", "ctc"))
            assert out.per_example.shape == (batch,) and torch.isfinite(out.per_example).all(), case
            out.per_example.sum().backward()
            assert logits.grad is None or torch.isfinite(logits.grad).all(), case
            outcomes["ok"] += 1
        except Exception as error:  # noqa: BLE001 - the point: only documented errors
            assert _documented(error), f"case {case}: {type(error).__name__}: {error}"
            outcomes["error"] += 1
    assert outcomes["ok"] > 50 and outcomes["error"] > 20  # both kinds of inputs were met
