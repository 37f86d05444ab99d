"""Dream checkpoints (Dream-org/Dream-v0-Base-7B / -Instruct-7B format: a Qwen2 decoder run bidirectionally, the
token at position i predicted at position i - 1) into hf_mdlm folders.

The names of Dream's tensors are ours. The converted folder samples with Dream's own schedule (`schedule="dream"`
in its generation config: one block, its timestep-based number of commits per step, confidences from the top-k/top-p
filtered distribution) and its next-token alignment (`prediction_alignment="next_token"` in the model config).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..configuration_mdlm import MDLMConfig
from ..generation_mdlm import MDLMGenerationConfig
from .common import read_source_config, refuse, write_converted


def is_dream_config(config: dict) -> bool:
    return str(config.get("model_type", "")).lower() == "dream"


def dream_config_to_mdlm(source: dict) -> MDLMConfig:
    refuse("Dream", source, "rope_scaling", (None,))
    refuse("Dream", source, "use_sliding_window", (False,))
    refuse("Dream", source, "hidden_act", ("silu",))
    if source.get("mask_token_id") is None:
        raise ValueError("Dream config has no mask_token_id: is this a Dream checkpoint?")
    return MDLMConfig(
        vocab_size=source["vocab_size"], hidden_size=source["hidden_size"],
        intermediate_size=source["intermediate_size"], num_hidden_layers=source["num_hidden_layers"],
        num_attention_heads=source["num_attention_heads"], num_key_value_heads=source.get("num_key_value_heads"),
        max_position_embeddings=source["max_position_embeddings"], rope_theta=source.get("rope_theta", 10000.0),
        rms_norm_eps=source.get("rms_norm_eps", 1e-6), attention_bias=True,
        attention_dropout=source.get("attention_dropout", 0.0), initializer_range=source.get("initializer_range", 0.02),
        tie_word_embeddings=bool(source.get("tie_word_embeddings", False)), prediction_alignment="next_token",
        mask_token_id=source["mask_token_id"], eos_token_id=source.get("eos_token_id"),
        pad_token_id=source.get("pad_token_id"), bos_token_id=source.get("bos_token_id"),
    )


def dream_key_to_mdlm(key: str) -> str | None:
    return None if key.endswith("rotary_emb.inv_freq") else key


def convert_dream_checkpoint(src_dir, dst_dir, dtype: str | torch.dtype | None = None) -> MDLMConfig:
    """Convert a Dream folder; its generation config carries Dream's schedule and sampling defaults."""
    config = dream_config_to_mdlm(read_source_config(Path(src_dir), "Dream"))
    # Dream-v0-Instruct-7B's suggested settings: entropy ordering, temperature 0.2, top_p 0.95.
    generation = MDLMGenerationConfig(
        mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_new_tokens=256, steps=256, schedule="dream", schedule_eps=1e-3, temperature=0.2, top_p=0.95,
        remasking="entropy",
    )
    described = f"num_hidden_layers={config.num_hidden_layers}, tie_word_embeddings={config.tie_word_embeddings}"
    return write_converted(src_dir, dst_dir, config, dream_key_to_mdlm, generation, "Dream", described, dtype)
