"""Tests of the diffusion sampler (`hf_mdlm/generation_mdlm.py`): exactness against LLaDA's, Dream's, LLaDA-MoE's
and Fast-dLLM's own samplers on the fixtures (tests/fixtures/*/README.md), batching, schedules, EOS and slack, the
KV caches, streaming, validation, saving and post-processing."""

import json
import math
import logging
import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers.generation import BaseStreamer

from hf_mdlm import MDLMForMaskedLM, MDLMGenerationConfig
from hf_mdlm.generation_mdlm import MDLMGenerateOutput, MDLMGenerationMixin, shift_commits, strip_generation
from conftest import DREAM_TINY as DREAM
from conftest import LLADA_MOE_TINY as MOE
from conftest import EOS, LLADA_TINY, MASK, PAD, SLACK, make_model, make_tokenizer, tiny_config


class BiasedModel(MDLMForMaskedLM):
    """A tiny model with a constant added to some logits (to make tokens such as EOS or slack likely)."""

    logit_bias = None

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if self.logit_bias is not None:
            out.logits = out.logits + self.logit_bias
        return out


def boosted_model(token_ids, boost, seed=0):
    """A tiny model whose logits for `token_ids` are raised by `boost`."""
    torch.manual_seed(seed)
    model = BiasedModel(tiny_config()).eval()
    model.logit_bias = torch.zeros(model.config.vocab_size)
    model.logit_bias[token_ids] = boost
    return model


def confident_model(scale=100.0, seed=0):
    """A tiny model with peaked predictions (a large LM head), so that confidences can pass a threshold."""
    model = make_model(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def left_pad(prompts, pad=PAD):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


PROMPTS = [[5, 17, 33, 2], [40, 41, 7, 8, 9, 60, 61], [12], [70, 71, 72, 73, 74]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and much faster than on two busy ones on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# Exactness against LLaDA's reference sampler, Fast-dLLM's cached samplers, Dream's and LLaDA-MoE's samplers


@pytest.fixture(scope="module")
def llada_model(llada_converted):
    return MDLMForMaskedLM.from_pretrained(llada_converted).eval()


@pytest.mark.parametrize("case", json.loads((LLADA_TINY / "generation_cases.json").read_text()), ids=lambda c: c["name"])
def test_matches_llada_reference_sampler(llada_model, case):
    ref = load_file(LLADA_TINY / "reference_outputs.safetensors")
    prompts = ref["gen_prompts"]
    out = llada_model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        steps=case["steps"],
        max_new_tokens=case["gen_length"],
        block_length=case["block_length"],
        temperature=case["temperature"],
        cfg_scale=case["cfg_scale"],
        remasking=case["remasking"],
        mask_token_id=case["mask_token_id"],
        return_dict_in_generate=True,
    )
    assert isinstance(out, MDLMGenerateOutput)
    torch.testing.assert_close(out.sequences, ref[f"{case['name']}_output"], rtol=0, atol=0)
    # One model call per step (guidance is batched into the same call).
    assert out.num_model_calls == case["steps"]


CASES = json.loads((LLADA_TINY / "cache_cases.json").read_text())
MODES = {"generate": None, "prefix_cache": "prefix", "dual_cache": "dual"}


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


DREAM_ALGS = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


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


# ---------------------------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.0),
        dict(temperature=0.0, block_length=4, steps=8, cfg_scale=1.0),
        dict(temperature=0.9, top_k=20, top_p=0.9),
        dict(temperature=0.7, remasking="random", block_length=4),
        dict(temperature=0.0, threshold=0.9, block_length=8, model="confident"),
        dict(temperature=0.8, shift_rate=0.3, block_length=4),
    ],
    ids=["greedy", "greedy-blocks-cfg", "sampled", "random-remasking", "threshold", "shift"],
)
def test_row_does_not_depend_on_the_batch(settings):
    """A prompt generated alone and inside a left-padded ragged batch gives the same tokens."""
    settings = dict(settings)
    # (The confident model makes rows finish their blocks at different steps: rows then leave the forward.)
    model = confident_model(60.0) if settings.pop("model", None) else make_model()
    settings.setdefault("steps", 16)
    ids, mask = left_pad(PROMPTS)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=16, generator=1234, **settings)
    width = ids.shape[1]
    # Row 0 alone with the same seed (seeds are derived per prompt index).
    alone = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=16, generator=1234, **settings)
    assert torch.equal(alone[0, len(PROMPTS[0]):], batch[0, width:])
    # Every row alone, with per-prompt seeds given as a list, in another order.
    seeds = [11, 22, 33, 44]
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=16, generator=seeds, **settings)
    for i in (3, 1, 2):
        alone = model.generate(torch.tensor([PROMPTS[i]]), max_new_tokens=16, generator=[seeds[i]], **settings)
        assert torch.equal(alone[0, len(PROMPTS[i]):], batch[i, width:]), f"row {i}"
    assert not (batch == MASK).any()


def test_seed_controls_sampling():
    model = make_model()
    ids = torch.tensor([PROMPTS[0]])
    a = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0, generator=5)
    b = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0, generator=5)
    c = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0, generator=6)
    d = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0, generator=torch.Generator().manual_seed(5))
    e = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d, e)
    torch.manual_seed(3)
    f = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0)
    torch.manual_seed(3)
    g = model.generate(ids, max_new_tokens=16, steps=16, temperature=1.0)
    assert torch.equal(f, g)


def test_num_return_sequences():
    model = make_model()
    ids, mask = left_pad(PROMPTS[:2])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=12, num_return_sequences=3,
                         temperature=1.0, generator=0)
    assert out.shape == (6, ids.shape[1] + 12)
    assert torch.equal(out[:, : ids.shape[1]], ids.repeat_interleave(3, dim=0))
    copies = out[:3, ids.shape[1]:]
    assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=12, num_return_sequences=3)
    single = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=12)
    assert torch.equal(greedy, single.repeat_interleave(3, dim=0))


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
    dict(temperature=0.0, factor=2.0, model="confident"),
    dict(temperature=0.8, top_p=0.9, kv_cache_refresh=3),
    dict(temperature=0.8, schedule="dream", shift_rate=0.3),
], ids=["greedy", "random", "cfg", "threshold", "shift", "stop-at-eos", "entropy", "margin-eos", "factor", "refresh",
        "dream-shift"])
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


# ---------------------------------------------------------------------------------------------------------------
# Schedules


