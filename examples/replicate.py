#!/usr/bin/env python
"""The slack-CTC paper in miniature, offline, on the bundled Shakespeare corpus (train works vs held-out works).

    python examples/replicate.py --output_dir outputs/replicate            # full mode: <= 90 min on 2 CPU cores
    python examples/replicate.py --quick --output_dir outputs/replicate-q  # CI mode: <= 10 min on 2 CPU cores
    python examples/replicate.py --smoke --output_dir /tmp/replicate-s     # the test suite's run: about a minute
    python examples/replicate.py --scale 4 --output_dir outputs/replicate-x4   # 4x width/depth/batch: for a GPU

Steps:

1. A judge: a small autoregressive `transformers.GPT2LMHeadModel` with the bundled tokenizer, trained with a
   plain causal-LM loop on the training windows (prompt + continuation, the text the judge will score).
2. A base MDLM (examples/finetune.py's model from scratch) trained with the masked-diffusion CE for
   `--base_steps` steps: the shared initialisation, standing in for the paper's pretrained model.
3. Two fine-tunes of that base with `MDLMTrainer`, the same data order, seed and number of steps:
   `ce` (the matched baseline: ctc_weight=0, no `<slack>`) and `ce+slack_ctc` (ce_weight=1, ctc_weight=1,
   `<slack>` inserted in each gap with probability --slack_prob). `--ablation` adds `ce+slack` (slack
   inserted, CE only), which separates the effect of the slack tokens from that of the CTC loss.
4. For every model: the held-out ELBO perplexity (same examples and seed; paired differences against `ce`),
   samples for held-out prompts judged by the judge (gen-PPL, entropy, distinct-n, empty generations), and
   the shift-robustness curve (sampler `shift_rate` in --shift_rates; win rate of the unshifted output
   against the shifted one). The held-out continuations themselves are scored as a reference.

Writes into --output_dir: results.json, results.md, shift_robustness.png, training_curves.png, and a model
folder per arm (`judge/`, `ce/`, ...; reusable with examples/evaluate.py).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import hf_mdlm  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))

import finetune  # examples/finetune.py: the model from scratch and the Hub folder


def _load_example(name):
    """Import examples/<name>.py under a private module name (`evaluate` would clash with the HF package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"hf_mdlm_examples_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


evaluation_script = _load_example("evaluate")  # examples/evaluate.py: measuring and reporting

from hf_mdlm.data import DataArguments, prepare_datasets
from hf_mdlm.evaluation import spread_indices, win_rate

logger = logging.getLogger("replicate")


@dataclass
class Preset:
    # data
    canvas_length: int = 48
    text_prompt_length: int = 32
    text_response_length: int = 40
    max_train_samples: int | None = None
    # judge (GPT-2 architecture)
    judge_width: int = 192
    judge_layers: int = 4
    judge_heads: int = 4
    judge_steps: int = 1500
    judge_batch: int = 32
    judge_lr: float = 1e-3
    # MDLM (examples/finetune.py's architecture)
    width: int = 192
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    base_steps: int = 1500
    arm_steps: int = 1000
    batch: int = 16
    lr: float = 2e-3
    # evaluation
    elbo_examples: int = 256
    elbo_samples: int = 8
    num_prompts: int = 128
    shift_rates: tuple = (0.0, 0.01, 0.05, 0.1, 0.2)
    samplers: str = "ancestral,greedy"
    num_bootstrap: int = 2000
    eval_batch: int = 64


PRESETS = {
    "full": Preset(),
    "quick": Preset(max_train_samples=8000, judge_width=128, judge_layers=2, judge_steps=200, width=128, layers=2,
                    intermediate=384, base_steps=300, arm_steps=200, elbo_examples=64, elbo_samples=4,
                    num_prompts=32, shift_rates=(0.0, 0.05, 0.2), samplers="ancestral", num_bootstrap=1000,
                    eval_batch=32),
    "smoke": Preset(canvas_length=16, text_prompt_length=8, text_response_length=12, max_train_samples=64,
                    judge_width=32, judge_layers=1, judge_heads=2, judge_steps=4, judge_batch=8, width=32, layers=1,
                    heads=2, intermediate=64, base_steps=2, arm_steps=3, batch=4, elbo_examples=8, elbo_samples=2,
                    num_prompts=4, shift_rates=(0.0, 0.2), samplers="ancestral", num_bootstrap=50, eval_batch=8),
}
MODES = ("full", "quick", "smoke")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="outputs/replicate")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI mode: <= 10 minutes on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="tiny everything: the test suite's run (about a minute)")
    p.add_argument("--scale", type=int, default=1, help="multiply width, depth and batch of both models (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slack_prob", type=lambda text: evaluation_script.parse_numbers(text, "slack_prob"),
                   default=[0.1],
                   help="slack insertion probability of the slack arm; a comma-separated list trains one arm per value")
    p.add_argument("--ctc_weight", type=lambda text: evaluation_script.parse_numbers(text, "ctc_weight"),
                   default=[1.0],
                   help="lambda_ctc of the slack arm; a list sweeps it too (one arm per ctc_weight x slack_prob)")
    p.add_argument("--ablation", action="store_true", help="add the arm ce+slack (slack inserted, CE only)")
    p.add_argument("--judge", default=None,
                   help="reuse the judge/ folder of an earlier run with the same seed and preset instead of training one "
                        "(e.g. for a ctc_weight/slack_prob sweep)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice). On cores shared with other jobs, 1 is much "
                        "faster than oversubscribing them (numbers then differ in the last digits)")
    for f in fields(Preset):  # every preset value can be overridden: --arm_steps 300, --shift_rates 0,0.1 ...
        if f.name == "shift_rates":
            p.add_argument("--shift_rates", type=evaluation_script.parse_rates, default=None)
        else:
            kind = {"int": int, "float": float, "int | None": int, "str": str}[str(f.type)]
            p.add_argument(f"--{f.name}", type=kind, default=None)
    return p


