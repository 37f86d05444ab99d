"""Parameters and fine-tuning memory of LLaDA-8B, Dream-7B, LLaDA-MoE-7B-A1B, LLaDA2.0-mini and SDAR-4B, from their
published configs, on
no hardware at all (`hf_mdlm.memory`; every assumption is in that module's docstring).

    python bench/memory_table.py                       # canvas 1024, batch 1, bf16, LoRA r=16 (the README's table)
    python bench/memory_table.py --canvas_length 4096 --batch_size 4 --lora_r 64 --gpus 8

Each config below is written in its family's own config.json format and mapped by the project's converter
(`llada_config_to_mdlm`, `dream_config_to_mdlm`, `llada_moe_config_to_mdlm`, `llada2_config_to_mdlm`,
`sdar_config_to_mdlm`), exactly as a conversion would.
Only fields that change a parameter count or that the converters require are written out; where each value comes
from is said next to it. `tests/test_memory.py` builds each model on the meta device and checks the counts
against the published ones.
"""

from __future__ import annotations

import argparse

from hf_mdlm.convert.dream import dream_config_to_mdlm
from hf_mdlm.convert.llada import llada_config_to_mdlm
from hf_mdlm.convert.llada2 import llada2_config_to_mdlm
from hf_mdlm.convert.llada_moe import llada_moe_config_to_mdlm
from hf_mdlm.convert.sdar import sdar_config_to_mdlm
from hf_mdlm.memory import GIB, count_parameters, estimate_finetune_memory

# GSAI-ML/LLaDA-8B-Base. Values from the LLaDA-8B config.json as copied in github.com/yinj66/support_basis
# (LLaDA-8B-Instruct-B&S-light/config.json; Base and Instruct share the architecture), and the architecture table of
# LLaDA's model cards (e.g. GSAI-ML/iLLaDA-8B-Base, "LLaDA 8B" column): 32 layers, d_model 4096, 32 heads and 32
# key/value heads, FFN 12,288, vocabulary 126,464, untied embedding and LM head.
LLADA_8B = {
    "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama", "activation_type": "silu",
    "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288, "mlp_ratio": 4,
    "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096, "rope": True,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "attention_layer_norm": False, "alibi": False, "include_bias": False, "include_qkv_bias": False,
    "bias_for_layer_norm": False, "input_emb_norm": False, "scale_logits": False, "weight_tying": False,
    "multi_query_attention": None, "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
}

# Dream-org/Dream-v0-Base-7B: Qwen2.5-7B's decoder (Dream is initialised from Qwen2.5-7B, DreamLM/Dream README and
# paper). Shape from Qwen2.5-7B's model card (28 layers, 28 query / 4 key-value heads, context 131,072; mirrored in
# github.com/ZHUI/paddlenlp_model_readme, Qwen/Qwen2.5-7B/index.md) and Qwen2's 7B config (hidden 3584,
# intermediate 18944, vocabulary 152064, untied, q/k/v bias, rms_norm_eps 1e-6, rope_theta 1e6). Dream's own
# fields: model_type "Dream", mask_token_id 151666, bos/eos/pad 151643 (tests/fixtures/dream-tiny/README.md).
# Dream's own config.json was not found in any source available here: the Qwen2.5-7B values stand for it.
DREAM_7B = {
    "model_type": "Dream", "architectures": ["DreamModel"], "hidden_act": "silu", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rope_scaling": None,
    "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
    "attention_dropout": 0.0, "mask_token_id": 151666, "bos_token_id": 151643, "eos_token_id": 151643,
    "pad_token_id": 151643,
}

# inclusionAI/LLaDA-MoE-7B-A1B-Base. Its config.json was not found in any source available here. From the LLaDA-MoE
# paper (arXiv 2509.24389, Table 2): 16 layers, hidden 2048, 16 attention heads, 64 experts, 8 active, expert
# dimension 1024, RoPE base 50,000, QK-layernorm; "7B" total and "1.4B" active parameters. From a description of
# the config (github.com, a vLLM port's README, "LLaDA-MoE-7B-A1B关键参数"): num_key_value_heads 16,
# dense_intermediate_size 8192, moe_layer_freq all 1 (every layer MoE), shared_expert_intermediate_size null,
# max_position_embeddings 8192. INFERRED, not read from the config: vocab_size 157184 (the inclusionAI tokenizer of
# LLaDA2.0, whose configs say 157184 and whose pad id 156892 is LLaDA-MoE's EOS; LLaDA-MoE's mask id 156895 fits)
# and an untied LM head; with both, the active count reproduces the paper's 1.4B (tests/test_memory.py).
# partial_rotary_factor and the router options are left out: they change no parameter count.
LLADA_MOE_7B_A1B = {
    "model_type": "llada", "architectures": ["LLaDAMoEModelLM"], "hidden_act": "silu", "hidden_size": 2048,
    "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16, "dense_intermediate_size": 8192,
    "expert_intermediate_size": 1024, "shared_expert_intermediate_size": None, "num_experts": 64,
    "num_experts_per_tok": 8, "moe_layer_freq": [1] * 16, "qk_layernorm": True, "attention_bias": False,
    "vocab_size": 157184, "max_position_embeddings": 8192, "rope_theta": 50000.0, "rope_scaling": None,
    "tie_word_embeddings": False, "eos_token_id": 156892, "pad_token_id": 156892,
}

