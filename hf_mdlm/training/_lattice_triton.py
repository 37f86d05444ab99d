"""Triton kernels of the banded slack-CTC lattice; see ``lattice_kernels.py``, which imports this module only when a
CUDA tensor reaches the loss."""

import triton
import triton.language as tl


@triton.jit
def forward(e_target, e_slack, alpha, log_scale, steps, width, batch, BLOCK: tl.constexpr):
    # e_*: (B, L, W) contiguous; alpha: (B, L+1, W+1), row 0 set by the caller; log_scale: (L+1, B).
    row = tl.program_id(0).to(tl.int64)
    state = tl.arange(0, BLOCK)
    in_band = state < width
    emissions = row * steps * width
    lattice = row * (steps + 1) * (width + 1)
    for i in range(steps):
        prev = alpha + lattice + i * (width + 1)
        stay = tl.load(prev + 1 + state, mask=in_band, other=float("-inf"))  # state s before position i
        enter = tl.load(prev + state, mask=in_band, other=float("-inf"))  # state s - 1 (column 0: s = -1)
        e_t = tl.load(e_target + emissions + i * width + state, mask=in_band, other=float("-inf"))
        e_s = tl.load(e_slack + emissions + i * width + state, mask=in_band, other=float("-inf"))
        x, y = stay + e_t, enter + e_s
        top = tl.maximum(x, y)
        top = tl.where(top == float("-inf"), 0.0, top)  # both -inf: the sum is -inf, not NaN
        cur = top + tl.log(tl.exp(x - top) + tl.exp(y - top))  # log-add-exp
        scale = tl.max(cur, axis=0)
        scale = tl.where(scale == float("-inf"), 0.0, scale)  # an all -inf row stays -inf
        tl.store(prev + (width + 1) + 1 + state, cur - scale, mask=in_band)
        tl.store(log_scale + (i + 1) * batch + row, scale)
        tl.debug_barrier()  # the next position reads what the other threads just wrote


@triton.jit
def backward(e_target, e_slack, beta, log_scale, steps, width, batch, BLOCK: tl.constexpr):
    # beta: (B, L+1, W+1), row L set by the caller, last column a permanent -inf.
    row = tl.program_id(0).to(tl.int64)
    state = tl.arange(0, BLOCK)
    in_band = state < width
    emissions = row * steps * width
    lattice = row * (steps + 1) * (width + 1)
    for back in range(steps):
        i = steps - 1 - back
        nxt = beta + lattice + (i + 1) * (width + 1)
        stay = tl.load(nxt + state, mask=in_band, other=float("-inf"))
        leave = tl.load(nxt + 1 + state, mask=in_band, other=float("-inf"))  # state s + 1 after position i
        e_t = tl.load(e_target + emissions + i * width + state, mask=in_band, other=float("-inf"))
        e_s = tl.load(e_slack + emissions + i * width + 1 + state, mask=state + 1 < width,
                      other=float("-inf"))
        x, y = e_t + stay, e_s + leave
        top = tl.maximum(x, y)
        top = tl.where(top == float("-inf"), 0.0, top)
        cur = top + tl.log(tl.exp(x - top) + tl.exp(y - top)) - tl.load(log_scale + (i + 1) * batch + row)
        tl.store(nxt - (width + 1) + state, cur, mask=in_band)
        tl.debug_barrier()
