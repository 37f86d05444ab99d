"""Tests of `hf_mdlm/convert/a2d.py` (A2D): Llama / Qwen2 / Qwen3 causal LMs converted into next-token-aligned
MDLMs. With a causal 4D attention mask the converted model computes the source model's logits, and so does one
converted with block_size 1 on its own; the new [MASK] / <slack> rows are the mean rows."""

import json
import logging

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from hf_mdlm import MDLMForMaskedLM
from hf_mdlm.convert import convert_a2d_checkpoint, convert_checkpoint, detect_family

SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, eos_token_id=1, pad_token_id=0, bos_token_id=2)


def _tokenizer(mask=False):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>"] + (["<mask>"] if mask else [])
    t.train_from_iterator(["to be or not to be", "that is the question"] * 5, trainer=trainers.BpeTrainer(
        vocab_size=290, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    named = dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", **({"mask_token": "<mask>"} if mask else {}))
    return PreTrainedTokenizerFast(tokenizer_object=t, **named)


def _source(tmp_path, kind, vocab=300, mask=False, **extra):
    torch.manual_seed(0)
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                 "qwen3": (Qwen3Config, Qwen3ForCausalLM),
                                 "mistral": (MistralConfig, MistralForCausalLM)}[kind]
    model = model_class(config_class(vocab_size=vocab, **SHAPE, **extra)).eval()
    folder = tmp_path / kind
    model.save_pretrained(folder)
    _tokenizer(mask).save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}), ("llama", {"attention_bias": True, "mlp_bias": True}), ("qwen2", {}),
    ("qwen3", {"head_dim": 24}), ("qwen3", {"tie_word_embeddings": True}), ("mistral", {"sliding_window": None}),
], ids=["llama", "llama-biases", "qwen2", "qwen3", "qwen3-tied", "mistral"])
def test_converted_model_with_a_causal_mask_gives_the_source_logits(tmp_path, kind, extra):
    source, folder = _source(tmp_path, kind, **extra)
    assert detect_family(json.loads((folder / "config.json").read_text())) == "a2d"
    out = tmp_path / "converted"
    config = convert_checkpoint(folder, out)
    model = MDLMForMaskedLM.from_pretrained(out).eval()
    assert config.prediction_alignment == "next_token" and model.config.prediction_shift == 1
    from transformers import AutoTokenizer

    known = len(AutoTokenizer.from_pretrained(folder))  # the source's tokens (its matrix may have spare rows after)
    ids = torch.randint(3, known, (2, 11), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(11, 11, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        expected = source(ids).logits[..., :known]
        got = model(ids, attention_mask=causal).logits[..., :known]
    assert (got - expected).abs().max() < 1e-4
    # [MASK] and <slack> were added, their rows the mean of the old ones; ties stay tied.
    embed = model.get_input_embeddings().weight
    old = source.get_input_embeddings().weight
    for token in (model.config.mask_token_id, model.config.slack_token_id):
        assert token >= known and torch.allclose(embed[token], old[:known].mean(0), atol=1e-6)
    if extra.get("tie_word_embeddings"):
        assert model.lm_head.weight.data_ptr() == embed.data_ptr()


def test_block_size_makes_a_block_diffusion_model_that_at_1_is_the_causal_lm(tmp_path):
    from hf_mdlm.convert.cli import main

    source, folder = _source(tmp_path, "qwen3")
    ids = torch.randint(3, 250, (2, 11), generator=torch.Generator().manual_seed(1))
    for block_size in (1, 4):
        out = tmp_path / f"block{block_size}"
        main(["a2d", str(folder), str(out), "--block_size", str(block_size)])
        model = MDLMForMaskedLM.from_pretrained(out).eval()
        assert model.config.block_size == block_size
        generation = model.generation_config
        assert (generation.block_length, generation.block_alignment) == (block_size, "absolute")
        with torch.no_grad():
            got = model(ids).logits[..., :250]  # the model's own block-causal mask
            expected = source(ids).logits[..., :250]
        if block_size == 1:
            assert (got - expected).abs().max() < 1e-4
        else:  # inside a block a position sees the later ones; nothing sees a later block
            assert (got - expected).abs().max() > 1e-3
            changed = ids.clone()
            changed[:, 4:8] = 3
            with torch.no_grad():
                moved = model(changed).logits[..., :250]
            assert torch.equal(moved[:, :4], got[:, :4]) and (moved[:, 4:8] - got[:, 4:8]).abs().max() > 1e-3


def test_a_tokenizer_with_a_mask_token_keeps_it(tmp_path, caplog):
    _, folder = _source(tmp_path, "llama", mask=True)
    with caplog.at_level(logging.INFO, logger="hf_mdlm.convert.a2d"):
        config = convert_a2d_checkpoint(folder, tmp_path / "out")
    mask_id = _tokenizer(mask=True).convert_tokens_to_ids("<mask>")
    assert config.mask_token_id == mask_id and "reused as [MASK]" in caplog.text


def test_spare_embedding_rows_take_the_new_tokens(tmp_path):
    _, folder = _source(tmp_path, "qwen2", vocab=320)  # Qwen pads its matrix beyond the tokenizer
    config = convert_a2d_checkpoint(folder, tmp_path / "out")
    assert config.vocab_size == 320 and config.slack_token_id < 320


@pytest.mark.parametrize("kind,extra,field", [
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8}, "use_sliding_window"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope_type"),
    ("mistral", {"sliding_window": 8}, "sliding_window"),
])
def test_unsupported_sources_are_refused_by_name(tmp_path, kind, extra, field):
    _, folder = _source(tmp_path, kind, **extra)
    with pytest.raises(ValueError, match=field):
        convert_a2d_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _edit_config(folder, **fields):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_the_rotary_base_and_type_are_read_as_transformers_reads_them(tmp_path):
    """An older-style `"type"` key in rope_parameters converted as plain rope (logits off by 0.35 on Qwen3), and a
    top-level rope_theta beside rope_parameters' own won (0.24): transformers reads rope_parameters first."""
    source, folder = _source(tmp_path, "qwen3", rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    _edit_config(folder, rope_theta=10000.0)
    ids = torch.randint(3, 250, (2, 11), generator=torch.Generator().manual_seed(1))
    convert_checkpoint(folder, tmp_path / "out", block_size=1)
    model = MDLMForMaskedLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (model(ids).logits[..., :250] - source(ids).logits[..., :250]).abs().max() < 1e-4
    _edit_config(folder, rope_parameters={"type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="rope_type='linear'"):
        convert_a2d_checkpoint(folder, tmp_path / "out2")


def test_new_rows_are_the_mean_of_the_trained_rows_and_every_stop_token_is_kept(tmp_path, caplog):
    """A matrix with fewer rows than the tokenizer has tokens: the mean took in the zero padding rows (and the tokens
    past the matrix got zeros); a generation_config.json's extra EOS (Qwen's chat turn end) was dropped."""
    from transformers import AutoTokenizer

    source, folder = _source(tmp_path, "llama", vocab=280)
    known = len(AutoTokenizer.from_pretrained(folder))
    assert known > 280
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.convert.a2d"):
        config = convert_a2d_checkpoint(folder, tmp_path / "out")
    assert f"the tokenizer has {known} tokens but the model's embedding only 280 rows" in caplog.text
    model = MDLMForMaskedLM.from_pretrained(tmp_path / "out")
    mean = source.get_input_embeddings().weight[:280].mean(0)
    embed = model.get_input_embeddings().weight
    for token in [*range(280, known), config.mask_token_id, config.slack_token_id]:
        assert torch.allclose(embed[token], mean, atol=1e-6)
    eos = json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"]
    assert eos == [config.eos_token_id, *[t for t in (1, 2) if t != config.eos_token_id]]


def test_a_causal_lm_converted_on_the_fly_says_it_is_a_start_for_fine_tuning(tmp_path, monkeypatch, caplog):
    from hf_mdlm.convert import native_folder

    monkeypatch.setenv("HF_MDLM_CACHE", str(tmp_path / "cache"))
    _, folder = _source(tmp_path, "qwen2")
    with caplog.at_level(logging.WARNING, logger="hf_mdlm.convert.families"):
        native_folder(str(folder))
    assert "is a causal LM: its conversion attends both ways" in caplog.text and "--block_size 1" in caplog.text


def test_a_tied_checkpoint_that_stores_its_head_converts(tmp_path):
    """transformers loads a tied checkpoint that also stores lm_head.weight (the head is the embedding again); the
    converter refused it as an unexpected tensor."""
    from safetensors.torch import load_file, save_file

    source, folder = _source(tmp_path, "qwen3", tie_word_embeddings=True)
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    convert_checkpoint(folder, tmp_path / "out", block_size=1)
    model = MDLMForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(3, 250, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids).logits[..., :250] - source(ids).logits[..., :250]).abs().max() < 1e-4


def test_the_command_line_names_a_dtype_that_is_not_one(tmp_path, capsys):
    from hf_mdlm.convert.cli import main

    _, folder = _source(tmp_path, "llama")
    with pytest.raises(SystemExit):
        main(["a2d", str(folder), str(tmp_path / "out"), "--dtype", "bf16"])
    assert "'bf16' is not a torch floating-point dtype" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
