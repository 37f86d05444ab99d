"""The converter's command line: `python -m hf_mdlm.convert FAMILY SRC_DIR DST_DIR`."""

import argparse
import os

from .llada import convert_llada_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_mdlm.convert", description="Convert a checkpoint of another family into an hf_mdlm folder.")
    sub = parser.add_subparsers(dest="source_format", required=True)
    llada = sub.add_parser("llada", help="a LLaDA checkpoint folder (config.json + safetensors)")
    llada.add_argument("src_dir")
    llada.add_argument("dst_dir")
    llada.add_argument("--dtype", default=None, help="cast weights, e.g. bfloat16 (default: keep)")
    args = parser.parse_args(argv)
    config = convert_llada_checkpoint(args.src_dir, args.dst_dir, dtype=args.dtype)
    print(
        f"wrote {os.path.abspath(args.dst_dir)}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"vocab {config.vocab_size}, mask_token_id {config.mask_token_id}"
    )

