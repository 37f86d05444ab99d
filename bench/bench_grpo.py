#!/usr/bin/env python
"""GRPO step time, side by side: each log-probability estimator, with exact and with fast rollouts.

    python bench/bench_grpo.py --tiny              # a tiny model on the CPU (seconds; the code path)
    python bench/bench_grpo.py                     # a ~300M MDLM in bf16 on CUDA (bench/device_check.sh section 7)

Random weights, synthetic prompts (words of a generated word-level vocabulary) and a synthetic reward read from the
token ids (the share of even ids: varied enough that every group has an advantage), so that nothing is downloaded.
Each row trains `MDLMGRPOTrainer` for `--steps` steps (after one warm-up step) and prints the mean rollout time
(`rollout_seconds`, the sampler's share), the mean step time and the peak accelerator memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_mdlm import MDLMConfig, MDLMForMaskedLM  # noqa: E402
from hf_mdlm.cli import add_bool_flag  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512, max_position_embeddings=512),
    "300m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048),
}
FAST = {"threshold": 0.9, "kv_cache": "dual"}


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over "t0" ... with the special tokens at the top ids (pad, eos, slack, mask)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab_size - 4)}
    specials = {"<pad>": vocab_size - 4, "<eos>": vocab_size - 3, "<slack>": vocab_size - 2, "[MASK]": vocab_size - 1}
    backend = Tokenizer(models.WordLevel({**words, **specials}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        mask_token="[MASK]", unk_token="t0", extra_special_tokens=["<slack>"])
    tokenizer.padding_side = "left"
    return tokenizer


def even_share(completion_ids, **_):
    """The share of even token ids in each completion (a reward with no text behind it)."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def run(shape: str, estimator: str, fast: bool, steps: int, batch: int, canvas: int, prompt: int):
    """One arm's (rollout seconds, step seconds, peak memory text), means over the steps after the warm-up."""
    from datasets import Dataset

    from hf_mdlm.training.grpo import MDLMGRPOConfig, MDLMGRPOTrainer

    device = torch.device("cuda" if torch.cuda.is_available() and shape != "tiny" else "cpu")
    config = SHAPES[shape]
    vocab = config["vocab_size"]
    torch.manual_seed(0)
    with torch.device(device):
        model = MDLMForMaskedLM(MDLMConfig(**config, pad_token_id=vocab - 4, eos_token_id=vocab - 3,
                                           slack_token_id=vocab - 2, mask_token_id=vocab - 1))
    model.generation_config.update(max_new_tokens=canvas, steps=canvas, block_length=min(32, canvas))
    tokenizer = word_tokenizer(vocab)
    generator = torch.Generator().manual_seed(1)
    prompts = [" ".join(f"t{i}" for i in torch.randint(0, vocab - 4, (prompt,), generator=generator).tolist())
               for _ in range(batch * (steps + 1))]
    with tempfile.TemporaryDirectory() as out:
        args = MDLMGRPOConfig(
            output_dir=out, max_steps=steps + 1, per_device_train_batch_size=batch, num_generations=min(8, batch),
            learning_rate=1e-5, beta=0.0, log_prob_estimator=estimator, generation_kwargs=FAST if fast else None,
            bf16=device.type == "cuda", use_cpu=device.type == "cpu", logging_steps=1, save_strategy="no",
            report_to="none", disable_tqdm=True, gradient_checkpointing=False, shuffle_dataset=False,
        )
        trainer = MDLMGRPOTrainer(model, reward_funcs=even_share, args=args, processing_class=tokenizer,
                                  train_dataset=Dataset.from_dict({"prompt": prompts}))
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the table is the output
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    logged = [e for e in trainer.state.log_history if "rollout_seconds" in e][1:]  # after the warm-up step
    rollout = statistics.fmean(e["rollout_seconds"] for e in logged)
    step = statistics.fmean(e["step_time"] for e in logged)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    return rollout, step, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bool_flag(parser, "--tiny", help="a tiny model on the CPU: checks the code path")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (after one warm-up)")
    parser.add_argument("--batch", type=int, default=None, help="rollouts per step (groups of up to 8)")
    parser.add_argument("--canvas", type=int, default=None, help="the rollout canvas")
    parser.add_argument("--prompt", type=int, default=None, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of every arm, in alternating order; the fastest is shown (CPU timings vary by 20%%)")
    args = parser.parse_args(argv)
    shape = "tiny" if args.tiny else "300m"
    steps = args.steps or (2 if args.tiny else 3)
    batch = args.batch or (8 if args.tiny else 32)
    canvas = args.canvas or (16 if args.tiny else 128)
    prompt = args.prompt or (8 if args.tiny else 64)
    run(shape, "one_step", False, 1, batch, canvas, prompt)  # warms the process up (threads, allocator, kernels)
    arms = [(estimator, fast) for estimator in ("one_step", "coupled") for fast in (False, True)]
    best = {}
    for repeat in range(args.repeats):
        for arm in arms if repeat % 2 == 0 else arms[::-1]:
            result = run(shape, *arm, steps, batch, canvas, prompt)
            best[arm] = min(best.get(arm, result), result, key=lambda r: r[1])
    print("| model | estimator | rollouts | rollouts/step | canvas | rollout s | step s | rollout share | peak memory |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for (estimator, fast), (rollout, step, peak) in best.items():
        rollouts = "threshold 0.9 + dual cache" if fast else "exact (one token per step)"
        print(f"| {shape} | {estimator} | {rollouts} | {batch} | {canvas} | {rollout:.3f} | {step:.3f} | "
              f"{rollout / step:.0%} | {peak} |", flush=True)

if __name__ == "__main__":
    main()
