"""Sampling held-out prompts and the positional-shift diagnostic (docs/objective.md §7): the same prompts and
seeds sampled at several shift rates, every shifted output judged against the unshifted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .judge import score_texts, summarize_scores, win_rate_from_scores
from .utils import (
    _TAG_PROMPT,
    _batches,
    _check_positive_int,
    _check_seed,
    _config_value,
    _device,
    _id_list,
)

# The shift rate of the unshifted reference in `shift_robustness` (see there): positive, so that the sampler
# draws its shift coin flips (keeping the random streams of reference and shifted runs aligned), and so small
# that no token moves in practice.
PAIRED_REFERENCE_RATE = 1e-12


def _prompt_id_lists(prompts, tokenizer) -> list[list[int]]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings or of token id lists")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("string prompts need the model's tokenizer")
            ids = list(tokenizer(p)["input_ids"])
        else:
            ids = _id_list(p, f"prompts[{i}]")
        if not ids:
            raise ValueError(f"prompts[{i}] is empty")
        out.append(ids)
    return out


def generate_continuations(
    model,
    tokenizer,
    prompts,
    *,
    seed: int = 0,
    batch_size: int = 16,
    generation_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sample one continuation per prompt with ``model.generate`` and clean it.

    ``prompts``: strings (tokenised with ``tokenizer``, special tokens included) or token id lists. Prompt
    ``i`` is sampled with its own seed, derived from ``(seed, i)``, so its sample does not depend on the
    batch or on the other prompts, and a second call with other ``generation_kwargs`` (e.g. another
    ``shift_rate``) uses the same randomness per prompt. Prompts of equal length are batched together (no
    padding). The raw canvas is cut at its first EOS and cleaned of ``<slack>`` and mask tokens
    (``strip_generation``), then decoded with ``skip_special_tokens=True``.

    Returns one dict per prompt: ``prompt_ids``, ``prompt_text``, ``ids`` (clean generated ids), ``text``,
    ``num_slack`` (``<slack>`` tokens the sampler committed before the first EOS).
    """
    from ..generation_mdlm import mix_seed, strip_generation

    ids_list = _prompt_id_lists(prompts, tokenizer)
    seed = _check_seed(seed)
    batch_size = _check_positive_int("batch_size", batch_size)
    kwargs = dict(generation_kwargs or {})
    if "generator" in kwargs:
        raise ValueError("pass seed=..., not a generator: each prompt gets its own generator from (seed, index)")
    if kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("generate_continuations samples one continuation per prompt: num_return_sequences must be 1")
    mask_id = kwargs.get("mask_token_id", _config_value(model, "mask_token_id"))
    slack_id = kwargs.get("slack_token_id", _config_value(model, "slack_token_id"))
    eos_id = kwargs.get("eos_token_id", _config_value(model, "eos_token_id"))
    eos_ids = set(eos_id if isinstance(eos_id, (list, tuple)) else [] if eos_id is None else [eos_id])
    device = _device(model)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(ids_list):
        groups.setdefault(len(ids), []).append(i)
    out: list[dict[str, Any] | None] = [None] * len(ids_list)
    for length in sorted(groups):
        for batch in _batches(groups[length], batch_size):
            input_ids = torch.tensor([ids_list[i] for i in batch], dtype=torch.long, device=device)
            seeds = [mix_seed(seed, _TAG_PROMPT, i) for i in batch]
            canvas = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generator=seeds, **kwargs)
            if not isinstance(canvas, torch.Tensor):
                canvas = canvas.sequences
            raw = canvas[:, length:].tolist()
            clean = strip_generation(raw, mask_token_id=mask_id, slack_token_id=slack_id, eos_token_id=eos_id)
            for b, i in enumerate(batch):
                committed = []
                for t in raw[b]:
                    if t in eos_ids:
                        break
                    committed.append(t)
                out[i] = {
                    "prompt_ids": ids_list[i],
                    "prompt_text": tokenizer.decode(ids_list[i], skip_special_tokens=True),
                    "ids": clean[b],
                    "text": tokenizer.decode(clean[b], skip_special_tokens=True),
                    "num_slack": sum(t == slack_id for t in committed) if slack_id is not None else 0,
                }
    return out  # type: ignore[return-value]


