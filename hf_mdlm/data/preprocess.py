"""Raw rows into ``{prompt_ids, response_ids, example_id}`` examples: the three formats and their rules.

Pipeline::

    raw rows  --preprocess_dataset-->  {prompt_ids, response_ids, example_id}
              --DiffusionCollator-->   {input_ids, prompt_lengths, response_lengths[, example_id]}
              --hf_mdlm.training.canvas.build_canvases (every step)-->  (clean_ids, canvas_mask, attention_mask)

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
  conversation before it). A chat without an assistant turn is skipped (counted, warned), and so is
  an assistant turn with no message before it (there is no prompt to render).
* ``prompt_completion``: ``prompt`` and ``completion`` columns of strings (the prompt gets the
  tokenizer's leading special tokens, e.g. BOS, but no trailing ones), or of message lists
  (conversational form, row by row: rendered like ``chat`` with ``prompt + completion`` as the
  conversation). A value of another type (a number, a dict) is an error naming its row and column.
* ``text``: a ``text`` column of strings; each row is one document (``.txt`` files load as one
  document per file). Documents are tokenised whole and cut into windows: ``text_prompt_length`` tokens of
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
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tokenization import SLACK_TOKEN
from .arguments import DATA_FORMATS, FORMAT_COLUMNS, DataArguments

logger = logging.getLogger(__name__)

_BATCH = 256  # rows tokenised per tokenizer call


@dataclass
class PreprocessStats:
    """What :func:`preprocess_dataset` did with one split: counts of rows in, examples out, skips."""

    split: str = "train"
    data_format: str = ""
    rows: int = 0
    examples: int = 0
    skipped_empty_response: int = 0
    skipped_no_assistant: int = 0
    skipped_no_prompt: int = 0
    skipped_template_mismatch: int = 0
    skipped_reserved_token: int = 0
    skipped_short_document: int = 0
    dropped_too_long: int = 0
    truncated_response: int = 0
    truncated_prompt: int = 0
    truncated_to_position_limit: int = 0

    _EXPLAIN = {
        "skipped_empty_response": "examples skipped: empty response",
        "skipped_no_assistant": "chats skipped: no assistant turn",
        "skipped_no_prompt": "assistant turns skipped: no message before them to prompt with",
        "skipped_template_mismatch": "examples skipped: the chat template's rendering of the conversation does not "
        "start with its rendering of the prompt",
        "skipped_reserved_token": "examples skipped: response contains the mask or slack token",
        "skipped_short_document": "documents skipped: not longer than text_prompt_length tokens",
        "dropped_too_long": "examples dropped: response + EOS longer than canvas_length (truncation='drop')",
        "truncated_response": "responses cut to canvas_length tokens WITHOUT EOS (truncation='truncate')",
        "truncated_prompt": "prompts left-truncated to their last max_prompt_length tokens",
        "truncated_to_position_limit": "prompts left-truncated so that prompt + canvas fit the model's position "
        "limit (max_length)",
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
        slack = tokenizer.convert_tokens_to_ids(SLACK_TOKEN)
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

    def __init__(self, toks: _Tokens, args: DataArguments, stats: PreprocessStats, limit: int | None,
                 max_length: int | None = None) -> None:
        self.toks, self.args, self.stats, self.limit = toks, args, stats, limit
        # The longest prompt that fits the model's positions together with the canvas (None: no limit).
        self.prompt_room = None if max_length is None else max_length - args.canvas_length
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
        if self.prompt_room is not None and len(prompt) > self.prompt_room:
            prompt = prompt[len(prompt) - self.prompt_room :]
            st.truncated_to_position_limit += 1
        self.prompts.append(list(prompt))
        self.responses.append(response)


def _wrong_type(row: int, column: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"row {row}: {column!r} must be {expected}; got {type(value).__name__}: {value!r:.200}")


def _check_messages(messages: Any, row: int, column: str = "messages") -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
    ):
        raise _wrong_type(row, column, "a list of {'role', 'content'} dicts", messages)
    return [dict(m) for m in messages]


_PLAIN_EXPECTED = {"prompt": "a string or a list of messages",
                   "completion": "a string (a list of messages needs a message-list prompt)"}


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat data needs a tokenizer with a chat template, but tokenizer.chat_template is not set. Use an "
            "instruct model's tokenizer, or set tokenizer.chat_template to a Jinja template first."
        )


def _chat_pairs(tokenizer, messages: list[dict], all_turns: bool, stats: PreprocessStats) -> list[tuple[str, str]]:
    """(prompt_text, response_text) per target assistant turn; template mismatches and turns without a prompt are
    counted in `stats`."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not all_turns:
        turns = turns[-1:]
    pairs = []
    for i in turns:
        if i == 0:  # nothing before it to render as the prompt (chat templates refuse an empty conversation)
            stats.skipped_no_prompt += 1
            continue
        content = messages[i].get("content")
        if content is None or (isinstance(content, str) and not content.strip()):
            # the template's end-of-turn text alone would be the response: the model would learn to say nothing
            stats.skipped_empty_response += 1
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not whole.startswith(prefix):
            stats.skipped_template_mismatch += 1
            continue
        pairs.append((prefix, whole[len(prefix) :]))
    return pairs


