"""LLaDA checkpoints (GSAI-ML/LLaDA-8B-Base / -Instruct format) into hf_mdlm folders."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..configuration_mdlm import MDLMConfig
from ..generation_mdlm import MDLMGenerationConfig
from ..hub.files import TOKENIZER_FILES, copy_hub_code
from .common import _source_shards

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
    src, dst = Path(src_dir), Path(dst_dir)
    if src.resolve() == dst.resolve():
        raise ValueError("dst_dir must differ from src_dir: the conversion never overwrites the source")
    config_path = src / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {src} a LLaDA checkpoint folder?")
    config = llada_config_to_mdlm(json.loads(config_path.read_text()))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    shards = _source_shards(src)
    _check_source_keys(shards, config)  # before anything is written
    dst.mkdir(parents=True, exist_ok=True)

    weight_map, total_size = {}, 0
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for shard, out_name in zip(shards, names):
        tensors = {}
        with safe_open(str(shard), framework="pt") as reader:
            for key in reader.keys():
                new_key = llada_key_to_mdlm(key)
                tensor = reader.get_tensor(key)
                tensors[new_key] = tensor.to(dtype) if dtype is not None else tensor
        save_file(tensors, str(dst / out_name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = out_name
            total_size += tensor.numel() * tensor.element_size()
        del tensors  # one shard in memory at a time

    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    config.architectures = ["MDLMForMaskedLM"]
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(dst)
    # LLaDA's usual sampling settings, so that `model.generate(ids)` works out of the box.
    MDLMGenerationConfig(
        mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_new_tokens=128, steps=128, block_length=32, temperature=0.0, remasking="low_confidence",
    ).save_pretrained(dst)
    copy_hub_code(dst)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return config


def _check_source_keys(shards, config: MDLMConfig) -> None:
    """Every tensor the model needs is in the checkpoint and every tensor of the checkpoint is used (read from the
    safetensors headers, no tensor loaded): a checkpoint with more layers than its config, or with biases the
    config does not have, is not the model the config describes."""
    seen = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as reader:
            for key in reader.keys():
                seen[llada_key_to_mdlm(key)] = key
    expected = _expected_keys(config)
    missing = sorted(expected - set(seen))
    if missing:
        raise ValueError(f"the LLaDA checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    extra = sorted(seen[key] for key in set(seen) - expected)
    if extra:
        shown = ", ".join(extra[:8]) + (f", ... ({len(extra)} in all)" if len(extra) > 8 else "")
        raise ValueError(
            f"the LLaDA checkpoint has {len(extra)} tensor(s) its config does not describe (n_layers="
            f"{config.num_hidden_layers}, include_qkv_bias={config.attention_bias}, weight_tying="
            f"{config.tie_word_embeddings}): {shown}. Fix config.json or the checkpoint; converting would drop them"
        )


def _expected_keys(config: MDLMConfig) -> set[str]:
    keys = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.tie_word_embeddings:
        keys.add("lm_head.weight")
    for layer in range(config.num_hidden_layers):
        keys.update(f"model.layers.{layer}.{name}.weight" for name in _BLOCK_KEYS.values())
        if config.attention_bias:
            keys.update(f"model.layers.{layer}.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj"))
    return keys
