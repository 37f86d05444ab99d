"""Training losses of masked diffusion LMs: masked cross-entropy and slack-CTC.

Notation (per example): the *canvas* is the response region, marked by
``loss_mask``; its positions are taken in order, wherever they are in the row.
``c`` is the clean canvas (it may contain ``<slack>`` tokens), ``z`` the noised
model input, ``y = collapse(c)`` the canvas with every ``<slack>`` deleted (all
other tokens, repeats included, kept).  ``l_i`` is the float32 log-softmax of
the logits at canvas position ``i``.

* Masked CE: ``sum over masked i of -l_i(c_i)``.
* Slack-CTC: ``-log sum over a in A of prod over masked i of exp l_i(a_i)``,
  where ``A`` holds every canvas ``a`` with ``collapse(a) = y`` that agrees
  with ``z`` at every unmasked canvas position.

Both are computed without a second (B, S, V) tensor: the normaliser over the
vocabulary is computed only at masked positions, a cache-sized chunk of rows
at a time, and only the few log-probabilities the loss needs are kept (k + 2
per masked position for slack-CTC, k the most slack in a row).  The backward
pass writes ``grad_output * (softmax - posterior)`` straight into the logits
gradient; for slack-CTC the posteriors come from a scaled forward-backward
pass over the band of slack counts s in [0, k].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..configuration_mdlm import check_token_id
from ..generation_mdlm import values_are_free
from . import lattice_kernels
from .canvas import NoiseSchedule

__all__ = ["masked_cross_entropy", "slack_ctc_loss", "diffusion_loss", "DiffusionLoss"]

# Rows x vocabulary entries handled at once by the chunked log-sum-exp. On the CPU the
# float32 temporaries stay around 1 MB (cache-sized) whatever the batch and vocabulary.
# An accelerator needs big chunks instead: each chunk costs a few kernel launches, and
# CPU-sized chunks of 2 rows at V = 126464 made the loss 30x slower than torch's
# cross-entropy on an H200; 2^24 elements (64 MB in float32) keep it memory-bound.
# A chunk is never smaller than one row.
_CHUNK_ELEMENTS = {"cpu": 1 << 18}
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 24

# Finite stand-in for log(0) in the autograd-through-the-loop variant: with a
# true -inf, logaddexp(-inf, -inf) back-propagates NaN.
_NEG = -1e30

# How a per-example loss is normalised (docs/objective.md §5); the one list, also the trainer's choices.
NORMALIZATIONS = ("canvas", "masked", "batch_tokens")
_COLLAPSES = ("slack", "ctc")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (tests); every other float dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- emissions


class _SelectedLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits[b_m, p_m])[tokens[m, j]]`` for M selected positions.

    Forward: the float32 log-softmax of a chunk of selected rows at a time
    (cache-sized), from which only the requested entries are kept.  Backward:
    for each selected row ``scatter(grad) - sum(grad) * softmax``, recomputed a
    chunk at a time and written into the (B, S, V) logits gradient, whose other
    rows are zero.  Nothing of size (B, S, V) is kept between forward and
    backward except ``logits`` itself, and nothing but the gradient is made in
    the backward.
    """

    @staticmethod
    def forward(ctx, logits, batch_idx, pos_idx, tokens):
        cdt = _compute_dtype(logits.dtype)
        out = torch.empty(tokens.shape, dtype=cdt, device=logits.device)
        for sl in _row_chunks(batch_idx.numel(), logits.shape[-1], logits.device):
            rows = logits[batch_idx[sl], pos_idx[sl]].to(cdt)
            out[sl] = torch.log_softmax(rows, dim=-1).gather(1, tokens[sl])
        ctx.save_for_backward(logits, batch_idx, pos_idx, tokens)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, batch_idx, pos_idx, tokens = ctx.saved_tensors
        batch, seq, vocab = logits.shape
        cdt = _compute_dtype(logits.dtype)
        # Zero only the rows that are not selected; the selected ones are fully
        # overwritten below (saves a memset of the selected rows).
        grad = torch.empty((batch, seq, vocab), dtype=logits.dtype, device=logits.device)
        grad_rows = grad.view(batch * seq, vocab)
        flat_idx = batch_idx * seq + pos_idx
        untouched = torch.ones(batch * seq, dtype=torch.bool, device=logits.device)
        untouched[flat_idx] = False
        grad_rows.masked_fill_(untouched[:, None], 0)  # (no nonzero(): it would wait for the device)
        grad_out = grad_out.to(cdt)
        neg_total = -grad_out.sum(-1, keepdim=True)
        for sl in _row_chunks(batch_idx.numel(), vocab, logits.device):
            rows = torch.softmax(logits[batch_idx[sl], pos_idx[sl]].to(cdt), dim=-1)
            rows.mul_(neg_total[sl]).scatter_add_(1, tokens[sl], grad_out[sl])
            grad_rows.index_copy_(0, flat_idx[sl], rows.to(grad.dtype))
        return grad, None, None, None


