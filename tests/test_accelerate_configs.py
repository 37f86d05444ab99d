"""The shipped accelerate configs parse with accelerate's own loader and ask for what their names say."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"


@pytest.mark.parametrize(
    "name, kind, check",
    [
        ("single_gpu.yaml", DistributedType.NO, lambda c: c.num_processes == 1),
        ("ddp.yaml", DistributedType.MULTI_GPU, lambda c: c.num_processes > 1),
        ("fsdp.yaml", DistributedType.FSDP,
         lambda c: c.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "MDLMDecoderLayer"),
        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED, lambda c: c.deepspeed_config["zero_stage"] == 2),
        ("deepspeed_zero3.yaml", DistributedType.DEEPSPEED, lambda c: c.deepspeed_config["zero_stage"] == 3),
    ],
)
def test_config_parses(name, kind, check):
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == kind
    assert config.mixed_precision == "bf16"
    assert check(config)


def test_fsdp_wraps_a_class_that_exists():
    from hf_mdlm import modeling_mdlm

    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert hasattr(modeling_mdlm, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])
