"""The run's records (`training_args.json`, `run_info.json`), written with every secret blanked."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")

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

    from .. import __version__

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


def save_run_record(training_args, output_dir, *, data_args=None, base_model=None, reinforcement=None) -> None:
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
    if reinforcement is not None:
        info["reinforcement"] = _blank_secrets(_jsonable(dict(reinforcement)))
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
