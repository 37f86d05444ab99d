"""`check_hub_folder`: everything that would make an uploaded repository unusable, found before any upload."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from ..tokenization import SLACK_TOKEN
from .files import HUB_CODE_FILES, INSTALLED_CODE, PICKLE_SUFFIXES, TOKENIZER_VOCAB_FILES, link_outside

_LARGE_FILE = 64 * 1024 * 1024  # files scanned for a leaked token are smaller than this


def check_hub_folder(folder) -> list[str]:
    """Every reason why `folder` would not work as a Hub repository of an hf_mdlm model or adapter.

    A model folder needs the three code files, `config.json` with an `auto_map` whose files are present,
    safetensors weights (no pickles), a tokenizer whose `[MASK]` / `<slack>` ids are the config's,
    `generation_config.json` and a `README.md` card. A folder with `adapter_config.json` is an adapter: it
    needs `adapter_model.safetensors`, a base model named by Hub id, a tokenizer with a mask token,
    `generation_config.json` and the card. Returns an empty list when the folder is fine.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    names = hub_files(folder)
    problems = [f"{name} is a link to {target}, outside the folder: an upload would send that file; copy what you "
                "mean to publish into the folder" for name in names
                for target in [link_outside(folder / name, folder)] if target is not None]
    problems += [
        f"{name}: a pickle file; weights must be safetensors (save_pretrained(..., safe_serialization=True)) "
        "and pickles must not be uploaded"
        for name in names if name.lower().endswith(PICKLE_SUFFIXES)
    ]
    problems += [problem for name in names if name.endswith(".safetensors")
                 for problem in [_safetensors_problem(folder / name, name)] if problem]
    if "adapter_config.json" in names:
        problems += _check_adapter_folder(folder, names)
    else:
        problems += _check_model_folder(folder, names)
    problems += _check_card(folder, names)
    return problems


# The JSON files of a model or adapter folder that loading reads.
_FOLDER_JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json", "adapter_config.json",
                      "model.safetensors.index.json")


def check_folder_files(folder, name=None) -> None:
    """Raise a ValueError naming the file when a local model folder holds a JSON file that does not parse, or a
    safetensors file whose header is broken or disagrees with its size. Loading would otherwise fail deep inside a
    dependency without naming the file (or, for `generation_config.json`, drop it silently). `name`: what the user
    passed, when `folder` is its Hub snapshot."""
    folder = Path(folder)
    name = name or folder
    if not folder.is_dir():
        text = str(folder)  # a path, not an ORG/NAME Hub id: transformers would say "Repo id must be in the form..."
        if text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or (folder.exists() and not folder.is_dir()):
            raise FileNotFoundError(f"{folder} is not a model folder (no such folder)")
        return
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        # transformers would try to load the adapter's base by its auto_map (asking to run its code): say what it is
        raise ValueError(f"{name} is a LoRA adapter (adapter_config.json, no config.json), not a model: pass the "
                         "merged model folder (finetune.py's --output_dir), or load the adapter onto its base with "
                         "peft.PeftModel.from_pretrained, as its model card shows")
    problems = []
    for file in _FOLDER_JSON_FILES:
        if (folder / file).is_file():
            try:
                json.loads((folder / file).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                problems.append(f"{file} is not valid JSON ({error})")
    problems += [problem for path in sorted(folder.glob("*.safetensors"))
                 for problem in [_safetensors_problem(path, path.name)] if problem]
    if problems:
        raise ValueError(f"the model folder {name} cannot be loaded: " + "; ".join(problems))


def hub_files(folder) -> list[str]:
    """The files of `folder` that an upload sends, as sorted repository paths (hidden files and folders skipped)."""
    folder = Path(folder)
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(relative.as_posix())
    return sorted(files)


def _read_json(path: Path, problems: list[str]):
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"{path.name} cannot be read as JSON: {error}")
        return None


def _check_model_folder(folder: Path, names: list[str]) -> list[str]:
    problems = []
    for name in HUB_CODE_FILES:
        if name not in names:
            problems.append(f"{name} missing: the model code must ship with the weights (trust_remote_code)")
    config = _read_json(folder / "config.json", problems)
    if config is None and "config.json" not in names:
        problems.append("config.json missing")
    if config is not None:
        problems += _check_auto_map(folder, config)
    problems += _check_weights(folder, names)
    tokenizer, tokenizer_problems = _load_tokenizer(folder, names)
    problems += tokenizer_problems
    if config is not None and tokenizer is not None:
        problems += _check_token_ids(config, tokenizer)
    generation = _read_json(folder / "generation_config.json", problems)
    if "generation_config.json" not in names:
        problems.append("generation_config.json missing: generate() would not know the sampling defaults")
    elif generation is not None and config is not None:
        for field in ("mask_token_id", "slack_token_id"):
            value = generation.get(field)
            if value is not None and value != config.get(field):
                problems.append(f"generation_config.json {field}={value} but config.json has {config.get(field)}")
    return problems


