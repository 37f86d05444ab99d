"""Fine-tuning data: raw datasets in, ``{prompt_ids, response_ids, example_id}`` examples and batches out.

    load (loading.py) -> preprocess (preprocess.py: chat, prompt/completion, text windows) -> collate (collator.py)

The canvas itself (slack insertion, fill, noise) is the training side's: :mod:`hf_mdlm.training.canvas`.
"""

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
