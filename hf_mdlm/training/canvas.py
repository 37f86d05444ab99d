"""The forward process of masked-diffusion training: clean canvases, noise schedules, times and masks.

* *Canvas building* (`build_canvases`): each example's response, with `<slack>` tokens inserted by the slack
  rule, filled to the fixed canvas length L after its prompt (docs/objective.md §1).
* A *noise schedule* maps a diffusion time `t` in [0, 1] to the probability `m(t)` that a canvas token is
  replaced by `[MASK]`, and to the ELBO weight `w(t)` that multiplies the per-example loss (§2, §5).
* *Time sampling*: one `t` per example, low-discrepancy across the global batch (a single uniform offset
  shared by the batch, example `j` of `total` gets `frac(u + j / total)`), which lowers the variance of the
  batch loss (MDLM, arXiv 2406.07524).
* *Masking*: every canvas position is masked independently with probability `m(t_b)`; prompts never.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence, Union

import torch

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
    """LLaDA's schedule (arXiv 2502.09992; docs/objective.md §2): ``m(t) = (1 - eps) t + eps`` with weight ``w(t) = 1 / m(t)`` (the default).

    The continuous-time ELBO weight is ``m'(t) / m(t) = (1 - eps) / m(t)``.  We
    use ``1 / m(t)`` instead, which is LLaDA's (arXiv 2502.09992; docs/objective.md §5); it differs from the ELBO weight only by the constant factor
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


# MDLM's low-discrepancy sampler (arXiv 2406.07524): stratified times lower the variance of the batch loss (§2).
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


# The forward process q(z_t | x): each canvas position masked independently with probability m(t) (§2).
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


# How many <slack> a response gets (docs/objective.md §1): one per gap with probability p, floor(p * n + 1/2) at
# random gaps, or none. And what fills the canvas after the response: EOS (LLaDA; the model learns to stop) or <slack>.
SLACK_RULES = ("bernoulli", "fixed", "none")
CANVAS_PADDINGS = ("eos", "slack")


class Canvases(NamedTuple):
    clean_ids: torch.Tensor  # (B, T) long: prompt, canvas, pad
    canvas_mask: torch.Tensor  # (B, T) bool: the L canvas positions
    attention_mask: torch.Tensor  # (B, T) long: 1 on prompt + canvas


def _check_lengths(name: str, t: Any, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},); got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor; got {t.dtype}")
    if batch and int(t.min()) < 0:
        raise ValueError(f"{name} must be >= 0; got {t.tolist()}")
    return t.to(device="cpu", dtype=torch.long)


def inserts_slack(slack_rule: str, slack_prob: float) -> bool:
    """Whether `slack_rule` at `slack_prob` may put `<slack>` into a response (then the run needs a slack id)."""
    return slack_rule != "none" and slack_prob > 0


def draw_slack_gaps(n: int, room: int, rule: str, prob: float, gen: torch.Generator | None) -> torch.Tensor:
    """Bool (n + 1,): which gaps of an n-token response get one <slack>, at most `room` of them.

    The one insertion rule: training draws its anchor alignments with it, and the slack-marginal likelihood bound
    draws its proposals with it and scores them with `slack_gaps_log_prob`."""
    dev = gen.device if gen is not None else torch.device("cpu")
    gaps = torch.zeros(n + 1, dtype=torch.bool)
    if rule == "bernoulli":
        gaps = (torch.rand(n + 1, generator=gen, device=dev) < prob).cpu()
    elif rule == "fixed":
        k = min(int(math.floor(prob * n + 0.5)), n + 1)
        if k:
            gaps[torch.randperm(n + 1, generator=gen, device=dev)[:k].cpu()] = True
    k = int(gaps.sum())
    if k > room:  # the response is never cut: drop slacks at random until the canvas fits
        where = torch.nonzero(gaps).squeeze(1)
        keep = where[torch.randperm(k, generator=gen, device=dev)[:room].cpu()]
        gaps = torch.zeros(n + 1, dtype=torch.bool)
        gaps[keep] = True
    return gaps


def slack_gaps_log_prob(k: int, n: int, room: int, rule: str, prob: float) -> float:
    """log of the probability that `draw_slack_gaps(n, room, rule, prob)` returns one given layout with k slacks.

    Every layout with the same k is equally likely under each rule (the random trimming keeps a uniform subset),
    so the probability depends on k alone. -inf for a layout the rule never draws."""
    gaps = n + 1
    if not 0 <= k <= min(gaps, room):
        return -math.inf
    if rule == "none":
        return 0.0 if k == 0 else -math.inf
    if rule == "fixed":
        drawn = min(int(math.floor(prob * n + 0.5)), gaps, room)
        return -_log_comb(gaps, drawn) if k == drawn else -math.inf

    def log_pattern(j):  # one given pattern of j gaps out of `gaps`, untrimmed
        return (j * math.log(prob) if j else 0.0) + ((gaps - j) * math.log1p(-prob) if gaps - j else 0.0)

    if k < room or room >= gaps:
        return log_pattern(k)
    # k == room < gaps: drawn as it is, or trimmed down to it from any draw of more than `room` gaps
    trimmed = [_log_comb(gaps, j) + log_pattern(j) for j in range(room + 1, gaps + 1)]
    tail = max(trimmed) + math.log(sum(math.exp(x - max(trimmed)) for x in trimmed))
    first, second = log_pattern(k), tail - _log_comb(gaps, room)
    return max(first, second) + math.log1p(math.exp(-abs(first - second)))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


