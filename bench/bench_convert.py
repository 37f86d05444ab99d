#!/usr/bin/env python
"""Does the converter stream? Peak memory of `python -m hf_mdlm.convert llada` on a synthetic LLaDA checkpoint of
several shards, against the checkpoint's size and against the interpreter's own footprint (torch + hf_mdlm
imported). Prints one Markdown table row per size.

    python bench/bench_convert.py                       # ~1 GiB and ~2 GiB bf16 checkpoints of 8 and 16 shards
    python bench/bench_convert.py --layers 4 --shards 4  # quicker

Random weights, LLaDA's own format (the tiny fixture's config with its sizes scaled); nothing is downloaded.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "llada-tiny"


def write_checkpoint(folder: Path, d_model: int, mlp: int, vocab: int, layers: int, shards: int, dtype) -> int:
    """A LLaDA-format checkpoint: the fixture's tensor names with its sizes (64, 96, 320) scaled, written one shard at
    a time so that this process never holds more than a shard. Returns its size in bytes."""
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(d_model=d_model, mlp_hidden_size=mlp, vocab_size=vocab, embedding_size=vocab, n_layers=layers)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    scale = {config_value: new for config_value, new in ((64, d_model), (96, mlp), (320, vocab))}
    with safe_open(str(FIXTURE / "model.safetensors"), "pt") as f:
        shapes = {name: [scale[d] for d in f.get_slice(name).get_shape()] for name in f.keys()}
    names = [n.replace("blocks.0.", f"blocks.{i}.") for i in range(layers) for n in shapes if "blocks.0." in n]
    names += [n for n in shapes if "blocks." not in n]
    shape_of = {n: shapes[n if "blocks." not in n else "model.transformer.blocks.0." + n.split(".", 4)[4]] for n in names}
    weight_map, size = {}, 0
    per_shard = -(-len(names) // shards)
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: torch.randn(shape_of[n], dtype=torch.float32).to(dtype) * 0.02
                   for n in names[s * per_shard:(s + 1) * per_shard]}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in tensors})
        size += (folder / file).stat().st_size
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return size


def child_peak(command) -> int:
    """Peak resident memory (bytes) of a child process, from the kernel's accounting of waited-for children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("the child's peak did not exceed an earlier child's: run one size per process")
    return peak * 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d_model", type=int, default=2048)
    p.add_argument("--mlp", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--shards", type=int, default=8)
    args = p.parse_args(argv)
    baseline = child_peak([sys.executable, "-c", "import torch, hf_mdlm.convert.families"])
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "llada"
        size = write_checkpoint(source, args.d_model, args.mlp, args.vocab, args.layers, args.shards, torch.bfloat16)
        largest = max(f.stat().st_size for f in source.glob("*.safetensors"))
        peak = child_peak([sys.executable, "-m", "hf_mdlm.convert", "llada", str(source), str(Path(tmp) / "out")])
    gib = 2**30
    print("| checkpoint (bf16) | shards | largest shard | peak resident memory | of which interpreter + torch | "
          "peak - interpreter | peak / checkpoint |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {size / gib:.2f} GiB | {args.shards} | {largest / gib:.2f} GiB | {peak / gib:.2f} GiB | "
          f"{baseline / gib:.2f} GiB | {(peak - baseline) / gib:.2f} GiB | {peak / size:.2f} |")


if __name__ == "__main__":
    main()
