"""Which files make an hf_mdlm folder: the Hub code files, tokenizer files, run records, adapter files."""

from __future__ import annotations

import json
import os
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


INSTALLED_CODE = Path(__file__).resolve().parents[1]  # the package folder holding HUB_CODE_FILES


def copy_hub_code(dst_dir) -> None:
    """Put the self-contained model code next to the weights, for `trust_remote_code=True` loading."""
    for name in HUB_CODE_FILES:
        shutil.copyfile(INSTALLED_CODE / name, Path(dst_dir) / name)


def own_hub_code(folder) -> None:
    """Make the hf_mdlm model folder `folder` carry the installed code files and the `auto_map` that names them,
    whatever it came with: another folder's code files, or an `auto_map` entry naming code in another repository,
    would run under the publisher's name for everyone who loads it with `trust_remote_code=True`."""
    from ..configuration_mdlm import DEFAULT_AUTO_MAP

    copy_hub_code(folder)
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("auto_map") != DEFAULT_AUTO_MAP:
        config["auto_map"] = dict(DEFAULT_AUTO_MAP)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def link_outside(path, folder) -> str | None:
    """Where `path` (a file of `folder`) leads when it is a link out of `folder`, else None. A Hub cache snapshot's
    links into its repository's `blobs/` are its own files."""
    path, folder = Path(path), Path(folder)
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    home = Path(os.path.realpath(folder))
    inside = [home] + ([home.parent.parent / "blobs"] if home.parent.name == "snapshots" else [])
    return None if any(target == base or base in target.parents for base in inside) else str(target)
