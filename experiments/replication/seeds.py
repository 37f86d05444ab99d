"""Several seeds: the whole comparison once per seed, then per metric each seed's value, the mean and the range,
and the win rates pooled over the per-prompt comparisons of all seeds (bootstrap over the pooled prompts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .repeats import exact_outcomes

logger = logging.getLogger(__name__)


class SeedFolderError(ValueError):
    """A seed's folder holds a finished run made with other settings."""


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; a value that is not an integer >= 0, or a duplicate, is a ValueError."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            seed = int(part)
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not an integer (expected e.g. 0,1,2)") from None
        if seed < 0:
            raise ValueError(f"--seeds: {seed} is negative; seeds are integers >= 0")
        if seed in seeds:
            raise ValueError(f"--seeds: {seed} appears twice; each seed runs once")
        seeds.append(seed)
    return seeds


def _text_metrics(res) -> dict:
    out = {"held-out ELBO PPL (slack-free)": res["elbo"]["perplexity"]}
    if "elbo_vs_baseline" in res:
        out["ΔNLL/token vs baseline"] = res["elbo_vs_baseline"]["nll_difference"]
    for sampler, curve in res.get("samplers", {}).items():
        row = curve["per_rate"][0]
        out[f"gen-PPL {sampler}"] = row["gen_ppl"]
        out[f"empty {sampler}"] = row["num_empty"]
    for sampler, w in res.get("win_rate_vs_baseline", {}).items():
        out[f"win rate vs baseline, {sampler}"] = w["win_rate"]
    return out


def _repeats_metrics(res) -> dict:
    out = {"exact match": res["exact_match"]["value"], "dropped repeated tokens": res["dropped_repeat_rate"]["value"],
           "wrong run lengths only": res["run_length_errors"]["value"],
           "runs shortened only": res["runs_shortened_only"]["value"],
           "runs lengthened only": res["runs_lengthened_only"]["value"],
           "held-out ELBO PPL (slack-free)": res["elbo"]["perplexity"]}
    if "elbo_vs_baseline" in res:
        out["ΔNLL/token vs baseline"] = res["elbo_vs_baseline"]["nll_difference"]
    if "win_rate_vs_baseline" in res:
        out["exact-match win rate vs baseline"] = res["win_rate_vs_baseline"]["win_rate"]
    return out


def outcomes_of(win_rate: dict) -> list[float]:
    """The per-pair outcomes (1 win, 0.5 tie, 0 loss) behind a win-rate result's counts."""
    return [1.0] * win_rate["wins"] + [0.5] * win_rate["ties"] + [0.0] * win_rate["losses"]


def pool_outcomes(outcomes, num_bootstrap: int) -> dict:
    """Win rate of pooled per-pair outcomes, its 95% percentile-bootstrap interval (resampling pairs) and counts."""
    values = np.asarray(outcomes, dtype=np.float64)
    rng = np.random.default_rng(0)
    draws = values[rng.integers(0, len(values), size=(num_bootstrap, len(values)))].mean(1)
    low, high = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
    return {"win_rate": float(values.mean()), "ci_low": low, "ci_high": high, "num_pairs": int(len(values)),
            "wins": int((values == 1).sum()), "ties": int((values == 0.5).sum()), "losses": int((values == 0).sum())}


def _outcomes(task, results, arm) -> dict:
    """Per-prompt outcomes against the baseline (1 win, 0.5 tie, 0 loss), by comparison name; for the repeats
    task also slack-CTC against standard CTC (recomputed from the per-problem answers, so runs saved before that
    comparison was stored are summarised alike)."""
    res = results["models"][arm]
    if task == "repeats":
        w = res.get("win_rate_vs_baseline")
        out = {} if w is None else {"exact match": list(w["outcomes"])}
        if arm == "ce+slack_ctc" and "ce+ctc" in results["models"]:
            out["exact match vs ce+ctc"] = exact_outcomes(res["per_problem_exact"],
                                                          results["models"]["ce+ctc"]["per_problem_exact"])
        return out
    return {sampler: outcomes_of(w) for sampler, w in res.get("win_rate_vs_baseline", {}).items()}


