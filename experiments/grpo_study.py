#!/usr/bin/env python
"""GRPO in miniature on the CPU: a tiny MDLM fine-tuned on sorting digit strings, then GRPO with each estimator.

    python experiments/grpo_study.py --output_dir outputs/grpo_study [--seeds 0,1,2] \\
        [--results experiments/results/grpo_study.md]

One supervised model (examples/finetune.py on examples/sort_task.py's rows, from scratch) is the start of every GRPO
run (examples/grpo.py, rewards exact_answer + answer_format): for each estimator (`one_step`, `coupled`) and each
seed, and once more per seed with fast rollouts (`--generation_kwargs` threshold decoding with the dual cache).
Exact match on held-out lists never seen in training (greedy decoding, the saved generation config) before and
after, per seed and as a mean with a 95% t-interval over seeds; wall time per GRPO step against an SFT step, and
rollout time per step with and without the fast sampler. `--output_dir` must be new or empty.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import torch  # noqa: E402

from replication.provenance import provenance_line  # noqa: E402
from sort_task import write_task  # noqa: E402

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t quantiles by degrees of freedom
SFT_FLAGS = ["--hidden_size", "96", "--intermediate_size", "256", "--num_hidden_layers", "3",
             "--num_attention_heads", "4", "--max_steps", "{sft_steps}", "--per_device_train_batch_size", "32",
             "--learning_rate", "2e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "20",
             "--canvas_length", "8", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
             "--logging_steps", "50", "--num_samples", "0", "--seed", "0", "--disable_tqdm", "true"]
GRPO_FLAGS = ["--max_steps", "{grpo_steps}", "--per_device_train_batch_size", "32", "--num_generations", "8",
              "--learning_rate", "1e-4", "--beta", "0.02", "--temperature", "1.0", "--logging_steps", "10",
              "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--bf16", "false",
              "--disable_tqdm", "true",
              "--reward_funcs", "exact_answer,answer_format"]
FAST_ROLLOUTS = '{"threshold": 0.9, "kv_cache": "dual"}'


def run_script(name, flags, log):
    """Run examples/<name>.py in a fresh process (one torch job at a time); its output goes to `log`."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), *flags], check=True, stdout=handle,
                       stderr=subprocess.STDOUT)
    return time.perf_counter() - start


@torch.no_grad()
def exact_match(folder, heldout, temperature=0.0):
    """Exact-match rate on the held-out rows: greedy answers (temperature 0), or one sample per row at `temperature`
    (seeded; the rollout policy at 1.0)."""
    from transformers import AutoTokenizer

    from hf_mdlm import MDLMForMaskedLM, strip_generation

    model = MDLMForMaskedLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)  # the folder's code is ours: never asked
    outcomes = []
    for start in range(0, len(heldout), 64):
        rows = heldout[start:start + 64]
        batch = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True)
        canvas = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], temperature=temperature,
                                generator=[start + i for i in range(len(rows))])
        answers = strip_generation(canvas[:, batch["input_ids"].shape[1]:], mask_token_id=model.config.mask_token_id,
                                   slack_token_id=model.config.slack_token_id, eos_token_id=model.config.eos_token_id)
        outcomes += [tokenizer.decode(a, skip_special_tokens=True).strip() == r["answer"]
                     for a, r in zip(answers, rows)]
    return sum(outcomes) / len(outcomes)


