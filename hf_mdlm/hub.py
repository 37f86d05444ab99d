"""Publish hf_mdlm models and LoRA adapters on the Hugging Face Hub.

    from hf_mdlm.hub import export_for_hub, push_to_hub

    folder = export_for_hub(trainer.model, tokenizer, "hub/my-model", repo_id="me/my-model",
                            training_args=trainer.args, trainer_state=trainer.state)
    push_to_hub(folder, "me/my-model")

`export_for_hub` writes a complete, self-contained folder: weights (safetensors), config with `auto_map`, the
model code, tokenizer, `generation_config.json`, the run's records (`trainer_state.json`, `training_args.json`,
`run_info.json`, `results.json`) and a `README.md` model card whose facts are all read from those files.
`check_hub_folder` lists everything that would make the uploaded repository unusable, and `push_to_hub`
refuses to upload a folder with any problem, before it makes a network call.

Tokens: `push_to_hub` takes `token=` or lets `huggingface_hub` find one (`HF_TOKEN`, `hf auth login`). It is
never printed, logged or written; training arguments are saved with their `*_token` fields blanked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from .convert import HUB_CODE_FILES, TOKENIZER_FILES

__all__ = [
    "check_hub_folder",
    "export_for_hub",
    "hub_files",
    "push_to_hub",
    "render_model_card",
    "save_run_record",
]

SLACK_TOKEN = "<slack>"
RUN_FILES = ("trainer_state.json", "training_args.json", "run_info.json", "results.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Files that hold pickles: the Hub flags them and loading them can run code. Weights must be safetensors.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
DEFAULT_COMMIT_MESSAGE = "Upload masked diffusion LM exported with hf_mdlm"
DEFAULT_PROMPT = "Once upon a time"
_TEMPLATE_NAMES = {"model": "model_card.md", "adapter": "adapter_card.md"}
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_LARGE_FILE = 64 * 1024 * 1024  # files scanned for a leaked token are smaller than this


# ----------------------------------------------------------------------------------------------------------------
# Checking a folder


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
    problems = [
        f"{name}: a pickle file; weights must be safetensors (save_pretrained(..., safe_serialization=True)) "
        "and pickles must not be uploaded"
        for name in names if name.lower().endswith(PICKLE_SUFFIXES)
    ]
    if "adapter_config.json" in names:
        problems += _check_adapter_folder(folder, names)
    else:
        problems += _check_model_folder(folder, names)
    problems += _check_card(folder, names)
    return problems


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
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        return ["config.json has no auto_map: AutoModel.from_pretrained(..., trust_remote_code=True) "
                "cannot find the model classes"]
    problems = [f"config.json auto_map has no {key!r} entry" for key in ("AutoConfig", "AutoModel")
                if key not in auto_map]
    for key, refs in auto_map.items():
        for ref in refs if isinstance(refs, (list, tuple)) else [refs]:
            if ref is None or "--" in str(ref):  # None: no class of that kind; "repo--module.Class": code elsewhere
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


# ----------------------------------------------------------------------------------------------------------------
# Records of a training run


_SECRET_FIELDS = {"token", "hub_token", "hf_token", "push_to_hub_token", "use_auth_token", "auth_token", "api_token"}


def _blank_secrets(value):
    """A copy of a JSON-able structure with tokens removed: token fields, and any string that looks like hf_...."""
    if isinstance(value, dict):
        return {
            key: (f"<{str(key).upper()}>" if str(key) in _SECRET_FIELDS and isinstance(item, str)
                  else _blank_secrets(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_blank_secrets(item) for item in value]
    if isinstance(value, str):
        return _TOKEN_PATTERN.sub("<TOKEN>", value)
    return value


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _args_dict(args) -> dict:
    """Training arguments as a plain dict: a TrainingArguments, another dataclass, a dict or a JSON file path."""
    if args is None:
        return {}
    if isinstance(args, (str, os.PathLike)):
        return json.loads(Path(args).read_text(encoding="utf-8"))
    if hasattr(args, "to_dict"):
        return _jsonable(args.to_dict())  # TrainingArguments.to_dict also blanks its *_token fields
    if dataclasses.is_dataclass(args):
        return _jsonable(dataclasses.asdict(args))
    return _jsonable(dict(args))


def _run_info_from_args(args) -> dict:
    """World size, hardware and versions, read from live TrainingArguments in the training process."""
    import torch
    import transformers

    from . import __version__

    info: dict[str, Any] = {}
    try:
        info["world_size"] = int(args.world_size)
        device = args.device
        if device.type == "cuda":
            info["hardware"] = f"{torch.cuda.get_device_name(device)} (cuda)"
        elif device.type == "cpu":
            info["hardware"] = "CPU"
        else:
            info["hardware"] = device.type
    except Exception:  # not a TrainingArguments (or no device): leave them unrecorded
        pass
    versions = {"hf_mdlm": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    info["versions"] = versions
    return info


def save_run_record(training_args, output_dir, *, data_args=None, base_model=None) -> None:
    """Write `training_args.json` (tokens blanked) and `run_info.json` (world size, hardware, versions, data)
    into `output_dir`. Call it in the training process (rank 0) so that the hardware is the training hardware;
    `export_for_hub` and the model card read both files.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "training_args.json").write_text(
        json.dumps(_blank_secrets(_args_dict(training_args)), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    info = _run_info_from_args(training_args)
    if data_args is not None:
        info["data"] = _blank_secrets(_args_dict(data_args))
    if base_model is not None:
        info["base_model"] = str(base_model)
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Export


def _is_peft_model(obj) -> bool:
    return hasattr(obj, "peft_config") and hasattr(obj, "get_base_model")


def _copy_files(src: Path, dst: Path, names) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _model_dir_files(src: Path) -> list[str]:
    """What a model folder contributes to the upload (not checkpoints, logs, pickles or an old card)."""
    names = {"config.json", "generation_config.json", "model.safetensors.index.json", *HUB_CODE_FILES}
    names.update(p.name for p in src.glob("*.safetensors"))
    config = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").exists() else {}
    for refs in (config.get("auto_map") or {}).values():
        for ref in refs if isinstance(refs, (list, tuple)) else [refs]:
            if ref and "--" not in str(ref):
                names.add(str(ref).rpartition(".")[0].replace(".", "/") + ".py")
    return sorted(names)


def _save_tokenizer(tokenizer, out: Path) -> None:
    if tokenizer is None:
        return
    if isinstance(tokenizer, (str, os.PathLike)):
        if Path(tokenizer).is_dir():
            _copy_files(Path(tokenizer), out, TOKENIZER_FILES)
            return
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    tokenizer.save_pretrained(str(out))


def _write_trainer_state(state, out: Path) -> None:
    path = out / "trainer_state.json"
    if isinstance(state, (str, os.PathLike)):
        shutil.copyfile(state, path)
    elif hasattr(state, "save_to_json"):
        state.save_to_json(str(path))
    else:
        path.write_text(json.dumps(_jsonable(dataclasses.asdict(state) if dataclasses.is_dataclass(state)
                                             else dict(state)), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _complete_generation_config(out: Path, model_config: dict | None) -> None:
    """Make sure generation_config.json exists and names the [MASK]/<slack>/EOS/pad ids."""
    from .generation_mdlm import MDLMGenerationConfig

    path = out / "generation_config.json"
    values = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    sources = [model_config or {}]
    tokenizer, _ = _load_tokenizer(out, hub_files(out))
    if tokenizer is not None:
        sources.append({
            "mask_token_id": _token_id(tokenizer, tokenizer.mask_token),
            "slack_token_id": _token_id(tokenizer, SLACK_TOKEN),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        })
    changed = not path.exists()
    for field in ("mask_token_id", "slack_token_id", "eos_token_id", "pad_token_id"):
        if values.get(field) is None:
            found = next((source[field] for source in sources if source.get(field) is not None), None)
            if found is not None:
                values[field] = found
                changed = True
    if changed:
        values.pop("transformers_version", None)
        MDLMGenerationConfig(**values).save_pretrained(str(out))


def _export_adapter_object(model, out: Path) -> int | None:
    """Save the active adapter of a PeftModel into `out`; returns the embedding rows it expects."""
    name = model.active_adapter
    config = model.peft_config[name]
    # The [MASK]/<slack> rows travel as trainable tokens; saving the whole embedding matrices is not needed.
    embeddings = False if getattr(config, "trainable_token_indices", None) else "auto"
    model.save_pretrained(str(out), selected_adapters=[name], save_embedding_layers=embeddings)
    if name != "default":  # PEFT writes a non-default adapter into a subfolder named after it
        for path in (out / name).iterdir():
            shutil.move(str(path), out / path.name)
        (out / name).rmdir()
    base = model.get_base_model()
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(str(out))
    rows = getattr(base.config, "vocab_size", None)  # resize_token_embeddings keeps it equal to the rows
    return int(rows) if rows else None


def export_for_hub(
    model_or_dir,
    tokenizer,
    out_dir,
    *,
    repo_id: str | None = None,
    training_args=None,
    trainer_state=None,
    base_model: str | None = None,
    datasets=None,
    license: str = "apache-2.0",
    eval_results=None,
    run_dir=None,
    example_prompt: str | None = None,
) -> Path:
    """Write a complete Hub folder for a model or a LoRA adapter into `out_dir` (a new or empty folder).

    Args:
        model_or_dir: an hf_mdlm model (`MDLMForMaskedLM`), a PEFT `PeftModel` (exported as an adapter), or a
            saved folder of either (a folder with `adapter_config.json` is an adapter).
        tokenizer: a tokenizer, a tokenizer folder or Hub id; None keeps the tokenizer files of `model_or_dir`.
        repo_id: the repository id the card is written for (default: the name of `out_dir`).
        training_args: `MDLMTrainingArguments` (in the training process: then world size, hardware and versions
            are recorded too), a dict, or a `training_args.json` path. Saved with tokens blanked.
        trainer_state: `TrainerState`, a dict or a `trainer_state.json` path (its `log_history` gives the losses).
        base_model: Hub id of the model this one was fine-tuned from; for an adapter it replaces
            `base_model_name_or_path` in `adapter_config.json` (default: the one there).
        datasets: Hub dataset id(s) for the card's metadata.
        license: the card's license.
        eval_results: a dict of metrics or a `results.json` path (also copied into the folder).
        run_dir: folder holding the run's `trainer_state.json` / `training_args.json` / `run_info.json` /
            `results.json` (default: `model_or_dir` when it is a folder); explicit arguments win.
        example_prompt: the prompt of the card's usage snippet.

    Returns the folder. Raises ValueError listing every problem `check_hub_folder` finds in it.
    """
    out = Path(out_dir)
    source = Path(model_or_dir) if isinstance(model_or_dir, (str, os.PathLike)) else None
    if source is not None and not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder")
    if source is not None and source.resolve() == out.resolve():
        raise ValueError("out_dir must differ from the model folder: the export never writes into its source")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new or empty folder (stale files would be uploaded)")
    out.mkdir(parents=True, exist_ok=True)

    is_adapter, vocab_rows, lora_source, model_config = False, None, None, None
    if source is not None:
        is_adapter = (source / "adapter_config.json").exists()
        if is_adapter:
            _copy_files(source, out, ADAPTER_FILES + ("generation_config.json",))
        else:
            _copy_files(source, out, _model_dir_files(source))
            if (source / "adapter" / "adapter_config.json").exists():  # trained with LoRA, then merged
                lora_source = json.loads((source / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
        _copy_files(source, out, TOKENIZER_FILES if tokenizer is None else ())
    elif _is_peft_model(model_or_dir):
        is_adapter = True
        vocab_rows = _export_adapter_object(model_or_dir, out)
        model_config = model_or_dir.get_base_model().config.to_dict()
    else:
        model_or_dir.save_pretrained(str(out))
    if (out / "README.md").exists():
        (out / "README.md").unlink()  # a card written by save_pretrained (PEFT): ours replaces it
    _save_tokenizer(tokenizer, out)

    if not is_adapter and (out / "config.json").exists():
        model_config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        if model_config.get("model_type") == "mdlm":
            _complete_mdlm_code(out, model_config)
    if is_adapter:
        adapter_config_path = out / "adapter_config.json"
        adapter_config = json.loads(adapter_config_path.read_text(encoding="utf-8"))
        if base_model is not None:
            adapter_config["base_model_name_or_path"] = str(base_model)
            adapter_config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
        elif not _looks_local(str(adapter_config.get("base_model_name_or_path") or "/")):
            base_model = adapter_config["base_model_name_or_path"]
    _complete_generation_config(out, model_config)

    # The run's records: from run_dir (or the source folder), then the explicit arguments.
    run_dir = Path(run_dir) if run_dir is not None else source
    if run_dir is not None:
        _copy_files(run_dir, out, RUN_FILES)
    if trainer_state is not None:
        _write_trainer_state(trainer_state, out)
    if training_args is not None:
        (out / "training_args.json").write_text(
            json.dumps(_blank_secrets(_args_dict(training_args)), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if not isinstance(training_args, (str, os.PathLike, dict)) and hasattr(training_args, "world_size"):
            existing = json.loads((out / "run_info.json").read_text()) if (out / "run_info.json").exists() else {}
            info = {**existing, **_run_info_from_args(training_args)}
            (out / "run_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if eval_results is not None:
        results = (json.loads(Path(eval_results).read_text(encoding="utf-8"))
                   if isinstance(eval_results, (str, os.PathLike)) else _jsonable(eval_results))
        (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    card = render_model_card(
        out, repo_id=repo_id or out.name, base_model=base_model, datasets=datasets, license=license,
        example_prompt=example_prompt, vocab_rows=vocab_rows, lora=lora_source,
    )
    (out / "README.md").write_text(card, encoding="utf-8")

    problems = check_hub_folder(out)
    if problems:
        raise ValueError(f"the exported folder {out} is not ready for the Hub:\n" + "\n".join(f"- {p}" for p in problems))
    return out


def _complete_mdlm_code(out: Path, config: dict) -> None:
    """An hf_mdlm folder always carries the model code and an auto_map (older saves may lack them)."""
    from .configuration_mdlm import DEFAULT_AUTO_MAP

    missing = [name for name in HUB_CODE_FILES if not (out / name).exists()]
    if missing:
        package = Path(__file__).parent
        for name in missing:
            shutil.copyfile(package / name, out / name)
    if not config.get("auto_map"):
        config["auto_map"] = dict(DEFAULT_AUTO_MAP)
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# The model card


def _template_path(kind: str) -> Path:
    # hf_mdlm/model_cards links to the top-level model_cards/ in a checkout; the wheel carries the files.
    path = Path(__file__).resolve().parent / "model_cards" / _TEMPLATE_NAMES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} is missing: reinstall hf_mdlm")
    return path


def _is_missing(value) -> bool:
    import jinja2

    return value is None or isinstance(value, jinja2.Undefined) or value == "" or value == [] or value == {}


def _show(value) -> str:
    """A fact as card text; "not recorded" when absent."""
    if _is_missing(value):
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "; ".join(f"{key} {json.dumps(item) if isinstance(item, (list, dict)) else _show(item)}"
                         for key, item in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(item) for item in value)
    return str(value)


def _loss(value) -> str:
    if _is_missing(value):
        return "not recorded"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4f}"
    return str(value)


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return f"{n:,}"


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


def _count_weights(folder: Path, pattern: str):
    total, dtypes = 0, set()
    for path in sorted(folder.glob(pattern)):
        count, kinds = _safetensors_numel(path)
        total += count
        dtypes |= kinds
    return (total or None), (", ".join(sorted(dtypes)) or None)


def _flatten_results(results, prefix="") -> list[tuple[str, Any]]:
    rows = []
    if isinstance(results, dict):
        for key, value in results.items():
            rows += _flatten_results(value, f"{prefix}{key}.") if isinstance(value, (dict, list)) else [
                (f"{prefix}{key}", value)]
    elif isinstance(results, list):
        for i, value in enumerate(results):
            rows += _flatten_results(value, f"{prefix}{i}.")
    else:
        rows.append((prefix.rstrip("."), results))
    return rows


_LOSS_ORDER = ("loss", "loss_ce", "loss_ctc", "loss_ce_weighted", "loss_ctc_weighted")


def _log_rows(entry: dict, prefix: str = "") -> list[tuple[str, Any]]:
    numbers = {key: value for key, value in entry.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch")}
    first = [f"{prefix}{name}" for name in _LOSS_ORDER if f"{prefix}{name}" in numbers]
    rest = sorted(key for key in numbers if key not in first and not key.endswith(("_runtime", "_per_second")))
    return [(key, numbers[key]) for key in first + rest]


def _data_summary(run_info: dict, datasets) -> str:
    data = run_info.get("data") or {}
    if data:
        name = data.get("dataset") or "the bundled Shakespeare corpus of hf_mdlm (examples/data)"
        parts = [f"`{name}`"]
        for key in ("dataset_config", "train_split", "data_format", "canvas_length", "max_prompt_length",
                    "max_train_samples"):
            if data.get(key) not in (None, ""):
                parts.append(f"{key} {data[key]}")
        return ", ".join(parts)
    if datasets:
        return ", ".join(f"`{name}`" for name in datasets)
    return "not recorded"


def _runtime(seconds) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def render_model_card(
    folder,
    *,
    repo_id: str,
    base_model: str | None = None,
    datasets=None,
    license: str = "apache-2.0",
    example_prompt: str | None = None,
    vocab_rows: int | None = None,
    lora: dict | None = None,
    template=None,
) -> str:
    """The README.md card of an exported folder, with every fact read from the folder's files.

    `template` overrides `model_cards/model_card.md` (or `adapter_card.md` for an adapter folder).
    """
    import jinja2

    folder = Path(folder)
    ignored: list[str] = []

    def read(name):
        return _read_json(folder / name, ignored) or {}

    is_adapter = (folder / "adapter_config.json").exists()
    config = read("adapter_config.json" if is_adapter else "config.json")
    args, state, run_info = read("training_args.json"), read("trainer_state.json"), read("run_info.json")
    generation = read("generation_config.json")
    results = read("results.json")
    if isinstance(datasets, str):
        datasets = [datasets]
    datasets = list(datasets or [])
    base_model = base_model or run_info.get("base_model")
    if base_model and _looks_local(str(base_model)):
        base_model = None

    tokenizer, _ = _load_tokenizer(folder, hub_files(folder))
    mask_token = getattr(tokenizer, "mask_token", None)
    has_slack = tokenizer is not None and _token_id(tokenizer, SLACK_TOKEN) is not None
    ctc_weight = args.get("ctc_weight")
    slack_ctc = isinstance(ctc_weight, (int, float)) and ctc_weight > 0

    tags = ["masked-diffusion", "custom_code", "hf_mdlm"]
    if slack_ctc:
        tags.append("slack-ctc")
    if is_adapter:
        tags.append("lora")

    history = state.get("log_history") or []
    train_logs = [entry for entry in history if "loss" in entry]
    eval_logs = [entry for entry in history if "eval_loss" in entry]
    summary = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
    world_size = run_info.get("world_size")
    batch = [args.get("per_device_train_batch_size"), args.get("gradient_accumulation_steps"), world_size]
    global_batch = batch[0] * batch[1] * batch[2] if all(isinstance(v, int) for v in batch) else None
    if args:
        precision = "bf16 mixed precision" if args.get("bf16") else "fp16 mixed precision" if args.get("fp16") else "fp32"
    else:
        precision = None

    if is_adapter:
        weights, dtype = _count_weights(folder, "adapter_model*.safetensors")
        lora_facts = config
    else:
        weights, dtype = _count_weights(folder, "model*.safetensors")
        lora_facts = dict(lora or {})
    if isinstance(lora_facts.get("target_modules"), list):  # PEFT saves a set as a list in no fixed order
        lora_facts = {**lora_facts, "target_modules": sorted(lora_facts["target_modules"])}
    model_facts = {key: config.get(key) for key in (
        "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
        "vocab_size", "max_position_embeddings", "mask_token_id", "slack_token_id")}
    model_facts.update(
        parameters=_human_count(weights) if weights else None, dtype=dtype, mask_token=mask_token,
        slack_token=SLACK_TOKEN if has_slack else None,
    )
    generation_facts = {
        "max_new_tokens": generation.get("max_new_tokens") or 128,
        "block_length": generation.get("block_length") or "none (one block)",
        "remasking": generation.get("remasking"),
        "temperature": generation.get("temperature"),
    }
    generation_facts["steps"] = generation.get("steps") or generation_facts["max_new_tokens"]
    if vocab_rows is None and tokenizer is not None:
        vocab_rows = len(tokenizer)

    context = {
        "repo_id": repo_id,
        "model_name": repo_id.split("/")[-1],
        "license": license,
        "base_model": base_model,
        "datasets": datasets,
        "tags": tags,
        "slack_ctc": slack_ctc,
        "model": model_facts,
        "mask_token": mask_token,
        "slack_token": SLACK_TOKEN if has_slack else None,
        "args": args,
        "state": state,
        "run": {"world_size": world_size, "hardware": run_info.get("hardware")},
        "versions": run_info.get("versions"),
        "global_batch": global_batch,
        "precision": precision,
        "runtime": _runtime(summary.get("train_runtime")),
        "train_loss": summary.get("train_loss"),
        "data_summary": _data_summary(run_info, datasets),
        "final_train": _log_rows(train_logs[-1]) if train_logs else [],
        "final_train_step": train_logs[-1].get("step") if train_logs else None,
        "final_eval": _log_rows(eval_logs[-1], "eval_") if eval_logs else [],
        "final_eval_step": eval_logs[-1].get("step") if eval_logs else None,
        "eval_results": _flatten_results(results) if results else [],
        "lora": lora_facts or {},
        "adapter_parameters": _human_count(weights) if is_adapter and weights else None,
        "vocab_rows": vocab_rows,
        "generation": generation_facts,
        "chat": bool(getattr(tokenizer, "chat_template", None)),
        "prompt": example_prompt or ("Write a short poem about the sea." if getattr(tokenizer, "chat_template", None)
                                     else DEFAULT_PROMPT),
    }
    if template is not None:
        source = Path(template).read_text(encoding="utf-8")
    else:
        source = _template_path("adapter" if is_adapter else "model").read_text(encoding="utf-8")
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                     autoescape=False)
    environment.filters.update(
        show=_show, loss=_loss,
        yaml=lambda value: json.dumps(str(value), ensure_ascii=False),
        pystr=lambda value: json.dumps(str(value), ensure_ascii=False),
    )
    return environment.from_string(source).render(**context)


# ----------------------------------------------------------------------------------------------------------------
# Upload


def _files_with_token(folder: Path, names: list[str], token: str) -> list[str]:
    needle = token.encode()
    leaked = []
    for name in names:
        path = folder / name
        if path.stat().st_size < _LARGE_FILE and needle in path.read_bytes():
            leaked.append(name)
    return leaked


def push_to_hub(
    out_dir,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
):
    """Upload an exported folder to the Hub model repository `repo_id` in one commit; returns the `CommitInfo`.

    `check_hub_folder` runs first, and so does a scan for the token in the files: with any problem a ValueError
    lists them all and nothing touches the network. Then the repository is created if needed (`private`:
    None keeps the Hub's default / the existing visibility) and every file of the folder is committed at once.
    `token`: None lets huggingface_hub use `HF_TOKEN` or the login cache. It is never printed or written.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    folder = Path(out_dir)
    problems = check_hub_folder(folder)
    names = hub_files(folder) if folder.is_dir() else []
    secret = token if token is not None else get_token()
    if secret:
        problems += [f"{name} contains your Hugging Face token: remove it before uploading"
                     for name in _files_with_token(folder, names, secret)]
    if problems:
        raise ValueError(f"refusing to upload {folder} to {repo_id}:\n" + "\n".join(f"- {p}" for p in problems))

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names]
    return api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision,
                             repo_type="model")
