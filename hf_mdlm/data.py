"""Supervised fine-tuning data for masked diffusion language models.

Pipeline::

    raw rows  --preprocess_dataset-->  {prompt_ids, response_ids, example_id}
              --DiffusionCollator-->   {input_ids, prompt_lengths, response_lengths[, example_id]}
              --build_canvases (in the trainer, every step)-->  (clean_ids, canvas_mask, attention_mask)

Every training example is a prompt (never masked, never in the loss) followed by a response canvas
of a FIXED length ``canvas_length`` (L). ``response_ids`` always ends with exactly one EOS that this
module appends, unless ``truncation="truncate"`` had to cut the response (then it has no EOS, so
the model is never taught to stop in the middle of a text). The canvas itself (response with
``<slack>`` tokens inserted, then filled to L) is drawn afresh at every step by
:func:`build_canvases`.

Three input formats (``DataArguments.data_format``; "auto" picks the first that fits, in this order):

* ``chat``: a ``messages`` column, each a list of ``{"role", "content"}``. Rendered with the
  tokenizer's chat template. The response is the LAST assistant turn; the prompt is the template
  rendering of everything before it plus the generation prompt (exactly what the model sees at
  inference). Turns after the last assistant turn are ignored. With
  ``chat_all_assistant_turns=True`` every assistant turn gives one example (its prompt is the whole
  conversation before it). A chat without an assistant turn is skipped (counted, warned).
* ``prompt_completion``: ``prompt`` and ``completion`` columns of strings (the prompt gets the
  tokenizer's leading special tokens, e.g. BOS, but no trailing ones), or of message lists
  (conversational form: rendered like ``chat`` with ``prompt + completion`` as the conversation).
* ``text``: a ``text`` column; each row is one document (``.txt`` files load as one document per
  file). Documents are tokenised whole and cut into windows: ``text_prompt_length`` tokens of
  prompt (after the leading special tokens), then a continuation of up to
  ``text_response_length`` (default ``canvas_length - 1``) tokens, cut back to the end of its last
  complete line when ``text_align_lines`` is on, followed by EOS.

A prompt longer than ``max_prompt_length`` keeps its LAST ``max_prompt_length`` tokens. A response
that does not fit the canvas with its EOS is dropped (``truncation="drop"``) or cut to
``canvas_length`` tokens without EOS (``"truncate"``). Every skip, drop and truncation is counted
in :class:`PreprocessStats`, logged, and reported with :func:`warnings.warn`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from .tokenization import DEFAULT_SLACK_TOKEN

logger = logging.getLogger(__name__)

__all__ = [
    "DataArguments",
    "PreprocessStats",
    "DiffusionCollator",
    "Canvases",
    "build_canvases",
    "bundled_corpus_files",
    "detect_data_format",
    "load_raw_datasets",
    "preprocess_dataset",
    "prepare_datasets",
]

DATA_FORMATS = ("chat", "prompt_completion", "text")
FORMAT_COLUMNS = {"chat": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}
SLACK_RULES = ("bernoulli", "fixed", "none")
_TEXT_SUFFIXES = (".txt", ".text")
_JSON_SUFFIXES = (".json", ".jsonl")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")
_BATCH = 256  # rows tokenised per tokenizer call


# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    """Data options; every field is a command-line flag through ``transformers.HfArgumentParser``."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a local file (.json/.jsonl/.parquet/.csv/.txt, optionally .gz), a local folder "
            "(data files or a save_to_disk dataset) or a Hub dataset name. Default: the bundled Shakespeare corpus."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder for `datasets` (default: the datasets library's own)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation split name, or a path to a separate evaluation file. Default: the 'validation' "
            "split if the data has one (the held-out works for the bundled corpus), else --eval_fraction of train."
        },
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the training rows held out for evaluation when there is no eval split (0: none)."
        },
    )
    eval_split_seed: int = field(default=42, metadata={"help": "Seed of the train/eval row split."})
    data_format: Literal["auto", "chat", "prompt_completion", "text"] = field(
        default="auto",
        metadata={"help": "Input format; 'auto' picks chat (messages), prompt_completion, then text by the columns."},
    )
    chat_all_assistant_turns: bool = field(
        default=False,
        metadata={"help": "Chat data: one example per assistant turn instead of only the last assistant turn."},
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Longer prompts keep their LAST max_prompt_length tokens (left truncation). None: no limit."},
    )
    canvas_length: int = field(
        default=128,
        metadata={"help": "Response canvas length L, the same for every example: response + EOS + fill."},
    )
    text_prompt_length: int = field(
        default=64, metadata={"help": "Plain text: prompt tokens per window (leading special tokens not counted)."}
    )
    text_response_length: int | None = field(
        default=None,
        metadata={
            "help": "Plain text: most continuation tokens per window before EOS (default canvas_length - 1). "
            "Shorter leaves room in the canvas for <slack> tokens."
        },
    )
    text_window_stride: int | None = field(
        default=None,
        metadata={
            "help": "Plain text: tokens between window starts. Default: each continuation starts where the previous "
            "one ended, so every token after the first prompt is a response token exactly once."
        },
    )
    text_align_lines: bool = field(
        default=True,
        metadata={"help": "Plain text: end each continuation at a line end when one falls inside the window."},
    )
    truncation: Literal["drop", "truncate"] = field(
        default="drop",
        metadata={
            "help": "Response + EOS longer than canvas_length: 'drop' the example, or 'truncate' the response to "
            "canvas_length tokens WITHOUT EOS."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation examples."})

    def __post_init__(self) -> None:
        if self.data_format not in ("auto", *DATA_FORMATS):
            raise ValueError(f"data_format must be one of auto, {', '.join(DATA_FORMATS)}; got {self.data_format!r}")
        if self.truncation not in ("drop", "truncate"):
            raise ValueError(f"truncation must be 'drop' or 'truncate'; got {self.truncation!r}")
        if self.canvas_length < 1:
            raise ValueError(f"canvas_length must be >= 1; got {self.canvas_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 or None; got {self.max_prompt_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1); got {self.eval_fraction}")
        if self.text_prompt_length < 0:
            raise ValueError(f"text_prompt_length must be >= 0; got {self.text_prompt_length}")
        if self.text_response_length is not None and not 1 <= self.text_response_length <= self.canvas_length - 1:
            raise ValueError(
                f"text_response_length must be in [1, canvas_length - 1 = {self.canvas_length - 1}] (EOS needs a "
                f"canvas slot); got {self.text_response_length}"
            )
        if self.text_window_stride is not None and self.text_window_stride < 1:
            raise ValueError(f"text_window_stride must be >= 1; got {self.text_window_stride}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None; got {value}")


@dataclass
class PreprocessStats:
    """What :func:`preprocess_dataset` did with one split: counts of rows in, examples out, skips."""

    split: str = "train"
    data_format: str = ""
    rows: int = 0
    examples: int = 0
    skipped_empty_response: int = 0
    skipped_no_assistant: int = 0
    skipped_template_mismatch: int = 0
    skipped_reserved_token: int = 0
    skipped_short_document: int = 0
    dropped_too_long: int = 0
    truncated_response: int = 0
    truncated_prompt: int = 0

    _EXPLAIN = {
        "skipped_empty_response": "examples skipped: empty response",
        "skipped_no_assistant": "chats skipped: no assistant turn",
        "skipped_template_mismatch": "examples skipped: the chat template's rendering of the conversation does not "
        "start with its rendering of the prompt",
        "skipped_reserved_token": "examples skipped: response contains the mask or slack token",
        "skipped_short_document": "documents skipped: not longer than text_prompt_length tokens",
        "dropped_too_long": "examples dropped: response + EOS longer than canvas_length (truncation='drop')",
        "truncated_response": "responses cut to canvas_length tokens WITHOUT EOS (truncation='truncate')",
        "truncated_prompt": "prompts left-truncated to their last max_prompt_length tokens",
    }

    def issues(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self._EXPLAIN if getattr(self, k)}

    def summary(self) -> str:
        parts = [f"{self.split} ({self.data_format}): {self.rows} rows -> {self.examples} examples"]
        parts += [f"{v} {self._EXPLAIN[k]}" for k, v in self.issues().items()]
        return "; ".join(parts)

    def report(self) -> None:
        """Log the summary and warn once per kind of skip/drop/truncation."""
        logger.info("%s", self.summary())
        for key, count in self.issues().items():
            warnings.warn(f"[{self.split}] {count} {self._EXPLAIN[key]}", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def bundled_corpus_files(root: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """Paths of the bundled Shakespeare corpus and its tokenizer, or None when they are not there.

    They live in the source checkout under ``examples/data/`` (not in the installed package);
    ``root`` overrides that folder. Keys: ``train``, ``eval``, ``tokenizer``.
    """
    folder = Path(root) if root is not None else Path(__file__).resolve().parents[1] / "examples" / "data"
    files = {
        "train": folder / "shakespeare_train.jsonl.gz",
        "eval": folder / "shakespeare_heldout.jsonl.gz",
        "tokenizer": folder / "tokenizer",
    }
    return files if all(p.exists() for p in files.values()) else None


def _strip_compression(name: str) -> str:
    lower = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def _builder_for(path: str) -> str | None:
    base = _strip_compression(os.path.basename(path))
    if base.endswith(_JSON_SUFFIXES):
        return "json"
    if base.endswith(".parquet"):
        return "parquet"
    if base.endswith(".csv"):
        return "csv"
    if base.endswith(_TEXT_SUFFIXES):
        return "text"
    return None


def load_raw_datasets(source: Any, config: str | None = None, cache_dir: str | None = None):
    """Load ``source`` into a ``datasets.DatasetDict``.

    ``source`` is a ``Dataset`` (becomes split "train"), a ``DatasetDict``, a local file, a local folder,
    or a Hub dataset name (``datasets.load_dataset(source, config)``). A local file becomes split "train".
    Plain-text files (``.txt``/``.text``, optionally compressed) load as ONE row per file (``sample_by=
    "document"``), so a text file is one document, not one example per line.
    """
    import datasets

    if isinstance(source, datasets.DatasetDict):
        return source
    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source})
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"dataset must be a path, a Hub name, a Dataset or a DatasetDict; got {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isfile(path):
        builder = _builder_for(path)
        if builder is None:
            raise ValueError(
                f"cannot tell the format of {path!r}: expected .json, .jsonl, .parquet, .csv or .txt "
                f"(optionally compressed: {', '.join(_COMPRESSION_SUFFIXES)})"
            )
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files={"train": path}, cache_dir=cache_dir, **kwargs)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(path)
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        data_files = sorted(
            os.path.join(d, f) for d, _, names in os.walk(path) for f in names if _builder_for(f) is not None
        )
        if data_files and all(_builder_for(f) == "text" for f in data_files):
            return datasets.load_dataset(
                "text", data_files={"train": data_files}, sample_by="document", cache_dir=cache_dir
            )
        return datasets.load_dataset(path, config, cache_dir=cache_dir)
    if path.startswith((".", "/", "~")) or path.endswith(_JSON_SUFFIXES + _TEXT_SUFFIXES + (".parquet", ".gz")):
        raise FileNotFoundError(f"dataset file or folder not found: {path!r}")
    return datasets.load_dataset(path, config, cache_dir=cache_dir)


def detect_data_format(column_names: Iterable[str], data_format: str = "auto") -> str:
    """Return the format of a dataset with these columns, or raise naming expected and found columns."""
    columns = list(column_names)
    if data_format != "auto":
        if data_format not in FORMAT_COLUMNS:
            raise ValueError(f"unknown data_format {data_format!r}; expected auto, {', '.join(DATA_FORMATS)}")
        missing = [c for c in FORMAT_COLUMNS[data_format] if c not in columns]
        if missing:
            raise ValueError(
                f"data_format={data_format!r} needs column(s) {list(FORMAT_COLUMNS[data_format])} but the dataset "
                f"has columns {columns} (missing: {missing})"
            )
        return data_format
    for fmt in DATA_FORMATS:
        if all(c in columns for c in FORMAT_COLUMNS[fmt]):
            return fmt
    raise ValueError(
        "cannot detect the data format: expected a 'messages' column (chat), 'prompt' and 'completion' columns "
        f"(prompt_completion) or a 'text' column (text); found columns {columns}"
    )


# ---------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------


class _Tokens:
    """Tokenizer facts the preprocessing needs, computed once."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError(
                "the tokenizer has no eos_token: responses end with EOS and the canvas is filled with it; "
                "set tokenizer.eos_token first"
            )
        reserved = {tokenizer.mask_token_id}
        slack = tokenizer.convert_tokens_to_ids(DEFAULT_SLACK_TOKEN)
        if slack is not None and slack != tokenizer.unk_token_id:
            reserved.add(slack)
        self.reserved = {int(i) for i in reserved if i is not None and int(i) != self.eos}
        self.leading = self._leading_special_ids()
        self._ends_line: dict[int, bool] = {}
        self._blank: dict[int, bool] = {}

    def _leading_special_ids(self) -> list[int]:
        """Special tokens the tokenizer puts BEFORE a text by default (e.g. BOS); none after it."""
        sample = "Hello world"
        plain = self.tok(sample, add_special_tokens=False)["input_ids"]
        full = self.tok(sample, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return list(full[:start])
        return []

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def _is_blank(self, tid: int) -> bool:
        if tid not in self._blank:
            self._blank[tid] = self.tok.decode([tid]).strip() == ""
        return self._blank[tid]

    def strip_trailing_eos(self, ids: list[int]) -> list[int]:
        """Remove EOS tokens (and whitespace-only tokens after them) from the end of a response."""
        end = len(ids)
        while True:
            j = end
            while j > 0 and ids[j - 1] != self.eos and self._is_blank(ids[j - 1]):
                j -= 1
            if j > 0 and ids[j - 1] == self.eos:
                end = j - 1
            else:
                return ids[:end]

    def line_end_mask(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the tokens whose text ends with a newline."""
        uniq = np.unique(ids)
        for tid in uniq.tolist():
            if tid not in self._ends_line:
                self._ends_line[tid] = self.tok.decode([tid]).endswith("\n")
        table = np.array([self._ends_line[t] for t in uniq.tolist()], dtype=bool)
        return table[np.searchsorted(uniq, ids)]


class _Builder:
    """Applies the length rules and collects the output columns and the counts."""

    def __init__(self, toks: _Tokens, args: DataArguments, stats: PreprocessStats, limit: int | None) -> None:
        self.toks, self.args, self.stats, self.limit = toks, args, stats, limit
        self.prompts: list[list[int]] = []
        self.responses: list[list[int]] = []

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.responses) >= self.limit

    def add(self, prompt: list[int], response: list[int], *, strip_eos: bool = True) -> None:
        if self.full:
            return
        a, st = self.args, self.stats
        if strip_eos:
            response = self.toks.strip_trailing_eos(response)
        if not response:
            st.skipped_empty_response += 1
            return
        if self.toks.reserved.intersection(response):
            st.skipped_reserved_token += 1
            return
        if len(response) + 1 > a.canvas_length:
            if a.truncation == "drop":
                st.dropped_too_long += 1
                return
            response = response[: a.canvas_length]  # no EOS: the text goes on beyond the canvas
            st.truncated_response += 1
        else:
            response = response + [self.toks.eos]
        if a.max_prompt_length is not None and len(prompt) > a.max_prompt_length:
            prompt = prompt[-a.max_prompt_length :]
            st.truncated_prompt += 1
        self.prompts.append(list(prompt))
        self.responses.append(response)


