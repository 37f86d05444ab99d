"""Model and adapter cards rendered from a folder's own records (losses, slack-CTC settings, hardware, usage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tokenization import SLACK_TOKEN
from .checks import (
    _load_tokenizer,
    _looks_local,
    _read_json,
    _safetensors_numel,
    _token_id,
    hub_files,
)

DEFAULT_PROMPT = "Once upon a time"

_TEMPLATE_NAMES = {"model": "model_card.md", "adapter": "adapter_card.md"}


def _template_path(kind: str) -> Path:
    path = Path(__file__).resolve().parent / "templates" / _TEMPLATE_NAMES[kind]
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
        name = data.get("dataset") or "the bundled Shakespeare corpus of hf_mdlm (hf_mdlm/data/bundled)"
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


def _reinforcement_facts(facts):
    """An RL run's facts for the card: a starting model that was a local folder is named, not shown as a path."""
    if not facts:
        return None
    start = facts.get("start_model")
    if start and _looks_local(str(start)):
        facts = {**facts, "start_model": f"{Path(str(start)).name} (a local folder)"}
    return facts


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

    `template` overrides `hf_mdlm/hub/templates/model_card.md` (or `adapter_card.md` for an adapter folder).
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
    if run_info.get("reinforcement"):
        tags.append("grpo")
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
        "suppress_slack": generation.get("suppress_slack", False),
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
        "reinforcement": _reinforcement_facts(run_info.get("reinforcement")),
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
