"""The repeat-collapse experiment: does standard CTC, which merges runs of equal tokens, drop repeats?

A synthetic task generated on the fly, with answers full of runs, in a character-level vocabulary so that a
repeat is a repeated token:

* ``mul``: ``47*1000=`` -> ``47000`` (a number times a power of ten: trailing zeros, as in GSM8K answers);
* ``copy``: ``c7770011=`` -> ``7770011`` (runs of digits copied).

Three arms from one base (masked-diffusion CE), with the same data order, seed and budget: ``ce``;
``ce+slack_ctc`` (CE + slack-CTC, collapse "slack": delete ``<slack>``, keep repeats); ``ce+ctc`` (CE + standard
CTC, collapse "ctc": merge runs, then delete ``<slack>``). Each is decoded greedily on held-out problems (whose
prompts never occur in training) and scored by exact match, by the rate of dropped repeated tokens (a token of a
run of the answer that the output lacks while it keeps the run, by edit-distance alignment: a run shortened), and by the
held-out ELBO; and by the outputs whose only error is a run's length (shorter or longer: the answer's runs in
order, with runs merged the output equals the answer); bootstrap intervals over problems.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from hf_mdlm.evaluation.report import compare_elbos, write_report
from hf_mdlm.evaluation.suite import evaluate_model, generation_settings
from hf_mdlm.generation_mdlm import strip_generation
from hf_mdlm.loading import ModelArguments, model_from_scratch
from .run import train_mdlm

logger = logging.getLogger("replicate")

SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}
ALPHABET = "0123456789*=c"


@dataclass
class RepeatsPreset:
    canvas_length: int = 16
    num_train: int = 40000
    num_prompts: int = 1024  # held-out problems
    max_runs: int = 3  # copy: runs per answer
    max_run: int = 4  # copy: longest run
    max_zeros: int = 5  # mul: largest power of ten
    width: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384
    base_steps: int = 5000
    arm_steps: int = 2500
    batch: int = 32
    lr: float = 2e-3
    slack_prob: float = 0.1
    elbo_examples: int = 256
    elbo_samples: int = 4
    num_bootstrap: int = 2000
    eval_batch: int = 128


REPEATS_PRESETS = {
    "full": RepeatsPreset(),
    "quick": RepeatsPreset(num_train=20000, num_prompts=512, width=96, layers=2, intermediate=256, base_steps=2000,
                           arm_steps=1000, elbo_examples=256, elbo_samples=2, num_bootstrap=1000),
    "smoke": RepeatsPreset(num_train=64, num_prompts=8, width=32, layers=1, heads=2, intermediate=64, base_steps=2,
                           arm_steps=3, batch=8, elbo_examples=8, elbo_samples=2, num_bootstrap=50, eval_batch=8),
}


def resolve_repeats_preset(mode: str, overrides: dict | None = None) -> RepeatsPreset:
    """The repeats preset of `mode` with `overrides` applied (None keeps a value; a name the task lacks: error)."""
    if mode not in REPEATS_PRESETS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {tuple(REPEATS_PRESETS)}")
    preset = copy.deepcopy(REPEATS_PRESETS[mode])
    names = {f.name for f in fields(RepeatsPreset)}
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in names:
            raise ValueError(f"--{name} does not apply to --task repeats (its settings: {', '.join(sorted(names))})")
        setattr(preset, name, value)
    longest = max(preset.max_runs * preset.max_run, 3 + preset.max_zeros)
    if preset.canvas_length < longest + 1:
        raise ValueError(f"canvas_length {preset.canvas_length} cannot hold the longest answer ({longest}) and EOS")
    return preset


# ----------------------------------------------------------------------------- the task


def char_tokenizer():
    """A character-level tokenizer built in code: <pad>, <s> (BOS), </s> (EOS), the digits, '*', '=', 'c', then
    [MASK] and <slack>. Every character is one token, so '100' is the tokens 1, 0, 0."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hf_mdlm.tokenization import add_diffusion_tokens

    vocab = {tok: i for i, tok in enumerate([*SPECIALS.values(), *ALPHABET])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS["pad"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=SPECIALS["pad"], bos_token=SPECIALS["bos"],
                                        eos_token=SPECIALS["eos"])
    add_diffusion_tokens(tokenizer)
    return tokenizer


def make_problem(rng: random.Random, preset: RepeatsPreset) -> tuple[str, str, str]:
    """(family, prompt, answer) of one random problem."""
    if rng.random() < 0.5:
        a = rng.choice([rng.randint(1, 9), rng.randint(10, 99), rng.randint(100, 999), 11 * rng.randint(1, 9),
                        100 * rng.randint(1, 9)])
        k = rng.randint(1, preset.max_zeros)
        return "mul", f"{a}*1{'0' * k}=", f"{a}{'0' * k}"
    digits, answer = [], ""
    for _ in range(rng.randint(2, preset.max_runs)):
        d = rng.choice([x for x in "0123456789" if not digits or x != digits[-1]])
        digits.append(d)
        answer += d * rng.randint(1, preset.max_run)
    return "copy", f"c{answer}=", answer


def repeats_datasets(preset: RepeatsPreset, tokenizer, seed: int):
    """(train, held-out) datasets of {prompt_ids, response_ids (answer + EOS), family, answer}. The held-out
    problems are the same for every seed; no training prompt is a held-out prompt."""
    from datasets import Dataset

    def rows(problems):
        out = []
        for family, prompt, answer in problems:
            out.append({"prompt_ids": [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(list(prompt)),
                        "response_ids": tokenizer.convert_tokens_to_ids(list(answer)) + [tokenizer.eos_token_id],
                        "family": family, "answer": answer})
        return out

    rng = random.Random(12345)
    test, seen = [], set()
    while len(test) < preset.num_prompts:
        problem = make_problem(rng, preset)
        if problem[1] not in seen:
            seen.add(problem[1])
            test.append(problem)
    rng = random.Random(1_000_003 + seed)
    train = []
    while len(train) < preset.num_train:
        problem = make_problem(rng, preset)
        if problem[1] not in seen:
            train.append(problem)
    train_ds = Dataset.from_list(rows(train)).remove_columns(["family", "answer"])  # the collator takes ids only
    return train_ds, Dataset.from_list(rows(test))


# ----------------------------------------------------------------------------- metrics


def merge_runs(tokens) -> list:
    """Standard CTC's collapse of a decoded sequence (after deleting <slack>): runs merged."""
    return [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]


def dropped_repeats(target, output) -> tuple[int, int]:
    """(dropped, repeats): `repeats` = sum over the target's runs of (length - 1); `dropped` = per run that the
    output still has (a minimum edit-distance alignment keeps at least one of its tokens), the run's tokens that
    the alignment deletes. A run shortened, not a run lost or an answer wrong elsewhere."""
    n, m = len(target), len(output)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1,
                             cost[i - 1, j - 1] + (target[i - 1] != output[j - 1]))
    deleted, kept = [False] * n, [False] * n
    i, j = n, m
    while i > 0 or j > 0:  # backtrace; prefer matches, then deletions of target tokens
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (target[i - 1] != output[j - 1]):
            kept[i - 1] = target[i - 1] == output[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            deleted[i - 1] = True
            i -= 1
        else:
            j -= 1
    dropped = repeats = 0
    start = 0
    for end in range(1, n + 1):
        if end == n or target[end] != target[start]:
            length = end - start
            if length > 1:
                repeats += length - 1
                dropped += sum(deleted[start:end]) if any(kept[start:end]) else 0
            start = end
    return dropped, repeats


def run_length_error(target, output) -> str | None:
    """'shorter' / 'longer' / 'both' when the output has the answer's runs in order (the same sequence with runs
    merged) but not their lengths: an error of run length alone; None otherwise (right, or wrong elsewhere)."""
    if output == target or merge_runs(list(output)) != merge_runs(list(target)):
        return None

    def lengths(seq):
        out = []
        for i, t in enumerate(seq):
            if i and t == seq[i - 1]:
                out[-1] += 1
            else:
                out.append(1)
        return out

    pairs = list(zip(lengths(target), lengths(output)))
    shorter, longer = any(o < t for t, o in pairs), any(o > t for t, o in pairs)
    return "both" if shorter and longer else "shorter" if shorter else "longer"


def _interval(draws) -> list:
    return [float(x) for x in np.quantile(draws, [0.025, 0.975])]


def bootstrap_mean(values, num_bootstrap: int, seed: int) -> dict:
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, len(values), size=(num_bootstrap, len(values)))].mean(1)
    return {"value": float(values.mean()), "ci95": _interval(draws)}


