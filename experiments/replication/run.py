"""The slack-CTC paper in miniature, offline: a judge, a shared base MDLM, then one fine-tune per arm from the
same weights with the same data order, seed and budget, all measured on held-out data.

"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

from hf_mdlm.data import (
    DataArguments,
    DiffusionCollator,
    check_heldout_overlap,
    prepare_datasets,
    spread_indices,
)
from hf_mdlm.evaluation.judge import load_judge_checked, train_judge, win_rate
from hf_mdlm.evaluation.report import compare_elbos, plot_training, write_report
from hf_mdlm.evaluation.suite import evaluate_model, parse_samplers, reference_quality
from hf_mdlm.hub.folder import save_model_folder
from hf_mdlm.loading import ModelArguments, model_from_scratch
from hf_mdlm.training.arguments import MDLMTrainingArguments
from hf_mdlm.training.trainer import MDLMTrainer
from .presets import Preset

logger = logging.getLogger("replicate")


class Stopwatch:
    """Seconds spent in each stage of a run, logged as each stage ends; `stop()` adds the total."""

    def __init__(self, log):
        self.log, self.start, self.timings = log, time.time(), {}

    def lap(self, name, since):
        self.timings[name] = round(time.time() - since, 1)
        self.log.info("%s done in %.0fs (total %.0fs)", name, self.timings[name], time.time() - self.start)

    def stop(self):
        self.timings["total"] = round(time.time() - self.start, 1)
        return self.timings


def configure_run(threads=None):
    """What an experiment's command line sets up: torch's CPU threads (None: torch's choice) and INFO logging with
    the libraries' own chatter quieted."""
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("transformers", "datasets", "hf_mdlm.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def training_args(output_dir, steps, preset: Preset, seed: int, device: str, **objective):
    return MDLMTrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=preset.batch,
        learning_rate=preset.lr, lr_scheduler_type="cosine", warmup_steps=max(1, min(20, steps // 10)),
        weight_decay=0.01, logging_steps=max(1, steps // 20), save_strategy="no", eval_strategy="no",
        report_to="none", seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=device == "cpu", **objective,
    )


def train_mdlm(model, tokenizer, train_ds, output_dir, steps, preset, seed, device, **objective):
    trainer = MDLMTrainer(
        model=model, args=training_args(output_dir, steps, preset, seed, device, **objective),
        processing_class=tokenizer, train_dataset=train_ds,
        data_collator=DiffusionCollator(pad_token_id=tokenizer.pad_token_id, canvas_length=preset.canvas_length),
    )  # preset: any object with batch, lr and canvas_length (Preset, RepeatsPreset)
    trainer.train()
    return trainer


def arms(ctc_weights, slack_probs, ablation=False) -> dict:
    """The CE baseline first, then one slack-CTC arm per (ctc_weight, slack_prob) (and the ablation per slack_prob)."""
    sweep = len(ctc_weights) * len(slack_probs) > 1
    out = {"ce": dict(ce_weight=1.0, ctc_weight=0.0, slack_rule="none")}
    for w in ctc_weights:
        for p in slack_probs:
            name = f"ce+slack_ctc(w={w:g},p={p:g})" if sweep else "ce+slack_ctc"
            out[name] = dict(ce_weight=1.0, ctc_weight=w, slack_rule="bernoulli", slack_prob=p)
    if ablation:
        for p in slack_probs:
            name = f"ce+slack(p={p:g})" if len(slack_probs) > 1 else "ce+slack"
            out[name] = dict(ce_weight=1.0, ctc_weight=0.0, slack_rule="bernoulli", slack_prob=p)
    return out


def run_settings(mode: str, preset: Preset, *, dataset=None, heldout=None, scale: int = 1, slack_probs=(0.1,),
                 ctc_weights=(1.0,), ablation: bool = False, block_size=None) -> dict:
    """What defines a run, as its results.json saves it: `--seeds` reuses a finished seed only when these agree."""
    return {"mode": mode, "dataset": dataset or "bundled", **({"block_size": block_size} if block_size else {}),
            "heldout": heldout or ("bundled" if dataset is None else "validation split"), "scale": scale,
            "slack_prob": list(slack_probs), "ctc_weight": list(ctc_weights), "ablation": ablation,
            "preset": vars(preset)}


class ReplicationDataError(ValueError):
    """The data cannot give a fair comparison (overlap, no or too little held-out data); raised before training."""


def replication_data_args(preset: Preset, dataset=None, heldout=None) -> DataArguments:
    """The data of the comparison: the bundled corpus (train works / held-out works), or `dataset` (a file, folder
    or Hub name, any of the formats of examples/finetune.py) with `heldout` (a file or folder; None: the dataset's
    own validation split). Never a random slice of the training rows."""
    if heldout is not None and dataset is None:
        raise ValueError("--heldout needs --dataset (the bundled corpus brings its own held-out works)")
    return DataArguments(dataset=dataset, eval_split=heldout, eval_fraction=0.0,
                         canvas_length=preset.canvas_length, text_prompt_length=preset.text_prompt_length,
                         text_response_length=preset.text_response_length,
                         max_train_samples=preset.max_train_samples)


def check_replication_data(data_args: DataArguments, tokenizer, num_prompts: int):
    """(train, held-out) examples, or a ValueError before any training: overlapping files, no held-out part, or
    fewer held-out windows than prompts to sample."""
    if data_args.dataset is not None and data_args.eval_split is not None:
        check_heldout_overlap(data_args.dataset, data_args.eval_split, config=data_args.dataset_config)
    train_ds, heldout = prepare_datasets(data_args, tokenizer)
    where = data_args.eval_split or (f"{data_args.dataset}'s validation split" if data_args.dataset
                                     else "the bundled held-out works")
    if heldout is None:
        raise ValueError(f"dataset {data_args.dataset!r} has no held-out part: pass --heldout FILE (documents the "
                         "models do not train on)")
    if len(heldout) < num_prompts:
        raise ValueError(f"the held-out data ({where}) gave {len(heldout)} examples/windows after preprocessing, fewer "
                         f"than --num_prompts {num_prompts}: use more held-out text or a smaller --num_prompts")
    return train_ds, heldout


def run_replication(output_dir, preset: Preset, *, mode: str, seed: int = 0, scale: int = 1,
                    ctc_weights=(1.0,), slack_probs=(0.1,), ablation: bool = False, judge_folder=None,
                    device: str = "cpu", dataset=None, heldout=None, block_size=None) -> dict:
    """Run the whole comparison into `output_dir`; returns the results (also written as results.json/.md, plots and a
    model folder per arm). `judge_folder` reuses the judge of an earlier run with the same preset and seed.
    `dataset` / `heldout`: the user's corpus (see `replication_data_args`); the judge, the base and the arms train
    on `dataset`, every metric is computed on `heldout`. `block_size`: the base and the arms are block-diffusion
    models (BD3LM training, slack-CTC per block)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch(logger)
    lap, timings = clock.lap, clock.timings

    judge = load_judge_checked(judge_folder, preset.judge_width, preset.judge_layers, device) if judge_folder else None  # a mismatch fails before any work

    # data: the train works for training, the held-out works for every measurement
    t0 = time.time()
    from transformers import set_seed

    set_seed(seed)
    model_args = ModelArguments(hidden_size=preset.width, num_hidden_layers=preset.layers,
                                num_attention_heads=preset.heads, intermediate_size=preset.intermediate,
                                block_size=block_size)
    init_model, tokenizer = model_from_scratch(model_args)
    try:
        data_args = replication_data_args(preset, dataset, heldout)
        train_ds, heldout = check_replication_data(data_args, tokenizer, preset.num_prompts)
    except (ValueError, FileNotFoundError) as err:
        raise ReplicationDataError(str(err)) from err
    lap("data", t0)

    # 1. the judge
    t0 = time.time()
    if judge is not None:
        judge_losses = [float("nan")]
    else:
        judge, judge_losses = train_judge(train_ds, tokenizer, width=preset.judge_width, layers=preset.judge_layers,
                                          heads=preset.judge_heads, steps=preset.judge_steps,
                                          batch=preset.judge_batch, lr=preset.judge_lr, seed=seed, device=device)
        judge.save_pretrained(out / "judge")
        tokenizer.save_pretrained(out / "judge")
    lap("judge", t0)
    reference = reference_quality(heldout, tokenizer, judge, tokenizer,
                                                    num_prompts=preset.num_prompts, batch_size=preset.eval_batch)
    logger.info("judge on the held-out continuations: PPL %.2f", reference["gen_ppl"])

    # 2. the shared base
    t0 = time.time()
    curves = {}
    if preset.base_steps > 0:
        base = train_mdlm(init_model, tokenizer, train_ds, out / "base", preset.base_steps, preset, seed, device,
                          ce_weight=1.0, ctc_weight=0.0, slack_rule="none")
        curves["base"] = [(e["step"], e["loss_ce"]) for e in base.state.log_history if "loss_ce" in e]
        init_model = base.model
    base_state = {k: v.detach().cpu().clone() for k, v in init_model.state_dict().items()}
    lap("base", t0)

    # 3. the arms, from the same weights, with the same data order, seed and budget
    samplers = parse_samplers(preset.samplers)
    results = {"models": {}, "reference": reference}
    for name, objective in arms(ctc_weights, slack_probs, ablation).items():
        t0 = time.time()
        folder = out / re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")
        model, _ = model_from_scratch(model_args)
        model.load_state_dict(base_state)
        trainer = train_mdlm(model, tokenizer, train_ds, folder, preset.arm_steps, preset, seed, device,
                             **objective)
        curves[name] = [(preset.base_steps + e["step"], e["loss_ce"]) for e in trainer.state.log_history
                        if "loss_ce" in e]
        save_model_folder(trainer, tokenizer, folder, data_args)
        lap(f"train {name}", t0)
        t0 = time.time()
        results["models"][name] = {
            "objective": objective,
            "folder": str(folder),
            **evaluate_model(
                trainer.model.eval(), tokenizer, heldout, canvas_length=preset.canvas_length, judge=judge,
                judge_tokenizer=tokenizer, elbo_examples=preset.elbo_examples, elbo_samples=preset.elbo_samples,
                elbo_slack_prob=objective.get("slack_prob", slack_probs[0]),
                num_prompts=preset.num_prompts, shift_rates=preset.shift_rates, samplers=samplers, seed=seed,
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
        compare_elbos(res, baseline)
        res["win_rate_vs_baseline"] = {}
        for sampler in samplers:
            w = win_rate(res["samplers"][sampler]["texts"]["0"], baseline["samplers"][sampler]["texts"]["0"], judge,
                         tokenizer, prompts=prompt_texts, num_bootstrap=preset.num_bootstrap, seed=seed)
            res["win_rate_vs_baseline"][sampler] = w
            head_to_head.append(f"| {name} | {sampler} | {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] "
                                f"| {w['wins']}/{w['ties']}/{w['losses']} |")
    if len(names) > 1:
        results["extra_tables"] = {
            "Head to head, unshifted samples (judge's mean log-likelihood per token, same prompts and seeds)":
            "\n".join(head_to_head)}
    clock.stop()
    results["settings"] = {**run_settings(mode, preset, dataset=dataset, heldout=data_args.eval_split, scale=scale,
                                          slack_probs=slack_probs, ctc_weights=ctc_weights, ablation=ablation,
                                          block_size=block_size),
                           "seed": seed, "device": device, "samplers": samplers, "num_train_examples": len(train_ds),
                           "num_heldout_examples": len(heldout),
                           "torch_threads": torch.get_num_threads(), "timings_seconds": timings}
    results["judge"] = {"folder": str(judge_folder or out / "judge"),
                        "final_train_loss": sum(judge_losses[-20:]) / len(judge_losses[-20:]),
                        "num_parameters": sum(p.numel() for p in judge.parameters())}
    paths = write_report(results, out)
    plot_training({k: tuple(zip(*v)) for k, v in curves.items() if v}, out / "training_curves.png")
    md = Path(paths["markdown"]).read_text()
    blocks = f", block diffusion in blocks of {block_size}" if block_size else ""
    header = (f"## slack-CTC in miniature ({mode} mode{blocks}, seed {seed}, scale {scale}; data: "
              f"{results['settings']['dataset']}, held out: {results['settings']['heldout']})\n\n"
              f"Wall time {timings['total'] / 60:.1f} min on {device} ({torch.get_num_threads()} threads); "
              f"{len(train_ds)} training windows, {len(heldout)} held-out windows; judge: GPT-2 with "
              f"{results['judge']['num_parameters'] / 1e6:.2f} M parameters.\n\n")
    Path(paths["markdown"]).write_text(header + md)
    print(header + md)
    print("wrote " + ", ".join(str(p) for p in [*paths.values(), out / "training_curves.png"]))
    return results
