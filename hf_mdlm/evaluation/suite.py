"""One model measured on held-out data: the ELBO bounds and, with a judge, the samples and shift-robustness curve
of each named sampler (what `examples/evaluate.py` and `experiments/replicate.py` run)."""

from __future__ import annotations

import argparse
import logging
import time

from ..data.loading import spread_indices
from ..cli import describe_settings
from ..generation_mdlm import REMASKING_STRATEGIES
from .judge import generative_perplexity, win_rate
from .likelihood import elbo_perplexity
from .shift import shift_robustness

logger = logging.getLogger("evaluate")

DEFAULT_SHIFT_RATES = (0.0, 0.01, 0.05, 0.1, 0.2)

# Named samplers. "ancestral": every step unmasks random positions with tokens sampled at temperature 1, the
# generative process whose likelihood the ELBO bounds. "greedy": LLaDA's default decoding (argmax, most
# confident positions first), the decoding of the slack-CTC paper. Both may emit <slack> (deleted from the text),
# whatever the model's saved generation config says: every model of a comparison is decoded the same way.
SAMPLERS = {
    "ancestral": {"remasking": "random", "temperature": 1.0},
    "greedy": {"remasking": "low_confidence", "temperature": 0.0},
}


def parse_samplers(text: str) -> dict:
    """The samplers named on a command line: 'ancestral,greedy' or custom 'NAME:REMASKING:TEMPERATURE' entries,
    comma separated (an argparse type)."""
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


def generation_settings(canvas_length, steps=None, block_length=None, temperature=0.0, remasking="low_confidence",
                        suppress_slack=False, **fast):
    """The sampler's settings: the exact sampler's, or with `fast` (`parse_fast_samplers`'s settings) an
    approximation of it."""
    return dict(max_new_tokens=canvas_length, steps=steps or canvas_length, block_length=block_length,
                temperature=temperature, remasking=remasking, suppress_slack=suppress_slack, **fast)


def evaluate_model(model, tokenizer, heldout, *, canvas_length, judge=None, judge_tokenizer=None,
                   elbo_examples=256, elbo_samples=8, elbo_slack_prob=0.1, num_prompts=64,
                   shift_rates=DEFAULT_SHIFT_RATES, samplers=None, steps=None, block_length=None, seed=0, batch_size=32,
                   num_bootstrap=2000, fast=None, elbo=None):
    """ELBO perplexity (slack-free canvas, and summed over slack alignments when the model has a slack token)
    and, with a judge, one shift-robustness curve per sampler, for one model. `fast` samples with those settings
    (a KV cache, the factor rule...; see `parse_fast_samplers`); `elbo` reuses the ELBO entries of an earlier call
    on the same model (the likelihood uses no sampler)."""
    out = {}
    if elbo is not None:
        out.update({key: elbo[key] for key in ("elbo", "elbo_slack_marginal", "elbo_seconds") if key in elbo})
    else:
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
                    out["elbo"]["stderr"], "; summed over slack alignments %.3f"
                    % out["elbo_slack_marginal"]["perplexity"] if "elbo_slack_marginal" in out else "",
                    out["elbo_seconds"])
    if judge is not None:
        out.update(_samples(model, tokenizer, heldout, canvas_length, judge, judge_tokenizer, num_prompts, shift_rates,
                            samplers, steps, block_length, seed, batch_size, num_bootstrap, fast or {}))
    return out


def _sampler_settings(model, canvas_length, steps, block_length, sampler, fast) -> dict:
    gen = generation_settings(canvas_length, steps, block_length, **sampler, **fast)
    if getattr(model.config, "block_size", None):  # a block-diffusion model samples its own blocks
        gen.update(block_length=model.config.block_size, block_alignment="absolute")
    return gen


def check_samplers(model, canvas_length, samplers=None, fast_samplers=(), steps=None, block_length=None) -> None:
    """Every sampler, alone and with each fast sampler, checked against the model before any work (the ELBO that
    comes first takes long on a real model): a ValueError naming the sampler."""
    for name, sampler in (samplers or {"ancestral": SAMPLERS["ancestral"]}).items():
        for fast in [{}, *fast_samplers]:
            gen = _sampler_settings(model, canvas_length, steps, block_length, sampler, fast)
            try:
                model._checked_generation_config(gen)
            except ValueError as error:
                where = f"sampler {name}" + (f" with {describe_settings(fast)}" if fast else "")
                raise ValueError(f"{where}: {error}") from None


