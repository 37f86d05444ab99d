"""The banded slack-CTC recursions as one Triton kernel each, for CUDA.

In PyTorch every position of the canvas is a few tensor operations, so the forward and backward passes launch
several kernels per position: on an H200, a canvas of 1024 spent ~0.3 s in launches for a lattice of a few MB.
Here one program per example walks the whole canvas, with its band of states (slack used so far) in registers,
writing the same scaled ``alpha``/``beta`` and ``log_scale`` as the PyTorch loops in ``losses.py`` (which remain
the reference, the CPU path and the fallback without Triton). The posteriors and the gradient are computed from
them by the same tensor code either way.

Triton is imported only when a CUDA tensor reaches the loss. Under ``TRITON_INTERPRET=1`` (set before Triton is
first imported) the same kernels run on CPU tensors through Triton's interpreter: that is how the CPU-only tests
compare them with the PyTorch loops.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

# HF_MDLM_LATTICE_KERNELS=0 keeps the PyTorch loops on CUDA too (a way out should a kernel misbehave somewhere).
ENABLED = os.environ.get("HF_MDLM_LATTICE_KERNELS", "1") != "0"
# Wider bands than this (more slack in one example) stay on the PyTorch loop: one program's registers hold the band.
MAX_BAND = 8192


def usable(tensor: torch.Tensor) -> bool:
    """Whether the kernels run for this lattice: a CUDA tensor, Triton installed, not inside torch.compile."""
    return (ENABLED and tensor.is_cuda and tensor.shape[-1] <= MAX_BAND and not torch.compiler.is_compiling()
            and _triton_installed())


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _launch(name, e_target, e_slack, lattice, log_scale):
    """`lattice` (B, L+1, W+1) and `log_scale` (L+1, B, 1) are contiguous; the kernel walks them in place."""
    batch, steps, width = e_target.shape
    if batch and steps:
        from . import _lattice_triton  # Triton only now

        kernel = getattr(_lattice_triton, name)
        block = max(16, 1 << (width - 1).bit_length())  # the band in one power-of-two block
        kernel[(batch,)](e_target.contiguous(), e_slack.contiguous(), lattice, log_scale, steps, width, batch,
                         BLOCK=block, num_warps=1)


def fill_alpha(e_target, e_slack, alpha, log_scale):
    """Fill ``alpha`` and ``log_scale``, allocated and initialised by ``losses._forward_alpha``, as its loop would."""
    _launch("forward", e_target, e_slack, alpha, log_scale)


def fill_beta(e_target, e_slack, beta, log_scale):
    """Fill ``beta``, allocated and initialised by ``losses._backward_beta``, as its loop would."""
    _launch("backward", e_target, e_slack, beta, log_scale)
