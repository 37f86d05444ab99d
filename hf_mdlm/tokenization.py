"""Special tokens of masked diffusion training: ``[MASK]`` and ``<slack>``.

:func:`add_diffusion_tokens` registers the two tokens with a tokenizer and, given a model, grows its
embedding matrix (and untied output layer) to exactly ``len(tokenizer)`` rows, initialising every new
row to the mean of the rows of the tokens that already existed. :func:`diffusion_token_ids` reads
back the four ids the trainer and the sampler need, with an error that says how to fix a gap.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

# The one definition of the two token strings of the project (docs/objective.md §1, §4).
MASK_TOKEN = "[MASK]"
SLACK_TOKEN = "<slack>"

__all__ = ["MASK_TOKEN", "SLACK_TOKEN", "add_diffusion_tokens", "diffusion_token_ids"]


def _special_token_strings(tokenizer) -> set[str]:
    return {str(t) for t in tokenizer.all_special_tokens}


def _extra_special_tokens(tokenizer) -> list[str]:
    # transformers 5 names them `extra_special_tokens` (4.x: `additional_special_tokens`).
    extra = getattr(tokenizer, "extra_special_tokens", None)
    if extra is None:
        extra = getattr(tokenizer, "additional_special_tokens", None) or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    return [str(t) for t in extra]


def _slack_id(tokenizer, slack_token: str) -> int | None:
    """Id of ``slack_token`` if the tokenizer knows it as a special token, else None."""
    if slack_token not in _special_token_strings(tokenizer) and slack_token not in _extra_special_tokens(tokenizer):
        return None
    tid = tokenizer.convert_tokens_to_ids(slack_token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        return None
    return int(tid)


def _config_id(config, name: str) -> int | None:
    if config is None:
        return None
    value = getattr(config, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def add_diffusion_tokens(
    tokenizer,
    model=None,
    *,
    mask_token: str = MASK_TOKEN,
    slack_token: str = SLACK_TOKEN,
) -> dict[str, Any]:
    """Make ``tokenizer`` (and optionally ``model``) ready for masked-diffusion and slack-CTC training.

    Tokenizer:
      * ``[MASK]`` is added as the ``mask_token`` only when ``tokenizer.mask_token`` is None. When a
        model is given whose config already names a ``mask_token_id`` inside the vocabulary (LLaDA-style
        checkpoints whose tokenizer leaves ``mask_token`` unset), that existing token becomes the
        tokenizer's mask token instead of adding a fresh, untrained one.
      * ``<slack>`` is added as an extra special token when it is not one already, so
        ``decode(..., skip_special_tokens=True)`` drops it.

    Model (optional): the input embedding matrix and an untied output layer are resized to exactly
    ``len(tokenizer)`` rows (no rounding up to a multiple). A matrix that already has more rows than
    the tokenizer (vocabulary padded for speed) is never shrunk. Every row of a token added by this
    call (input embedding, untied output weight and output bias if any) is set to the mean of the
    rows of the tokens that existed before. ``model.config.mask_token_id`` and
    ``model.config.slack_token_id`` are set.

    Returns ``{"mask_token_id", "slack_token_id", "new_token_ids"}``; ``new_token_ids`` lists the
    ids this call added to the tokenizer (the rows that must be trainable under LoRA, e.g. PEFT's
    ``trainable_token_indices``).
    """
    old_len = len(tokenizer)
    config = getattr(model, "config", None)

    # --- [MASK] -------------------------------------------------------------------------------------
    if tokenizer.mask_token is None:
        cfg_mask = _config_id(config, "mask_token_id")
        if cfg_mask is not None and 0 <= cfg_mask < old_len:
            existing = tokenizer.convert_ids_to_tokens(cfg_mask)
            logger.info("Using the model's mask token %r (id %d) as tokenizer.mask_token", existing, cfg_mask)
            tokenizer.add_special_tokens({"mask_token": existing})
        else:
            tokenizer.add_special_tokens({"mask_token": mask_token})
    # --- <slack> ------------------------------------------------------------------------------------
    if _slack_id(tokenizer, slack_token) is None:
        tokenizer.add_special_tokens({"extra_special_tokens": [slack_token]}, replace_extra_special_tokens=False)

    mask_id = int(tokenizer.mask_token_id)
    slack_id = _slack_id(tokenizer, slack_token)
    if slack_id is None:  # pragma: no cover - would be a tokenizer bug
        raise RuntimeError(f"could not register {slack_token!r} as a special token")
    if slack_id == mask_id:
        raise ValueError(f"the slack token {slack_token!r} and the mask token share id {mask_id}")
    new_ids = sorted(i for i in {mask_id, slack_id} if i >= old_len)

    if model is not None:
        cfg_mask = _config_id(config, "mask_token_id")
        if cfg_mask is not None and cfg_mask != mask_id:
            raise ValueError(
                f"model.config.mask_token_id is {cfg_mask} but tokenizer.mask_token {tokenizer.mask_token!r} has id "
                f"{mask_id}: the tokenizer and the model disagree on the mask token. Set tokenizer.mask_token to "
                f"the model's mask token (or fix model.config.mask_token_id) before calling add_diffusion_tokens."
            )
        _resize_and_init(model, len(tokenizer), new_ids, old_len)
        model.config.mask_token_id = mask_id
        model.config.slack_token_id = slack_id

    return {"mask_token_id": mask_id, "slack_token_id": slack_id, "new_token_ids": new_ids}


@torch.no_grad()
def _resize_and_init(model, new_len: int, new_ids: list[int], old_len: int) -> None:
    inp = model.get_input_embeddings()
    if inp is None:
        raise ValueError(f"{type(model).__name__} has no input embeddings (get_input_embeddings() returned None)")
    n_rows = inp.weight.shape[0]
    if new_len > n_rows:
        # Exact size; mean_resizing=False because the new rows are overwritten with the exact mean below.
        model.resize_token_embeddings(new_len, mean_resizing=False)
    elif new_len < n_rows:
        logger.info("embedding matrix has %d rows for %d tokens: keeping its size", n_rows, new_len)
    if not new_ids:
        return

    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    new_index = torch.tensor(new_ids, dtype=torch.long, device=inp.weight.device)
    # The rows of the tokens that existed before this call (never a spare padding row beyond them); new ids are
    # all >= old_len, so none of them is among these rows.
    n_old = min(old_len, n_rows)

    def set_rows_to_mean(tensor: torch.Tensor) -> None:
        mean = tensor[:n_old].float().mean(dim=0).to(tensor.dtype)
        tensor[new_index.to(tensor.device)] = mean

    set_rows_to_mean(inp.weight)
    if out is not None and getattr(out, "weight", None) is not None:
        tied = out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()
        if not tied:
            if out.weight.shape[0] < new_len:
                raise ValueError(
                    f"output layer has {out.weight.shape[0]} rows after resizing, expected at least {new_len}"
                )
            set_rows_to_mean(out.weight)
        bias = getattr(out, "bias", None)
        if bias is not None and bias.shape[0] >= new_len:
            set_rows_to_mean(bias)


def diffusion_token_ids(tokenizer=None, config=None, *, need_slack: bool = True, need_pad: bool = True):
    """Return ``(mask_id, slack_id, eos_id, pad_id)``: the one resolver of the special ids.

    Each id comes from the tokenizer, else from ``config`` (``mask_token_id``, ``slack_token_id``,
    ``eos_token_id``, ``pad_token_id``); the tokenizer wins because it is what appends EOS to the training
    responses. A tokenizer and a config that both name a mask or slack id but disagree is an error. EOS falls
    back to the tokenizer's SEP token (BERT-style tokenizers). A missing id is an error that says which one is
    missing and how to add it; the slack id may be None when ``need_slack`` is False, and the pad id falls
    back to EOS when ``need_pad`` is False.
    """
    mask_id = getattr(tokenizer, "mask_token_id", None)
    slack_id = _slack_id(tokenizer, SLACK_TOKEN) if tokenizer is not None else None
    for name, tok_value in (("mask_token_id", mask_id), ("slack_token_id", slack_id)):
        cfg_value = _config_id(config, name)
        if tok_value is not None and cfg_value is not None and int(tok_value) != cfg_value:
            raise ValueError(
                f"tokenizer and model config disagree on {name}: tokenizer says {tok_value}, config says "
                f"{cfg_value}. Use the tokenizer saved with the model, or call "
                f"hf_mdlm.add_diffusion_tokens(tokenizer, model) once on a fresh pair."
            )
    if mask_id is None:
        mask_id = _config_id(config, "mask_token_id")
    if slack_id is None:
        slack_id = _config_id(config, "slack_token_id")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        eos_id = _config_id(config, "eos_token_id")
    if eos_id is None:
        eos_id = getattr(tokenizer, "sep_token_id", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = _config_id(config, "pad_token_id")
    if pad_id is None and not need_pad:
        pad_id = eos_id

    missing = []
    if mask_id is None:
        missing.append(f"mask token ({MASK_TOKEN}): call hf_mdlm.add_diffusion_tokens(tokenizer, model)")
    if slack_id is None and need_slack:
        missing.append(f"slack token ({SLACK_TOKEN}): call hf_mdlm.add_diffusion_tokens(tokenizer, model)")
    if eos_id is None:
        missing.append("eos token: set tokenizer.eos_token (responses end with it and the canvas is filled with it)")
    if pad_id is None:
        missing.append("pad token: set tokenizer.pad_token (for example tokenizer.pad_token = tokenizer.eos_token)")
    if missing:
        raise ValueError("missing special token(s) for diffusion training:\n  - " + "\n  - ".join(missing))
    return int(mask_id), None if slack_id is None else int(slack_id), int(eos_id), int(pad_id)
