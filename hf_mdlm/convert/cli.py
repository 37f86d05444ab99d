"""The converter's command line: `python -m hf_mdlm.convert FAMILY SRC_DIR DST_DIR`."""

import argparse
import os
import shutil
from pathlib import Path

from ..cli import add_bool_flag
from ..hub.files import HUB_CODE_FILES, TOKENIZER_FILES
from ..hub.outputs import OutputFolder, check_apart, publish_staged, staging_folder
from .families import CONVERTERS, folder_family

# What a conversion writes into dst_dir: all --overwrite may delete there.
CONVERTED_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                   "model.safetensors.index.json", *HUB_CODE_FILES, *TOKENIZER_FILES)


def _dtype_name(name: str) -> str:
    import torch

    if not isinstance(getattr(torch, name, None), torch.dtype) or not getattr(torch, name).is_floating_point:
        raise argparse.ArgumentTypeError(f"{name!r} is not a torch floating-point dtype (e.g. bfloat16, float16, "
                                         "float32)")
    return name


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_mdlm.convert",
                                     description="Convert a checkpoint of another family into an hf_mdlm folder.")
    sub = parser.add_subparsers(dest="family", required=True)
    helps = {"llada": "a LLaDA checkpoint folder (config.json + safetensors)",
             "llada-moe": "a LLaDA-MoE checkpoint folder", "dream": "a Dream checkpoint folder",
             "llada2": "a LLaDA2.0 / 2.1 checkpoint folder (block diffusion, MoE)",
             "sdar": "an SDAR checkpoint folder (block diffusion, Qwen3)",
             "a2d": "a local Llama / Mistral / Qwen2 / Qwen3 causal LM folder (weights + tokenizer), adapted to "
                    "diffusion"}
    for family in CONVERTERS:
        command = sub.add_parser(family, help=helps[family])
        command.add_argument("src_dir")
        command.add_argument("dst_dir")
        command.add_argument("--dtype", default=None, type=_dtype_name,
                             help="cast weights, e.g. bfloat16 (default: keep)")
        add_bool_flag(command, "--overwrite",
                      help="replace an earlier conversion in dst_dir (a folder holding other files is refused)")
        if family == "a2d":
            command.add_argument("--block_size", type=int, default=None,
                                 help="a block-diffusion model with blocks of this many positions (1: the causal LM)")
        if family in ("llada-moe", "llada2"):
            command.add_argument("--mask_token_id", type=int, default=None,
                                 help="the [MASK] id (default: config.json's mask_token_id, else the tokenizer's "
                                      "mask token, else the real models' 156895)")
    args = parser.parse_args(argv)
    try:  # a mistake in the command is one line naming it, not a traceback (the library raises as usual)
        config = _convert(args)
    except (ValueError, FileNotFoundError) as error:
        # the library's hint names the argument; here it is a flag
        raise SystemExit(str(error).replace("pass mask_token_id", "pass --mask_token_id")) from None
    weights = sum(p.stat().st_size for p in Path(args.src_dir).glob("*.safetensors"))
    print(
        f"wrote {os.path.abspath(args.dst_dir)}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"vocab {config.vocab_size}, mask_token_id {config.mask_token_id}; peak resident memory "
        f"{_peak_rss() / 2**30:.2f} GiB for {weights / 2**30:.2f} GiB of weights (streamed one shard at a time)"
    )


def _convert(args):
    """Check the source and the destination, then convert into a locked destination; returns the new config."""
    src, dst = Path(args.src_dir), Path(args.dst_dir)
    # every check comes before dst is created or --overwrite deletes anything there
    if not src.is_dir():
        raise FileNotFoundError(f"src_dir {src} is not a folder" if src.exists() else f"src_dir {src} does not exist")
    check_apart(dst, src, "dst_dir", "src_dir")  # --overwrite would delete the source's own files
    family = folder_family(src)  # another family's converter would fail deep inside, on a missing field
    if family == "mdlm":
        raise ValueError(f"{src} is already an hf_mdlm folder: there is nothing to convert")
    if family != args.family:
        raise ValueError(f"{src} is a {family} checkpoint, not {args.family}: use "
                         f"`python -m hf_mdlm.convert {family} {src} {dst}`")
    # the family's own options, as parsed
    extra = {name: getattr(args, name) for name in ("mask_token_id", "block_size") if hasattr(args, name)}
    # new or empty, locked while converting; --overwrite replaces an earlier conversion's files only
    with OutputFolder(dst, overwrite=args.overwrite, what="dst_dir", writes=CONVERTED_FILES, flag="--overwrite"):
        # written whole into a hidden folder, then moved into place (config.json last): a killed conversion leaves
        # nothing that loads, the next run removes it
        staging = staging_folder(dst)
        try:
            config = CONVERTERS[args.family](src, staging, dtype=args.dtype, **extra)
        except BaseException:  # a refused conversion leaves nothing behind: no staging (and OutputFolder removes
            shutil.rmtree(staging, ignore_errors=True)  # the folder it made)
            raise
        publish_staged(staging, dst)
    return config


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux and macOS report different units)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
