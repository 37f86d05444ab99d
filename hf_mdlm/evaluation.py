"""Evaluation of masked diffusion language models.

Two families of measurements:

* **Likelihood** (needs only the model): :func:`elbo_perplexity`, a Monte-Carlo upper bound on the
  perplexity of held-out responses given their prompts (on the slack-free canvas, or on the text's
  probability summed over ``<slack>`` alignments), with :func:`paired_elbo_difference` to compare two
  models on the same examples and noise, and :func:`conditional_log_likelihood`, a Monte-Carlo lower
  bound on ``log p(completion | prompt)`` for one pair (LLaDA's estimator).
* **Samples judged by a reference autoregressive model** (any causal LM with its own tokenizer):
  :func:`generative_perplexity` (always reported together with token entropy and distinct-n, since a low
  perplexity alone rewards degenerate, repetitive text), :func:`win_rate` (pairwise, per prompt, by the
  judge's mean log-likelihood per token) and :func:`shift_robustness`, the positional-shift diagnostic of
  the slack-CTC specification (section 6): the same prompts and seeds are sampled with the sampler's
  ``shift_rate`` intervention at several rates and every shifted output is compared with the unshifted one.

Texts cross from the diffusion model to the judge as *strings*: generated ids are cleaned with
``strip_generation`` (cut at the first EOS, ``<slack>`` and mask tokens deleted), decoded with the diffusion
model's tokenizer, and re-tokenised with the judge's tokenizer. Token ids are never shared between the two
tokenizers, even when they happen to be the same tokenizer.

Every function is deterministic given its ``seed``, and does not depend on ``batch_size`` (each example,
replicate or prompt draws its randomness from its own generator), up to the floating-point effects of
padding on the model's arithmetic.

All results are plain dictionaries of numbers, lists and strings (NaN marks a value that is undefined,
e.g. the perplexity of a set of texts that are all empty).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .losses import masked_cross_entropy
from .noise import NoiseSchedule, get_schedule, mask_canvas

__all__ = [
    "elbo_perplexity",
    "paired_elbo_difference",
    "conditional_log_likelihood",
    "generative_perplexity",
    "score_texts",
    "summarize_scores",
    "win_rate",
    "win_rate_from_scores",
    "token_entropy",
    "distinct_n",
    "generate_continuations",
    "shift_robustness",
    "load_heldout",
    "spread_indices",
]

DISTINCT_NS = (1, 2, 3)
# The shift rate of the unshifted reference in `shift_robustness` (see there): positive, so that the sampler
# draws its shift coin flips (keeping the random streams of reference and shifted runs aligned), and so small
# that no token moves in practice.
PAIRED_REFERENCE_RATE = 1e-12
_MASK64 = (1 << 64) - 1
# Stream tags, so that the different random draws of one call never share a generator.
_TAG_OFFSET, _TAG_ELBO, _TAG_CLL, _TAG_PROMPT, _TAG_SLACK = 0x0FF5E7, 0xE1B0, 0xC11, 0x5EED, 0x51AC


# ---------------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (order matters); the same on every platform and run."""
    h = 0x243F6A8885A308D3
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*parts))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def _inference(model):
    """Eval mode and no gradients for the duration; the previous training mode is restored."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _config_value(model, name):
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, name, None)
        if value is not None:
            return value[0] if isinstance(value, (list, tuple)) and value else value
    return None


def _id_list(value, what: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {tuple(value.shape)}")
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise ValueError(f"{what} must be a sequence of token ids, got {type(value).__name__}")
    out = []
    for v in list(value):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{what} must hold integer token ids, got {v!r}")
        if int(v) < 0:
            raise ValueError(f"{what} holds a negative token id {int(v)}")
        out.append(int(v))
    return out


def _pairs(dataset, what: str = "dataset") -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, response_ids) pairs from a datasets.Dataset, a list of dicts or a list of 2-tuples."""
    if dataset is None:
        raise ValueError(f"{what} is None: pass rows with 'prompt_ids' and 'response_ids' (e.g. a held-out split)")
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        missing = [c for c in ("prompt_ids", "response_ids") if c not in columns]
        if missing:
            raise ValueError(f"{what} lacks column(s) {missing}; it has columns {list(columns)}")
        rows = zip(dataset["prompt_ids"], dataset["response_ids"])
    else:
        rows = list(dataset)
    pairs = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            if "prompt_ids" not in row or "response_ids" not in row:
                raise ValueError(f"{what} row {i} needs 'prompt_ids' and 'response_ids'; it has {sorted(row)}")
            prompt, response = row["prompt_ids"], row["response_ids"]
        elif isinstance(row, (tuple, list)) and len(row) == 2:
            prompt, response = row
        else:
            raise ValueError(f"{what} row {i} must be a mapping with prompt_ids/response_ids or a (prompt, response) pair")
        prompt, response = _id_list(prompt, f"{what} row {i} prompt_ids"), _id_list(response, f"{what} row {i} response_ids")
        if not response:
            raise ValueError(f"{what} row {i} has an empty response: there is nothing to score")
        pairs.append((prompt, response))
    if not pairs:
        raise ValueError(f"{what} is empty: nothing to evaluate")
    return pairs