def test_step_callback_history_and_schedule():
    """Each step commits the scheduled number of tokens, inside its block; one callback per step."""
    model = make_model()
    ids = torch.tensor([PROMPTS[1]])
    P = ids.shape[1]
    calls = []
    out = model.generate(ids, max_new_tokens=12, block_length=6, steps=4, output_history=True,
                         return_dict_in_generate=True, step_callback=lambda step, canvas: calls.append((step, canvas)))
    assert [s for s, _ in calls] == [0, 1, 2, 3] and out.num_model_calls == 4
    assert len(out.history) == 4
    assert all(torch.equal(h, c) for h, (_, c) in zip(out.history, calls))
    assert torch.equal(out.history[-1], out.sequences)
    previous = torch.cat([ids, torch.full((1, 12), MASK)], dim=1)
    for step, canvas in calls:
        new = (previous == MASK) & (canvas != MASK)
        assert int(new.sum()) == 3  # 6 masked positions over 2 steps per block
        block = step // 2
        assert int(new[0, P + 6 * block:P + 6 * (block + 1)].sum()) == 3  # inside the current block
        assert torch.equal(canvas[previous != MASK], previous[previous != MASK])  # commits are final
        previous = canvas
    assert not (out.sequences == MASK).any()


class ConstantModel(MDLMForMaskedLM):
    """Every position gets the same logits: every masked position ties with every other one."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import MaskedLMOutput

        logits = torch.linspace(0.0, 1.0, self.config.vocab_size)
        return MaskedLMOutput(logits=logits.expand(*input_ids.shape, -1).clone())


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_ties_go_to_the_leftmost_position(threshold):
    torch.manual_seed(0)
    model = ConstantModel(tiny_config()).eval()
    ids, mask = left_pad(PROMPTS)
    canvases = []
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=4, block_length=6, threshold=threshold,
                         step_callback=lambda s, c: canvases.append(c))
    P = ids.shape[1]
    for canvas in canvases:
        gen = canvas[:, P:] != MASK
        # Committed positions always form a prefix of the generated region.
        assert torch.equal(gen, gen.long().cumprod(dim=-1).bool())
    alone = model.generate(torch.tensor([PROMPTS[2]]), max_new_tokens=12, steps=4, block_length=6, threshold=threshold)
    assert torch.equal(alone[0, 1:], out[2, P:])


def test_more_steps_than_tokens_skips_empty_steps():
    model = make_model()
    ids = torch.tensor([PROMPTS[0]])
    out = model.generate(ids, max_new_tokens=8, steps=16, return_dict_in_generate=True)
    assert out.num_model_calls == 8
    assert torch.equal(out.sequences, model.generate(ids, max_new_tokens=8, steps=8))


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


def test_threshold_decoding_commits_at_least_one_and_saves_calls():
    model = confident_model()
    ids, mask = left_pad(PROMPTS)
    canvases = []
    out = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8, threshold=0.9,
                         return_dict_in_generate=True, step_callback=lambda s, c: canvases.append(c))
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8,
                           return_dict_in_generate=True)
    assert plain.num_model_calls == 16
    assert out.num_model_calls < 16
    assert len(canvases) == out.num_model_calls
    previous = torch.cat([ids, torch.full((4, 16), MASK)], dim=1)
    for canvas in canvases:
        newly = ((previous == MASK) & (canvas != MASK)).sum(-1)
        still_open = (previous == MASK).any(-1)
        assert (newly[still_open] >= 1).all()
        previous = canvas
    assert not (out.sequences == MASK).any()
    # The step budget is still an upper bound: with an unreachable score (the untrained model's probabilities never
    # reach 1.0) the schedule alone decides, so it takes exactly `steps` calls.
    capped = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=4, block_length=8, threshold=1.0,
                            return_dict_in_generate=True)
    assert capped.num_model_calls == 4 and not (capped.sequences == MASK).any()


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "entropy", "margin"])
def test_remasking_strategies_fill_the_canvas(remasking):
    model = make_model()
    ids, mask = left_pad(PROMPTS[:2])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, steps=4, remasking=remasking, generator=0)
    assert not (out[:, ids.shape[1]:] == MASK).any()


def test_entropy_and_margin_order_commits_differently_from_low_confidence():
    model = make_model()
    ids = torch.tensor([PROMPTS[1]])
    outs = {r: model.generate(ids, max_new_tokens=16, steps=16, remasking=r) for r in ("low_confidence", "entropy", "margin")}
    assert not torch.equal(outs["low_confidence"], outs["entropy"])
    assert not torch.equal(outs["low_confidence"], outs["margin"])


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = make_model()
    ids, mask = left_pad(PROMPTS[:3])
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=6)
    hot = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=6, temperature=5.0, generator=0)
    assert not torch.equal(hot, greedy)
    for filt in (dict(top_k=1), dict(top_p=1e-6)):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=12, steps=6, temperature=5.0, generator=0, **filt)
        assert torch.equal(out, greedy), filt


# ---------------------------------------------------------------------------------------------------------------
# EOS, slack and the shift intervention


def test_suppress_slack_and_eos():
    model = boosted_model([SLACK, EOS], boost=30.0)
    ids, mask = left_pad(PROMPTS[:2])
    free = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=8)
    gen = free[:, ids.shape[1]:]
    assert (gen == SLACK).any() and (gen == EOS).any()
    no_slack = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=8, suppress_slack=True)
    assert not (no_slack[:, ids.shape[1]:] == SLACK).any()
    no_eos = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=8, suppress_eos=True,
                            temperature=1.0, generator=0)
    assert not (no_eos[:, ids.shape[1]:] == EOS).any()
    neither = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=8, suppress_eos=True,
                             suppress_slack=True)
    assert not torch.isin(neither[:, ids.shape[1]:], torch.tensor([SLACK, EOS, MASK])).any()


def test_eos_penalty_changes_eos_frequency():
    model = make_model()
    ids, mask = left_pad(PROMPTS)

    def count(penalty):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=8, eos_penalty=penalty,
                             temperature=1.0, generator=0)
        return int((out[:, ids.shape[1]:] == EOS).sum())

    assert count(4.0) <= count(0.0) < count(-2.0) < count(-4.0)


def test_stop_at_eos_stops_early_with_a_valid_canvas():
    model = boosted_model([EOS], boost=8.0)
    ids, mask = left_pad(PROMPTS)
    P = ids.shape[1]
    settings = dict(attention_mask=mask, max_new_tokens=32, steps=32, block_length=4, return_dict_in_generate=True)
    full = model.generate(ids, **settings)
    stopped = model.generate(ids, stop_at_eos=True, **settings)
    assert stopped.num_model_calls < full.num_model_calls
    seqs = stopped.sequences
    assert not (seqs == MASK).any()
    # Every row has an EOS, and only EOS after its first one.
    for row in seqs[:, P:]:
        first = int((row == EOS).nonzero()[0])
        assert (row[first:] == EOS).all()
    kw = dict(mask_token_id=MASK, slack_token_id=SLACK, eos_token_id=EOS, prompt_length=P)
    assert strip_generation(seqs, **kw) == strip_generation(full.sequences, **kw)


def test_shift_rate_zero_is_the_plain_sampler_and_positive_changes_outputs():
    model = make_model()
    ids, mask = left_pad(PROMPTS)
    base = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8, generator=0)
    zero = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8, generator=0,
                          shift_rate=0.0)
    shifted = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8, generator=0,
                             shift_rate=0.5)
    assert torch.equal(base, zero)
    assert not torch.equal(base, shifted)
    assert not (shifted == MASK).any()


def test_shift_moves_a_commit_to_the_adjacent_masked_position():
    M = -1
    region = torch.tensor([[1, M, M, M, M, M, 7, M]] * 2)
    masked = region == M
    x0 = torch.tensor([[0, 10, 11, 12, 13, 14, 0, 15]] * 2)
    chosen = torch.tensor([[False, False, True, False, True, True, False, True],
                           [False, True, False, False, True, True, False, False]])
    beyond = torch.tensor([[M], [M]])
    # Every commit that can move does.
    new, new_beyond = shift_commits(region, beyond, x0, chosen, masked, chosen, M)
    # Row 0: pos 2 -> 3 (both neighbours free: the right one wins); pos 4: right chosen, left already taken by
    # the previous shift -> stays; pos 5: right committed, left chosen -> stays; pos 7 (the window's last)
    # -> the first position beyond the window.
    # Row 1: pos 1 -> 2 (right free); pos 4 -> 3 (right chosen, left free); pos 5 stays.
    assert new.tolist() == [[1, M, M, 11, 13, 14, 7, M], [1, M, 10, 13, M, 14, 7, M]]
    assert new_beyond.tolist() == [[15], [M]]
    # Nothing moves: plain commits.
    new, new_beyond = shift_commits(region, beyond, x0, chosen, masked, torch.zeros_like(chosen), M)
    assert new.tolist() == [[1, M, 11, M, 13, 14, 7, 15], [1, 10, M, M, 13, 14, 7, M]]
    assert new_beyond.tolist() == [[M], [M]]


def _shift_commits_one_by_one(region, beyond, x0, chosen, masked, moving, mask_id):
    """The shift rule as stated, one position after the other (the reference for the vectorised one)."""
    region, beyond = region.clone(), beyond.clone()
    width = region.shape[1]
    for r in range(region.shape[0]):
        free = (masked[r] & ~chosen[r]).tolist()
        free_beyond = beyond.shape[1] > 0 and bool(beyond[r, 0] == mask_id)
        for pos in chosen[r].nonzero().flatten().tolist():
            token = x0[r, pos]
            if moving[r, pos]:
                if pos + 1 < width and free[pos + 1]:
                    free[pos + 1] = False
                    region[r, pos + 1] = token
                    continue
                if pos + 1 == width and free_beyond:
                    free_beyond = False
                    beyond[r, 0] = token
                    continue
                if pos > 0 and free[pos - 1]:
                    free[pos - 1] = False
                    region[r, pos - 1] = token
                    continue
            region[r, pos] = token
    return region, beyond


def test_vectorised_shift_equals_the_rule_applied_one_position_at_a_time():
    g = torch.Generator().manual_seed(0)
    M = 99
    for case in range(400):
        rows, width = 3, int(torch.randint(1, 9, (1,), generator=g))
        region = torch.where(torch.rand(rows, width, generator=g) < 0.7, M, torch.randint(0, 50, (rows, width), generator=g))
        masked = region == M
        chosen = masked & (torch.rand(rows, width, generator=g) < 0.5)
        moving = chosen & (torch.rand(rows, width, generator=g) < 0.6)
        x0 = torch.randint(50, 90, (rows, width), generator=g)
        beyond = torch.where(torch.rand(rows, 1, generator=g) < 0.5, M, 7)[:, :int(case % 4 != 0)]
        got = shift_commits(region, beyond, x0, chosen, masked, moving, M)
        expected = _shift_commits_one_by_one(region, beyond, x0, chosen, masked, moving, M)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), case


# ---------------------------------------------------------------------------------------------------------------
# Streaming, progress, training mode


class RecordingStreamer(BaseStreamer):
    def __init__(self, steps_seen):
        self.puts, self.ended, self.steps_seen, self.put_at = [], False, steps_seen, []

    def put(self, value):
        assert not self.ended
        self.puts.append(value.clone())
        self.put_at.append(len(self.steps_seen))

    def end(self):
        self.ended = True


def test_streamer_receives_each_block_when_final():
    model = make_model()
    ids = torch.tensor([PROMPTS[1]])
    steps = []
    streamer = RecordingStreamer(steps)
    out = model.generate(ids, max_new_tokens=12, block_length=4, steps=6, streamer=streamer,
                         step_callback=lambda s, c: steps.append(s))
    assert streamer.ended
    assert torch.equal(streamer.puts[0], ids)
    blocks = streamer.puts[1:]
    assert [b.shape for b in blocks] == [torch.Size([4])] * 3
    assert torch.equal(torch.cat(blocks), out[0, ids.shape[1]:])
    assert streamer.put_at == [0, 2, 4, 6]  # each block right after its last step
    with pytest.raises(ValueError, match="streamer"):
        model.generate(torch.tensor(PROMPTS[:1] * 2), max_new_tokens=4, steps=4, streamer=RecordingStreamer([]))


def test_text_streamer_skips_slack(tmp_path, capsys):
    from transformers import TextStreamer

    tok = make_tokenizer(tmp_path)
    model = boosted_model([SLACK], boost=8.0)
    ids = tok(["w5 w6"], return_tensors="pt").input_ids
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(ids, max_new_tokens=8, steps=8, streamer=streamer)
    printed = capsys.readouterr().out
    assert (out[0, ids.shape[1]:] == SLACK).any()
    assert "<slack>" not in printed and printed.strip() == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_progress_bar_and_training_mode_restored(capsys):
    model = make_model(attention_dropout=0.5)
    ids = torch.tensor([PROMPTS[0]])
    expected = model.generate(ids, max_new_tokens=8, steps=8)
    model.train()
    out = model.generate(ids, max_new_tokens=8, steps=8, progress=True)
    assert model.training
    assert torch.equal(out, expected)  # dropout was off during generation
    assert "diffusion steps" in capsys.readouterr().err


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


# ---------------------------------------------------------------------------------------------------------------
# Validation


class ExplodingModel(MDLMForMaskedLM):
    def forward(self, *args, **kwargs):
        raise AssertionError("the model was called before the inputs were validated")


@pytest.fixture(scope="module")
def exploding():
    torch.manual_seed(0)
    return ExplodingModel(tiny_config(max_position_embeddings=32)).eval()


GOOD = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(max_new_tokens=40), "max_position_embeddings"),
        (dict(max_new_tokens=16, steps=6, block_length=4), "steps"),
        (dict(max_new_tokens=16, steps=2, block_length=4), "steps"),
        (dict(max_new_tokens=16, block_length=5), r"must divide max_new_tokens=16: set a block_length that does \(e.g. 16 for one block\)"),
        (dict(block_alignment="rows"), "block_alignment must be one of"),
        (dict(block_alignment="absolute", block_length=None), "block_alignment='absolute' needs a block_length"),
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(mask_token_id=None), "mask_token_id"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(shift_rate=1.0), "shift_rate"),
        (dict(shift_rate=-0.1), "shift_rate"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("inf")), "temperature must be a finite number"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(attention_mask=torch.tensor([[1, 2, 1]])), "attention_mask must hold only 0"),
        (dict(kv_cache="everything"), "kv_cache"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(remasking="lowest"), "remasking"),
        (dict(cfg_scale=-1.0), "cfg_scale"),
        (dict(num_return_sequences=0), "num_return_sequences"),
        (dict(eos_token_id=None, stop_at_eos=True), "eos_token_id"),
        (dict(eos_token_id=None, suppress_eos=True), "eos_token_id"),
        (dict(attention_mask=torch.ones(1, 4)), "attention_mask"),
        (dict(input_ids=torch.tensor([5, 6, 7])), "input_ids"),
        (dict(input_ids=torch.tensor([[5.0, 6.0]])), "input_ids"),
        (dict(input_ids=torch.tensor([[5, 600]])), "input_ids"),
        (dict(stepz=3), "stepz"),
        (dict(generator=[1, 2]), "generator"),
    ],
)
def test_invalid_settings_fail_before_any_model_call(exploding, kwargs, field):
    kwargs = dict(kwargs)
    input_ids = kwargs.pop("input_ids", GOOD)
    # A token id set to None must not be filled in from the model config either.
    cleared = {name: getattr(exploding.config, name) for name in ("mask_token_id", "eos_token_id")
               if name in kwargs and kwargs[name] is None}
    for name in cleared:
        setattr(exploding.config, name, None)
    try:
        with pytest.raises(ValueError, match=field):
            exploding.generate(input_ids, **{"max_new_tokens": 8, **kwargs})
    finally:
        for name, value in cleared.items():
            setattr(exploding.config, name, value)


def test_exploding_model_is_called_when_settings_are_valid(exploding):
    with pytest.raises(AssertionError, match="called"):
        exploding.generate(GOOD, max_new_tokens=8)


def test_unknown_kv_cache_mode_is_refused_before_any_model_call():
    model = make_model()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="kv_cache must be None, 'prefix' or 'dual', got 'both'"):
        model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=4, kv_cache="both")
    assert calls == []


def test_generation_config_validate_names_the_field():
    with pytest.raises(ValueError, match="steps"):
        MDLMGenerationConfig(max_new_tokens=32, block_length=8, steps=6)
    config = MDLMGenerationConfig()
    config.threshold = 2.0
    with pytest.raises(ValueError, match="threshold"):
        config.validate()


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule="maskgit"), "schedule must be one of"),
    (dict(schedule="dream", schedule_eps=1.5), r"schedule_eps must be in \(0, 1\)"),
])
def test_schedule_options_are_checked(kwargs, message):
    model = MDLMForMaskedLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=4, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading


@pytest.fixture
def captured_logs():
    """Everything transformers logs (warning_once caches cleared) and every Python warning."""
    from transformers.utils import logging as hf_logging

    logging.Logger.warning_once.cache_clear() if hasattr(logging.Logger, "warning_once") else None
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = hf_logging.get_logger()
    root.addHandler(handler)
    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield records, caught
    root.removeHandler(handler)
    hf_logging.set_verbosity(old)


def test_generation_config_round_trip_without_warnings(tmp_path, captured_logs):
    records, caught = captured_logs
    config = MDLMGenerationConfig(
        max_new_tokens=16, steps=8, block_length=4, temperature=0.7, top_k=5, top_p=0.9, remasking="margin",
        threshold=0.9, cfg_scale=0.5, suppress_eos=True, eos_penalty=1.5, stop_at_eos=True, suppress_slack=True,
        shift_rate=0.01, mask_token_id=MASK, slack_token_id=SLACK, eos_token_id=[EOS, 1], pad_token_id=PAD,
        num_return_sequences=2, return_dict_in_generate=True, output_history=True,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["steps"] == 8 and saved["shift_rate"] == 0.01 and saved["temperature"] == 0.7
    loaded = MDLMGenerationConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MDLMGenerationConfig)
    assert loaded.to_dict() | {"transformers_version": None} == config.to_dict() | {"transformers_version": None}

    # Through a model: save_pretrained writes it, from_pretrained reads it back as an MDLMGenerationConfig.
    model = make_model()
    assert isinstance(model.generation_config, MDLMGenerationConfig)
    assert model.generation_config.mask_token_id == MASK and model.generation_config.slack_token_id == SLACK
    model.generation_config = config
    model.save_pretrained(tmp_path / "model")
    reloaded = MDLMForMaskedLM.from_pretrained(tmp_path / "model")
    assert isinstance(reloaded.generation_config, MDLMGenerationConfig)
    assert reloaded.generation_config.threshold == 0.9 and reloaded.generation_config.remasking == "margin"
    # generate() uses it: 2 return sequences, dict output with history.
    out = reloaded.generate(GOOD, temperature=0.0)
    assert isinstance(out, MDLMGenerateOutput) and out.sequences.shape == (2, 3 + 16) and out.history
    assert records == []
    assert [str(w.message) for w in caught] == []


def test_generation_config_from_plain_generation_config():
    from transformers import GenerationConfig

    model = make_model()
    out = model.generate(GOOD, generation_config=GenerationConfig(max_new_tokens=6), steps=3)
    assert out.shape == (1, 9) and not (out == MASK).any()


# ---------------------------------------------------------------------------------------------------------------
# Post-processing


def test_strip_generation():
    rows = torch.tensor([[9, 9, 1, SLACK, 2, EOS, 3, EOS], [9, 9, SLACK, SLACK, 4, MASK, 5, 6], [9, 9, EOS, 1, 2, 3, 4, 5]])
    kw = dict(mask_token_id=MASK, slack_token_id=SLACK, eos_token_id=EOS, prompt_length=2)
    assert strip_generation(rows, **kw) == [[1, 2], [4, 5, 6], []]
    assert strip_generation([1, SLACK, 7, 8], mask_token_id=MASK, slack_token_id=SLACK, eos_token_id=[8, 7]) == [[1]]
    # Without ids nothing is removed but the mask token.
    assert strip_generation(rows[1].tolist(), mask_token_id=MASK) == [[9, 9, SLACK, SLACK, 4, 5, 6]]


def test_skip_special_tokens_drops_slack(tmp_path):
    tok = make_tokenizer(tmp_path)
    ids = [5, SLACK, 6, SLACK, EOS]
    assert "<slack>" in tok.decode(ids)
    assert tok.decode(ids, skip_special_tokens=True).split() == ["w5", "w6"]
    assert tok.decode(strip_generation(ids, slack_token_id=SLACK, eos_token_id=EOS)[0]).split() == ["w5", "w6"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_non_finite_logits_are_a_clear_error(bad, kv_cache):
    model = make_model()

    def corrupt(module, inputs, output):  # NaN / +inf at one token; -inf everywhere (a row with no finite logit)
        if bad == float("-inf"):
            output.logits[...] = bad
        else:
            output.logits[..., 7] = bad
        return output

    model.register_forward_hook(corrupt)
    with pytest.raises(ValueError, match=r"non-finite logit \(NaN or inf\) for row 0, canvas position 4 \(block 0\): "
                                         "the model's weights or inputs are broken"):
        model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, kv_cache=kv_cache)
    out = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, kv_cache=kv_cache, check_logits=False)
    assert out.shape == (1, 12)  # opted out: no error (the caller's risk)


def test_fuzz_generate_fills_the_canvas_or_raises_a_value_error():
    """200 random calls (ragged batches, canvas, steps, blocks, remasking, temperature, top-k/p, threshold, caches,
    guidance, shift, suppression, some settings invalid): each returns prompt + a canvas with no [MASK] left, of the
    asked shape, or raises a ValueError naming the problem; never a hang, NaN or another exception."""
    model = make_model(seed=3)
    g = torch.Generator().manual_seed(1)
    outcomes = {"ok": 0, "error": 0}
    for case in range(200):
        def pick(*values):
            return values[int(torch.randint(len(values), (1,), generator=g))]

        rows = [torch.randint(3, 90, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                for _ in range(pick(1, 2, 3))]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        canvas = pick(1, 4, 8, 12)
        settings = dict(max_new_tokens=canvas, steps=pick(1, 3, canvas, 2 * canvas, 0),
                        block_length=pick(None, 4, 3, canvas), remasking=pick("low_confidence", "random", "entropy",
                                                                               "margin", "best"),
                        temperature=pick(0.0, 0.7, -1.0), top_k=pick(None, 5), top_p=pick(None, 0.9),
                        threshold=pick(None, 0.5), factor=pick(None, None, 1.0), kv_cache=pick(None, "prefix", "dual"),
                        cfg_scale=pick(0.0, 1.5),
                        shift_rate=pick(0.0, 0.3), suppress_eos=pick(False, True), suppress_slack=pick(False, True),
                        num_return_sequences=pick(1, 2))
        try:
            out = model.generate(ids, attention_mask=attention, generator=case, **settings)
        except ValueError:
            outcomes["error"] += 1
            continue
        copies = settings["num_return_sequences"]
        assert out.shape == (len(rows) * copies, width + canvas), (case, settings)
        assert not (out[:, width:] == MASK).any(), (case, settings)
        assert torch.equal(out[::copies, :width], ids), (case, settings)  # the prompt is never touched
        outcomes["ok"] += 1
    assert outcomes["ok"] > 40 and outcomes["error"] > 40


class FixedLogits(MDLMGenerationMixin, torch.nn.Module):
    """A stand-in model whose logits at the generated positions are given (the sampler's contract only)."""

    def __init__(self, logits, prompt_length):
        super().__init__()
        self.logits, self.prompt_length = logits, prompt_length
        self.config = type("Config", (), {"vocab_size": logits.shape[-1]})()
        self.generation_config = MDLMGenerationConfig()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=None):
        full = torch.cat([torch.zeros(1, self.prompt_length, self.logits.shape[-1]), self.logits], dim=1)
        return type("Out", (), {"logits": full[:, logits_to_keep]})()


