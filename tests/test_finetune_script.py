"""examples/finetune.py end to end: two real CPU processes (DDP) against one process, same data and seed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--max_steps", "3", "--logging_steps", "1", "--max_train_samples", "48",
        "--eval_strategy", "no", "--learning_rate", "0.01", "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm",
        "true"]


def finetune_script():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import finetune
    finally:
        sys.path.pop(0)
    return finetune


def run_finetune_in_process(argv):
    return finetune_script().main(argv)


def test_only_a_model_or_dataset_flag_drops_the_bundled_defaults():
    script = finetune_script()
    for argv in (["--dataset_cache_dir", "/tmp/c"], ["--dataset_config=x"], ["--max_steps", "3"]):
        assert script.with_bundled_defaults(argv)[: len(script.BUNDLED_DEFAULTS)] == script.BUNDLED_DEFAULTS
    for argv in (["--dataset", "d.jsonl"], ["--dataset=d.jsonl"], ["--model_name_or_path", "m"]):
        assert script.with_bundled_defaults(argv) == argv


def logged_losses(output_dir):
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    single = tmp_path / "single"
    run_finetune_in_process(TINY + ["--output_dir", str(single), "--per_device_train_batch_size", "4",
                                    "--num_samples", "0"])
    ddp = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "examples" / "finetune.py"), *TINY, "--output_dir", str(ddp),
         "--per_device_train_batch_size", "2", "--num_samples", "0", "--use_cpu", "true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single_losses, ddp_losses = logged_losses(single), logged_losses(ddp)
    assert len(ddp_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)


def test_bundled_default_path_saves_reloads_and_samples(tmp_path, capsys):
    """The no-argument job in miniature: train, save a Hub folder, reload with trust_remote_code, sample."""
    out = tmp_path / "bundled"
    run_finetune_in_process(TINY + ["--output_dir", str(out), "--num_samples", "1", "--canvas_length", "16",
                                    "--text_response_length", "12"])
    printed = capsys.readouterr().out
    assert "training loss: first logged" in printed and "--- sample:" in printed
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_mdlm.py", "generation_mdlm.py", "configuration_mdlm.py",
            "generation_config.json", "tokenizer.json", "trainer_state.json"} <= names
    # trained with <slack> (the default slack_prob): greedy decoding leaves it out by default
    assert json.loads((out / "generation_config.json").read_text())["suppress_slack"] is True


def test_lora_keeps_new_token_rows_trainable_and_saves_adapter(tmp_path):
    out = tmp_path / "lora"
    run_finetune_in_process(TINY + ["--output_dir", str(out), "--num_samples", "0", "--lora_r", "4",
                                    "--lora_target_modules", "q_proj,v_proj"])
    from safetensors import safe_open

    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        saved = list(f.keys())
    assert any("q_proj.lora_A" in n for n in saved) and any("v_proj.lora_B" in n for n in saved)
    assert not any("k_proj" in n or "base_layer" in n for n in saved)
    # the new [MASK]/<slack> rows of the embedding and of the untied LM head travel with the adapter
    assert any("trainable_tokens" in n and "embed_tokens" in n for n in saved)
    assert any("trainable_tokens" in n and "lm_head" in n for n in saved)
    assert (out / "model.safetensors").exists()  # the merged, self-contained model


def test_lora_pattern_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="query_key_value"):
        run_finetune_in_process(TINY + ["--output_dir", str(tmp_path), "--num_samples", "0", "--lora_r", "4",
                                        "--lora_target_modules", "q_proj,query_key_value"])
