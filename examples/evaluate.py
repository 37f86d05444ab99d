#!/usr/bin/env python
"""Evaluate a masked diffusion LM folder on held-out data, with an autoregressive judge model.

    python examples/evaluate.py --model outputs/shakespeare-mdlm --judge outputs/judge --output_dir outputs/eval
    python examples/evaluate.py --model MODEL --judge gpt2 --dataset data.jsonl --eval_split test --canvas_length 128

Measures (see `hf_mdlm.evaluation`):

* the held-out ELBO perplexity (an upper bound), same seed for every model;
* samples for held-out prompts: generative perplexity under the judge, token entropy, distinct-1/2/3 and
  the number of empty generations;
* the shift-robustness curve: the sampler's positional-shift intervention at each `--shift_rates` value, the
  same prompts and seeds, and the judge's win rate of the unshifted output against the shifted one.

Writes `results.json`, `results.md` (Markdown tables) and `shift_robustness.png` into `--output_dir`.
Without `--judge` only the ELBO is computed. The default data are the bundled corpus's held-out works,
windowed like `examples/finetune.py` does by default (32-token prompts, continuations of up to 40 tokens).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

try:
    import hf_mdlm  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_mdlm.data import DataArguments
from hf_mdlm.evaluation import (
    elbo_perplexity,
    generative_perplexity,
    paired_elbo_difference,
    load_heldout,
    shift_robustness,
    spread_indices,
)

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


def parse_rates(text: str) -> list[float]:
    return parse_numbers(text, "shift rates", below=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an hf_mdlm model folder (or Hub id)")
    p.add_argument("--judge", default=None, help="a causal LM folder (or Hub id) used as judge; omit for ELBO only")
    p.add_argument("--output_dir", required=True)
    data = p.add_argument_group("data (default: the bundled held-out works)")
    data.add_argument("--dataset", default=None, help="a dataset path or Hub name (see hf_mdlm.data.DataArguments)")
    data.add_argument("--eval_split", default=None, help="held-out split name or file (default: validation, then test)")
    data.add_argument("--canvas_length", type=int, default=None,
                      help="response canvas length (default: the model's generation_config.max_new_tokens)")
    data.add_argument("--text_prompt_length", type=int, default=32, help="plain text: prompt tokens per window")
    data.add_argument("--text_response_length", type=int, default=None,
                      help="plain text: most continuation tokens per window (default: canvas_length - 8)")
    ev = p.add_argument_group("what to measure")
    ev.add_argument("--elbo_examples", type=int, default=256, help="held-out examples for the ELBO (spread evenly)")
    ev.add_argument("--elbo_samples", type=int, default=8, help="Monte-Carlo replicates of the ELBO")
    ev.add_argument("--elbo_slack_prob", type=float, default=0.1,
                    help="also bound the likelihood summed over <slack> alignments, with this insertion "
                         "probability as the proposal (models with a slack token only; 0: skip)")
    ev.add_argument("--num_prompts", type=int, default=64, help="held-out prompts sampled (spread evenly)")
    ev.add_argument("--shift_rates", type=parse_rates, default=list(DEFAULT_SHIFT_RATES))
    ev.add_argument("--num_bootstrap", type=int, default=2000)
    gen = p.add_argument_group("sampling")
    gen.add_argument("--samplers", type=parse_samplers, default=parse_samplers("ancestral,greedy"),
                     help="comma-separated: " + ", ".join(f"{k} ({v})" for k, v in SAMPLERS.items())
                     + ", or NAME:REMASKING:TEMPERATURE")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: canvas_length)")
    gen.add_argument("--block_length", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def load_mdlm(path, device="cpu"):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from hf_mdlm import MDLMForMaskedLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    if config.model_type == "mdlm":  # ours: the installed classes, whatever code the folder carries
        model = MDLMForMaskedLM.from_pretrained(path)
    else:
        model = AutoModel.from_pretrained(path, trust_remote_code=True)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def load_judge(path, device="cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).to(device).eval(), AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------------------------------
# Measuring (shared with replicate.py)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Reporting (shared with replicate.py)
# ---------------------------------------------------------------------------------------------------


def _clean(value):
    """JSON-safe: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def best_elbo(res) -> str:
    """The key of a model's smaller ELBO bound: "elbo" (slack-free) or "elbo_slack_marginal"."""
    keys = [k for k in ("elbo", "elbo_slack_marginal") if res.get(k)]
    return min(keys, key=lambda k: res[k]["nll_per_token"])


