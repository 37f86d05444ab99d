"""Loading raw datasets (local files, folders, Hub names, the bundled corpus) and splitting off held-out data."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .arguments import FORMAT_COLUMNS, DataArguments
from .preprocess import check_position_limit, detect_data_format, preprocess_dataset

logger = logging.getLogger(__name__)

_TEXT_SUFFIXES = (".txt", ".text")

_JSON_SUFFIXES = (".json", ".jsonl")
_SOURCE_ROW = "__hf_mdlm_source_row__"

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")


def bundled_corpus_files(root: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """Paths of the bundled Shakespeare corpus and its tokenizer, or None when they are not there.

    They ship inside the package (``hf_mdlm/data/bundled/``, package data of the wheel);
    ``root`` overrides that folder. Keys: ``train``, ``eval``, ``tokenizer``.
    """
    folder = Path(root) if root is not None else Path(__file__).resolve().parent / "bundled"
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


def _open_binary(path: str):
    """`path` opened for reading bytes, decompressed (.gz/.bz2/.xz); None for a compression we cannot read here."""
    lower = path.lower()
    if lower.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    if lower.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rb")
    if lower.endswith(".xz"):
        import lzma

        return lzma.open(path, "rb")
    if lower.endswith((".zst", ".zstd")):
        return None
    return open(path, "rb")


def check_data_file(path: str) -> None:
    """Fail with a message naming `path` when it cannot give rows: an empty file, (text formats: json, jsonl,
    csv, txt) bytes that are not UTF-8, with the line number, a .jsonl line that is not a JSON object, or a .json
    file that is not valid JSON or holds an empty list or object. One streaming pass (and one json.load of a .json
    file); `datasets` would otherwise fail with a bare StopIteration, or with an error that does not name the file
    long after loading."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"data file {path} is empty: it has no rows")
    if _builder_for(path) == "parquet":
        return
    handle = _open_binary(path)
    if handle is None:
        return
    line, carry, blank = 1, b"", True
    json_lines = ".jsonl" in Path(path).suffixes  # one row per line: a malformed one is named here, not by pyarrow
    with handle:
        while True:
            chunk = handle.read(1 << 20)
            data = carry + chunk
            cut = len(data) if not chunk else data.rfind(b"\n") + 1  # a newline byte never splits a UTF-8 character
            part, carry = data[:cut], data[cut:]
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError as error:
                where = line + part.count(b"\n", 0, error.start)
                raise ValueError(
                    f"data file {path} is not UTF-8 text: line {where} has the byte(s) {part[error.start:error.end]!r} "
                    f"({error.reason}); convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            blank = blank and not text.strip()
            if json_lines:
                _check_json_lines(text, path, line)
            line += part.count(b"\n")
            if not chunk:
                break
    if blank:
        raise ValueError(f"data file {path} is empty: it holds only whitespace, no rows")
    if _strip_compression(os.path.basename(path)).endswith(".json"):
        _check_json_file(path)


def _check_json_file(path: str) -> None:
    """A .json file is one JSON value with rows, or JSON lines (`datasets` reads both)."""
    with _open_binary(path) as handle:
        text = handle.read().decode("utf-8")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"data file {path} is not usable JSON: its values are nested too deeply") from None
    except ValueError as error:
        if getattr(error, "msg", None) != "Extra data":
            raise ValueError(f"data file {path} is not valid JSON ({error})") from None
        _check_json_lines(text, path, 1)  # more than one value: JSON lines, checked line by line
        return
    if isinstance(value, (list, dict)) and not value:
        raise ValueError(f"data file {path} holds an empty JSON {type(value).__name__}: it has no rows")


