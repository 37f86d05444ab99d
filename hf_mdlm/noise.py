"""Forward (noising) process of a masked diffusion language model.

Three pieces, kept independent so the trainer and the tests can use each alone:

* a *noise schedule* maps a diffusion time ``t`` in [0, 1] to the probability
  ``m(t)`` that a canvas token is replaced by ``[MASK]``, and to the ELBO weight
  ``w(t)`` that multiplies the per-example loss;
* *time sampling*: one ``t`` per example, low-discrepancy across the global
  batch (a single uniform offset shared by the batch, example ``j`` of ``total``
  gets ``frac(u + j / total)``), which lowers the variance of the batch loss;
* *masking*: every maskable position is masked independently with
  probability ``m(t_b)``.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch

__all__ = [
    "NoiseSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "get_schedule",
    "low_discrepancy_times",
    "sample_times",
    "mask_canvas",
]

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


def _as_time_tensor(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    return t


class NoiseSchedule:
    """Base class: ``mask_prob(t)`` = m(t), ``weight(t)`` = w(t).

    ``eps`` is the mask probability at ``t = 0``; keeping it positive keeps
    ``w(t)`` finite everywhere.  Subclasses implement both methods element-wise
    on tensors (floats are accepted and turned into 0-d tensors).
    """

    name = "base"

    def __init__(self, eps: float = 1e-3):
        eps = float(eps)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.eps = eps

    def mask_prob(self, t) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LinearSchedule(NoiseSchedule):
    """``m(t) = (1 - eps) t + eps`` with weight ``w(t) = 1 / m(t)`` (the default).

    The continuous-time ELBO weight is ``m'(t) / m(t) = (1 - eps) / m(t)``.  We
    use ``1 / m(t)`` instead, which is the project specification's choice and
    LLaDA's; it differs from the ELBO weight only by the constant factor
    ``1 - eps``, so it rescales the loss (and the effective learning rate) by
    0.1% and leaves the optimum unchanged.
    """

    name = "linear"

    def mask_prob(self, t) -> torch.Tensor:
        t = _as_time_tensor(t)
        return (1.0 - self.eps) * t + self.eps

    def weight(self, t) -> torch.Tensor:
        return 1.0 / self.mask_prob(t)


class CosineSchedule(NoiseSchedule):
    """``m(t) = eps + (1 - eps)(1 - cos(pi t / 2))`` with the ELBO weight ``m'(t) / m(t)``.

    Masks fewer tokens than the linear schedule at small ``t``.  The weight is
    the exact continuous-time ELBO weight, ``m'(t) = (1 - eps) (pi / 2) sin(pi t / 2)``;
    it vanishes at ``t = 0``, where the forward process does not move.
    """

    name = "cosine"

    def mask_prob(self, t) -> torch.Tensor:
        t = _as_time_tensor(t)
        return self.eps + (1.0 - self.eps) * (1.0 - torch.cos(0.5 * math.pi * t))

    def weight(self, t) -> torch.Tensor:
        t = _as_time_tensor(t)
        derivative = (1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)
        return derivative / self.mask_prob(t)


_SCHEDULES = {cls.name: cls for cls in (LinearSchedule, CosineSchedule)}


def get_schedule(name: str, eps: float = 1e-3) -> NoiseSchedule:
    """Build a schedule by name (``"linear"`` or ``"cosine"``)."""
    try:
        cls = _SCHEDULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown noise schedule {name!r}; choose one of {sorted(_SCHEDULES)}"
        ) from None
    return cls(eps=eps)


def low_discrepancy_times(u, positions, total: int) -> torch.Tensor:
    """``t = frac(u + positions / total)``: stratified times for a global batch.

    ``u`` is one uniform offset in [0, 1) shared by the whole global batch,
    ``positions`` the indices of this process's examples within the global
    batch and ``total`` the global batch size.  The ``total`` times then fall
    one in each stratum ``[j / total, (j + 1) / total)`` (shifted by ``u``),
    while each single time is still uniform on [0, 1).  The arithmetic is done
    in float64 so ``frac`` is exact enough; the result is float32 on the
    device of ``positions``.
    """
    total = int(total)
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    positions = torch.as_tensor(positions)
    if torch.is_floating_point(positions) or positions.is_complex():
        raise ValueError("positions must be integer indices into the global batch")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= total):
        raise ValueError(f"positions must lie in [0, {total}), got {positions.tolist()}")
    u = torch.as_tensor(u, dtype=torch.float64, device=positions.device)
    t = torch.frac(u + positions.to(torch.float64) / total)
    return t.to(torch.float32)


def sample_times(
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    device=None,
) -> torch.Tensor:
    """Draw ``batch_size`` diffusion times in [0, 1) (float32).

    ``antithetic=True`` uses :func:`low_discrepancy_times` with one offset for
    the batch; ``antithetic=False`` gives iid uniforms.  All randomness comes
    from ``generator`` when one is given (drawn on the generator's device,
    then moved to ``device``).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    draw_device = generator.device if generator is not None else device
    if antithetic:
        u = torch.rand((), generator=generator, device=draw_device, dtype=torch.float64)
        positions = torch.arange(batch_size, device=draw_device)
        t = low_discrepancy_times(u, positions, max(batch_size, 1))
    else:
        t = torch.rand(batch_size, generator=generator, device=draw_device)
    return t.to(device) if device is not None else t


