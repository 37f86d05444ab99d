#!/usr/bin/env python
"""The slack-CTC paper in miniature, offline: on the bundled Shakespeare corpus (train works vs held-out works), on
your corpus, or on the repeat-collapse task.

    python experiments/replicate.py --output_dir outputs/replicate            # full mode: <= 90 min on 2 CPU cores
    python experiments/replicate.py --quick --output_dir outputs/replicate-q  # CI mode: <= 10 min on 2 CPU cores
    python experiments/replicate.py --smoke --output_dir /tmp/replicate-s     # the test suite's run: about a minute
    python experiments/replicate.py --scale 4 --output_dir outputs/replicate-x4   # 4x width/depth/batch: for a GPU
    python experiments/replicate.py --dataset train.jsonl --heldout heldout.jsonl --output_dir outputs/mine
    python experiments/replicate.py --task repeats --quick --output_dir outputs/repeats   # CE vs slack-CTC vs CTC
    python experiments/replicate.py --quick --seeds 0,1,2 --output_dir outputs/replicate-3 # per seed + summary

A judge (a small GPT-2 trained on the training data), a base MDLM trained with the masked-diffusion CE, then
one fine-tune of that base per arm with the same data order, seed and budget: `ce` (the matched baseline),
`ce+slack_ctc` (one per --ctc_weight x --slack_prob) and, with --ablation, `ce+slack` (slack inserted, CE
only). Every model is measured on the held-out data: ELBO perplexity (paired against `ce`), samples judged by
the judge, the shift-robustness curve and the head-to-head win rate. --dataset/--heldout take the formats of
examples/finetune.py (plain text, prompt/completion, chat); a held-out file that shares documents with the
training data is refused. --task repeats: arithmetic and copying with runs of equal characters, arms `ce`,
`ce+slack_ctc` and `ce+ctc` (standard CTC, runs merged); exact match, dropped repeats, ELBO. See
`experiments/replication/`.

Writes into --output_dir: results.json, results.md, plots, and a model folder per arm (`judge/`, `ce/`, ...;
reusable with examples/evaluate.py); with --seeds, one folder per seed (seed_0/, ...) and the summary. A seed
whose folder holds a finished run with the same settings is reused, not rerun (run seeds in several sittings).
"""

import argparse
import os
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_mdlm.cli import add_bool_flag, parse_numbers, require_plotting  # noqa: E402
from hf_mdlm.hub import OutputFolder, OutputFolderError  # noqa: E402
from replication.presets import Preset, add_preset_arguments, resolve_preset  # noqa: E402
from replication.provenance import provenance_line, stamp  # noqa: E402
from replication.repeats import (  # noqa: E402
    RepeatsPreset,
    repeats_settings,
    resolve_repeats_preset,
    run_repeats,
)
from replication.run import ReplicationDataError, configure_run, run_replication, run_settings  # noqa: E402
from replication.seeds import SeedFolderError, parse_seeds, run_seeds  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output_dir", default="outputs/replicate")
    add_bool_flag(p, "--overwrite_output_dir", help="delete an earlier run's files from --output_dir first")
    mode = p.add_mutually_exclusive_group()
    add_bool_flag(mode, "--quick", help="CI mode: <= 10 minutes on 2 CPU cores")
    add_bool_flag(mode, "--smoke", help="tiny everything: the test suite's run (about a minute)")
    p.add_argument("--scale", type=int, default=1, help="multiply width, depth and batch of both models (GPU)")
    p.add_argument("--block_size", type=int, default=None,
                   help="block diffusion: the base and every arm attend in blocks of this many positions (BD3LM "
                        "training, slack-CTC per block; sampled block by block; needs --shift_rates 0)")
    p.add_argument("--task", choices=("text", "repeats"), default="text",
                   help="text: the bundled corpus or --dataset; repeats: the repeat-collapse experiment")
    p.add_argument("--dataset", default=None, help="training data (file, folder or Hub name; finetune.py's formats)")
    p.add_argument("--heldout", default=None, help="held-out data for every metric (file or folder; default: the "
                   "dataset's validation split); must not share documents with --dataset")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", default=None, help="comma-separated seeds (e.g. 0,1,2): the whole comparison per "
                       "seed, then each metric's values, mean and range, and the pooled win rate")
    p.add_argument("--slack_prob", type=lambda text: parse_numbers(text, "slack_prob"), default=[0.1],
                   help="slack insertion probability of the slack arm; a comma-separated list trains one arm per value")
    p.add_argument("--ctc_weight", type=lambda text: parse_numbers(text, "ctc_weight"), default=[1.0],
                   help="lambda_ctc of the slack arm; a list sweeps it too (one arm per ctc_weight x slack_prob)")
    add_bool_flag(p, "--ablation", help="add the arm ce+slack (slack inserted, CE only)")
    p.add_argument("--judge", default=None,
                   help="reuse the judge/ folder of an earlier run with the same seed and preset instead of training one "
                        "(e.g. for a ctc_weight/slack_prob sweep)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice). On cores shared with other jobs, 1 is much "
                        "faster than oversubscribing them (numbers then differ in the last digits)")
    # every preset value can be overridden: --arm_steps 300, --shift_rates 0,0.1 ...
    add_preset_arguments(p, Preset, RepeatsPreset, skip={"slack_prob"})
    return p


