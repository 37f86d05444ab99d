"""A task with a verifiable answer for GRPO in miniature: sort a string of digits ("sort 39120:" -> "01239").

    python examples/sort_task.py --out_dir data/sort          # sft.jsonl, prompts.jsonl, heldout.jsonl

`sft.jsonl` has prompt/completion rows for `examples/finetune.py`, `prompts.jsonl` and `heldout.jsonl` prompt/answer
rows for `examples/grpo.py` (and its exact-answer reward). Held-out lists never appear in the training files.
"""

import argparse
import json
import random
from pathlib import Path


def sort_rows(count: int, length: int, seed: int, exclude=frozenset()):
    """`count` distinct rows {"prompt", "answer"} of digit strings of `length` (none in `exclude`)."""
    rng, rows, seen = random.Random(seed), [], set(exclude)
    if count > 10 ** length - len(seen):
        raise ValueError(f"only {10 ** length - len(seen)} distinct lists of {length} digits are left, asked {count}")
    while len(rows) < count:
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        if digits in seen:
            continue
        seen.add(digits)
        rows.append({"prompt": f"sort {digits}:", "answer": "".join(sorted(digits))})
    return rows


def write_task(out_dir, *, length: int = 5, sft: int = 4000, prompts: int = 2000, heldout: int = 300, seed: int = 0):
    """Write the three files into `out_dir` (a new or empty folder) and return their paths."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: write the task into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    held = sort_rows(heldout, length, seed + 1)
    train = sort_rows(sft + prompts, length, seed, exclude={row["prompt"][5:-1] for row in held})
    paths = {"sft": out / "sft.jsonl", "prompts": out / "prompts.jsonl", "heldout": out / "heldout.jsonl"}
    files = {"sft": [{"prompt": r["prompt"], "completion": r["answer"]} for r in train[:sft]],
             "prompts": train[sft:], "heldout": held}
    for name, rows in files.items():
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--length", type=int, default=5, help="digits per list")
    parser.add_argument("--sft", type=int, default=4000, help="supervised rows")
    parser.add_argument("--prompts", type=int, default=2000, help="GRPO prompts")
    parser.add_argument("--heldout", type=int, default=300, help="held-out prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_task(args.out_dir, length=args.length, sft=args.sft, prompts=args.prompts,
                                 heldout=args.heldout, seed=args.seed).items():
        print(f"wrote {path} ({name})")


if __name__ == "__main__":
    main()
