"""A2D: a causal LM (Llama, Qwen2, Qwen3) adapted to masked diffusion, as an hf_mdlm folder ready for fine-tuning.

The weights are the causal model's, unchanged: only the attention stops being causal and position i is read as the
prediction of token i + 1 (`prediction_alignment="next_token"`), as the causal model was trained. `[MASK]` and
`<slack>` join the tokenizer (a tokenizer that has a mask token keeps it) and get embedding (and untied LM head)
rows set to the mean of the existing rows, written while the shards stream through. Run with a causal 4D attention
mask, the converted model computes the source model's logits (tests/test_convert_a2d.py). With `block_size=N` the
model is a block-diffusion one instead (bidirectional inside blocks of N, causal across them; N = 1 is the causal
LM itself), ready for block-diffusion fine-tuning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from ..generation_mdlm import block_sampling
from ..tokenization import add_diffusion_tokens
from .common import llada_generation_config, read_source_config, refuse, write_converted

logger = logging.getLogger(__name__)

A2D_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def is_a2d_config(config: dict) -> bool:
    return config.get("model_type") in A2D_MODEL_TYPES


def _rope_theta(source: dict) -> float:
    parameters = source.get("rope_parameters") or {}
    if parameters.get("rope_type", "default") != "default":
        raise ValueError(f"{source['model_type']} config field 'rope_parameters' has rope_type="
                         f"{parameters['rope_type']!r}: only the default rotary embedding is supported")
    refuse(source["model_type"], source, "rope_scaling", (None,))
    return float(source.get("rope_theta") or parameters.get("rope_theta") or 10000.0)


def a2d_config_to_mdlm(source: dict, vocab_size: int, mask_token_id: int, slack_token_id: int) -> MDLMConfig:
    kind = source.get("model_type")
    if kind not in A2D_MODEL_TYPES:
        raise ValueError(f"A2D converts {', '.join(A2D_MODEL_TYPES)} causal LMs, not model_type={kind!r}")
    refuse(kind, source, "hidden_act", ("silu",))
    refuse(kind, source, "use_sliding_window", (False,))
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
    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    had_mask = tokenizer.mask_token is not None
    old_len = len(tokenizer)
    added = add_diffusion_tokens(tokenizer)
    if had_mask:
        logger.info("the tokenizer already has a mask token, %r (id %d): reused as [MASK]", tokenizer.mask_token,
                    added["mask_token_id"])
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
        if tensor.shape[0] < rows:
            tensor = torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], tensor.shape[1])])
        if new_ids:  # the mean of the rows of the tokens that existed
            tensor[new_ids] = tensor[:old_len].float().mean(0).to(tensor.dtype)
        return tensor

    generation = llada_generation_config(config)
    if block_size is not None:  # sample the model's own blocks, one token per step
        generation.update(**block_sampling(block_size), steps=None)
    described = f"num_hidden_layers={config.num_hidden_layers}, tie_word_embeddings={config.tie_word_embeddings}"
    return write_converted(src_dir, dst_dir, config, lambda key: None if key.endswith("rotary_emb.inv_freq") else key,
                           generation, f"{source['model_type']} (A2D)", described, dtype, transform=grow,
                           tokenizer=tokenizer)