def _check_auto_map(folder: Path, config: dict) -> list[str]:
    """The code that `trust_remote_code=True` will run: an hf_mdlm model's is the installed hf_mdlm's (export_for_hub
    puts it there), never code of another repository."""
    from ..configuration_mdlm import DEFAULT_AUTO_MAP

    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        return ["config.json has no auto_map: AutoModel.from_pretrained(..., trust_remote_code=True) "
                "cannot find the model classes"]
    problems = [f"config.json auto_map has no {key!r} entry" for key in ("AutoConfig", "AutoModel")
                if key not in auto_map]
    if config.get("model_type") == "mdlm":
        if auto_map != DEFAULT_AUTO_MAP:
            problems.append(f"config.json auto_map is {auto_map}, not hf_mdlm's {DEFAULT_AUTO_MAP}: loaders would run "
                            "other code (export the folder with export_for_hub, which writes hf_mdlm's)")
        problems += [f"{name} is not the installed hf_mdlm's: loaders would run other code (export the folder with "
                     "export_for_hub, which writes hf_mdlm's)" for name in HUB_CODE_FILES if (folder / name).is_file()
                     and (folder / name).read_bytes() != (INSTALLED_CODE / name).read_bytes()]
    for key, refs in auto_map.items():
        for ref in refs if isinstance(refs, (list, tuple)) else [refs]:
            if ref is None:  # no class of that kind
                continue
            if "--" in str(ref):
                problems.append(f"config.json auto_map[{key!r}] is {ref!r}: code in another repository, which would "
                                "run under this repository's name; ship the code in the folder")
                continue
            module, _, class_name = str(ref).rpartition(".")
            path = folder / (module.replace(".", "/") + ".py")
            if not module or not path.exists():
                problems.append(f"config.json auto_map[{key!r}] names {ref!r} but {path.name} is missing")
            elif not re.search(rf"^class {re.escape(class_name)}\b", path.read_text(encoding="utf-8"), re.M):
                problems.append(f"config.json auto_map[{key!r}] names {ref!r} but {path.name} defines no "
                                f"class {class_name}")
    return problems


def _check_weights(folder: Path, names: list[str]) -> list[str]:
    problems = []
    if "model.safetensors.index.json" in names:
        index = _read_json(folder / "model.safetensors.index.json", problems) or {}
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            problems.append("model.safetensors.index.json lists no weights")
        problems += [f"{shard} (listed in model.safetensors.index.json) missing" for shard in shards
                     if shard not in names]
    elif not any(re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", name) for name in names):
        problems.append("no safetensors weights (model.safetensors): save with save_pretrained")
    return problems


def _load_tokenizer(folder: Path, names: list[str]):
    """(tokenizer, problems): the folder's tokenizer loaded as a user would, offline and without remote code."""
    if "tokenizer_config.json" not in names or not any(name in names for name in TOKENIZER_VOCAB_FILES):
        return None, ["no tokenizer files (tokenizer_config.json and tokenizer.json or another vocabulary "
                      "file): save the tokenizer into the folder"]
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer warns about the custom model type in config.json
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True), []
    except Exception as error:  # any failure means users cannot load it either
        return None, [f"the tokenizer cannot be loaded: {type(error).__name__}: {error}"]
    finally:
        hf_logging.set_verbosity(verbosity)


def _token_id(tokenizer, token) -> int | None:
    """Id of `token` when the tokenizer really has it (not the unknown token), else None."""
    if not token:
        return None
    if str(token) not in tokenizer.get_vocab():
        return None
    value = tokenizer.convert_tokens_to_ids(str(token))
    if value is None or (tokenizer.unk_token_id is not None and value == tokenizer.unk_token_id
                         and str(token) != tokenizer.unk_token):
        return None
    return int(value)


