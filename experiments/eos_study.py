#!/usr/bin/env python
"""Greedy decoding and EOS: how often the output is empty, and what an EOS penalty does to it.

    python experiments/eos_study.py --model outputs/shakespeare-mdlm --judge outputs/replicate-quick/judge \\
        --eos_penalty 0,1,2,4,8 [--suppress_eos] [--suppress_slack] [--block_lengths none,8] \\
        [--heldout experiments/data/austen/heldout.txt.gz]

Small masked diffusion LMs decoded greedily (low-confidence remasking, temperature 0) often commit EOS first at
the start of the canvas: the text ends before it begins. For each `eos_penalty` (subtracted from the EOS logits,
so EOS is proposed and ranked later) this prints, on held-out prompts of the bundled corpus: the share of empty
outputs (nothing but whitespace), the mean length, the `<slack>` committed before the first EOS, and the judge's
generative perplexity and token entropy of the texts. `--suppress_slack` adds the same with `<slack>` never proposed;
`--block_lengths` repeats everything per block length ("none": the whole canvas is one block); `--heldout` takes the
prompts from a held-out file (default: the bundled corpus's held-out works).
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_mdlm.data import DataArguments, load_heldout, spread_indices  # noqa: E402
from hf_mdlm.evaluation import generate_continuations, generative_perplexity, load_judge  # noqa: E402
from hf_mdlm.cli import add_bool_flag, parse_numbers  # noqa: E402
from hf_mdlm.loading import load_for_inference  # noqa: E402
from replication.provenance import provenance_line  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--eos_penalty", type=lambda text: parse_numbers(text, "eos_penalty"), default=[0, 1, 2, 4, 8])
    add_bool_flag(p, "--suppress_eos", help="also a row with EOS never proposed")
    add_bool_flag(p, "--suppress_slack",
                   help="also rows with <slack> never proposed (alone, and with each EOS penalty above 0)")
    p.add_argument("--num_prompts", type=int, default=128)
    p.add_argument("--block_lengths", default="8", help="comma-separated block lengths; none = one block")
    p.add_argument("--heldout", default=None, help="held-out text file for the prompts (default: the bundled one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"{provenance_line(__file__, argv)}.\n", flush=True)  # the printed table is the results file: it names both
    model, tokenizer = load_for_inference(args.model)
    judge, judge_tokenizer = load_judge(args.judge)
    canvas = model.generation_config.max_new_tokens
    blocks = [None if b.strip().lower() == "none" else int(b) for b in args.block_lengths.split(",")]
    data_args = DataArguments(canvas_length=canvas, text_prompt_length=32, text_response_length=max(1, canvas - 8))
    if args.heldout:
        data_args.eval_split = args.heldout
    heldout = load_heldout(data_args, tokenizer)
    prompts = [heldout[i]["prompt_ids"] for i in spread_indices(len(heldout), args.num_prompts)]
    settings = []
    for block in blocks:
        where = "one block" if block is None else f"blocks of {block}"
        variants = [(f"eos_penalty {v:g}", {"eos_penalty": v}) for v in args.eos_penalty]
        if args.suppress_eos:
            variants.append(("suppress_eos", {"suppress_eos": True}))
        if args.suppress_slack:
            variants += [(f"suppress_slack, eos_penalty {v:g}", {"suppress_slack": True, "eos_penalty": v})
                         for v in args.eos_penalty]
        settings += [(f"{where}, {name}", {"block_length": block, **extra}) for name, extra in variants]
    print(f"{args.model}: greedy (low-confidence, temperature 0), canvas {canvas}, {len(prompts)} held-out prompts "
          f"({args.heldout or 'bundled held-out works'})\n")
    print("| setting | empty | mean tokens | `<slack>` / sample | gen-PPL | entropy |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, extra in settings:
        samples = generate_continuations(
            model, tokenizer, prompts, seed=args.seed, generation_kwargs=dict(
                max_new_tokens=canvas, steps=canvas, temperature=0.0,
                remasking="low_confidence", **extra))
        texts = [s["text"] for s in samples]
        quality = generative_perplexity(texts, judge, judge_tokenizer, prompts=[s["prompt_text"] for s in samples])
        empty = sum(not s["text"].strip() for s in samples)  # nothing but spaces/newlines is nothing to read
        mean_tokens = sum(len(s["ids"]) for s in samples) / len(samples)
        slack = sum(s["num_slack"] for s in samples) / len(samples)
        print(f"| {name} | {empty}/{len(samples)} | {mean_tokens:.1f} | {slack:.1f} | {quality['gen_ppl']:.1f} | "
              f"{quality['entropy']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
