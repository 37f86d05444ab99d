"""Which files make an hf_mdlm folder: the Hub code files, tokenizer files, run records, adapter files."""

from __future__ import annotations

import shutil
from pathlib import Path

RUN_FILES = ("trainer_state.json", "training_args.json", "run_info.json", "results.json")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

# Files that hold pickles: the Hub flags them and loading them can run code. Weights must be safetensors.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


# The files that ship to the Hub with every saved model (configuration, modeling, generation).
HUB_CODE_FILES = ("configuration_mdlm.py", "modeling_mdlm.py", "generation_mdlm.py")

# Tokenizer files a LLaDA folder may hold; copied as they are.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)


def copy_hub_code(dst_dir) -> None:
    """Put the self-contained model code next to the weights, for `trust_remote_code=True` loading."""
    here = Path(__file__).resolve().parents[1]
    for name in HUB_CODE_FILES:
        shutil.copyfile(here / name, Path(dst_dir) / name)