PRESET_NAMES = {f.name for f in fields(Preset)}
REPEATS_NAMES = {f.name for f in fields(RepeatsPreset)} - {"slack_prob"}


def main(argv=None):
    args = build_parser().parse_args(argv)
    provenance = provenance_line(__file__, argv)  # the code as it is when the run starts
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    try:  # everything that would fail after minutes of work fails now: the preset, the plots, the output folder
        seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
        if args.task == "repeats":
            given = {n for n in PRESET_NAMES - REPEATS_NAMES if getattr(args, n) is not None}
            if given or args.dataset or args.heldout or args.ablation or args.judge or args.scale != 1:
                raise ValueError("--task repeats generates its own data and has its own arms: drop --dataset, "
                                 "--heldout, --ablation, --judge, --scale and " + ", ".join(f"--{n}" for n in given))
            overrides = {n: getattr(args, n) for n in REPEATS_NAMES}
            if len(args.slack_prob) > 1 or args.ctc_weight != [1.0]:
                raise ValueError("--task repeats takes one --slack_prob and no --ctc_weight sweep")
            preset = resolve_repeats_preset(mode, {**overrides, "slack_prob": args.slack_prob[0]})
        else:
            given = {n for n in REPEATS_NAMES - PRESET_NAMES if getattr(args, n) is not None}
            if given:
                raise ValueError("only for --task repeats: " + ", ".join(f"--{n}" for n in sorted(given)))
            preset = resolve_preset(mode, {n: getattr(args, n) for n in PRESET_NAMES}, args.scale)
            require_plotting("replicate.py (shift_robustness.png, training_curves.png)")
            if args.heldout is not None and args.dataset is None:
                raise ValueError("--heldout needs --dataset (the bundled corpus brings its own held-out works)")
            if args.heldout is not None and not os.path.exists(args.heldout):
                raise ValueError(f"--heldout {args.heldout}: no such file or folder")
            if args.judge is not None and len(seeds) > 1:
                raise ValueError("--judge reuses one seed's judge; with --seeds every seed trains its own")
        # locked while in use; new or empty, or (with --seeds) the seed folders of an earlier run, which run_seeds
        # reuses when their settings agree; --overwrite_output_dir deletes only what this script writes
        output = OutputFolder(args.output_dir, overwrite=args.overwrite_output_dir, what="--output_dir",
                              writes=SEEDS_OUTPUTS if args.seeds is not None else RUN_OUTPUTS,
                              reuse=args.seeds is not None)
    except (ValueError, ImportError, OutputFolderError) as err:
        raise SystemExit(str(err)) from None
    with output:
        return run(args, mode, preset, seeds, provenance)


# What a run writes into --output_dir (judge, base, one folder per arm, the report), and with --seeds.
RUN_OUTPUTS = ("judge", "base", "tokenizer", "ce", "ce_*", "results.json", "results.md", "*.png")
SEEDS_OUTPUTS = ("seed_*", "results.json", "results.md")


def run(args, mode, preset, seeds, provenance):
    """The run(s); every results.md written starts with `provenance` (the commit and the command)."""
    configure_run(args.threads)

    def run_one(seed, folder):
        if args.task == "repeats":
            results = run_repeats(folder, preset, mode=mode, seed=seed, device=args.device)
        else:
            try:
                results = run_replication(folder, preset, mode=mode, seed=seed, scale=args.scale,
                                          ctc_weights=args.ctc_weight, slack_probs=args.slack_prob,
                                          ablation=args.ablation, judge_folder=args.judge, device=args.device,
                                          dataset=args.dataset, heldout=args.heldout, block_size=args.block_size)
            except ReplicationDataError as err:  # the data checks: before any training
                raise SystemExit(f"replicate.py: {err}") from None
        stamp(Path(folder) / "results.md", provenance)
        return results

    if args.seeds is None:
        return run_one(args.seed, args.output_dir)
    settings = repeats_settings(mode, preset) if args.task == "repeats" else run_settings(
        mode, preset, dataset=args.dataset, heldout=args.heldout, scale=args.scale, slack_probs=args.slack_prob,
        ctc_weights=args.ctc_weight, ablation=args.ablation, block_size=args.block_size)
    reused = [s for s in seeds if (Path(args.output_dir) / f"seed_{s}" / "results.json").is_file()]
    try:
        summary = run_seeds(run_one, seeds, args.output_dir, args.task, preset.num_bootstrap, settings)
    except SeedFolderError as err:
        raise SystemExit(f"replicate.py: {err}") from None
    note = f" (seeds {', '.join(map(str, reused))} reused from earlier runs: their own results.md name theirs)"
    stamp(Path(args.output_dir) / "results.md", provenance + (note if reused else ""))
    return summary


if __name__ == "__main__":
    main()
