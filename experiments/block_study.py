#!/usr/bin/env python
"""Block diffusion against the bidirectional MDLM at the same budget, CE and slack-CTC in each.

    python experiments/replicate.py --quick --seeds 0,1,2 --block_size 8 --output_dir outputs/block8
    python experiments/replicate.py --quick --seeds 0,1,2 --output_dir outputs/bidirectional
    python experiments/block_study.py --blocks outputs/block8 --bidirectional outputs/bidirectional \\
        [--output experiments/results/block_study_quick.md]

Both `--seeds` runs train from the same seeds on the same data; each seed's judge is trained before any model, from
the seed alone, so the two runs' judges are the same model (checked: their weights must be equal). Nothing is
sampled again: for every arm (`ce`, `ce+slack_ctc`) the block model's stored unshifted samples are judged against
the bidirectional model's for the same prompts (the replication's head-to-head rules), per seed and pooled, and the
two ELBO bounds (slack-free, nats per response token; the block model's is BD3LM's, each block given the clean blocks
before it) are compared per seed. Within each run, slack-CTC against CE is in that run's own results.md.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_mdlm.evaluation import load_judge  # noqa: E402
from hf_mdlm.evaluation.judge import score_texts, win_rate_from_scores  # noqa: E402
from replication.provenance import provenance_line  # noqa: E402
from replication.seeds import outcomes_of, pool_outcomes  # noqa: E402

SAMPLER = "ancestral"


def seed_results(folder: Path) -> dict:
    """{seed: (results, seed folder)} of a `--seeds` run."""
    found = {}
    for path in sorted(folder.glob("seed_*/results.json")):
        results = json.loads(path.read_text())
        found[results["settings"]["seed"]] = (results, path.parent)
    if not found:
        raise SystemExit(f"{folder} holds no seed_*/results.json: pass the --output_dir of a replicate.py --seeds run")
    return found


def same_judge(folder_a: Path, folder_b: Path):
    judge_a, tokenizer = load_judge(folder_a / "judge")
    judge_b, _ = load_judge(folder_b / "judge")
    state_b = judge_b.state_dict()
    if any(not torch.equal(value, state_b[key]) for key, value in judge_a.state_dict().items()):
        raise SystemExit(f"the judges of {folder_a} and {folder_b} differ: the runs did not train the same judge")
    return judge_a, tokenizer


def compare(blocks: dict, bidirectional: dict, num_bootstrap: int) -> list[str]:
    seeds = sorted(set(blocks) & set(bidirectional))
    if not seeds:
        raise SystemExit("the two runs share no seed")
    lines = []
    block_size = blocks[seeds[0]][0]["settings"].get("block_size")
    for arm in blocks[seeds[0]][0]["models"]:
        per_seed, outcomes, elbo = [], [], []
        for seed in seeds:
            (res_a, folder_a), (res_b, folder_b) = blocks[seed], bidirectional[seed]
            judge, tokenizer = same_judge(folder_a, folder_b)
            samples_a, samples_b = res_a["models"][arm]["samplers"][SAMPLER], res_b["models"][arm]["samplers"][SAMPLER]
            if samples_a["prompts"] != samples_b["prompts"]:
                raise SystemExit(f"seed {seed}: the two runs sampled different prompts")
            prompts = samples_a["prompts"]
            texts_a, texts_b = samples_a["texts"]["0"], samples_b["texts"]["0"]
            scores = score_texts(texts_a + texts_b, judge, tokenizer, prompts=prompts + prompts)
            w = win_rate_from_scores(scores[:len(texts_a)], scores[len(texts_a):], texts_a=texts_a, texts_b=texts_b,
                                     num_bootstrap=num_bootstrap, seed=seed)
            per_seed.append(w["win_rate"])
            outcomes += outcomes_of(w)
            elbo.append(res_a["models"][arm]["elbo"]["nll_per_token"] - res_b["models"][arm]["elbo"]["nll_per_token"])
        pooled = pool_outcomes(outcomes, num_bootstrap)
        lines.append(f"| `{arm}` | {', '.join(str(s) for s in seeds)} | {sum(elbo) / len(elbo):+.3f} "
                     f"[{min(elbo):+.3f}, {max(elbo):+.3f}] | {', '.join(f'{x:.2f}' for x in per_seed)} | "
                     f"{pooled['win_rate']:.3f} [{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}] "
                     f"({pooled['wins']}/{pooled['ties']}/{pooled['losses']}) |")
    header = [f"Blocks of {block_size} against the bidirectional model, same seeds, data, budget and judge "
              f"({SAMPLER} samples, unshifted).", "",
              "| arm | seeds | ΔNLL/token, blocks − bidirectional (slack-free ELBO), mean [range] | win rate of blocks, "
              "per seed | pooled [95% CI] (W/T/L) |", "|---|---|---|---|---|"]
    return header + lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", required=True, type=Path, help="replicate.py --seeds ... --block_size N output")
    parser.add_argument("--bidirectional", required=True, type=Path, help="the same run without --block_size")
    parser.add_argument("--num_bootstrap", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    provenance = provenance_line(__file__, argv)
    table = "\n".join(compare(seed_results(args.blocks), seed_results(args.bidirectional), args.num_bootstrap))
    print(table)
    if args.output is not None:
        args.output.write_text(f"{provenance}.\n\n{table}\n")


if __name__ == "__main__":
    main()
