#!/usr/bin/env python
"""Benchmark `MDLMForMaskedLM.generate` against a plain per-step reference loop.

    python bench/bench_generate.py            # the default grid (CPU: a few minutes)
    python bench/bench_generate.py --quick    # smoke run (seconds)
    python bench/bench_generate.py --device cuda --dtype bfloat16
    python bench/bench_generate.py --caches [--fast_dllm DIR]   # KV caches: none / prefix / dual
    python bench/bench_generate.py --engine --device cuda --llada8b_shape --cache_lengths 256 --bandwidth_gbs 4800

Prints a Markdown table: for batch sizes x canvas lengths x step counts x decoding modes (low-confidence
remasking with a fixed schedule, and confidence-threshold decoding), the generated tokens per second and the
number of model calls of

* `generate`: batched rows, per-row work vectorised, steps that commit nothing skipped, a block ends as soon
  as it is full (threshold decoding);
* the reference: the textbook algorithm, one prompt at a time (batch 1), one forward per step over the whole
  canvas, a per-row top-k commit; prompts of a batch are run one after the other.

Both run greedy decoding (temperature 0) on the same small random `MDLMForMaskedLM`, and the table says whether
their tokens agree. Random weights give almost uniform predictions that never reach a confidence threshold, so
the LM head is multiplied by `--head_scale` (default 60) to make the predictions peaked enough for threshold
decoding to have an effect; use `--head_scale 1` for the raw random model.

The default model (4 layers, hidden 128, vocab 4096) keeps the default grid within a few minutes on one CPU
core; `--hidden 256` is the larger variant. On a shared machine, `--threads 1` avoids thread oversubscription.

`--blocks` prints block diffusion (the same weights with `block_size = --block_length`, exact cache) against the
bidirectional model (dual cache) on the same canvases (`--cache_lengths`) and batch sizes.

`--caches` prints the KV-cache table instead: kv_cache None / "prefix" / "dual" / "dual" refreshed every `--refresh`
steps x decoding (low-confidence, confidence threshold, Fast-dLLM's factor rule) x batch sizes x canvas lengths (`--cache_lengths`, one token per step, blocks of `--block_length`): tokens/s, model
calls, token positions run through the model, and the generated tokens that differ from the uncached run. With
`--fast_dllm DIR` (the `llada/` folder of NVlabs/Fast-dLLM, fetched into a scratch folder, never part of this
repository; its two CPU patches are in tests/fixtures/llada-tiny/README.md) the same weights also run through
Fast-dLLM's own `generate` (LLaDA's uncached sampler, beside the "none" rows), `generate_with_prefix_cache` and
`generate_with_dual_cache`, batch 1 only, so a batch of B is its loop over the rows; without it that column is left
out. `--compile` runs every `generate` with `compile=True`
(the compilations happen in the warm-up, outside the timings).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

try:
    from hf_mdlm import MDLMConfig, MDLMForMaskedLM
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_mdlm import MDLMConfig, MDLMForMaskedLM
from hf_mdlm.cli import add_bool_flag  # noqa: E402


@torch.no_grad()
def reference_generate(model, prompt, gen_length, steps, block_length, mask_id, threshold=None):
    """The plain sampler for one prompt (shape (1, P)): returns (canvas, model calls)."""
    canvas = torch.cat([prompt, torch.full((1, gen_length), mask_id, device=prompt.device)], dim=1)
    start = prompt.shape[1]
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    calls = 0
    for b in range(num_blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        masked_total = int((canvas[0, lo:hi] == mask_id).sum())
        plan = [masked_total // steps_per_block + (1 if s < masked_total % steps_per_block else 0)
                for s in range(steps_per_block)]
        for s in range(steps_per_block):
            is_masked = canvas[0] == mask_id
            remaining = int(is_masked[lo:hi].sum())
            if remaining == 0:
                break
            if threshold is None and plan[s] == 0:
                continue
            logits = model(input_ids=canvas).logits[0].float()
            calls += 1
            probs = torch.softmax(logits, dim=-1)
            logits[:, mask_id] = float("-inf")  # never propose the mask token itself
            proposal = logits.argmax(-1)
            confidence = probs.gather(-1, proposal[:, None])[:, 0]
            confidence[:lo] = float("-inf")
            confidence[hi:] = float("-inf")
            confidence[~is_masked] = float("-inf")
            if threshold is None:
                count = plan[s]
            else:
                passing = int((confidence >= threshold).sum())
                left_steps = steps_per_block - s
                count = max(passing, -(-remaining // left_steps))
            count = min(count, remaining)
            # The `count` most confident positions; equal confidences: leftmost first (generate's rule).
            values = confidence.tolist()
            chosen = sorted(range(len(values)), key=lambda i: (-values[i], i))[:count]
            for position in chosen:  # one commit at a time
                canvas[0, position] = proposal[position]
    return canvas, calls


def build_model(args, device, dtype):
    torch.manual_seed(args.seed)
    config = MDLMConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate or (args.hidden * 11) // 4,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=4096,
        mask_token_id=args.vocab - 1, slack_token_id=args.vocab - 2, eos_token_id=args.vocab - 3,
        pad_token_id=args.vocab - 4, attn_implementation=args.attn,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # built where it runs, in its dtype (an 8B model in float32 on the CPU: minutes)
            model = MDLMForMaskedLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        model.lm_head.weight.mul_(args.head_scale)
    return model


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def fast_dllm_twin(model, folder):
    """Fast-dLLM's generate module and its LLaDAModelLM holding `model`'s weights (LLaDA's key names)."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # its attention wrapper is torch.compile'd: run it eagerly
    sys.path.insert(0, str(Path(folder).resolve()))
    import generate as fast_generate
    from model.configuration_llada import LLaDAConfig
    from model.modeling_llada import LLaDAModelLM

    from hf_mdlm.convert import llada_key_to_mdlm

    c = model.config
    config = LLaDAConfig(
        d_model=c.hidden_size, n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, n_layers=c.num_hidden_layers,
        mlp_hidden_size=c.intermediate_size, vocab_size=c.vocab_size, embedding_size=c.vocab_size,
        max_sequence_length=c.max_position_embeddings, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        block_type="llama", activation_type="silu", layer_norm_type="rms", rope=True, rope_full_precision=True,
        weight_tying=False, include_bias=False, include_qkv_bias=False, alibi=False, flash_attention=False,
        init_device="cpu", mask_token_id=c.mask_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    twin = LLaDAModelLM(config, init_params=True).eval().to(device=model.device, dtype=model.dtype)
    ours = model.state_dict()
    twin.load_state_dict({key: ours[llada_key_to_mdlm(key)] for key in twin.state_dict()})
    return fast_generate, twin


def cache_table(args, model, prompts, device):
    """The KV-cache table (see the module docstring)."""
    mask_id = model.config.mask_token_id
    fast = fast_dllm_twin(model, args.fast_dllm) if args.fast_dllm else None
    # "none" against Fast-dLLM's `generate`: LLaDA's own uncached sampler (its generate.py), with Fast-dLLM's threshold
    functions = {None: "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}
    caches = {"none": {}, "prefix": {"kv_cache": "prefix"}, "dual": {"kv_cache": "dual"},
              f"dual, refresh {args.refresh}": {"kv_cache": "dual", "kv_cache_refresh": args.refresh}}
    decodings = {"low-confidence": {}, f"threshold {args.threshold}": {"threshold": args.threshold},
                 f"factor {args.factor}": {"factor": args.factor}}
    header = "| batch | canvas | decoding | kv_cache | tok/s | calls | positions | tokens differing from none | speed-up |"
    rule = "|---:|---:|:---|:---|---:|---:|---:|---:|---:|"
    if fast:
        header += " Fast-dLLM tok/s | ours / Fast-dLLM | same tokens as Fast-dLLM |"
        rule += "---:|---:|:---:|"
    for cache in caches.values():  # warm-up (kernels loaded, allocator filled, graphs compiled): not in the table
        for length in args.cache_lengths:
            model.generate(prompts[:1], max_new_tokens=length, steps=length, block_length=min(args.block_length, length),
                           compile=args.compile, **cache)
    print(header)
    print(rule)
    for length in args.cache_lengths:
        block = min(args.block_length, length)
        for batch in args.batch_sizes:
            for mode, decoding in decodings.items():
                ids = prompts[:batch]
                base = None
                for name, cache in caches.items():
                    out, seconds = timed(lambda: model.generate(
                        ids, max_new_tokens=length, steps=length, block_length=block, compile=args.compile,
                        return_dict_in_generate=True, **decoding, **cache), device)
                    tps = batch * length / seconds
                    if base is None:
                        base = (out.sequences, tps)
                    differing = int((out.sequences != base[0]).sum())
                    row = [batch, length, mode, name, f"{tps:.0f}", out.num_model_calls, out.num_positions,
                           differing, f"{tps / base[1]:.2f}x"]
                    fast_cache = cache.get("kv_cache") if len(cache) <= 1 else "refreshed"
                    if fast and fast_cache in functions and "factor" not in decoding:
                        run = getattr(fast[0], functions[fast_cache])
                        threshold = decoding.get("threshold")

                        def run_rows():
                            return torch.cat([run(fast[1], ids[i:i + 1], steps=length, gen_length=length,
                                                  block_length=block, mask_id=mask_id, threshold=threshold)[0]
                                              for i in range(batch)])

                        theirs, their_seconds = timed(run_rows, device)
                        their_tps = batch * length / their_seconds
                        row += [f"{their_tps:.0f}", f"{tps / their_tps:.2f}x",
                                "yes" if torch.equal(theirs, out.sequences) else "no"]
                    elif fast:
                        row += ["", "", ""]
                    print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


def block_table(args, model, prompts, device):
    """Block diffusion against the bidirectional model on the same weights and canvas: the model with
    `block_size = --block_length` (block-causal attention, blocks aligned to absolute positions, its exact cache)
    against itself without (Fast-dLLM's approximate dual cache). Different models, so the tokens differ."""
    print("| batch | canvas | attention | kv_cache | tok/s | calls | positions | speed-up |")
    print("|---:|---:|:---|:---|---:|---:|---:|---:|")
    for length in args.cache_lengths:
        block = min(args.block_length, length)
        for batch in args.batch_sizes:
            ids, base = prompts[:batch], None
            for attention, block_size in (("bidirectional", None), (f"blocks of {block}", block)):
                model.config.block_size = block_size
                alignment = "absolute" if block_size else "canvas"
                for cache in (None, "dual"):
                    settings = dict(max_new_tokens=length, steps=length, block_length=block, kv_cache=cache,
                                    block_alignment=alignment, return_dict_in_generate=True)
                    model.generate(ids, **settings)  # warm-up
                    out, seconds = timed(lambda: model.generate(ids, **settings), device)
                    tps = batch * length / seconds
                    base = base or tps
                    print(f"| {batch} | {length} | {attention} | {cache or 'none'} | {tps:.0f} | {out.num_model_calls} | "
                          f"{out.num_positions} | {tps / base:.2f}x |", flush=True)
    model.config.block_size = None


LLADA_8B_SHAPE = dict(layers=32, hidden=4096, heads=32, intermediate=12288, vocab=126464)


def engine_table(args, model, prompts, device):
    """Time per model call of the dual-cached sampler with and without `compile`, against the weight-bandwidth
    limit (every call reads every weight once: parameter bytes / memory bandwidth)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    limit_ms = weight_bytes / (args.bandwidth_gbs * 1e9) * 1e3 if args.bandwidth_gbs else None
    length, block = args.cache_lengths[0], min(args.block_length, args.cache_lengths[0])
    settings = dict(max_new_tokens=length, steps=length, block_length=block, kv_cache="dual",
                    return_dict_in_generate=True)
    print(f"dual cache, canvas {length}, blocks of {block}, one token per step; weights {weight_bytes / 2**30:.2f} GiB"
          + (f", bandwidth {args.bandwidth_gbs} GB/s: limit {limit_ms:.2f} ms per call" if limit_ms else "") + "\n")
    print("| batch | compile | tok/s | calls | ms per call | / weight-bandwidth limit | same tokens as eager |")
    print("|---:|:---:|---:|---:|---:|---:|:---:|")
    for batch in args.batch_sizes:
        ids = prompts[:batch]
        eager = None
        for compiled in (False, True):
            model.generate(ids, compile=compiled, **settings)  # warm-up: kernels, allocator, compilation
            out, seconds = timed(lambda: model.generate(ids, compile=compiled, **settings), device)
            eager = out.sequences if eager is None else eager
            per_call = seconds / out.num_model_calls * 1e3
            ratio = f"{per_call / limit_ms:.2f}x" if limit_ms else "n/a"
            print(f"| {batch} | {'yes' if compiled else 'no'} | {batch * length / seconds:.0f} | {out.num_model_calls} | "
                  f"{per_call:.2f} | {ratio} | {'yes' if torch.equal(out.sequences, eager) else 'no'} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bool_flag(parser, "--quick", help="tiny model and grid: a smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=None, help="default: 2.75 x hidden")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--head_scale", type=float, default=60.0, help="multiplies the random LM head")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256], help="canvas lengths")
    parser.add_argument("--step_divisors", type=int, nargs="+", default=[1, 4], help="steps = length / divisor")
    parser.add_argument("--block_length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--factor", type=float, default=1.0, help="Fast-dLLM's factor rule (--caches)")
    parser.add_argument("--refresh", type=int, default=8, help="kv_cache_refresh of the refreshed dual cache (--caches)")
    add_bool_flag(parser, "--compile", help="generate with compile=True (torch.compile of the denoising step)")
    add_bool_flag(parser, "--engine", help="print the engine table instead: ms per call of the dual-cached sampler, "
                                           "eager and compiled, against the weight-bandwidth limit")
    add_bool_flag(parser, "--llada8b_shape", help="LLaDA-8B's shape with random weights (a GPU with ~20 GB)")
    parser.add_argument("--bandwidth_gbs", type=float, default=None,
                        help="memory bandwidth for --engine's limit, GB/s (H200: 4800)")
    parser.add_argument("--prompt_length", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_bool_flag(parser, "--no_reference", help="skip the reference loop")
    parser.add_argument("--seed", type=int, default=0)
    add_bool_flag(parser, "--caches", help="print the KV-cache table instead")
    add_bool_flag(parser, "--blocks", help="print the block-diffusion table instead: the same weights block-causal "
                                           "(exact cache) and bidirectional (dual cache)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager, flash_attention_2")
    parser.add_argument("--cache_lengths", type=int, nargs="+", default=[256, 512], help="canvases of --caches")
    parser.add_argument("--fast_dllm", default=None,
                        help="Fast-dLLM's llada/ folder (scratch copy): add its cached samplers to --caches")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.vocab = 2, 64, 2, 512
        args.batch_sizes, args.lengths, args.block_length, args.head_scale = [1, 4], [32], 16, 100.0
        args.cache_lengths = [32]
    if args.llada8b_shape:
        for name, value in LLADA_8B_SHAPE.items():
            setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = build_model(args, device, dtype)
    mask_id = model.config.mask_token_id
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, {params:.1f}M parameters, "
          f"{dtype} on {device} ({torch.get_num_threads()} CPU threads), {args.attn} attention, head_scale {args.head_scale}, "
          f"prompt {args.prompt_length} tokens, block_length {args.block_length}, greedy\n")

    generator = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, args.vocab - 8, (max(args.batch_sizes), args.prompt_length), generator=generator)
    prompts = prompts.to(device)
    # Warm-up (allocator, kernels).
    model.generate(prompts[:1], max_new_tokens=args.block_length, steps=2, block_length=args.block_length)
    if not args.no_reference:
        reference_generate(model, prompts[:1], args.block_length, 2, args.block_length, mask_id)

    if args.engine:
        return engine_table(args, model, prompts, device)
    if args.blocks:
        return block_table(args, model, prompts, device)
    if args.caches:
        return cache_table(args, model, prompts, device)
    header = ("| batch | canvas | steps | decoding | generate tok/s | generate calls | reference tok/s | "
              "reference calls | speed-up | same tokens |")
    print(header)
    print("|---:|---:|---:|:---|---:|---:|---:|---:|---:|:---:|")
    for length in args.lengths:
        block = min(args.block_length, length)
        for divisor in args.step_divisors:
            steps = length // divisor
            if steps % (length // block):
                continue
            for batch in args.batch_sizes:
                for mode, threshold in (("low-confidence", None), (f"threshold {args.threshold}", args.threshold)):
                    ids = prompts[:batch]
                    out, seconds = timed(lambda: model.generate(
                        ids, max_new_tokens=length, steps=steps, block_length=block, threshold=threshold,
                        return_dict_in_generate=True), device)
                    ours_tps = batch * length / seconds
                    row = [batch, length, steps, mode, f"{ours_tps:.0f}", out.num_model_calls]
                    if args.no_reference:
                        row += ["", "", "", ""]
                    else:
                        def run_reference():
                            results = [reference_generate(model, ids[i:i + 1], length, steps, block, mask_id,
                                                          threshold) for i in range(batch)]
                            return torch.cat([c for c, _ in results]), sum(n for _, n in results)

                        (ref_canvas, ref_calls), ref_seconds = timed(run_reference, device)
                        ref_tps = batch * length / ref_seconds
                        same = torch.equal(ref_canvas, out.sequences)
                        row += [f"{ref_tps:.0f}", ref_calls, f"{ours_tps / ref_tps:.2f}x", "yes" if same else "no"]
                    print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


if __name__ == "__main__":
    main()