def test_factor_rule_commits_the_largest_n_with_few_expected_errors():
    """Fast-dLLM's factor rule on known confidences 0.99, 0.9, 0.6, 0.3: (n + 1)(1 - c_n) is 0.02, 0.3, 1.6, 3.5,
    so factor 1 commits 2 tokens, factor 2 commits 3, factor 0.01 the one a step must commit."""
    vocab, prompt = 8, [3, 4]
    probs = [0.99, 0.9, 0.6, 0.3]
    logits = torch.full((1, 4, vocab), -30.0)
    for i, p in enumerate(probs):  # token 1 with probability p, the rest spread over tokens 2..6 (7 is [MASK])
        logits[0, i, 1] = math.log(p)
        logits[0, i, 2:7] = math.log((1 - p) / 5)
    logits[..., 7] = float("-inf")
    model = FixedLogits(logits, len(prompt))
    for factor, committed in ((1.0, 2), (2.0, 3), (0.01, 1), (100.0, 4)):
        canvases = []
        model.generate(torch.tensor([prompt]), mask_token_id=7, factor=factor, max_new_tokens=4, steps=4,
                       step_callback=lambda step, canvas: canvases.append(canvas))
        new = (canvases[0][0, len(prompt):] != 7).tolist()
        assert new == [True] * committed + [False] * (4 - committed), factor


