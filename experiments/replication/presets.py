"""The replication's sizes and budgets: `full`, `quick` (CI) and `smoke` (tests), each value overridable."""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, fields

from hf_mdlm.cli import parse_bool, parse_rates
from hf_mdlm.evaluation.suite import parse_samplers


@dataclass
class ExperimentSizes:
    """What every experiment of this package sizes the same way: data windows, the GPT-2 judge, the MDLMs' shape,
    the diffusion batch and learning rate, and the evaluation."""

    # data
    canvas_length: int = 48
    text_prompt_length: int = 32
    text_response_length: int = 40
    max_train_samples: int | None = None
    # judge (GPT-2 architecture)
    judge_width: int = 192
    judge_layers: int = 4
    judge_heads: int = 4
    judge_steps: int = 1500
    judge_batch: int = 32
    judge_lr: float = 1e-3
    # MDLM (hf_mdlm.loading.model_from_scratch's architecture)
    width: int = 192
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    batch: int = 16
    lr: float = 2e-3
    # evaluation
    elbo_examples: int = 256
    elbo_samples: int = 8
    num_prompts: int = 128
    samplers: str = "ancestral,greedy"
    num_bootstrap: int = 2000
    eval_batch: int = 64


@dataclass
class Preset(ExperimentSizes):
    """The replication: a base MDLM trained `base_steps`, then each arm `arm_steps` from it."""

    base_steps: int = 1500
    arm_steps: int = 1000
    shift_rates: tuple = (0.0, 0.01, 0.05, 0.1, 0.2)

PRESETS = {
    "full": Preset(),
    "quick": Preset(max_train_samples=8000, judge_width=128, judge_layers=2, judge_steps=200, width=128, layers=2,
                    intermediate=384, base_steps=300, arm_steps=200, elbo_examples=64, elbo_samples=4,
                    num_prompts=32, shift_rates=(0.0, 0.05, 0.2), samplers="ancestral", num_bootstrap=1000,
                    eval_batch=32),
    "smoke": Preset(canvas_length=16, text_prompt_length=8, text_response_length=12, max_train_samples=64,
                    judge_width=32, judge_layers=1, judge_heads=2, judge_steps=4, judge_batch=8, width=32, layers=1,
                    heads=2, intermediate=64, base_steps=2, arm_steps=3, batch=4, elbo_examples=8, elbo_samples=2,
                    num_prompts=4, shift_rates=(0.0, 0.2), samplers="ancestral", num_bootstrap=50, eval_batch=8),
}

MODES = ("full", "quick", "smoke")


def resolve_preset(mode: str, overrides: dict | None = None, scale: int = 1) -> Preset:
    """The preset of `mode` with `overrides` (field name -> value; None keeps the preset's value) applied, then
    width, depth and batch of both models multiplied by `scale`."""
    if mode not in PRESETS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    preset = copy.deepcopy(PRESETS[mode])
    for f in fields(Preset):
        value = (overrides or {}).get(f.name)
        if value is not None:
            setattr(preset, f.name, tuple(value) if f.name == "shift_rates" else value)
    parse_samplers(preset.samplers)  # fail early on a bad --samplers
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    for name in ("judge_width", "judge_layers", "judge_heads", "width", "layers", "heads", "intermediate",
                 "batch", "judge_batch"):
        setattr(preset, name, getattr(preset, name) * scale)
    return preset


# How a preset field's annotation reads a command-line value.
_FLAG_TYPES = {"int": int, "int | None": int, "float": float, "str": str, "bool": parse_bool, "tuple": parse_rates}


def add_preset_arguments(parser, *presets, skip=()) -> None:
    """Every field of the preset dataclasses as a flag (`--arm_steps 300`, `--shift_rates 0,0.1`), default None
    (keep the preset's value); a field in several presets, or in `skip`, is added once or not at all."""
    seen = set(skip)
    for field in (f for preset in presets for f in fields(preset)):
        if field.name not in seen:
            seen.add(field.name)
            parser.add_argument(f"--{field.name}", type=_FLAG_TYPES[str(field.type)], default=None)
