"""The lab in `experiments/`, smoke-sized: replicate.py (end to end with examples/evaluate.py on the folders it wrote,
a user's corpus, the repeat-collapse task, several seeds, its refusals), judge_study.py on its results,
a2d_experiment.py, and the helpers of the `replication` package."""

import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replication.repeats import dropped_repeats, merge_runs, pairwise_exact, run_length_error
from replication.seeds import parse_seeds, summarize_seeds

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a of river stone light over under green quiet morning house road garden winter sings falls "
         "keeps opens listens carries bright old small").split()


# ----------------------------------------------------------------------------- replicate.py


def test_replicate_smoke_and_evaluate_script(tmp_path):
    """`experiments/replicate.py --smoke` end to end, then `examples/evaluate.py` on the folders it wrote."""
    out = tmp_path / "replicate"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "replicate.py"), "--smoke", "--output_dir",
                             str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["ce", "ce+slack_ctc"]
    assert results["models"]["ce"]["objective"]["ctc_weight"] == 0
    assert results["models"]["ce+slack_ctc"]["objective"]["ctc_weight"] == 1
    for model in results["models"].values():
        assert math.isfinite(model["elbo"]["perplexity"])
        assert [r["shift_rate"] for r in model["samplers"]["ancestral"]["per_rate"]] == [0.0, 0.2]
    assert "nll_difference" in results["models"]["ce+slack_ctc"]["elbo_vs_baseline"]
    assert "| ce+slack_ctc |" in (out / "results.md").read_text()
    first = (out / "results.md").read_text().splitlines()[0]  # the commit and the command, first
    assert re.match(r"Commit ([0-9a-f]{7,}( with uncommitted changes)?|unknown); command: `python "
                    r"experiments/replicate\.py --smoke --output_dir \S+`\.$", first), first
    assert (out / "shift_robustness.png").stat().st_size > 1000
    assert (out / "training_curves.png").stat().st_size > 1000

    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_mdlm_examples_evaluate_test", ROOT / "examples" / "evaluate.py")
    evaluate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_script)
    report = tmp_path / "evaluate"
    again = evaluate_script.main([
        "--model", str(out / "ce"), "--judge", str(out / "judge"), "--output_dir", str(report),
        "--text_prompt_length", "8", "--text_response_length", "12", "--elbo_examples", "8", "--elbo_samples", "2", "--num_prompts", "4",
        "--shift_rates", "0,0.2", "--samplers", "ancestral", "--num_bootstrap", "50", "--batch_size", "8",
        "--device", "cpu", "--fast_samplers", "dual+kv_cache_refresh=2"])
    # The cached sampler's entry: the same ELBO (no cache in the likelihood), its agreement with the exact samples
    # and its win rate against them, in the report's table.
    cached = again["models"]["ce [kv_cache=dual+kv_cache_refresh=2]"]
    assert cached["elbo"] == again["models"]["ce"]["elbo"]
    versus = cached["vs_exact"]["ancestral"]
    assert 0 <= versus["identical_texts"] <= 1 and 0 <= versus["win_rate_vs_exact"]["win_rate"] <= 1
    assert "| kv_cache=dual+kv_cache_refresh=2 | ancestral |" in (report / "results.md").read_text()
    # the same model, data, seed and settings as inside replicate.py: the same numbers
    assert again["models"]["ce"]["elbo"]["perplexity"] == pytest.approx(
        results["models"]["ce"]["elbo"]["perplexity"], rel=1e-5)
    assert again["models"]["ce"]["samplers"]["ancestral"]["texts"] == \
        results["models"]["ce"]["samplers"]["ancestral"]["texts"]
    assert {p.name for p in report.iterdir()} >= {"results.json", "results.md", "shift_robustness.png"}


