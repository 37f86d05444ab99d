"""Dream and LLaDA-MoE: converted checkpoints reproduce their own code's logits and deterministic generations
(tests/fixtures/dream-tiny/README.md, tests/fixtures/llada-moe-tiny/README.md)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_mdlm import MDLMForMaskedLM
from hf_mdlm.convert import convert_dream_checkpoint, convert_llada_moe_checkpoint
from conftest import FIXTURES

DREAM, MOE = FIXTURES / "dream-tiny", FIXTURES / "llada-moe-tiny"
DREAM_ALGS = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    out = tmp_path_factory.mktemp("dream")
    convert_dream_checkpoint(DREAM, out)
    return MDLMForMaskedLM.from_pretrained(out).eval()


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    out = tmp_path_factory.mktemp("llada-moe")
    convert_llada_moe_checkpoint(MOE, out, mask_token_id=303)
    return MDLMForMaskedLM.from_pretrained(out).eval()


@pytest.mark.parametrize("family", ["dream", "moe"])
def test_logits_equal_the_reference(family, request):
    model = request.getfixturevalue(family)
    ref = load_file((DREAM if family == "dream" else MOE) / "reference_outputs.safetensors")
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
        padded = model(input_ids=ref["input_ids_padded"], attention_mask=ref["attention_mask"]).logits
    assert (logits - ref["logits"]).abs().max() < 1e-4
    real = ref["attention_mask"].bool()
    assert (padded[real] - ref["logits_padded"][real]).abs().max() < 1e-4


def test_moe_router_logits_equal_the_reference(moe):
    ref = load_file(MOE / "reference_outputs.safetensors")
    seen = {}
    for index in (1, 2):
        moe.model.layers[index].mlp.router.register_forward_hook(
            lambda module, args, out, index=index: seen.__setitem__(index, out))
    with torch.no_grad():
        moe(input_ids=ref["input_ids"])
    for index in (1, 2):
        assert (seen[index] - ref[f"router_logits_layer{index}"]).abs().max() < 1e-4
    assert type(moe.model.layers[0].mlp).__name__ == "MDLMMLP"  # moe_layer_freq [0, 1, 1]


@pytest.mark.parametrize("case", [c for c in json.loads((DREAM / "generation_cases.json").read_text())
                                  if not c.get("rng_dependent")], ids=lambda c: c["name"])
def test_dream_generations_match(dream, case):
    ref = load_file(DREAM / "reference_outputs.safetensors")
    prompts = ref[case["prompts"]]
    mask = None if case["attention_mask"] == "ones" else ref[case["attention_mask"]]
    out = dream.generate(prompts, attention_mask=mask, max_new_tokens=case["max_new_tokens"], steps=case["steps"],
                         remasking=DREAM_ALGS[case["alg"]], top_p=case["top_p"], top_k=case["top_k"],
                         temperature=case["temperature"])
    torch.testing.assert_close(out, ref[f"{case['name']}_output"], rtol=0, atol=0)
    # The schedule and the shift came from the saved configs, not from the call.
    assert dream.generation_config.schedule == "dream" and dream.config.prediction_alignment == "next_token"


@pytest.mark.parametrize("case", json.loads((MOE / "generation_cases.json").read_text()), ids=lambda c: c["name"])
def test_llada_moe_generations_match(moe, case):
    ref = load_file(MOE / "reference_outputs.safetensors")
    prompts = ref[case["prompts"]]
    mask = torch.ones_like(prompts) if case["attention_mask"] == "ones" else ref[case["attention_mask"]]
    out = moe.generate(prompts, attention_mask=mask, max_new_tokens=case["gen_length"], steps=case["steps"],
                       block_length=case["block_length"], temperature=case["temperature"],
                       cfg_scale=case["cfg_scale"], remasking=case["remasking"], mask_token_id=case["mask_token_id"])
    torch.testing.assert_close(out, ref[f"{case['name']}_output"], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["dream", "moe"])
@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_rows_do_not_depend_on_the_batch(family, kv_cache, request):
    model = request.getfixturevalue(family)
    prompts = [[5, 17, 33, 2], [40, 41, 7, 8, 9, 60, 61], [12]]
    width = max(map(len, prompts))
    pad = model.config.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    settings = dict(max_new_tokens=8, steps=8, block_length=8, temperature=0.0, kv_cache=kv_cache)
    batch = model.generate(ids, attention_mask=mask, **settings)
    for i, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), **settings)
        assert torch.equal(batch[i, width:], alone[0, len(prompt):]), i


def test_original_folders_are_converted_once_on_the_fly(tmp_path, monkeypatch, caplog):
    """generate.py / evaluate.py / finetune.py / the lm-eval adapter take a Dream (LLaDA, LLaDA-MoE, causal LM)
    folder as it is: converted once into the cache, reused after."""
    import logging

    from hf_mdlm.data import bundled_corpus_files
    from hf_mdlm.loading import load_for_inference

    monkeypatch.setenv("HF_MDLM_CACHE", str(tmp_path / "cache"))
    tokenizer = bundled_corpus_files()["tokenizer"]
    with caplog.at_level(logging.INFO, logger="hf_mdlm.convert.families"):
        model, _ = load_for_inference(str(DREAM), tokenizer=str(tokenizer))
        again, _ = load_for_inference(str(DREAM), tokenizer=str(tokenizer))
    assert "converting the dream checkpoint" in caplog.text and "using the conversion" in caplog.text
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1
    ref = load_file(DREAM / "reference_outputs.safetensors")
    with torch.no_grad():
        assert (model(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max() < 1e-4
    assert again.config.prediction_alignment == "next_token" and again.generation_config.schedule == "dream"


def test_an_empty_prompt_on_a_next_token_model_reads_position_0_from_itself():
    """As Dream: with nothing before it, position 0's prediction is the model's own output at position 0."""
    from conftest import tiny_config

    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(prediction_alignment="next_token")).eval()
    mask_id = model.config.mask_token_id
    out = model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=8, steps=8,
                         return_dict_in_generate=True, output_history=True)
    with torch.no_grad():
        raw = model(input_ids=torch.full((1, 8), mask_id)).logits[0]
    aligned = torch.cat([raw[:1], raw[:-1]])
    proposals = aligned.clone()
    proposals[:, mask_id] = float("-inf")  # never proposed; its probability still counts in the confidence
    token = proposals.argmax(-1)
    confidence = torch.softmax(aligned, -1).gather(-1, token[:, None])[:, 0]
    position = int(confidence.argmax())
    first = out.history[0][0]
    assert (first != mask_id).sum() == 1 and first[position] == token[position]
