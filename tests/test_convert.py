import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_mdlm import MDLMForMaskedLM, convert_llada_checkpoint
from hf_mdlm.convert import llada_config_to_mdlm, main
from conftest import LLADA_TINY

REFERENCE = load_file(str(LLADA_TINY / "reference_outputs.safetensors"))


def test_converted_logits_equal_llada_reference(llada_converted):
    model = MDLMForMaskedLM.from_pretrained(llada_converted).eval()
    with torch.no_grad():
        logits = model(REFERENCE["input_ids"]).logits
    assert (logits - REFERENCE["logits"]).abs().max() < 1e-4


def test_converted_logits_equal_llada_reference_with_padding(llada_converted):
    model = MDLMForMaskedLM.from_pretrained(llada_converted).eval()
    mask = REFERENCE["attention_mask"]
    with torch.no_grad():
        logits = model(REFERENCE["input_ids_padded"], attention_mask=mask).logits
    real = mask.bool()
    assert (logits[real] - REFERENCE["logits_padded"][real]).abs().max() < 1e-4


def test_config_mapping(llada_converted):
    config = json.loads((llada_converted / "config.json").read_text())
    assert config["mask_token_id"] == 299 and config["eos_token_id"] == 298
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 96
    assert config["rope_theta"] == 500000.0 and config["tie_word_embeddings"] is False
    generation = json.loads((llada_converted / "generation_config.json").read_text())
    assert generation["mask_token_id"] == 299 and generation["block_length"] == 32
    assert {"configuration_mdlm.py", "modeling_mdlm.py", "generation_mdlm.py"} <= {
        p.name for p in llada_converted.iterdir()
    }


def test_sharded_checkpoint_and_cli(tmp_path):
    """A LLaDA checkpoint split over two shards converts shard by shard into the same model."""
    src = tmp_path / "sharded"
    src.mkdir()
    shutil.copy(LLADA_TINY / "config.json", src / "config.json")
    state = load_file(str(LLADA_TINY / "model.safetensors"))
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(src / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, part in halves.items() for k in part}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))

    main(["llada", str(src), str(tmp_path / "out"), "--dtype", "float32"])
    out = tmp_path / "out"
    assert (out / "model.safetensors.index.json").exists()
    for name in halves:  # one output shard per input shard: the conversion streams
        with safe_open(str(out / name), "pt") as f:
            assert len(list(f.keys())) == len(halves[name])
    model = MDLMForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (model(REFERENCE["input_ids"]).logits - REFERENCE["logits"]).abs().max() < 1e-4


def test_dtype_cast(tmp_path):
    convert_llada_checkpoint(LLADA_TINY, tmp_path, dtype="bfloat16")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16


@pytest.mark.parametrize(
    "field, value",
    [("block_type", "sequential"), ("alibi", True), ("layer_norm_type", "default"), ("include_bias", True),
     ("activation_type", "gelu"), ("rope", False), ("scale_logits", True)],
)
def test_unrepresentable_config_is_refused_naming_the_field(field, value):
    config = json.loads((LLADA_TINY / "config.json").read_text())
    config[field] = value
    with pytest.raises(ValueError, match=field):
        llada_config_to_mdlm(config)


def test_unknown_tensor_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    state = load_file(str(src / "model.safetensors"))
    state["model.transformer.blocks.0.mystery.weight"] = torch.zeros(2)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="mystery"):
        convert_llada_checkpoint(src, tmp_path / "out")


def test_missing_tensor_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    state = load_file(str(src / "model.safetensors"))
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        convert_llada_checkpoint(src, tmp_path / "out")


def test_never_overwrites_source():
    with pytest.raises(ValueError, match="differ"):
        convert_llada_checkpoint(LLADA_TINY, LLADA_TINY)
