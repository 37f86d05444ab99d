"""What every converter shares: reading the source config, checking the tensors against the target model, streaming
the shards one at a time into the new folder, and writing config, generation config, code and tokenizer files.

A family module gives three things: its config mapped to an `MDLMConfig`, a key renamer (None drops a tensor the
model recomputes, such as rotary frequency buffers; a dict {new key: row slice} splits a fused tensor, such as a
fused query/key/value projection) and the family's sampling defaults.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..configuration_mdlm import MDLMConfig, check_token_id
from ..generation_mdlm import MDLMGenerationConfig
from ..hub.files import TOKENIZER_FILES, copy_hub_code

logger = logging.getLogger(__name__)

KeyRenamer = Callable[[str], "str | dict[str, slice] | None"]


def _renamed(rename: KeyRenamer, key: str) -> dict:
    """{new key: rows taken (None: all)} of a source tensor."""
    new = rename(key)
    if new is None:
        return {}
    return dict(new) if isinstance(new, dict) else {new: None}


def read_source_config(src: Path, family: str) -> dict:
    path = Path(src) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {src} a {family} checkpoint folder?")
    return json.loads(path.read_text())


def source_shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [src / name for name in sorted(set(weight_map.values()))]
    single = src / "model.safetensors"
    if single.exists():
        return [single]
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no safetensors weights in {src} (checkpoints in .bin are not supported)")
    return shards


def expected_keys(config: MDLMConfig) -> set[str]:
    """The tensors an `MDLMForMaskedLM` of `config` loads (built on the meta device: no memory, no time)."""
    from ..modeling_mdlm import MDLMForMaskedLM

    with torch.device("meta"):
        model = MDLMForMaskedLM(config)
    keys = set(model.state_dict())
    if config.tie_word_embeddings:
        keys.discard("lm_head.weight")
    return keys


def check_source_keys(shards, config: MDLMConfig, rename: KeyRenamer, family: str, described: str) -> None:
    """Every tensor the model needs is in the checkpoint and every tensor of the checkpoint is used (read from the
    safetensors headers, no tensor loaded): a checkpoint with more layers than its config, or with biases the
    config does not have, is not the model the config describes."""
    seen = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as reader:
            for key in reader.keys():
                for new_key in _renamed(rename, key):
                    seen[new_key] = key
    expected = expected_keys(config)
    missing = sorted(expected - set(seen))
    if missing:
        raise ValueError(f"the {family} checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    extra = sorted(seen[key] for key in set(seen) - expected)
    if extra:
        shown = ", ".join(extra[:8]) + (f", ... ({len(extra)} in all)" if len(extra) > 8 else "")
        raise ValueError(
            f"the {family} checkpoint has {len(extra)} tensor(s) its config does not describe ({described}): "
            f"{shown}. Fix config.json or the checkpoint; converting would drop them"
        )


def write_converted(src, dst, config: MDLMConfig, rename: KeyRenamer, generation: MDLMGenerationConfig,
                    family: str, described: str, dtype=None, transform=None, tokenizer=None) -> MDLMConfig:
    """Stream `src`'s shards through `rename` (and `transform(new_key, tensor)`, when given) into `dst`, one shard in
    memory at a time, then write the config, the generation config, the Hub code and the tokenizer (`tokenizer`
    saved, or the source's tokenizer files copied). Nothing is written before the checks pass."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("dst_dir must differ from src_dir: the conversion never overwrites the source")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    shards = source_shards(src)
    check_source_keys(shards, config, rename, family, described)
    dst.mkdir(parents=True, exist_ok=True)

    weight_map, total_size = {}, 0
    names = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for shard, out_name in zip(shards, names):
        tensors = {}
        with safe_open(str(shard), framework="pt") as reader:
            for key in reader.keys():
                parts = _renamed(rename, key)
                whole = reader.get_tensor(key) if parts else None
                for new_key, rows in parts.items():
                    tensor = whole if rows is None else whole[rows].clone()
                    if transform is not None:
                        tensor = transform(new_key, tensor)
                    tensors[new_key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        save_file(tensors, str(dst / out_name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = out_name
            total_size += tensor.numel() * tensor.element_size()
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    config.architectures = ["MDLMForMaskedLM"]
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(dst)
    generation.save_pretrained(dst)
    copy_hub_code(dst)
    if tokenizer is not None:
        tokenizer.save_pretrained(dst)
    else:
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copyfile(src / name, dst / name)
        _standard_tokenizer_class(dst)
    logger.info("converted the %s checkpoint %s into %s", family, src, dst)
    return config


def _standard_tokenizer_class(folder: Path) -> None:
    """A tokenizer that names its own code (`auto_map`, e.g. Dream's tokenization_dream.py) gets a transformers class
    that reads the same files instead: the converted folder never needs the source's code (which is not copied and
    would only run with trust_remote_code). tokenizer.json: the generic fast tokenizer; vocab.json + merges.txt (a
    byte-level BPE, as Dream's, built on Qwen2's): Qwen2's."""
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if not settings.get("auto_map"):
        return
    if (folder / "tokenizer.json").exists():
        standard = "PreTrainedTokenizerFast"
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        standard = "Qwen2Tokenizer"
    else:
        logger.warning("%s names tokenizer code (%s) that the converted folder does not carry, and no standard "
                       "tokenizer files: pass --tokenizer_name when training", path, settings["auto_map"])
        return
    logger.info("the source tokenizer names its own code (%s): the converted folder uses %s on the same files",
                settings.pop("auto_map"), standard)
    settings["tokenizer_class"] = standard
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def refuse(family: str, source: dict, field: str, allowed) -> None:
    """Refuse a config value the architecture cannot represent, naming the field."""
    if field in source and source[field] not in allowed:
        raise ValueError(f"{family} config field {field!r}={source[field]!r} cannot be represented by MDLMConfig "
                         f"(supported: {' or '.join(map(repr, allowed))})")


def source_mask_token_id(family: str, source: dict, released_id: int, mask_token_id: int | None = None,
                         src=None) -> int:
    """The [MASK] id of a family whose released config.json names none (LLaDA-MoE, LLaDA2): `mask_token_id` when
    given, else config.json's "mask_token_id", else the mask token of `src`'s tokenizer files, else the released
    models' id when this vocabulary holds it. A smaller checkpoint (a fixture, a pruned model) converted on the fly,
    where no argument can be passed, thus takes its [MASK] from its own folder."""
    vocab = source["vocab_size"]
    found = {"the mask_token_id argument": mask_token_id, "config.json's mask_token_id": source.get("mask_token_id")}
    if src is not None and mask_token_id is None and source.get("mask_token_id") is None:
        found.update(tokenizer_mask_token_id(Path(src)) or {})
    for where, token_id in found.items():
        if token_id is not None:
            if where != "the mask_token_id argument":
                logger.info("%s's [MASK] id is %s, from %s", family, token_id, where)
            return check_token_id("id", token_id, vocab, owner=f"{family}'s [MASK] from {where}: ")
    if vocab <= released_id:
        raise ValueError(f"{family}'s config names no mask token and the released models' ({released_id}) is outside "
                         f"this vocabulary of {vocab}: pass mask_token_id (also read: a \"mask_token_id\" in "
                         "config.json, the mask token of the folder's tokenizer)")
    return released_id


def tokenizer_mask_token_id(src: Path) -> dict | None:
    """{where: id} of the mask token a folder's tokenizer names ("mask_token" in tokenizer_config.json or
    special_tokens_map.json), its id looked up in the tokenizer's JSON files: no code of the folder runs (a
    tokenizer may name its own). None when no mask token is named, or (a warning) when no JSON file gives its id,
    e.g. a sentencepiece-only tokenizer."""
    def read(name):
        path = src / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    settings = read("tokenizer_config.json")
    where, token = "tokenizer_config.json", settings.get("mask_token")
    if not token:
        where, token = "special_tokens_map.json", read("special_tokens_map.json").get("mask_token")
    if not token:
        return None
    token = token["content"] if isinstance(token, dict) else token  # an AddedToken, saved as a dict
    ids = {entry["content"]: int(index) for index, entry in (settings.get("added_tokens_decoder") or {}).items()}
    backend = read("tokenizer.json")
    vocab = (backend.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [piece, score] pairs, the id is the position
        vocab = {entry[0]: index for index, entry in enumerate(vocab)}
    for table in ({entry["content"]: entry["id"] for entry in backend.get("added_tokens") or []}, vocab,
                  read("added_tokens.json"), read("vocab.json")):
        if token in table:
            ids.setdefault(token, table[token])
    if token not in ids:
        logger.warning("%s names the mask token %r, which none of its tokenizer's JSON files gives an id: not used",
                       src / where, token)
        return None
    return {f"the tokenizer's mask token {token!r} ({where})": ids[token]}


def llada_generation_config(config: MDLMConfig) -> MDLMGenerationConfig:
    """LLaDA's usual sampling settings (blocks of 32, one token per step, greedy, low-confidence remasking), so that
    `model.generate(ids)` works out of the box for the families that sample like LLaDA."""
    return MDLMGenerationConfig(
        mask_token_id=config.mask_token_id, slack_token_id=config.slack_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_new_tokens=128, steps=128, block_length=32, temperature=0.0,
        remasking="low_confidence",
    )
