"""Evaluation results as files: `results.json`, Markdown tables, the shift-robustness and training-curve plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .likelihood import paired_elbo_difference


def json_safe(value):
    """JSON-safe: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_number(value, digits=3):
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
        return f"{format_number(e['perplexity'], 2)} [{format_number(ci[0], 2)}, {format_number(ci[1], 2)}]"

    def diff(d):
        return "—" if d is None else f"{d['nll_difference']:+.4f} ± {format_number(d['stderr'], 4)}"

    for name, res in models.items():
        lines.append(f"| {name} | {bound(res['elbo'])} | {diff(res.get('elbo_vs_baseline'))} | "
                     f"{bound(res.get('elbo_slack_marginal'))} | {diff(res.get('elbo_slack_marginal_vs_baseline'))} | "
                     f"{format_number(res[best_elbo(res)]['perplexity'], 2)} ({'slack-marginal' if best_elbo(res) == 'elbo_slack_marginal' else 'slack-free'}) | "
                     f"{diff(res.get('elbo_best_vs_baseline'))} | {res['elbo']['num_tokens']} |")
    curves = _curves(results)
    if curves:
        lines += ["", "### Samples for held-out prompts, unshifted (judge = autoregressive reference model)", "",
                  "| model | sampler | gen-PPL | entropy | distinct-1/2/3 | empty | judge tokens / text "
                  "| `<slack>` / sample |", "|---|---|---|---|---|---|---|---|"]
        for (name, sampler), curve in curves.items():
            q = curve["per_rate"][0]
            lines.append(f"| {name} | {sampler} | {format_number(q['gen_ppl'], 2)} | {format_number(q['entropy'])} | "
                         + "/".join(format_number(q[f"distinct_{n}"], 2) for n in (1, 2, 3))
                         + f" | {q['num_empty']}/{q['num_texts']} | {format_number(q['mean_tokens'], 1)} | "
                         f"{format_number(q['mean_slack'], 2)} |")
        ref = results.get("reference")
        if ref:
            lines.append(f"| held-out text (reference) | — | {format_number(ref['gen_ppl'], 2)} | {format_number(ref['entropy'])} | "
                         + "/".join(format_number(ref[f"distinct_{n}"], 2) for n in (1, 2, 3))
                         + f" | {ref['num_empty']}/{ref['num_texts']} | {format_number(ref['mean_tokens'], 1)} | — |")
    if any(len(curve["per_rate"]) > 1 for curve in curves.values()):  # nothing to show with shift rate 0 alone
        lines += ["", "### Shift robustness: win rate of the unshifted output against the shifted one "
                  "(same prompts and seeds; 0.5 = the shift does no harm)", "",
                  "| model | sampler | shift rate | win rate unshifted [95% CI] | W/T/L | gen-PPL | entropy "
                  "| distinct-2 | empty | `<slack>` / sample |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (name, sampler), curve in curves.items():
            for row in curve["per_rate"][1:]:
                w = row["win_rate_unshifted"]
                lines.append(
                    f"| {name} | {sampler} | {row['shift_rate']:g} | {format_number(w['win_rate'])} [{format_number(w['ci_low'])}, "
                    f"{format_number(w['ci_high'])}] | {w['wins']}/{w['ties']}/{w['losses']} | {format_number(row['gen_ppl'], 2)} | "
                    f"{format_number(row['entropy'])} | {format_number(row['distinct_2'], 3)} | {row['num_empty']}/{row['num_texts']} | "
                    f"{format_number(row['mean_slack'], 2)} |")
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


# What `write_report` writes: all an evaluation's output folder holds (and all its --overwrite_output_dir deletes).
REPORT_FILES = ("results.json", "results.md", "shift_robustness.png")


def write_report(results, output_dir) -> dict:
    """results.json, results.md and shift_robustness.png in `output_dir`; returns the paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
    paths["json"].write_text(json.dumps(json_safe(results), indent=2) + "\n")
    paths["markdown"].write_text(markdown_tables(results))
    if _curves(results):
        paths["plot"] = output_dir / "shift_robustness.png"
        plot_shift_robustness(results, paths["plot"], results.get("reference"))
    return paths


def plot_training(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, label=name)
    ax.set(xlabel="optimizer step", ylabel="masked CE per canvas position (unweighted)", title="training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