def _check_messages(messages: Any, row: int) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
    ):
        raise ValueError(f"row {row}: 'messages' must be a list of {{'role', 'content'}} dicts; got {messages!r:.200}")
    return [dict(m) for m in messages]


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat data needs a tokenizer with a chat template, but tokenizer.chat_template is not set. Use an "
            "instruct model's tokenizer, or set tokenizer.chat_template to a Jinja template first."
        )


def _chat_pairs(tokenizer, messages: list[dict], all_turns: bool) -> tuple[list[tuple[str, str]], int]:
    """(prompt_text, response_text) per target assistant turn, and the number of template mismatches."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not all_turns:
        turns = turns[-1:]
    pairs, mismatches = [], 0
    for i in turns:
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not whole.startswith(prefix):
            mismatches += 1
            continue
        pairs.append((prefix, whole[len(prefix) :]))
    return pairs, mismatches


def _process_chat_rows(rows: list[list[dict]], toks: _Tokens, b: _Builder, all_turns: bool) -> None:
    prompts, responses = [], []
    for messages in rows:
        if not any(m["role"] == "assistant" for m in messages):
            b.stats.skipped_no_assistant += 1
            continue
        pairs, mismatches = _chat_pairs(toks.tok, messages, all_turns)
        b.stats.skipped_template_mismatch += mismatches
        for p, r in pairs:
            prompts.append(p)
            responses.append(r)
    for p_ids, r_ids in zip(toks.encode(prompts), toks.encode(responses)):
        b.add(p_ids, r_ids)


def _process_text_document(ids: list[int], toks: _Tokens, b: _Builder) -> None:
    a = b.args
    n_prompt = a.text_prompt_length
    n_resp = a.text_response_length if a.text_response_length is not None else a.canvas_length - 1
    n_resp = max(1, min(n_resp, a.canvas_length - 1)) if a.canvas_length > 1 else 1
    arr = np.asarray(ids, dtype=np.int64)
    n = len(arr)
    if n <= n_prompt:
        b.stats.skipped_short_document += 1
        return
    line_end = toks.line_end_mask(arr) if a.text_align_lines else None
    lead = toks.leading

    def emit(start: int) -> int:
        """Emit the window whose continuation starts at `start`; return where the continuation ended."""
        end = min(start + n_resp, n)
        if line_end is not None and end < n:
            hits = np.flatnonzero(line_end[start:end])
            if hits.size:
                end = start + int(hits[-1]) + 1
        b.add(lead + arr[start - n_prompt : start].tolist(), arr[start:end].tolist(), strip_eos=False)
        return end

    if a.text_window_stride is None:
        pos = n_prompt
        while pos < n and not b.full:
            pos = emit(pos)
    else:
        for s in range(0, n - n_prompt, a.text_window_stride):
            if b.full:
                break
            emit(s + n_prompt)


def preprocess_dataset(
    dataset,
    tokenizer,
    data_args: DataArguments,
    *,
    split: str = "train",
    max_samples: int | None = None,
    report: bool = True,
):
    """Turn raw rows into ``{prompt_ids, response_ids, example_id}`` rows; return ``(Dataset, PreprocessStats)``.

    ``dataset`` is a ``datasets.Dataset`` or a list of dicts. The format comes from
    ``data_args.data_format`` ("auto": detected from the columns). ``max_samples`` keeps the first
    examples only (and stops reading early). With ``report`` the counts are logged and every kind
    of skip, drop or truncation is reported with ``warnings.warn``.
    """
    import datasets

    if isinstance(dataset, list):
        dataset = datasets.Dataset.from_list(dataset)
    fmt = detect_data_format(dataset.column_names, data_args.data_format)
    toks = _Tokens(tokenizer)
    stats = PreprocessStats(split=split, data_format=fmt)
    builder = _Builder(toks, data_args, stats, max_samples)

    if fmt == "text":
        chunk = 4  # documents per tokenizer call; small so that max_samples can stop reading early
        for start in range(0, len(dataset), chunk):
            if builder.full:
                break
            texts = dataset[start : start + chunk]["text"]
            stats.rows += len(texts)
            docs = toks.encode([t or "" for t in texts])
            for ids in docs:
                if builder.full:
                    break
                _process_text_document(ids, toks, builder)
    else:
        conversational = False
        if fmt == "prompt_completion" and len(dataset) > 0:
            first = dataset[0]["prompt"]
            conversational = isinstance(first, (list, tuple))
        if fmt == "chat" or conversational:
            _require_chat_template(tokenizer)
        for start in range(0, len(dataset), _BATCH):
            if builder.full:
                break
            batch = dataset[start : start + _BATCH]
            size = len(next(iter(batch.values())))
            stats.rows += size
            if fmt == "chat":
                rows = [_check_messages(m, start + i) for i, m in enumerate(batch["messages"])]
                _process_chat_rows(rows, toks, builder, data_args.chat_all_assistant_turns)
            elif conversational:
                rows = []
                for i, (p, c) in enumerate(zip(batch["prompt"], batch["completion"])):
                    if isinstance(c, str) or c is None:
                        c = [{"role": "assistant", "content": c or ""}]
                    rows.append(_check_messages(list(p) + list(c), start + i))
                _process_chat_rows(rows, toks, builder, all_turns=False)
            else:
                prompts = ["" if p is None else str(p) for p in batch["prompt"]]
                completions = ["" if c is None else str(c) for c in batch["completion"]]
                for p_ids, r_ids in zip(toks.encode(prompts), toks.encode(completions)):
                    builder.add(toks.leading + p_ids, r_ids)

    stats.examples = len(builder.responses)
    out = datasets.Dataset.from_dict(
        {
            "prompt_ids": builder.prompts,
            "response_ids": builder.responses,
            "example_id": list(range(len(builder.responses))),
        },
        features=datasets.Features(
            {
                "prompt_ids": datasets.Sequence(datasets.Value("int64")),
                "response_ids": datasets.Sequence(datasets.Value("int64")),
                "example_id": datasets.Value("int64"),
            }
        ),
    )
    if report:
        stats.report()
    return out, stats


def prepare_datasets(data_args: DataArguments, tokenizer, *, raw_datasets=None):
    """Load, split and preprocess; return ``(train_dataset, eval_dataset or None)``.

    Data source: ``raw_datasets`` if given, else ``data_args.dataset`` (a path, Hub name, ``Dataset`` or
    ``DatasetDict``), else the bundled Shakespeare corpus (its held-out works are the eval split).
    Eval: ``data_args.eval_split`` (a split name or a file path), else a "validation" split if there is
    one, else ``eval_fraction`` of the training rows (seeded). A single-document text corpus cannot be
    split by rows: then the LAST ``eval_fraction`` of its windows is the eval set.
    """
    import datasets

    source = raw_datasets if raw_datasets is not None else data_args.dataset
    eval_source = None
    if source is None:
        bundled = bundled_corpus_files()
        if bundled is None:
            raise ValueError(
                "no dataset given and the bundled corpus (examples/data/ in the source checkout) was not found; "
                "pass --dataset PATH_OR_HUB_NAME"
            )
        source = str(bundled["train"])
        if data_args.eval_split is None:
            eval_source = str(bundled["eval"])
        logger.info("using the bundled Shakespeare corpus: %s", source)
    cache_dir = data_args.dataset_cache_dir
    raw = load_raw_datasets(source, data_args.dataset_config, cache_dir)
    if data_args.train_split not in raw:
        raise ValueError(f"train split {data_args.train_split!r} not found; the dataset has splits {list(raw)}")
    train_raw = raw[data_args.train_split]
    eval_raw = None
    split_processed = False

    es = data_args.eval_split
    if es is not None:
        if os.path.exists(es):
            eval_source = es
        elif es in raw:
            eval_raw = raw[es]
        else:
            raise ValueError(f"eval split {es!r} is neither a split of the dataset ({list(raw)}) nor an existing path")
    if eval_source is not None:
        loaded = load_raw_datasets(eval_source, None, cache_dir)
        eval_raw = loaded[next(iter(loaded))]
    elif eval_raw is None and "validation" in raw and data_args.train_split != "validation":
        eval_raw = raw["validation"]
        logger.info("using the dataset's 'validation' split for evaluation")
    elif eval_raw is None and data_args.eval_fraction > 0:
        if len(train_raw) >= 2:
            n_eval = max(1, round(data_args.eval_fraction * len(train_raw)))
            n_eval = min(n_eval, len(train_raw) - 1)
            parts = train_raw.train_test_split(test_size=n_eval, seed=data_args.eval_split_seed, shuffle=True)
            train_raw, eval_raw = parts["train"], parts["test"]
            logger.info("held out %d of %d training rows for evaluation", n_eval, len(train_raw) + n_eval)
        else:
            split_processed = True

    train_ds, _ = preprocess_dataset(
        train_raw,
        tokenizer,
        data_args,
        split="train",
        max_samples=None if split_processed else data_args.max_train_samples,
    )
    eval_ds = None
    if eval_raw is not None:
        if data_args.data_format == "auto":
            fmt = detect_data_format(train_raw.column_names)
            missing = [c for c in FORMAT_COLUMNS[fmt] if c not in eval_raw.column_names]
            if missing:
                raise ValueError(
                    f"the eval data lacks column(s) {missing} of the training data's format {fmt!r}; "
                    f"it has columns {eval_raw.column_names}"
                )
        eval_ds, _ = preprocess_dataset(
            eval_raw, tokenizer, data_args, split="eval", max_samples=data_args.max_eval_samples
        )
    elif split_processed and len(train_ds) >= 2:
        n_eval = min(max(1, round(data_args.eval_fraction * len(train_ds))), len(train_ds) - 1)
        n_train = len(train_ds) - n_eval
        eval_ds = train_ds.select(range(n_train, len(train_ds)))
        train_ds = train_ds.select(range(n_train))
        logger.info("single document: its last %d windows are the eval set", n_eval)
        if data_args.max_eval_samples is not None and len(eval_ds) > data_args.max_eval_samples:
            eval_ds = eval_ds.select(range(data_args.max_eval_samples))
    if split_processed and data_args.max_train_samples is not None and len(train_ds) > data_args.max_train_samples:
        train_ds = train_ds.select(range(data_args.max_train_samples))
    if len(train_ds) == 0:
        raise ValueError("preprocessing left no training examples; see the warnings above for what was skipped")
    if not isinstance(train_ds, datasets.Dataset):  # pragma: no cover
        raise TypeError("internal error: expected a Dataset")
    return train_ds, eval_ds


# ---------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return list(value)


@dataclass
class DiffusionCollator:
    """Batch ``{prompt_ids, response_ids[, example_id]}`` rows into tensors.

    Returns ``input_ids`` (B, T) = ``[prompt][response][pad ...]`` right-padded with ``pad_token_id``,
    ``T = max prompt length + canvas_length`` (right padding keeps every example's absolute positions
    the same whatever the batch), ``prompt_lengths`` (B,) and ``response_lengths`` (B,) as long, and
    ``example_id`` (B,) long when every row has one. The canvas itself is built by
    :func:`build_canvases` at training time.
    """

    pad_token_id: int
    canvas_length: int

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("DiffusionCollator needs a pad_token_id (set tokenizer.pad_token)")
        if int(self.canvas_length) < 1:
            raise ValueError(f"canvas_length must be >= 1; got {self.canvas_length}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("DiffusionCollator got an empty batch")
        prompts, responses = [], []
        for i, f in enumerate(features):
            if "prompt_ids" not in f or "response_ids" not in f:
                raise KeyError(f"batch row {i} needs 'prompt_ids' and 'response_ids'; it has {sorted(f)}")
            p, r = _as_list(f["prompt_ids"]), _as_list(f["response_ids"])
            if len(r) > self.canvas_length:
                ex = f.get("example_id", i)
                raise ValueError(
                    f"example {ex}: response has {len(r)} tokens but canvas_length is {self.canvas_length}"
                )
            prompts.append(p)
            responses.append(r)
        p_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        r_len = torch.tensor([len(r) for r in responses], dtype=torch.long)
        width = int(p_len.max()) + int(self.canvas_length)
        input_ids = torch.full((len(features), width), int(self.pad_token_id), dtype=torch.long)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            row = p + r
            if row:
                input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        batch = {"input_ids": input_ids, "prompt_lengths": p_len, "response_lengths": r_len}
        if all("example_id" in f and f["example_id"] is not None for f in features):
            batch["example_id"] = torch.tensor([int(f["example_id"]) for f in features], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------------------------------
# Canvases
# ---------------------------------------------------------------------------------------------------


class Canvases(NamedTuple):
    clean_ids: torch.Tensor  # (B, T) long: prompt, canvas, pad
    canvas_mask: torch.Tensor  # (B, T) bool: the L canvas positions
    attention_mask: torch.Tensor  # (B, T) long: 1 on prompt + canvas


def _check_lengths(name: str, t: Any, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},); got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor; got {t.dtype}")
    if batch and int(t.min()) < 0:
        raise ValueError(f"{name} must be >= 0; got {t.tolist()}")
    return t.to(device="cpu", dtype=torch.long)


def _draw_slack_gaps(n: int, room: int, rule: str, prob: float, gen: torch.Generator | None) -> torch.Tensor:
    """Bool (n + 1,): which gaps of an n-token response get one <slack>, at most `room` of them."""
    dev = gen.device if gen is not None else torch.device("cpu")
    gaps = torch.zeros(n + 1, dtype=torch.bool)
    if rule == "bernoulli":
        gaps = (torch.rand(n + 1, generator=gen, device=dev) < prob).cpu()
    elif rule == "fixed":
        k = min(int(math.floor(prob * n + 0.5)), n + 1)
        if k:
            gaps[torch.randperm(n + 1, generator=gen, device=dev)[:k].cpu()] = True
    k = int(gaps.sum())
    if k > room:  # the response is never cut: drop slacks at random until the canvas fits
        where = torch.nonzero(gaps).squeeze(1)
        keep = where[torch.randperm(k, generator=gen, device=dev)[:room].cpu()]
        gaps = torch.zeros(n + 1, dtype=torch.bool)
        gaps[keep] = True
    return gaps


def build_canvases(
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    response_lengths: torch.Tensor,
    *,
    canvas_length: int,
    slack_token_id: int | None,
    fill_token_id: int,
    slack_rule: str = "bernoulli",
    slack_prob: float = 0.1,
    generators: Sequence[torch.Generator] | None = None,
) -> Canvases:
    """Build the clean canvas of every row (the anchor alignment) from a collated batch.

    For row b with prompt length P and response ``r`` of length n (taken from
    ``input_ids[b, P:P+n]``): k ``<slack>`` tokens are put into the n + 1 gaps of ``r`` (before
    token 0, between tokens, after the last), at most one per gap, by ``slack_rule``:

    * ``"bernoulli"``: each gap independently with probability ``slack_prob`` (E[k] = p (n + 1));
    * ``"fixed"``: k = round(slack_prob * n) (half up) distinct gaps chosen uniformly;
    * ``"none"``: k = 0.

    If n + k > canvas_length, slacks are dropped at random until the canvas fits (the response is
    never cut). ``slack_token_id`` may be None only with ``slack_rule="none"`` (a CE-only baseline for a
    model without ``<slack>``). The rest of the canvas is ``fill_token_id`` (EOS for padding mode "eos", the slack id
    for mode "slack"). ``generators`` (one ``torch.Generator`` per row, or None for torch's global
    generator) makes a row's canvas independent of the other rows of the batch.

    Returns :class:`Canvases` ``(clean_ids, canvas_mask, attention_mask)``, all (B, T) on the device of
    ``input_ids``: ``clean_ids`` = prompt, canvas, then the padding of ``input_ids``; ``canvas_mask``
    (bool) marks positions P..P+L-1; ``attention_mask`` (long) is 1 on positions 0..P+L-1.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (B, T) tensor; got {getattr(input_ids, 'shape', type(input_ids))}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor; got {input_ids.dtype}")
    bsz, width = input_ids.shape
    L = int(canvas_length)
    if L < 1:
        raise ValueError(f"canvas_length must be >= 1; got {canvas_length}")
    if slack_rule not in SLACK_RULES:
        raise ValueError(f"slack_rule must be one of {SLACK_RULES}; got {slack_rule!r}")
    if not 0.0 <= float(slack_prob) <= 1.0:
        raise ValueError(f"slack_prob must be in [0, 1]; got {slack_prob}")
    if fill_token_id is None or int(fill_token_id) < 0:
        raise ValueError(f"fill_token_id must be a token id >= 0; got {fill_token_id}")
    if slack_token_id is None:
        if slack_rule != "none":
            raise ValueError(f"slack_rule={slack_rule!r} needs a slack_token_id (only slack_rule='none' works without)")
    elif int(slack_token_id) < 0:
        raise ValueError(f"slack_token_id must be a token id >= 0; got {slack_token_id}")
    p_len = _check_lengths("prompt_lengths", prompt_lengths, bsz)
    r_len = _check_lengths("response_lengths", response_lengths, bsz)
    if bsz and int(r_len.max()) > L:
        bad = torch.nonzero(r_len > L).squeeze(1).tolist()
        raise ValueError(f"rows {bad}: response_lengths {r_len[bad].tolist()} exceed canvas_length {L}")
    if bsz and int((p_len + L).max()) > width:
        bad = torch.nonzero(p_len + L > width).squeeze(1).tolist()
        raise ValueError(
            f"rows {bad}: prompt length + canvas_length exceeds the batch width {width} "
            f"(input_ids must be at least max(prompt_lengths) + canvas_length wide)"
        )
    if generators is not None:
        if len(generators) != bsz or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generators must be None or a list of {bsz} torch.Generator (one per row)")

    src = input_ids.detach().to("cpu", torch.long)
    pos = torch.arange(width)
    in_resp = (pos >= p_len[:, None]) & (pos < (p_len + r_len)[:, None])
    has_slack = ((src == int(slack_token_id)) & in_resp).any(dim=1) if slack_token_id is not None else None
    if has_slack is not None and bool(has_slack.any()):
        raise ValueError(
            f"rows {torch.nonzero(has_slack).squeeze(1).tolist()}: the response already contains the slack token "
            f"{int(slack_token_id)}; responses must be slack-free (they are the CTC targets)"
        )

    clean = src.clone()
    for b in range(bsz):
        P, n = int(p_len[b]), int(r_len[b])
        gen = generators[b] if generators is not None else None
        gaps = _draw_slack_gaps(n, L - n, slack_rule, float(slack_prob), gen)
        canvas = torch.full((L,), int(fill_token_id), dtype=torch.long)
        if n:
            token_pos = torch.arange(n) + torch.cumsum(gaps.long(), 0)[:n]
            canvas[token_pos] = src[b, P : P + n]
        slack_gap = torch.nonzero(gaps).squeeze(1)
        if slack_gap.numel():
            canvas[slack_gap + torch.arange(slack_gap.numel())] = int(slack_token_id)
        clean[b, P : P + L] = canvas

    canvas_mask = (pos >= p_len[:, None]) & (pos < (p_len + L)[:, None])
    attention_mask = (pos < (p_len + L)[:, None]).long()
    device = input_ids.device
    return Canvases(clean.to(device), canvas_mask.to(device), attention_mask.to(device))

