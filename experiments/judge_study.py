#!/usr/bin/env python
"""Does the judge decide the win rate? The same samples, judged again by other judges.

    python experiments/judge_study.py \\
        --runs "Shakespeare full=outputs/replicate-full-seeds" --runs "Shakespeare quick=outputs/replicate-quick-seeds" \\
        --judges "quick (Shakespeare)=outputs/replicate-quick-seeds/seed_0/judge" \\
        --judges "full (Shakespeare)=outputs/replicate-full-seeds/seed_0/judge" [--output experiments/results/judge_study.md]

A `--runs` folder is a `replicate.py` run (results.json) or a `--seeds` folder (seed_*/results.json). Nothing is
sampled again: every arm's stored unshifted samples (per sampler) are scored by each judge against the baseline's
samples for the same prompts, with the rules of the replication's head-to-head. The column "own" uses each seed's
own judge and must reproduce the win rates stored by the run (checked; a mismatch stops the script).
Prints per run group, arm, sampler and judge: the per-seed win rates, the pooled win rate with its bootstrap
interval, and the arms' mean generative perplexity under that judge.
"""

import argparse
import functools
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from hf_mdlm.evaluation import load_judge  # noqa: E402
from hf_mdlm.evaluation.judge import score_texts, summarize_scores, win_rate_from_scores  # noqa: E402
from replication.provenance import provenance_line  # noqa: E402
from replication.seeds import outcomes_of, pool_outcomes  # noqa: E402


def labelled(text: str, what: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise SystemExit(f"--{what} {text!r}: expected LABEL=PATH")
    if not Path(path).exists():
        raise SystemExit(f"--{what} {text!r}: no such file or folder {path}")
    return label, path


def run_results(folder: str) -> dict:
    """{seed: results} of a single run or of a --seeds folder."""
    root = Path(folder)
    if (root / "results.json").exists() and not any(root.glob("seed_*/results.json")):
        results = json.loads((root / "results.json").read_text())
        return {results["settings"]["seed"]: results}
    found = {int(p.parent.name.removeprefix("seed_")): json.loads(p.read_text())
             for p in sorted(root.glob("seed_*/results.json"))}
    if not found:
        raise SystemExit(f"{folder}: neither results.json nor seed_*/results.json")
    return dict(sorted(found.items()))


judge = functools.cache(load_judge)  # each judge folder loaded once


def compare(results: dict, arm: str, baseline: str, sampler: str, judge_folder: str) -> dict:
    """One seed's head to head under one judge: counts, win rate and both sides' gen-PPL (no interval: the
    interval reported is the pooled one)."""
    model, tokenizer = judge(judge_folder)
    ours = results["models"][arm]["samplers"][sampler]
    theirs = results["models"][baseline]["samplers"][sampler]
    if ours["prompts"] != theirs["prompts"]:
        raise SystemExit(f"{arm} and {baseline} were not sampled from the same prompts")
    texts_a, texts_b, prompts = ours["texts"]["0"], theirs["texts"]["0"], ours["prompts"]
    scores = score_texts(texts_a + texts_b, model, tokenizer, prompts=prompts + prompts)
    w = win_rate_from_scores(scores[: len(texts_a)], scores[len(texts_a):], texts_a=texts_a, texts_b=texts_b,
                             num_bootstrap=0)
    w["gen_ppl"] = summarize_scores(scores[: len(texts_a)])["gen_ppl"], summarize_scores(scores[len(texts_a):])["gen_ppl"]
    return w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", action="append", required=True, help="LABEL=FOLDER (repeatable)")
    p.add_argument("--judges", action="append", default=[], help="LABEL=JUDGE_FOLDER (repeatable); 'own' is added")
    p.add_argument("--samplers", default="ancestral", help="comma-separated samplers of the runs to rejudge")
    p.add_argument("--num_bootstrap", type=int, default=2000)
    p.add_argument("--output", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    provenance = provenance_line(__file__, argv)
    runs = [labelled(r, "runs") for r in args.runs]
    judge_specs = [("own", None)] + [labelled(j, "judges") for j in args.judges]
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    samplers = [s for s in args.samplers.split(",") if s]

    lines = ["| runs | arm | sampler | judge | win rate per seed | pooled win rate [95% CI] | gen-PPL arm / baseline |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for run_label, folder in runs:
        by_seed = run_results(folder)
        first = next(iter(by_seed.values()))
        baseline, *arms = list(first["models"])
        for arm in arms:
            for sampler in samplers:
                for judge_label, judge_folder in judge_specs:
                    per_seed, outcomes, ppl_a, ppl_b = [], [], [], []
                    for seed, results in by_seed.items():
                        folder_j = judge_folder or results["judge"]["folder"]
                        w = compare(results, arm, baseline, sampler, str(folder_j))
                        if judge_folder is None:  # the run's own judge must give the stored answer
                            stored = results["models"][arm]["win_rate_vs_baseline"][sampler]
                            if (w["wins"], w["ties"], w["losses"]) != (stored["wins"], stored["ties"], stored["losses"]):
                                raise SystemExit(f"{folder} seed {seed}: rejudging with the run's own judge gives "
                                                 f"W/T/L {w['wins']}/{w['ties']}/{w['losses']}, the run stored "
                                                 f"{stored['wins']}/{stored['ties']}/{stored['losses']}")
                        per_seed.append(w["win_rate"])
                        outcomes += outcomes_of(w)
                        ppl_a.append(w["gen_ppl"][0])
                        ppl_b.append(w["gen_ppl"][1])
                    pooled = pool_outcomes(outcomes, args.num_bootstrap)
                    lines.append(f"| {run_label} | {arm} | {sampler} | {judge_label} | "
                                 f"{', '.join(f'{x:.2f}' for x in per_seed)} | {pooled['win_rate']:.3f} "
                                 f"[{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}] | "
                                 f"{np.mean(ppl_a):.0f} / {np.mean(ppl_b):.0f} |")
                    print(lines[-1], flush=True)
    judges_md = [f"- {label}: `{path}`" for label, path in judge_specs if path] + [
        "- own: each seed's own judge (reproduces the run's stored win rates, checked)"]
    legend = "\n\nJudges:\n" + "\n".join(judges_md) + "\n"
    print(legend)
    table = "\n".join(lines) + legend
    if args.output:
        Path(args.output).write_text(f"{provenance}.\n\n{table}")


if __name__ == "__main__":
    main()
