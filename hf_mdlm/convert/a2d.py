"""A2D: a causal LM (Llama, Mistral, Qwen2, Qwen3) adapted to masked diffusion, an hf_mdlm folder ready for
fine-tuning. Sliding-window attention and scaled rotary embeddings (e.g. Llama 3.1's "llama3") are refused.

The weights are the causal model's, unchanged: only the attention stops being causal and position i is read as the
prediction of token i + 1 (`prediction_alignment="next_token"`), as the causal model was trained. `[MASK]` and
`<slack>` join the tokenizer (a tokenizer that has a mask token keeps it) and get embedding (and untied LM head)
rows set to the mean of the existing rows, written while the shards stream through. Run with a causal 4D attention
mask, the converted model computes the source model's logits (tests/test_convert_a2d.py). With `block_size=N` the
model is a block-diffusion one instead (bidirectional inside blocks of N, causal across them; N = 1 is the causal
LM itself), ready for block-diffusion fine-tuning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from ..generation_mdlm import block_sampling
from ..tokenization import add_diffusion_tokens
from .common import llada_generation_config, read_source_config, refuse, write_converted

logger = logging.getLogger(__name__)

A2D_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def is_a2d_config(config: dict) -> bool:
    return config.get("model_type") in A2D_MODEL_TYPES


def _rope_theta(source: dict) -> float:
    """The rotary base as transformers reads it: `rope_parameters` first (its type may be named by the older key
    "type"), then a top-level `rope_theta`. Scaled rotary embeddings are refused."""
    parameters = source.get("rope_parameters") or {}
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{source['model_type']} config field 'rope_parameters' has rope_type={kind!r}: only the "
                         "default rotary embedding is supported")
    refuse(source["model_type"], source, "rope_scaling", (None,))
    return float(parameters.get("rope_theta") or source.get("rope_theta") or 10000.0)


def _stop_ids(eos, src: Path):
    """The config's EOS ids and those of the source's generation_config.json (Qwen's chat models end a turn with
    <|im_end|> there besides <|endoftext|>), in that order."""
    ids = []
    path = src / "generation_config.json"
    source_eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    for value in (eos, source_eos):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in ids:
                ids.append(token)
    return ids[0] if len(ids) == 1 else ids or None


def a2d_config_to_mdlm(source: dict, vocab_size: int, mask_token_id: int, slack_token_id: int) -> MDLMConfig:
    kind = source.get("model_type")
    if kind not in A2D_MODEL_TYPES:
        raise ValueError(f"A2D converts {', '.join(A2D_MODEL_TYPES)} causal LMs, not model_type={kind!r}")
    refuse(kind, source, "hidden_act", ("silu",))
    refuse(kind, source, "use_sliding_window", (False,))
    if kind == "mistral":  # Llama's architecture, attending over a sliding window when it has one
        refuse(kind, source, "sliding_window", (None,))
    sliding = [t for t in source.get("layer_types") or [] if t != "full_attention"]
    if sliding:
        raise ValueError(f"{kind} config field 'layer_types' has {sorted(set(sliding))} layers: sliding-window "
                         "attention is not supported")
    rope_theta = _rope_theta(source)
    bias = bool(source.get("attention_bias", False))
    return MDLMConfig(
        vocab_size=vocab_size, hidden_size=source["hidden_size"], intermediate_size=source["intermediate_size"],
        num_hidden_layers=source["num_hidden_layers"], num_attention_heads=source["num_attention_heads"],
        num_key_value_heads=source.get("num_key_value_heads"), head_dim=source.get("head_dim"),
        max_position_embeddings=source["max_position_embeddings"], rope_theta=rope_theta,
        rms_norm_eps=source.get("rms_norm_eps", 1e-6),
        # Qwen2 always has q/k/v biases and no output bias; Llama and Qwen3 put attention_bias on all four.
        attention_bias=True if kind == "qwen2" else bias, attention_output_bias=False if kind == "qwen2" else bias,
        mlp_bias=bool(source.get("mlp_bias", False)), qk_norm=kind == "qwen3",
        attention_dropout=source.get("attention_dropout", 0.0), initializer_range=source.get("initializer_range", 0.02),
        tie_word_embeddings=bool(source.get("tie_word_embeddings", False)), prediction_alignment="next_token",
        mask_token_id=mask_token_id, slack_token_id=slack_token_id, eos_token_id=source.get("eos_token_id"),
        pad_token_id=source.get("pad_token_id"), bos_token_id=source.get("bos_token_id"),
    )


def convert_a2d_checkpoint(src_dir, dst_dir, dtype: str | torch.dtype | None = None,
                           block_size: int | None = None) -> MDLMConfig:
    """Convert a local causal LM folder (weights + tokenizer) into a next-token-aligned hf_mdlm folder (a
    block-diffusion one with `block_size`)."""
    from transformers import AutoTokenizer

    source = read_source_config(Path(src_dir), "causal LM")
    tokenizer = AutoTokenizer.from_pretrained(src_dir, trust_remote_code=False)  # a conversion runs no folder code
    had_mask = tokenizer.mask_token is not None
    old_len = len(tokenizer)
    added = add_diffusion_tokens(tokenizer)
    if had_mask:
        logger.info("the tokenizer already has a mask token, %r (id %d): reused as [MASK]", tokenizer.mask_token,
                    added["mask_token_id"])
    if old_len > source["vocab_size"]:
        logger.warning("the tokenizer has %d tokens but the model's embedding only %d rows: tokens %d-%d get the "
                       "mean row, as [MASK] and <slack> do", old_len, source["vocab_size"], source["vocab_size"],
                       old_len - 1)
    rows = max(source["vocab_size"], len(tokenizer))
    config = a2d_config_to_mdlm(source, rows, added["mask_token_id"], added["slack_token_id"])
    if block_size is not None:
        config.block_size = block_size
        config._check()
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    new_ids = added["new_token_ids"]

    def grow(key, tensor):
        if key not in ("model.embed_tokens.weight", "lm_head.weight"):
            return tensor
        trained = min(old_len, tensor.shape[0])  # rows of tokens that existed (not spare rows beyond the tokenizer)
        mean = tensor[:trained].float().mean(0).to(tensor.dtype)
        if tensor.shape[0] < rows:
            tensor = torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)])
        if new_ids:  # the mean of the rows of the tokens that existed
            tensor[new_ids] = mean
        return tensor

    generation = llada_generation_config(config)
    generation.eos_token_id = _stop_ids(config.eos_token_id, Path(src_dir))
    if block_size is not None:  # sample the model's own blocks, one token per step
        generation.update(**block_sampling(block_size), steps=None)
    described = f"num_hidden_layers={config.num_hidden_layers}, tie_word_embeddings={config.tie_word_embeddings}"
    tied = config.tie_word_embeddings

    def rename(key):
        # rotary buffers are recomputed; a tied model's stored head is the embedding again (transformers drops it)
        return None if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight") else key

    return write_converted(src_dir, dst_dir, config, rename, generation, f"{source['model_type']} (A2D)", described,
                           dtype, transform=grow, tokenizer=tokenizer)
