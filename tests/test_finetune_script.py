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


def run_finetune_in_process(argv):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import finetune
    finally:
        sys.path.pop(0)
    return finetune.main(argv)


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
