"""`experiments/a2d_experiment.py --smoke` in-process: a causal Llama trained here, its A2D conversion fine-tuned with
CE + slack-CTC, the same MDLM from scratch; the results' keys, and the A2D arm starts from the causal LM's weights."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


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


def test_train_judge_refuses_an_unknown_architecture():
    from transformers import AutoTokenizer

    from hf_mdlm.data import bundled_corpus_files
    from hf_mdlm.evaluation import train_judge

    tokenizer = AutoTokenizer.from_pretrained(bundled_corpus_files()["tokenizer"])
    rows = {"prompt_ids": [[1, 5, 6]], "response_ids": [[7, 2]]}
    with pytest.raises(ValueError, match="unknown architecture 'bert'"):
        train_judge(rows, tokenizer, width=8, layers=1, heads=2, steps=1, batch=1, lr=1e-3, seed=0,
                    architecture="bert")
    model, losses = train_judge(rows, tokenizer, width=8, layers=1, heads=2, steps=2, batch=1, lr=1e-3, seed=0,
                                architecture="llama", keep_eos=True)
    assert type(model).__name__ == "LlamaForCausalLM" and len(losses) == 2 and model.config.intermediate_size == 32