def _check_json_lines(text: str, path: str, first_line: int) -> None:
    """Every non-blank line of `text` (which starts at line `first_line` of `path`) is one JSON object."""
    for offset, row in enumerate(text.split("\n")):
        if not row.strip():
            continue
        try:
            value = json.loads(row)
        except RecursionError:
            raise ValueError(f"data file {path}: line {first_line + offset} is nested too deeply") from None
        except ValueError as error:
            raise ValueError(f"data file {path}: line {first_line + offset} is not valid JSON ({error}): "
                             f"{row[:80]!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"data file {path}: line {first_line + offset} is a JSON {type(value).__name__}, not an "
                             f"object with the format's columns: {row[:80]!r}")


def _load_local(name: str, *args, **kwargs):
    """`datasets.load_dataset` on local data, its errors re-raised naming the file or folder (its own, e.g.
    "An error occurred while generating the dataset", do not)."""
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except (datasets.exceptions.DatasetGenerationError, ValueError) as error:
        cause = error.__cause__ or error
        raise ValueError(f"{name} could not be loaded: {type(cause).__name__}: {cause}") from error


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
        check_data_file(path)
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        return _load_local(f"data file {path}", builder, data_files={"train": path}, cache_dir=cache_dir, **kwargs)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(path)
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        data_files = sorted(
            os.path.join(d, f) for d, _, names in os.walk(path) for f in names if _builder_for(f) is not None
        )
        for data_file in data_files:
            check_data_file(data_file)
        if data_files and all(_builder_for(f) == "text" for f in data_files):
            return _load_local(
                f"data folder {path}", "text", data_files={"train": data_files}, sample_by="document",
                cache_dir=cache_dir,
            )
        return _load_local(f"data folder {path}", path, config, cache_dir=cache_dir)
    if path.startswith((".", "/", "~")) or path.endswith(_JSON_SUFFIXES + _TEXT_SUFFIXES + (".parquet", ".gz")):
        raise FileNotFoundError(f"dataset file or folder not found: {path!r}")
    try:  # a Hub dataset id, or a local name mistyped: say both
        return datasets.load_dataset(path, config, cache_dir=cache_dir)
    except Exception as error:  # offline, not found, no access: datasets' messages speak of the Hub only
        raise ValueError(f"dataset {path!r}: no local file or folder by that name, and loading it from the Hub "
                         f"failed ({type(error).__name__}: {error})") from error