def _check_token_ids(config: dict, tokenizer) -> list[str]:
    problems = []
    mask_token = tokenizer.mask_token
    tokenizer_mask = _token_id(tokenizer, mask_token)
    if tokenizer_mask is None:
        problems.append("the tokenizer has no mask token ([MASK]): add it with "
                        "hf_mdlm.tokenization.add_diffusion_tokens and save the tokenizer again")
    config_mask = config.get("mask_token_id")
    if config_mask is None:
        problems.append("config.json has no mask_token_id")
    elif tokenizer_mask is not None and config_mask != tokenizer_mask:
        problems.append(f"config.json mask_token_id={config_mask} but the tokenizer's mask token {mask_token!r} "
                        f"has id {tokenizer_mask}")
    tokenizer_slack = _token_id(tokenizer, SLACK_TOKEN)
    config_slack = config.get("slack_token_id")
    if config_slack is not None and tokenizer_slack is None:
        problems.append(f"config.json slack_token_id={config_slack} but the tokenizer has no {SLACK_TOKEN} token")
    elif config_slack is None and tokenizer_slack is not None:
        problems.append(f"the tokenizer has {SLACK_TOKEN} (id {tokenizer_slack}) but config.json has no "
                        "slack_token_id")
    elif config_slack is not None and config_slack != tokenizer_slack:
        problems.append(f"config.json slack_token_id={config_slack} but the tokenizer's {SLACK_TOKEN} has id "
                        f"{tokenizer_slack}")
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens but config.json vocab_size is {vocab_size}")
    return problems


def _looks_local(name: str) -> bool:
    """True for a filesystem path (which Hub users cannot load) rather than a Hub repo id."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
        or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or Path(name).expanduser().exists()
    )


def _check_adapter_folder(folder: Path, names: list[str]) -> list[str]:
    problems = []
    config = _read_json(folder / "adapter_config.json", problems) or {}
    if "adapter_model.safetensors" not in names:
        problems.append("adapter_model.safetensors missing: save the adapter with PEFT's save_pretrained "
                        "(safe_serialization=True)")
    base = config.get("base_model_name_or_path")
    if not base:
        problems.append("adapter_config.json names no base model (base_model_name_or_path): pass base_model=")
    elif _looks_local(str(base)):
        problems.append(f"adapter_config.json base_model_name_or_path={base!r} is a local path: name the base "
                        "model by its Hub id (export_for_hub(..., base_model=...))")
    tokenizer, tokenizer_problems = _load_tokenizer(folder, names)
    problems += tokenizer_problems
    if tokenizer is not None and _token_id(tokenizer, tokenizer.mask_token) is None:
        problems.append("the tokenizer has no mask token ([MASK])")
    generation = _read_json(folder / "generation_config.json", problems)
    if "generation_config.json" not in names:
        problems.append("generation_config.json missing: it carries the [MASK]/<slack> ids for generate()")
    elif generation is not None and tokenizer is not None:
        mask_id = _token_id(tokenizer, tokenizer.mask_token)
        if mask_id is not None and generation.get("mask_token_id") not in (None, mask_id):
            problems.append(f"generation_config.json mask_token_id={generation.get('mask_token_id')} but the "
                            f"tokenizer's mask token has id {mask_id}")
    return problems


def _check_card(folder: Path, names: list[str]) -> list[str]:
    if "README.md" not in names:
        return ["README.md (the model card) missing"]
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(folder / "README.md")
    except Exception as error:
        return [f"README.md metadata is not valid YAML: {error}"]
    if not metadata or "library_name" not in metadata:
        return ["README.md has no YAML metadata with library_name"]
    return []


def _safetensors_problem(path: Path, name: str) -> str | None:
    """Why a safetensors file is unreadable (a truncated or overlong file, a broken header), or None. Only the
    header is read: the data size it declares must equal the file's size after the header."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{name} is not a safetensors file ({size} bytes: no header)"
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                return f"{name} is truncated: its header alone should take {length} bytes, the file has {size}"
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        return f"{name} has a broken safetensors header: {error}"
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return (f"{name} is {state}: the header describes {expected:,} bytes, the file has {size:,} "
                "(an interrupted write?)")
    return None


def _safetensors_numel(path: Path) -> tuple[int, set[str]]:
    """Number of weights in a safetensors file (read from its header, no tensor is loaded) and their dtypes."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total, dtypes = 0, set()
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in entry["shape"]:
            count *= dim
        total += count
        dtypes.add(entry["dtype"])
    return total, dtypes


def _files_with_token(folder: Path, names: list[str], token: str) -> list[str]:
    needle = token.encode()
    leaked = []
    for name in names:
        path = folder / name
        if path.stat().st_size < _LARGE_FILE and needle in path.read_bytes():
            leaked.append(name)
    return leaked
