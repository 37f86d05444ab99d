"""Per-token log-probabilities of a completion under a masked diffusion LM, for policy-gradient training.

An autoregressive policy scores its completion exactly in one forward pass; a masked diffusion LM has no tractable
sequence likelihood, so RL methods score each completion token by the model's prediction of it from a partly
masked input. Two estimators, both deterministic given a row's seed (the same mask for the policy, the old policy
and the reference model, so their ratios compare like with like; docs/rl.md):

- `"one_step"` (diffu-GRPO, d1): the whole completion masked, each real prompt token masked with probability
  `prompt_mask_rate`; one forward pass scores every completion token.
- `"coupled"` (coupled-GRPO, DiffuCoder): a mask rate t drawn in `[min_rate, max_rate]`, a completion mask M with
  each position in it with probability t, and its complement; the prompt stays clean. Two forward passes, and each
  completion token is scored by the one in which it is masked: exactly once per pair.

Random numbers are counter-based (a hash of the row seed, a stream and the position), so a row's scores never
depend on the other rows of the batch or on how rows are split over processes.
"""

from __future__ import annotations

import torch

from ..generation_mdlm import counter_uniform
from .block_diffusion import token_logits

ESTIMATORS = ("one_step", "coupled")

# counter-based random streams (distinct from the sampler's, which use 1-3)
_STREAM_PROMPT_MASK, _STREAM_COUPLED_RATE, _STREAM_COUPLED_MASK = 11, 12, 13


def estimator_masks(row_seeds, prompt_mask, completion_length: int, *, estimator: str, prompt_mask_rate: float = 0.15,
                    min_rate: float = 0.2, max_rate: float = 0.8, iteration: int = 0):
    """The masks an estimator puts on each row: a list of (B, P + C) boolean masks, one per forward pass
    (`one_step`: one; `coupled`: the pair M, complement of M over the completion). `prompt_mask` (B, P) is 1 on real
    prompt tokens (left padding 0); the completion's C positions follow the prompt. `iteration` draws another mask
    from the same row seed (one per update made from a batch of rollouts)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    batch, prompt_length = prompt_mask.shape
    device = prompt_mask.device
    seeds = row_seeds.to(device=device, dtype=torch.long)
    step = torch.full((), iteration, dtype=torch.long, device=device)
    completion = torch.ones(batch, completion_length, dtype=torch.bool, device=device)
    if estimator == "one_step":
        if not 0.0 <= prompt_mask_rate < 1.0:
            raise ValueError(f"prompt_mask_rate must lie in [0, 1), got {prompt_mask_rate}")
        # positions counted back from the prompt's end: the same for a row however far it is left-padded
        back = torch.arange(prompt_length - 1, -1, -1, device=device)
        u = counter_uniform(seeds, step, _STREAM_PROMPT_MASK, back)
        prompt = (u < prompt_mask_rate) & prompt_mask.bool()
        return [torch.cat([prompt, completion], dim=1)]
    if not 0.0 < min_rate <= max_rate < 1.0:
        raise ValueError(f"the coupled mask rates need 0 < min_rate <= max_rate < 1, got {min_rate} and {max_rate}")
    rate = min_rate + (max_rate - min_rate) * counter_uniform(
        seeds, step, _STREAM_COUPLED_RATE, torch.zeros(1, dtype=torch.long, device=device))
    u = counter_uniform(seeds, step, _STREAM_COUPLED_MASK, torch.arange(completion_length, device=device))
    first = u < rate
    clean_prompt = torch.zeros(batch, prompt_length, dtype=torch.bool, device=device)
    return [torch.cat([clean_prompt, first], dim=1), torch.cat([clean_prompt, ~first], dim=1)]


def completion_log_probs(model, prompt_ids, prompt_mask, completion_ids, row_seeds, *, mask_token_id: int,
                         estimator: str = "one_step", prompt_mask_rate: float = 0.15, min_rate: float = 0.2,
                         max_rate: float = 0.8, temperature: float = 1.0, config=None, compute_entropy: bool = False,
                         iteration: int = 0):
    """(B, C) log-probabilities of `completion_ids` under `model` by `estimator` (and (B, C) entropies of the
    predictive distributions scored, or None).

    `prompt_ids`/`prompt_mask` (B, P): the left-padded prompts; `completion_ids` (B, C): the whole canvas after the
    prompt (every position is attended to, as in sampling); `row_seeds` (B,) int64: each row's mask seed. The
    logits are divided by `temperature` (the rollouts' sampling temperature) before the softmax. `config` is the
    model's config (a DDP wrapper has none; default `model.config`); `iteration` picks the masks (`estimator_masks`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive to score completions, got {temperature}")
    config = config if config is not None else model.config
    clean = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), torch.ones_like(completion_ids)], dim=1)
    masks = estimator_masks(row_seeds, prompt_mask, completion_ids.shape[1], estimator=estimator,
                            prompt_mask_rate=prompt_mask_rate, min_rate=min_rate, max_rate=max_rate,
                            iteration=iteration)
    # the passes of a pair run as one batch: rows never see each other, so this changes no row's result
    noised = torch.cat([clean.masked_fill(mask, mask_token_id) for mask in masks])
    passes = len(masks)
    prompt_length = prompt_ids.shape[1]
    log_probs = torch.log_softmax(_completion_logits(model, noised, clean.repeat(passes, 1),
                                                     attention_mask.repeat(passes, 1), config,
                                                     completion_ids.shape[1]).float() / temperature, dim=-1)
    targets = completion_ids.repeat(passes, 1)
    token_log_probs = log_probs.gather(-1, targets[..., None]).squeeze(-1).view(passes, *completion_ids.shape)
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1).view(passes, *completion_ids.shape)
    # each token from the pass in which it was masked (one_step: the only pass)
    scored_in = torch.stack([mask[:, prompt_length:] for mask in masks]).float()  # (passes, B, C)
    token_log_probs = (token_log_probs * scored_in).sum(0)
    if entropy is not None:
        entropy = (entropy * scored_in).sum(0)
    return token_log_probs, entropy


def _completion_logits(model, noised, clean, attention_mask, config, completion_length: int):
    """(B, C, V) the logits predicting the last C tokens. The LM head runs only where they are read (the completion,
    and one position before it for a next-token model): on a long prompt, most of its cost and memory."""
    if getattr(config, "block_size", None) or completion_length >= noised.shape[1]:
        return token_logits(model, noised, clean, attention_mask, config)[:, -completion_length:]
    shift = getattr(config, "prediction_shift", 0)
    logits = model(input_ids=noised, attention_mask=attention_mask, logits_to_keep=completion_length + shift).logits
    return logits[:, :completion_length]  # next-token: token i from the output at i - 1
