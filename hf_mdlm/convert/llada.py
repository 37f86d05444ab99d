"""LLaDA checkpoints (GSAI-ML/LLaDA-8B-Base / -Instruct format) into hf_mdlm folders."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from .common import llada_generation_config, read_source_config, write_converted

# LLaDA config fields our architecture can represent only with one of these values.
_SUPPORTED_LLADA_VALUES = {
    "block_type": ("llama",),
    "activation_type": ("silu",),
    "layer_norm_type": ("rms",),
    "layer_norm_with_affine": (True,),
    "attention_layer_norm": (False,),
    "alibi": (False,),
    "rope": (True,),
    "include_bias": (False,),
    "bias_for_layer_norm": (False, None),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "clip_qkv": (None,),
}

_BLOCK_KEYS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}

_TOP_KEYS = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}

_BLOCK_PATTERN = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")


def is_llada_config(config: dict) -> bool:
    """Whether a `config.json` (as a dict) is LLaDA's own format (OLMo-style keys), not an hf_mdlm one."""
    return "d_model" in config and "block_type" in config


def llada_config_to_mdlm(llada: dict) -> MDLMConfig:
    """Map a LLaDA `config.json` dict to an `MDLMConfig`, refusing what the architecture cannot represent."""
    for field, supported in _SUPPORTED_LLADA_VALUES.items():
        if field in llada and llada[field] not in supported:
            raise ValueError(
                f"LLaDA config field {field!r}={llada[field]!r} cannot be represented by MDLMConfig "
                f"(supported: {' or '.join(map(repr, supported))})"
            )
    for field in ("d_model", "n_heads", "n_layers"):
        if llada.get(field) is None:
            raise ValueError(f"LLaDA config field {field!r} is missing")
    d_model, n_heads = llada["d_model"], llada["n_heads"]
    if llada.get("multi_query_attention"):
        n_kv_heads = 1
    else:
        n_kv_heads = llada.get("n_kv_heads") or n_heads
    mlp_hidden = llada.get("mlp_hidden_size") or llada.get("mlp_ratio", 4) * d_model
    # LLaDA may pad the embedding matrix beyond the tokenizer's vocabulary; the weights have embedding_size rows.
    vocab = llada.get("embedding_size") or llada["vocab_size"]
    return MDLMConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=mlp_hidden,
        num_hidden_layers=llada["n_layers"],
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=llada.get("max_sequence_length", 4096),
        rope_theta=llada.get("rope_theta", 10000.0),
        rms_norm_eps=llada.get("rms_norm_eps", 1e-5),
        attention_bias=bool(llada.get("include_qkv_bias", False)),
        attention_dropout=llada.get("attention_dropout", 0.0),
        initializer_range=llada.get("init_std", 0.02),
        tie_word_embeddings=bool(llada.get("weight_tying", False)),
        mask_token_id=llada.get("mask_token_id", 126336),
        eos_token_id=llada.get("eos_token_id"),
        pad_token_id=llada.get("pad_token_id"),
        bos_token_id=llada.get("bos_token_id"),
    )


def llada_key_to_mdlm(key: str) -> str:
    """Rename one LLaDA state-dict key; an unknown key is an error (a silently dropped weight is a wrong model)."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    match = _BLOCK_PATTERN.fullmatch(key)
    if match and match.group(2) in _BLOCK_KEYS:
        layer, name, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK_KEYS[name]}.{kind}"
    raise ValueError(f"unexpected tensor {key!r} in the LLaDA checkpoint: no hf_mdlm equivalent")


def convert_llada_checkpoint(src_dir, dst_dir, dtype: str | torch.dtype | None = None) -> MDLMConfig:
    """Convert a LLaDA checkpoint folder into an hf_mdlm folder loadable with `AutoModel.from_pretrained`.

    Args:
        src_dir: folder with LLaDA's `config.json` and safetensors weights (sharded or not).
        dst_dir: output folder (created). Must not be `src_dir`.
        dtype: optional dtype to cast the weights to (e.g. "bfloat16"); default keeps the source dtype.

    Returns the written `MDLMConfig`.
    """
    config = llada_config_to_mdlm(read_source_config(Path(src_dir), "LLaDA"))
    generation = llada_generation_config(config)
    described = (f"n_layers={config.num_hidden_layers}, include_qkv_bias={config.attention_bias}, "
                 f"weight_tying={config.tie_word_embeddings}")
    return write_converted(src_dir, dst_dir, config, llada_key_to_mdlm, generation, "LLaDA", described, dtype)
