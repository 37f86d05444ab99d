#!/usr/bin/env python
"""Publish a trained hf_mdlm model folder (or its LoRA adapter) on the Hugging Face Hub.

    python examples/push_to_hub.py --model_dir outputs/shakespeare-mdlm --repo_id you/shakespeare-mdlm
    python examples/push_to_hub.py --model_dir outputs/run --repo_id you/run --dry_run --out_dir /tmp/upload
    python examples/push_to_hub.py --model_dir outputs/lora-run --repo_id you/run-lora --adapter \\
        --push_base you/llada-8b-hf-mdlm          # the adapter, and first the converted base it trained on

The upload folder is built with `hf_mdlm.hub.export_for_hub`: weights (safetensors), config, model code,
tokenizer, generation_config.json, the run's records (trainer_state.json, training_args.json, run_info.json,
results.json when MODEL_DIR has them) and a README.md model card written for REPO_ID from those records. It
is checked before anything is sent, and uploaded in one commit. `--dry_run` builds it in OUT_DIR and prints
the files that would be uploaded, without any network call.

The token comes from `HF_TOKEN` or `hf auth login`; it is never printed or written.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from hf_mdlm.cli import add_bool_flag
from hf_mdlm.hub import export_for_hub, hub_files, push_to_hub
from hf_mdlm.hub.outputs import check_apart, prepare_fresh_folder
from hf_mdlm.hub.upload import DEFAULT_COMMIT_MESSAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_dir", required=True,
                        help="a saved model folder (e.g. the --output_dir of examples/finetune.py) or an adapter folder")
    parser.add_argument("--repo_id", required=True, help="the Hub repository, ORG/NAME")
    add_bool_flag(parser, "--adapter",
                        help="upload the LoRA adapter (MODEL_DIR/adapter, or MODEL_DIR itself when it is an adapter "
                             "folder) instead of the merged model")
    parser.add_argument("--base_model", default=None,
                        help="Hub id of the base model, an hf_mdlm one (required for an adapter whose base is a local "
                             "folder)")
    parser.add_argument("--push_base", default=None, metavar="REPO_ID",
                        help="with --adapter: first publish the converted base the adapter trained on (the folder its "
                             "adapter_config.json names) to REPO_ID, and name it as the base")
    parser.add_argument("--datasets", nargs="+", default=None, help="Hub dataset ids for the card's metadata")
    parser.add_argument("--license", default="apache-2.0", help="license in the card's metadata")
    parser.add_argument("--eval_results", default=None, help="a results.json to show in the card "
                                                               "(default: MODEL_DIR/results.json when present)")
    add_bool_flag(parser, "--private", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if needed)")
    parser.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE)
    add_bool_flag(parser, "--dry_run", help="build OUT_DIR and list its files; upload nothing")
    parser.add_argument("--out_dir", default=None,
                        help="where to build the upload folder (required with --dry_run; default: a temporary folder)")
    add_bool_flag(parser, "--overwrite", help="replace an earlier export in OUT_DIR (a folder holding other files is "
                                            "refused)")
    return parser


def build_folder(args, out_dir: Path) -> Path:
    """Export MODEL_DIR (or its adapter) into `out_dir`, with the card written for REPO_ID."""
    model_dir = Path(args.model_dir)
    source = model_dir
    if args.adapter and not (model_dir / "adapter_config.json").exists():
        source = model_dir / "adapter"
        if not (source / "adapter_config.json").exists():
            raise SystemExit(f"--adapter: neither {model_dir} nor {source} holds an adapter_config.json")
    run_dir = model_dir
    if source == model_dir and (model_dir / "adapter_config.json").exists() and \
            (model_dir.parent / "config.json").exists():  # the adapter/ of a run folder: the run is its parent
        run_dir = model_dir.parent
    # The tokenizer and the run's records live in the run folder, also when the adapter is its subfolder.
    tokenizer = run_dir if (run_dir / "tokenizer_config.json").exists() and source != run_dir else None
    return export_for_hub(
        source, tokenizer, out_dir, repo_id=args.repo_id, base_model=args.base_model, datasets=args.datasets,
        license=args.license, eval_results=args.eval_results, run_dir=run_dir,
    )


def print_files(folder: Path, repo_id: str, verb: str) -> list[str]:
    names = hub_files(folder)
    print(f"{verb} {len(names)} files to {repo_id} (from {folder}):")
    for name in names:
        print(f"  {name}  ({(folder / name).stat().st_size:,} bytes)")
    return names


def publish_base(args) -> None:
    """--push_base: the adapter's own hf_mdlm base, published (or, with --dry_run, built in OUT_DIR-base) first."""
    adapter = Path(args.model_dir) if (Path(args.model_dir) / "adapter_config.json").exists() else \
        Path(args.model_dir) / "adapter"
    if not args.adapter or not (adapter / "adapter_config.json").exists():
        raise SystemExit("--push_base needs --adapter and a folder holding an adapter")
    base_dir = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_dir:
        raise SystemExit("--push_base: the adapter records no base model (trained from scratch?): there is no base to "
                         "publish; name one with --base_model")
    if not (Path(base_dir) / "config.json").exists():
        raise SystemExit(f"--push_base: the adapter's base {base_dir} is not a local folder; name it with --base_model")
    base_args = argparse.Namespace(**{**vars(args), "model_dir": base_dir, "repo_id": args.push_base, "adapter": False,
                                      "base_model": None, "push_base": None, "eval_results": None,
                                      "out_dir": args.out_dir and f"{args.out_dir.rstrip('/')}-base"})
    main(base_args)
    args.base_model = args.push_base


def main(argv=None):
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    if args.dry_run and args.out_dir is None:
        raise SystemExit("--dry_run needs --out_dir (the folder to build and inspect)")
    if not Path(args.model_dir).is_dir():
        raise SystemExit(f"--model_dir {args.model_dir} is not a folder")
    try:  # a refused folder, file or upload is one line naming it
        if args.push_base:
            publish_base(args)
        if args.out_dir is None:  # beside the model folder: its weights are hard-linked there, not copied elsewhere
            beside = Path(args.model_dir).resolve().parent
            with tempfile.TemporaryDirectory(prefix=".hf_mdlm-upload-",
                                             dir=beside if os.access(beside, os.W_OK) else None) as tmp:
                return publish(args, Path(tmp) / "upload")
        out_dir = Path(args.out_dir)
        # before anything is deleted: never the model folder, a folder holding it, or one inside it; and
        # --overwrite empties an earlier export only (a folder holding anything else is refused, nothing deleted)
        check_apart(out_dir, args.model_dir)
        prepare_fresh_folder(out_dir, overwrite=args.overwrite, what="--out_dir", flag="--overwrite")
        return publish(args, out_dir)
    except (ValueError, FileNotFoundError) as error:  # OutputFolderError is a ValueError
        raise SystemExit(f"push_to_hub.py: {error}") from None


def publish(args, out_dir: Path):
    """Build the upload folder in `out_dir`; list it (--dry_run) or upload it."""
    folder = build_folder(args, out_dir)
    if args.dry_run:
        print_files(folder, args.repo_id, "would upload")
        print("dry run: nothing was uploaded")
        return folder
    print_files(folder, args.repo_id, "uploading")
    info = push_to_hub(folder, args.repo_id, private=args.private or None, revision=args.revision,
                       commit_message=args.commit_message)
    print(f"uploaded: {info.commit_url}")
    return info


if __name__ == "__main__":
    main()