def compare_elbos(res, baseline) -> None:
    """Paired ELBO differences of `res` against `baseline` (same examples and seed), stored into `res`."""
    res["elbo_vs_baseline"] = paired_elbo_difference(res["elbo"], baseline["elbo"])
    if res.get("elbo_slack_marginal") and baseline.get("elbo_slack_marginal"):
        res["elbo_slack_marginal_vs_baseline"] = paired_elbo_difference(res["elbo_slack_marginal"],
                                                                        baseline["elbo_slack_marginal"])
    res["elbo_best_vs_baseline"] = {**paired_elbo_difference(res[best_elbo(res)], baseline[best_elbo(baseline)]),
                                    "bounds": [best_elbo(res), best_elbo(baseline)]}


def _curves(results):
    """{(model, sampler): shift-robustness result} in table order."""
    return {(name, sampler): curve for name, res in results["models"].items()
            for sampler, curve in res.get("samplers", {}).items()}


def markdown_tables(results) -> str:
    """Markdown: the ELBO per model, unshifted sample quality per model and sampler, the shift curves."""
    models = results["models"]
    first = next(iter(models))
    lines = ["### Held-out ELBO perplexity (upper bounds; the same examples, times and masks for every model)", "",
             "Slack-free: the bound on the canvas without `<slack>`. Slack-marginal: the bound on the text's "
             "probability summed over `<slack>` alignments (proposal: the training insertion); both are valid "
             "bounds for any model, and the smaller one is the better bound.", "",
             f"| model | slack-free ELBO PPL ≤ [95% CI] | ΔNLL/token vs `{first}` (± paired s.e.) "
             f"| slack-marginal ELBO PPL ≤ [95% CI] | ΔNLL/token vs `{first}` (± paired s.e.) "
             f"| best bound: PPL ≤ | best vs best of `{first}`: ΔNLL/token | tokens |",
             "|---|---|---|---|---|---|---|---|"]

    def bound(e):
        if not e:
            return "n/a"
        ci = e.get("perplexity_ci95") or [None, None]
        return f"{_fmt(e['perplexity'], 2)} [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]"

    def diff(d):
        return "—" if d is None else f"{d['nll_difference']:+.4f} ± {_fmt(d['stderr'], 4)}"

    for name, res in models.items():
        lines.append(f"| {name} | {bound(res['elbo'])} | {diff(res.get('elbo_vs_baseline'))} | "
                     f"{bound(res.get('elbo_slack_marginal'))} | {diff(res.get('elbo_slack_marginal_vs_baseline'))} | "
                     f"{_fmt(res[best_elbo(res)]['perplexity'], 2)} ({'slack-marginal' if best_elbo(res) == 'elbo_slack_marginal' else 'slack-free'}) | "
                     f"{diff(res.get('elbo_best_vs_baseline'))} | {res['elbo']['num_tokens']} |")
    curves = _curves(results)
    if curves:
        lines += ["", "### Samples for held-out prompts, unshifted (judge = autoregressive reference model)", "",
                  "| model | sampler | gen-PPL | entropy | distinct-1/2/3 | empty | judge tokens / text "
                  "| `<slack>` / sample |", "|---|---|---|---|---|---|---|---|"]
        for (name, sampler), curve in curves.items():
            q = curve["per_rate"][0]
            lines.append(f"| {name} | {sampler} | {_fmt(q['gen_ppl'], 2)} | {_fmt(q['entropy'])} | "
                         + "/".join(_fmt(q[f"distinct_{n}"], 2) for n in (1, 2, 3))
                         + f" | {q['num_empty']}/{q['num_texts']} | {_fmt(q['mean_tokens'], 1)} | "
                         f"{_fmt(q['mean_slack'], 2)} |")
        ref = results.get("reference")
        if ref:
            lines.append(f"| held-out text (reference) | — | {_fmt(ref['gen_ppl'], 2)} | {_fmt(ref['entropy'])} | "
                         + "/".join(_fmt(ref[f"distinct_{n}"], 2) for n in (1, 2, 3))
                         + f" | {ref['num_empty']}/{ref['num_texts']} | {_fmt(ref['mean_tokens'], 1)} | — |")
    if any(len(curve["per_rate"]) > 1 for curve in curves.values()):  # nothing to show with shift rate 0 alone
        lines += ["", "### Shift robustness: win rate of the unshifted output against the shifted one "
                  "(same prompts and seeds; 0.5 = the shift does no harm)", "",
                  "| model | sampler | shift rate | win rate unshifted [95% CI] | W/T/L | gen-PPL | entropy "
                  "| distinct-2 | empty | `<slack>` / sample |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (name, sampler), curve in curves.items():
            for row in curve["per_rate"][1:]:
                w = row["win_rate_unshifted"]
                lines.append(
                    f"| {name} | {sampler} | {row['shift_rate']:g} | {_fmt(w['win_rate'])} [{_fmt(w['ci_low'])}, "
                    f"{_fmt(w['ci_high'])}] | {w['wins']}/{w['ties']}/{w['losses']} | {_fmt(row['gen_ppl'], 2)} | "
                    f"{_fmt(row['entropy'])} | {_fmt(row['distinct_2'], 3)} | {row['num_empty']}/{row['num_texts']} | "
                    f"{_fmt(row['mean_slack'], 2)} |")
    for title, extra in results.get("extra_tables", {}).items():
        lines += ["", f"### {title}", "", extra]
    return "\n".join(lines) + "\n"


def plot_shift_robustness(results, path, reference=None):
    """One row per sampler, three panels against the shift rate: win rate of unshifted vs shifted (95% CI),
    gen-PPL and token entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(results)
    samplers = list(dict.fromkeys(sampler for _, sampler in curves))
    fig, axes = plt.subplots(len(samplers), 3, figsize=(14, 4.2 * len(samplers)), squeeze=False)
    for (name, sampler), curve in curves.items():
        ax = axes[samplers.index(sampler)]
        rows = curve["per_rate"]
        rates = [r["shift_rate"] for r in rows]
        win = [r["win_rate_unshifted"]["win_rate"] for r in rows]
        lows = [r["win_rate_unshifted"]["ci_low"] for r in rows]
        highs = [r["win_rate_unshifted"]["ci_high"] for r in rows]
        err = [[w - lo if lo is not None and math.isfinite(lo) else 0 for w, lo in zip(win, lows)],
               [hi - w if hi is not None and math.isfinite(hi) else 0 for w, hi in zip(win, highs)]]
        ax[0].errorbar(rates, win, yerr=err, marker="o", capsize=3, label=name)
        ax[1].plot(rates, [r["gen_ppl"] for r in rows], marker="o", label=name)
        ax[2].plot(rates, [r["entropy"] for r in rows], marker="o", label=name)
    for sampler, ax in zip(samplers, axes):
        ax[0].axhline(0.5, color="grey", linestyle=":", linewidth=1)
        if reference:
            ax[1].axhline(reference["gen_ppl"], color="black", linestyle="--", linewidth=1, label="held-out text")
            ax[2].axhline(reference["entropy"], color="black", linestyle="--", linewidth=1, label="held-out text")
        ax[0].set(title=f"[{sampler}] judge win rate, unshifted vs shifted", xlabel="shift rate",
                  ylabel="win rate (0.5 = no harm)")
        ax[1].set(title=f"[{sampler}] generative perplexity (judge)", xlabel="shift rate", ylabel="gen-PPL")
        ax[2].set(title=f"[{sampler}] mean token entropy", xlabel="shift rate", ylabel="nats")
        for a in ax:
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results, output_dir) -> dict:
    """results.json, results.md and shift_robustness.png in `output_dir`; returns the paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
    paths["json"].write_text(json.dumps(_clean(results), indent=2) + "\n")
    paths["markdown"].write_text(markdown_tables(results))
    if _curves(results):
        paths["plot"] = output_dir / "shift_robustness.png"
        plot_shift_robustness(results, paths["plot"], results.get("reference"))
    return paths


# ---------------------------------------------------------------------------------------------------


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model, tokenizer = load_mdlm(args.model, args.device)
    canvas_length = args.canvas_length or getattr(model.generation_config, "max_new_tokens", None)
    if not canvas_length:
        raise SystemExit("--canvas_length is needed: the model's generation config has no max_new_tokens")
    data_args = DataArguments(
        dataset=args.dataset, eval_split=args.eval_split, canvas_length=canvas_length,
        text_prompt_length=args.text_prompt_length,
        text_response_length=args.text_response_length or max(1, canvas_length - 8),
    )
    heldout = load_heldout(data_args, tokenizer)
    judge = judge_tokenizer = None
    if args.judge:
        judge, judge_tokenizer = load_judge(args.judge, args.device)
    name = Path(args.model).name or args.model
    results = {
        "models": {name: evaluate_model(
            model, tokenizer, heldout, canvas_length=canvas_length, judge=judge, judge_tokenizer=judge_tokenizer,
            elbo_examples=args.elbo_examples, elbo_samples=args.elbo_samples, elbo_slack_prob=args.elbo_slack_prob,
            num_prompts=args.num_prompts,
            shift_rates=args.shift_rates, samplers=args.samplers, steps=args.steps, block_length=args.block_length,
            seed=args.seed, batch_size=args.batch_size, num_bootstrap=args.num_bootstrap)},
        "settings": {**vars(args), "canvas_length": canvas_length, "num_heldout_examples": len(heldout)},
    }
    if judge is not None:
        results["reference"] = reference_quality(heldout, tokenizer, judge, judge_tokenizer,
                                                 num_prompts=args.num_prompts, batch_size=args.batch_size)
    paths = write_report(results, args.output_dir)
    print(Path(paths["markdown"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


if __name__ == "__main__":
    main()
