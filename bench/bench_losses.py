"""Speed and memory of the diffusion losses: masked CE vs slack-CTC vs a naive CTC.

Every case is a batch of B rows whose whole length S is canvas, with exactly k
``<slack>`` tokens per row at random places and each canvas position masked
with probability m(0.5) (about half: a typical mid-training canvas).  Methods,
all measured side by side in one run, forward + backward wrt the logits:

  (a)  ``masked_cross_entropy`` (this package);
  (a0) the CE most users write: ``F.cross_entropy(logits[masked].float(), ...)``;
  (b)  ``slack_ctc_loss`` with its default analytic (forward-backward) gradient
       (on CUDA its recursions run as Triton kernels when Triton is installed);
  (bl) on CUDA only: (b) with the recursions as PyTorch loops (the CPU code), for
       the kernels' speed-up side by side;
  (b') ``slack_ctc_loss(..., _backward="autograd")``: autograd through the recursion;
  (c)  the naive route: float32 ``log_softmax`` of the full (B, S, V) logits and
       ``F.ctc_loss`` with blank = ``<slack>`` (standard CTC, pins ignored).

Time: best of ``--repeats`` runs after one warm-up, the methods taking turns
(the minimum is the run least disturbed by other processes; the same rule for
every method).  On CUDA: wall
time, every run synchronised.  On CPU with one thread (the default) the table
shows the process CPU time (user + sys, page faults included) instead: it equals
the wall time on an idle machine and does not count the time other processes on
a shared machine take the core away (``--clock wall`` shows wall time; both are
logged to stderr).

Memory: *extra peak* = the peak of memory held by torch tensors during
forward + backward, minus the logits gradient (a (B, S, V) tensor in the logits
dtype that every method must produce) and minus what was alive before.  On
CUDA this is ``torch.cuda.max_memory_allocated``.  On CPU, torch has no such
counter and RSS is misleading (large zero-filled buffers are mapped lazily,
freed ones go back to the OS), so a separate run under
``torch.profiler.profile(profile_memory=True)`` records every allocation and
free of the CPU allocator and the peak of their running sum is taken: the CPU
analogue of ``max_memory_allocated``.  It is reported as a percentage of the
logits tensor's size.

Usage:
    python bench/bench_losses.py               # full grid, CPU float32
    python bench/bench_losses.py --quick       # smoke run
    python bench/bench_losses.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_mdlm.cli import add_bool_flag  # noqa: E402
from hf_mdlm.training import lattice_kernels  # noqa: E402
from hf_mdlm.training.losses import masked_cross_entropy, slack_ctc_loss  # noqa: E402
from hf_mdlm.training.canvas import LinearSchedule, mask_canvas  # noqa: E402

METHODS = ("a", "a0", "b", "bl", "b'", "c")
LABELS = {
    "a": "CE (ours)",
    "a0": "CE (torch)",
    "b": "slack-CTC",
    "bl": "slack-CTC, PyTorch loop",
    "b'": "slack-CTC autograd",
    "c": "naive log_softmax+ctc_loss",
}


def make_batch(batch, seq, vocab, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask_id, slack_id = vocab - 2, vocab - 1
    clean = torch.randint(0, vocab - 2, (batch, seq), generator=g)
    for b in range(batch):
        clean[b, torch.randperm(seq, generator=g)[:k]] = slack_id
    loss_mask = torch.ones(batch, seq, dtype=torch.bool)
    inputs, masked = mask_canvas(
        clean, torch.full((batch,), 0.5), loss_mask, mask_token_id=mask_id, schedule=LinearSchedule(), generator=g
    )
    logits = torch.randn(batch, seq, vocab, generator=g, dtype=torch.float32).to(dtype)
    tensors = [t.to(device) for t in (logits, inputs, clean, loss_mask, masked)]
    tensors[0].requires_grad_(True)
    return (*tensors, mask_id, slack_id)


def loss_fn(method, logits, inputs, clean, loss_mask, masked, mask_id, slack_id):
    if method == "a":
        return lambda: masked_cross_entropy(logits, clean, masked)
    if method == "a0":
        rows = masked.nonzero(as_tuple=True)
        return lambda: F.cross_entropy(logits[rows].float(), clean[rows], reduction="sum")
    if method in ("b", "b'"):
        backward = "analytic" if method == "b" else "autograd"
        return lambda: slack_ctc_loss(
            logits, inputs, clean, mask_token_id=mask_id, slack_token_id=slack_id, loss_mask=loss_mask,
            _backward=backward,
        )
    if method == "bl":
        slack_ctc = loss_fn("b", logits, inputs, clean, loss_mask, masked, mask_id, slack_id)

        def pytorch_loop():
            return slack_ctc()

        pytorch_loop.context = kernels_off  # forward and backward: see run_once
        return pytorch_loop
    if method == "c":
        keep = loss_mask & (clean != slack_id)
        targets = clean[keep]
        target_lengths = keep.sum(1)
        input_lengths = loss_mask.sum(1)

        def naive():
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            return F.ctc_loss(
                log_probs.transpose(0, 1), targets, input_lengths, target_lengths,
                blank=slack_id, reduction="none", zero_infinity=True,
            )

        return naive
    raise ValueError(method)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def kernels_off():
    enabled, lattice_kernels.ENABLED = lattice_kernels.ENABLED, False
    try:
        yield
    finally:
        lattice_kernels.ENABLED = enabled


def run_once(fn, logits):
    logits.grad = None
    with getattr(fn, "context", contextlib.nullcontext)():
        loss = fn()
        loss.sum().backward()
    del loss


def time_methods(fns, logits, device, repeats):
    """Best wall and process CPU time (user + sys) of each method over ``repeats`` runs.

    The methods are run round-robin (one run of each per round) so that a busy
    spell on a shared machine hits all of them alike.
    """
    for fn in fns.values():  # warm-up
        run_once(fn, logits)
    sync(device)
    best = {name: [float("inf"), float("inf")] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run_once(fn, logits)
            sync(device)
            best[name][0] = min(best[name][0], time.perf_counter() - wall)
            best[name][1] = min(best[name][1], time.process_time() - cpu)
    logits.grad = None
    return best


def cpu_peak_bytes(fn, logits):
    from torch.profiler import ProfilerActivity, profile

    logits.grad = None
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_once(fn, logits)
    events = [
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    ]
    events.sort(key=lambda item: item[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    logits.grad = None
    return peak


def cuda_peak_bytes(fn, logits, device):
    logits.grad = None
    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_once(fn, logits)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    logits.grad = None
    return peak


def bench_case(batch, seq, vocab, k, args, device, dtype):
    logits, inputs, clean, loss_mask, masked, mask_id, slack_id = make_batch(batch, seq, vocab, k, dtype, device)
    logits_bytes = logits.numel() * logits.element_size()
    row = {"S": seq, "V": vocab, "k": k, "logits_mb": logits_bytes / 2**20}
    methods = [m for m in METHODS if m not in args.skip and (m != "bl" or device.type == "cuda")]
    fns = {m: loss_fn(m, logits, inputs, clean, loss_mask, masked, mask_id, slack_id) for m in methods}
    times = time_methods(fns, logits, device, args.repeats)
    for method in methods:
        wall, cpu = times[method]
        row[f"t_{method}"] = cpu if args.clock == "cpu" else wall
        if device.type == "cuda":
            peak = cuda_peak_bytes(fns[method], logits, device)
        else:
            peak = cpu_peak_bytes(fns[method], logits)
        # The logits gradient (logits dtype) is produced by every method: not "extra".
        row[f"m_{method}"] = 100.0 * (peak - logits_bytes) / logits_bytes
        print(f"  S={seq} V={vocab} k={k} {LABELS[method]}: wall {wall:.3f} s, cpu {cpu:.3f} s, "
              f"extra peak {row[f'm_{method}']:.1f}% of logits", file=sys.stderr, flush=True)
    del fns
    gc.collect()
    del logits, inputs, clean, loss_mask, masked
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def fmt_time(row, m):
    return f"{row[f't_{m}'] * 1000:.0f}" if f"t_{m}" in row else "-"


def fmt_mem(row, m):
    return f"{row[f'm_{m}']:.1f}%" if f"m_{m}" in row else "-"


def ratio(row, num, den):
    if f"t_{num}" in row and f"t_{den}" in row:
        return f"{row[f't_{num}'] / row[f't_{den}']:.2f}"
    return "-"


def markdown(rows, batch, clock):
    methods = [m for m in METHODS if any(f"t_{m}" in r for r in rows)]
    head = ["S", "V", "k", "logits MB"]
    head += [f"{clock} time {m} (ms)" for m in methods]
    head += [f"extra peak {m}" for m in methods]
    head += ["b/a time", "c/b time", "b'/b time"] + (["bl/b time"] if "bl" in methods else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["S"]), str(r["V"]), str(r["k"]), f"{r['logits_mb']:.0f}"]
        cells += [fmt_time(r, m) for m in methods]
        cells += [fmt_mem(r, m) for m in methods]
        cells += [ratio(r, "b", "a"), ratio(r, "c", "b"), ratio(r, "b'", "b")]
        cells += [ratio(r, "bl", "b")] if "bl" in methods else []
        lines.append("| " + " | ".join(cells) + " |")
    legend = "; ".join(f"{m} = {LABELS[m]}" for m in methods)
    lines.append("")
    lines.append(f"B={batch}; {legend}. Extra peak = peak tensor memory during forward+backward beyond "
                 "the logits and their gradient, as % of the logits tensor.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bool_flag(parser, "--quick", help="small grid for a smoke run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="logits dtype (default float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 3)")
    parser.add_argument("--clock", default=None, choices=["wall", "cpu"],
                        help="time reported in the table (default: cpu on CPU with 1 thread, else wall)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--case", nargs=3, type=int, action="append", metavar=("S", "V", "K"),
                        help="run only this (seq, vocab, slack) case; repeatable")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4, quick 2)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(METHODS), help="methods to leave out")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    torch.set_num_threads(args.threads)
    if args.clock is None:
        args.clock = "cpu" if device.type == "cpu" and args.threads == 1 else "wall"
    if args.repeats is None:
        args.repeats = 3

    if args.quick:
        batch, grid = 2, [(256, 8000, 16), (256, 8000, 64)]
    else:
        batch = 4
        grid = [(s, v, k) for s in (512, 1024) for v in (32000, 126464) for k in (16, 64)]
    if args.case:
        grid = [tuple(c) for c in args.case]
    if args.batch:
        batch = args.batch

    print(f"# bench_losses: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"device={device}, logits dtype={str(dtype).replace('torch.', '')}, threads={torch.get_num_threads()}, "
          f"{args.clock} time, best of {args.repeats}", flush=True)
    rows = []
    for seq, vocab, k in grid:
        rows.append(bench_case(batch, seq, vocab, k, args, device, dtype))
    print(markdown(rows, batch, args.clock))


if __name__ == "__main__":
    main()
