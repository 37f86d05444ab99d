"""SDAR (block diffusion, Qwen3): its tiny fixture, made with the family's own code (see its README), converted and
compared with the family's logits under its block mask and its generations ("sequential" and "low_confidence_dynamic"
remasking); then padded batches, each row getting what it gets alone."""

import pytest
import torch

from conftest import (
    SDAR_TINY as SDAR,
    block_fixture_reference,
    converted,
    block_size_set,
    padded_fixture_rows_match_alone,
)


@pytest.fixture(scope="module")
def sdar(tmp_path_factory):
    return converted(tmp_path_factory, SDAR)


def test_the_family_is_detected_and_its_sampling_defaults_written(sdar):
    from hf_mdlm.convert.families import folder_family

    assert folder_family(SDAR) == "sdar" and sdar.config.block_size == 4
    assert sdar.config.prediction_alignment == "same_token" and sdar.config.qk_norm
    generation = sdar.generation_config
    assert (generation.block_alignment, generation.schedule, generation.block_length) == ("absolute", "block", 4)
    assert (generation.threshold, generation.temperature) == (0.85, 1.0)


@pytest.mark.parametrize("block", [4, 8])
def test_sdar_logits_match_the_family_under_its_block_mask(sdar, block):
    ref, _ = block_fixture_reference(SDAR)
    with block_size_set(sdar, block) as model, torch.no_grad():
        ours = model(input_ids=ref["input_ids"]).logits
    assert (ours - ref[f"logits_block{block}"]).abs().max() < 1e-4


def _sdar_settings(case):
    blocks = -(-case["gen_length"] // case["block_length"])
    dynamic = case["remasking_strategy"] == "low_confidence_dynamic"
    return dict(max_new_tokens=case["gen_length"], block_length=case["block_length"], block_alignment="absolute",
                schedule="block", steps=case["denoising_steps"] * blocks, temperature=0.0, top_k=case["top_k"],
                remasking="low_confidence" if dynamic else "left_to_right",
                threshold=case.get("confidence_threshold") if dynamic else None)


@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_sdar_generations_match_the_family_token_for_token(sdar, kv_cache):
    ref, cases = block_fixture_reference(SDAR)
    prompts = ref["gen_prompts"]
    for case in cases:
        prompt = prompts[case["prompt_row"]][None]
        with block_size_set(sdar, case["block_length"]) as model:
            out = model.generate(prompt, kv_cache=kv_cache, **_sdar_settings(case))
        expected = ref[f"{case['name']}_output"][0]  # the whole canvas, rounded up to whole blocks
        length = prompt.shape[1] + case["gen_length"]
        assert torch.equal(out[0], expected[:length]), case


@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_a_padded_batch_gives_each_row_what_it_gets_alone(sdar, kv_cache):
    """The family's sampler takes one prompt; ours takes a left-padded batch whose rows have their own block
    boundaries (prompt lengths 10, 6, 9 and 3 fall at different offsets in blocks of 4)."""
    padded_fixture_rows_match_alone(sdar, SDAR, 317, kv_cache=kv_cache)
