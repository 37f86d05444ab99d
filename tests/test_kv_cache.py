"""KV caches: the model's cache semantics against full forwards, and cached sampling against Fast-dLLM's own
prefix/dual-cache samplers on the llada-tiny fixture (tests/fixtures/llada-tiny/README.md, "KV-cache cases")."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

from hf_mdlm import MDLMForMaskedLM
from conftest import LLADA_TINY
from test_generation import EOS, MASK, PROMPTS, confident_model, left_pad, make_model

CASES = json.loads((LLADA_TINY / "cache_cases.json").read_text())
MODES = {"generate": None, "prefix_cache": "prefix", "dual_cache": "dual"}


@pytest.fixture(scope="module")
def llada_model(llada_converted):
    return MDLMForMaskedLM.from_pretrained(llada_converted).eval()


# ---------------------------------------------------------------------------------------------------------------
# The model


def _canvas(batch=2, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 90, (batch, length), generator=g)


def test_full_forward_caches_every_layer_and_position():
    model = make_model()
    ids = _canvas()
    out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, DynamicCache) and len(cache.layers) == model.config.num_hidden_layers
    for layer in cache.layers:
        assert layer.keys.shape == (2, model.config.num_key_value_heads, 20, model.config.head_dim)
    assert model(input_ids=ids).past_key_values is None  # no cache unless asked for


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_a_slice_against_a_cache_of_the_same_canvas_equals_the_full_forward(padded):
    """With an unchanged canvas, prefix (append, not stored) and dual (overwrite) calls reproduce the full logits."""
    model = make_model()
    ids = _canvas()
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :5] = 0
    full = model(input_ids=ids, attention_mask=mask, use_cache=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    start, stop = 8, 14
    prefix = DynamicCache()
    for i, layer in enumerate(full.past_key_values.layers):
        prefix.update(layer.keys[:, :, :start], layer.values[:, :, :start], i)
    out = model(input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[:, start:],
                past_key_values=prefix, use_cache=False, cache_position=torch.arange(start, 20))
    torch.testing.assert_close(out.logits, full.logits[:, start:], atol=1e-5, rtol=1e-5)
    assert prefix.get_seq_length() == start  # read-only
    dual = model(input_ids=ids[:, start:stop], attention_mask=mask, position_ids=positions[:, start:stop],
                 past_key_values=full.past_key_values, use_cache=True, cache_position=torch.arange(start, stop))
    torch.testing.assert_close(dual.logits, full.logits[:, start:stop], atol=1e-5, rtol=1e-5)


def test_dual_overwrite_stores_the_fresh_keys_of_the_slice():
    """Layer 0's keys depend only on the tokens and positions: after overwriting a slice with new tokens, the cache
    holds exactly the layer-0 keys a full forward of the new canvas computes there, and the old keys elsewhere."""
    model = make_model()
    ids = _canvas()
    cache = model(input_ids=ids, use_cache=True).past_key_values
    old = cache.layers[0].keys.clone()
    new_ids = ids.clone()
    new_ids[:, 8:14] = _canvas(seed=1)[:, :6]
    model(input_ids=new_ids[:, 8:14], past_key_values=cache, use_cache=True, cache_position=torch.arange(8, 14))
    reference = model(input_ids=new_ids, use_cache=True).past_key_values.layers[0].keys
    torch.testing.assert_close(cache.layers[0].keys[:, :, 8:14], reference[:, :, 8:14], atol=1e-6, rtol=1e-6)
    assert torch.equal(cache.layers[0].keys[:, :, :8], old[:, :, :8])
    assert torch.equal(cache.layers[0].keys[:, :, 14:], old[:, :, 14:])


def test_cache_errors_are_clear():
    model = make_model()
    cache = model(input_ids=_canvas(), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="KV cache holds a batch of 2 rows, the input has 3"):
        model(input_ids=_canvas(3)[:, :4], past_key_values=cache, cache_position=torch.arange(4))
    with pytest.raises(ValueError, match=r"holds positions \[0, 20\): it cannot serve positions \[18, 22\)"):
        model(input_ids=_canvas()[:, :4], past_key_values=cache, cache_position=torch.arange(18, 22))
    with pytest.raises(TypeError, match="past_key_values must be a transformers Cache"):
        model(input_ids=_canvas(), past_key_values=[(torch.zeros(1), torch.zeros(1))])


# ---------------------------------------------------------------------------------------------------------------
# Cached sampling: Fast-dLLM's outputs on the fixture


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_fast_dllm(llada_model, case):
    prompts = load_file(LLADA_TINY / "reference_outputs.safetensors")["gen_prompts"]
    expected = load_file(LLADA_TINY / "cache_outputs.safetensors")[case["name"]]
    settings = dict(steps=case["steps"], max_new_tokens=case["gen_length"], block_length=case["block_length"],
                    temperature=case["temperature"], remasking=case["remasking"], threshold=case["threshold"],
                    mask_token_id=case["mask_token_id"], kv_cache=MODES[case["function"]],
                    return_dict_in_generate=True)
    batched = llada_model.generate(prompts, **settings)
    torch.testing.assert_close(batched.sequences, expected, rtol=0, atol=0)
    for row in range(2):  # Fast-dLLM runs one row at a time: so do we, to compare the model calls
        alone = llada_model.generate(prompts[row:row + 1], **settings)
        torch.testing.assert_close(alone.sequences, expected[row:row + 1], rtol=0, atol=0)
        calls = case["model_calls"][row]
        if case["threshold"] is None:
            assert alone.num_model_calls == calls
        else:  # Fast-dLLM runs one more cached call when the block-start forward already filled the block
            blocks = case["gen_length"] // case["block_length"]
            assert calls - blocks <= alone.num_model_calls <= calls


def test_cached_sampling_runs_fewer_positions(llada_model):
    prompts = load_file(LLADA_TINY / "reference_outputs.safetensors")["gen_prompts"]
    settings = dict(steps=32, max_new_tokens=32, block_length=8, return_dict_in_generate=True)
    runs = {mode: llada_model.generate(prompts, kv_cache=mode, **settings) for mode in (None, "prefix", "dual")}
    canvas = prompts.shape[1] + 32
    assert runs[None].num_positions == 32 * 2 * canvas
    assert runs["dual"].num_positions < runs["prefix"].num_positions < runs[None].num_positions
    # dual: per block one full canvas, then 7 steps of 8 positions, for 2 rows
    assert runs["dual"].num_positions == 2 * 4 * (canvas + 7 * 8)


# ---------------------------------------------------------------------------------------------------------------
# Batches and sampler options


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("settings", [
    dict(temperature=0.0),
    dict(temperature=0.9, top_k=20, remasking="random"),
    dict(temperature=0.0, cfg_scale=1.0),
    dict(temperature=0.0, threshold=0.9, model="confident"),
    dict(temperature=0.7, shift_rate=0.3),
    dict(temperature=0.0, stop_at_eos=True),
    dict(temperature=0.0, remasking="entropy", model="confident"),
    dict(temperature=0.0, remasking="margin", suppress_slack=True, eos_penalty=1.0),
], ids=["greedy", "random", "cfg", "threshold", "shift", "stop-at-eos", "entropy", "margin-eos"])
def test_cached_row_does_not_depend_on_the_batch(mode, settings):
    """A prompt sampled with a cache alone and inside a left-padded ragged batch gives the same tokens. (Entropy
    scores of the random model's near-uniform predictions tie up to float rounding, cached or not: the entropy case
    uses the peaked model.)"""
    settings = dict(settings)
    model = confident_model(60.0) if settings.pop("model", None) else make_model()
    ids, mask = left_pad(PROMPTS)
    common = dict(max_new_tokens=16, steps=16, block_length=4, kv_cache=mode, generator=list(range(len(PROMPTS))),
                  **settings)
    batch = model.generate(ids, attention_mask=mask, **common)
    for i, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), **{**common, "generator": [i]})
        assert torch.equal(batch[i, ids.shape[1]:], alone[0, len(prompt):]), (i, batch[i], alone[0])
        assert not (batch[i, ids.shape[1]:] == MASK).any()


def test_streaming_and_history_with_a_cache():
    model = make_model()
    received = []

    class Streamer:
        def put(self, value):
            received.append(value.clone())

        def end(self):
            received.append("end")

    out = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, steps=8, block_length=4, kv_cache="dual",
                         streamer=Streamer(), return_dict_in_generate=True, output_history=True)
    assert received[-1] == "end" and len(received) == 4  # prompt, two blocks, end
    assert torch.equal(torch.cat([received[1], received[2]]), out.sequences[0, len(PROMPTS[0]):])
    assert len(out.history) == out.num_model_calls == 8


def test_unknown_kv_cache_mode_is_refused_before_any_model_call():
    model = make_model()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="kv_cache must be None, 'prefix' or 'dual', got 'both'"):
        model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=4, kv_cache="both")
    assert calls == []
    assert EOS != MASK
