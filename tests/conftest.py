import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FIXTURES = Path(__file__).parent / "fixtures"
LLADA_TINY = FIXTURES / "llada-tiny"


def tiny_config(**overrides):
    from hf_mdlm import MDLMConfig

    values = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        mask_token_id=95,
        slack_token_id=94,
        eos_token_id=93,
        pad_token_id=92,
    )
    values.update(overrides)
    return MDLMConfig(**values)


@pytest.fixture
def tiny_model():
    from hf_mdlm import MDLMForMaskedLM

    torch.manual_seed(0)
    return MDLMForMaskedLM(tiny_config()).eval()


@pytest.fixture(scope="session")
def llada_converted(tmp_path_factory):
    """The LLaDA-tiny fixture converted once per test session into an hf_mdlm folder."""
    from hf_mdlm import convert_llada_checkpoint

    out = tmp_path_factory.mktemp("llada-converted")
    convert_llada_checkpoint(LLADA_TINY, out)
    return out
