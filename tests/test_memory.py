"""Scale without a GPU: the published LLaDA-8B, Dream-7B, LLaDA-MoE-7B-A1B, LLaDA2.0-mini and SDAR-4B configs, built
on the meta device, have the published parameter counts; `hf_mdlm.memory` counts them exactly and estimates activations close to
what autograd really keeps."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from hf_mdlm import MDLMConfig, MDLMForMaskedLM
from hf_mdlm.memory import (
    GIB,
    activation_bytes_per_token,
    count_lora_parameters,
    count_parameters,
    estimate_finetune_memory,
)

ROOT = Path(__file__).resolve().parents[1]


def _memory_table():
    spec = importlib.util.spec_from_file_location("bench_memory_table", ROOT / "bench" / "memory_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TABLE = _memory_table()

# Published counts and the tolerance each one's rounding allows (half a unit of its last digit, or the whole unit
# where a card may truncate instead of round: Qwen's 7.61B is 7,615,616,512):
# - LLaDA-8B: 8.02B total, 6.98B non-embedding (LLaDA paper's architecture table, repeated on the LLaDA model cards).
# - Dream-7B: Qwen2.5-7B's model card, 7.61B total and 6.53B non-embedding (Dream keeps Qwen2.5-7B's shape).
# - LLaDA-MoE-7B-A1B: the paper's "7B" total (a whole-billion figure: +-0.5B) and "1.4B" active (+-0.05B), the
#   active count taken without the input embedding, a lookup (with it: 1.72B).
# - LLaDA2.0-mini: the model card's "16B" total (+-0.5B) and "1.4B" active (+-0.05B), here with the embedding.
# - SDAR-4B: "4B" (+-0.5B; its untied LM head adds 0.39B to Qwen3-4B's 4.02B) and Qwen3-4B's 3.6B non-embedding.
PUBLISHED = {
    "LLaDA-8B": {"total": (8.02e9, 0.01e9), "non_embedding": (6.98e9, 0.01e9)},
    "Dream-7B": {"total": (7.61e9, 0.01e9), "non_embedding": (6.53e9, 0.01e9)},
    "LLaDA-MoE-7B-A1B": {"total": (7e9, 0.5e9), "active_without_embedding": (1.4e9, 0.05e9)},
    "LLaDA2.0-mini": {"total": (16e9, 0.5e9), "active": (1.4e9, 0.05e9)},
    "SDAR-4B": {"total": (4e9, 0.5e9), "non_embedding": (3.6e9, 0.05e9)},
}


def _brute_force(model):
    """Counts read off the built model's modules."""
    total = sum(p.numel() for p in model.parameters())
    unused = 0  # the routed experts a token is not sent to
    for layer in model.model.layers:
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None:
            per_expert = sum(p.numel() for p in experts[0].parameters())
            unused += (len(experts) - layer.mlp.config.num_experts_per_tok) * per_expert
    embedding = model.model.embed_tokens.weight.numel()
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return {"total": total, "active": total - unused, "embedding": embedding,
            "lm_head": 0 if tied else model.lm_head.weight.numel()}


@pytest.mark.parametrize("name", list(TABLE.MODELS))
def test_published_model_built_on_meta_has_the_published_parameter_count(name):
    config = TABLE.mdlm_configs()[name]
    with torch.device("meta"):
        model = MDLMForMaskedLM(config)
    counted = _brute_force(model)
    analytic = count_parameters(config)
    assert counted == {"total": analytic.total, "active": analytic.active, "embedding": analytic.embedding,
                       "lm_head": analytic.lm_head}  # exact
    values = {"total": analytic.total, "non_embedding": analytic.non_embedding, "active": analytic.active,
              "active_without_embedding": analytic.active - analytic.embedding}
    for key, (published, tolerance) in PUBLISHED[name].items():
        assert abs(values[key] - published) <= tolerance, (name, key, values[key], published)


TINY = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "mask_token_id": 95, "slack_token_id": 94}
TINY_VARIANTS = {
    "dense": {},
    "biases_tied": {"attention_bias": True, "attention_output_bias": True, "mlp_bias": True,
                    "tie_word_embeddings": True},
    "moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
            "shared_expert_intermediate_size": 40, "moe_layers": [1, 2], "qk_norm": True, "partial_rotary_factor": 0.5,
            "expert_bias": True, "mlp_bias": True},
}


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_tiny_counts_match_the_model_and_peft(variant):
    from peft import LoraConfig, get_peft_model

    config = MDLMConfig(**TINY, **TINY_VARIANTS[variant])
    model = MDLMForMaskedLM(config)
    analytic = count_parameters(config)
    assert _brute_force(model) == {"total": analytic.total, "active": analytic.active,
                                   "embedding": analytic.embedding, "lm_head": analytic.lm_head}
    # LoRA as hf_mdlm.loading applies it: adapters on every projection, the two new token rows trainable
    rows = {"model.embed_tokens": [94, 95]}
    if not config.tie_word_embeddings:
        rows["lm_head"] = [94, 95]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, trainable_token_indices=rows))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == count_lora_parameters(config, 4, targets, trainable_token_rows=2)
    with pytest.raises(ValueError, match="query_key_value"):
        count_lora_parameters(config, 4, ["q_proj", "query_key_value"])


@pytest.mark.parametrize("variant", ["dense", "moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_estimate_matches_the_tensors_autograd_saves(variant, dtype):
    """Count the bytes of every tensor autograd keeps for backward (parameters excluded, shared storage once) in a
    tiny model's forward, against the estimate without the logits (the head's logits and their gradient are not
    saved tensors)."""
    torch.manual_seed(0)
    config = MDLMConfig(**TINY, **TINY_VARIANTS[variant])
    model = MDLMForMaskedLM(config).to(dtype)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch, length = 2, 64
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=torch.randint(0, 94, (batch, length)))
    per_token = activation_bytes_per_token(config, dtype)
    logits = 2 * config.vocab_size * (4 if dtype == torch.float32 else 2)
    estimated = batch * length * (sum(per_token["layers"]) + per_token["head"] - logits)
    assert sum(saved.values()) == pytest.approx(estimated, rel=0.04)  # docs/training.md: within 4%


def test_estimates_add_up():
    config = TABLE.mdlm_configs()["LLaDA-8B"]
    n = count_parameters(config).total
    full = estimate_finetune_memory(config, method="full", dtype="bfloat16")
    assert full.states == 16 * n  # bf16 weights + bf16 grads + fp32 master + two fp32 moments
    assert estimate_finetune_memory(config, method="full", dtype="float32").states == 16 * n
    ckpt = estimate_finetune_memory(config, method="full", gradient_checkpointing=True)
    assert ckpt.states == full.states and ckpt.activations < full.activations / 4
    lora = estimate_finetune_memory(config, method="lora", lora_r=16)
    assert lora.weights == 2 * n
    assert lora.trainable_parameters == count_lora_parameters(config, 16, trainable_token_rows=2)
    assert lora.states - lora.weights == 16 * lora.trainable_parameters
    assert lora.activations == full.activations
    longer = estimate_finetune_memory(config, method="full", canvas_length=2048, batch_size=2)
    assert longer.activations == pytest.approx(4 * full.activations)
    assert 100 < full.total / GIB < 150 and 15 < lora.total / GIB < 30
    with pytest.raises(ValueError, match="method"):
        estimate_finetune_memory(config, method="qlora")
