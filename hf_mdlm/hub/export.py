"""`export_for_hub`: a complete, self-contained, checked folder for the Hub (weights, config with `auto_map`,
model code, tokenizer, generation config, run records and a model card)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from ..tokenization import SLACK_TOKEN
from .cards import render_model_card
from .checks import (
    _load_tokenizer,
    _looks_local,
    _token_id,
    check_hub_folder,
    hub_files,
)
from .files import ADAPTER_FILES, HUB_CODE_FILES, RUN_FILES, TOKENIZER_FILES, link_outside, own_hub_code
from .outputs import PROBE_PREFIX, STAGING_NAME, check_apart, publish_staged, staging_folder
from .records import _args_dict, _blank_secrets, _jsonable, _run_info_from_args

logger = logging.getLogger(__name__)


def _is_peft_model(obj) -> bool:
    return hasattr(obj, "peft_config") and hasattr(obj, "get_base_model")


def _copy_files(src: Path, dst: Path, names) -> None:
    """Copy `names` from `src`; weights are hard-linked where the filesystem allows (an 8B model is 16 GB; our saves
    replace a folder's files rather than rewrite them, so the export keeps its own bytes)."""
    for name in names:
        target = link_outside(src / name, src)
        if target is not None:
            raise ValueError(f"{src / name} is a link to {target}, outside {src}: exporting it would publish that "
                             "file; copy what you mean to publish into the folder")
        if (src / name).is_file():
            if name.endswith(".safetensors"):
                with contextlib.suppress(OSError):  # the target of a link (a Hub cache snapshot is links to blobs/)
                    os.link(os.path.realpath(src / name), dst / name)
                    continue
            shutil.copyfile(src / name, dst / name)


def _model_dir_files(src: Path) -> list[str]:
    """What a model folder contributes to the upload (not checkpoints, logs, pickles or an old card)."""
    names = {"config.json", "generation_config.json", "model.safetensors.index.json", *HUB_CODE_FILES}
    names.update(p.name for p in src.glob("*.safetensors"))
    config = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").exists() else {}
    if config.get("model_type") == "mdlm":  # its code is the installed one (own_hub_code), never the folder's
        return sorted(names - set(HUB_CODE_FILES))
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

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=False)
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
    from ..generation_mdlm import MDLMGenerationConfig

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
    if source is not None:
        check_apart(out, source, "out_dir")  # the export never writes into, over or around its source
    if out.exists() and any(p.name != STAGING_NAME and not p.name.startswith(PROBE_PREFIX) for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new or empty folder (stale files would be uploaded)")
    out.mkdir(parents=True, exist_ok=True)
    # Written whole into a hidden folder, then moved into place with config.json last: a killed export leaves
    # nothing that loads or uploads (hidden files are never sent), and the next export removes the leftover.
    final, out = out, staging_folder(out)
    repo_id = repo_id or final.name

    is_adapter, vocab_rows, lora_source, model_config = False, None, None, None
    if source is not None:
        is_adapter = (source / "adapter_config.json").exists()
        if is_adapter:
            _copy_files(source, out, ADAPTER_FILES + ("generation_config.json",))
            if not (out / "generation_config.json").exists() and (source.parent / "config.json").exists():
                # the adapter/ of a run saved before it carried one: the run's sampling defaults, not the class's
                _copy_files(source.parent, out, ("generation_config.json",))
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
            own_hub_code(out)
    if is_adapter:
        adapter_config_path = out / "adapter_config.json"
        adapter_config = json.loads(adapter_config_path.read_text(encoding="utf-8"))
        trained_on = adapter_config.get("base_model_name_or_path")
        if base_model is not None:
            adapter_config["base_model_name_or_path"] = str(base_model)
            adapter_config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
        elif not _looks_local(str(adapter_config.get("base_model_name_or_path") or "/")):
            base_model = adapter_config["base_model_name_or_path"]
        if base_model is not None:
            check_adapter_base(base_model, trained_on=trained_on)
    _complete_generation_config(out, model_config)

    # The run's records: from run_dir (or the source folder), then the explicit arguments.
    run_dir = Path(run_dir) if run_dir is not None else source
    if run_dir is not None:
        _copy_files(run_dir, out, RUN_FILES)
        for name in RUN_FILES:  # records written elsewhere may hold a token (any hf_... string): blanked, as ours are
            if name.endswith(".json") and (out / name).is_file():
                try:
                    record = json.loads((out / name).read_text(encoding="utf-8"))
                except ValueError:
                    continue  # not JSON: left to check_hub_folder's token scan
                blanked = _blank_secrets(record)
                if blanked != record:
                    (out / name).write_text(json.dumps(blanked, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
        out, repo_id=repo_id, base_model=base_model, datasets=datasets, license=license,
        example_prompt=example_prompt, vocab_rows=vocab_rows, lora=lora_source,
    )
    (out / "README.md").write_text(card, encoding="utf-8")

    problems = check_hub_folder(out)
    if problems:
        shutil.rmtree(out)
        listed = "\n".join(f"- {p}" for p in problems)
        raise ValueError(f"the exported folder {final} is not ready for the Hub:\n{listed}")
    publish_staged(out, final)
    return final


def check_adapter_base(base_model, trained_on=None) -> None:
    """Refuse an adapter base that is not an hf_mdlm model: the adapter's modules (`self_attn.o_proj`, ...) and
    sampler are those of the hf_mdlm conversion it trained on, so a base in its family's own format (LLaDA's,
    Dream's code) would load but not take the adapter. A Hub id that cannot be read here (offline) is logged and
    let through."""
    config_path = Path(base_model) / "config.json"
    if not config_path.exists() and not _looks_local(str(base_model)):
        try:
            from huggingface_hub import hf_hub_download

            config_path = Path(hf_hub_download(str(base_model), "config.json"))
        except Exception as error:  # offline, private, or not there: the card still names it
            logger.warning("could not read %s/config.json to check it is an hf_mdlm model: %s", base_model, error)
            return
    if not config_path.exists():
        raise ValueError(f"the adapter's base {base_model} has no config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type != "mdlm":
        converted = f" (this adapter trained on {trained_on})" if trained_on and Path(trained_on).is_dir() else ""
        raise ValueError(
            f"the adapter's base {base_model} is not an hf_mdlm model (model_type {model_type!r}): the adapter "
            f"targets the modules of the hf_mdlm conversion it was trained on{converted}, and would not load on the "
            "original. "
            "Publish the converted base and name it: python examples/push_to_hub.py --model_dir CONVERTED_FOLDER "
            "--repo_id YOU/NAME-hf-mdlm, then --base_model YOU/NAME-hf-mdlm (or let push_to_hub.py --push_base "
            "YOU/NAME-hf-mdlm do both)")
    trained_config = Path(trained_on) / "config.json" if trained_on else None
    if trained_config is not None and trained_config.is_file():  # the base it trained on is at hand: same shapes?
        trained = json.loads(trained_config.read_text(encoding="utf-8"))
        differ = [f"{key} {config.get(key)} (base) vs {trained.get(key)} (trained on)" for key in _SHAPE_FIELDS
                  if config.get(key) != trained.get(key)]
        if differ:
            raise ValueError(f"the adapter's base {base_model} is not the model it was trained on ({trained_on}): "
                             + ", ".join(differ) + "; the adapter's matrices would not fit it")


# The config fields that fix the shapes of the weights an adapter applies to.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size", "num_experts", "moe_intermediate_size")
