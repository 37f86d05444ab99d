"""A2D learns: a small Llama trained here as a causal LM, converted into a next-token-aligned MDLM
(`hf_mdlm.convert.a2d`) and fine-tuned with CE + slack-CTC, against the same MDLM architecture trained from scratch
with the same data order, steps, batch and learning-rate schedule; all measured on the held-out works.

    1. a GPT-2 judge on the training works (or `judge_folder`), its numbers on the real held-out continuations;
    2. the causal LM: a `LlamaForCausalLM` of the MDLM's width and depth on the same training windows (prompt +
       response + EOS), saved with the bundled tokenizer; its exact held-out perplexity, as context;
    3. its A2D conversion (`convert_a2d_checkpoint`), checked to hold the causal LM's weights, and its ELBO
       before any fine-tuning;
    4. arms, all with CE + slack-CTC: `a2d` (the conversion, `steps` steps), `scratch` (an `MDLMConfig` equal to
       the converted one, fresh weights drawn with seed + 1, `steps` steps) and, with `scratch_total`, `scratch (long)`: from scratch
       for `causal_steps + steps` steps, the whole A2D budget in optimizer steps;
    5. held-out ELBO (slack-free and slack-marginal, paired against `scratch`), samples judged by the judge
       (gen-PPL, entropy, distinct-n, empty), head-to-head win rates; results.json, results.md,
       training_curves.png.

Run by `experiments/a2d_experiment.py`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from hf_mdlm.convert.a2d import convert_a2d_checkpoint
from hf_mdlm.data import DataArguments, prepare_datasets, spread_indices
from hf_mdlm.data.loading import bundled_corpus_files
from hf_mdlm.evaluation.judge import load_judge_checked, train_judge, win_rate
from hf_mdlm.evaluation.likelihood import paired_elbo_difference
from hf_mdlm.evaluation.report import (
    compare_elbos,
    format_number,
    json_safe,
    markdown_tables,
    plot_training,
)
from hf_mdlm.evaluation.suite import evaluate_model, parse_samplers, reference_quality
from hf_mdlm.hub.folder import save_model_folder
from hf_mdlm.loading import ModelArguments, load_model_and_tokenizer
from hf_mdlm.modeling_mdlm import MDLMForMaskedLM
from hf_mdlm.tokenization import add_diffusion_tokens
from .presets import ExperimentSizes
from .run import Stopwatch, train_mdlm

logger = logging.getLogger("a2d")


@dataclass
class A2DPreset(ExperimentSizes):
    """The A2D experiment: a causal LM (Llama, the MDLMs' width and depth) trained `causal_steps`, then the
    conversion and the from-scratch arms trained `steps` with CE + slack-CTC."""

    causal_steps: int = 1500
    causal_lr: float = 1e-3
    steps: int = 1000
    ctc_weight: float = 1.0
    slack_prob: float = 0.1
    scratch_total: bool = True

A2D_PRESETS = {
    "full": A2DPreset(),
    "quick": A2DPreset(max_train_samples=8000, judge_width=128, judge_layers=2, judge_steps=400, width=128, layers=2,
                       intermediate=384, causal_steps=600, steps=400, elbo_examples=128, elbo_samples=4, num_prompts=64,
                       num_bootstrap=1000, eval_batch=32),
    "smoke": A2DPreset(canvas_length=16, text_prompt_length=8, text_response_length=12, max_train_samples=64,
                       judge_width=32, judge_layers=1, judge_heads=2, judge_steps=4, judge_batch=8, width=32, layers=1,
                       heads=2, intermediate=64, causal_steps=3, steps=3, batch=4, elbo_examples=8, elbo_samples=2,
                       num_prompts=4, samplers="ancestral", num_bootstrap=50, eval_batch=8),
}


def resolve_a2d_preset(mode: str, overrides: dict | None = None) -> A2DPreset:
    """The A2D preset of `mode` ("full", "quick", "smoke") with `overrides` (None keeps the preset's value)."""
    if mode not in A2D_PRESETS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {tuple(A2D_PRESETS)}")
    preset = copy.deepcopy(A2D_PRESETS[mode])
    for f in fields(A2DPreset):
        value = (overrides or {}).get(f.name)
        if value is not None:
            setattr(preset, f.name, value)
    parse_samplers(preset.samplers)
    if preset.steps < 1 or preset.causal_steps < 1:
        raise ValueError("steps and causal_steps must be >= 1")
    return preset


@torch.no_grad()
def causal_perplexity(model, rows, batch_size: int = 32) -> dict:
    """Exact perplexity of a causal LM on the responses of `(prompt_ids, response_ids)` rows given their prompts
    (the responses' EOS included: the tokens the ELBO counts)."""
    model.eval()
    device = next(model.parameters()).device
    pairs = [(list(r["prompt_ids"]), list(r["response_ids"])) for r in rows]
    nll, tokens = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for b, (p, r) in enumerate(batch):
            ids[b, :len(p) + len(r)] = torch.tensor(p + r)
            attention[b, :len(p) + len(r)] = 1
        logprobs = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float().log_softmax(-1)
        for b, (p, r) in enumerate(batch):
            rows_ = logprobs[b, len(p) - 1:len(p) + len(r) - 1]
            nll -= float(rows_.gather(-1, torch.tensor(r, device=rows_.device)[:, None]).double().sum())
            tokens += len(r)
    return {"perplexity": float(torch.tensor(nll / tokens).exp()), "nll_per_token": nll / tokens,
            "num_tokens": tokens, "num_examples": len(pairs)}


def init_check(mdlm, causal) -> dict:
    """How far the MDLM's weights are from the causal LM's: every tensor they share by name (embedding and LM head:
    the causal model's rows only)."""
    ours, theirs = mdlm.state_dict(), causal.state_dict()
    shared = [k for k in theirs if k in ours and not k.endswith("rotary_emb.inv_freq")]
    diff = 0.0
    for key in shared:
        a, b = ours[key].float().cpu(), theirs[key].float().cpu()
        diff = max(diff, float((a[: b.shape[0]] - b).abs().max()))
    missing = [k for k in ours if k not in theirs]
    return {"tensors_compared": len(shared), "max_abs_diff": diff, "mdlm_only_tensors": missing,
            "causal_parameters": sum(p.numel() for p in causal.parameters())}


def _objective(preset):
    return {"ce_weight": 1.0, "ctc_weight": preset.ctc_weight, "slack_rule": "bernoulli", "slack_prob": preset.slack_prob}


def _summary(results, preset) -> str:
    models = results["models"]
    samplers = list(parse_samplers(preset.samplers))
    head = ["model", "init", "optimizer steps (causal + diffusion)", "slack-free ELBO PPL ≤ [95% CI]",
            "ΔNLL/token vs `scratch`"]
    for s in samplers:
        head += [f"gen-PPL {s}", f"entropy {s}", f"empty {s}", f"win rate vs `scratch`, {s} [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in models.items():
        e, d = res["elbo"], res.get("elbo_vs_baseline")
        ci = e.get("perplexity_ci95") or [None, None]
        row = [name, res["init"], res["budget"], f"{format_number(e['perplexity'], 1)} [{format_number(ci[0], 1)}, {format_number(ci[1], 1)}]",
               "—" if d is None else f"{d['nll_difference']:+.3f} ± {d['stderr']:.3f}"]
        for s in samplers:
            if s not in res.get("samplers", {}):
                row += ["", "", "", ""]
                continue
            q = res["samplers"][s]["per_rate"][0]
            w = res.get("win_rate_vs_baseline", {}).get(s)
            row += [format_number(q["gen_ppl"], 0), format_number(q["entropy"]), f"{q['num_empty']}/{q['num_texts']}",
                    "—" if w is None else f"{w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]"]
        lines.append("| " + " | ".join(row) + " |")
    ref, causal = results["reference"], results["causal_lm"]
    lines.append("| held-out text | | | | | " + " | ".join(
        [format_number(ref["gen_ppl"], 1), format_number(ref["entropy"]), "", ""] * len(samplers)) + " |")
    lines += ["", (f"Causal LM (the A2D source; Llama, {causal['init_check']['causal_parameters'] / 1e6:.2f} M "
              f"parameters, {preset.causal_steps} steps): exact held-out perplexity "
              f"**{causal['heldout']['perplexity']:.1f}** on the same {causal['heldout']['num_examples']} windows "
              f"({causal['heldout']['num_tokens']} response tokens, EOS included) as the ELBO bounds.")]
    return "\n".join(lines)


def _sample_table(results, preset, count=3) -> str:
    samplers = list(parse_samplers(preset.samplers))
    arms = [n for n, r in results["models"].items() if r.get("samplers")]
    first = results["models"][arms[0]]["samplers"][samplers[0]]
    lines = []
    for i, prompt in enumerate(first["prompts"][:count]):
        lines += [f"**Prompt {i + 1}:** `{' '.join(prompt.split())[-160:]}`", ""]
        for name in arms:
            for s in samplers:
                text = " ".join(results["models"][name]["samplers"][s]["texts"]["0"][i].split())
                lines.append(f"- {name}, {s}: {text or '(empty)'}")
        lines.append("")
    return "\n".join(lines)


def run_a2d_experiment(output_dir, preset: A2DPreset | None = None, *, mode: str = "full", seed: int = 0,
                       device: str = "cpu", judge_folder=None) -> dict:
    """Run the A2D comparison into `output_dir` (see the module docstring); returns the results, also written as
    results.json / results.md with training_curves.png and a model folder per arm (`causal/`, `converted/`, `a2d/`,
    `scratch/`, `scratch_long/`, `judge/`)."""
    from transformers import AutoTokenizer, set_seed

    preset = preset or resolve_a2d_preset(mode)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch(logger)
    lap, timings = clock.lap, clock.timings

    judge = load_judge_checked(judge_folder, preset.judge_width, preset.judge_layers, device) if judge_folder else None
    samplers = parse_samplers(preset.samplers)

    # data: the bundled tokenizer (the causal LM's), and the same with [MASK]/<slack> (the MDLMs'; same text ids)
    t0 = time.time()
    set_seed(seed)
    plain = AutoTokenizer.from_pretrained(bundled_corpus_files()["tokenizer"])
    tokenizer = AutoTokenizer.from_pretrained(bundled_corpus_files()["tokenizer"])
    add_diffusion_tokens(tokenizer)
    data_args = DataArguments(canvas_length=preset.canvas_length, text_prompt_length=preset.text_prompt_length,
                              text_response_length=preset.text_response_length,
                              max_train_samples=preset.max_train_samples)
    train_ds, heldout = prepare_datasets(data_args, tokenizer)
    if heldout is None or len(heldout) == 0:
        raise RuntimeError("the bundled corpus gave no held-out examples")
    lap("data", t0)

    # 1. the judge
    t0 = time.time()
    judge_losses = [float("nan")]
    if judge is None:
        judge, judge_losses = train_judge(train_ds, tokenizer, width=preset.judge_width, layers=preset.judge_layers,
                                          heads=preset.judge_heads, steps=preset.judge_steps,
                                          batch=preset.judge_batch, lr=preset.judge_lr, seed=seed, device=device)
        judge.save_pretrained(out / "judge")
        tokenizer.save_pretrained(out / "judge")
    reference = reference_quality(heldout, tokenizer, judge, tokenizer, num_prompts=preset.num_prompts,
                                  batch_size=preset.eval_batch)
    lap("judge", t0)

    # 2. the causal LM, on the same windows (EOS kept: the canvas ends with it)
    t0 = time.time()
    causal, causal_losses = train_judge(train_ds, plain, width=preset.width, layers=preset.layers, heads=preset.heads,
                                        steps=preset.causal_steps, batch=preset.batch, lr=preset.causal_lr, seed=seed,
                                        device=device, architecture="llama", intermediate=preset.intermediate,
                                        keep_eos=True, max_positions=1024)
    causal.save_pretrained(out / "causal")
    plain.save_pretrained(out / "causal")
    elbo_rows = heldout.select(spread_indices(len(heldout), preset.elbo_examples))
    causal_heldout = causal_perplexity(causal, elbo_rows, preset.eval_batch)
    logger.info("causal LM: held-out perplexity %.2f", causal_heldout["perplexity"])
    lap("causal LM", t0)

    # 3. the conversion, loaded the way examples/finetune.py loads a model folder
    t0 = time.time()
    convert_a2d_checkpoint(out / "causal", out / "converted")
    a2d_model, a2d_tokenizer = load_model_and_tokenizer(ModelArguments(model_name_or_path=str(out / "converted")), out)
    for what in ("mask_token_id", "eos_token_id", "pad_token_id"):
        if getattr(a2d_tokenizer, what) != getattr(tokenizer, what):
            raise RuntimeError(f"the converted tokenizer's {what} is {getattr(a2d_tokenizer, what)}, "
                               f"the data's is {getattr(tokenizer, what)}")
    if (a2d_model.config.slack_token_id != tokenizer.convert_tokens_to_ids("<slack>")
            or a2d_model.config.vocab_size < len(tokenizer)):
        raise RuntimeError("the converted model's <slack> id or vocabulary does not match the data's tokenizer")
    check = init_check(a2d_model, causal)
    if check["max_abs_diff"] > 0 or check["mdlm_only_tensors"]:
        raise RuntimeError(f"the A2D conversion does not hold the causal LM's weights: {check}")
    scratch_config = copy.deepcopy(a2d_model.config)  # the same architecture and alignment, fresh weights
    before = evaluate_model(a2d_model.eval(), tokenizer, heldout, canvas_length=preset.canvas_length,
                            elbo_examples=preset.elbo_examples, elbo_samples=preset.elbo_samples,
                            elbo_slack_prob=preset.slack_prob, seed=seed, batch_size=preset.eval_batch)
    lap("conversion", t0)

    # 4. the arms: the same objective, data order, seed, batch and schedule; only the start (and for `scratch (long)`
    # the number of steps) differs
    objective = _objective(preset)
    long_steps = preset.causal_steps + preset.steps
    arms = {"scratch": ("fresh", preset.steps, f"0 + {preset.steps}"),
            "a2d": ("A2D conversion of the causal LM", preset.steps, f"{preset.causal_steps} + {preset.steps}")}
    if preset.scratch_total:
        arms["scratch (long)"] = ("fresh", long_steps, f"0 + {long_steps}")
    results = {"models": {}, "reference": reference}
    curves = {}
    for name, (init, steps, budget) in arms.items():
        t0 = time.time()
        folder = out / name.replace(" (", "_").rstrip(")")
        if init == "fresh":  # its own init seed: the causal LM's random start would otherwise be nearly repeated
            set_seed(seed + 1)
            model = MDLMForMaskedLM(copy.deepcopy(scratch_config))
        else:
            model = a2d_model
        trainer = train_mdlm(model, tokenizer, train_ds, folder, steps, preset, seed, device, **objective)
        curves[name] = [(e["step"], e["loss_ce"]) for e in trainer.state.log_history if "loss_ce" in e]
        save_model_folder(trainer, tokenizer, folder, data_args)
        lap(f"train {name}", t0)
        t0 = time.time()
        results["models"][name] = {
            "init": init, "steps": steps, "budget": budget, "objective": objective, "folder": str(folder),
            **evaluate_model(trainer.model.eval(), tokenizer, heldout, canvas_length=preset.canvas_length, judge=judge,
                             judge_tokenizer=tokenizer, elbo_examples=preset.elbo_examples,
                             elbo_samples=preset.elbo_samples, elbo_slack_prob=preset.slack_prob,
                             num_prompts=preset.num_prompts, shift_rates=(0.0,), samplers=samplers, seed=seed,
                             batch_size=preset.eval_batch, num_bootstrap=preset.num_bootstrap),
            "train_log": trainer.state.log_history,
        }
        lap(f"evaluate {name}", t0)
    results["models"]["a2d, not fine-tuned"] = {"init": "A2D conversion of the causal LM", "steps": 0,
                                                "budget": f"{preset.causal_steps} + 0", "folder": str(out / "converted"),
                                                **before}

    # 5. comparisons: paired ELBO differences and head-to-head win rates (the same prompts and seeds)
    models = results["models"]
    for name in list(models)[1:]:
        compare_elbos(models[name], models["scratch"])
    prompts = [heldout[i]["prompt_ids"] for i in spread_indices(len(heldout), preset.num_prompts)]
    prompt_texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    pairs = [("a2d", "scratch")] + ([("scratch (long)", "scratch"), ("a2d", "scratch (long)")]
                                    if preset.scratch_total else [])
    table = ["| A | B | sampler | win rate of A [95% CI] | W/T/L | ΔNLL/token A − B, slack-free ELBO |",
             "|---|---|---|---|---|---|"]
    results["head_to_head"] = []
    for a, b in pairs:
        elbo = paired_elbo_difference(models[a]["elbo"], models[b]["elbo"])
        for sampler in samplers:
            w = win_rate(models[a]["samplers"][sampler]["texts"]["0"], models[b]["samplers"][sampler]["texts"]["0"],
                         judge, tokenizer, prompts=prompt_texts, num_bootstrap=preset.num_bootstrap, seed=seed)
            if b == "scratch":
                models[a].setdefault("win_rate_vs_baseline", {})[sampler] = w
            results["head_to_head"].append({"a": a, "b": b, "sampler": sampler, "win_rate": w, "elbo_difference": elbo})
            table.append(f"| {a} | {b} | {sampler} | {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
                         f"{w['wins']}/{w['ties']}/{w['losses']} | {elbo['nll_difference']:+.4f} ± {elbo['stderr']:.4f} |")
    results["extra_tables"] = {"Head to head (judge's mean log-likelihood per token; same prompts and seeds)":
                               "\n".join(table)}
    results["causal_lm"] = {"folder": str(out / "causal"), "heldout": causal_heldout, "init_check": check,
                            "final_train_loss": sum(causal_losses[-20:]) / len(causal_losses[-20:]),
                            "train_losses": causal_losses}
    clock.stop()
    results["settings"] = {"mode": mode, "seed": seed, "device": device, "preset": vars(preset), "samplers": samplers,
                           "num_train_examples": len(train_ds), "num_heldout_examples": len(heldout),
                           "torch_threads": torch.get_num_threads(), "timings_seconds": timings}
    results["judge"] = {"folder": str(judge_folder or out / "judge"),
                        "final_train_loss": sum(judge_losses[-20:]) / len(judge_losses[-20:]),
                        "num_parameters": sum(p.numel() for p in judge.parameters())}

    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n")
    plot_training({k: tuple(zip(*v)) for k, v in curves.items() if v}, out / "training_curves.png")
    mdlm_params = sum(p.numel() for p in a2d_model.parameters())
    md = (f"## A2D: a diffusion LM from a causal LM ({mode} mode, seed {seed})\n\n"
          f"Wall time {timings['total'] / 60:.1f} min on {device} ({torch.get_num_threads()} threads); "
          f"{len(train_ds)} training windows, {len(heldout)} held-out windows; MDLMs of "
          f"{mdlm_params / 1e6:.2f} M parameters (hidden {preset.width}, {preset.layers} layers, next-token aligned), "
          f"CE + slack-CTC (ctc_weight {preset.ctc_weight:g}, slack_prob {preset.slack_prob:g}), batch {preset.batch}, "
          f"lr {preset.lr:g} cosine; judge: GPT-2 with {results['judge']['num_parameters'] / 1e6:.2f} M parameters.\n\n"
          f"### Summary\n\n{_summary(results, preset)}\n\n{markdown_tables(results)}\n"
          f"### Samples (first prompts; text cut at EOS, `<slack>` removed)\n\n{_sample_table(results, preset)}")
    (out / "results.md").write_text(md)
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'training_curves.png'}")
    return results
