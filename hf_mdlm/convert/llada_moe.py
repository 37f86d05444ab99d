"""LLaDA-MoE checkpoints (inclusionAI/LLaDA-MoE-7B-A1B-Base / -Instruct format) into hf_mdlm folders.

The reference modeling code ignores some of its config fields (`norm_topk_prob`, `moe_router_score_function`,
`routed_scaling_factor`, `router_num_group`, `router_topk_group`): the converter follows the code, so a converted
model computes what the original computes (softmax router scores plus the expert bias, the top-k weights used as
they are), and says so in the log.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from .common import llada_generation_config, read_source_config, refuse, source_mask_token_id, write_converted

logger = logging.getLogger(__name__)

# The real models' [MASK] (their config.json does not name it; the reference sampler is given it): the default
# when neither an argument, config.json nor the tokenizer names one.
LLADA_MOE_MASK_TOKEN_ID = 156895
_IGNORED_BY_THE_REFERENCE = ("norm_topk_prob", "moe_router_score_function", "routed_scaling_factor",
                             "router_num_group", "router_topk_group")
_SHARED = re.compile(r"model\.layers\.(\d+)\.shared_expert\.(\w+)\.weight")
_ROUTER = re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight")


def is_llada_moe_config(config: dict) -> bool:
    return config.get("model_type") in ("llada", "lladamoe") and "num_experts" in config


def llada_moe_config_to_mdlm(source: dict, mask_token_id: int | None = None, src=None) -> MDLMConfig:
    """`src`: the checkpoint folder, whose tokenizer may name the [MASK] (`source_mask_token_id`)."""
    refuse("LLaDA-MoE", source, "rope_scaling", (None,))
    refuse("LLaDA-MoE", source, "clip_qkv", (None,))
    refuse("LLaDA-MoE", source, "hidden_act", ("silu",))
    ignored = {name: source[name] for name in _IGNORED_BY_THE_REFERENCE if name in source}
    if ignored:
        logger.info("LLaDA-MoE config fields the reference code ignores, ignored here too: %s", ignored)
    vocab = source["vocab_size"]
    mask_token_id = source_mask_token_id("LLaDA-MoE", source, LLADA_MOE_MASK_TOKEN_ID, mask_token_id, src)
    freq = source.get("moe_layer_freq", 1)
    layers = source["num_hidden_layers"]
    moe_layers = [i for i in range(layers) if (freq[i] if isinstance(freq, list) else freq)]
    return MDLMConfig(
        vocab_size=vocab, hidden_size=source["hidden_size"], intermediate_size=source["dense_intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=source["num_attention_heads"],
        num_key_value_heads=source.get("num_key_value_heads"), max_position_embeddings=source["max_position_embeddings"],
        rope_theta=source.get("rope_theta", 10000.0), rms_norm_eps=source.get("rms_norm_eps", 1e-5),
        attention_bias=bool(source.get("attention_bias", False)),
        attention_output_bias=bool(source.get("attention_bias", False)),
        qk_norm=bool(source.get("qk_layernorm", False)), partial_rotary_factor=source.get("partial_rotary_factor", 1.0),
        num_experts=source["num_experts"], num_experts_per_tok=source["num_experts_per_tok"],
        moe_intermediate_size=source["expert_intermediate_size"], moe_layers=moe_layers,
        shared_expert_intermediate_size=source.get("shared_expert_intermediate_size"),
        expert_bias=bool(source.get("moe_router_enable_expert_bias", False)), norm_topk_prob=False,
        tie_word_embeddings=bool(source.get("tie_word_embeddings", False)),
        initializer_range=source.get("initializer_range", 0.02), mask_token_id=mask_token_id,
        eos_token_id=source.get("eos_token_id"), pad_token_id=source.get("pad_token_id"),
        bos_token_id=source.get("bos_token_id"),
    )


def llada_moe_key_to_mdlm(key: str) -> str | None:
    """LLaDA-MoE's names are ours except the router (`mlp.gate`) and the shared expert (on the layer)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    shared = _SHARED.fullmatch(key)
    if shared:
        return f"model.layers.{shared.group(1)}.mlp.shared_expert.{shared.group(2)}.weight"
    router = _ROUTER.fullmatch(key)
    return f"model.layers.{router.group(1)}.mlp.router.weight" if router else key


def convert_llada_moe_checkpoint(src_dir, dst_dir, dtype: str | torch.dtype | None = None,
                                 mask_token_id: int | None = None) -> MDLMConfig:
    """Convert a LLaDA-MoE folder; it samples with LLaDA's sampler (blocks, low-confidence remasking)."""
    source = read_source_config(Path(src_dir), "LLaDA-MoE")
    config = llada_moe_config_to_mdlm(source, mask_token_id, src_dir)
    generation = llada_generation_config(config)
    described = (f"num_hidden_layers={config.num_hidden_layers}, moe_layer_freq={source.get('moe_layer_freq')}, "
                 f"num_experts={config.num_experts}")
    return write_converted(src_dir, dst_dir, config, llada_moe_key_to_mdlm, generation, "LLaDA-MoE", described, dtype)
