"""Which family a checkpoint folder is, from its `config.json`, and the converter of each family."""

from __future__ import annotations

from pathlib import Path

from .a2d import convert_a2d_checkpoint, is_a2d_config
from .common import read_source_config
from .dream import convert_dream_checkpoint, is_dream_config
from .llada import convert_llada_checkpoint, is_llada_config
from .llada_moe import convert_llada_moe_checkpoint, is_llada_moe_config

CONVERTERS = {
    "llada": convert_llada_checkpoint,
    "llada-moe": convert_llada_moe_checkpoint,
    "dream": convert_dream_checkpoint,
    "a2d": convert_a2d_checkpoint,
}
FAMILIES = ("mdlm", *CONVERTERS)


def detect_family(config: dict) -> str:
    """"mdlm" (already ours), "llada", "llada-moe", "dream" or "a2d" (a Llama/Qwen2/Qwen3 causal LM); an unknown
    config is an error listing them."""
    if config.get("model_type") == "mdlm":
        return "mdlm"
    if is_llada_config(config):
        return "llada"
    if is_llada_moe_config(config):
        return "llada-moe"
    if is_dream_config(config):
        return "dream"
    if is_a2d_config(config):
        return "a2d"
    raise ValueError(
        f"config.json with model_type={config.get('model_type')!r} and architectures={config.get('architectures')} "
        f"is not a family hf_mdlm converts; supported: {', '.join(FAMILIES)}"
    )


def folder_family(path) -> str:
    return detect_family(read_source_config(Path(path), "model"))


def convert_checkpoint(src_dir, dst_dir, family: str | None = None, **kwargs):
    """Convert `src_dir` (its family detected from config.json unless given) into an hf_mdlm folder."""
    family = family or folder_family(src_dir)
    if family not in CONVERTERS:
        raise ValueError(f"no conversion for family {family!r}; converters: {', '.join(CONVERTERS)}")
    return CONVERTERS[family](src_dir, dst_dir, **kwargs)
