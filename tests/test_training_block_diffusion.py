"""Tests of `hf_mdlm/training/block_diffusion.py`: the [x_t; x_0] input of block-diffusion training equals, block by
block, a run on the clean blocks before it and the noised block (same- and next-token models, left padding), and
MDLMTrainer trains a block model with it."""

import math

import pytest
import torch

from hf_mdlm import MDLMForMaskedLM
from hf_mdlm.generation_mdlm import logits_for_tokens
from hf_mdlm.training.block_diffusion import block_diffusion_inputs, block_diffusion_predictions
from conftest import MASK, PAD, tiny_config


@pytest.mark.parametrize("alignment", ["same_token", "next_token"])
@pytest.mark.parametrize("block_size", [1, 3, 4])
def test_one_forward_equals_one_run_per_block(alignment, block_size):
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(block_size=block_size, prediction_alignment=alignment)).eval()
    lengths = [13, 9, 11]  # left-padded to 13: blocks start at each row's own first token
    width = max(lengths)
    clean = torch.randint(0, 90, (3, width))
    noised = torch.where(torch.rand(3, width) < 0.5, torch.full_like(clean, MASK), clean)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    clean, noised = clean.masked_fill(mask == 0, PAD), noised.masked_fill(mask == 0, PAD)
    ids, block_mask, positions = block_diffusion_inputs(noised, clean, mask, block_size)
    with torch.no_grad():
        outputs = model(input_ids=ids, attention_mask=block_mask, position_ids=positions).logits
    predicted = block_diffusion_predictions(outputs, mask, block_size, model.config.prediction_shift)
    assert predicted.shape == (3, width, model.config.vocab_size)
    for row, n in enumerate(lengths):
        real_clean, real_noised = clean[row, width - n:], noised[row, width - n:]
        for start in range(0, n, block_size):
            end = min(start + block_size, n)
            alone = torch.cat([real_clean[:start], real_noised[start:end]])[None]
            with torch.no_grad():
                expected = logits_for_tokens(model(input_ids=alone).logits, model.config)[0, start:end]
            got = predicted[row, width - n + start:width - n + end]
            assert (got - expected).abs().max() < 1e-5, (row, start)


def test_the_mask_has_three_parts():
    """x_t sees its own block and the clean blocks before it; x_0 sees clean blocks up to its own; x_0 never x_t."""
    noised, clean = torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)
    ids, mask, positions = block_diffusion_inputs(noised, clean, None, 2)
    assert ids.tolist() == [[0] * 6 + [1] * 6] and positions.tolist() == [list(range(6)) * 2]
    block = torch.tensor([0, 0, 1, 1, 2, 2])
    q, k = block[:, None], block[None, :]
    expected = torch.cat([torch.cat([q == k, k < q], 1), torch.cat([torch.zeros(6, 6, dtype=torch.bool), k <= q], 1)])
    assert torch.equal(mask[0, 0], expected)


@pytest.mark.parametrize("ctc_weight", [0.0, 1.0])
def test_the_trainer_trains_a_block_model(tmp_path, monkeypatch, ctc_weight):
    from test_training_trainer import make_trainer

    import hf_mdlm.training.block_diffusion as block_module

    calls = []
    original = block_module.block_diffusion_inputs
    monkeypatch.setattr(block_module, "block_diffusion_inputs", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(block_size=4))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(tmp_path, model, ctc_weight=ctc_weight)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert calls and losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_slack_ctc_per_block_is_the_sum_of_each_blocks_lattice():
    """Each block's targets align within the block only: the sum over blocks of the slack-CTC of that block alone,
    computed by enumerating every slack placement."""
    from test_training_losses import brute_slack_ctc

    from hf_mdlm.training.canvas import get_schedule
    from hf_mdlm.training.losses import diffusion_loss

    torch.manual_seed(3)
    vocab, mask_id, slack_id = 12, 11, 10
    clean = torch.tensor([[1, 2, 3, 10, 4, 10, 5, 6, 10, 7], [0, 8, 10, 9, 9, 10, 10, 3, 2, 1]])
    noised = clean.clone()
    noised[0, [3, 4, 6, 8, 9]] = mask_id
    noised[1, [2, 3, 5, 6, 7]] = mask_id
    loss_mask = torch.ones_like(clean, dtype=torch.bool)
    loss_mask[:, :2] = False  # a prompt
    blocks = torch.arange(10)[None].expand(2, -1) // 4
    logits = torch.randn(2, 10, vocab, dtype=torch.float64, requires_grad=True)
    result = diffusion_loss(logits, noised, clean, masked=loss_mask & (noised == mask_id), loss_mask=loss_mask,
                            t=torch.full((2,), 0.5), schedule=get_schedule("linear"), mask_token_id=mask_id,
                            slack_token_id=slack_id, ce_weight=0.0, blocks=blocks)
    expected = sum(brute_slack_ctc(logits, noised, clean, loss_mask & (blocks == b), mask_id, slack_id)
                   for b in range(3))
    assert torch.allclose(result.ctc, expected, atol=1e-9)
    whole = diffusion_loss(logits, noised, clean, masked=loss_mask & (noised == mask_id), loss_mask=loss_mask,
                           t=torch.full((2,), 0.5), schedule=get_schedule("linear"), mask_token_id=mask_id,
                           slack_token_id=slack_id, ce_weight=0.0)
    assert not torch.allclose(whole.ctc, expected)  # one lattice over the canvas lets targets cross blocks
    grad, = torch.autograd.grad(result.ctc.sum(), logits)
    brute_grad, = torch.autograd.grad(expected.sum(), logits)
    assert torch.allclose(grad, brute_grad, atol=1e-8)


def test_lora_on_a_block_model_trains_through_the_block_path(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from test_training_trainer import make_trainer

    import hf_mdlm.training.block_diffusion as block_module

    calls = []
    original = block_module.block_diffusion_inputs
    monkeypatch.setattr(block_module, "block_diffusion_inputs", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(MDLMForMaskedLM(tiny_config(block_size=4)), lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = make_trainer(tmp_path, model)
    trainer.train()
    assert calls and all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_bad_block_inputs_are_named():
    from hf_mdlm.training.canvas import get_schedule
    from hf_mdlm.training.losses import diffusion_loss

    with pytest.raises(ValueError, match=r"noised_ids \(1, 4\) and clean_ids \(1, 5\) differ in shape"):
        block_diffusion_inputs(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long), None, 2)
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="blocks must not decrease along a row's canvas positions"):
        diffusion_loss(torch.zeros(1, 4, 12), ids, ids, masked=torch.zeros(1, 4, dtype=torch.bool),
                       loss_mask=torch.ones(1, 4, dtype=torch.bool), t=0.5, schedule=get_schedule("linear"),
                       mask_token_id=11, slack_token_id=10, blocks=torch.tensor([[1, 1, 0, 0]]))


def test_block_size_needs_an_hf_mdlm_model():
    from types import SimpleNamespace

    from hf_mdlm.loading import set_block_size

    with pytest.raises(ValueError, match="--block_size needs an hf_mdlm model; SimpleNamespace has no block-causal"):
        set_block_size(SimpleNamespace(config=SimpleNamespace()), 4)