def _row_chunks(num_rows, vocab, device):
    """Slices over the selected rows, about ``_CHUNK_ELEMENTS`` logits each (at least one row)."""
    elements = _CHUNK_ELEMENTS.get(torch.device(device).type, _ACCELERATOR_CHUNK_ELEMENTS)
    step = max(1, elements // max(1, vocab))
    return [slice(start, start + step) for start in range(0, num_rows, step)]


def _selected_log_probs(logits, batch_idx, pos_idx, tokens) -> torch.Tensor:
    """(M, J) log-probabilities of ``tokens`` at the M selected (batch, position) pairs.

    The (batch, position) pairs must be distinct (the backward writes each row once).
    """
    return _SelectedLogSoftmax.apply(logits, batch_idx.long(), pos_idx.long(), tokens.long())


# ----------------------------------------------------------------------------- validation


def _check_ids(name, ids, shape, device):
    if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != tuple(shape):
        raise ValueError(
            f"{name} must be a tensor of shape {tuple(shape)} (batch, seq) matching logits, "
            f"got {tuple(getattr(ids, 'shape', ())) if isinstance(ids, torch.Tensor) else type(ids).__name__}"
        )
    if torch.is_floating_point(ids) or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but logits are on {device}")


def _check_bool(name, mask, shape, device):
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must be a bool tensor of shape {tuple(shape)}, "
            f"got {tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but logits are on {device}")