def test_factor_decoding_fills_the_canvas_in_fewer_calls():
    model = make_model(seed=3)
    ids = torch.tensor([PROMPTS[0]])
    exact = model.generate(ids, max_new_tokens=16, steps=16, block_length=8, return_dict_in_generate=True)
    fast = model.generate(ids, max_new_tokens=16, steps=16, block_length=8, factor=4.0, return_dict_in_generate=True)
    assert not (fast.sequences[:, ids.shape[1]:] == MASK).any()
    assert fast.num_model_calls < exact.num_model_calls == 16
    with pytest.raises(ValueError, match="two rules for how many tokens a step commits"):
        model.generate(ids, max_new_tokens=8, threshold=0.9, factor=1.0)
    with pytest.raises(ValueError, match="factor must be a finite number > 0"):
        model.generate(ids, max_new_tokens=8, factor=0)


# ---------------------------------------------------------------------------------------------------------------
# The engine: counter-based random numbers, one rule for rows with and without a cache, host reads, compilation


def test_counter_uniform_is_mix_seed_computed_on_the_device():
    from hf_mdlm.generation_mdlm import counter_uniform, mix_seed

    seeds = [0, 1, 2**62 + 12345, mix_seed(7, 3)]
    step, stream, positions, vocab = 5, 2, [0, 3, 17], 6
    got = counter_uniform(torch.tensor(seeds), torch.tensor(step), stream, torch.tensor(positions), vocab)
    for b, seed in enumerate(seeds):
        for w, position in enumerate(positions):
            for v in range(vocab):
                expected = ((mix_seed(seed, step, stream, position, v) >> 10) + 0.5) / 2**53
                assert got[b, w, v].item() == expected, (b, w, v)
    per_position = counter_uniform(torch.tensor(seeds), torch.tensor(step), stream, torch.tensor(positions))
    assert per_position[1, 2].item() == ((mix_seed(1, step, stream, 17) >> 10) + 0.5) / 2**53
    # Uniform enough: 200k draws, the mean and the 10 deciles.
    many = counter_uniform(torch.arange(4), torch.tensor(0), 1, torch.arange(50), 1000).flatten()
    assert abs(many.mean().item() - 0.5) < 0.003
    counts = torch.histc(many.float(), bins=10, min=0, max=1)
    assert (counts - len(many) / 10).abs().max() < 5 * math.sqrt(len(many) / 10)


