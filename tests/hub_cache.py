"""Test helpers: lay a folder out as a Hub download and run code in a process that cannot import hf_mdlm."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def install_in_hf_cache(folder, repo_id, hf_home):
    """Copy `folder` to where `huggingface_hub` keeps a downloaded snapshot of model `repo_id`."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return repo_dir


def run_without_hf_mdlm(code, cwd, env=None, timeout=300):
    """Run `code` in a fresh interpreter where `import hf_mdlm` fails, offline; return its stdout."""
    prelude = "import sys\nsys.modules['hf_mdlm'] = None  # any import of the package now raises ImportError\n"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def last_json_line(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def first_python_block(readme):
    """The first ```python block of a model card: its usage snippet."""
    match = re.search(r"```python\n(.*?)```", Path(readme).read_text(), re.S)
    assert match, "the card has no ```python block"
    return match.group(1)