def spread_indices(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when ``count`` is None or >= total).

    Held-out corpora are stored work by work, so the first N windows would all come from one work; evenly
    spaced windows cover all of them.
    """
    total = int(total)
    if count is None or count >= total:
        return list(range(total))
    count = _check_positive_int("count", count)
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, count)})


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ratio_stderr(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """Standard error of sum(x) / sum(n) over iid units (delta method, "ratio estimator"); nan with < 2 units."""
    k = len(numerators)
    if k < 2:
        return float("nan")
    ratio = numerators.sum() / denominators.sum()
    residuals = numerators - ratio * denominators
    return float(math.sqrt(k / (k - 1) * np.sum(residuals**2)) / denominators.sum())


# ---------------------------------------------------------------------------------------------------
# Likelihood: ELBO perplexity
# ---------------------------------------------------------------------------------------------------


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


def _slack_alignment(response, room, prob, slack_token_id, generator):
    """One draw of the slack insertion q(a | response) and its log-probability.

    q: each of the n + 1 gaps of the response gets one ``<slack>`` independently with probability ``prob``,
    conditioned on the canvas having room (at most ``room`` slacks). Sampled exactly: the number k from the
    binomial truncated to ``k <= room`` (inverse CDF), then k distinct gaps uniformly (given k, Bernoulli
    gaps are a uniform k-subset). ``log q = k log p + (n + 1 - k) log(1 - p) - log P(Binomial <= room)``.
    """
    gaps = len(response) + 1
    kmax = min(room, gaps)
    log_pmf = np.array([math.lgamma(gaps + 1) - math.lgamma(k + 1) - math.lgamma(gaps - k + 1)
                        + k * math.log(prob) + (gaps - k) * math.log1p(-prob) for k in range(kmax + 1)])
    log_mass = float(np.logaddexp.reduce(log_pmf))
    cdf = np.cumsum(np.exp(log_pmf - log_mass))
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    k = min(int(np.searchsorted(cdf, u, side="right")), kmax)
    chosen = set(torch.randperm(gaps, generator=generator)[:k].tolist())
    canvas = []
    for gap in range(gaps):
        if gap in chosen:
            canvas.append(int(slack_token_id))
        if gap < len(response):
            canvas.append(response[gap])
    log_q = k * math.log(prob) + (gaps - k) * math.log1p(-prob) - log_mass
    return canvas, log_q


def _resolve_schedule(schedule, time_eps) -> NoiseSchedule:
    if isinstance(schedule, NoiseSchedule):
        return schedule
    return get_schedule(schedule, time_eps)


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
    response gets a ``<slack>`` with probability ``slack_prob``, conditioned on fitting the canvas; see
    ``_slack_alignment``) and scores ``X = w(t) CE(a) + log q(a)``. Since
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
    mask_token_id = mask_token_id if mask_token_id is not None else _config_value(model, "mask_token_id")
    if mask_token_id is None:
        raise ValueError("mask_token_id is not given and the model config has none")
    if canvas_length is not None:
        canvas_length = _check_positive_int("canvas_length", canvas_length)
        fill_token_id = fill_token_id if fill_token_id is not None else _config_value(model, "eos_token_id")
        if fill_token_id is None:
            raise ValueError("canvas_length is set but there is no fill_token_id (and no EOS in the model config)")
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
            logits = model(input_ids=noised.to(device), attention_mask=attention.to(device)).logits
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


# ---------------------------------------------------------------------------------------------------
# Likelihood: conditional log-likelihood of one completion
# ---------------------------------------------------------------------------------------------------


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
    mask_token_id = mask_token_id if mask_token_id is not None else _config_value(model, "mask_token_id")
    if mask_token_id is None:
        raise ValueError("mask_token_id is not given and the model config has none")
    if canvas_length is not None:
        canvas_length = _check_positive_int("canvas_length", canvas_length)
        fill_token_id = fill_token_id if fill_token_id is not None else _config_value(model, "eos_token_id")
        if fill_token_id is None:
            raise ValueError("canvas_length is set but there is no fill_token_id (and no EOS in the model config)")
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
            logits = model(input_ids=noised.to(device), attention_mask=torch.ones_like(noised).to(device)).logits
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


# ---------------------------------------------------------------------------------------------------
# Text statistics
# ---------------------------------------------------------------------------------------------------


def token_entropy(tokens: Sequence) -> float:
    """Entropy (nats) of a text's own token distribution: ``-sum_v f_v log f_v`` with ``f_v`` the fraction
    of the text's tokens equal to ``v``. 0 for a text of one repeated token, ``log n`` for ``n`` distinct
    tokens; low values flag repetitive text. Raises on an empty text (undefined)."""
    tokens = list(tokens)
    if not tokens:
        raise ValueError("token_entropy of an empty text is undefined")
    n = len(tokens)
    return float(-sum(c / n * math.log(c / n) for c in Counter(tokens).values()))


def distinct_n(token_lists: Sequence[Sequence], n: int) -> float:
    """Corpus-level distinct-n: distinct n-grams / all n-grams, over all texts (n-grams never cross texts).

    nan when the texts hold no n-gram at all (every text shorter than ``n``).
    """
    n = _check_positive_int("n", n)
    seen, total = set(), 0
    for tokens in token_lists:
        tokens = tuple(tokens)
        for start in range(len(tokens) - n + 1):
            seen.add(tokens[start : start + n])
            total += 1
    return len(seen) / total if total else float("nan")


# ---------------------------------------------------------------------------------------------------
# The judge: scoring texts with a causal LM
# ---------------------------------------------------------------------------------------------------


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{what}[{i}] must be a string (decoded text), got {type(t).__name__}")
    return texts


def _judge_max_length(judge_model, max_length):
    if max_length is not None:
        return _check_positive_int("max_length", max_length, 2)
    config = getattr(judge_model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def score_texts(
    texts: Sequence[str],
    judge_model,
    judge_tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """Log-likelihood of each text under a causal LM judge, after re-tokenising it with the judge's tokenizer.

    The judge's context for text ``i`` is a start token (the judge tokenizer's BOS, else its EOS) followed by
    ``prompts[i]`` (tokenised without special tokens) when prompts are given; only the text's own tokens
    are scored. A text that is empty or only whitespace is *empty*: not scored (``num_tokens = 0``) and
    flagged. Context + text longer than the judge's window (``max_length``, default its config's
    ``n_positions`` / ``max_position_embeddings``) keeps the start token and the end of the prompt; a text
    longer than the window alone is cut to fit and flagged ``truncated``.

    Returns one dict per text: ``logprob`` (sum, nats), ``num_tokens``, ``tokens`` (the judge's ids of the
    scored tokens), ``empty``, ``truncated``.
    """
    texts = _check_texts(texts, "texts")
    if prompts is not None:
        prompts = _check_texts(prompts, "prompts")
        if len(prompts) != len(texts):
            raise ValueError(f"got {len(prompts)} prompts for {len(texts)} texts")
    batch_size = _check_positive_int("batch_size", batch_size)
    start = judge_tokenizer.bos_token_id if judge_tokenizer.bos_token_id is not None else judge_tokenizer.eos_token_id
    if start is None:
        raise ValueError("the judge tokenizer has neither a BOS nor an EOS token to start the context with")
    pad = judge_tokenizer.pad_token_id if judge_tokenizer.pad_token_id is not None else start
    window = _judge_max_length(judge_model, max_length)

    def encode(text):
        return list(judge_tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    results, jobs = [], []
    for i, text in enumerate(texts):
        empty = text.strip() == ""
        cont = [] if empty else encode(text)
        if not cont:
            results.append({"logprob": 0.0, "num_tokens": 0, "tokens": [], "empty": True, "truncated": False})
            continue
        context = [int(start)] + (encode(prompts[i]) if prompts is not None else [])
        truncated = False
        if window is not None:
            if len(cont) > window - 1:
                cont, truncated = cont[: window - 1], True
            room = window - len(cont)
            if len(context) > room:
                context = [context[0]] + (context[len(context) - (room - 1) :] if room > 1 else [])
        results.append({"logprob": 0.0, "num_tokens": len(cont), "tokens": cont, "empty": False, "truncated": truncated})
        jobs.append((i, context, cont))

    device = _device(judge_model)
    jobs.sort(key=lambda job: len(job[1]) + len(job[2]))  # similar lengths together: less padding
    with _inference(judge_model):
        for batch in _batches(jobs, batch_size):
            width = max(len(c) + len(t) for _, c, t in batch)
            ids = torch.full((len(batch), width), int(pad), dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (_, context, cont) in enumerate(batch):
                seq = context + cont
                ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention[b, : len(seq)] = 1
            logits = judge_model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            for b, (i, context, cont) in enumerate(batch):
                rows = logits[b, len(context) - 1 : len(context) + len(cont) - 1].float()
                target = torch.tensor(cont, dtype=torch.long, device=rows.device)
                logprob = rows.gather(-1, target[:, None])[:, 0] - rows.logsumexp(-1)
                results[i]["logprob"] = float(logprob.double().sum())
    return results


def summarize_scores(scores: Sequence[Mapping]) -> dict[str, Any]:
    """Generative perplexity, entropy and distinct-n from :func:`score_texts` output (see :func:`generative_perplexity`)."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to summarise")
    kept = [s for s in scores if not s["empty"]]
    num_tokens = sum(s["num_tokens"] for s in kept)
    nll = -sum(s["logprob"] for s in kept) / num_tokens if num_tokens else float("nan")
    out = {
        "gen_ppl": math.exp(nll) if num_tokens else float("nan"),
        "nll_per_token": nll,
        "entropy": float(np.mean([token_entropy(s["tokens"]) for s in kept])) if kept else float("nan"),
    }
    for n in DISTINCT_NS:
        out[f"distinct_{n}"] = distinct_n([s["tokens"] for s in kept], n)
    out.update(
        num_texts=len(scores),
        num_empty=len(scores) - len(kept),
        num_tokens=num_tokens,
        mean_tokens=num_tokens / len(scores),
        num_truncated=sum(bool(s["truncated"]) for s in kept),
    )
    return out