def _uniforms(shape, generator: GeneratorArg, device) -> torch.Tensor:
    """Uniforms of ``shape`` (B, S); with a list of generators row b uses generator b only."""
    if generator is None or isinstance(generator, torch.Generator):
        draw_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=draw_device).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} per-row generators for a batch of {shape[0]} rows"
        )
    rows = []
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"per-row generators must be torch.Generator, got {type(g).__name__}")
        rows.append(torch.rand(shape[1], generator=g, device=g.device).to(device))
    if not rows:
        return torch.empty(shape, device=device)
    return torch.stack(rows)


def mask_canvas(
    clean_ids: torch.Tensor,
    t,
    maskable: torch.Tensor,
    *,
    mask_token_id: int,
    schedule: NoiseSchedule,
    generator: GeneratorArg = None,
):
    """Noise a batch: mask each maskable position with probability ``m(t_b)``.

    Args:
        clean_ids: (B, S) integer token ids.
        t: (B,) diffusion times in [0, 1] (a float or 0-d tensor is broadcast).
        maskable: (B, S) bool, True on canvas positions (prompt and padding
            False: they are never masked).
        mask_token_id: id written at masked positions.
        schedule: the :class:`NoiseSchedule` giving ``m(t)``.
        generator: ``None``, one ``torch.Generator`` for the batch, or one
            generator per row.  With per-row generators the noise of a row is
            a function of its own generator only (the j-th uniform of row b
            decides position j), so it does not depend on which other rows
            share the batch.

    Returns:
        ``(noised_ids, masked)``: ``noised_ids`` a copy of ``clean_ids`` with
        the masked positions set to ``mask_token_id``; ``masked`` (B, S) bool.
    """
    if mask_token_id is None:
        raise ValueError("mask_token_id is None: the tokenizer/model has no mask token")
    if not isinstance(clean_ids, torch.Tensor) or clean_ids.dim() != 2:
        raise ValueError(f"clean_ids must be a (B, S) tensor, got {getattr(clean_ids, 'shape', type(clean_ids))}")
    if torch.is_floating_point(clean_ids) or clean_ids.dtype == torch.bool:
        raise ValueError(f"clean_ids must hold integer token ids, got dtype {clean_ids.dtype}")
    if not isinstance(maskable, torch.Tensor) or maskable.shape != clean_ids.shape:
        raise ValueError(
            f"maskable must have the shape of clean_ids {tuple(clean_ids.shape)}, "
            f"got {tuple(getattr(maskable, 'shape', ()))}"
        )
    if maskable.dtype != torch.bool:
        raise ValueError(f"maskable must be a bool tensor, got dtype {maskable.dtype}")
    batch, seq = clean_ids.shape
    device = clean_ids.device
    t = _as_time_tensor(t).to(device)
    if t.dim() == 0:
        t = t.expand(batch)
    elif t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
        raise ValueError("t must lie in [0, 1]")

    prob = schedule.mask_prob(t).to(torch.float32)
    u = _uniforms((batch, seq), generator, device)
    masked = maskable & (u < prob[:, None])
    noised = clean_ids.masked_fill(masked, mask_token_id)
    return noised, masked
