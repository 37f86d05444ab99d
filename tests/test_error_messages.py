"""The error messages added for the new architecture fields, converters and sampler options, each checked once."""

import argparse
import json

import pytest
import torch

from hf_mdlm import MDLMConfig, MDLMForMaskedLM
from hf_mdlm.convert import a2d_config_to_mdlm, convert_checkpoint, dream_config_to_mdlm, llada_moe_config_to_mdlm
from conftest import FIXTURES, tiny_config


@pytest.mark.parametrize("overrides,message", [
    (dict(partial_rotary_factor=0.375), r"partial_rotary_factor=0\.375 must be in \(0, 1\] and turn an even, non-zero"),
    (dict(partial_rotary_factor=0.1), r"partial_rotary_factor=0\.1 must be in \(0, 1\] and turn an even, non-zero"),
    (dict(prediction_alignment="previous"), "prediction_alignment must be one of"),
    (dict(num_experts=4, num_experts_per_tok=5, moe_intermediate_size=8), r"num_experts_per_tok=5 must be in \[1, num_experts=4\]"),
    (dict(num_experts=4), "moe_intermediate_size must be a positive integer with num_experts > 0"),
    (dict(num_experts=4, moe_intermediate_size=8, moe_layers=[0, 9]), r"moe_layers holds \[9\], not layer indices"),
    (dict(num_experts=-1), "num_experts must be 0 or a positive integer"),
])
def test_config_fields_are_checked_by_name(overrides, message):
    values = {**tiny_config().to_dict(), **overrides}
    with pytest.raises(ValueError, match=message):
        MDLMConfig(**{k: v for k, v in values.items() if k in MDLMConfig().to_dict() or k in overrides})


def test_a_4d_mask_of_integers_is_refused():
    model = MDLMForMaskedLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="4D attention_mask must be boolean or floating point, got torch.int64"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule="maskgit"), "schedule must be one of"),
    (dict(schedule="dream", schedule_eps=1.5), r"schedule_eps must be in \(0, 1\)"),
])
def test_schedule_options_are_checked(kwargs, message):
    model = MDLMForMaskedLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=4, **kwargs)


def test_kv_cache_list_of_the_evaluation_cli():
    from hf_mdlm.cli import parse_kv_caches

    assert parse_kv_caches("none,prefix,dual") == ["prefix", "dual"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown kv_cache \['full'\]: expected prefix, dual"):
        parse_kv_caches("prefix,full")


def test_converter_config_errors_name_the_problem(tmp_path):
    moe = json.loads((FIXTURES / "llada-moe-tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match="names no mask token .* pass mask_token_id"):
        llada_moe_config_to_mdlm(moe)
    dream = json.loads((FIXTURES / "dream-tiny" / "config.json").read_text())
    with pytest.raises(ValueError, match="Dream config has no mask_token_id"):
        dream_config_to_mdlm({**dream, "mask_token_id": None})
    with pytest.raises(ValueError, match="A2D converts llama, qwen2, qwen3 causal LMs, not model_type='gpt2'"):
        a2d_config_to_mdlm({"model_type": "gpt2"}, 10, 1, 2)
    qwen3 = {"model_type": "qwen3", "hidden_act": "silu", "layer_types": ["full_attention", "sliding_attention"]}
    with pytest.raises(ValueError, match=r"'layer_types' has \['sliding_attention'\] layers"):
        a2d_config_to_mdlm(qwen3, 10, 1, 2)
    with pytest.raises(ValueError, match="no conversion for family 'mdlm'; converters: llada, llada-moe, dream, a2d"):
        convert_checkpoint(FIXTURES / "dream-tiny", tmp_path / "out", family="mdlm")
