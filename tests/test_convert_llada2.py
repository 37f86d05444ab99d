"""LLaDA2 (block diffusion, MoE): its tiny fixture, made with the family's own code (see its README), converted and
compared with the family's logits under its block mask and its greedy generations; then what the family's sampler
cannot do, padded batches, each row getting what it gets alone."""

import pytest
import torch

from conftest import (
    LLADA2_TINY as LLADA2,
    block_fixture_reference,
    converted,
    block_size_set,
    padded_fixture_rows_match_alone,
)

LLADA2_MASK, LLADA2_EOS, LLADA2_PAD = 319, 317, 318


@pytest.fixture(scope="module")
def llada2(tmp_path_factory):
    return converted(tmp_path_factory, LLADA2, mask_token_id=LLADA2_MASK)


def test_the_family_is_detected_and_its_router_and_sampling_defaults_written(llada2):
    from hf_mdlm.convert.families import folder_family

    assert folder_family(LLADA2) == "llada2" and llada2.config.block_size == 32
    generation = llada2.generation_config
    assert (generation.block_alignment, generation.schedule, generation.block_length) == ("absolute", "block", 32)
    assert (generation.threshold, generation.temperature) == (0.95, 0.0)
    assert llada2.config.router_score_function == "sigmoid" and not llada2.config.expert_bias_in_weights
    assert llada2.config.moe_layers == [1] and llada2.config.routed_scaling_factor == 2.5
    assert (llada2.config.router_groups, llada2.config.router_topk_groups) == (4, 2)


@pytest.mark.parametrize("block", [4, 8])
def test_llada2_logits_match_the_family_under_its_block_mask(llada2, block):
    ref, _ = block_fixture_reference(LLADA2)
    ids = ref["input_ids"]
    with block_size_set(llada2, block) as model, torch.no_grad():
        ours = model(input_ids=ids).logits  # the model's own block-causal mask (block_size)
        bidirectional = model(input_ids=ids, attention_mask=torch.ones(1, 1, 16, 16, dtype=torch.bool).expand(
            2, 1, 16, 16)).logits
    assert (ours - ref[f"logits_block{block}"]).abs().max() < 1e-4
    assert (bidirectional - ref["logits_bidirectional"]).abs().max() < 1e-4


def _llada2_settings(case):
    """The family's generate arguments as ours: `steps` there is per block."""
    blocks = -(-case["gen_length"] // case["block_length"])
    threshold = case["threshold"] if case["threshold"] <= 1 else None  # above 1 nothing passes: the plain schedule
    return dict(max_new_tokens=case["gen_length"], block_length=case["block_length"], block_alignment="absolute",
                schedule="block", steps=case["steps"] * blocks, threshold=threshold, temperature=0.0)


def _until_eos(tokens, eos):
    """LLaDA2's generate returns the tokens up to its first EOS, included."""
    tokens = tokens.tolist()
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_llada2_generations_match_the_family_token_for_token(llada2, kv_cache):
    ref, cases = block_fixture_reference(LLADA2)
    prompts = ref["gen_prompts"]
    for case in cases:
        prompt = prompts[case["prompt_row"]][None]
        with block_size_set(llada2, case["block_length"]) as model:
            out = model.generate(prompt, kv_cache=kv_cache, **_llada2_settings(case))
        expected = ref[f"{case['name']}_output"][0].tolist()
        assert _until_eos(out[0, prompt.shape[1]:], LLADA2_EOS) == expected, case


@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_a_padded_batch_gives_each_row_what_it_gets_alone(llada2, kv_cache):
    """The family's sampler takes one prompt; ours takes a left-padded batch whose rows have their own block
    boundaries (prompt lengths 11, 6, 9 and 3 fall at different offsets in blocks of 4)."""
    padded_fixture_rows_match_alone(llada2, LLADA2, LLADA2_PAD, kv_cache=kv_cache)


def test_a_block_model_refuses_other_blocks_and_the_cache_is_exact(llada2):
    ref, _ = block_fixture_reference(LLADA2)
    prompt = ref["gen_prompts"][:1]
    with pytest.raises(ValueError, match="block_alignment='absolute' and block_length=32"):
        llada2.generate(prompt, max_new_tokens=8, block_length=8, block_alignment="absolute")
    with pytest.raises(ValueError, match="block_alignment='absolute'"):
        llada2.generate(prompt, max_new_tokens=32, block_length=32, block_alignment="canvas")
    # Defaults from the model: its own blocks; a cache over finished blocks changes nothing, with fewer positions run.
    settings = dict(max_new_tokens=40, threshold=0.6, return_dict_in_generate=True)
    exact = llada2.generate(prompt, **settings)
    for mode in ("prefix", "dual"):
        cached = llada2.generate(prompt, kv_cache=mode, **settings)
        assert torch.equal(cached.sequences, exact.sequences), mode
        assert cached.num_positions < exact.num_positions
