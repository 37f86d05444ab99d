"""Checkpoints of other families into hf_mdlm folders, one module per family.

    python -m hf_mdlm.convert llada SRC_DIR DST_DIR [--dtype bfloat16]

Tensors are streamed one source shard at a time, so an 8B checkpoint needs about one shard of RAM,
not twice the model.
"""

from ..hub.files import HUB_CODE_FILES, TOKENIZER_FILES, copy_hub_code
from .cli import main
from .llada import (
    convert_llada_checkpoint,
    is_llada_config,
    llada_config_to_mdlm,
    llada_key_to_mdlm,
)

__all__ = [
    "HUB_CODE_FILES",
    "TOKENIZER_FILES",
    "convert_llada_checkpoint",
    "copy_hub_code",
    "is_llada_config",
    "llada_config_to_mdlm",
    "llada_key_to_mdlm",
    "main",
]
