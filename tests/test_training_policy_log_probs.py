"""The per-token log-probability estimators of RL training (hf_mdlm/training/policy_log_probs.py), checked against
their definitions written out by hand."""

import pytest
import torch
from conftest import EOS, MASK, PAD, make_model

from hf_mdlm.generation_mdlm import logits_for_tokens
from hf_mdlm.training.policy_log_probs import completion_log_probs, estimator_masks


def rows(batch=3, prompt=6, completion=5, seed=0):
    """Left-padded prompts (row b has b pad tokens) and completions of word tokens."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, 90, (batch, prompt), generator=g)
    prompt_mask = torch.ones(batch, prompt, dtype=torch.long)
    for b in range(batch):
        prompt_ids[b, :b], prompt_mask[b, :b] = PAD, 0
    completion_ids = torch.randint(10, 90, (batch, completion), generator=g)
    completion_ids[0, -2:] = EOS
    return prompt_ids, prompt_mask, completion_ids


def by_hand(model, prompt_ids, prompt_mask, completion_ids, noised, temperature=1.0):
    """log p(x_i | noised) at every completion position, one row at a time, from the model's own logits."""
    out = []
    for b in range(prompt_ids.shape[0]):
        real = prompt_mask[b].bool()
        ids = torch.cat([noised[b, :prompt_ids.shape[1]][real], noised[b, prompt_ids.shape[1]:]])[None]
        logits = logits_for_tokens(model(input_ids=ids).logits, model.config)[0, -completion_ids.shape[1]:]
        logits = logits.double() / temperature
        out.append(torch.log_softmax(logits, -1).gather(-1, completion_ids[b, :, None]).squeeze(-1))
    return torch.stack(out)


@pytest.mark.parametrize("alignment", ["same_token", "next_token"])
def test_one_step_is_the_fully_masked_completion_with_the_prompt_masked_at_a_rate(alignment):
    model = make_model(seed=1, prediction_alignment=alignment)  # next_token: Dream's, each token read one earlier
    prompt_ids, prompt_mask, completion_ids = rows()
    seeds = torch.tensor([11, 12, 13])
    [mask] = estimator_masks(seeds, prompt_mask, completion_ids.shape[1], estimator="one_step", prompt_mask_rate=0.5)
    assert mask[:, prompt_ids.shape[1]:].all()  # the whole completion
    assert not (mask[:, :prompt_ids.shape[1]] & ~prompt_mask.bool()).any()  # never a padding position
    assert mask[:, :prompt_ids.shape[1]].any()  # and, at rate 0.5 over 15 real prompt tokens, some prompt token
    clean = torch.cat([prompt_ids, completion_ids], 1)
    with torch.no_grad():
        got, _ = completion_log_probs(model, prompt_ids, prompt_mask, completion_ids, seeds, mask_token_id=MASK,
                                      estimator="one_step", prompt_mask_rate=0.5, temperature=0.7)
        want = by_hand(model, prompt_ids, prompt_mask, completion_ids, clean.masked_fill(mask, MASK), 0.7)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_the_prompt_mask_rate_is_the_fraction_masked():
    prompt_mask = torch.ones(400, 50, dtype=torch.long)
    for rate in (0.0, 0.15, 0.6):
        [mask] = estimator_masks(torch.arange(400), prompt_mask, 3, estimator="one_step", prompt_mask_rate=rate)
        assert abs(mask[:, :50].float().mean().item() - rate) < 0.01


def test_the_coupled_pair_scores_each_completion_token_exactly_once():
    model = make_model(seed=2)
    prompt_ids, prompt_mask, completion_ids = rows(batch=4, completion=12, seed=3)
    seeds = torch.tensor([5, 6, 7, 8])
    first, second = estimator_masks(seeds, prompt_mask, 12, estimator="coupled", min_rate=0.2, max_rate=0.8)
    p = prompt_ids.shape[1]
    assert not first[:, :p].any() and not second[:, :p].any()  # the prompt stays clean
    assert (first[:, p:] ^ second[:, p:]).all()  # every completion token masked in exactly one of the pair
    assert first[:, p:].any(1).all() and second[:, p:].any(1).all()
    clean = torch.cat([prompt_ids, completion_ids], 1)
    with torch.no_grad():
        got, _ = completion_log_probs(model, prompt_ids, prompt_mask, completion_ids, seeds, mask_token_id=MASK,
                                      estimator="coupled")
        from_first = by_hand(model, prompt_ids, prompt_mask, completion_ids, clean.masked_fill(first, MASK))
        from_second = by_hand(model, prompt_ids, prompt_mask, completion_ids, clean.masked_fill(second, MASK))
    want = torch.where(first[:, p:], from_first, from_second)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_the_coupled_rate_is_drawn_in_its_range():
    prompt_mask = torch.ones(300, 2, dtype=torch.long)
    first, _ = estimator_masks(torch.arange(300), prompt_mask, 400, estimator="coupled", min_rate=0.3, max_rate=0.5)
    rates = first[:, 2:].float().mean(1)
    assert rates.min() > 0.3 - 0.08 and rates.max() < 0.5 + 0.08
    assert rates.std() > 0.03  # drawn per row, not one rate for all


