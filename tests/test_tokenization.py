"""Tests of `hf_mdlm/tokenization.py`: add_diffusion_tokens adds or reuses [MASK] and adds <slack> (new rows the
mean of the old ones, ties kept), and diffusion_token_ids finds the special ids or names what is missing."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_mdlm.tokenization import add_diffusion_tokens, diffusion_token_ids


def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tiny_bytelevel_tokenizer(specials=("<eos>",), **named) -> PreTrainedTokenizerFast:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(["the cat sat on the mat", "a dog and a cat"] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, **named)


def tiny_bert(vocab_size, tie):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    return BertForMaskedLM(cfg)


def bert_tokenizer():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=t, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", eos_token="[SEP]",
    )


@pytest.mark.parametrize("tie", [False, True])
def test_add_diffusion_tokens_bert(tie):
    tokenizer = bert_tokenizer()
    model = tiny_bert(len(tokenizer), tie)
    out_layer = model.get_output_embeddings()
    with torch.no_grad():
        out_layer.bias.normal_()  # a non-trivial bias so that its mean is checked
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = out_layer.weight.detach().clone()
    old_bias = out_layer.bias.detach().clone()

    ids = add_diffusion_tokens(tokenizer, model)
    assert ids["mask_token_id"] == 4  # BERT's own [MASK] is kept
    assert ids["slack_token_id"] == 9 and ids["new_token_ids"] == [9]
    assert len(tokenizer) == 10
    w_in = model.get_input_embeddings().weight
    w_out = model.get_output_embeddings().weight
    assert w_in.shape[0] == 10 and w_out.shape[0] == 10 and model.config.vocab_size == 10
    torch.testing.assert_close(w_in[:9], old_in)
    torch.testing.assert_close(w_in[9], old_in.mean(0))
    torch.testing.assert_close(w_out[9], old_out.mean(0))
    torch.testing.assert_close(model.get_output_embeddings().bias[9], old_bias.mean())
    torch.testing.assert_close(model.get_output_embeddings().bias[:9], old_bias)
    assert (w_out.data_ptr() == w_in.data_ptr()) == tie
    assert model.config.mask_token_id == 4 and model.config.slack_token_id == 9
    assert tokenizer.decode([5, 9, 6], skip_special_tokens=True) == "a b"
    assert diffusion_token_ids(tokenizer, model.config) == (4, 9, 3, 0)
    # A forward pass works with the new id, and a second call changes nothing.
    model(input_ids=torch.tensor([[2, 5, 9, 4, 3]]))
    before = model.get_input_embeddings().weight.detach().clone()
    again = add_diffusion_tokens(tokenizer, model)
    assert again["new_token_ids"] == [] and len(tokenizer) == 10
    torch.testing.assert_close(model.get_input_embeddings().weight, before)


def test_add_diffusion_tokens_tied_model_adds_mask_and_slack():
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_bytelevel_tokenizer(("<eos>",), eos_token="<eos>", pad_token="<eos>")
    n0 = len(tokenizer)
    assert tokenizer.mask_token is None
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=n0, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_diffusion_tokens(tokenizer, model)
    assert ids["new_token_ids"] == [n0, n0 + 1]
    assert (ids["mask_token_id"], ids["slack_token_id"]) == (n0, n0 + 1)
    assert tokenizer.mask_token == "[MASK]"
    w = model.get_input_embeddings().weight
    assert w.shape == (n0 + 2, 8)  # exact, not rounded up to a multiple
    assert model.get_output_embeddings().weight.data_ptr() == w.data_ptr()
    torch.testing.assert_close(w[n0], old.mean(0))
    torch.testing.assert_close(w[n0 + 1], old.mean(0))
    assert (model.config.mask_token_id, model.config.slack_token_id) == (n0, n0 + 1)
    text = "the cat sat"
    mixed = enc(tokenizer, text)
    assert tokenizer.decode([n0 + 1] + mixed + [n0 + 1], skip_special_tokens=True) == text


def test_add_diffusion_tokens_reuses_model_mask_token_and_tokenizer_only():
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_bytelevel_tokenizer(("<eos>", "<|mdm_mask|>"), eos_token="<eos>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=8, n_layer=1, n_head=2, n_positions=16))
    model.config.mask_token_id = 1  # LLaDA-style: the model names its mask id, the tokenizer does not
    n0 = len(tokenizer)
    ids = add_diffusion_tokens(tokenizer, model)
    assert tokenizer.mask_token == "<|mdm_mask|>" and ids["mask_token_id"] == 1
    assert ids["new_token_ids"] == [n0]

    plain = tiny_bytelevel_tokenizer(("<eos>",), eos_token="<eos>")
    ids = add_diffusion_tokens(plain)  # tokenizer only
    assert len(plain) == n0 + 1 and ids["new_token_ids"] == [n0 - 1, n0]


def test_add_diffusion_tokens_mask_conflict_is_an_error():
    tokenizer = bert_tokenizer()
    model = tiny_bert(len(tokenizer), tie=True)
    model.config.mask_token_id = 7
    with pytest.raises(ValueError, match="disagree on the mask token"):
        add_diffusion_tokens(tokenizer, model)


def test_diffusion_token_ids_errors():
    tokenizer = tiny_bytelevel_tokenizer(("<eos>",), eos_token="<eos>")
    with pytest.raises(ValueError) as err:
        diffusion_token_ids(tokenizer)
    msg = str(err.value)
    assert "mask token" in msg and "slack token" in msg and "add_diffusion_tokens" in msg and "pad token" in msg
    add_diffusion_tokens(tokenizer)
    with pytest.raises(ValueError, match="pad token"):
        diffusion_token_ids(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    mask, slack, eos, pad = diffusion_token_ids(tokenizer)
    assert eos == pad == tokenizer.eos_token_id and slack == mask + 1
    from transformers import PretrainedConfig

    with pytest.raises(ValueError, match="disagree on slack_token_id"):
        diffusion_token_ids(tokenizer, PretrainedConfig(slack_token_id=0))