def generative_perplexity(
    texts: Sequence[str],
    judge_model,
    judge_tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Perplexity of generated texts under a judge causal LM, with the diversity numbers that must go with it.

    ``texts`` are clean generations (cut at their first EOS, ``<slack>``/mask removed, decoded: see
    :func:`generate_continuations`); each is re-tokenised with ``judge_tokenizer`` and scored by
    :func:`score_texts` (optionally conditioned on ``prompts``). Returns

    * ``gen_ppl = exp(-sum log p / number of judge tokens)`` over the non-empty texts, and ``nll_per_token``;
    * ``entropy``: the mean over non-empty texts of :func:`token_entropy` of the text's judge tokens (nats);
    * ``distinct_1``, ``distinct_2``, ``distinct_3``: :func:`distinct_n` over the non-empty texts' judge tokens;
    * ``num_texts``, ``num_empty`` (empty or whitespace-only texts: counted here, left out of every other
      number), ``num_tokens``, ``mean_tokens`` (per text, empty ones included), ``num_truncated``.

    A low gen-PPL alone is not quality: repeating one likely token gives a low gen-PPL with an entropy and
    distinct-n near 0, and many empty generations hide failures; read the numbers together.
    """
    return summarize_scores(
        score_texts(texts, judge_model, judge_tokenizer, prompts=prompts, batch_size=batch_size, max_length=max_length)
    )


# ---------------------------------------------------------------------------------------------------
# Pairwise win rate
# ---------------------------------------------------------------------------------------------------


def win_rate_from_scores(
    scores_a: Sequence[Mapping],
    scores_b: Sequence[Mapping],
    *,
    texts_a: Sequence[str] | None = None,
    texts_b: Sequence[str] | None = None,
    num_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    tie_tolerance: float = 1e-6,
) -> dict[str, Any]:
    """Win rate of A over B from per-text judge scores (see :func:`win_rate` for the rules)."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"got {len(scores_a)} texts for A but {len(scores_b)} for B: they must pair up per prompt")
    if not scores_a:
        raise ValueError("no pairs to compare")
    if texts_a is not None and texts_b is not None and not len(texts_a) == len(texts_b) == len(scores_a):
        raise ValueError("texts_a / texts_b do not match the scores in length")
    num_bootstrap = _check_positive_int("num_bootstrap", num_bootstrap, 0)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    outcomes = np.empty(len(scores_a), dtype=np.float64)
    for i, (a, b) in enumerate(zip(scores_a, scores_b)):
        if texts_a is not None and texts_b is not None and texts_a[i] == texts_b[i]:
            outcomes[i] = 0.5
        elif a["empty"] or b["empty"]:
            outcomes[i] = 0.5 if a["empty"] and b["empty"] else (0.0 if a["empty"] else 1.0)
        else:
            diff = a["logprob"] / a["num_tokens"] - b["logprob"] / b["num_tokens"]
            outcomes[i] = 0.5 if abs(diff) <= tie_tolerance else float(diff > 0)
    rate = float(outcomes.mean())
    low = high = float("nan")
    if num_bootstrap > 0:
        rng = np.random.default_rng(_check_seed(seed))
        draws = outcomes[rng.integers(0, len(outcomes), size=(num_bootstrap, len(outcomes)))].mean(axis=1)
        alpha = (1 - confidence) / 2
        low, high = (float(x) for x in np.quantile(draws, [alpha, 1 - alpha]))
    return {
        "win_rate": rate,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "wins": int((outcomes == 1).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "losses": int((outcomes == 0).sum()),
        "num_pairs": len(outcomes),
        "num_empty_a": int(sum(bool(s["empty"]) for s in scores_a)),
        "num_empty_b": int(sum(bool(s["empty"]) for s in scores_b)),
        "num_bootstrap": num_bootstrap,
    }


def win_rate(
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    judge_model,
    judge_tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    num_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    tie_tolerance: float = 1e-6,
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, Any]:
    """How often text A beats text B for the same prompt, judged by the judge's mean log-likelihood per token.

    Per pair ``i`` (``texts_a[i]`` against ``texts_b[i]``): identical strings tie; an empty text (empty or
    whitespace only) loses to a non-empty one and ties with another empty one; otherwise A wins when its
    mean log-likelihood per judge token exceeds B's by more than ``tie_tolerance``, and the pair ties when
    they differ by at most ``tie_tolerance``. Wins count 1, ties 1/2, losses 0; ``win_rate`` is the mean.
    The confidence interval is the percentile bootstrap over prompts (``num_bootstrap`` resamples of the
    pairs with replacement, numpy generator seeded with ``seed``; 0 resamples: no interval).

    Returns ``win_rate``, ``ci_low``, ``ci_high``, ``wins``, ``ties``, ``losses``, ``num_pairs``,
    ``num_empty_a``, ``num_empty_b``, ``num_bootstrap``, ``confidence``.
    """
    texts_a = _check_texts(texts_a, "texts_a")
    texts_b = _check_texts(texts_b, "texts_b")
    if len(texts_a) != len(texts_b):
        raise ValueError(f"got {len(texts_a)} texts for A but {len(texts_b)} for B: they must pair up per prompt")
    if prompts is not None:
        prompts = _check_texts(prompts, "prompts")
        if len(prompts) != len(texts_a):
            raise ValueError(f"got {len(prompts)} prompts for {len(texts_a)} pairs")
        prompts = prompts + prompts  # one per text of A, then one per text of B
    scores = score_texts(texts_a + texts_b, judge_model, judge_tokenizer, prompts=prompts, batch_size=batch_size,
                         max_length=max_length)
    return win_rate_from_scores(
        scores[: len(texts_a)], scores[len(texts_a) :], texts_a=texts_a, texts_b=texts_b,
        num_bootstrap=num_bootstrap, seed=seed, confidence=confidence, tie_tolerance=tie_tolerance,
    )


# ---------------------------------------------------------------------------------------------------
# Sampling and the shift-robustness diagnostic
# ---------------------------------------------------------------------------------------------------


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
    from .generation_mdlm import strip_generation

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
            seeds = [_mix(seed, _TAG_PROMPT, i) for i in batch]
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
    """The positional-shift diagnostic (slack-CTC specification, section 6).

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
        "num_prompts": len(ids_list),
        "seed": seed,
        "condition_on_prompt": condition_on_prompt,
        "reference_sampler_shift_rate": PAIRED_REFERENCE_RATE if paired_reference else 0.0,
        "generation_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }


# ---------------------------------------------------------------------------------------------------
# Held-out data
# ---------------------------------------------------------------------------------------------------


def load_heldout(data_args, tokenizer, *, max_examples: int | None = None, spread: bool = True):
    """The held-out part of a dataset, preprocessed into ``{prompt_ids, response_ids, example_id}`` rows.

    Only the held-out part is read and tokenised (not the training split). Where it comes from, given a
    :class:`hf_mdlm.data.DataArguments`:

    * ``data_args.eval_split`` when set: a split name of ``data_args.dataset``, or a file/folder path;
    * else, with no ``data_args.dataset``: the bundled corpus's held-out works;
    * else the dataset's ``validation`` split, else its ``test`` split;
    * else a ``ValueError``: a random slice of the training rows is never taken silently as held-out data.

    ``max_examples`` keeps that many examples, spread evenly over the split (``spread=True``; held-out
    files are stored document by document) or the first ones.
    """
    from .data import bundled_corpus_files, load_raw_datasets, preprocess_dataset

    cache_dir = getattr(data_args, "dataset_cache_dir", None)
    source = data_args.dataset
    split = data_args.eval_split
    if split is not None and os.path.exists(split):
        raw = load_raw_datasets(split, None, cache_dir)
        part, name = raw[next(iter(raw))], split
    elif source is None:
        bundled = bundled_corpus_files()
        if bundled is None:
            raise ValueError("no dataset given and the bundled corpus (examples/data/) was not found")
        if split is not None:
            raise ValueError(f"eval_split {split!r} is not a file; the bundled corpus's held-out part has no named splits")
        raw = load_raw_datasets(str(bundled["eval"]), None, cache_dir)
        part, name = raw["train"], "bundled held-out works"
    else:
        raw = load_raw_datasets(source, data_args.dataset_config, cache_dir)
        candidates = [split] if split is not None else ["validation", "test"]
        found = next((c for c in candidates if c in raw), None)
        if found is None:
            if split is not None:
                raise ValueError(f"eval split {split!r} is neither a split of {source!r} ({list(raw)}) nor an existing path")
            raise ValueError(
                f"dataset {source!r} has no held-out part: its splits are {list(raw)} (no 'validation' or 'test'). "
                "Pass eval_split (a split name, or a file of held-out rows)."
            )
        part, name = raw[found], f"{source}[{found}]"
    limit = None if (spread or max_examples is None) else max_examples
    rows, _ = preprocess_dataset(part, tokenizer, data_args, split="eval", max_samples=limit)
    if len(rows) == 0:
        raise ValueError(f"the held-out part ({name}) gave no examples after preprocessing")
    if spread and max_examples is not None and len(rows) > max_examples:
        rows = rows.select(spread_indices(len(rows), max_examples))
    return rows
