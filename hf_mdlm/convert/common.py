"""What every converter shares: finding the source shards, streaming them, writing the folder."""

from __future__ import annotations

import json
from pathlib import Path


def _source_shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [src / name for name in sorted(set(weight_map.values()))]
    single = src / "model.safetensors"
    if single.exists():
        return [single]
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no safetensors weights in {src} (LLaDA checkpoints in .bin are not supported)")
    return shards
