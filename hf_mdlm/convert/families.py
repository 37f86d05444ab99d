"""Which family a checkpoint folder is, from its `config.json`, and the converter of each family."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..hub.checks import check_folder_files
from .a2d import convert_a2d_checkpoint, is_a2d_config
from .common import read_source_config
from .dream import convert_dream_checkpoint, is_dream_config
from .llada import convert_llada_checkpoint, is_llada_config
from .llada2 import convert_llada2_checkpoint, is_llada2_config
from .llada_moe import convert_llada_moe_checkpoint, is_llada_moe_config
from .sdar import convert_sdar_checkpoint, is_sdar_config

logger = logging.getLogger(__name__)

CONVERTERS = {
    "llada": convert_llada_checkpoint,
    "llada-moe": convert_llada_moe_checkpoint,
    "dream": convert_dream_checkpoint,
    "llada2": convert_llada2_checkpoint,
    "sdar": convert_sdar_checkpoint,
    "a2d": convert_a2d_checkpoint,
}
FAMILIES = ("mdlm", *CONVERTERS)


def detect_family(config: dict) -> str:
    """"mdlm" (already ours), "llada", "llada-moe", "dream", "llada2", "sdar" or "a2d" (a Llama/Mistral/Qwen2/Qwen3
    causal LM); an unknown config is an error listing them."""
    if config.get("model_type") == "mdlm":
        return "mdlm"
    if is_llada_config(config):
        return "llada"
    if is_llada_moe_config(config):
        return "llada-moe"
    if is_dream_config(config):
        return "dream"
    if is_llada2_config(config):
        return "llada2"
    if is_sdar_config(config):
        return "sdar"
    if is_a2d_config(config):
        return "a2d"
    raise ValueError(
        f"config.json with model_type={config.get('model_type')!r} and architectures={config.get('architectures')} "
        f"is not a family hf_mdlm converts; supported: {', '.join(FAMILIES)}"
    )


def folder_family(path) -> str:
    return detect_family(read_source_config(Path(path), "model"))


def convert_checkpoint(src_dir, dst_dir, family: str | None = None, **kwargs):
    """Convert `src_dir` (its family detected from config.json unless given) into an hf_mdlm folder."""
    family = family or folder_family(src_dir)
    if family not in CONVERTERS:
        raise ValueError(f"no conversion for family {family!r}; converters: {', '.join(CONVERTERS)}")
    return CONVERTERS[family](src_dir, dst_dir, **kwargs)


def _conversion_cache() -> Path:
    return Path(os.environ.get("HF_MDLM_CACHE") or Path.home() / ".cache" / "hf_mdlm") / "converted"


def _local_folder(source) -> Path | None:
    """`source` as a local folder: itself, or a Hub snapshot of its config, tokenizer and safetensors files (checked
    as a local folder is). None when it has no config.json (then the caller's loader reports it)."""
    if os.path.isdir(source):
        return Path(source) if (Path(source) / "config.json").exists() else None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                     "*.jinja", "*.tiktoken"]))
    except Exception:  # not a Hub id either: the caller's loader gives its own error
        return None
    check_folder_files(folder, name=source)  # e.g. an adapter repo, named as one
    return folder if (folder / "config.json").exists() else None


def native_folder(source, dtype=None) -> str:
    """An hf_mdlm folder for `source` (a local folder or a Hub id): `source` itself when it is ours (or no family
    we convert, e.g. a BERT, which the caller loads as it is), else its conversion, made once and kept in
    `$HF_MDLM_CACHE/converted` (default ~/.cache/hf_mdlm) under a key of the source's path, sizes and times and of the
    converters' code, so that the same checkpoint is converted once by the same code. A causal LM of a family no
    converter knows is an error (loaded as a masked LM it would lose its LM head). Converting reads config.json and
    the weights; no code of the folder runs.
    """
    check_folder_files(source)  # a corrupt file, an adapter or a mistyped path is named before anything
    folder = _local_folder(source)
    if folder is None:
        return str(source)
    config = json.loads((folder / "config.json").read_text())
    try:
        family = detect_family(config)
    except ValueError as error:
        if any(str(name).endswith("ForCausalLM") for name in config.get("architectures") or []):
            # loaded as it is, it would be a masked LM without its LM head (dropped as an unexpected weight)
            raise ValueError(f"{source}: {error}") from None
        return str(source)  # e.g. a BERT: the caller loads it as a masked LM
    if family == "mdlm":
        return str(folder) if not os.path.isdir(source) else str(source)
    stamp = [str(folder.resolve()), str(dtype), _converter_digest()] + [
        f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(folder.iterdir()) if p.is_file()]
    target = _conversion_cache() / f"{family}-{hashlib.sha256('|'.join(stamp).encode()).hexdigest()[:16]}"
    if family == "a2d":
        logger.warning("%s is a causal LM: its conversion attends both ways and reads position i as token i + 1, a "
                       "start for diffusion fine-tuning that samples poorly until fine-tuned (python -m "
                       "hf_mdlm.convert a2d SRC DST --block_size 1 gives the causal LM itself)", source)
    if (target / "config.json").exists():
        logger.info("using the conversion of %s (%s) in %s", source, family, target)
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One conversion per machine, whatever the launcher: the process that takes the lock converts, the others (the
    # other ranks of an `accelerate launch`) wait for it and reuse the result.
    with _conversion_lock(target):
        if (target / "config.json").exists():
            logger.info("another process converted %s; using %s", source, target)
            return str(target)
        if target.exists():  # not ours to trust: staged moves are whole, so this was made by hand or damaged
            logger.warning("removing the incomplete conversion %s", target)
            shutil.rmtree(target)
        logger.info("converting the %s checkpoint %s into %s (once: later runs reuse it)", family, source, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            convert_checkpoint(folder, staging, family, dtype=dtype)
            os.replace(staging, target)  # complete or absent: a killed conversion is never reused
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


@functools.lru_cache(maxsize=1)
def _converter_digest() -> str:
    """A digest of the converters' code: a conversion made by other code (an older, perhaps wrong, release) is not
    reused."""
    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.read_bytes())
    return code.hexdigest()[:16]


@contextlib.contextmanager
def _conversion_lock(target: Path):
    """An exclusive OS lock next to `target` (released when its process ends, so a killed conversion never blocks
    the next); a process that has to wait says so."""
    with open(target.parent / f"{target.name}.lock", "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows): no advisory locks; the staged move still keeps it whole
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process converting into %s", target)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