def summarize_seeds(task: str, by_seed: dict, num_bootstrap: int = 2000) -> dict:
    """{"seeds", "models": {arm: {"metrics": {name: {"per_seed", "mean", "min", "max"}}, "pooled_win_rate": {...}}}}."""
    seeds = list(by_seed)
    metric_fn = _repeats_metrics if task == "repeats" else _text_metrics
    models = {}
    for arm in by_seed[seeds[0]]["models"]:
        per_seed = [metric_fn(by_seed[s]["models"][arm]) for s in seeds]
        metrics = {}
        for name in per_seed[0]:
            values = [float(m[name]) for m in per_seed]
            metrics[name] = {"per_seed": values, "mean": float(np.mean(values)), "min": min(values), "max": max(values)}
        pooled = {}
        outcomes = [_outcomes(task, by_seed[s], arm) for s in seeds]
        for name in outcomes[0]:
            pooled[name] = pool_outcomes([x for o in outcomes for x in o[name]], num_bootstrap)
        models[arm] = {"metrics": metrics, "pooled_win_rate": pooled}
    return {"task": task, "seeds": seeds, "models": models}


def seeds_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [f"## {len(seeds)} seeds ({', '.join(map(str, seeds))}), task {summary['task']}", "",
             "Each seed reruns everything (" + ("data, " if summary["task"] == "repeats" else "judge, ")
             + "base, arms, evaluation). Per metric: each seed's value, the mean "
             "and the range over seeds.", "",
             "| model | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for arm, res in summary["models"].items():
        for name, m in res["metrics"].items():
            lines.append(f"| {arm} | {name} | " + " | ".join(f"{v:.4g}" for v in m["per_seed"])
                         + f" | {m['mean']:.4g} | [{m['min']:.4g}, {m['max']:.4g}] |")
    pooled = [(arm, name, w) for arm, res in summary["models"].items() for name, w in res["pooled_win_rate"].items()]
    if pooled:
        lines += ["", "Win rates (against the baseline unless named), the per-prompt comparisons of all seeds pooled (bootstrap over "
                  "the pooled prompts; it ignores that prompts repeat across seeds):", "",
                  "| model | comparison | pooled win rate [95% CI] | W/T/L | pairs |", "|---|---|---|---|---|"]
        for arm, name, w in pooled:
            lines.append(f"| {arm} | {name} | {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
                         f"{w['wins']}/{w['ties']}/{w['losses']} | {w['num_pairs']} |")
    return "\n".join(lines) + "\n"


def run_seeds(run_one, seeds, output_dir, task: str, num_bootstrap: int = 2000, settings: dict | None = None) -> dict:
    """`run_one(seed, folder)` for every seed (into output_dir/seed_<s>), then the summary into output_dir
    (results.json, results.md); returns the summary.

    A seed whose folder already holds a finished run (its results.json) is not run again when that run's settings
    agree with `settings` on every key (mode, preset, data, arms...): several seeds can be run over several
    sessions, or one at a time with ``--seed N --output_dir OUT/seed_N``, and summarised together. A finished run
    with other settings is an error naming the differences, never overwritten."""
    out = Path(output_dir)
    finished = {seed: _finished_run(out / f"seed_{seed}", seed, settings or {}) for seed in seeds}  # errors first
    by_seed = {}
    for seed in seeds:
        if finished[seed] is not None:
            logger.info("seed %d: reusing the finished run in %s (same settings)", seed, out / f"seed_{seed}")
            by_seed[seed] = finished[seed]
        else:
            by_seed[seed] = run_one(seed, out / f"seed_{seed}")
    summary = summarize_seeds(task, by_seed, num_bootstrap)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = seeds_markdown(summary)
    (out / "results.md").write_text(md)
    print(md)
    return summary


def _finished_run(folder: Path, seed: int, settings: dict):
    """The results of a finished run in `folder` with these settings; None when there is none."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    saved = results.get("settings", {})
    expected = {"seed": seed, **json.loads(json.dumps(settings))}  # tuples -> lists, as saved
    different = sorted(k for k, v in expected.items() if saved.get(k, False if k == "ablation" else None) != v)
    if different:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {expected[k]!r}" for k in different)
        raise SeedFolderError(f"{folder} holds a finished run with other settings ({details}): choose another "
                         "--output_dir, or remove that folder to run the seed again")
    return results