@pytest.mark.parametrize("settings", [
    dict(temperature=0.8, top_p=0.9),
    dict(temperature=0.5, remasking="random"),
    dict(temperature=0.8, shift_rate=0.3),
    dict(temperature=0.8, schedule="dream", shift_rate=0.3, top_k=30),
    dict(temperature=0.7, stop_at_eos=True, eos_penalty=-3.0),
    dict(temperature=0.7, cfg_scale=0.5),
], ids=["top-p", "random", "shift", "dream-shift", "stop-at-eos", "cfg"])
def test_cached_and_uncached_rows_follow_one_rule(settings):
    """A cache refreshed at every step computes exactly the uncached logits; the tokens are then the same whatever
    the options, which holds only if both paths run the same rows and draw the same random numbers."""
    model = make_model()
    ids, mask = left_pad(PROMPTS)
    common = dict(max_new_tokens=16, steps=16, block_length=8, generator=3, return_dict_in_generate=True, **settings)
    exact = model.generate(ids, attention_mask=mask, **common)
    for mode in ("prefix", "dual"):
        refreshed = model.generate(ids, attention_mask=mask, kv_cache=mode, kv_cache_refresh=1, **common)
        assert torch.equal(refreshed.sequences, exact.sequences), mode
        assert refreshed.num_positions == exact.num_positions
    cached = model.generate(ids, attention_mask=mask, kv_cache="dual", kv_cache_refresh=4, **common)
    dual = model.generate(ids, attention_mask=mask, kv_cache="dual", **common)
    assert dual.num_positions < cached.num_positions < exact.num_positions