def mean_interval(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T_975[len(values) - 1] * statistics.stdev(values) / len(values) ** 0.5


def seconds_per_step(folder):
    """Wall seconds per optimizer step of a run, from its trainer_state.json."""
    state = json.loads((Path(folder) / "trainer_state.json").read_text())
    summary = next(e for e in reversed(state["log_history"]) if "train_runtime" in e)
    return summary["train_runtime"] / state["global_step"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sft_steps", type=int, default=400)
    parser.add_argument("--grpo_steps", type=int, default=150)
    parser.add_argument("--results", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose a new --output_dir")
    paths = write_task(out / "data", length=4, sft=3000, prompts=1500, heldout=300)
    heldout = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    fill = {"sft_steps": args.sft_steps, "grpo_steps": args.grpo_steps}
    provenance = provenance_line(__file__, argv)  # the code as it is when the run starts

    sft_dir = out / "sft"
    sft_time = run_script("finetune", [f.format(**fill) for f in SFT_FLAGS] + [
        "--dataset", str(paths["sft"]), "--output_dir", str(sft_dir)], out / "sft.log")
    sft_step = seconds_per_step(sft_dir)
    before, before_sampled = exact_match(sft_dir, heldout), exact_match(sft_dir, heldout, 1.0)
    print(f"SFT: exact match {before:.3f} greedy, {before_sampled:.3f} sampled, after {args.sft_steps} steps "
          f"({sft_time:.0f} s)", flush=True)

    arms = {"one_step": ["--log_prob_estimator", "one_step"], "coupled": ["--log_prob_estimator", "coupled"],
            "one_step, fast rollouts": ["--log_prob_estimator", "one_step", "--generation_kwargs", FAST_ROLLOUTS]}
    results = {}
    for arm, arm_flags in arms.items():
        for seed in seeds:
            folder = out / f"{arm.replace(', ', '_').replace(' ', '_')}_seed{seed}"
            run_script("grpo", [f.format(**fill) for f in GRPO_FLAGS] + arm_flags + [
                "--model_name_or_path", str(sft_dir), "--dataset", str(paths["prompts"]), "--seed", str(seed),
                "--output_dir", str(folder)], folder.with_suffix(".log"))
            after, after_sampled = exact_match(folder, heldout), exact_match(folder, heldout, 1.0)
            history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
            rewards = [e["rewards/exact_answer/mean"] for e in history if "reward" in e]
            first, last = statistics.fmean(rewards[:3]), statistics.fmean(rewards[-3:])
            results.setdefault(arm, []).append({"seed": seed, "after": after, "after_sampled": after_sampled,
                                                "reward_first": first, "reward_last": last,
                                                "step_seconds": seconds_per_step(folder)})
            print(f"{arm} seed {seed}: exact match {after:.3f} greedy, {after_sampled:.3f} sampled; rollout exact "
                  f"match {first:.3f} -> {last:.3f}; {seconds_per_step(folder):.2f} s/step", flush=True)

    lines = [
        "# GRPO in miniature: sorting 4 digits",
        "",
        f"{provenance}; seeds {args.seeds}, {args.sft_steps} SFT steps, {args.grpo_steps} GRPO steps; CPU, one "
        "process.",
        "",
        f"SFT ({args.sft_steps} steps, batch 32, from scratch): held-out exact match **{before:.3f}** greedy, "
        f"**{before_sampled:.3f}** sampled at temperature 1 ({len(heldout)} lists never seen in training); "
        f"{sft_step:.3f} s per SFT step.",
        "",
        f"GRPO: {args.grpo_steps} steps, 4 prompts x 8 generations per step, learning rate 1e-4, beta 0.02, rollouts at "
        "temperature 1.0, rewards exact_answer + answer_format, fp32. Held-out exact match after GRPO (mean over seeds "
        "± 95% t-interval; per seed in brackets); rollout exact match: the mean of the first three and of the last "
        "three logged steps (10 steps apart), over seeds:",
        "",
        "| estimator | greedy: before → after | sampled: before → after | rollout exact match first → last | s/step | GRPO step / SFT step |",
        "|---|---|---|---|---|---|",
    ]
    def cell(rows, key):
        mean, half = mean_interval([r[key] for r in rows])
        return f"{mean:.3f} ± {half:.3f} [{', '.join(f'{r[key]:.3f}' for r in rows)}]"

    for arm, rows in results.items():
        seconds = statistics.fmean(r["step_seconds"] for r in rows)
        lines.append(
            f"| {arm} | {before:.3f} → {cell(rows, 'after')} | {before_sampled:.3f} → {cell(rows, 'after_sampled')} | "
            f"{statistics.fmean(r['reward_first'] for r in rows):.3f} → "
            f"{statistics.fmean(r['reward_last'] for r in rows):.3f} | {seconds:.2f} | {seconds / sft_step:.1f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    (out / "results.md").write_text(table)
    if args.results:
        Path(args.results).write_text(table)


if __name__ == "__main__":
    main()