def _replicate_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_mdlm_examples_replicate", ROOT / "experiments" / "replicate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_replicate_refuses_bad_sweeps_and_a_judge_of_another_shape(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    replicate = _replicate_module()
    args = replicate.build_parser().parse_args(["--ctc_weight", "0.25,1", "--slack_prob", "0.03,0.1"])
    from replication import arms

    assert list(arms(args.ctc_weight, args.slack_prob)) == ["ce", "ce+slack_ctc(w=0.25,p=0.03)", "ce+slack_ctc(w=0.25,p=0.1)",
                                          "ce+slack_ctc(w=1,p=0.03)", "ce+slack_ctc(w=1,p=0.1)"]
    with pytest.raises(SystemExit):
        replicate.build_parser().parse_args(["--ctc_weight", "1,-0.5"])
    assert "ctc_weight must be non-negative numbers, got '1,-0.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        replicate.build_parser().parse_args(["--slack_prob", "0.1,x"])
    assert "expected comma-separated numbers, got '0.1,x'" in capsys.readouterr().err
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "judge")
    with pytest.raises(SystemExit, match=r"width 16 x 1 layers does not match this mode's judge \(32 x 1\)"):
        replicate.main(["--smoke", "--judge", str(tmp_path / "judge"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "base").exists()  # refused before any training


def _load(name, path):
    spec = importlib.util.spec_from_file_location(f"hf_mdlm_{name}_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    return _replicate_module()


def test_replicate_checks_its_output_first(tmp_path, monkeypatch):
    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(SystemExit, match="is a file"):
        _script().main(["--smoke", "--output_dir", str(a_file)])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match="matplotlib"):
        _script().main(["--smoke", "--output_dir", str(tmp_path / "rep")])


def _lines(n, seed):
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))) for _ in range(n)) + "\n"


@pytest.fixture()
def corpus(tmp_path):
    train, heldout = tmp_path / "train.txt", tmp_path / "heldout.txt"
    train.write_text(_lines(300, 0))
    heldout.write_text(_lines(80, 1))
    return train, heldout


def test_replicate_smoke_on_a_user_corpus(tmp_path, corpus):
    train, heldout = corpus
    out = tmp_path / "out"
    _script().main(["--smoke", "--dataset", str(train), "--heldout", str(heldout), "--output_dir", str(out),
                    "--shift_rates", "0", "--threads", "1", "--seeds", "0,2"])
    for seed in (0, 2):
        results = json.loads((out / f"seed_{seed}" / "results.json").read_text())
        assert list(results["models"]) == ["ce", "ce+slack_ctc"] and results["settings"]["seed"] == seed
        assert results["settings"]["dataset"] == str(train) and results["settings"]["heldout"] == str(heldout)
        assert all(math.isfinite(m["elbo"]["perplexity"]) for m in results["models"].values())
        assert "win_rate_vs_baseline" in results["models"]["ce+slack_ctc"]
        assert f"held out: {heldout}" in (out / f"seed_{seed}" / "results.md").read_text()
        saved = {arm: json.loads((out / f"seed_{seed}" / arm / "generation_config.json").read_text())
                 for arm in ("ce", "ce_slack_ctc")}
        assert saved["ce"]["suppress_slack"] is False and saved["ce_slack_ctc"]["suppress_slack"] is True
    summary = json.loads((out / "results.json").read_text())
    pooled = summary["models"]["ce+slack_ctc"]["pooled_win_rate"]["ancestral"]
    assert pooled["num_pairs"] == 8  # 4 prompts x 2 seeds
    metrics = summary["models"]["ce+slack_ctc"]["metrics"]
    assert len(metrics["win rate vs baseline, ancestral"]["per_seed"]) == 2 and "gen-PPL ancestral" in metrics

    # Finished seeds are reused, not rerun; a finished seed made with other settings stops the run before any work.
    stamps = {seed: (out / f"seed_{seed}" / "results.json").stat().st_mtime_ns for seed in (0, 2)}
    _script().main(["--smoke", "--dataset", str(train), "--heldout", str(heldout), "--output_dir", str(out),
                    "--shift_rates", "0", "--threads", "1", "--seeds", "2,0"])
    assert {seed: (out / f"seed_{seed}" / "results.json").stat().st_mtime_ns for seed in (0, 2)} == stamps
    assert json.loads((out / "results.json").read_text())["seeds"] == [2, 0]
    with pytest.raises(SystemExit, match=r"seed_0 holds a finished run with other settings \(preset: saved"):
        _script().main(["--smoke", "--dataset", str(train), "--heldout", str(heldout), "--output_dir", str(out),
                        "--shift_rates", "0", "--threads", "1", "--seeds", "0,5", "--base_steps", "3"])
    assert not (out / "seed_5").exists()

    # experiments/judge_study.py rejudges the stored samples: the runs' own judges give the stored win rates, and a run
    # whose stored win rate its own judge does not reproduce is an error.
    study = _load("judge_study", ROOT / "experiments" / "judge_study.py")
    table = tmp_path / "judges.md"
    study.main(["--runs", f"two seeds={out}", "--judges", f"seed 2's={out / 'seed_2' / 'judge'}", "--output", str(table)])
    rows = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| two seeds")]
    assert [row[3] for row in rows] == ["own", "seed 2's"]
    assert rows[0][4].split(", ")[1] == rows[1][4].split(", ")[1]  # seed 2 judged by its own judge both times
    assert rows[0][5].startswith(f"{pooled['win_rate']:.3f}")
    assert table.read_text().startswith("Commit ") and "`python experiments/judge_study.py --runs " in table.read_text()
    results = json.loads((out / "seed_0" / "results.json").read_text())
    stored = results["models"]["ce+slack_ctc"]["win_rate_vs_baseline"]["ancestral"]
    stored["wins"] += 1
    (out / "seed_0" / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="seed 0: rejudging with the run's own judge gives"):
        study.main(["--runs", f"two seeds={out}"])
    for runs, message in ((str(out), "expected LABEL=PATH"), (f"x={tmp_path / 'none'}", "no such file or folder"),
                          (f"x={tmp_path}", "neither results.json nor seed_")):
        with pytest.raises(SystemExit, match=message):
            study.main(["--runs", runs])
    first = json.loads((out / "seed_2" / "results.json").read_text())
    first["models"]["ce"]["samplers"]["ancestral"]["prompts"][0] += " changed"
    (out / "seed_2" / "results.json").write_text(json.dumps(first))
    with pytest.raises(SystemExit, match="were not sampled from the same prompts"):
        study.main(["--runs", f"x={out / 'seed_2'}"])


