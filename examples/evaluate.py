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

import argparse
import logging
import os
from pathlib import Path

import torch

from hf_mdlm.data import DataArguments, load_heldout
from hf_mdlm.evaluation import (
    load_judge,
    reference_quality,
    write_report,
)
from hf_mdlm.cli import (add_bool_flag, device_flag, parse_fast_samplers, parse_rates, positive_int,
                         probability_below_one, require_plotting)
from hf_mdlm.evaluation.suite import DEFAULT_SHIFT_RATES, SAMPLERS, evaluate_fast_samplers, parse_samplers
from hf_mdlm.evaluation.report import REPORT_FILES
from hf_mdlm.hub import OutputFolder, OutputFolderError
from hf_mdlm.loading import load_for_inference, position_limit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="an hf_mdlm model folder (or Hub id)")
    add_bool_flag(p, "--trust_remote_code",
                   help="run the Python files of a model folder that is not an hf_mdlm one")
    p.add_argument("--judge", default=None, help="a causal LM folder (or Hub id) used as judge; omit for ELBO only")
    p.add_argument("--output_dir", required=True, help="new or empty folder for results.json, results.md and the plot")
    add_bool_flag(p, "--overwrite_output_dir", help="replace an earlier evaluation's results in --output_dir")
    data = p.add_argument_group("data (default: the bundled held-out works)")
    data.add_argument("--dataset", default=None, help="a dataset path or Hub name (see hf_mdlm.data.DataArguments)")
    data.add_argument("--eval_split", default=None, help="held-out split name or file (default: validation, then test)")
    data.add_argument("--canvas_length", type=positive_int, default=None,
                      help="response canvas length (default: the model's generation_config.max_new_tokens)")
    data.add_argument("--text_prompt_length", type=int, default=32, help="plain text: prompt tokens per window")
    data.add_argument("--text_response_length", type=int, default=None,
                      help="plain text: most continuation tokens per window (default: canvas_length - 8)")
    ev = p.add_argument_group("what to measure")
    ev.add_argument("--elbo_examples", type=positive_int, default=256,
                    help="held-out examples for the ELBO (spread evenly)")
    ev.add_argument("--elbo_samples", type=positive_int, default=8, help="Monte-Carlo replicates of the ELBO")
    ev.add_argument("--elbo_slack_prob", type=probability_below_one, default=0.1,
                    help="also bound the likelihood summed over <slack> alignments, with this insertion "
                         "probability as the proposal (models with a slack token only; 0: skip)")
    ev.add_argument("--num_prompts", type=positive_int, default=64, help="held-out prompts sampled (spread evenly)")
    ev.add_argument("--shift_rates", type=parse_rates, default=list(DEFAULT_SHIFT_RATES))
    ev.add_argument("--num_bootstrap", type=int, default=2000)
    gen = p.add_argument_group("sampling")
    gen.add_argument("--samplers", type=parse_samplers, default=parse_samplers("ancestral,greedy"),
                     help="comma-separated: " + ", ".join(f"{k} ({v})" for k, v in SAMPLERS.items())
                     + ", or NAME:REMASKING:TEMPERATURE")
    gen.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: canvas_length)")
    gen.add_argument("--block_length", type=positive_int, default=None)
    gen.add_argument("--fast_samplers", type=parse_fast_samplers, default=[],
                     help="also sample with these approximations of the exact sampler and compare them with it "
                          "(agreement, judged win rate, gen-PPL, time): comma-separated, each a cache mode (prefix, "
                          "dual) and/or NAME=VALUE settings (kv_cache, kv_cache_refresh, factor, threshold) joined "
                          "by '+', e.g. 'prefix,dual,dual+kv_cache_refresh=4,factor=1'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=positive_int, default=32)
    p.add_argument("--device", type=device_flag, default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would evaluate everything, into one folder
        raise SystemExit("evaluate.py runs in one process: start it with python, not accelerate launch or torchrun "
                         "(for several processes, use lm-eval with the hf_mdlm model: docs/evaluation.md)")
    if args.fast_samplers and not args.judge:  # they change samples only; the likelihood uses no sampler
        raise SystemExit("--fast_samplers compares their samples with the exact sampler's, which needs --judge "
                         "(without one only the ELBO is computed, and no sampler takes part in it)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:  # before any evaluation: what would fail at the end (the results folder, the plot) fails now
        if args.judge:
            require_plotting("evaluate.py --judge (shift_robustness.png)")
        # new or empty, locked while in use; --overwrite_output_dir replaces an earlier evaluation's files only
        output = OutputFolder(args.output_dir, overwrite=args.overwrite_output_dir, what="--output_dir",
                              writes=REPORT_FILES)
    except (OutputFolderError, ImportError) as error:
        raise SystemExit(str(error)) from None
    with output:
        return evaluate(args)


def evaluate(args):
    model, tokenizer = load_for_inference(args.model, args.device, trust_remote_code=args.trust_remote_code)
    canvas_length = args.canvas_length or getattr(model.generation_config, "max_new_tokens", None)
    if not canvas_length:
        raise SystemExit("--canvas_length is needed: the model's generation config has no max_new_tokens")
    data_args = DataArguments(
        dataset=args.dataset, eval_split=args.eval_split, canvas_length=canvas_length,
        text_prompt_length=args.text_prompt_length,
        text_response_length=args.text_response_length or max(1, canvas_length - 8),
    )
    heldout = load_heldout(data_args, tokenizer, max_length=position_limit(model))
    judge = judge_tokenizer = None
    if args.judge:
        judge, judge_tokenizer = load_judge(args.judge, args.device)
    name = Path(args.model).name or args.model
    results = evaluate_fast_samplers(
        model, tokenizer, heldout, name, args.fast_samplers, canvas_length=canvas_length, judge=judge,
        judge_tokenizer=judge_tokenizer, elbo_examples=args.elbo_examples, elbo_samples=args.elbo_samples,
        elbo_slack_prob=args.elbo_slack_prob, num_prompts=args.num_prompts, shift_rates=args.shift_rates,
        samplers=args.samplers, steps=args.steps, block_length=args.block_length, seed=args.seed,
        batch_size=args.batch_size, num_bootstrap=args.num_bootstrap)
    results["settings"] = {**vars(args), "canvas_length": canvas_length, "num_heldout_examples": len(heldout)}
    if judge is not None:
        results["reference"] = reference_quality(heldout, tokenizer, judge, judge_tokenizer,
                                                 num_prompts=args.num_prompts, batch_size=args.batch_size)
    paths = write_report(results, args.output_dir)
    print(Path(paths["markdown"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


if __name__ == "__main__":
    main()