# The clean canvas and its anchor alignment (docs/objective.md §1; slack insertion from arXiv 2601.22947).
def build_canvases(
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    response_lengths: torch.Tensor,
    *,
    canvas_length: int,
    slack_token_id: int | None,
    fill_token_id: int,
    slack_rule: str = "bernoulli",
    slack_prob: float = 0.1,
    generators: Sequence[torch.Generator] | None = None,
) -> Canvases:
    """Build the clean canvas of every row (the anchor alignment) from a collated batch.

    For row b with prompt length P and response ``r`` of length n (taken from
    ``input_ids[b, P:P+n]``): k ``<slack>`` tokens are put into the n + 1 gaps of ``r`` (before
    token 0, between tokens, after the last), at most one per gap, by ``slack_rule``:

    * ``"bernoulli"``: each gap independently with probability ``slack_prob`` (E[k] = p (n + 1));
    * ``"fixed"``: k = round(slack_prob * n) (half up) distinct gaps chosen uniformly;
    * ``"none"``: k = 0.

    If n + k > canvas_length, slacks are dropped at random until the canvas fits (the response is
    never cut). ``slack_token_id`` may be None only when no slack is inserted (``slack_rule="none"`` or
    ``slack_prob=0``: a CE-only baseline for a model without ``<slack>``). The rest of the canvas is ``fill_token_id`` (EOS for padding mode "eos", the slack id
    for mode "slack"). ``generators`` (one ``torch.Generator`` per row, or None for torch's global
    generator) makes a row's canvas independent of the other rows of the batch.

    Returns :class:`Canvases` ``(clean_ids, canvas_mask, attention_mask)``, all (B, T) on the device of
    ``input_ids``: ``clean_ids`` = prompt, canvas, then the padding of ``input_ids``; ``canvas_mask``
    (bool) marks positions P..P+L-1; ``attention_mask`` (long) is 1 on positions 0..P+L-1.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (B, T) tensor; got {getattr(input_ids, 'shape', type(input_ids))}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor; got {input_ids.dtype}")
    bsz, width = input_ids.shape
    L = int(canvas_length)
    if L < 1:
        raise ValueError(f"canvas_length must be >= 1; got {canvas_length}")
    if slack_rule not in SLACK_RULES:
        raise ValueError(f"slack_rule must be one of {SLACK_RULES}; got {slack_rule!r}")
    if not 0.0 <= float(slack_prob) <= 1.0:
        raise ValueError(f"slack_prob must be in [0, 1]; got {slack_prob}")
    if fill_token_id is None or int(fill_token_id) < 0:
        raise ValueError(f"fill_token_id must be a token id >= 0; got {fill_token_id}")
    if slack_token_id is None:
        if inserts_slack(slack_rule, float(slack_prob)):
            raise ValueError(f"slack_rule={slack_rule!r} with slack_prob={slack_prob} needs a slack_token_id "
                             "(only slack_rule='none' or slack_prob=0 works without)")
    elif int(slack_token_id) < 0:
        raise ValueError(f"slack_token_id must be a token id >= 0; got {slack_token_id}")
    p_len = _check_lengths("prompt_lengths", prompt_lengths, bsz)
    r_len = _check_lengths("response_lengths", response_lengths, bsz)
    if bsz and int(r_len.max()) > L:
        bad = torch.nonzero(r_len > L).squeeze(1).tolist()
        raise ValueError(f"rows {bad}: response_lengths {r_len[bad].tolist()} exceed canvas_length {L}")
    if bsz and int((p_len + L).max()) > width:
        bad = torch.nonzero(p_len + L > width).squeeze(1).tolist()
        raise ValueError(
            f"rows {bad}: prompt length + canvas_length exceeds the batch width {width} "
            f"(input_ids must be at least max(prompt_lengths) + canvas_length wide)"
        )
    if generators is not None:
        if len(generators) != bsz or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generators must be None or a list of {bsz} torch.Generator (one per row)")

    src = input_ids.detach().to("cpu", torch.long)
    pos = torch.arange(width)
    in_resp = (pos >= p_len[:, None]) & (pos < (p_len + r_len)[:, None])
    has_slack = ((src == int(slack_token_id)) & in_resp).any(dim=1) if slack_token_id is not None else None
    if has_slack is not None and bool(has_slack.any()):
        raise ValueError(
            f"rows {torch.nonzero(has_slack).squeeze(1).tolist()}: the response already contains the slack token "
            f"{int(slack_token_id)}; responses must be slack-free (they are the CTC targets)"
        )

    clean = src.clone()
    for b in range(bsz):
        P, n = int(p_len[b]), int(r_len[b])
        gen = generators[b] if generators is not None else None
        gaps = draw_slack_gaps(n, L - n, slack_rule, float(slack_prob), gen)
        canvas = torch.full((L,), int(fill_token_id), dtype=torch.long)
        if n:
            token_pos = torch.arange(n) + torch.cumsum(gaps.long(), 0)[:n]
            canvas[token_pos] = src[b, P : P + n]
        slack_gap = torch.nonzero(gaps).squeeze(1)
        if slack_gap.numel():
            canvas[slack_gap + torch.arange(slack_gap.numel())] = int(slack_token_id)
        clean[b, P : P + L] = canvas

    canvas_mask = (pos >= p_len[:, None]) & (pos < (p_len + L)[:, None])
    attention_mask = (pos < (p_len + L)[:, None]).long()
    device = input_ids.device
    return Canvases(clean.to(device), canvas_mask.to(device), attention_mask.to(device))
