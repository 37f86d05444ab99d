"""Fine-tuning data: raw datasets in, ``{prompt_ids, response_ids, example_id}`` examples and batches out.

    load (loading.py) -> preprocess (preprocess.py: chat, prompt/completion, text windows) -> collate (collator.py)

The canvas itself (slack insertion, fill, noise) is the training side's: :mod:`hf_mdlm.training.canvas`.
"""

import importlib

from .arguments import DATA_FORMATS, FORMAT_COLUMNS, DataArguments
from .collator import DiffusionCollator
from .loading import (
    bundled_corpus_files,
    check_heldout_overlap,
    load_heldout,
    load_raw_datasets,
    prepare_datasets,
    spread_indices,
)
from .preprocess import PreprocessStats, detect_data_format, preprocess_dataset

__all__ = [
    "DATA_FORMATS",
    "FORMAT_COLUMNS",
    "DataArguments",
    "DiffusionCollator",
    "PreprocessStats",
    "bundled_corpus_files",
    "check_heldout_overlap",
    "detect_data_format",
    "load_heldout",
    "load_raw_datasets",
    "prepare_datasets",
    "preprocess_dataset",
    "spread_indices",
]

# Names that lived here before the canvas moved to the training side; still importable from here.
_MOVED = {"build_canvases": "hf_mdlm.training.canvas", "Canvases": "hf_mdlm.training.canvas",
          "SLACK_RULES": "hf_mdlm.training.canvas"}


def __getattr__(name):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
