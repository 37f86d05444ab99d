"""SDAR checkpoints (JetAstra/SDAR-*-Chat format, `model_type` "sdar") into hf_mdlm block-diffusion folders.

SDAR is a Qwen3 network trained for block diffusion: attention bidirectional inside blocks of `block_size` and
causal across them, position i predicting the token at i. Its names are Qwen3's, so the weights copy unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from ..generation_mdlm import MDLMGenerationConfig, block_sampling
from .a2d import a2d_config_to_mdlm
from .common import read_source_config, write_converted


def is_sdar_config(config: dict) -> bool:
    return config.get("model_type") == "sdar"


def sdar_config_to_mdlm(source: dict) -> MDLMConfig:
    for field in ("block_size", "mask_token_id"):
        if not isinstance(source.get(field), int):
            raise ValueError(f"SDAR config field {field!r}={source.get(field)!r}: an SDAR checkpoint names its "
                             "block size and [MASK] id in config.json")
    config = a2d_config_to_mdlm({**source, "model_type": "qwen3"}, source["vocab_size"], source["mask_token_id"],
                                None)
    config.prediction_alignment = "same_token"
    config.block_size = source["block_size"]
    config._check()
    return config


def sdar_generation_config(config: MDLMConfig) -> MDLMGenerationConfig:
    """SDAR's `generate.py` defaults: blocks of `block_size` aligned to absolute positions, as many steps, sampling
    at temperature 1, every token above confidence 0.85 (of the sampling distribution) committed at once."""
    return MDLMGenerationConfig(
        mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_new_tokens=128, **block_sampling(config.block_size), temperature=1.0, threshold=0.85,
        remasking="low_confidence",
    )


def convert_sdar_checkpoint(src_dir, dst_dir, dtype: str | torch.dtype | None = None) -> MDLMConfig:
    """Convert an SDAR folder into a block-diffusion hf_mdlm folder."""
    config = sdar_config_to_mdlm(read_source_config(Path(src_dir), "SDAR"))
    described = f"num_hidden_layers={config.num_hidden_layers}, tie_word_embeddings={config.tie_word_embeddings}"
    return write_converted(src_dir, dst_dir, config, lambda key: None if key.endswith("rotary_emb.inv_freq") else key,
                           sdar_generation_config(config), "SDAR", described, dtype)