def resolve_preset(args) -> Preset:
    preset = copy.deepcopy(PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"])
    for f in fields(Preset):
        value = getattr(args, f.name)
        if value is not None:
            setattr(preset, f.name, tuple(value) if f.name == "shift_rates" else value)
    evaluation_script.parse_samplers(preset.samplers)  # fail early on a bad --samplers
    if args.scale < 1:
        raise SystemExit("--scale must be >= 1")
    if args.scale > 1:
        k = args.scale
        for name in ("judge_width", "judge_layers", "judge_heads", "width", "layers", "heads", "intermediate",
                     "batch", "judge_batch"):
            setattr(preset, name, getattr(preset, name) * k)
    return preset


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------


def train_judge(train_rows, tokenizer, preset: Preset, seed: int, device: str):
    """A GPT-2 trained on `BOS + prompt + continuation` windows of the training works (plain causal-LM loop)."""
    from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup

    eos = tokenizer.eos_token_id
    sequences = [list(p) + [t for t in r if t != eos] for p, r in zip(train_rows["prompt_ids"], train_rows["response_ids"])]
    n_positions = max(128, max(len(s) for s in sequences))
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=preset.judge_width, n_layer=preset.judge_layers,
        n_head=preset.judge_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=preset.judge_lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, max(1, preset.judge_steps // 20), preset.judge_steps)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(preset.judge_steps):
        batch = [sequences[i] for i in torch.randint(len(sequences), (preset.judge_batch,), generator=g).tolist()]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = torch.tensor(s)
            attention[b, : len(s)] = 1
        labels = ids.masked_fill(attention == 0, -100)
        loss = model(input_ids=ids.to(device), attention_mask=attention.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, preset.judge_steps // 10) == 0:
            logger.info("judge step %d/%d loss %.3f", step + 1, preset.judge_steps, sum(losses[-20:]) / len(losses[-20:]))
    return model.eval(), losses


def load_judge(folder, preset: Preset, device: str):
    """The judge of an earlier run, refused unless it has this preset's shape."""
    from transformers import GPT2LMHeadModel

    judge = GPT2LMHeadModel.from_pretrained(folder).to(device).eval()
    if judge.config.n_embd != preset.judge_width or judge.config.n_layer != preset.judge_layers:
        raise SystemExit(f"--judge {folder}: width {judge.config.n_embd} x {judge.config.n_layer} layers does "
                         f"not match this mode's judge ({preset.judge_width} x {preset.judge_layers})")
    return judge


# ---------------------------------------------------------------------------------------------------
# The MDLMs
# ---------------------------------------------------------------------------------------------------


def training_args(output_dir, steps, preset: Preset, seed: int, device: str, **objective):
    from hf_mdlm.trainer import MDLMTrainingArguments

    return MDLMTrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=preset.batch,
        learning_rate=preset.lr, lr_scheduler_type="cosine", warmup_steps=max(1, min(20, steps // 10)),
        weight_decay=0.01, logging_steps=max(1, steps // 20), save_strategy="no", eval_strategy="no",
        report_to="none", seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=device == "cpu", **objective,
    )


def train_mdlm(model, tokenizer, train_ds, output_dir, steps, preset, seed, device, **objective):
    from hf_mdlm.data import DiffusionCollator
    from hf_mdlm.trainer import MDLMTrainer

    trainer = MDLMTrainer(
        model=model, args=training_args(output_dir, steps, preset, seed, device, **objective),
        processing_class=tokenizer, train_dataset=train_ds,
        data_collator=DiffusionCollator(pad_token_id=tokenizer.pad_token_id, canvas_length=preset.canvas_length),
    )
    trainer.train()
    return trainer


def arms(args):
    """The CE baseline first, then one slack-CTC arm per (ctc_weight, slack_prob) (and the ablation per slack_prob)."""
    sweep = len(args.ctc_weight) * len(args.slack_prob) > 1
    out = {"ce": dict(ce_weight=1.0, ctc_weight=0.0, slack_rule="none")}
    for w in args.ctc_weight:
        for p in args.slack_prob:
            name = f"ce+slack_ctc(w={w:g},p={p:g})" if sweep else "ce+slack_ctc"
            out[name] = dict(ce_weight=1.0, ctc_weight=w, slack_rule="bernoulli", slack_prob=p)
    if args.ablation:
        for p in args.slack_prob:
            name = f"ce+slack(p={p:g})" if len(args.slack_prob) > 1 else "ce+slack"
            out[name] = dict(ce_weight=1.0, ctc_weight=0.0, slack_rule="bernoulli", slack_prob=p)
    return out


def plot_training(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, label=name)
    ax.set(xlabel="optimizer step", ylabel="masked CE per canvas position (unweighted)", title="training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------


def main(argv=None):
    args = build_parser().parse_args(argv)
    preset = resolve_preset(args)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("transformers", "datasets", "hf_mdlm.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device
    start = time.time()
    timings = {}

    def lap(name, since):
        timings[name] = round(time.time() - since, 1)
        logger.info("%s done in %.0fs (total %.0fs)", name, timings[name], time.time() - start)

    judge = load_judge(args.judge, preset, device) if args.judge else None  # a mismatch fails before any work

    # data: the train works for training, the held-out works for every measurement
    t0 = time.time()
    from transformers import set_seed

    set_seed(args.seed)
    model_args = finetune.ModelArguments(hidden_size=preset.width, num_hidden_layers=preset.layers,
                                         num_attention_heads=preset.heads, intermediate_size=preset.intermediate)
    init_model, tokenizer = finetune.load_model_and_tokenizer(model_args, out)
    data_args = DataArguments(canvas_length=preset.canvas_length, text_prompt_length=preset.text_prompt_length,
                              text_response_length=preset.text_response_length,
                              max_train_samples=preset.max_train_samples)
    train_ds, heldout = prepare_datasets(data_args, tokenizer)
    if heldout is None or len(heldout) == 0:
        raise SystemExit("the bundled corpus gave no held-out examples")
    lap("data", t0)

    # 1. the judge
    t0 = time.time()
    if judge is not None:
        judge_losses = [float("nan")]
    else:
        judge, judge_losses = train_judge(train_ds, tokenizer, preset, args.seed, device)
        judge.save_pretrained(out / "judge")
        tokenizer.save_pretrained(out / "judge")
    lap("judge", t0)
    reference = evaluation_script.reference_quality(heldout, tokenizer, judge, tokenizer,
                                                    num_prompts=preset.num_prompts, batch_size=preset.eval_batch)
    logger.info("judge on the held-out continuations: PPL %.2f", reference["gen_ppl"])

    # 2. the shared base
    t0 = time.time()
    curves = {}
    if preset.base_steps > 0:
        base = train_mdlm(init_model, tokenizer, train_ds, out / "base", preset.base_steps, preset, args.seed, device,
                          ce_weight=1.0, ctc_weight=0.0, slack_rule="none")
        curves["base"] = [(e["step"], e["loss_ce"]) for e in base.state.log_history if "loss_ce" in e]
        init_model = base.model
    base_state = {k: v.detach().cpu().clone() for k, v in init_model.state_dict().items()}
    lap("base", t0)

    # 3. the arms, from the same weights, with the same data order, seed and budget
    samplers = evaluation_script.parse_samplers(preset.samplers)
    results = {"models": {}, "reference": reference}
    for name, objective in arms(args).items():
        t0 = time.time()
        folder = out / re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")
        model, _ = finetune.load_model_and_tokenizer(model_args, out)
        model.load_state_dict(base_state)
        trainer = train_mdlm(model, tokenizer, train_ds, folder, preset.arm_steps, preset, args.seed, device,
                             **objective)
        curves[name] = [(preset.base_steps + e["step"], e["loss_ce"]) for e in trainer.state.log_history
                        if "loss_ce" in e]
        finetune.save_for_hub(trainer, tokenizer, folder, data_args, lora=False)
        lap(f"train {name}", t0)
        t0 = time.time()
        results["models"][name] = {
            "objective": objective,
            "folder": str(folder),
            **evaluation_script.evaluate_model(
                trainer.model.eval(), tokenizer, heldout, canvas_length=preset.canvas_length, judge=judge,
                judge_tokenizer=tokenizer, elbo_examples=preset.elbo_examples, elbo_samples=preset.elbo_samples,
                elbo_slack_prob=objective.get("slack_prob", args.slack_prob[0]),
                num_prompts=preset.num_prompts, shift_rates=preset.shift_rates, samplers=samplers, seed=args.seed,
                batch_size=preset.eval_batch, num_bootstrap=preset.num_bootstrap),
            "train_log": trainer.state.log_history,
        }
        lap(f"evaluate {name}", t0)

    # 4. comparisons against the CE baseline: paired ELBO difference, head-to-head win rate (unshifted samples)
    names = list(results["models"])
    baseline = results["models"][names[0]]
    prompts = [heldout[i]["prompt_ids"] for i in spread_indices(len(heldout), preset.num_prompts)]
    prompt_texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    head_to_head = [f"| model | sampler | win rate vs `{names[0]}` [95% CI] | W/T/L |", "|---|---|---|---|"]
    for name in names[1:]:
        res = results["models"][name]
        evaluation_script.compare_elbos(res, baseline)
        res["win_rate_vs_baseline"] = {}
        for sampler in samplers:
            w = win_rate(res["samplers"][sampler]["texts"]["0"], baseline["samplers"][sampler]["texts"]["0"], judge,
                         tokenizer, prompts=prompt_texts, num_bootstrap=preset.num_bootstrap, seed=args.seed)
            res["win_rate_vs_baseline"][sampler] = w
            head_to_head.append(f"| {name} | {sampler} | {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] "
                                f"| {w['wins']}/{w['ties']}/{w['losses']} |")
    if len(names) > 1:
        results["extra_tables"] = {
            "Head to head, unshifted samples (judge's mean log-likelihood per token, same prompts and seeds)":
            "\n".join(head_to_head)}
    timings["total"] = round(time.time() - start, 1)
    results["settings"] = {"mode": mode, "seed": args.seed, "scale": args.scale, "device": device,
                           "slack_prob": args.slack_prob, "ctc_weight": args.ctc_weight, "preset": vars(preset),
                           "samplers": samplers, "num_train_examples": len(train_ds), "num_heldout_examples": len(heldout),
                           "torch_threads": torch.get_num_threads(), "timings_seconds": timings}
    results["judge"] = {"folder": str(args.judge or out / "judge"),
                        "final_train_loss": sum(judge_losses[-20:]) / len(judge_losses[-20:]),
                        "num_parameters": sum(p.numel() for p in judge.parameters())}
    paths = evaluation_script.write_report(results, out)
    plot_training({k: tuple(zip(*v)) for k, v in curves.items() if v}, out / "training_curves.png")
    md = Path(paths["markdown"]).read_text()
    header = (f"## slack-CTC in miniature ({mode} mode, seed {args.seed}, scale {args.scale})\n\n"
              f"Wall time {timings['total'] / 60:.1f} min on {device} ({torch.get_num_threads()} threads); "
              f"{len(train_ds)} training windows, {len(heldout)} held-out windows; judge: GPT-2 with "
              f"{results['judge']['num_parameters'] / 1e6:.2f} M parameters.\n\n")
    Path(paths["markdown"]).write_text(header + md)
    print(header + md)
    print("wrote " + ", ".join(str(p) for p in [*paths.values(), out / "training_curves.png"]))
    return results


if __name__ == "__main__":
    main()
