"""Block-diffusion training (BD3LM, arXiv 2503.09573): a model with `config.block_size` learns each block from its
noised self and the clean blocks before it.

A block's tokens see, at sampling time, the already decoded (clean) earlier blocks and the block itself, partly
masked. Training shows exactly that to every block at once: the input is the noised sequence x_t followed by the
clean one x_0 (2S positions, rotary positions repeated), under a three-part mask over blocks of real positions:

    x_t block b  sees  x_t block b (bidirectional)  and  x_0 blocks < b
    x_0 block b  sees  x_0 blocks <= b               (x_0 never sees x_t)

so one forward equals one run per block on [x_0 blocks < b, x_t block b] with the model's block-causal mask
(`tests/test_training_block_diffusion.py` checks it). The x_t half's outputs are the predictions; for a next-token
model the first token of a block is predicted from the last clean position of the block before (as in sampling,
where that block is already decoded).
"""

from __future__ import annotations

import torch

from ..generation_mdlm import logits_for_tokens


def block_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) rotary positions counted over real tokens (left padding gets 0), as the model counts them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def block_diffusion_inputs(noised_ids, clean_ids, attention_mask, block_size: int):
    """(input ids (B, 2S), boolean attention mask (B, 1, 2S, 2S), position ids (B, 2S)) of the [x_t; x_0] input."""
    if noised_ids.shape != clean_ids.shape:
        raise ValueError(f"noised_ids {tuple(noised_ids.shape)} and clean_ids {tuple(clean_ids.shape)} differ in shape")
    if attention_mask is None:
        attention_mask = torch.ones_like(noised_ids)
    valid = attention_mask.bool()
    positions = block_positions(attention_mask)
    block = positions // block_size
    query, key = block[:, :, None], block[:, None, :]
    keys = valid[:, None, :]
    noisy_sees_noisy = (query == key) & keys
    noisy_sees_clean = (key < query) & keys
    clean_sees_clean = (key <= query) & keys
    top = torch.cat([noisy_sees_noisy, noisy_sees_clean], dim=2)
    bottom = torch.cat([torch.zeros_like(clean_sees_clean), clean_sees_clean], dim=2)
    mask = torch.cat([top, bottom], dim=1)[:, None]
    return (torch.cat([noised_ids, clean_ids], dim=1), mask, torch.cat([positions, positions], dim=1))


def token_logits(model, noised_ids, clean_ids, attention_mask, config):
    """(B, S, V) the logits predicting each token of `noised_ids`, as `config`'s model is trained and scored: a
    block-diffusion model's from the [x_t; x_0] input, any other's from `noised_ids` (one position earlier for a
    next-token model). All tensors on the model's device; `config` is the model's (a DDP wrapper has none)."""
    block_size = getattr(config, "block_size", None)
    if not block_size:
        return logits_for_tokens(model(input_ids=noised_ids, attention_mask=attention_mask).logits, config)
    ids, mask, positions = block_diffusion_inputs(noised_ids, clean_ids, attention_mask, block_size)
    outputs = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return block_diffusion_predictions(outputs, attention_mask, block_size, getattr(config, "prediction_shift", 0))


def block_diffusion_predictions(logits, attention_mask, block_size: int, prediction_shift: int = 0):
    """(B, S, V) logits predicting each token of x_t from the (B, 2S, V) outputs of the [x_t; x_0] input."""
    length = logits.shape[1] // 2
    noisy, clean = logits[:, :length], logits[:, length:]
    if not prediction_shift:
        return noisy
    # Token i is read from position i - 1: inside its block from x_t, across a block boundary from x_0 (the block
    # before is clean when this one is decoded). A row's first real token reads itself, as Dream's position 0.
    if attention_mask is None:
        attention_mask = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)[:, :length]
    positions = block_positions(attention_mask)
    block = positions // block_size
    crosses = torch.zeros_like(block, dtype=torch.bool)
    crosses[:, 1:] = block[:, 1:] != block[:, :-1]
    previous_noisy = torch.cat([noisy[:, :1], noisy[:, :-1]], dim=1)
    previous_clean = torch.cat([noisy[:, :1], clean[:, :-1]], dim=1)
    predictions = torch.where(crosses[..., None], previous_clean, previous_noisy)
    return torch.where((positions == 0)[..., None], noisy, predictions)  # a row's first token: its own output