def bootstrap_ratio(numerators, denominators, num_bootstrap: int, seed: int) -> dict:
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(num_bootstrap, len(num)))
    draws = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1)
    return {"value": float(num.sum() / max(den.sum(), 1)), "ci95": _interval(draws)}


def score_outputs(rows, raw_canvases, tokenizer, slack_id, num_bootstrap: int, seed: int) -> dict:
    """Exact match, dropped repeats and per-problem records of greedy canvases (library decoding: cut at EOS,
    delete <slack>; and standard-CTC decoding: runs merged as well)."""
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    outputs = strip_generation(raw_canvases, mask_token_id=mask, slack_token_id=slack_id, eos_token_id=eos)
    records, exact, exact_merged, dropped, repeats = [], [], [], [], []
    for row, out, raw in zip(rows, outputs, raw_canvases):
        text = "".join(tokenizer.convert_ids_to_tokens(out))
        merged = "".join(merge_runs(list(text)))
        d, r = dropped_repeats(row["answer"], text)
        exact.append(float(text == row["answer"]))
        exact_merged.append(float(merged == row["answer"]))
        dropped.append(d)
        repeats.append(r)
        records.append({"family": row["family"], "answer": row["answer"], "output": text, "dropped": d,
                        "run_length_error": run_length_error(row["answer"], text),
                        "num_slack": sum(t == slack_id for t in raw)})
    families = {}
    for family in sorted({r["family"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["family"] == family]
        families[family] = {"exact_match": float(np.mean([exact[i] for i in idx])),
                            "dropped_repeat_rate": float(sum(dropped[i] for i in idx) / max(1, sum(repeats[i] for i in idx)))}
    return {
        "exact_match": bootstrap_mean(exact, num_bootstrap, seed),
        "dropped_repeat_rate": bootstrap_ratio(dropped, repeats, num_bootstrap, seed),
        "outputs_with_dropped_repeat": bootstrap_mean([float(d > 0) for d in dropped], num_bootstrap, seed),
        "run_length_errors": bootstrap_mean([float(r["run_length_error"] is not None) for r in records],
                                            num_bootstrap, seed),
        "runs_shortened_only": bootstrap_mean([float(r["run_length_error"] == "shorter") for r in records],
                                              num_bootstrap, seed),
        "runs_lengthened_only": bootstrap_mean([float(r["run_length_error"] == "longer") for r in records],
                                               num_bootstrap, seed),
        "exact_match_ctc_decoding": bootstrap_mean(exact_merged, num_bootstrap, seed),
        "per_family": families,
        "per_problem_exact": exact,
        "examples": records[:8],
        "records": records,
    }


def greedy_canvases(model, rows, canvas_length: int, batch_size: int) -> list[list[int]]:
    """Greedy low-confidence decoding (one token per step) of every row's prompt; the raw canvases."""
    device = next(model.parameters()).device
    gen = generation_settings(canvas_length)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(len(row["prompt_ids"]), []).append(i)
    out: list = [None] * len(rows)
    with torch.no_grad():
        for length, idx in sorted(groups.items()):
            for k in range(0, len(idx), batch_size):
                chunk = idx[k:k + batch_size]
                ids = torch.tensor([rows[i]["prompt_ids"] for i in chunk], dtype=torch.long, device=device)
                canvas = model.generate(ids, attention_mask=torch.ones_like(ids), **gen)
                canvas = canvas if isinstance(canvas, torch.Tensor) else canvas.sequences
                for b, i in enumerate(chunk):
                    out[i] = canvas[b, length:].tolist()
    return out


def exact_outcomes(a, b) -> list[float]:
    """Per problem: 1 when only A is exact, 0 when only B is, 1/2 otherwise."""
    return [0.5 if x == y else float(x > y) for x, y in zip(a, b)]


def pairwise_exact(a, b, num_bootstrap: int, seed: int) -> dict:
    """The mean of `exact_outcomes(a, b)` with its interval, and the counts."""
    outcomes = exact_outcomes(a, b)
    res = bootstrap_mean(outcomes, num_bootstrap, seed)
    return {"win_rate": res["value"], "ci_low": res["ci95"][0], "ci_high": res["ci95"][1],
            "wins": outcomes.count(1.0), "ties": outcomes.count(0.5), "losses": outcomes.count(0.0),
            "outcomes": outcomes}


def repeats_arms(slack_prob: float) -> dict:
    slack = dict(ce_weight=1.0, ctc_weight=1.0, slack_rule="bernoulli", slack_prob=slack_prob)
    return {"ce": dict(ce_weight=1.0, ctc_weight=0.0, slack_rule="none"),
            "ce+slack_ctc": {**slack, "ctc_collapse": "slack"},
            "ce+ctc": {**slack, "ctc_collapse": "ctc"}}


def _ci(res, digits=3):
    return f"{res['value']:.{digits}f} [{res['ci95'][0]:.{digits}f}, {res['ci95'][1]:.{digits}f}]"


def repeats_table(results) -> str:
    lines = ["| model | exact match [95% CI] | dropped repeated tokens [95% CI] | outputs with a dropped repeat "
             "| wrong run lengths only: any [95% CI] / all shorter / all longer | exact, runs merged on decoding "
             "| exact: mul / copy "
             "| ELBO PPL ≤ (slack-free) [95% CI] | ΔNLL/token vs `ce` | exact-match win rate vs `ce` [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results["models"].items():
        e, d, w = res["elbo"], res.get("elbo_vs_baseline"), res.get("win_rate_vs_baseline")
        fam = res["per_family"]
        lines.append(
            f"| {name} | {_ci(res['exact_match'])} | {_ci(res['dropped_repeat_rate'])} | "
            f"{res['outputs_with_dropped_repeat']['value']:.3f} | {_ci(res['run_length_errors'])} / "
            f"{res['runs_shortened_only']['value']:.3f} / {res['runs_lengthened_only']['value']:.3f} | "
            f"{res['exact_match_ctc_decoding']['value']:.3f} | "
            f"{fam.get('mul', {}).get('exact_match', float('nan')):.3f} / "
            f"{fam.get('copy', {}).get('exact_match', float('nan')):.3f} | "
            f"{e['perplexity']:.3f} [{e['perplexity_ci95'][0]:.3f}, {e['perplexity_ci95'][1]:.3f}] | "
            + ("—" if d is None else f"{d['nll_difference']:+.4f} ± {d['stderr']:.4f}") + " | "
            + ("—" if w is None else f"{w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] "
               f"({w['wins']}/{w['ties']}/{w['losses']})") + " |")
    return "\n".join(lines)


def collapse_table(w) -> str:
    """The paper's claim head to head (`pairwise_exact` of slack-CTC's answers against standard CTC's)."""
    return ("| comparison | exact-match win rate [95% CI] | only slack-CTC exact / both or neither / only standard CTC "
            "exact |\n|---|---|---|\n"
            f"| ce+slack_ctc vs ce+ctc | {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
            f"{w['wins']} / {w['ties']} / {w['losses']} |")


def repeats_settings(mode: str, preset) -> dict:
    """What defines a repeats run, as its results.json saves it: `--seeds` reuses a finished seed only when these
    agree."""
    return {"task": "repeats", "mode": mode, "preset": vars(preset)}


def run_repeats(output_dir, preset: RepeatsPreset, *, mode: str, seed: int = 0, device: str = "cpu") -> dict:
    """The repeat-collapse comparison into `output_dir` (results.json, results.md); returns the results."""
    from transformers import set_seed

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings = {}
    set_seed(seed)
    tokenizer = char_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    model_args = ModelArguments(tokenizer_name=str(out / "tokenizer"), hidden_size=preset.width,
                                num_hidden_layers=preset.layers, num_attention_heads=preset.heads,
                                intermediate_size=preset.intermediate)
    model, tokenizer = model_from_scratch(model_args)
    slack_id = model.config.slack_token_id
    train_ds, test_ds = repeats_datasets(preset, tokenizer, seed)
    if preset.base_steps > 0:
        t0 = time.time()
        model = train_mdlm(model, tokenizer, train_ds, out / "base", preset.base_steps, preset, seed, device,
                           ce_weight=1.0, ctc_weight=0.0, slack_rule="none").model
        timings["base"] = round(time.time() - t0, 1)
    base_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    rows = [test_ds[i] for i in range(len(test_ds))]
    results = {"models": {}}
    for name, objective in repeats_arms(preset.slack_prob).items():
        t0 = time.time()
        arm, _ = model_from_scratch(model_args)
        arm.load_state_dict(base_state)
        trainer = train_mdlm(arm, tokenizer, train_ds, out / name.replace("+", "_"), preset.arm_steps, preset, seed,
                             device, **objective)
        arm = trainer.model.eval()
        timings[f"train {name}"] = round(time.time() - t0, 1)
        t0 = time.time()
        scores = score_outputs(rows, greedy_canvases(arm, rows, preset.canvas_length, preset.eval_batch), tokenizer,
                               slack_id, preset.num_bootstrap, seed)
        elbo = evaluate_model(arm, tokenizer, test_ds, canvas_length=preset.canvas_length,
                              elbo_examples=preset.elbo_examples, elbo_samples=preset.elbo_samples,
                              elbo_slack_prob=preset.slack_prob, seed=seed, batch_size=preset.eval_batch)
        results["models"][name] = {"objective": objective, **elbo, **scores,
                                   "train_log": trainer.state.log_history}
        timings[f"evaluate {name}"] = round(time.time() - t0, 1)
        logger.info("%s: exact %.3f, dropped repeats %.3f, ELBO PPL %.3f (%.0fs)", name,
                    scores["exact_match"]["value"], scores["dropped_repeat_rate"]["value"],
                    elbo["elbo"]["perplexity"], time.time() - start)
    baseline = results["models"]["ce"]
    for name, res in list(results["models"].items())[1:]:
        compare_elbos(res, baseline)
        res["win_rate_vs_baseline"] = pairwise_exact(res["per_problem_exact"], baseline["per_problem_exact"],
                                                     preset.num_bootstrap, seed)
    models = results["models"]
    results["slack_vs_standard_ctc"] = pairwise_exact(models["ce+slack_ctc"]["per_problem_exact"],
                                                      models["ce+ctc"]["per_problem_exact"], preset.num_bootstrap, seed)
    results["extra_tables"] = {"Repeat collapse: greedy answers to held-out problems": repeats_table(results),
                               "Slack-CTC against standard CTC, the same problems": collapse_table(
                                   results["slack_vs_standard_ctc"])}
    timings["total"] = round(time.time() - start, 1)
    results["settings"] = {**repeats_settings(mode, preset), "seed": seed, "device": device,
                           "num_train_examples": len(train_ds), "num_heldout_examples": len(test_ds),
                           "torch_threads": torch.get_num_threads(), "timings_seconds": timings}
    paths = write_report(results, out)
    header = (f"## Repeat collapse ({mode} mode, seed {seed})\n\nWall time {timings['total'] / 60:.1f} min on {device} "
              f"({torch.get_num_threads()} threads); {len(train_ds)} training problems, {len(test_ds)} held-out "
              f"problems (mul: `47*1000=` -> `47000`; copy: `c7770011=` -> `7770011`), character tokens, "
              f"greedy decoding (one token per step).\n\n")
    md = header + Path(paths["markdown"]).read_text()
    Path(paths["markdown"]).write_text(md)
    print(md)
    return results