def _samples(model, tokenizer, heldout, canvas_length, judge, judge_tokenizer, num_prompts, shift_rates, samplers,
             steps, block_length, seed, batch_size, num_bootstrap, fast):
    """{"samplers": one shift-robustness curve per named sampler}."""
    prompts = [heldout[i]["prompt_ids"] for i in spread_indices(len(heldout), num_prompts)]
    out = {"samplers": {}}
    for name, sampler in (samplers or {"ancestral": SAMPLERS["ancestral"]}).items():
        t0 = time.time()
        gen = _sampler_settings(model, canvas_length, steps, block_length, sampler, fast)
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


def compare_to_exact(fast, exact, judge, judge_tokenizer, *, num_bootstrap=2000, seed=0) -> dict:
    """How samples drawn by a fast sampler compare with the exact sampler's, per sampler (same prompts and seeds):
    the share of identical texts, the share of identical generated tokens, and the judge's win rate of the fast
    sampler's text against the exact one (0.5 = the approximation does no harm)."""
    out = {}
    for name, curve in fast["samplers"].items():
        ours, reference = curve["texts"]["0"], exact["samplers"][name]["texts"]["0"]
        pairs = [(a, b) for x, y in zip(curve["ids"]["0"], exact["samplers"][name]["ids"]["0"])
                 for a, b in zip(x + [None] * (len(y) - len(x)), y + [None] * (len(x) - len(y)))]
        same_tokens = sum(a == b for a, b in pairs) / max(len(pairs), 1)
        out[name] = {
            "identical_texts": sum(a == b for a, b in zip(ours, reference)) / max(len(ours), 1),
            "identical_tokens": same_tokens,
            "win_rate_vs_exact": win_rate(ours, reference, judge, judge_tokenizer, prompts=curve["prompts"],
                                          num_bootstrap=num_bootstrap, seed=seed),
        }
    return out


def evaluate_fast_samplers(model, tokenizer, heldout, name, fast_samplers, *, judge=None, judge_tokenizer=None,
                           **kwargs):
    """`evaluate_model` with the exact sampler, then once per fast sampler (`parse_fast_samplers`'s settings); the
    ELBO is computed once (the likelihood uses no sampler). Returns {"models": {entry name: results},
    "extra_tables": {...}} with, given a judge, each fast sampler's agreement with the exact samples, its win rate
    against them and the model calls it made."""
    if judge is not None:  # the samplers run after the ELBO: their settings are checked first
        check_samplers(model, kwargs.get("canvas_length"), kwargs.get("samplers"), fast_samplers,
                       kwargs.get("steps"), kwargs.get("block_length"))
    exact = evaluate_model(model, tokenizer, heldout, judge=judge, judge_tokenizer=judge_tokenizer, **kwargs)
    models = {name: exact}
    rows = ["| fast sampler | sampler | identical texts | identical tokens | win rate vs exact [95% CI] | W/T/L | "
            "gen-PPL | seconds (exact) |",
            "|---|---|---:|---:|---|---|---:|---:|"]
    for settings in fast_samplers:
        label = describe_settings(settings)
        entry = evaluate_model(model, tokenizer, heldout, judge=judge, judge_tokenizer=judge_tokenizer,
                               fast=settings, elbo=exact, **kwargs)
        models[f"{name} [{label}]"] = entry
        if judge is None:
            continue
        entry["vs_exact"] = compare_to_exact(entry, exact, judge, judge_tokenizer, seed=kwargs.get("seed", 0),
                                             num_bootstrap=kwargs.get("num_bootstrap", 2000))
        for sampler, c in entry["vs_exact"].items():
            w = c["win_rate_vs_exact"]
            seconds = f"{entry['samplers'][sampler]['seconds']} ({exact['samplers'][sampler]['seconds']})"
            rows.append(f"| {label} | {sampler} | {c['identical_texts']:.3f} | {c['identical_tokens']:.3f} | "
                        f"{w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
                        f"{w['wins']}/{w['ties']}/{w['losses']} | "
                        f"{entry['samplers'][sampler]['per_rate'][0]['gen_ppl']:.2f} | {seconds} |")
    tables = {"Fast samplers against the exact sampler (same prompts and seeds; win rate 0.5 = no harm)":
              "\n".join(rows)}
    return {"models": models, "extra_tables": tables if len(rows) > 2 else {}}