@pytest.mark.parametrize("settings", [
    dict(temperature=0.8, top_p=0.9),
    dict(temperature=0.8, schedule="dream", shift_rate=0.3, top_k=30),
    dict(temperature=0.7, stop_at_eos=True, eos_penalty=-3.0, kv_cache="dual"),
    dict(temperature=0.7, cfg_scale=0.5, kv_cache="prefix"),
    dict(threshold=0.3, kv_cache="dual", kv_cache_refresh=3),
    dict(factor=1.5, temperature=0.5),
], ids=["top-p", "dream-shift", "eos-dual", "cfg-prefix", "threshold-refresh", "factor"])
def test_the_narrowed_cpu_window_gives_the_tokens_of_the_static_one(settings, monkeypatch):
    """On the CPU each step projects only from the first position still masked; on an accelerator the window is the
    block's. Same tokens either way."""
    model = confident_model(30.0)
    ids, mask = left_pad(PROMPTS)
    common = dict(attention_mask=mask, max_new_tokens=16, steps=16, block_length=8, generator=5, **settings)
    narrowed = model.generate(ids, **common)
    monkeypatch.setattr("hf_mdlm.generation_mdlm.values_are_free", lambda tensor: False)
    assert torch.equal(narrowed, model.generate(ids, **common))


