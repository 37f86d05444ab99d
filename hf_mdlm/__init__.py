"""hf_mdlm: masked diffusion language models (LLaDA, MDLM and kin) for the Hugging Face ecosystem.

Attributes are imported lazily, so `import hf_mdlm` stays cheap and has no side effects
(importing `transformers.Trainer` alone costs seconds).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MDLMConfig": "configuration_mdlm",
    "MDLMPreTrainedModel": "modeling_mdlm",
    "MDLMModel": "modeling_mdlm",
    "MDLMForMaskedLM": "modeling_mdlm",
    "MDLMGenerationConfig": "generation_mdlm",
    "MDLMGenerationMixin": "generation_mdlm",
    "MDLMGenerateOutput": "generation_mdlm",
    "strip_generation": "generation_mdlm",
    "convert_llada_checkpoint": "convert",
    "DataArguments": "data",
    "DiffusionCollator": "data",
    "build_canvases": "data",
    "prepare_datasets": "data",
    "add_diffusion_tokens": "tokenization",
    "MDLMTrainer": "trainer",
    "MDLMTrainingArguments": "trainer",
    "slack_ctc_loss": "losses",
    "masked_cross_entropy": "losses",
    "diffusion_loss": "losses",
    "DiffusionLoss": "losses",
    "NoiseSchedule": "noise",
    "LinearSchedule": "noise",
    "CosineSchedule": "noise",
    "get_schedule": "noise",
    "sample_times": "noise",
    "low_discrepancy_times": "noise",
    "mask_canvas": "noise",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_mdlm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
