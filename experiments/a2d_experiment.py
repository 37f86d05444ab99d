#!/usr/bin/env python
"""A2D learns: a diffusion LM from a causal LM, against the same MDLM trained from scratch, offline on the bundled
Shakespeare corpus (train works vs held-out works).

    python experiments/a2d_experiment.py --output_dir outputs/a2d            # full mode
    python experiments/a2d_experiment.py --quick --output_dir outputs/a2d-q  # quick mode (the README's run)
    python experiments/a2d_experiment.py --smoke --output_dir /tmp/a2d-s     # tiny: the test suite's sizes

A GPT-2 judge and a small Llama (the MDLM's width and depth) are trained on the training works; the Llama is
converted into a next-token-aligned MDLM (`hf_mdlm.convert.convert_a2d_checkpoint`) and fine-tuned with CE +
slack-CTC; the same MDLM architecture is trained from scratch with the same data order, steps, batch and schedule
(`scratch`) and, unless --scratch_total false, for the A2D arm's whole step budget (`scratch (long)`). All are
measured on the held-out works: ELBO perplexity (paired), judged samples, head-to-head win rates, and the causal
LM's own perplexity. See `experiments/replication/a2d.py`.

Writes into --output_dir: results.json, results.md, training_curves.png and a folder per model (`judge/`,
`causal/`, `converted/`, `a2d/`, `scratch/`, `scratch_long/`).
"""

import argparse
import os
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from hf_mdlm.cli import add_bool_flag, require_plotting
from hf_mdlm.hub import OutputFolder, OutputFolderError
from replication import A2DPreset, resolve_a2d_preset, run_a2d_experiment
from replication.presets import add_preset_arguments
from replication.provenance import provenance_line, stamp
from replication.run import configure_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output_dir", default="outputs/a2d")
    add_bool_flag(p, "--overwrite_output_dir", help="delete an earlier run's files from --output_dir first")
    mode = p.add_mutually_exclusive_group()
    add_bool_flag(mode, "--quick", help="smaller models and budgets (minutes on 2 CPU cores)")
    add_bool_flag(mode, "--smoke", help="tiny everything: the test suite's sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", default=None, help="reuse the judge/ folder of an earlier run with the same judge size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    add_preset_arguments(p, A2DPreset)  # every preset value can be overridden: --steps 300 ...
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    provenance = provenance_line(__file__, argv)  # the code as it is when the run starts
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    try:  # what would fail after minutes of work fails now
        preset = resolve_a2d_preset(mode, {f.name: getattr(args, f.name) for f in fields(A2DPreset)})
        require_plotting("a2d_experiment.py (training_curves.png)")
        # locked while in use, new or empty; --overwrite_output_dir deletes only what this script writes
        output = OutputFolder(args.output_dir, overwrite=args.overwrite_output_dir, what="--output_dir",
                              writes=A2D_OUTPUTS)
    except (ValueError, ImportError, OutputFolderError) as err:
        raise SystemExit(str(err)) from None
    with output:
        return run(args, mode, preset, provenance)


# What the experiment writes into --output_dir: the judge, the causal LM and its conversion, one folder per arm, the
# report and its plot.
A2D_OUTPUTS = ("judge", "causal", "converted", "scratch", "scratch_*", "a2d", "a2d_*", "results.json", "results.md",
               "*.png")


def run(args, mode, preset, provenance):
    """The experiment; its results.md starts with `provenance` (the commit and the command)."""
    configure_run(args.threads)
    results = run_a2d_experiment(args.output_dir, preset, mode=mode, seed=args.seed, device=args.device,
                                 judge_folder=args.judge)
    stamp(Path(args.output_dir) / "results.md", provenance)
    return results


if __name__ == "__main__":
    main()