def shift_robustness(
    model,
    tokenizer,
    prompts,
    *,
    shift_rates: Sequence[float] = (0.0, 0.01, 0.05, 0.1, 0.2),
    judge_model,
    judge_tokenizer,
    generation_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    judge_batch_size: int = 16,
    condition_on_prompt: bool = True,
    num_bootstrap: int = 1000,
    num_examples: int = 3,
    paired_reference: bool = True,
) -> dict[str, Any]:
    """The positional-shift diagnostic (docs/objective.md §7; the sensitivity study of arXiv 2601.22947).

    For every rate in ``shift_rates`` (0 is always added as the reference), the same ``prompts`` are
    sampled with the same per-prompt seeds (:func:`generate_continuations`) and the sampler's
    ``shift_rate`` set to the rate; everything else comes from ``generation_kwargs``. Each set of texts is
    scored by the judge (conditioned on the decoded prompt when ``condition_on_prompt``). Per rate:

    * ``gen_ppl``, ``nll_per_token``, ``entropy``, ``distinct_1..3``, ``num_empty``, ``mean_tokens``, ... as in
      :func:`generative_perplexity`;
    * ``mean_slack``: ``<slack>`` tokens committed per sample (before the first EOS);
    * ``win_rate_unshifted``: :func:`win_rate` of the unshifted (rate 0) output against the output at this
      rate, per prompt: 0.5 means the shift does not hurt, values above 0.5 measure how much it does.

    Pairing. At ``temperature > 0`` (or ``remasking="random"``) the sampler's random numbers decide tokens
    too, and the sampler draws its shift coin flips from the same per-row stream only when the rate is
    positive; a rate-0 run would then use other random numbers for the same tokens than every shifted run,
    and the comparison would mix the effect of the shift with sampling noise. With ``paired_reference``
    (default) the reference is therefore sampled with ``shift_rate = PAIRED_REFERENCE_RATE`` (1e-12): the
    coin flips are drawn as at any positive rate, the runs use the same random numbers for the same tokens
    up to the first actual shift, and the chance that any token of the reference moves is about 1e-12 per
    token (its output distribution is the normal sampler's). At ``temperature=0`` with confidence
    remasking the two settings give identical reference outputs.

    Returns ``{"shift_rates", "per_rate": [...], "examples": [a few prompts with their texts per rate],
    "texts": {rate: texts}, "num_prompts", "seed", "generation_kwargs"}``.
    """
    kwargs = dict(generation_kwargs or {})
    if "shift_rate" in kwargs:
        raise ValueError("give the shift rates as shift_rates=..., not in generation_kwargs")
    if isinstance(shift_rates, (int, float)) or len(shift_rates) == 0:
        raise ValueError("shift_rates must be a non-empty list of rates in [0, 1)")
    rates = []
    for rate in shift_rates:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"shift rates must be numbers in [0, 1), got {rate!r}")
        if float(rate) not in rates:
            rates.append(float(rate))
    if 0.0 not in rates:
        rates.insert(0, 0.0)
    rates.sort()
    ids_list = _prompt_id_lists(prompts, tokenizer)

    samples, scores = {}, {}
    for rate in rates:
        sampler_rate = PAIRED_REFERENCE_RATE if rate == 0.0 and paired_reference else rate
        samples[rate] = generate_continuations(
            model, tokenizer, ids_list, seed=seed, batch_size=batch_size,
            generation_kwargs={**kwargs, "shift_rate": sampler_rate},
        )
        texts = [s["text"] for s in samples[rate]]
        prompt_texts = [s["prompt_text"] for s in samples[rate]] if condition_on_prompt else None
        scores[rate] = score_texts(texts, judge_model, judge_tokenizer, prompts=prompt_texts, batch_size=judge_batch_size)

    reference_texts = [s["text"] for s in samples[0.0]]
    per_rate = []
    for rate in rates:
        texts = [s["text"] for s in samples[rate]]
        row = {"shift_rate": rate, **summarize_scores(scores[rate])}
        row["mean_slack"] = float(np.mean([s["num_slack"] for s in samples[rate]]))
        row["win_rate_unshifted"] = win_rate_from_scores(
            scores[0.0], scores[rate], texts_a=reference_texts, texts_b=texts, num_bootstrap=num_bootstrap, seed=seed
        )
        per_rate.append(row)
    examples = [
        {"prompt": samples[0.0][i]["prompt_text"], **{f"shift_{rate:g}": samples[rate][i]["text"] for rate in rates}}
        for i in range(min(num_examples, len(ids_list)))
    ]
    return {
        "shift_rates": rates,
        "per_rate": per_rate,
        "examples": examples,
        "texts": {f"{rate:g}": [s["text"] for s in samples[rate]] for rate in rates},
        "ids": {f"{rate:g}": [s["ids"] for s in samples[rate]] for rate in rates},
        "prompts": [s["prompt_text"] for s in samples[0.0]],
        "num_prompts": len(ids_list),
        "seed": seed,
        "condition_on_prompt": condition_on_prompt,
        "reference_sampler_shift_rate": PAIRED_REFERENCE_RATE if paired_reference else 0.0,
        "generation_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