def _check_logits(logits):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(
            "logits must be a (batch, seq, vocab) tensor, got "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")


# ----------------------------------------------------------------------------- masked CE


# The masked-diffusion CE on the anchor alignment (docs/objective.md §3; MDLM arXiv 2406.07524, LLaDA 2502.09992).
def masked_cross_entropy(logits: torch.Tensor, clean_ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-example ``sum over masked positions of -log p(clean token)``.

    Args:
        logits: (B, S, V), any float dtype.
        clean_ids: (B, S) target token ids.
        masked: (B, S) bool, the positions that enter the loss.

    Returns:
        (B,) float32 (float64 for float64 logits).  The log-softmax is computed
        only at masked positions, in float32, a few rows at a time.
    """
    _check_logits(logits)
    shape = logits.shape[:2]
    _check_ids("clean_ids", clean_ids, shape, logits.device)
    _check_bool("masked", masked, shape, logits.device)
    batch_idx, pos_idx = masked.nonzero(as_tuple=True)
    tokens = clean_ids[batch_idx, pos_idx][:, None]
    if values_are_free(tokens) and tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= logits.shape[-1]):
        raise ValueError("clean_ids at masked positions contain ids outside the logits vocabulary")
    log_probs = _selected_log_probs(logits, batch_idx, pos_idx, tokens)[:, 0]
    out = torch.zeros(shape[0], dtype=log_probs.dtype, device=logits.device)
    return out.index_add(0, batch_idx, -log_probs)


# ----------------------------------------------------------------------------- slack-CTC lattice


class _Canvas:
    """Canvas positions of each row gathered in order and padded to the batch maximum.

    `source` (rows, columns): where each lattice row and its columns lie in the logits, when the lattices are pieces
    of the batch's rows (blocks); by default lattice row b is logits row b at the gathered positions."""

    def __init__(self, input_ids, clean_ids, loss_mask, mask_id, slack_id, source=None):
        batch = loss_mask.shape[0]
        device = loss_mask.device
        self.lengths = loss_mask.sum(1)  # L_b
        self.max_len = int(self.lengths.max()) if batch else 0
        # A stable sort puts the canvas positions first, in their order.
        self.positions = torch.sort(~loss_mask, dim=1, stable=True).indices[:, : self.max_len]
        steps = torch.arange(self.max_len, device=device)
        self.valid = steps[None, :] < self.lengths[:, None]
        self.clean = clean_ids.gather(1, self.positions)
        self.noised = input_ids.gather(1, self.positions)
        self.is_slack = self.valid & (self.clean == slack_id)
        self.num_slack = self.is_slack.sum(1)  # k_b
        self.max_slack = int(self.num_slack.max()) if batch else 0
        self.num_targets = self.lengths - self.num_slack  # U_b
        self.max_targets = int(self.num_targets.max()) if batch else 0
        is_target = self.valid & ~self.is_slack
        width = max(self.max_targets, 1)  # keep one (unused) column for empty targets
        target_order = torch.sort(~is_target, dim=1, stable=True).indices[:, :width]
        self.targets = self.clean.gather(1, target_order)  # y, garbage beyond U_b
        self.masked = self.valid & (self.noised == mask_id)
        if source is None:
            self.logit_rows, self.logit_positions = torch.arange(batch, device=device), self.positions
        else:
            self.logit_rows, self.logit_positions = source[0], source[1].gather(1, self.positions)

    def selected_log_probs(self, logits, rows, cols, candidates):
        """Log-probabilities of `candidates` (M, J) at the lattice cells (rows, cols)."""
        return _selected_log_probs(logits, self.logit_rows[rows], self.logit_positions[rows, cols], candidates)


def _band_emissions(canvas: _Canvas, logits, slack_id):
    """Emissions of the banded slack lattice, both (B, L, K+1).

    State ``s`` = number of slack used so far.  ``e_target[b, i, s]``: log-weight
    of canvas position ``i`` emitting the next target ``y[i - s]`` (staying in
    state ``s``); ``e_slack[b, i, s]``: log-weight of position ``i`` being
    ``<slack>``, entering state ``s`` from ``s - 1``.  Masked positions get
    log-probabilities, pinned positions 0 or -inf (agrees with the input or
    not), padding after the canvas end passes the final state through.
    Transitions into states that can no longer reach the end (too many or too
    few slack for the positions left, or more targets than y has) are -inf, so
    no probability mass is spent on them; this also keeps the per-step
    normalisation of the recursion meaningful.

    Also returns the selected log-probabilities (M, K+2) and the (row, step)
    indices of the masked positions, which the anchor CE reuses.
    """
    batch, steps = canvas.valid.shape
    width = canvas.max_slack + 1
    device = logits.device
    cdt = _compute_dtype(logits.dtype)
    step_idx = torch.arange(steps, device=device)
    state_idx = torch.arange(width, device=device)
    target_idx = step_idx[:, None] - state_idx[None, :]  # (L, K+1): target emitted at (i, s)
    exists = (target_idx >= 0)[None] & (target_idx[None] < canvas.num_targets[:, None, None])
    gather_idx = target_idx.clamp(0, canvas.targets.shape[1] - 1).reshape(1, -1).expand(batch, -1)
    target_tokens = canvas.targets.gather(1, gather_idx).view(batch, steps, width)

    neg_inf = torch.tensor(float("-inf"), dtype=cdt, device=device)
    zero = torch.zeros((), dtype=cdt, device=device)
    agrees = exists & (target_tokens == canvas.noised[..., None])
    e_target = torch.where(canvas.valid[..., None], torch.where(agrees, zero, neg_inf), zero)
    e_slack = torch.where(canvas.valid & (canvas.noised == slack_id), zero, neg_inf)

    rows, cols = canvas.masked.nonzero(as_tuple=True)
    slack_col = torch.full((rows.numel(), 1), slack_id, dtype=target_tokens.dtype, device=device)
    candidates = torch.cat([target_tokens[rows, cols], slack_col], dim=1)  # (M, K+2)
    log_probs = canvas.selected_log_probs(logits, rows, cols, candidates)
    e_target = e_target.index_put((rows, cols), torch.where(exists[rows, cols], log_probs[:, :width], neg_inf))
    e_slack = e_slack.index_put((rows, cols), log_probs[:, width])

    # State s after position i is alive iff the rest of the canvas can still
    # place the remaining k - s slack and the targets emitted fit in y.
    consumed = torch.minimum(step_idx[None, :] + 1, canvas.lengths[:, None])  # (B, L)
    remaining = canvas.lengths[:, None] - consumed
    k = canvas.num_slack[:, None, None]
    s = state_idx[None, None, :]
    emitted = consumed[..., None] - s
    alive = (s <= k) & (s >= k - remaining[..., None]) & (emitted >= 0)
    alive &= emitted <= canvas.num_targets[:, None, None]
    e_target = torch.where(alive, e_target, neg_inf)
    e_slack = torch.where(alive & (s >= 1), e_slack[..., None], neg_inf)
    return e_target, e_slack, log_probs, rows, cols


# The slack-CTC forward recursion over s = slacks used so far (docs/objective.md §4; arXiv 2601.22947's idea,
# CTC's alpha recursion of Graves et al. 2006 restricted to a band of k + 1 states).
def _forward_alpha(e_target, e_slack):
    """Scaled forward pass.

    Returns ``alpha`` (B, L+1, K+2) and ``log_scale`` (L+1, B, 1).  Column 0 of
    ``alpha`` is a permanent -inf ("s = -1") so a step is a few tensor ops;
    ``alpha[:, i, 1 + s]`` is the log-weight of all prefixes of ``i`` positions
    using ``s`` slack, minus ``log_scale[1..i]`` summed.  Each step is shifted
    so its largest state is 0: without this the log-weights grow to the size
    of the whole loss (thousands of nats) and float32 posteriors computed as
    ``exp(alpha + beta - log Z)`` lose about three digits.
    """
    batch, steps, width = e_target.shape
    alpha = e_target.new_full((batch, steps + 1, width + 1), float("-inf"))
    alpha[:, 0, 1] = 0.0
    log_scale = e_target.new_zeros((steps + 1, batch, 1))
    if lattice_kernels.usable(e_target):  # one kernel instead of several launches per position
        lattice_kernels.fill_alpha(e_target, e_slack, alpha, log_scale)
        return alpha, log_scale
    for i in range(steps):
        prev, cur = alpha[:, i], alpha[:, i + 1, 1:]
        torch.logaddexp(prev[:, 1:] + e_target[:, i], prev[:, :-1] + e_slack[:, i], out=cur)
        scale = torch.amax(cur, dim=1, keepdim=True, out=log_scale[i + 1])
        cur.sub_(scale.nan_to_num_(nan=0.0, neginf=0.0))  # an all -inf row stays -inf
    return alpha, log_scale


# The matching backward recursion: posteriors of each alignment state give the analytic gradient (§4).
def _backward_beta(e_target, e_slack, num_slack, log_scale):
    """Scaled backward pass with the forward's scales.

    ``beta[:, i, s]`` (B, L+1, K+2; last column a permanent -inf): log-weight of
    all completions from (i positions, s slack) to the end, minus
    ``log_scale[i+1..L]`` summed.
    """
    batch, steps, width = e_target.shape
    beta = e_target.new_full((batch, steps + 1, width + 1), float("-inf"))
    beta[torch.arange(batch, device=beta.device), steps, num_slack] = 0.0
    if lattice_kernels.usable(e_target):
        lattice_kernels.fill_beta(e_target, e_slack, beta, log_scale.contiguous())
        return beta
    e_slack_next = torch.cat([e_slack[..., 1:], torch.full_like(e_slack[..., :1], float("-inf"))], dim=-1)
    for i in range(steps - 1, -1, -1):
        nxt, cur = beta[:, i + 1], beta[:, i, :-1]
        torch.logaddexp(e_target[:, i] + nxt[:, :-1], e_slack_next[:, i] + nxt[:, 1:], out=cur)
        cur.sub_(log_scale[i + 1])
    return beta


class InfeasibleAlignment(ValueError):
    """No alignment of the target agrees with the unmasked canvas tokens of `examples` (indices in the batch)."""

    def __init__(self, what: str, examples):
        self.what, self.examples = what, sorted(set(examples))
        label = "example" if len(self.examples) == 1 else "examples"
        super().__init__(f"{what}: infeasible {label} {', '.join(map(str, self.examples))}: no alignment of the target "
                         "agrees with the unmasked canvas tokens (input_ids inconsistent with clean_ids?)")


def _raise_infeasible(log_z, what="slack-CTC"):
    if not values_are_free(log_z):
        torch._assert_async((torch.isfinite(log_z) | torch.isnan(log_z)).all(),
                            f"{what}: an example has no alignment that agrees with its unmasked canvas tokens")
        return
    bad = (~torch.isfinite(log_z) & ~torch.isnan(log_z)).nonzero().flatten().tolist()
    if bad:
        raise InfeasibleAlignment(what, bad)


def _blame_the_model(error, canvas, logits, slack_id):
    """On an infeasible lattice (error path only): when every example is feasible once the model's log-probabilities
    are replaced by finite ones, the ids are consistent and the model's -inf log-probabilities are the cause; say
    so instead of blaming the ids."""
    with torch.no_grad():
        uniform = torch.zeros((), dtype=logits.dtype, device=logits.device).expand(logits.shape)
        e_target, e_slack, *_ = _band_emissions(canvas, uniform, slack_id)
        alpha, log_scale = _forward_alpha(e_target, e_slack)
        rows = torch.arange(alpha.shape[0], device=alpha.device)
        log_z = alpha[rows, -1, canvas.num_slack + 1] + log_scale[:, :, 0].double().sum(0).to(alpha.dtype)
    if bool(torch.isfinite(log_z).all()):
        raise ValueError(
            f"{str(error).split(':')[0]}: the model gives log-probability -inf to tokens the target needs at masked "
            "positions, so no alignment has a finite likelihood (logits of -inf at a target token, e.g. a token "
            "suppressed with a -inf bias); the ids are consistent"
        ) from None


class _BandedSlackCTC(torch.autograd.Function):
    """-log Z of the banded lattice with an analytic (forward-backward) gradient.

    The gradient of ``-log Z`` wrt an emission is minus the posterior
    probability that the alignments use it; with the scaled passes it is
    ``exp(alpha_i + e_i + beta_{i+1} - log_scale_{i+1} - alpha_L(k))``, every
    term of order one.
    """

    @staticmethod
    def forward(ctx, e_target, e_slack, num_slack):
        alpha, log_scale = _forward_alpha(e_target, e_slack)
        rows = torch.arange(alpha.shape[0], device=alpha.device)
        end = alpha[rows, -1, num_slack + 1]
        log_z = end + log_scale[:, :, 0].to(torch.float64).sum(0).to(end.dtype)
        _raise_infeasible(log_z)
        ctx.save_for_backward(e_target, e_slack, num_slack, alpha, log_scale, end)
        return -log_z

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: the posteriors below are not differentiated
            raise RuntimeError("slack-CTC has no second derivatives (its gradient is computed from forward-backward "
                               "posteriors): differentiate it once, without create_graph=True")
        e_target, e_slack, num_slack, alpha, log_scale, end = ctx.saved_tensors
        beta = _backward_beta(e_target, e_slack, num_slack, log_scale)
        # (B, L, K+1) pieces: state s before position i, s - 1 before it, s after it.
        after = beta[:, 1:, :-1] - log_scale[1:].transpose(0, 1) - end[:, None, None]
        post_target = torch.exp(alpha[:, :-1, 1:] + e_target + after)
        post_slack = torch.exp(alpha[:, :-1, :-1] + e_slack + after)
        scale = -grad_out.to(alpha.dtype)[:, None, None]
        return scale * post_target, scale * post_slack, None


def _banded_ctc_autograd(e_target, e_slack, num_slack):
    """Same value as :class:`_BandedSlackCTC`, differentiated by autograd through the loop."""
    batch, steps, width = e_target.shape
    e_target = e_target.clamp(min=_NEG)
    e_slack = e_slack.clamp(min=_NEG)
    pad = e_target.new_full((batch, 1), _NEG)
    # prev[:, 1 + s] = log-weight of state s; column 0 stands for s = -1.
    prev = torch.cat([pad, torch.zeros_like(pad), e_target.new_full((batch, width - 1), _NEG)], dim=1)
    for i in range(steps):
        cur = torch.logaddexp(prev[:, 1:] + e_target[:, i], prev[:, :-1] + e_slack[:, i])
        prev = torch.cat([pad, cur], dim=1)
    log_z = prev.gather(1, num_slack[:, None] + 1)[:, 0]
    _raise_infeasible(torch.where(log_z < 0.5 * _NEG, float("-inf"), log_z.detach()))
    return -log_z


# ----------------------------------------------------------------------------- standard-CTC ablation


# The collapse="ctc" ablation: standard CTC, repeats merged (Graves et al. 2006; docs/objective.md §4).
def _standard_ctc(canvas: _Canvas, logits, slack_id):
    """Standard CTC (merge repeats, blank = ``<slack>``) on the same canvas, with pins.

    Extended labels with a virtual start state in front: state 0 = nothing
    emitted yet, state 2u+1 = blank number u, state 2u+2 = target y[u].
    The labels are the standard collapse of the clean canvas, ``y = B(c)``
    (runs merged, then blanks deleted), so the anchor is always a path: a
    canvas ``1 0 0`` has the labels ``1 0``, and ``1 0 <s> 0`` has ``1 0 0``.
    Autograd through the loop (an ablation, not a hot path).
    """
    batch, steps = canvas.valid.shape
    device = logits.device
    cdt = _compute_dtype(logits.dtype)
    # y = B(c): keep a canvas token when it is not a blank and differs from the token before it.
    previous = torch.cat([torch.full_like(canvas.clean[:, :1], slack_id), canvas.clean[:, :-1]], dim=1)
    keep = canvas.valid & (canvas.clean != slack_id) & (canvas.clean != previous)  # valid positions come first
    num_targets = keep.sum(1)
    max_targets = int(num_targets.max()) if batch else 0
    order = torch.sort(~keep, dim=1, stable=True).indices[:, : max(max_targets, 1)]
    targets = canvas.clean.gather(1, order)  # garbage beyond num_targets
    num_y = targets.shape[1]
    states = 2 * max_targets + 2
    # Token emitted by each state (state 0 emits nothing; its column is a dummy).
    state_tokens = torch.full((batch, states), slack_id, dtype=targets.dtype, device=device)
    if max_targets:
        state_tokens[:, 2::2] = targets[:, :max_targets]
    # Skip transition s-2 -> s: into the first target from the start, or between different targets.
    can_skip = torch.zeros(batch, states, dtype=torch.bool, device=device)
    if max_targets:
        can_skip[:, 2] = True
        if max_targets > 1:
            can_skip[:, 4::2] = targets[:, 1:max_targets] != targets[:, : max_targets - 1]
    state_ok = torch.arange(states, device=device)[None] <= 2 * num_targets[:, None] + 1
    state_ok[:, 0] = False

    # Emissions (B, L, states): pinned 0/-inf, masked from the distinct tokens (targets + slack).
    agrees = state_tokens[:, None, :] == canvas.noised[:, :, None]
    emis = torch.where(agrees & state_ok[:, None, :], 0.0, _NEG).to(cdt)
    rows, cols = canvas.masked.nonzero(as_tuple=True)
    slack_col = torch.full((rows.numel(), 1), slack_id, dtype=targets.dtype, device=device)
    candidates = torch.cat([targets[rows], slack_col], dim=1)  # (M, U+1)
    log_probs = canvas.selected_log_probs(logits, rows, cols, candidates)
    # Map each state to its candidate column: blanks -> last column, target u -> column u.
    col_of_state = torch.full((states,), num_y, dtype=torch.long, device=device)
    col_of_state[2::2] = torch.arange(max_targets, device=device)
    masked_emis = log_probs[:, col_of_state].clamp(min=_NEG)
    masked_emis = torch.where(state_ok[rows], masked_emis, torch.full_like(masked_emis, _NEG))
    emis = emis.index_put((rows, cols), masked_emis)

    alpha = torch.full((batch, states), _NEG, dtype=cdt, device=device)
    alpha = torch.cat([torch.zeros_like(alpha[:, :1]), alpha[:, 1:]], dim=1)
    neg_col = torch.full((batch, 1), _NEG, dtype=cdt, device=device)
    for i in range(steps):
        from_prev = torch.cat([neg_col, alpha[:, :-1]], dim=1)
        from_skip = torch.cat([neg_col, neg_col, alpha[:, :-2]], dim=1)
        from_skip = torch.where(can_skip, from_skip, torch.full_like(from_skip, _NEG))
        incoming = torch.logaddexp(torch.logaddexp(alpha, from_prev), from_skip) + emis[:, i]
        incoming = torch.cat([neg_col, incoming[:, 1:]], dim=1)  # the start state cannot be re-entered
        alpha = torch.where(canvas.valid[:, i, None], incoming, alpha)
    last = 2 * num_targets + 1
    end_blank = alpha.gather(1, last[:, None])[:, 0]
    end_target = alpha.gather(1, (last - 1)[:, None])[:, 0]
    log_z = torch.logaddexp(end_blank, end_target)
    _raise_infeasible(torch.where(log_z < 0.5 * _NEG, float("-inf"), log_z.detach()), what="standard CTC")
    return -log_z


# ----------------------------------------------------------------------------- public API


def _slack_ctc_and_ce(logits, input_ids, clean_ids, mask_id, slack_id, loss_mask, collapse, backward, want_ce,
                      source=None):
    canvas = _Canvas(input_ids, clean_ids, loss_mask, mask_id, slack_id, source)
    if collapse == "ctc":
        return _standard_ctc(canvas, logits, slack_id), None
    e_target, e_slack, log_probs, rows, cols = _band_emissions(canvas, logits, slack_id)
    if backward not in ("analytic", "autograd"):
        raise ValueError(f"unknown backward {backward!r}; use 'analytic' or 'autograd'")
    try:
        if backward == "analytic":
            ctc = _BandedSlackCTC.apply(e_target, e_slack, canvas.num_slack)
        else:
            ctc = _banded_ctc_autograd(e_target, e_slack, canvas.num_slack)
    except ValueError as error:
        _blame_the_model(error, canvas, logits, slack_id)
        raise
    ce = None
    if want_ce:
        # The anchor token of a masked position is one of its candidates: slack
        # (last column) or the target y[i - s] with s = slack before it in c.
        slack_before = torch.cumsum(canvas.is_slack.long(), dim=1) - canvas.is_slack.long()
        anchor_col = torch.where(canvas.is_slack, canvas.max_slack + 1, slack_before)[rows, cols]
        anchor_lp = log_probs.gather(1, anchor_col[:, None])[:, 0]
        ce = torch.zeros(canvas.valid.shape[0], dtype=anchor_lp.dtype, device=logits.device)
        ce = ce.index_add(0, rows, -anchor_lp)
    return ctc, ce


def _per_block(logits, input_ids, clean_ids, loss_mask, blocks, loss_fn):
    """`loss_fn(input_ids, clean_ids, loss_mask, source)` run on every (example, block) as an example of its own
    (the block's canvas positions gathered in order; `source` says where they lie in `logits`, which is never
    gathered), the results summed per example: a lattice per block."""
    _check_ids("blocks", blocks, logits.shape[:2], logits.device)
    rows, columns = loss_mask.nonzero(as_tuple=True)  # row-major: each row's canvas positions in order
    if rows.numel() == 0:  # nothing to score: zero, still differentiable (a backward must not fail)
        zero = logits[:, 0, 0].to(_compute_dtype(logits.dtype)) * 0
        return zero, zero
    span = int(blocks.max()) - int(blocks.min()) + 1
    group_key = rows * span + (blocks[rows, columns] - blocks.min())
    if values_are_free(group_key) and bool((group_key.diff() < 0).any()):
        raise ValueError("blocks must not decrease along a row's canvas positions")
    groups, group_of = torch.unique(group_key, return_inverse=True)
    sizes = torch.bincount(group_of, minlength=len(groups))
    slot = torch.arange(len(rows), device=rows.device) - (sizes.cumsum(0) - sizes)[group_of]  # rank in the group
    width = int(sizes.max())
    index = torch.zeros(len(groups), width, dtype=torch.long, device=rows.device)
    index[group_of, slot] = columns
    valid = torch.zeros(len(groups), width, dtype=torch.bool, device=rows.device)
    valid[group_of, slot] = True
    owner = groups // span  # the example of each block

    def take(tensor):
        return tensor[owner[:, None], index]

    def per_example(values):
        return None if values is None else values.new_zeros(logits.shape[0]).index_add(0, owner, values)

    try:
        ctc, ce = loss_fn(take(input_ids), take(clean_ids), valid, (owner, index))
    except InfeasibleAlignment as error:  # name the examples, not the blocks
        raise InfeasibleAlignment(error.what, owner[error.examples].tolist()) from None
    return per_example(ctc), per_example(ce)


def slack_ctc_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    *,
    mask_token_id: int,
    slack_token_id: int,
    loss_mask: torch.Tensor,
    collapse: str = "slack",
    _backward: str = "analytic",
) -> torch.Tensor:
    """Per-example slack-CTC negative log-likelihood (unweighted), shape (B,).

    Args:
        logits: (B, S, V) model outputs, any float dtype (math in float32;
            float64 logits are computed in float64).
        input_ids: (B, S) noised model input ``z``; a canvas position is
            masked where it holds ``mask_token_id``, otherwise it pins the
            alignment to its token.
        clean_ids: (B, S) clean sequence; on the canvas it is the anchor ``c``.
        mask_token_id, slack_token_id: ids of ``[MASK]`` and ``<slack>``.
        loss_mask: (B, S) bool, True on canvas positions (prompt and padding
            False).  The canvas need not be contiguous; its positions are
            taken in order.
        collapse: ``"slack"`` (delete ``<slack>``, keep repeats: the project's
            objective) or ``"ctc"`` (ablation: standard CTC that also merges
            repeats, blank = ``<slack>``; its labels are the standard collapse
            of the clean canvas, so adjacent repeats of the canvas merge into
            one label and a repeat kept as a label needs a slack between).
        _backward: ``"analytic"`` (default: scaled forward-backward posteriors
            in a custom autograd Function; faster, and more accurate in
            float32) or ``"autograd"`` (autograd through the recursion; kept
            for testing and for ``bench/bench_losses.py``).

    Returns:
        (B,) float32 tensor (float64 for float64 logits), ``-log`` of the total
        probability of the alignments.  An example with no valid alignment
        raises ValueError naming its index.

    Cost: a banded recursion over ``s`` in [0, k] (k = most slack in a row of
    the batch), O(L (k + 1)) per example, plus one float32 log-softmax over the
    vocabulary per masked position (a cache-sized chunk of positions at a
    time) of which k + 2 entries are kept.  Extra memory beyond the logits and
    their gradient is a few MB plus O(B L k).
    """
    _check_logits(logits)
    shape = logits.shape[:2]
    vocab = logits.shape[-1]
    mask_id = check_token_id("mask_token_id", mask_token_id, vocab, required=True, owner="")
    slack_id = check_token_id("slack_token_id", slack_token_id, vocab, required=True, owner="")
    if mask_id == slack_id:
        raise ValueError("mask_token_id and slack_token_id must differ")
    _check_ids("input_ids", input_ids, shape, logits.device)
    _check_ids("clean_ids", clean_ids, shape, logits.device)
    _check_bool("loss_mask", loss_mask, shape, logits.device)
    if collapse not in _COLLAPSES:
        raise ValueError(f"unknown collapse {collapse!r}; choose one of {_COLLAPSES}")
    _check_canvas_ids(clean_ids, loss_mask, vocab)
    ctc, _ = _slack_ctc_and_ce(
        logits, input_ids, clean_ids, mask_id, slack_id, loss_mask, collapse, _backward, want_ce=False
    )
    return ctc


def _check_canvas_ids(clean_ids, loss_mask, vocab):
    if not values_are_free(clean_ids):
        return
    canvas_ids = clean_ids[loss_mask]
    if canvas_ids.numel() and (int(canvas_ids.min()) < 0 or int(canvas_ids.max()) >= vocab):
        raise ValueError("clean_ids on the canvas contain ids outside the logits vocabulary")


@dataclass
class DiffusionLoss:
    """Per-example pieces of the diffusion training loss, all shape (B,).

    ``per_example = weight * (ce_weight * ce + ctc_weight * ctc) / normalizer``;
    ``ce`` and ``ctc`` are the raw sums (unweighted, unnormalised) for logging,
    ``ctc`` is None when it was not computed (``ctc_weight == 0``).
    """

    per_example: torch.Tensor
    ce: torch.Tensor
    ctc: Optional[torch.Tensor]
    weight: torch.Tensor
    normalizer: torch.Tensor


# w(t) (CE + CTC) / N per example: the ELBO weight and the normalisations of docs/objective.md §5.
def diffusion_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    *,
    masked: torch.Tensor,
    loss_mask: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    mask_token_id: Optional[int],
    slack_token_id: Optional[int],
    ce_weight: float = 1.0,
    ctc_weight: float = 1.0,
    normalization: str = "canvas",
    collapse: str = "slack",
    blocks: Optional[torch.Tensor] = None,
) -> DiffusionLoss:
    """The MDLM SFT loss, optionally with slack-CTC, per example.

    ``per_example[b] = w(t_b) * (ce_weight * CE_b + ctc_weight * CTC_b) / N_b``
    with ``N_b`` chosen by ``normalization``:

    * ``"canvas"`` (default): number of canvas positions of the example, LLaDA's
      per-answer-length normalisation; it keeps long and short answers on one
      scale without depending on how many tokens the noise happened to mask;
    * ``"masked"``: number of masked positions (at least 1);
    * ``"batch_tokens"``: 1; the caller divides the batch sum by its response token count.

    The caller averages or sums ``per_example`` over the global batch, which
    keeps gradient accumulation and multi-process training exact.  With
    ``ctc_weight == 0`` the CTC is skipped and ``ctc`` is None (``mask_token_id``
    and ``slack_token_id`` may then be None).  When both are computed the CE
    reuses the CTC's log-sum-exp and gradient buffer.

    ``blocks`` (B, S) integer block index of every position (block diffusion):
    the slack-CTC then runs per block, each block's targets (the non-slack
    tokens of its clean canvas) aligned within that block's canvas positions,
    and an example's CTC is the sum over its blocks (docs/objective.md §4).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
    for name, value in (("ce_weight", ce_weight), ("ctc_weight", ctc_weight)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if ce_weight == 0 and ctc_weight == 0:
        raise ValueError("ce_weight and ctc_weight are both 0: the loss would be 0 (nothing to learn)")
    _check_logits(logits)
    shape = logits.shape[:2]
    vocab = logits.shape[-1]
    _check_ids("input_ids", input_ids, shape, logits.device)
    _check_ids("clean_ids", clean_ids, shape, logits.device)
    _check_bool("masked", masked, shape, logits.device)
    _check_bool("loss_mask", loss_mask, shape, logits.device)
    if values_are_free(masked) and bool((masked & ~loss_mask).any()):
        raise ValueError("masked marks positions outside loss_mask")
    t = torch.as_tensor(t, device=logits.device)
    if t.dim() == 0:
        t = t.expand(shape[0])
    if tuple(t.shape) != (shape[0],):
        raise ValueError(f"t must have shape ({shape[0]},), got {tuple(t.shape)}")
    if values_are_free(t) and not bool(((t > 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in (0, 1] (masking times), got {t.tolist()}")

    ctc = None
    if ctc_weight != 0:
        mask_id = check_token_id("mask_token_id", mask_token_id, vocab, required=True, owner="")
        slack_id = check_token_id("slack_token_id", slack_token_id, vocab, required=True, owner="")
        if mask_id == slack_id:
            raise ValueError("mask_token_id and slack_token_id must differ")
        if values_are_free(masked) and not torch.equal(masked, loss_mask & (input_ids == mask_id)):
            raise ValueError("masked must equal loss_mask & (input_ids == mask_token_id)")
        if collapse not in _COLLAPSES:
            raise ValueError(f"unknown collapse {collapse!r}; choose one of {_COLLAPSES}")
        _check_canvas_ids(clean_ids, loss_mask, vocab)
        if blocks is None:
            ctc, ce = _slack_ctc_and_ce(
                logits, input_ids, clean_ids, mask_id, slack_id, loss_mask, collapse, "analytic",
                want_ce=collapse == "slack",
            )
        else:
            ctc, ce = _per_block(logits, input_ids, clean_ids, loss_mask, blocks, lambda ids, clean, mask, source:
                                 _slack_ctc_and_ce(logits, ids, clean, mask_id, slack_id, mask, collapse, "analytic",
                                                   want_ce=collapse == "slack", source=source))
        if ce is None:
            ce = masked_cross_entropy(logits, clean_ids, masked)
    else:
        ce = masked_cross_entropy(logits, clean_ids, masked)

    if ce_weight != 0 and values_are_free(ce) and not bool(torch.isfinite(ce).all()):
        bad = (~torch.isfinite(ce)).nonzero().flatten().tolist()
        raise ValueError(f"masked-diffusion CE is not finite for example(s) {bad}: the model gives log-probability "
                         "-inf to a clean token at a masked position (a -inf logit, e.g. a suppressed token), or NaN "
                         "logits")
    cdt = ce.dtype
    weight = schedule.weight(t).to(cdt)
    if normalization == "canvas":
        normalizer = loss_mask.sum(1).clamp(min=1).to(cdt)
    elif normalization == "masked":
        normalizer = masked.sum(1).clamp(min=1).to(cdt)
    else:
        normalizer = torch.ones(shape[0], dtype=cdt, device=logits.device)
    # ce_weight 0: the CE stays out (0 * inf would be NaN) but in the graph, so that a backward always works
    total = ce_weight * ce if ce_weight != 0 else torch.where(torch.isfinite(ce), ce, 0.0) * 0
    if ctc is not None:
        total = total + ctc_weight * ctc
    return DiffusionLoss(
        per_example=weight * total / normalizer, ce=ce, ctc=ctc, weight=weight, normalizer=normalizer
    )