def prepare_datasets(data_args: DataArguments, tokenizer, *, raw_datasets=None, max_length: int | None = None):
    """Load, split and preprocess; return ``(train_dataset, eval_dataset or None)``.

    Data source: ``raw_datasets`` if given, else ``data_args.dataset`` (a path, Hub name, ``Dataset`` or
    ``DatasetDict``), else the bundled Shakespeare corpus (its held-out works are the eval split).
    Eval: ``data_args.eval_split`` (a split name or a file path), else a "validation" split if there is
    one, else ``eval_fraction`` of the training rows (seeded). A single-document text corpus cannot be
    split by rows: then the LAST ``eval_fraction`` of its windows is the eval set. ``max_length``: the model's
    position limit; prompts are left-truncated so that prompt + canvas fit it (counted and logged).
    """
    import datasets

    check_position_limit(data_args, max_length)

    source = raw_datasets if raw_datasets is not None else data_args.dataset
    eval_source = None
    if source is None:
        bundled = bundled_corpus_files()
        if bundled is None:
            raise ValueError(
                "no dataset given and the bundled corpus (hf_mdlm/data/bundled/) was not found; "
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
    eval_raw, eval_name = None, None
    train_rows = eval_rows = None  # each row's index in its file, where a split reorders them
    split_processed = False

    es = data_args.eval_split
    if es is not None:
        if os.path.exists(es):
            _refuse_same_file(source, es)
            eval_source = es
        elif es == data_args.train_split:
            raise ValueError(f"eval split {es!r} is the training split itself: its eval_loss would measure the "
                             "training rows; name another split or a held-out file")
        elif es in raw:
            eval_raw, eval_name = raw[es], f"split {es!r}"
        else:
            raise ValueError(f"eval split {es!r} is neither a split of the dataset ({list(raw)}) nor an existing path")
    if eval_source is not None:
        loaded = load_raw_datasets(eval_source, None, cache_dir)
        eval_raw, eval_name = loaded[next(iter(loaded))], eval_source
    elif eval_raw is None and "validation" in raw and data_args.train_split != "validation":
        eval_raw, eval_name = raw["validation"], "split 'validation'"
        logger.info("using the dataset's 'validation' split for evaluation")
    elif eval_raw is None and data_args.eval_fraction > 0:
        if len(train_raw) >= 2:
            n_eval = max(1, round(data_args.eval_fraction * len(train_raw)))
            n_eval = min(n_eval, len(train_raw) - 1)
            # (the index column changes nothing in the split; it lets errors name a row by its place in the file)
            indexed = train_raw.add_column(_SOURCE_ROW, list(range(len(train_raw))))
            parts = indexed.train_test_split(test_size=n_eval, seed=data_args.eval_split_seed, shuffle=True)
            train_rows, eval_rows = parts["train"][_SOURCE_ROW], parts["test"][_SOURCE_ROW]
            train_raw, eval_raw = (parts[name].remove_columns(_SOURCE_ROW) for name in ("train", "test"))
            eval_name = f"the {n_eval} training rows held out by eval_fraction"
            logger.info("held out %d of %d training rows for evaluation", n_eval, len(train_raw) + n_eval)
        else:
            split_processed = True

    train_ds, _ = preprocess_dataset(
        train_raw,
        tokenizer,
        data_args,
        split="train",
        max_samples=None if split_processed else data_args.max_train_samples,
        max_length=max_length,
        source_rows=train_rows,
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
        eval_ds, eval_stats = preprocess_dataset(
            eval_raw, tokenizer, data_args, split="eval", max_samples=data_args.max_eval_samples,
            max_length=max_length, source_rows=eval_rows,
        )
        if len(eval_ds) == 0:  # an evaluation of no examples logs no eval_loss, silently
            raise ValueError(f"preprocessing left no eval examples from {eval_name}: {eval_stats.summary()}")
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


def spread_indices(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when ``count`` is None or >= total).

    Held-out corpora are stored work by work, so the first N windows would all come from one work; evenly
    spaced windows cover all of them.
    """
    total = int(total)
    if count is None or count >= total:
        return list(range(total))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, count)})


def load_heldout(data_args, tokenizer, *, max_examples: int | None = None, spread: bool = True,
                 max_length: int | None = None):
    """The held-out part of a dataset, preprocessed into ``{prompt_ids, response_ids, example_id}`` rows.

    Only the held-out part is read and tokenised (not the training split). Where it comes from, given a
    :class:`hf_mdlm.data.DataArguments`:

    * ``data_args.eval_split`` when set: a split name of ``data_args.dataset``, or a file/folder path;
    * else, with no ``data_args.dataset``: the bundled corpus's held-out works;
    * else the dataset's ``validation`` split, else its ``test`` split;
    * else a ``ValueError``: a random slice of the training rows is never taken silently as held-out data.

    ``max_examples`` keeps that many examples, spread evenly over the split (``spread=True``; held-out
    files are stored document by document) or the first ones.
    """
    cache_dir = getattr(data_args, "dataset_cache_dir", None)
    source = data_args.dataset
    split = data_args.eval_split
    if split is not None and os.path.exists(split):
        raw = load_raw_datasets(split, None, cache_dir)
        part, name = raw[next(iter(raw))], split
    elif source is None:
        bundled = bundled_corpus_files()
        if bundled is None:
            raise ValueError("no dataset given and the bundled corpus (hf_mdlm/data/bundled/) was not found")
        if split is not None:
            raise ValueError(f"eval_split {split!r} is not a file; the bundled corpus's held-out part has no named splits")
        raw = load_raw_datasets(str(bundled["eval"]), None, cache_dir)
        part, name = raw["train"], "bundled held-out works"
    else:
        raw = load_raw_datasets(source, data_args.dataset_config, cache_dir)
        candidates = [split] if split is not None else ["validation", "test"]
        found = next((c for c in candidates if c in raw), None)
        if found is None:
            if split is not None:
                raise ValueError(f"eval split {split!r} is neither a split of {source!r} ({list(raw)}) nor an existing path")
            raise ValueError(
                f"dataset {source!r} has no held-out part: its splits are {list(raw)} (no 'validation' or 'test'). "
                "Pass eval_split (a split name, or a file of held-out rows)."
            )
        part, name = raw[found], f"{source}[{found}]"
    limit = None if (spread or max_examples is None) else max_examples
    rows, _ = preprocess_dataset(part, tokenizer, data_args, split="eval", max_samples=limit, max_length=max_length)
    if len(rows) == 0:
        raise ValueError(f"the held-out part ({name}) gave no examples after preprocessing")
    if spread and max_examples is not None and len(rows) > max_examples:
        rows = rows.select(spread_indices(len(rows), max_examples))
    return rows


def _refuse_same_file(train_source, heldout_source) -> None:
    """Held-out data that are the training file (or folder) itself: a measurement on training rows."""
    if (isinstance(train_source, (str, os.PathLike)) and os.path.exists(train_source)
            and os.path.exists(heldout_source) and os.path.samefile(train_source, heldout_source)):
        raise ValueError(f"the held-out data {heldout_source} is the training data itself; pass a held-out file "
                         "with other documents")


def _row_keys(part, fmt: str) -> list[str]:
    """One canonical string per row: its format's columns, whitespace collapsed (JSON for message lists)."""
    import json

    keys = []
    for row in part:
        values = []
        for column in FORMAT_COLUMNS[fmt]:
            value = row[column]
            values.append(" ".join(value.split()) if isinstance(value, str) else json.dumps(value, sort_keys=True))
        keys.append("\x00".join(values))
    return keys


def check_heldout_overlap(train_source, heldout_source, *, config: str | None = None, train_split: str = "train",
                          cache_dir: str | None = None, min_chars: int = 200) -> None:
    """Refuse held-out data that overlap the training data, with a ValueError that says how.

    ``train_source``: a path or Hub name (its ``train_split``); ``heldout_source``: a file or folder path. They
    overlap when they are the same file, when a held-out row equals a training row (the format's columns,
    whitespace collapsed), or, for plain text, when one's document of at least ``min_chars`` characters lies
    inside one of the other's. A measurement on training rows would be no held-out measurement at all.
    """
    _refuse_same_file(train_source, heldout_source)
    train = load_raw_datasets(train_source, config, cache_dir)
    if train_split not in train:
        raise ValueError(f"train split {train_split!r} not found; the dataset has splits {list(train)}")
    train = train[train_split]
    loaded = load_raw_datasets(heldout_source, None, cache_dir)
    heldout = loaded[next(iter(loaded))]
    fmt = detect_data_format(train.column_names)
    if any(c not in heldout.column_names for c in FORMAT_COLUMNS[fmt]):
        return  # a format mismatch is reported by preprocessing, with the columns
    train_keys = _row_keys(train, fmt)
    known = set(train_keys)
    heldout_keys = _row_keys(heldout, fmt)
    shared = [i for i, key in enumerate(heldout_keys) if key in known]
    long_train = [k for k in train_keys if len(k) >= min_chars] if fmt == "text" else []
    if not shared and long_train and len(long_train) * len(heldout_keys) <= 100_000:  # documents, not lines
        shared = [i for i, key in enumerate(heldout_keys) if len(key) >= min_chars
                  and any(key in doc or doc in key for doc in long_train)]
    if shared:
        example = heldout_keys[shared[0]].replace("\x00", " | ")
        raise ValueError(
            f"the held-out data {heldout_source} overlap the training data {train_source}: {len(shared)} of its "
            f"{len(heldout_keys)} rows/documents are also in the training data (e.g. row {shared[0]}: "
            f"{example[:80]!r}). Held-out metrics need documents the models never trained on."
        )
