#!/usr/bin/env python
"""Fine-tuning throughput and peak memory on an accelerator: the two training checks of bench/device_check.sh.

    python bench/device_check.py finetune        # a ~300M-parameter MDLM, 50 steps, bf16, CE + slack-CTC
    python bench/device_check.py llada8b         # LLaDA-8B's shape, random weights, LoRA + checkpointing, 10 steps
    python bench/device_check.py finetune --tiny # the same code path on the CPU in seconds (a smoke run)

Both train with `MDLMTrainer` on synthetic prompt/response rows (uniform random token ids: throughput does not
depend on the text; the Hub and `datasets` are not needed), and print one Markdown row: parameters, trainable
parameters, canvas, batch, steps, tokens/s (prompt + canvas positions through the model per second, after one
warm-up step), seconds per step, the share of a step spent in `compute_loss` (the forward pass and the loss; the
rest is the backward pass, with the recomputation of checkpointed layers, and the optimizer), model FLOPs
utilisation (6 x parameters x tokens/s over `--peak_tflops`, the usual convention: it counts neither attention nor
the recomputation), peak accelerator memory and `hf_mdlm.memory`'s estimate of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_mdlm import MDLMConfig, MDLMForMaskedLM  # noqa: E402
from hf_mdlm.cli import add_bool_flag  # noqa: E402
from hf_mdlm.data.collator import DiffusionCollator  # noqa: E402
from hf_mdlm.memory import GIB, estimate_finetune_memory  # noqa: E402
from hf_mdlm.training.arguments import MDLMTrainingArguments  # noqa: E402
from hf_mdlm.training.trainer import MDLMTrainer  # noqa: E402

# LLaDA-8B's published shape (GSAI-ML/LLaDA-8B-Base config.json: d_model 4096, 32 layers, 32 heads, MLP 12288,
# vocabulary 126464).
LLADA_8B = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=126464, max_position_embeddings=4096, rope_theta=500000.0)
# About 300M parameters.
MDLM_300M = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=512, max_position_embeddings=256)


class StepTimer:
    """Wall time of every optimizer step (a TrainerCallback without importing one at module level)."""

    def __init__(self, device):
        self.device, self.times, self._start = device, [], None

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_begin(self, *args, **kwargs):
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        synchronize(self.device)
        self.times.append(time.perf_counter() - self._start)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class TimedLossTrainer(MDLMTrainer):
    """Accumulates the wall time of `compute_loss` (forward pass and loss), synchronised on CUDA."""

    loss_seconds = 0.0

    def compute_loss(self, *args, **kwargs):
        synchronize(self.args.device)
        start = time.perf_counter()
        loss = super().compute_loss(*args, **kwargs)
        synchronize(self.args.device)
        self.loss_seconds += time.perf_counter() - start
        return loss


def synthetic_rows(n, prompt_length, response_length, vocab, eos, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = torch.randint(0, vocab - 8, (prompt_length,), generator=g).tolist()
        response = torch.randint(0, vocab - 8, (response_length - 1,), generator=g).tolist() + [eos]
        rows.append({"prompt_ids": prompt, "response_ids": response})
    return rows


HEADER = ("| run | parameters | trainable | canvas | batch | steps | tokens/s | s/step | forward + loss | MFU | "
          "peak memory | estimate |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def run(kind: str, tiny: bool, steps: int | None, batch: int | None, canvas: int | None,
        peak_tflops: float = 989.0) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    shape = TINY if tiny else {"finetune": MDLM_300M, "llada8b": LLADA_8B}[kind]
    vocab = shape["vocab_size"]
    special = dict(mask_token_id=vocab - 1, slack_token_id=vocab - 2, eos_token_id=vocab - 3, pad_token_id=vocab - 4)
    lora = kind == "llada8b"
    steps = steps or (3 if tiny else 50 if kind == "finetune" else 10)
    canvas = canvas or (32 if tiny else 512 if kind == "finetune" else 1024)
    batch = batch or (2 if tiny else 8 if kind == "finetune" else 1)
    prompt_length = canvas // 8
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    torch.manual_seed(0)
    with torch.device(device):  # random weights built where they run (8B on a CPU first would take minutes)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = MDLMForMaskedLM(MDLMConfig(**shape, **special))
        finally:
            torch.set_default_dtype(default)
    parameters = sum(p.numel() for p in model.parameters())
    if lora:
        from peft import LoraConfig, get_peft_model

        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = synthetic_rows(batch * (steps + 1), prompt_length, canvas - 8, vocab, special["eos_token_id"])
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as out:
        args = MDLMTrainingArguments(
            output_dir=out, max_steps=steps + 1, per_device_train_batch_size=batch, learning_rate=1e-4,
            bf16=device.type == "cuda", logging_steps=steps + 1, save_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, ce_weight=1.0, ctc_weight=1.0, slack_prob=0.1,
            use_cpu=device.type == "cpu",
        )
        trainer = TimedLossTrainer(model=model, args=args, train_dataset=rows, callbacks=[timer],
                              data_collator=DiffusionCollator(pad_token_id=special["pad_token_id"], canvas_length=canvas))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    timed = timer.times[1:]  # the first step warms up kernels and the allocator
    seconds = sum(timed) / len(timed)
    loss_share = trainer.loss_seconds / sum(timer.times)  # the warm-up step is in both
    tokens = batch * (prompt_length + canvas)
    estimate = estimate_finetune_memory(
        MDLMConfig(**shape, **special), method="lora" if lora else "full", canvas_length=canvas,
        prompt_length=prompt_length, batch_size=batch, dtype=dtype, gradient_checkpointing=lora)
    if device.type == "cuda":
        measured = torch.cuda.max_memory_allocated()
        peak = f"{measured / GIB:.1f} GiB"
        mfu = f"{6 * parameters * tokens / seconds / (peak_tflops * 1e12):.1%}"
        versus = f" ({measured / estimate.total - 1:+.0%})"
    else:
        peak, mfu, versus = "n/a (CPU)", "n/a (CPU)", ""
    name = "LLaDA-8B shape, LoRA r=16 + gradient checkpointing" if lora else "MDLM ~300M, full fine-tune"
    return (f"| {name}{' (tiny smoke)' if tiny else ''} | {parameters / 1e6:.1f}M | {trainable / 1e6:.1f}M | "
            f"{canvas} | {batch} | {steps} | {tokens / seconds:.0f} | {seconds:.3f} | {loss_share:.0%} | {mfu} | "
            f"{peak} | {estimate.total / GIB:.1f} GiB{versus} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("finetune", "llada8b"))
    add_bool_flag(parser, "--tiny", help="a tiny model on the CPU: checks the code path")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--canvas", type=int, default=None)
    parser.add_argument("--peak_tflops", type=float, default=989.0,
                        help="the accelerator's dense bf16 peak for MFU (H100/H200 SXM: 989)")
    add_bool_flag(parser, "--header", help="print the table header first")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():  # an 8B model would fill (or kill) a CPU machine's memory
        parser.error("CUDA is not available: this check measures a GPU; pass --tiny for the code path on the CPU")
    if args.header:
        print(HEADER)
    print(run(args.kind, args.tiny, args.steps, args.batch, args.canvas, args.peak_tflops), flush=True)


if __name__ == "__main__":
    main()
