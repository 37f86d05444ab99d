"""Tests of `hf_mdlm/modeling_mdlm.py`: the forward pass, its masks and options, the transformers
conventions, and the KV cache against full forwards."""

import pytest
import torch
import torch.nn.functional as F

from transformers import DynamicCache

from hf_mdlm.generation_mdlm import CanvasCache

from hf_mdlm import MDLMForMaskedLM, MDLMModel
from conftest import make_model, tiny_config


def test_forward_shapes_and_maskedlm_output(tiny_model):
    ids = torch.randint(0, 90, (3, 11))
    out = tiny_model(ids)
    assert out.logits.shape == (3, 11, 96)
    assert out.loss is None


def test_attention_is_bidirectional(tiny_model):
    """Changing the last token must change the first position's logits (a causal model would not)."""
    ids = torch.randint(0, 90, (1, 8))
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % 90
    with torch.no_grad():
        assert not torch.allclose(tiny_model(ids).logits[0, 0], tiny_model(other).logits[0, 0])


@pytest.mark.parametrize("side", ["left", "right"])
def test_attention_mask_really_masks_padding(tiny_model, side):
    """A padded row gives, at its real positions, the logits of the unpadded sequence, whatever the pad tokens."""
    ids = torch.randint(0, 90, (1, 7))
    pad = torch.randint(0, 90, (1, 4))
    padded = torch.cat([pad, ids], 1) if side == "left" else torch.cat([ids, pad], 1)
    mask = torch.ones_like(padded)
    real = slice(4, None) if side == "left" else slice(0, 7)
    if side == "left":
        mask[:, :4] = 0
    else:
        mask[:, 7:] = 0
    with torch.no_grad():
        alone = tiny_model(ids).logits
        batched = tiny_model(padded, attention_mask=mask).logits[:, real]
        other_pad = padded.clone()
        other_pad[mask == 0] = 3
        batched2 = tiny_model(other_pad, attention_mask=mask).logits[:, real]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched2, batched, atol=1e-6, rtol=1e-6)


def test_labels_give_plain_cross_entropy(tiny_model):
    ids = torch.randint(0, 90, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4] = 5, 7
    out = tiny_model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(out.loss, expected)


def test_labels_of_a_next_token_model_are_scored_where_it_predicts_them():
    """Dream-style (next_token) models predict token i at position i - 1: the labels' loss reads it there (it read
    position i, the loss of a same-token model)."""
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config(prediction_alignment="next_token")).eval()
    ids = torch.randint(0, 90, (2, 6))
    labels = ids.clone()
    labels[0, 3] = -100
    out = model(ids, labels=labels)
    logits, targets = out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, targets, ignore_index=-100))


