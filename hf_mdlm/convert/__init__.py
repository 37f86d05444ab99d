"""Checkpoints of other families into hf_mdlm folders, one module per family.

    python -m hf_mdlm.convert {llada,llada-moe,dream,llada2,sdar,a2d} SRC_DIR DST_DIR [--dtype bfloat16]

`detect_family(config_dict)` names a folder's family; `convert_checkpoint(src, dst)` detects and converts. Tensors
are streamed one source shard at a time, so an 8B checkpoint needs about one shard of RAM, not twice the model.
"""

from ..hub.files import HUB_CODE_FILES, TOKENIZER_FILES, copy_hub_code
from .a2d import a2d_config_to_mdlm, convert_a2d_checkpoint, is_a2d_config
from .cli import main
from .dream import convert_dream_checkpoint, dream_config_to_mdlm, is_dream_config
from .families import (
    FAMILIES,
    convert_checkpoint,
    detect_family,
    folder_family,
    native_folder,
)
from .llada import (
    convert_llada_checkpoint,
    is_llada_config,
    llada_config_to_mdlm,
    llada_key_to_mdlm,
)
from .llada2 import convert_llada2_checkpoint, is_llada2_config, llada2_config_to_mdlm
from .llada_moe import (
    convert_llada_moe_checkpoint,
    is_llada_moe_config,
    llada_moe_config_to_mdlm,
)
from .sdar import convert_sdar_checkpoint, is_sdar_config, sdar_config_to_mdlm

__all__ = [
    "FAMILIES",
    "HUB_CODE_FILES",
    "TOKENIZER_FILES",
    "a2d_config_to_mdlm",
    "convert_a2d_checkpoint",
    "convert_checkpoint",
    "convert_dream_checkpoint",
    "convert_llada_checkpoint",
    "convert_llada2_checkpoint",
    "convert_sdar_checkpoint",
    "is_llada2_config",
    "is_sdar_config",
    "llada2_config_to_mdlm",
    "sdar_config_to_mdlm",
    "convert_llada_moe_checkpoint",
    "copy_hub_code",
    "detect_family",
    "dream_config_to_mdlm",
    "folder_family",
    "is_a2d_config",
    "is_dream_config",
    "is_llada_config",
    "is_llada_moe_config",
    "llada_config_to_mdlm",
    "llada_key_to_mdlm",
    "llada_moe_config_to_mdlm",
    "main",
    "native_folder",
]