def test_overlapping_or_short_heldout_is_refused_before_training(tmp_path, corpus):
    train, _ = corpus
    script = _script()
    part = tmp_path / "part.txt"  # the first 100 lines of the training file: the same document, cut
    part.write_text("\n".join(train.read_text().splitlines()[:100]) + "\n")
    for heldout in (train, part):
        with pytest.raises(SystemExit, match="overlap|training data itself"):
            script.main(["--smoke", "--dataset", str(train), "--heldout", str(heldout),
                         "--output_dir", str(tmp_path / "o1")])
    rows = tmp_path / "train.jsonl"  # prompt/completion rows: one shared row is enough
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(20)))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "q3", "completion": "answer  3"}) + "\n")
    with pytest.raises(SystemExit, match="1 of its 1 rows"):
        script.main(["--smoke", "--dataset", str(rows), "--heldout", str(held), "--output_dir", str(tmp_path / "o2")])
    short = tmp_path / "short.txt"
    short.write_text("a quiet river falls under the old stone house\n")
    with pytest.raises(SystemExit, match="fewer than --num_prompts 4"):
        script.main(["--smoke", "--dataset", str(train), "--heldout", str(short), "--output_dir", str(tmp_path / "o3")])
    with pytest.raises(SystemExit, match="--heldout needs --dataset"):
        script.main(["--smoke", "--heldout", str(short), "--output_dir", str(tmp_path / "o4")])
    for path in ("o1", "o2", "o3"):  # nothing trained: no judge, no model folder
        assert not (tmp_path / path / "judge").exists() and not (tmp_path / path / "base").exists()


