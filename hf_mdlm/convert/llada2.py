"""LLaDA2.0 / 2.1 checkpoints (inclusionAI/LLaDA2.0-mini / -flash format, `model_type` "llada2_moe") into hf_mdlm
block-diffusion folders.

LLaDA2 is a mixture of experts decoded block by block: attention is bidirectional inside a block and causal across
blocks (the family's sampler builds that mask; here `MDLMConfig.block_size` does). Its router scores experts with a
sigmoid, adds the expert bias only to choose them, chooses among the best groups of experts (a group scores the sum
of its two best experts), renormalises the chosen scores and scales them by `routed_scaling_factor`; the first
`first_k_dense_replace` layers are dense. The query/key/value projection is one fused tensor, split here.
LLaDA2.1's editing sampler (re-masking committed tokens) is not supported: its checkpoints load and sample with the
LLaDA2.0 rule.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from ..generation_mdlm import MDLMGenerationConfig, block_sampling
from .common import read_source_config, refuse, source_mask_token_id, write_converted

logger = logging.getLogger(__name__)

# The released models' [MASK] and block length (their config.json names neither; the family's sampler is given them).
# The [MASK] is the default when neither an argument, config.json nor the tokenizer names one.
LLADA2_MASK_TOKEN_ID = 156895
LLADA2_BLOCK_LENGTH = 32
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_RENAMES = {"attention.dense.weight": "self_attn.o_proj.weight", "attention.dense.bias": "self_attn.o_proj.bias",
            "attention.query_layernorm.weight": "self_attn.q_norm.weight",
            "attention.key_layernorm.weight": "self_attn.k_norm.weight",
            "mlp.gate.weight": "mlp.router.weight", "mlp.gate.expert_bias": "mlp.expert_bias"}


def is_llada2_config(config: dict) -> bool:
    return config.get("model_type") in ("llada2_moe", "llada2.1_moe", "llada21_moe")


def llada2_config_to_mdlm(source: dict, mask_token_id: int | None = None,
                          block_size: int = LLADA2_BLOCK_LENGTH, src=None) -> MDLMConfig:
    """`src`: the checkpoint folder, whose tokenizer may name the [MASK] (`source_mask_token_id`)."""
    family = "LLaDA2"
    refuse(family, source, "rope_scaling", (None,))
    refuse(family, source, "hidden_act", ("silu",))
    refuse(family, source, "use_sliding_window", (False,))
    refuse(family, source, "score_function", ("sigmoid",))
    refuse(family, source, "norm_head", (False,))
    vocab, layers = source["vocab_size"], source["num_hidden_layers"]
    mask_token_id = source_mask_token_id(family, source, LLADA2_MASK_TOKEN_ID, mask_token_id, src)
    heads = source["num_attention_heads"]
    head_dim = source.get("head_dim") or source["hidden_size"] // heads
    experts = source.get("num_experts") or 0
    shared = source.get("num_shared_experts") or 0
    top_k = source.get("num_experts_per_tok", 1)
    return MDLMConfig(
        vocab_size=vocab, hidden_size=source["hidden_size"], intermediate_size=source["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=source.get("num_key_value_heads"),
        head_dim=head_dim, max_position_embeddings=source["max_position_embeddings"],
        rope_theta=source.get("rope_theta", 10000.0), rms_norm_eps=source.get("rms_norm_eps", 1e-6),
        attention_bias=bool(source.get("use_qkv_bias", False)), attention_output_bias=bool(source.get("use_bias", False)),
        qk_norm=bool(source.get("use_qk_norm", False)), partial_rotary_factor=source.get("partial_rotary_factor", 1.0),
        num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=source.get("moe_intermediate_size"),
        moe_layers=list(range(source.get("first_k_dense_replace", 0), layers)) if experts else None,
        shared_expert_intermediate_size=(source["moe_intermediate_size"] * shared) if experts and shared else None,
        expert_bias=bool(source.get("moe_router_enable_expert_bias", False)), expert_bias_in_weights=False,
        router_score_function="sigmoid", router_groups=source.get("n_group") or 1,
        router_topk_groups=source.get("topk_group") or source.get("n_group") or 1,
        routed_scaling_factor=float(source.get("routed_scaling_factor") or 1.0), norm_topk_prob=top_k > 1,
        block_size=block_size, tie_word_embeddings=bool(source.get("tie_word_embeddings", False)),
        initializer_range=source.get("initializer_range", 0.02), mask_token_id=mask_token_id,
        eos_token_id=source.get("eos_token_id"), pad_token_id=source.get("pad_token_id"),
        bos_token_id=source.get("bos_token_id"),
    )


def llada2_key_renamer(config: MDLMConfig):
    """LLaDA2's names to ours; the fused query/key/value rows are split into the three projections."""
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    split = {"q_proj": slice(0, q_rows), "k_proj": slice(q_rows, q_rows + kv_rows),
             "v_proj": slice(q_rows + kv_rows, q_rows + 2 * kv_rows)}

    def rename(key: str):
        if key.endswith("rotary_emb.inv_freq"):
            return None
        if key == "model.word_embeddings.weight":
            return "model.embed_tokens.weight"
        layer = _LAYER.fullmatch(key)
        if not layer:
            return key
        prefix, name = f"model.layers.{layer.group(1)}.", layer.group(2)
        if name.startswith("attention.query_key_value."):
            kind = name.rsplit(".", 1)[1]  # weight or bias
            return {f"{prefix}self_attn.{proj}.{kind}": rows for proj, rows in split.items()}
        if name.startswith("mlp.shared_experts."):
            return prefix + "mlp.shared_expert." + name[len("mlp.shared_experts."):]
        return prefix + _RENAMES.get(name, name)

    return rename


def llada2_generation_config(config: MDLMConfig) -> MDLMGenerationConfig:
    """The family's sampler defaults: blocks of 32 aligned to absolute positions, the block's even split over 32
    steps, greedy, every token above confidence 0.95 committed at once."""
    return MDLMGenerationConfig(
        mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_new_tokens=128, **block_sampling(config.block_size), temperature=0.0, threshold=0.95,
        remasking="low_confidence", stop_at_eos=True,
    )


def convert_llada2_checkpoint(src_dir, dst_dir, dtype: str | torch.dtype | None = None,
                              mask_token_id: int | None = None) -> MDLMConfig:
    """Convert a LLaDA2.0 / 2.1 folder into a block-diffusion hf_mdlm folder (`block_size` 32)."""
    source = read_source_config(Path(src_dir), "LLaDA2")
    config = llada2_config_to_mdlm(source, mask_token_id, src=src_dir)
    described = (f"num_hidden_layers={config.num_hidden_layers}, num_experts={config.num_experts}, "
                 f"first_k_dense_replace={source.get('first_k_dense_replace')}")
    return write_converted(src_dir, dst_dir, config, llada2_key_renamer(config), llada2_generation_config(config),
                           "LLaDA2", described, dtype)