def _process_chat_rows(rows: list[list[dict]], toks: _Tokens, b: _Builder, all_turns: bool) -> None:
    prompts, responses = [], []
    for messages in rows:
        if not any(m["role"] == "assistant" for m in messages):
            b.stats.skipped_no_assistant += 1
            continue
        for p, r in _chat_pairs(toks.tok, messages, all_turns, b.stats):
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


def check_position_limit(data_args: DataArguments, max_length: int | None) -> None:
    """A canvas that leaves no room for a prompt within the model's positions is an error, before any data is read."""
    if max_length is not None and data_args.canvas_length >= max_length:
        raise ValueError(
            f"canvas_length={data_args.canvas_length} leaves no room for a prompt: the model has {max_length} "
            "positions (max_position_embeddings) for prompt + canvas; use a shorter --canvas_length"
        )


def preprocess_dataset(
    dataset,
    tokenizer,
    data_args: DataArguments,
    *,
    split: str = "train",
    max_samples: int | None = None,
    report: bool = True,
    max_length: int | None = None,
    source_rows: list[int] | None = None,
):
    """Turn raw rows into ``{prompt_ids, response_ids, example_id}`` rows; return ``(Dataset, PreprocessStats)``.

    ``dataset`` is a ``datasets.Dataset`` or a list of dicts. The format comes from
    ``data_args.data_format`` ("auto": detected from the columns). ``max_samples`` keeps the first
    examples only (and stops reading early). ``max_length``: the model's position limit (e.g.
    ``config.max_position_embeddings``); prompts are left-truncated so that prompt + canvas fit it,
    counted in ``truncated_to_position_limit``. With ``report`` the counts are logged and every kind
    of skip, drop or truncation is reported with ``warnings.warn``. ``source_rows``: each row's index in the file
    it came from (a split held out of it), which errors name; default its index in ``dataset``.
    """
    import datasets

    def row(index):
        return index if source_rows is None else source_rows[index]

    check_position_limit(data_args, max_length)

    if isinstance(dataset, list):
        dataset = datasets.Dataset.from_list(dataset)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TypeError(f"preprocess_dataset takes one split, got a {type(dataset).__name__} of {list(dataset)}: "
                        "pass e.g. dataset['train']")
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"preprocess_dataset takes a datasets.Dataset or a list of dicts, got "
                        f"{type(dataset).__name__} (a streaming dataset: load it with streaming=False)")
    fmt = detect_data_format(dataset.column_names, data_args.data_format)
    toks = _Tokens(tokenizer)
    stats = PreprocessStats(split=split, data_format=fmt)
    builder = _Builder(toks, data_args, stats, max_samples, max_length)

    if fmt == "text":
        chunk = 4  # documents per tokenizer call; small so that max_samples can stop reading early
        for start in range(0, len(dataset), chunk):
            if builder.full:
                break
            texts = dataset[start : start + chunk]["text"]
            stats.rows += len(texts)
            for i, t in enumerate(texts):
                if t is not None and not isinstance(t, str):
                    raise _wrong_type(row(start + i), "text", "a string", t)
            docs = toks.encode([t or "" for t in texts])
            for ids in docs:
                if builder.full:
                    break
                _process_text_document(ids, toks, builder)
    else:
        if fmt == "chat":
            _require_chat_template(tokenizer)
        for start in range(0, len(dataset), _BATCH):
            if builder.full:
                break
            batch = dataset[start : start + _BATCH]
            size = len(next(iter(batch.values())))
            stats.rows += size
            if fmt == "chat":
                rows = [_check_messages(m, row(start + i)) for i, m in enumerate(batch["messages"])]
                _process_chat_rows(rows, toks, builder, data_args.chat_all_assistant_turns)
            else:  # the form is each row's own: a message-list prompt makes it conversational
                chats, prompts, completions = [], [], []
                for i, (p, c) in enumerate(zip(batch["prompt"], batch["completion"])):
                    if isinstance(p, (list, tuple)):
                        if isinstance(c, str) or c is None:
                            c = [{"role": "assistant", "content": c or ""}]
                        p, c = (_check_messages(p, row(start + i), "prompt"),
                                _check_messages(c, row(start + i), "completion"))
                        chats.append(p + c)
                        continue
                    for column, value in (("prompt", p), ("completion", c)):
                        if value is not None and not isinstance(value, str):  # str() would train on a Python repr
                            raise _wrong_type(row(start + i), column, _PLAIN_EXPECTED[column], value)
                    prompts.append(p or "")
                    completions.append(c or "")
                if chats:
                    _require_chat_template(tokenizer)
                    _process_chat_rows(chats, toks, builder, all_turns=False)
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
