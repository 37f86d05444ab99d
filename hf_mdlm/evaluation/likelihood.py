"""Likelihood of held-out data under a masked diffusion LM: ELBO perplexity bounds and LLaDA's conditional
log-likelihood estimate (docs/objective.md §8).

Every function is deterministic given its ``seed`` and does not depend on ``batch_size``: each example and
replicate draws its randomness from its own generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..training.block_diffusion import token_logits
from ..training.canvas import NoiseSchedule, draw_slack_gaps, get_schedule, mask_canvas, slack_gaps_log_prob
from ..training.losses import masked_cross_entropy
from .utils import (
    _TAG_CLL,
    _TAG_ELBO,
    _TAG_OFFSET,
    _TAG_SLACK,
    _batches,
    _check_positive_int,
    _check_seed,
    _config_value,
    _device,
    _generator,
    _id_list,
    _inference,
    _pairs,
    _ratio_stderr,
)


def _canvas_rows(pairs, canvas_length, fill_token_id):
    """Per example: (clean row = prompt + canvas, prompt length, canvas length)."""
    rows = []
    for i, (prompt, response) in enumerate(pairs):
        if canvas_length is None:
            canvas = response
        else:
            if len(response) > canvas_length:
                raise ValueError(f"example {i}: response has {len(response)} tokens, more than canvas_length={canvas_length}")
            canvas = response + [fill_token_id] * (canvas_length - len(response))
        rows.append((prompt + canvas, len(prompt), len(canvas)))
    return rows


# The proposal of the slack-marginal bound: the training insertion rule, sampled exactly (docs/objective.md §8).
def _slack_alignment(response, room, prob, slack_token_id, generator):
    """One draw of the training-time slack insertion q(a | response) (bernoulli rule, at most ``room`` slacks) and
    its log-probability: the same `draw_slack_gaps` that builds the training canvases, scored exactly by
    `slack_gaps_log_prob`."""
    gaps = draw_slack_gaps(len(response), room, "bernoulli", prob, generator).tolist()
    canvas = []
    for gap, has_slack in enumerate(gaps):
        if has_slack:
            canvas.append(int(slack_token_id))
        if gap < len(response):
            canvas.append(response[gap])
    return canvas, slack_gaps_log_prob(sum(gaps), len(response), room, "bernoulli", prob)


def _canvas_settings(model, mask_token_id, canvas_length, fill_token_id):
    """The mask id and, with a canvas length, the fill id: given, else the model config's (EOS fills)."""
    mask_token_id = mask_token_id if mask_token_id is not None else _config_value(model, "mask_token_id")
    if mask_token_id is None:
        raise ValueError("mask_token_id is not given and the model config has none")
    if canvas_length is not None:
        canvas_length = _check_positive_int("canvas_length", canvas_length)
        fill_token_id = fill_token_id if fill_token_id is not None else _config_value(model, "eos_token_id")
        if fill_token_id is None:
            raise ValueError("canvas_length is set but there is no fill_token_id (and no EOS in the model config)")
    return mask_token_id, canvas_length, fill_token_id


def _resolve_schedule(schedule, time_eps) -> NoiseSchedule:
    if isinstance(schedule, NoiseSchedule):
        return schedule
    return get_schedule(schedule, time_eps)


