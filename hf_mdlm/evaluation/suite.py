"""One model measured on held-out data: the ELBO bounds and, with a judge, the samples and shift-robustness curve
of each named sampler (what `examples/evaluate.py` and `examples/replicate.py` run)."""

from __future__ import annotations

import argparse
import logging
import time

from ..data.loading import spread_indices
from ..generation_mdlm import REMASKING_STRATEGIES
from .judge import generative_perplexity
from .likelihood import elbo_perplexity
from .shift import shift_robustness

logger = logging.getLogger("evaluate")

DEFAULT_SHIFT_RATES = (0.0, 0.01, 0.05, 0.1, 0.2)

# Named samplers. "ancestral": every step unmasks random positions with tokens sampled at temperature 1, the
# generative process whose likelihood the ELBO bounds. "greedy": LLaDA's default decoding (argmax, most
# confident positions first), the decoding of the slack-CTC paper.
SAMPLERS = {
    "ancestral": {"remasking": "random", "temperature": 1.0},
    "greedy": {"remasking": "low_confidence", "temperature": 0.0},
}


def parse_samplers(text: str) -> dict:
    """'ancestral,greedy' or custom 'NAME:REMASKING:TEMPERATURE' entries, comma separated."""
    out = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item in SAMPLERS:
            out[item] = dict(SAMPLERS[item])
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(
                f"unknown sampler {item!r}: use {', '.join(SAMPLERS)} or NAME:REMASKING:TEMPERATURE")
        if parts[1] not in REMASKING_STRATEGIES:
            raise argparse.ArgumentTypeError(
                f"unknown remasking {parts[1]!r} in sampler {item!r}: expected one of {REMASKING_STRATEGIES}")
        try:
            out[parts[0]] = {"remasking": parts[1], "temperature": float(parts[2])}
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad temperature in sampler {item!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("no sampler given")
    return out


def parse_numbers(text: str, what: str = "values", below: float | None = None) -> list[float]:
    """Comma-separated numbers >= 0 (and < `below` if given), for argparse."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (0 <= v and (below is None or v < below)) for v in values):
        allowed = "non-negative numbers" if below is None else f"numbers in [0, {below:g})"
        raise argparse.ArgumentTypeError(f"{what} must be {allowed}, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """An integer >= 1, for argparse (a batch size, a canvas length): 0 is an error, never a silent default."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def require_plotting(what: str) -> None:
    """Raise ImportError now, before any work, when matplotlib (the `eval` extra) is missing for `what`'s plots."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"{what} draws plots with matplotlib, which is not installed: pip install 'hf_mdlm[eval]' "
                          "(or pip install matplotlib)")


def parse_rates(text: str) -> list[float]:
    return parse_numbers(text, "shift rates", below=1)


def generation_settings(canvas_length, steps=None, block_length=None, temperature=0.0, remasking="low_confidence"):
    return dict(max_new_tokens=canvas_length, steps=steps or canvas_length, block_length=block_length,
                temperature=temperature, remasking=remasking)


def evaluate_model(model, tokenizer, heldout, *, canvas_length, judge=None, judge_tokenizer=None,
                   elbo_examples=256, elbo_samples=8, elbo_slack_prob=0.1, num_prompts=64,
                   shift_rates=DEFAULT_SHIFT_RATES, samplers=None, steps=None, block_length=None, seed=0, batch_size=32,
                   num_bootstrap=2000):
    """ELBO perplexity (slack-free canvas, and summed over slack alignments when the model has a slack token)
    and, with a judge, one shift-robustness curve per sampler, for one model."""
    out = {}
    t0 = time.time()
    elbo_rows = heldout.select(spread_indices(len(heldout), elbo_examples))
    out["elbo"] = elbo_perplexity(model, elbo_rows, num_samples=elbo_samples, canvas_length=canvas_length,
                                  batch_size=batch_size, seed=seed)
    if elbo_slack_prob and getattr(model.config, "slack_token_id", None) is not None:
        out["elbo_slack_marginal"] = elbo_perplexity(
            model, elbo_rows, num_samples=elbo_samples, canvas_length=canvas_length, batch_size=batch_size,
            seed=seed, slack_prob=elbo_slack_prob)
    out["elbo_seconds"] = round(time.time() - t0, 1)
    logger.info("ELBO perplexity %.3f (stderr of NLL %.4f)%s in %.0fs", out["elbo"]["perplexity"],
                out["elbo"]["stderr"], "; summed over slack alignments %.3f" % out["elbo_slack_marginal"]["perplexity"]
                if "elbo_slack_marginal" in out else "", out["elbo_seconds"])
    if judge is None:
        return out
    prompts = [heldout[i]["prompt_ids"] for i in spread_indices(len(heldout), num_prompts)]
    out["samplers"] = {}
    for name, sampler in (samplers or {"ancestral": SAMPLERS["ancestral"]}).items():
        t0 = time.time()
        gen = generation_settings(canvas_length, steps, block_length, **sampler)
        curve = shift_robustness(
            model, tokenizer, prompts, shift_rates=shift_rates, judge_model=judge, judge_tokenizer=judge_tokenizer,
            generation_kwargs=gen, seed=seed, batch_size=batch_size, num_bootstrap=num_bootstrap,
        )
        curve["seconds"] = round(time.time() - t0, 1)
        out["samplers"][name] = curve
        for row in curve["per_rate"]:
            logger.info("[%s] shift %.2f: gen-PPL %.2f entropy %.3f empty %d win(unshifted) %.3f", name,
                        row["shift_rate"], row["gen_ppl"], row["entropy"], row["num_empty"],
                        row["win_rate_unshifted"]["win_rate"])
    return out


def reference_quality(heldout, tokenizer, judge, judge_tokenizer, *, num_prompts=64, batch_size=32):
    """The judge's numbers for the real held-out continuations of the same prompts (the human reference)."""
    eos = tokenizer.eos_token_id
    rows = [heldout[i] for i in spread_indices(len(heldout), num_prompts)]
    texts = [tokenizer.decode([t for t in r["response_ids"] if t != eos], skip_special_tokens=True) for r in rows]
    prompts = [tokenizer.decode(r["prompt_ids"], skip_special_tokens=True) for r in rows]
    return generative_perplexity(texts, judge, judge_tokenizer, prompts=prompts, batch_size=batch_size)
