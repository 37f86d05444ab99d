"""hf_mdlm: masked diffusion language models (LLaDA, MDLM and kin) for the Hugging Face ecosystem.

The map (docs/architecture.md):
    configuration_mdlm.py, modeling_mdlm.py, generation_mdlm.py   the model and its sampler (ship to the Hub)
    tokenization.py   [MASK] and <slack>: the token strings, adding them, resolving the special ids
    data/             datasets in, prompt/response examples and batches out
    training/         the objective: arguments, canvas + noise, losses, the Trainer
    evaluation/       likelihood, judged samples, shift robustness, reports, the lm-eval adapter
    convert/          checkpoints of other families into hf_mdlm folders
    hub/              output folders, checks, model cards, upload
    loading.py        models for training and inference: from scratch, a folder, LoRA
    cli.py            command-line value parsers shared by the scripts

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
    "add_diffusion_tokens": "tokenization",
    "convert_llada_checkpoint": "convert.llada",
    "DataArguments": "data.arguments",
    "DiffusionCollator": "data.collator",
    "prepare_datasets": "data.loading",
    "build_canvases": "training.canvas",
    "NoiseSchedule": "training.canvas",
    "LinearSchedule": "training.canvas",
    "CosineSchedule": "training.canvas",
    "get_schedule": "training.canvas",
    "sample_times": "training.canvas",
    "low_discrepancy_times": "training.canvas",
    "mask_canvas": "training.canvas",
    "slack_ctc_loss": "training.losses",
    "masked_cross_entropy": "training.losses",
    "diffusion_loss": "training.losses",
    "DiffusionLoss": "training.losses",
    "MDLMTrainingArguments": "training.arguments",
    "MDLMTrainer": "training.trainer",
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