def test_logits_to_keep_projects_only_the_kept_positions(tiny_model):
    ids = torch.randint(0, 90, (2, 9))
    with torch.no_grad():
        full = tiny_model(input_ids=ids).logits
        last = tiny_model(input_ids=ids, logits_to_keep=4).logits
        window = tiny_model(input_ids=ids, logits_to_keep=slice(3, 7)).logits
    torch.testing.assert_close(last, full[:, -4:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(window, full[:, 3:7], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="labels need the logits of every position"):
        tiny_model(input_ids=ids, labels=ids, logits_to_keep=4)


def test_inputs_embeds_equivalent(tiny_model):
    ids = torch.randint(0, 90, (2, 5))
    embeds = tiny_model.get_input_embeddings()(ids)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(inputs_embeds=embeds).logits, tiny_model(ids).logits)


def test_gqa_and_tied_embeddings():
    model = MDLMForMaskedLM(tiny_config(num_key_value_heads=1, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.layers[0].self_attn.k_proj.out_features == model.config.head_dim
    untied = MDLMForMaskedLM(tiny_config())
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_qkv_bias_option():
    model = MDLMForMaskedLM(tiny_config(attention_bias=True))
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert model.model.layers[0].self_attn.o_proj.bias is None


def test_initialisation_follows_config():
    model = MDLMForMaskedLM(tiny_config(hidden_size=64, intermediate_size=256, initializer_range=0.05))
    weight = model.model.layers[0].mlp.up_proj.weight
    assert abs(weight.std().item() - 0.05) < 0.01
    assert torch.equal(model.model.norm.weight, torch.ones(64))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(1)
    model = MDLMForMaskedLM(tiny_config()).train()
    ids = torch.randint(0, 90, (2, 9))
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_bf16_forward_close_to_fp32(tiny_model):
    ids = torch.randint(0, 90, (2, 10))
    with torch.no_grad():
        ref = tiny_model(ids).logits
        low = tiny_model.to(torch.bfloat16)(ids).logits
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05


def test_bad_inputs_have_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_model(torch.tensor([[1, 2, 96]]))
    with pytest.raises(TypeError, match="integer"):
        tiny_model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        tiny_model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="no real token"):
        tiny_model(torch.tensor([[1, 2, 3]]), attention_mask=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model()


def test_base_model_returns_hidden_states():
    model = MDLMModel(tiny_config())
    out = model(torch.randint(0, 90, (1, 4)), output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 4, 32)
    assert len(out.hidden_states) == 3


@pytest.mark.parametrize("attention_bias,output_bias,mlp_bias", [(False, False, False), (True, False, False),
                                                                  (False, True, False), (False, False, True)])
def test_bias_flags_cover_the_documented_projections(attention_bias, output_bias, mlp_bias):
    """attention_bias: q/k/v; attention_output_bias: o; mlp_bias: gate/up/down (as MDLMConfig documents)."""
    model = MDLMForMaskedLM(tiny_config(attention_bias=attention_bias, attention_output_bias=output_bias,
                                        mlp_bias=mlp_bias))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert [attn.q_proj.bias is not None, attn.k_proj.bias is not None, attn.v_proj.bias is not None] == [attention_bias] * 3
    assert [mlp.gate_proj.bias is not None, mlp.up_proj.bias is not None, mlp.down_proj.bias is not None] == [mlp_bias] * 3
    assert (attn.o_proj.bias is not None) == output_bias
    from hf_mdlm import MDLMConfig

    assert "query/key/value" in MDLMConfig.__doc__ and "(gate, up, down)" in MDLMConfig.__doc__


# ----------------------------------------------------------------------------- transformers conventions


def _padded_batch():
    ids = torch.randint(0, 90, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


def test_eager_is_really_eager_and_returns_attention_weights():
    torch.manual_seed(0)
    sdpa = MDLMForMaskedLM(tiny_config()).eval()
    eager = MDLMForMaskedLM(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    ids, mask = _padded_batch()
    out = eager(ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(out.logits, sdpa(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 10, 10)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 10))
    assert out.attentions[0][1, :, :, :4].abs().max() == 0  # padded keys get no weight
    assert sdpa(ids, attention_mask=mask, output_attentions=True).attentions[0].shape == (2, 4, 10, 10)
    calls = []
    import hf_mdlm.modeling_mdlm as modeling

    original = modeling.eager_attention_forward
    modeling.eager_attention_forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        eager(ids)
        sdpa(ids)
    finally:
        modeling.eager_attention_forward = original
    assert calls == [1, 1]  # eager's two layers, none for sdpa
    sdpa.set_attn_implementation("eager")  # transformers' switch (it only logged that this model could not switch)
    assert sdpa.config._attn_implementation == "eager"


def test_return_dict_false_gives_tuples(tiny_model):
    ids = torch.randint(0, 90, (2, 6))
    loss, logits = tiny_model(ids, labels=ids, return_dict=False)
    assert loss.dim() == 0 and logits.shape == (2, 6, 96)
    (hidden,) = tiny_model.model(ids, return_dict=False)
    assert hidden.shape == (2, 6, 32)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_4d_attention_masks_match_the_2d_mask(tiny_model, kind):
    ids, mask = _padded_batch()
    keep = mask.bool()[:, None, None, :].expand(2, 1, 10, 10)
    four_d = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # with a 4D mask the positions are the caller's, as in transformers
    torch.testing.assert_close(tiny_model(ids, attention_mask=four_d, position_ids=positions).logits,
                               tiny_model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()[None, None]  # any pattern, e.g. causal for A2D checks
    out = tiny_model(ids[:1], attention_mask=causal).logits
    prefix = tiny_model(ids[:1, :5], attention_mask=causal[:, :, :5, :5]).logits
    torch.testing.assert_close(out[:, :5], prefix, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"4D attention_mask must have shape .* got \(2, 1, 10, 9\)"):
        tiny_model(ids, attention_mask=four_d[..., :9])


def test_a_4d_mask_of_integers_is_refused():
    model = MDLMForMaskedLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="4D attention_mask must be boolean or floating point, got torch.int64"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.long))


def test_flash_attention_refuses_a_4d_mask_it_would_ignore():
    """Flash attention takes a 2D padding mask only: a 4D mask used to be dropped silently (attending everywhere)."""
    model = MDLMForMaskedLM(tiny_config()).eval()
    model.config._attn_implementation = "flash_attention_2"  # the check comes before any kernel: no GPU needed
    with pytest.raises(ValueError, match="flash attention cannot apply a 4D attention_mask"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool))


def test_gradient_checkpointing_recomputes_each_layer(monkeypatch):
    from transformers.modeling_layers import GradientCheckpointingLayer

    import hf_mdlm.modeling_mdlm as modeling

    torch.manual_seed(1)
    model = MDLMForMaskedLM(tiny_config()).train()
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in model.model.layers)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    runs, silu = [], modeling.F.silu
    monkeypatch.setattr(modeling.F, "silu", lambda x: runs.append(1) or silu(x))
    ids = torch.randint(0, 90, (2, 9))
    loss = model(ids, labels=ids).loss
    assert len(runs) == 2  # one MLP per layer
    loss.backward()
    assert len(runs) == 4  # each layer recomputed in backward


def test_init_weights_follow_the_config():
    model = MDLMForMaskedLM(tiny_config(initializer_range=0.5))
    assert 0.4 < model.model.layers[0].mlp.up_proj.weight.std() < 0.6
    assert torch.equal(model.model.norm.weight, torch.ones(32))
    with torch.no_grad():
        model.model.norm.weight.fill_(3.0)
    model._init_weights(model.model.norm)
    assert torch.equal(model.model.norm.weight, torch.ones(32))


def test_forward_exports_with_torch_export(tiny_model):
    ids, mask = _padded_batch()
    exported = torch.export.export(tiny_model, (), {"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(exported.module()(input_ids=ids, attention_mask=mask).logits,
                               tiny_model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the KV cache


def _canvas(batch=2, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 90, (batch, length), generator=g)


def test_full_forward_caches_every_layer_and_position():
    model = make_model()
    ids = _canvas()
    out = model(input_ids=ids, use_cache=True)
    cache = out.cache
    assert isinstance(cache, DynamicCache) and len(cache.layers) == model.config.num_hidden_layers
    for layer in cache.layers:
        assert layer.keys.shape == (2, model.config.num_key_value_heads, 20, model.config.head_dim)
    assert model(input_ids=ids).cache is None  # no cache unless asked for


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_a_slice_against_a_canvas_cache_of_the_same_canvas_equals_the_full_forward(padded):
    """With an unchanged canvas, prefix (the slice to the end) and dual (the block) calls reproduce the full logits."""
    model = make_model()
    ids = _canvas()
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :5] = 0
    cache = CanvasCache(model.config.num_hidden_layers, 20)
    full = model(input_ids=ids, attention_mask=mask, cache=cache, cache_position=torch.arange(20))
    assert full.cache is cache and cache.keys[0].shape == (2, model.config.num_key_value_heads, 20,
                                                           model.config.head_dim)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for start, stop in ((8, 20), (8, 14)):
        out = model(input_ids=ids[:, start:stop], attention_mask=mask, position_ids=positions[:, start:stop],
                    cache=cache, cache_position=torch.arange(start, stop))
        torch.testing.assert_close(out.logits, full.logits[:, start:stop], atol=1e-5, rtol=1e-5)
    # The same through the default positions (counted over real tokens) and the older argument name.
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated: pass the KV cache as `cache`"):
        out = model(input_ids=ids[:, 8:14], attention_mask=mask, past_key_values=cache,
                    cache_position=torch.arange(8, 14))
    torch.testing.assert_close(out.logits, full.logits[:, 8:14], atol=1e-5, rtol=1e-5)


def test_a_growing_cache_appends_as_in_transformers():
    model = make_model()
    ids = _canvas()
    full = model(input_ids=ids).logits
    cache = model(input_ids=ids[:, :12], use_cache=True).cache
    assert isinstance(cache, DynamicCache)
    out = model(input_ids=ids[:, 12:], cache=cache)  # attends to the 12 cached positions and itself
    assert cache.get_seq_length() == 20
    # Bidirectional attention: the first 12 positions did not see the last 8, so only the shapes and the cache agree.
    assert out.logits.shape == full[:, 12:].shape


def test_canvas_cache_write_stores_the_fresh_keys_of_the_slice():
    """Layer 0's keys depend only on the tokens and positions: after writing a slice with new tokens, the cache
    holds exactly the layer-0 keys a full forward of the new canvas computes there, and the old keys elsewhere."""
    model = make_model()
    ids = _canvas()
    cache = CanvasCache(model.config.num_hidden_layers, 20)
    model(input_ids=ids, cache=cache)
    old = cache.keys[0].clone()
    new_ids = ids.clone()
    new_ids[:, 8:14] = _canvas(seed=1)[:, :6]
    model(input_ids=new_ids[:, 8:14], cache=cache, cache_position=torch.arange(8, 14))
    reference = CanvasCache(model.config.num_hidden_layers, 20)
    model(input_ids=new_ids, cache=reference)
    torch.testing.assert_close(cache.keys[0][:, :, 8:14], reference.keys[0][:, :, 8:14], atol=1e-6, rtol=1e-6)
    assert torch.equal(cache.keys[0][:, :, :8], old[:, :, :8])
    assert torch.equal(cache.keys[0][:, :, 14:], old[:, :, 14:])


def test_cache_errors_are_clear():
    model = make_model()
    cache = CanvasCache(model.config.num_hidden_layers, 20)
    model(input_ids=_canvas(), cache=cache)
    with pytest.raises(ValueError, match="KV cache holds a batch of 2 rows, the input has 3"):
        model(input_ids=_canvas(3)[:, :4], cache=cache, cache_position=torch.arange(4))
    with pytest.raises(ValueError, match=r"holds positions \[0, 20\): it cannot serve positions \[18, 22\)"):
        model(input_ids=_canvas()[:, :4], cache=cache, cache_position=torch.arange(18, 22))
    growing = model(input_ids=_canvas(), use_cache=True).cache
    with pytest.raises(ValueError, match="a growing KV cache .DynamicCache. appends: the fed positions must start at 20"):
        model(input_ids=_canvas()[:, :4], cache=growing, cache_position=torch.arange(4))
    with pytest.raises(ValueError, match="KV cache holds a batch of 2 rows, the input has 3"):
        model(input_ids=_canvas(3)[:, :4], cache=growing)
    with pytest.raises(TypeError, match="cache must be a CanvasCache or a transformers Cache"):
        model(input_ids=_canvas(), cache=[(torch.zeros(1), torch.zeros(1))])
    with pytest.raises(ValueError, match="pass the KV cache once"):
        model(input_ids=_canvas(), cache=cache, past_key_values=cache)


# ----------------------------------------------------------------------------- block diffusion (block_size)


def _block_model(block_size, seed=0):
    torch.manual_seed(seed)
    return MDLMForMaskedLM(tiny_config(block_size=block_size)).eval()


def test_block_size_one_is_causal_attention():
    """Blocks of one position: each position sees itself and the earlier ones, exactly a causal mask."""
    blocked, plain = _block_model(1), _block_model(None)
    ids = _canvas(length=12)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(blocked(input_ids=ids).logits, plain(input_ids=ids, attention_mask=causal).logits,
                               rtol=0, atol=0)


def test_blocks_see_themselves_and_earlier_blocks_only():
    model = _block_model(4)
    ids = _canvas(length=12)
    logits = model(input_ids=ids).logits
    later = ids.clone()
    later[:, 8:] = (later[:, 8:] + 1) % 90  # a later block changes: the first two blocks do not
    torch.testing.assert_close(model(input_ids=later).logits[:, :8], logits[:, :8], rtol=0, atol=0)
    inside = ids.clone()
    inside[:, 5] = (inside[:, 5] + 1) % 90  # a position of block 1 changes: all of block 1 and 2 change, not block 0
    changed = model(input_ids=inside).logits
    torch.testing.assert_close(changed[:, :4], logits[:, :4], rtol=0, atol=0)
    assert all(not torch.allclose(changed[:, i], logits[:, i]) for i in range(4, 12))
    # The same mask, written out, through every attention implementation that takes it.
    blocks = torch.arange(12) // 4
    explicit = (blocks[None, :] <= blocks[:, None])[None, None]
    reference = _block_model(None)(input_ids=ids, attention_mask=explicit).logits
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    for implementation in ("eager", "sdpa"):  # (flex attention crashes on this CPU build: not tested here)
        model.config._attn_implementation = implementation
        torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=1e-5, atol=1e-5)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash attention .* cannot apply the block-causal mask"):
        model(input_ids=ids)
    model.config._attn_implementation = "flex_attention"  # refused with a mask on the CPU, where it aborts
    with pytest.raises(ValueError, match="flex_attention cannot apply a padding or block mask on the CPU"):
        model(input_ids=ids)


def test_block_boundaries_follow_real_tokens_under_left_padding():
    model = _block_model(4)
    ids = _canvas(length=10)
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits[:, 3:], model(input_ids=ids).logits,
                               rtol=1e-5, atol=1e-5)


def test_block_causal_canvas_cache_slice_equals_the_full_forward():
    model = _block_model(4)
    ids = _canvas(length=16)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    cache = CanvasCache(model.config.num_hidden_layers, 16)
    full = model(input_ids=ids, attention_mask=mask, cache=cache)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids[:, 8:12], attention_mask=mask, position_ids=positions[:, 8:12], cache=cache,
                cache_position=torch.arange(8, 12))
    torch.testing.assert_close(out.logits, full.logits[:, 8:12], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_size must be a positive integer or None"):
        tiny_config(block_size=0)


def test_a_model_whose_vocabulary_no_longer_holds_its_special_tokens_is_not_saved(tmp_path):
    """resize_token_embeddings below the [MASK] id saved a folder that then failed to load."""
    model = MDLMForMaskedLM(tiny_config())
    model.resize_token_embeddings(90)
    with pytest.raises(ValueError, match="mask_token_id=95 is not a token id"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
