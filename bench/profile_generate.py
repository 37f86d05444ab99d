#!/usr/bin/env python
"""Where one sampling step spends its time: torch.profiler over a whole generate() per KV-cache mode.

    python bench/profile_generate.py --device cuda            # batch 1, canvas 256, the device-check model
    python bench/profile_generate.py --quick                  # tiny model on the CPU (a smoke run)

For each of kv_cache none/prefix/dual it prints the wall time per model call, the host-device synchronisations
per call (``aten::item``/``_local_scalar_dense``, ``nonzero``, ``cudaStreamSynchronize``...), and the operators
with the most self CPU time: at batch 1 on a GPU the step is bound by the host, and this says by what.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import build_model  # noqa: E402

from hf_mdlm.cli import add_bool_flag  # noqa: E402

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
            "cudaDeviceSynchronize", "aten::is_nonzero", "cudaMemcpyAsync")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bool_flag(p, "--quick")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=None)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--head_scale", type=float, default=60.0)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--top", type=int, default=12, help="operators listed per mode")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.vocab, args.length = 2, 64, 4, 512, 64
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model = build_model(args, device, dtype)
    prompt = torch.randint(0, args.vocab - 4, (args.batch, 16), generator=torch.Generator().manual_seed(0)).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def run(cache):
        return model.generate(prompt, max_new_tokens=args.length, steps=args.length, block_length=args.block_length,
                              threshold=args.threshold, kv_cache=cache, return_dict_in_generate=True)

    for cache in (None, "prefix", "dual"):
        run(cache)  # warm-up: kernels loaded, allocator filled
    for cache in (None, "prefix", "dual"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        with profile(activities=activities) as prof:
            run(cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
        calls = out.num_model_calls
        events = prof.key_averages()
        syncs = {e.key: e.count for e in events if e.key in SYNC_OPS}
        print(f"\n## kv_cache={cache or 'none'}: {seconds * 1000 / calls:.2f} ms per model call ({calls} calls, "
              f"{seconds:.2f} s unprofiled); per call: "
              + ", ".join(f"{k} {v / calls:.1f}" for k, v in sorted(syncs.items())))
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=50))


if __name__ == "__main__":
    main()