def _host_reads(fn):
    """Operations whose result the host waits for (on an accelerator: a synchronisation), counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = ("aten::_local_scalar_dense", "aten::nonzero")  # every .item(), bool(), int() of a tensor, and nonzero
    return sum(event.count for event in prof.key_averages() if event.key in names)


def test_host_reads_happen_per_block_not_per_step(monkeypatch):
    # The model's input checks read values only where that is free (the CPU); do as on an accelerator.
    monkeypatch.setattr("hf_mdlm.modeling_mdlm.values_are_free", lambda tensor: False)
    monkeypatch.setattr("hf_mdlm.generation_mdlm.values_are_free", lambda tensor: False)
    model = confident_model(60.0)
    ids, mask = left_pad(PROMPTS[:2])

    def run(steps, **settings):
        return _host_reads(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=16, block_length=8,
                                                  steps=steps, temperature=0.7, generator=0, **settings))

    # A fixed schedule: the input checks, then per block one copy of its mask positions to the host and one read of
    # the non-finite check, whatever the number of steps.
    assert run(16) == run(4) <= 4 + 2
    assert run(16, kv_cache="dual", shift_rate=0.2) == run(4, kv_cache="dual", shift_rate=0.2)
    # Threshold decoding reads whether the block is done every `sync_interval` steps.
    assert run(16, threshold=0.99, sync_interval=100) == run(4, threshold=0.99, sync_interval=100)


def test_sync_interval_changes_the_number_of_calls_not_the_tokens(monkeypatch):
    # On the CPU the window narrows at every step and a full block ends at once; do as on an accelerator.
    monkeypatch.setattr("hf_mdlm.generation_mdlm.values_are_free", lambda tensor: False)
    model = confident_model(60.0)
    ids, mask = left_pad(PROMPTS)
    common = dict(attention_mask=mask, max_new_tokens=16, steps=16, block_length=8, threshold=0.5,
                  return_dict_in_generate=True)
    every = model.generate(ids, **common)
    rarely = model.generate(ids, sync_interval=5, **common)
    assert torch.equal(every.sequences, rarely.sequences)
    assert every.num_model_calls < rarely.num_model_calls <= 16
    stopped = model.generate(ids, stop_at_eos=True, sync_interval=3, kv_cache="dual", **common)
    assert torch.equal(stopped.sequences, model.generate(ids, stop_at_eos=True, kv_cache="dual", **common).sequences)


def test_user_logits_processors_and_stopping_criteria():
    from transformers import LogitsProcessor, StoppingCriteria

    class Forbid(LogitsProcessor):
        def __init__(self, token):
            self.token, self.shapes = token, set()

        def __call__(self, input_ids, scores):
            self.shapes.add((tuple(input_ids.shape), tuple(scores.shape)))
            return scores.index_fill(-1, torch.tensor([self.token]), float("-inf"))

    class AfterFirstBlock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.ones(input_ids.shape[0], dtype=torch.bool)

    model = make_model()
    ids, mask = left_pad(PROMPTS[:2])
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8)
    favourite = int(torch.mode(plain[:, ids.shape[1]:].flatten()).values)
    forbid = Forbid(favourite)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8,
                         logits_processor=[forbid])
    assert (plain[:, ids.shape[1]:] == favourite).any() and not (out[:, ids.shape[1]:] == favourite).any()
    # One row per window position: (rows x window, canvas) ids and (rows x window, vocab) scores; on the CPU the
    # window narrows from the block's 8 positions as the block fills.
    widths = {ids_shape[0] // 2 for ids_shape, _ in forbid.shapes}
    assert forbid.shapes == {((2 * w, ids.shape[1] + 16), (2 * w, model.config.vocab_size)) for w in widths}
    assert 8 in widths and widths <= set(range(1, 9))
    stopped = model.generate(ids, attention_mask=mask, max_new_tokens=16, steps=16, block_length=8,
                             stopping_criteria=[AfterFirstBlock()], return_dict_in_generate=True)
    assert stopped.num_model_calls == 8 and torch.equal(stopped.sequences[:, :ids.shape[1] + 8], plain[:, :ids.shape[1] + 8])
    assert (stopped.sequences[:, ids.shape[1] + 8:] == MASK).all()
    with pytest.raises(ValueError, match="logits_processor entries must be callable"):
        model.generate(ids, max_new_tokens=8, logits_processor=[3])


def test_compiled_step_gives_the_eager_tokens():
    """`compile=True` traces the denoising step with fullgraph=True (a graph break is an error) for each cache mode."""
    torch._dynamo.reset()
    model = make_model()
    ids, mask = left_pad(PROMPTS[:2])
    for kv_cache in (None, "prefix", "dual"):
        common = dict(attention_mask=mask, max_new_tokens=16, steps=8, block_length=8, kv_cache=kv_cache,
                      temperature=0.7, generator=0, return_dict_in_generate=True)
        eager = model.generate(ids, **common)
        compiled = model.generate(ids, compile=True, **common)
        assert torch.equal(compiled.sequences, eager.sequences), kv_cache
        assert compiled.num_model_calls == eager.num_model_calls
    with pytest.raises(ValueError, match="compile=True needs a dense model"):
        MDLMForMaskedLM(tiny_config(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)).generate(
            ids, max_new_tokens=8, compile=True)


def test_cached_sampling_under_autocast():
    """Under autocast the keys come out in the autocast dtype: the cache is allocated in it (training samples the
    model in bf16 autocast after fine-tuning)."""
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kv_cache in ("prefix", "dual"):
            out = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, steps=8, block_length=4,
                                 kv_cache=kv_cache)
            assert not (out == MASK).any()


def test_a_kv_cache_is_exact_for_a_block_causal_model():
    """With block-causal attention (block_size) and sampling blocks on the model's blocks, a finished block never
    sees a later one: the dual cache computes the exact logits, so its tokens are the uncached ones."""
    ids = torch.tensor([[5, 17, 33, 2], [40, 41, 7, 8]])
    common = dict(max_new_tokens=16, steps=16, block_length=4, temperature=1.0, return_dict_in_generate=True)

    def differing_runs(model, mode):
        runs = [(model.generate(ids, generator=seed, **common), model.generate(ids, generator=seed, kv_cache=mode,
                                                                               **common)) for seed in range(6)]
        assert all(cached.num_positions < exact.num_positions for exact, cached in runs)
        return sum(not torch.equal(exact.sequences, cached.sequences) for exact, cached in runs)

    for mode in ("prefix", "dual"):
        assert differing_runs(make_model(block_size=4), mode) == 0, mode
    # The same weights without blocks: there the dual cache is an approximation, and it shows.
    assert differing_runs(make_model(), "dual") > 0


def test_shifts_stay_inside_each_rows_block_with_absolute_blocks():
    """With absolute blocks a shifted commit lands in the row's own block, and a ragged batch still gives each row
    what it gets alone."""
    model = make_model(block_size=4)
    prompts = [PROMPTS[0][:5], PROMPTS[1][:2], PROMPTS[2][:7]]
    ids, mask = left_pad(prompts)
    common = dict(max_new_tokens=12, steps=12, temperature=0.9, shift_rate=0.5, return_dict_in_generate=True,
                  output_history=True)
    out = model.generate(ids, attention_mask=mask, generator=[1, 2, 3], **common)
    width = ids.shape[1]
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), generator=[row + 1], **common)
        assert out.sequences[row, width:].tolist() == alone.sequences[0, len(prompt):].tolist()
        # every step commits inside one block of the row's own positions
        previous = alone.history[0].new_full(alone.history[0].shape, MASK)
        previous[0, :len(prompt)] = torch.tensor(prompt)
        for canvas in alone.history:
            changed = (canvas[0] != previous[0]).nonzero().flatten()
            assert changed.numel() and len({int(p) // 4 for p in changed}) == 1, changed.tolist()
            previous = canvas


# ---------------------------------------------------------------------------------------------------------------
# transformers' conventions: padding side, do_sample, max_length, its settings, its configs and stopping criteria


def _right_pad(prompts, pad=PAD):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
        mask[i, :len(p)] = 1
    return ids, mask


@pytest.mark.parametrize("settings", [
    dict(model={"prediction_alignment": "next_token"}),
    dict(model={"block_size": 4}, kv_cache="dual"),
    dict(model={}, kv_cache="prefix", temperature=0.8),
], ids=["next-token", "block-dual", "prefix-sampled"])
def test_right_padded_prompts_are_left_aligned_with_a_warning(settings, caplog):
    """A tokenizer that pads on the right (the default of many) gives each row what it gets alone, as left padding
    does; before, next-token and block models read padding where the prompt should end."""
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(**settings.pop("model"))).eval()
    common = dict(max_new_tokens=8, steps=8, generator=[3, 4, 5], **settings)
    if model.config.block_size:
        common.update(block_length=4, block_alignment="absolute", schedule="block")
    left = model.generate(*left_pad(PROMPTS[:3]), **common)
    logging.Logger.warning_once.cache_clear()  # transformers' logger warns once per process
    with caplog.at_level(logging.WARNING):
        right = model.generate(*_right_pad(PROMPTS[:3]), **common)
    assert torch.equal(right, left)  # the returned prompts are left-padded
    for row, prompt in enumerate(PROMPTS[:3]):
        alone = model.generate(torch.tensor([prompt]), **{**common, "generator": [common["generator"][row]]})
        assert torch.equal(left[row, -8:], alone[0, -8:])
    assert "right-padded" in caplog.text


def test_pad_tokens_without_an_attention_mask_are_warned_about(caplog):
    model = make_model()
    ids, _ = left_pad(PROMPTS[:2])
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        model.generate(ids, max_new_tokens=4, steps=4)
    assert "no attention_mask" in caplog.text


def test_do_sample_and_max_length_mean_what_they_mean_in_transformers():
    model = make_model()
    ids = torch.tensor([PROMPTS[0]])
    greedy = model.generate(ids, max_new_tokens=8)
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False, temperature=0.7, generator=0), greedy)
    sampled = model.generate(ids, max_new_tokens=8, do_sample=True, generator=0)  # at temperature 1
    assert torch.equal(sampled, model.generate(ids, max_new_tokens=8, temperature=1.0, generator=0))
    assert not torch.equal(sampled, greedy)
    assert torch.equal(model.generate(ids, max_length=ids.shape[1] + 8), greedy)
    with pytest.raises(ValueError, match="max_new_tokens or max_length, not both"):
        model.generate(ids, max_length=12, max_new_tokens=8)
    with pytest.raises(ValueError, match="leaves no room after the 4-token prompt"):
        model.generate(ids, max_length=4)
    # None leaves a field to the config, as in transformers
    assert torch.equal(model.generate(ids, max_new_tokens=8, temperature=None, num_return_sequences=None), greedy)


def test_transformers_settings_without_a_diffusion_meaning_are_refused_unless_neutral():
    model = make_model()
    ids = torch.tensor([PROMPTS[0]])
    greedy = model.generate(ids, max_new_tokens=8)
    neutral = dict(num_beams=1, repetition_penalty=1.0, use_cache=True, output_scores=False, min_new_tokens=0)
    assert torch.equal(model.generate(ids, max_new_tokens=8, **neutral), greedy)
    for setting in (dict(num_beams=3), dict(repetition_penalty=1.3), dict(bad_words_ids=[[8]]), dict(min_p=0.1),
                    dict(output_scores=True), dict(stop_strings=["x"])):
        with pytest.raises(ValueError, match=f"does not implement: {{'{next(iter(setting))}'"):
            model.generate(ids, max_new_tokens=8, **setting)
    with pytest.raises(ValueError, match="not generation settings"):  # a typo stays an error of its own
        model.generate(ids, max_new_tokens=8, temprature=0.5)


def test_a_transformers_generation_config_keeps_the_models_own_settings():
    """Its unset fields (None) leave the model's saved values, e.g. a Dream model's schedule and top-p; an
    MDLMGenerationConfig is a whole config and is used as it is."""
    from transformers import GenerationConfig

    model = make_model()
    model.generation_config = MDLMGenerationConfig(schedule="dream", temperature=0.5, top_p=0.9, max_new_tokens=8,
                                                   mask_token_id=MASK, eos_token_id=EOS)
    ids = torch.tensor([PROMPTS[1]])
    saved = model.generate(ids, generator=1)
    assert torch.equal(model.generate(ids, generation_config=GenerationConfig(max_new_tokens=8), generator=1), saved)
    assert torch.equal(model.generate(ids, generation_config=GenerationConfig(num_beams=1), generator=1), saved)
    whole = MDLMGenerationConfig(max_new_tokens=8, mask_token_id=MASK, eos_token_id=EOS)
    assert torch.equal(model.generate(ids, generation_config=whole, generator=1), model.generate(
        ids, max_new_tokens=8, schedule="llada", temperature=0.0, top_p=None, generator=1))


def test_stopping_criteria_read_the_finished_text_only():
    """As in transformers, a criterion sees the text that is final: here the prompt and the blocks filled so far,
    never a mask token; so a length criterion at the full length does not stop early, and one at the first block
    stops after it."""
    from transformers import MaxLengthCriteria, StoppingCriteria

    class Record(StoppingCriteria):
        def __init__(self):
            self.widths = []

        def __call__(self, input_ids, scores, **kwargs):
            assert not (input_ids == MASK).any()
            self.widths.append(input_ids.shape[1])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    model = make_model()
    ids, mask = left_pad(PROMPTS[:2])
    P, common = ids.shape[1], dict(attention_mask=mask, max_new_tokens=16, steps=16, block_length=8,
                                   return_dict_in_generate=True)
    record = Record()
    full = model.generate(ids, stopping_criteria=[record, MaxLengthCriteria(P + 16)], **common)
    assert record.widths == [P + 8, P + 16] and full.num_model_calls == 16
    first = model.generate(ids, stopping_criteria=[MaxLengthCriteria(P + 8)], **common)
    assert first.num_model_calls == 8 and torch.equal(first.sequences[:, :P + 8], full.sequences[:, :P + 8])


def test_threshold_rules_need_scores_that_can_fail_them():
    """left_to_right scores every position 1: a threshold or factor would pass all of them, a whole block per step.
    (random scores are uniform draws: a threshold on them commits at random, as asked.)"""
    model = make_model()
    for rule in (dict(threshold=0.9), dict(factor=1.0)):
        with pytest.raises(ValueError, match="remasking='left_to_right' scores every position 1"):
            model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, remasking="left_to_right", **rule)
        model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=8, remasking="random", generator=0, **rule)


def test_numpy_integers_work_and_mistakes_of_calling_convention_are_named():
    import numpy as np

    model = make_model()
    ids = torch.tensor([PROMPTS[0]])
    assert torch.equal(model.generate(ids, max_new_tokens=np.int64(8), steps=np.int64(4), generator=np.int64(3)),
                       model.generate(ids, max_new_tokens=8, steps=4, generator=3))
    with pytest.raises(ValueError, match="cfg_scale must be a finite number >= 0, got inf"):
        model.generate(ids, max_new_tokens=8, cfg_scale=float("inf"))
    with pytest.raises(ValueError, match="pass the generation config as generation_config="):
        model.generate(ids, MDLMGenerationConfig(max_new_tokens=8))  # transformers' second positional argument
    with pytest.raises(ValueError, match="generation_config must be an MDLMGenerationConfig or a transformers "
                                         "GenerationConfig, got dict"):
        model.generate(ids, generation_config={"max_new_tokens": 8})


def test_left_padding_takes_no_positions_from_the_limit():
    """Positions count real tokens: a padded batch whose rows fit is not refused for its padding columns."""
    model = make_model()  # max_position_embeddings 128
    ids, mask = left_pad([[5] * 4, [6] * 100])
    padded = torch.cat([torch.full((2, 20), PAD), ids], dim=1)
    padded_mask = torch.cat([torch.zeros(2, 20, dtype=torch.long), mask], dim=1)
    assert torch.equal(model.generate(padded, attention_mask=padded_mask, max_new_tokens=28, steps=7)[:, 20:],
                       model.generate(ids, attention_mask=mask, max_new_tokens=28, steps=7))
    with pytest.raises(ValueError, match="prompt length 100 \\+ max_new_tokens 32 = 132 exceeds"):
        model.generate(padded, attention_mask=padded_mask, max_new_tokens=32)