def test_seeds_parsing():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 5 ") == [5]
    for text, message in (("0,1,0", "appears twice"), ("0,-1", "negative"), ("0,x", "not an integer"), ("", "integer")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(text)
    script = _script()
    with pytest.raises(SystemExit, match="appears twice"):
        script.main(["--smoke", "--seeds", "1,1", "--output_dir", "/nonexistent/never-written"])
    with pytest.raises(SystemExit, match="negative"):
        script.main(["--task", "repeats", "--smoke", "--seeds", "-2", "--output_dir", "/nonexistent/never-written"])
    with pytest.raises(SystemExit):  # --seed and --seeds together: argparse refuses
        script.main(["--smoke", "--seed", "1", "--seeds", "1,2"])


def test_seed_summary_pools_the_per_prompt_comparisons():
    def res(exact, outcomes=None):
        r = {"exact_match": {"value": exact}, "dropped_repeat_rate": {"value": 0.1}, "elbo": {"perplexity": 2.0},
             "run_length_errors": {"value": 0.0}, "runs_shortened_only": {"value": 0.0}, "runs_lengthened_only": {"value": 0.0}}
        if outcomes is not None:
            r["elbo_vs_baseline"] = {"nll_difference": 0.01}
            r["win_rate_vs_baseline"] = {"win_rate": sum(outcomes) / len(outcomes), "outcomes": outcomes}
        return r

    by_seed = {0: {"models": {"ce": res(0.5), "x": res(0.6, [1.0, 0.5, 0.5, 1.0])}},
               3: {"models": {"ce": res(0.7), "x": res(0.6, [0.0, 0.5, 0.5, 0.5])}}}
    summary = summarize_seeds("repeats", by_seed, num_bootstrap=200)
    exact = summary["models"]["ce"]["metrics"]["exact match"]
    assert exact["per_seed"] == [0.5, 0.7] and exact["mean"] == pytest.approx(0.6) and exact["max"] == 0.7
    pooled = summary["models"]["x"]["pooled_win_rate"]["exact match"]
    assert pooled["win_rate"] == pytest.approx(4.5 / 8) and pooled["num_pairs"] == 8
    assert pooled["ci_low"] <= pooled["win_rate"] <= pooled["ci_high"]

    # slack-CTC against standard CTC, pooled from the per-problem answers of each seed
    for seed, (slack, ctc) in {0: ([1, 1, 0, 0], [0, 1, 0, 1]), 3: ([1, 0, 1, 1], [0, 0, 0, 1])}.items():
        by_seed[seed]["models"]["ce+slack_ctc"] = {**res(0.5, [0.5] * 4), "per_problem_exact": slack}
        by_seed[seed]["models"]["ce+ctc"] = {**res(0.5, [0.5] * 4), "per_problem_exact": ctc}
    head_to_head = summarize_seeds("repeats", by_seed, num_bootstrap=200)["models"]["ce+slack_ctc"]["pooled_win_rate"]
    w = head_to_head["exact match vs ce+ctc"]
    assert (w["wins"], w["ties"], w["losses"]) == (3, 4, 1) and w["win_rate"] == pytest.approx(5 / 8)


def test_repeat_metrics():
    assert dropped_repeats("47000", "47000") == (0, 2)
    assert dropped_repeats("47000", "470") == (2, 2)  # trailing zeros merged: the collapse symptom
    assert dropped_repeats("7770011", "77011") == (2, 4)
    assert dropped_repeats("100", "1000") == (0, 1)  # a repeat added is not a repeat dropped
    assert dropped_repeats("1000", "1") == (0, 2)  # a run lost entirely is a wrong answer, not a shortened run
    assert merge_runs(list("7770011")) == list("701")
    assert run_length_error("47000", "470") == "shorter" and run_length_error("6600", "66600") == "longer"
    assert run_length_error("7700", "7000") == "both" and run_length_error("47000", "47000") is None
    assert run_length_error("47000", "48000") is None  # wrong elsewhere, not in a run's length
    w = pairwise_exact([1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], 100, 0)
    assert (w["wins"], w["ties"], w["losses"]) == (1, 2, 1) and w["win_rate"] == 0.5


def test_repeats_task_smoke_with_two_seeds(tmp_path):
    out = tmp_path / "repeats"
    _script().main(["--task", "repeats", "--smoke", "--seeds", "0,1", "--output_dir", str(out), "--threads", "1"])
    for seed in (0, 1):
        results = json.loads((out / f"seed_{seed}" / "results.json").read_text())
        assert list(results["models"]) == ["ce", "ce+slack_ctc", "ce+ctc"]
        assert results["models"]["ce+ctc"]["objective"]["ctc_collapse"] == "ctc"
        for res in results["models"].values():
            assert 0 <= res["exact_match"]["value"] <= 1 and math.isfinite(res["elbo"]["perplexity"])
            assert 0 <= res["dropped_repeat_rate"]["value"] <= 1
        log = results["models"]["ce+ctc"]["train_log"]
        assert any("loss_ctc" in e for e in log)  # standard CTC trained (no infeasible canvases)
        slack, ctc = (results["models"][arm]["per_problem_exact"] for arm in ("ce+slack_ctc", "ce+ctc"))
        w = results["slack_vs_standard_ctc"]
        assert w["wins"] == sum(a > b for a, b in zip(slack, ctc)) and w["losses"] == sum(a < b for a, b in zip(slack, ctc))
        assert "| ce+slack_ctc vs ce+ctc |" in (out / f"seed_{seed}" / "results.md").read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [0, 1] and "exact match" in summary["models"]["ce+ctc"]["pooled_win_rate"]
    assert summary["models"]["ce+slack_ctc"]["pooled_win_rate"]["exact match vs ce+ctc"]["num_pairs"] == 16
    assert "| ce+ctc | dropped repeated tokens |" in (out / "results.md").read_text()
    command = f"python experiments/replicate.py --task repeats --smoke --seeds 0,1 --output_dir {out} --threads 1`"
    for report in (out / "results.md", out / "seed_0" / "results.md"):  # the summary and each seed's report
        assert report.read_text().startswith("Commit ") and command in report.read_text().splitlines()[0]
    with pytest.raises(SystemExit, match="does not apply|drop --dataset"):
        _script().main(["--task", "repeats", "--smoke", "--judge_steps", "3", "--output_dir", str(tmp_path / "x")])


# ----------------------------------------------------------------------------- a2d_experiment.py


def _example():
    spec = importlib.util.spec_from_file_location("hf_mdlm_examples_a2d", ROOT / "experiments" / "a2d_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _distance(a, b):
    return float((a - b).norm() / b.norm())


def test_a2d_experiment_smoke(tmp_path):
    from transformers import LlamaForCausalLM

    from hf_mdlm import MDLMForMaskedLM

    out = tmp_path / "a2d"
    results = _example().main(["--smoke", "--output_dir", str(out), "--seed", "0"])

    assert set(results) >= {"models", "reference", "causal_lm", "head_to_head", "settings", "judge", "extra_tables"}
    assert list(results["models"]) == ["scratch", "a2d", "scratch (long)", "a2d, not fine-tuned"]
    for name in ("scratch", "a2d", "scratch (long)"):
        res = results["models"][name]
        assert {"elbo", "elbo_slack_marginal", "samplers", "train_log"} <= set(res)
        assert res["objective"] == {"ce_weight": 1.0, "ctc_weight": 1.0, "slack_rule": "bernoulli", "slack_prob": 0.1}
        assert len(res["samplers"]["ancestral"]["texts"]["0"]) == 4
    steps = {name: results["models"][name]["steps"] for name in ("scratch", "a2d", "scratch (long)")}
    assert steps == {"scratch": 3, "a2d": 3, "scratch (long)": 6}
    for name in ("a2d", "scratch (long)", "a2d, not fine-tuned"):
        assert {"nll_difference", "stderr"} <= set(results["models"][name]["elbo_vs_baseline"])
    assert 0 <= results["models"]["a2d"]["win_rate_vs_baseline"]["ancestral"]["win_rate"] <= 1
    assert [(h["a"], h["b"]) for h in results["head_to_head"]] == [
        ("a2d", "scratch"), ("scratch (long)", "scratch"), ("a2d", "scratch (long)")]
    causal = results["causal_lm"]
    assert causal["heldout"]["num_tokens"] == results["models"]["a2d"]["elbo"]["num_tokens"]
    assert causal["heldout"]["perplexity"] > 1
    assert causal["init_check"]["max_abs_diff"] == 0 and causal["init_check"]["tensors_compared"] > 0
    for name in ("results.json", "results.md", "training_curves.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["models"]["a2d"]["init"].startswith("A2D")
    assert "## A2D: a diffusion LM from a causal LM (smoke mode, seed 0)" in (out / "results.md").read_text()
    assert f"command: `python experiments/a2d_experiment.py --smoke --output_dir {out} --seed 0`." in \
        (out / "results.md").read_text().splitlines()[0]

    # The conversion holds the causal LM's weights exactly; the A2D arm was trained from it, the scratch arm was not.
    source = LlamaForCausalLM.from_pretrained(out / "causal").state_dict()
    converted = MDLMForMaskedLM.from_pretrained(out / "converted")
    a2d = MDLMForMaskedLM.from_pretrained(out / "a2d")
    scratch = MDLMForMaskedLM.from_pretrained(out / "scratch")
    assert converted.config.prediction_alignment == scratch.config.prediction_alignment == "next_token"
    for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size",
                  "rms_norm_eps", "mask_token_id", "slack_token_id", "tie_word_embeddings"):
        assert getattr(scratch.config, field) == getattr(converted.config, field), field
    conv = converted.state_dict()
    for key, tensor in source.items():
        assert torch.equal(conv[key][: tensor.shape[0]], tensor), key
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(a2d.state_dict()[key], conv[key])  # fine-tuned
    assert _distance(a2d.state_dict()[key], source[key]) < 0.5 < _distance(scratch.state_dict()[key], source[key])


def test_replicate_and_a2d_lock_their_folder_and_overwrite_only_their_files(tmp_path, monkeypatch):
    """replicate.py used to write judge/, base/ and its arms over an earlier run; now a non-empty --output_dir is
    refused unless it holds this script's files and --overwrite_output_dir asks to replace them, or (with --seeds)
    earlier seed folders, which are reused when their settings agree. The same for a2d_experiment.py."""
    replicate = _replicate_module()

    class Started(Exception):  # the checks passed and the work began
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(replicate, "configure_run", started)
    out = tmp_path / "rep"
    (out / "judge").mkdir(parents=True)  # an earlier run
    with pytest.raises(SystemExit, match="is not empty .*pass --overwrite_output_dir"):
        replicate.main(["--smoke", "--output_dir", str(out)])
    with pytest.raises(Started):
        replicate.main(["--smoke", "--output_dir", str(out), "--overwrite_output_dir"])
    assert not (out / "judge").exists()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(SystemExit, match="does not write \\(thesis.tex\\); nothing was deleted"):
        replicate.main(["--smoke", "--output_dir", str(out), "--overwrite_output_dir", "true"])
    seeds = tmp_path / "seeds"
    (seeds / "seed_0").mkdir(parents=True)  # an earlier seed: --seeds reuses it when its settings agree
    with pytest.raises(Started):
        replicate.main(["--smoke", "--seeds", "0,1", "--output_dir", str(seeds)])
    (seeds / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty"):
        replicate.main(["--smoke", "--seeds", "0,1", "--output_dir", str(seeds)])

    spec = importlib.util.spec_from_file_location("a2d_experiment_locks", ROOT / "experiments" / "a2d_experiment.py")
    a2d = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = a2d
    spec.loader.exec_module(a2d)
    monkeypatch.setattr(a2d, "configure_run", started)
    earlier = tmp_path / "a2d"
    (earlier / "scratch_long").mkdir(parents=True)
    with pytest.raises(SystemExit, match="is not empty"):
        a2d.main(["--smoke", "--output_dir", str(earlier)])
    with pytest.raises(Started):
        a2d.main(["--smoke", "--output_dir", str(earlier), "--overwrite_output_dir"])


def test_block_diffusion_replication_and_block_study(tmp_path, capsys):
    """`replicate.py --block_size` trains and samples block models (its settings say so), and block_study.py judges
    them against the bidirectional run of the same seed with the one judge both runs trained."""
    runs = {}
    for name, extra in (("blocks", ["--block_size", "4"]), ("bidirectional", [])):
        runs[name] = tmp_path / name
        _script().main(["--smoke", "--seeds", "0", "--output_dir", str(runs[name]), "--threads", "1", *extra])
    results = json.loads((runs["blocks"] / "seed_0" / "results.json").read_text())
    assert results["settings"]["block_size"] == 4 and "block_size" not in json.loads(
        (runs["bidirectional"] / "seed_0" / "results.json").read_text())["settings"]
    generation = results["models"]["ce+slack_ctc"]["samplers"]["ancestral"]["generation_kwargs"]
    assert (generation["block_length"], generation["block_alignment"]) == (4, "absolute")
    study = _load("block_study", ROOT / "experiments" / "block_study.py")
    capsys.readouterr()
    study.main(["--blocks", str(runs["blocks"]), "--bidirectional", str(runs["bidirectional"]), "--num_bootstrap", "50",
                "--output", str(tmp_path / "study.md")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`ce`", "`ce+slack_ctc`"]
    assert "Blocks of 4 against the bidirectional model" in (tmp_path / "study.md").read_text()
    assert (tmp_path / "study.md").read_text().startswith("Commit ")
    assert "command: `python experiments/block_study.py --blocks " in (tmp_path / "study.md").read_text()
    with pytest.raises(SystemExit, match="holds no seed_\\*/results.json"):
        study.main(["--blocks", str(tmp_path), "--bidirectional", str(runs["bidirectional"])])
    other = tmp_path / "other" / "seed_5"
    other.mkdir(parents=True)
    (other / "results.json").write_text(json.dumps({"settings": {"seed": 5}, "models": {}}))
    with pytest.raises(SystemExit, match="the two runs share no seed"):
        study.main(["--blocks", str(other.parent), "--bidirectional", str(runs["bidirectional"])])
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["bidirectional"] / "seed_0", copy / "seed_0")
    results_file = copy / "seed_0" / "results.json"
    results = json.loads(results_file.read_text())
    results["models"]["ce"]["samplers"]["ancestral"]["prompts"][0] += " (another prompt)"
    results_file.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="seed 0: the two runs sampled different prompts"):
        study.main(["--blocks", str(runs["blocks"]), "--bidirectional", str(copy)])
    from hf_mdlm.evaluation import load_judge

    judge, _ = load_judge(copy / "seed_0" / "judge")
    with torch.no_grad():
        next(judge.parameters()).add_(1.0)
    judge.save_pretrained(copy / "seed_0" / "judge")
    with pytest.raises(SystemExit, match="the judges of .* differ: the runs did not train the same judge"):
        study.main(["--blocks", str(runs["blocks"]), "--bidirectional", str(copy)])


# ----------------------------------------------------------------------------- provenance of results files

COMMIT = re.compile(r"\bcommit\s+`?[0-9a-f]{7,40}\b", re.IGNORECASE)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "results").glob("*.md"))
                         + sorted((ROOT / "bench" / "results").glob("*.md")), ids=lambda p: p.name)