# inclusionAI/LLaDA2.0-mini. Its config.json values as quoted in a public inference engine's loader test (a
# "llada2_moe" config: 20 layers, hidden 2048, 16 heads / 4 KV heads of 128, dense intermediate 5120 in the first
# layer, 256 experts of 512 with 8 active and 1 shared, groups 8 / top 4, vocabulary 157184, untied); the model
# card's counts: 16B total, 1.4B active.
LLADA2_MINI = {
    "model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"], "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 5120, "num_hidden_layers": 20, "num_attention_heads": 16, "num_key_value_heads": 4,
    "head_dim": 128, "moe_intermediate_size": 512, "num_experts": 256, "num_experts_per_tok": 8,
    "num_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
    "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "use_qk_norm": True, "use_qkv_bias": False,
    "use_bias": False, "partial_rotary_factor": 0.5, "rope_theta": 600000, "rms_norm_eps": 1e-06,
    "max_position_embeddings": 32768, "vocab_size": 157184, "tie_word_embeddings": False, "pad_token_id": 156892,
    "norm_head": False,
}

# JetAstra/SDAR-4B-Chat: its config.json in github.com/JetAstra/SDAR (training/model/SDAR-4B-Chat/config.json):
# Qwen3-4B's shape (36 layers, hidden 2560, 32 / 8 heads of 128, intermediate 9728, vocabulary 151936) with an
# untied LM head, block_size 4, mask_token_id 151669. Published: "4B"; Qwen3-4B's card gives 3.6B non-embedding.
SDAR_4B = {
    "model_type": "sdar", "architectures": ["SDARForCausalLM"], "hidden_act": "silu", "hidden_size": 2560,
    "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1000000,
    "rope_scaling": None, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "use_sliding_window": False,
    "attention_bias": False, "block_size": 4, "mask_token_id": 151669, "bos_token_id": 151643,
    "eos_token_id": 151643,
}

MODELS = {
    "LLaDA-8B": (LLADA_8B, llada_config_to_mdlm),
    "Dream-7B": (DREAM_7B, dream_config_to_mdlm),
    "LLaDA-MoE-7B-A1B": (LLADA_MOE_7B_A1B, llada_moe_config_to_mdlm),
    "LLaDA2.0-mini": (LLADA2_MINI, lambda source: llada2_config_to_mdlm(source, mask_token_id=156895)),
    "SDAR-4B": (SDAR_4B, sdar_config_to_mdlm),
}


def mdlm_configs():
    """{name: MDLMConfig} through each family's converter."""
    return {name: convert(source) for name, (source, convert) in MODELS.items()}


def table(canvas_length=1024, batch_size=1, dtype="bfloat16", lora_r=16, gpus=1) -> str:
    def gib(estimate):
        shared = estimate.states / gpus  # FSDP / ZeRO-3 shard the states, not the activations
        return f"{(shared + estimate.activations) / GIB:.1f}"

    header = (f"| model | parameters (active) | LoRA r={lora_r} trainable | LoRA, GiB | LoRA + ckpt, GiB | full, GiB | "
              "full + ckpt, GiB | activations / ckpt, GiB |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---|"]
    for name, config in mdlm_configs().items():
        count = count_parameters(config)
        active = f"{count.total / 1e9:.2f}B" + (f" ({(count.active - count.embedding) / 1e9:.2f}B)"
                                                 if count.routed_experts else "")
        cells = {}
        for method in ("lora", "full"):
            for ckpt in (False, True):
                cells[method, ckpt] = estimate_finetune_memory(
                    config, method=method, canvas_length=canvas_length, batch_size=batch_size, dtype=dtype,
                    gradient_checkpointing=ckpt, lora_r=lora_r)
        lora, full = cells["lora", False], cells["full", False]
        lines.append(f"| {name} | {active} | {lora.trainable_parameters / 1e6:.1f}M | {gib(lora)} | "
                     f"{gib(cells['lora', True])} | {gib(full)} | {gib(cells['full', True])} | "
                     f"{full.activations / GIB:.1f} / {cells['full', True].activations / GIB:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canvas_length", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=1, help="rows per device")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=1, help="devices the states are sharded over (FSDP/ZeRO-3)")
    args = parser.parse_args(argv)
    print(table(args.canvas_length, args.batch_size, args.dtype, args.lora_r, args.gpus))


if __name__ == "__main__":
    main()