@pytest.mark.parametrize("estimator", ["one_step", "coupled"])
def test_a_rows_scores_do_not_depend_on_the_other_rows(estimator):
    model = make_model(seed=4)
    prompt_ids, prompt_mask, completion_ids = rows(batch=3, seed=5)
    seeds = torch.tensor([21, 22, 23])
    with torch.no_grad():
        together, entropy = completion_log_probs(model, prompt_ids, prompt_mask, completion_ids, seeds,
                                                 mask_token_id=MASK, estimator=estimator, compute_entropy=True)
        for b in range(3):
            alone, alone_entropy = completion_log_probs(
                model, prompt_ids[b:b + 1, b:], prompt_mask[b:b + 1, b:], completion_ids[b:b + 1], seeds[b:b + 1],
                mask_token_id=MASK, estimator=estimator, compute_entropy=True)
            torch.testing.assert_close(together[b:b + 1], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(entropy[b:b + 1], alone_entropy, atol=1e-5, rtol=1e-5)
    assert (entropy > 0).all()


def test_scores_carry_gradients_to_the_model():
    model = make_model(seed=6).train()
    prompt_ids, prompt_mask, completion_ids = rows()
    lp, _ = completion_log_probs(model, prompt_ids, prompt_mask, completion_ids, torch.tensor([1, 2, 3]),
                                 mask_token_id=MASK, estimator="coupled")
    lp.sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_bad_estimator_settings_are_named():
    prompt_mask = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="estimator must be one of"):
        estimator_masks(torch.tensor([1]), prompt_mask, 2, estimator="two_step")
    with pytest.raises(ValueError, match="prompt_mask_rate"):
        estimator_masks(torch.tensor([1]), prompt_mask, 2, estimator="one_step", prompt_mask_rate=1.0)
    with pytest.raises(ValueError, match="min_rate <= max_rate"):
        estimator_masks(torch.tensor([1]), prompt_mask, 2, estimator="coupled", min_rate=0.7, max_rate=0.3)
    with pytest.raises(ValueError, match="temperature must be positive"):
        completion_log_probs(make_model(), torch.tensor([[5]]), prompt_mask[:, :1], torch.tensor([[6]]),
                             torch.tensor([1]), mask_token_id=MASK, temperature=0.0)


def test_a_block_diffusion_model_scores_each_block_from_the_blocks_before_it():
    """Block size 4: a completion token's score depends on its own block and the clean blocks before it, never on a
    later block (changing the last block's tokens leaves the first blocks' scores unchanged), and a padded row scores
    as it does alone (blocks counted over real tokens)."""
    model = make_model(seed=7, block_size=4)
    prompt_ids, prompt_mask, completion_ids = rows(batch=2, prompt=4, completion=12, seed=8)
    seeds = torch.tensor([31, 32])
    changed = completion_ids.clone()
    changed[:, -3:] = 50  # the completion's last block (prompt 4 real tokens for row 0: blocks 1, 2, 3)
    with torch.no_grad():
        before, _ = completion_log_probs(model, prompt_ids, prompt_mask, completion_ids, seeds, mask_token_id=MASK,
                                         estimator="coupled")
        after, _ = completion_log_probs(model, prompt_ids, prompt_mask, changed, seeds, mask_token_id=MASK,
                                        estimator="coupled")
        alone, _ = completion_log_probs(model, prompt_ids[1:, 1:], prompt_mask[1:, 1:], completion_ids[1:],
                                        seeds[1:], mask_token_id=MASK, estimator="coupled")
    torch.testing.assert_close(before[0, :8], after[0, :8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before[0, -3:], after[0, -3:])
    torch.testing.assert_close(before[1:], alone, atol=1e-5, rtol=1e-5)


def test_each_iteration_draws_its_own_masks_from_the_row_seed():
    prompt_mask = torch.ones(4, 6, dtype=torch.long)
    seeds = torch.tensor([1, 2, 3, 4])
    for estimator, settings in (("one_step", {"prompt_mask_rate": 0.5}), ("coupled", {})):
        first = estimator_masks(seeds, prompt_mask, 10, estimator=estimator, iteration=0, **settings)
        again = estimator_masks(seeds, prompt_mask, 10, estimator=estimator, iteration=0, **settings)
        other = estimator_masks(seeds, prompt_mask, 10, estimator=estimator, iteration=1, **settings)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not torch.equal(first[0], other[0])