def test_every_results_file_names_its_commit_and_command(path):
    """The project's rule: every results file names the commit and the command that wrote it."""
    text = path.read_text()
    assert COMMIT.search(text), f"{path.name} names no commit (`Commit <7+ hex digits>`)"
    # a command: a python script, or (bench/device_check.sh, which runs several) the shell script
    assert any("python " in line or "bash bench/" in line for line in text.splitlines()), \
        f"{path.name} names no command"


def _git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True)


def test_provenance_line_names_commit_command_and_uncommitted_changes(tmp_path, monkeypatch):
    from replication.provenance import command_of, commit_of, provenance_line, stamp

    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    script = repo / "tools" / "study.py"
    script.write_text("print('hi')\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "tools/study.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", "commit", "-q",
         "-m", "first")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)  # the path shown is relative to the work tree's root, wherever the run starts
    argv = ["--output", "out dir/r.md", "--judges", "a=b"]
    assert commit_of(script) == head and re.fullmatch(r"[0-9a-f]{7,}", head)
    assert command_of(script, argv) == "python tools/study.py --output 'out dir/r.md' --judges a=b"
    assert provenance_line(script, argv) == f"Commit {head}; command: `python tools/study.py --output 'out dir/r.md' " \
                                            "--judges a=b`"
    (repo / "notes.txt").write_text("untracked files do not count")
    assert commit_of(script) == head
    script.write_text("print('changed')\n")  # a tracked file changed: flagged
    assert provenance_line(script, []) == f"Commit {head} with uncommitted changes; command: `python tools/study.py`"
    monkeypatch.setattr(sys, "argv", ["tools/study.py", "--seed", "3"])  # default: this process's arguments
    assert command_of(script) == "python tools/study.py --seed 3"

    outside = tmp_path / "plain"  # no git here (tmp_path is outside any work tree)
    outside.mkdir()
    (outside / "s.py").write_text("")
    monkeypatch.chdir(outside)
    assert commit_of(outside / "s.py") == "unknown" and command_of(outside / "s.py", ["-x"]) == "python s.py -x"
    report = outside / "results.md"
    report.write_text("## Table\n")
    stamp(report, provenance_line(outside / "s.py", ["--quick"]))
    assert report.read_text() == "Commit unknown; command: `python s.py --quick`.\n\n## Table\n"
