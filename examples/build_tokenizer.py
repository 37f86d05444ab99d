#!/usr/bin/env python
"""Train the byte-level BPE tokenizer of the bundled Shakespeare corpus.

Usage (from the repository root; takes a few seconds on one CPU core)::

    python examples/build_tokenizer.py
    # options: --train-file hf_mdlm/data/bundled/shakespeare_train.jsonl.gz
    #          --out hf_mdlm/data/bundled/tokenizer --vocab-size 4096

Only the TRAIN split is read, so the held-out works stay unseen. The result is a transformers
tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``) that loads with
``AutoTokenizer.from_pretrained("hf_mdlm/data/bundled/tokenizer")``.

Special tokens (fixed ids, in this order): ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``[MASK]`` 3,
``<slack>`` 4. ``<slack>`` is registered as an extra special token, so
``decode(ids, skip_special_tokens=True)`` removes it. Encoding a text with the default
``add_special_tokens=True`` prepends ``<bos>`` (nothing is appended: the data pipeline adds
``<eos>`` after each response itself).

The build is deterministic: one worker thread (``RAYON_NUM_THREADS=1``), the works fed in file
order, fixed trainer settings. The vocabulary has exactly ``--vocab-size`` entries (special
tokens and the 256 byte symbols included).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

# Must be set before `tokenizers` starts its thread pool: a single thread keeps training order fixed.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "hf_mdlm" / "data" / "bundled"
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "[MASK]", "<slack>"]


def read_works(path: Path):
    """Yield the text of every work of a ``*.jsonl.gz`` (or plain ``.jsonl``) corpus file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)["text"]


def train_tokenizer(texts, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", bos_id)]
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-file", type=Path, default=BUNDLED / "shakespeare_train.jsonl.gz")
    parser.add_argument("--out", type=Path, default=BUNDLED / "tokenizer")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = train_tokenizer(read_works(args.train_file), args.vocab_size)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        mask_token="[MASK]",
        extra_special_tokens=["<slack>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(args.out))

    # Sanity check of the saved folder.
    reloaded = AutoTokenizer.from_pretrained(str(args.out))
    sample = "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer"
    ids = reloaded(sample)["input_ids"]
    assert ids[0] == reloaded.bos_token_id
    assert reloaded.decode(ids, skip_special_tokens=True) == sample
    slack_id = reloaded.convert_tokens_to_ids("<slack>")
    assert reloaded.decode([slack_id] + ids[1:], skip_special_tokens=True) == sample
    print(f"saved {args.out} (vocab {len(reloaded)}); {len(ids) - 1} tokens for {len(sample)} characters")


if __name__ == "__main__":
    main()
