"""Test helpers: the scripts of examples/ loaded as modules, and the flags of a tiny examples/finetune.py run."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the flags of a tiny, quick examples/finetune.py run (each test adds --output_dir, and --max_steps where it trains)
TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "2",
        "--logging_steps", "1", "--max_train_samples", "32", "--eval_strategy", "no", "--learning_rate", "0.01",
        "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--num_samples", "0",
        "--per_device_train_batch_size", "4", "--canvas_length", "16", "--text_response_length", "12"]


def example(name):
    """An example script as a module (a fresh module at each call)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_two_processes(script, flags, cwd):
    """Run examples/<script>.py as two CPU processes under `accelerate launch` (DDP over gloo); returns the finished
    process (its returncode and output)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "examples" / f"{script}.py"), *flags, "--use_cpu", "true"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