# The masked-diffusion ELBO as a perplexity bound (docs/objective.md §8; MDLM arXiv 2406.07524).
def elbo_perplexity(
    model,
    dataset,
    *,
    num_samples: int = 8,
    schedule: str | NoiseSchedule = "linear",
    time_eps: float = 1e-3,
    mask_token_id: int | None = None,
    canvas_length: int | None = None,
    fill_token_id: int | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    slack_prob: float = 0.0,
    slack_token_id: int | None = None,
) -> dict[str, Any]:
    """Monte-Carlo ELBO perplexity (an upper bound) of the responses of ``(prompt_ids, response_ids)`` rows.

    The canvas of an example is its response (``canvas_length=None``), or its response followed by
    ``fill_token_id`` (default: the model's EOS) up to ``canvas_length`` positions: the canvas the model was
    trained on with ``canvas_padding="eos"``. The prompt is never masked. For one example and one time
    ``t``, every canvas position is masked independently with probability ``m(t)`` and

        X(t) = w(t) * sum over masked canvas positions i of -log p_model(c_i | noised input),

    with the schedule's weight ``w(t)`` (``1 / m(t)`` for "linear"). ``E_t[X(t)]`` with ``t ~ U[0, 1)`` is
    the masked-diffusion bound on ``-log p(canvas | prompt)``, so on the negative log-likelihood of the
    response (the canvas is a function of it). Two details, as in LLaDA's evaluation: the linear weight
    ``1/m`` exceeds the continuous-time weight ``m'/m`` by the factor ``1 / (1 - eps)``, and the
    ``O(eps)`` reconstruction term at ``t = 0`` is left out. The per-token NLL is the summed bound over
    all examples divided by the number of response tokens (EOS included, fill positions excluded: their
    cost is part of the bound, but they are not text), and the perplexity is its exponential.

    Slack. With ``slack_prob = 0`` (default) the canvas is slack-free: for a model trained with
    ``<slack>`` that is one of many canvases that give the same text, and the bound ignores the others
    (valid, but looser than for a model trained without slack). With ``slack_prob > 0`` (needs
    ``canvas_length``) the bound is on the text's probability summed over slack alignments: each
    (example, replicate) draws a canvas ``a`` from q = the training-time insertion (each gap of the
    response gets a ``<slack>`` with probability ``slack_prob``; when more than fit, a random subset that fits is
    kept; see ``_slack_alignment``) and scores ``X = w(t) CE(a) + log q(a)``. Since
    ``-log sum_a p(a) <= E_q[-log p(a) + log q(a)]`` (Jensen) and ``-log p(a) <= E_t[w(t) CE(a)]``,
    ``E[X]`` is again an upper bound on the NLL: the entropy of q is credited back. Every choice of q
    gives a valid bound, so for any model the smaller of the two bounds is the better one.

    Monte Carlo: ``num_samples`` replicates. Replicate ``r`` draws one offset ``u_r`` and gives example ``e``
    (of ``N``, in dataset order) the time ``t = frac(u_r + e / N)`` (low-discrepancy across the examples,
    as in training); its masks come from a generator seeded by ``(seed, e, r)``. Replicates are therefore
    independent, and each example's times are iid uniform across replicates.

    Returns a dict with

    * ``nll_per_token``, ``perplexity`` = ``exp(nll_per_token)``;
    * ``stderr``: standard error of ``nll_per_token`` over examples (ratio estimator, delta method, on the
      per-example means over replicates). It covers both the Monte-Carlo noise and the choice of held-out
      examples; it is slightly conservative because the stratified times make the examples of a replicate
      negatively correlated. ``perplexity_ci95`` is ``exp(nll_per_token ± 1.96 stderr)``;
    * ``mc_stderr``: the Monte-Carlo noise alone (the held-out set taken as fixed): the standard deviation
      of the replicates' per-token NLLs over sqrt(num_samples) (nan with one replicate);
    * ``num_tokens`` (response tokens), ``num_canvas_positions``, ``num_examples``, ``num_samples``;
    * ``per_example_nll`` (summed bound per example, mean over replicates) and ``per_example_tokens``, for
      paired comparisons of models on the same rows and seed (:func:`paired_elbo_difference`);
    * ``replicate_nll_per_token``.
    """
    pairs = _pairs(dataset)
    num_samples = _check_positive_int("num_samples", num_samples)
    batch_size = _check_positive_int("batch_size", batch_size)
    seed = _check_seed(seed)
    schedule = _resolve_schedule(schedule, time_eps)
    mask_token_id, canvas_length, fill_token_id = _canvas_settings(model, mask_token_id, canvas_length, fill_token_id)
    if pad_token_id is None:
        pad_token_id = _config_value(model, "pad_token_id")
        pad_token_id = pad_token_id if pad_token_id is not None else (fill_token_id if fill_token_id is not None else 0)
    slack_prob = float(slack_prob)
    if not 0.0 <= slack_prob < 1.0:
        raise ValueError(f"slack_prob must be in [0, 1), got {slack_prob}")
    if slack_prob > 0:
        if canvas_length is None:
            raise ValueError("slack_prob > 0 needs canvas_length (the slack tokens take canvas positions)")
        slack_token_id = slack_token_id if slack_token_id is not None else _config_value(model, "slack_token_id")
        if slack_token_id is None:
            raise ValueError("slack_prob > 0 needs slack_token_id (not given, and the model config has none)")

    rows = _canvas_rows(pairs, canvas_length, fill_token_id)

    def canvas_of(e, r):
        """(clean row, prompt length, canvas length, log q) of example e in replicate r."""
        ids, p_len, c_len = rows[e]
        if slack_prob == 0:
            return ids, p_len, c_len, 0.0
        response = pairs[e][1]
        canvas, log_q = _slack_alignment(response, canvas_length - len(response), slack_prob, slack_token_id,
                                         _generator(seed, _TAG_SLACK, e, r))
        canvas = canvas + [fill_token_id] * (canvas_length - len(canvas))
        return ids[:p_len] + canvas, p_len, c_len, log_q
    n_examples = len(rows)
    offsets = [float(torch.rand((), generator=_generator(seed, _TAG_OFFSET, r), dtype=torch.float64)) for r in range(num_samples)]
    values = np.zeros((n_examples, num_samples), dtype=np.float64)
    items = [(e, r) for e in range(n_examples) for r in range(num_samples)]
    device = _device(model)
    with _inference(model):
        for batch in _batches(items, batch_size):
            canvases = [canvas_of(e, r) for e, r in batch]
            width = max(len(c[0]) for c in canvases)
            clean = torch.full((len(batch), width), int(pad_token_id), dtype=torch.long)
            maskable = torch.zeros((len(batch), width), dtype=torch.bool)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            times = torch.empty(len(batch), dtype=torch.float64)
            for b, (e, r) in enumerate(batch):
                ids, p_len, c_len, _ = canvases[b]
                clean[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                maskable[b, p_len : p_len + c_len] = True
                attention[b, : len(ids)] = 1
                times[b] = math.fmod(offsets[r] + e / n_examples, 1.0)
            generators = [_generator(seed, _TAG_ELBO, e, r) for e, r in batch]
            noised, masked = mask_canvas(
                clean, times, maskable, mask_token_id=int(mask_token_id), schedule=schedule, generator=generators
            )
            logits = token_logits(model, noised.to(device), clean.to(device), attention.to(device), model.config)
            ce = masked_cross_entropy(logits, clean.to(device), masked.to(device)).double().cpu()
            weighted = schedule.weight(times).double() * ce
            for b, (e, r) in enumerate(batch):
                values[e, r] = float(weighted[b]) + canvases[b][3]

    tokens = np.array([len(response) for _, response in pairs], dtype=np.float64)
    per_example = values.mean(axis=1)
    total_tokens = tokens.sum()
    nll = float(per_example.sum() / total_tokens)
    replicate = values.sum(axis=0) / total_tokens
    mc_stderr = float(replicate.std(ddof=1) / math.sqrt(num_samples)) if num_samples > 1 else float("nan")
    stderr = _ratio_stderr(per_example, tokens)
    return {
        "nll_per_token": nll,
        "perplexity": math.exp(nll),
        "stderr": stderr,
        "perplexity_ci95": [math.exp(nll - 1.96 * stderr), math.exp(nll + 1.96 * stderr)]
        if math.isfinite(stderr) else [float("nan"), float("nan")],
        "mc_stderr": mc_stderr,
        "num_tokens": int(total_tokens),
        "num_canvas_positions": int(sum(c for _, _, c in rows)),
        "num_examples": n_examples,
        "num_samples": num_samples,
        "canvas_length": canvas_length,
        "schedule": repr(schedule),
        "seed": seed,
        "slack_prob": slack_prob,
        "per_example_nll": per_example.tolist(),
        "per_example_tokens": tokens.astype(int).tolist(),
        "replicate_nll_per_token": replicate.tolist(),
    }


def paired_elbo_difference(result_a: Mapping, result_b: Mapping) -> dict[str, float]:
    """``nll_per_token(a) - nll_per_token(b)`` with a paired standard error over the shared examples.

    Both results must come from :func:`elbo_perplexity` on the same rows (same per-example token counts);
    with the same seed they also share times and masks (common random numbers), which removes most of the
    Monte-Carlo noise from the difference. Negative = ``a`` has the lower (better) bound.
    """
    tokens_a = np.asarray(result_a["per_example_tokens"], dtype=np.float64)
    tokens_b = np.asarray(result_b["per_example_tokens"], dtype=np.float64)
    if tokens_a.shape != tokens_b.shape or not np.array_equal(tokens_a, tokens_b):
        raise ValueError("the two ELBO results were not computed on the same examples")
    diff = np.asarray(result_a["per_example_nll"]) - np.asarray(result_b["per_example_nll"])
    value = float(diff.sum() / tokens_a.sum())
    stderr = _ratio_stderr(diff, tokens_a)
    return {"nll_difference": value, "stderr": stderr, "z": value / stderr if stderr and math.isfinite(stderr) else float("nan"),
            "same_seed": result_a.get("seed") == result_b.get("seed")}


# LLaDA's Monte-Carlo lower bound on log p(completion | prompt) (arXiv 2502.09992; docs/objective.md §8).
def conditional_log_likelihood(
    model,
    prompt_ids,
    completion_ids,
    *,
    num_samples: int = 32,
    mask_token_id: int | None = None,
    canvas_length: int | None = None,
    fill_token_id: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Monte-Carlo lower bound on ``log p(completion | prompt)`` (nats), LLaDA's estimator.

    The canvas ``c`` is the completion (``canvas_length=None``) or the completion followed by
    ``fill_token_id`` (default: the model's EOS) up to ``canvas_length``; let ``M = len(c)``. Sample ``j``
    draws a number of masks ``l_j`` uniformly from ``{1, ..., M}``, masks a uniformly random set ``S_j`` of
    ``l_j`` canvas positions (the prompt is never masked), and scores

        X_j = (M / l_j) * sum over i in S_j of log p_model(c_i | prompt, c with S_j masked),

    i.e. the masked tokens' log-likelihood weighted by 1 / (masked ratio). For masked diffusion models,
    ``E[X_j] <= log p(c | prompt)`` (the ELBO written over the number of masked tokens), so the estimate
    ``mean_j X_j`` is a lower bound in expectation, and is the log-likelihood of the completion when the
    canvas is the completion itself. Compared with drawing a continuous time, drawing the number of masks
    directly removes the variance of that number.

    Returns ``{"log_likelihood", "stderr" (std of X_j / sqrt(num_samples); the samples are iid),
    "num_tokens" (M), "num_completion_tokens", "num_samples", "per_sample"}``.
    """
    prompt = _id_list(prompt_ids, "prompt_ids")
    completion = _id_list(completion_ids, "completion_ids")
    if not completion:
        raise ValueError("completion_ids is empty: there is nothing to score")
    num_samples = _check_positive_int("num_samples", num_samples)
    batch_size = _check_positive_int("batch_size", batch_size)
    seed = _check_seed(seed)
    mask_token_id, canvas_length, fill_token_id = _canvas_settings(model, mask_token_id, canvas_length, fill_token_id)
    [(clean_ids, p_len, m)] = _canvas_rows([(prompt, completion)], canvas_length, fill_token_id)
    clean = torch.tensor(clean_ids, dtype=torch.long)
    values = np.zeros(num_samples, dtype=np.float64)
    device = _device(model)
    with _inference(model):
        for batch in _batches(list(range(num_samples)), batch_size):
            masked = torch.zeros((len(batch), len(clean_ids)), dtype=torch.bool)
            counts = []
            for b, j in enumerate(batch):
                g = _generator(seed, _TAG_CLL, j)
                count = int(torch.randint(1, m + 1, (), generator=g))
                masked[b, p_len + torch.randperm(m, generator=g)[:count]] = True
                counts.append(count)
            rows = clean.expand(len(batch), -1)
            noised = rows.masked_fill(masked, int(mask_token_id))
            logits = token_logits(model, noised.to(device), rows.to(device), torch.ones_like(noised).to(device),
                                  model.config)
            ce = masked_cross_entropy(logits, rows.to(device), masked.to(device)).double().cpu()
            for b, j in enumerate(batch):
                values[j] = -(m / counts[b]) * float(ce[b])
    stderr = float(values.std(ddof=1) / math.sqrt(num_samples)) if num_samples > 1 else float("nan")
    return {
        "log_likelihood": float(values.mean()),
        "stderr": stderr,
        "num_tokens": m,
        "num_completion_tokens": len(completion),
        "num_samples": num_samples,
        "per_sample": values.tolist(),
    }
