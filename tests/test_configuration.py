"""Tests of `hf_mdlm/configuration_mdlm.py`: MDLMConfig refuses contradictions and malformed fields, naming
them, and round-trips through save_pretrained / from_pretrained."""

import pytest

from hf_mdlm import MDLMConfig
from conftest import tiny_config


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(mask_token_id=96), "mask_token_id"),
        (dict(slack_token_id=-1), "slack_token_id"),
        (dict(eos_token_id=1000), "eos_token_id"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(slack_token_id=95), "slack_token_id"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(eos_token_id=95), "eos_token_id must differ from mask_token_id"),
        (dict(eos_token_id=[93, 95]), "eos_token_id must differ from mask_token_id"),
        (dict(head_dim=4.0), "head_dim must be a positive integer"),
        (dict(head_dim=0), "head_dim must be a positive integer"),
        (dict(initializer_range=-0.02), "initializer_range"),
        (dict(num_experts=4, moe_intermediate_size=8, shared_expert_intermediate_size=-8),
         "shared_expert_intermediate_size"),
    ],
)
def test_config_rejects_contradictions(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize("fixture", ["llada-tiny", "dream-tiny"])
def test_another_familys_checkpoint_is_refused_not_loaded_as_a_random_model(fixture):
    """transformers only warned: LLaDA's folder (no model_type) loaded as a 12-layer model of random weights, Dream's
    dropped its q/k/v biases and its next-token alignment. The error says to convert it."""
    from conftest import FIXTURES
    from hf_mdlm import MDLMForMaskedLM

    for load in (MDLMConfig.from_pretrained, MDLMForMaskedLM.from_pretrained):
        with pytest.raises(ValueError, match="not an hf_mdlm model. Convert .*python -m hf_mdlm.convert"):
            load(FIXTURES / fixture)


def test_config_round_trip(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    loaded = MDLMConfig.from_pretrained(tmp_path)
    for field in ("mask_token_id", "slack_token_id", "num_key_value_heads", "head_dim", "rope_theta"):
        assert getattr(loaded, field) == getattr(config, field)


@pytest.mark.parametrize("overrides,message", [
    (dict(partial_rotary_factor=0.375), r"partial_rotary_factor=0\.375 must be in \(0, 1\] and turn an even, non-zero"),
    (dict(partial_rotary_factor=0.1), r"partial_rotary_factor=0\.1 must be in \(0, 1\] and turn an even, non-zero"),
    (dict(prediction_alignment="previous"), "prediction_alignment must be one of"),
    (dict(num_experts=4, num_experts_per_tok=5, moe_intermediate_size=8), r"num_experts_per_tok=5 must be in \[1, num_experts=4\]"),
    (dict(num_experts=4), "moe_intermediate_size must be a positive integer with num_experts > 0"),
    (dict(num_experts=4, moe_intermediate_size=8, moe_layers=[0, 9]), r"moe_layers holds \[9\], not layer indices"),
    (dict(num_experts=-1), "num_experts must be 0 or a positive integer"),
    (dict(num_experts=4, moe_intermediate_size=8, router_score_function="tanh"),
     "router_score_function must be 'softmax' or 'sigmoid'"),
    (dict(num_experts=4, moe_intermediate_size=8, router_groups=3), "router_groups=3 must divide num_experts=4"),
    (dict(num_experts=4, moe_intermediate_size=8, router_groups=4), "into groups of at least two experts"),
    (dict(num_experts=4, moe_intermediate_size=8, num_experts_per_tok=3, router_groups=2, router_topk_groups=1),
     r"router_topk_groups=1 must be in \[1, router_groups=2\] and hold at least num_experts_per_tok=3"),
    (dict(block_size=0), "block_size must be a positive integer or None"),
])
def test_config_fields_are_checked_by_name(overrides, message):
    values = {**tiny_config().to_dict(), **overrides}
    with pytest.raises(ValueError, match=message):
        MDLMConfig(**{k: v for k, v in values.items() if k in MDLMConfig().to_dict() or k in overrides})
