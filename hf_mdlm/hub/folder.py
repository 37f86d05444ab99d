"""The output folder of a training run: a complete, self-contained model folder that loads anywhere."""

from __future__ import annotations

from ..generation_mdlm import MDLMGenerationConfig
from .outputs import publish_staged, staging_folder
from .records import save_run_record


def save_model_folder(trainer, tokenizer, output_dir, data_args, *, lora: bool = False) -> None:
    """Write the trained model as a Hub-ready folder: config with `auto_map`, code, weights, tokenizer, a generation
    config sized for the training canvas, the loss curve (`trainer_state.json`) and the run's records.

    With `lora`, the adapter alone (with its new token rows) is saved to `output_dir/adapter` and the folder itself
    holds the merged model.

    Everything is written into a hidden staging folder inside `output_dir` first and moved into place once complete
    (`config.json` last), so a run killed during the save leaves no half-written model that would still load.
    """
    staging = staging_folder(output_dir)
    model = trainer.model
    if lora:
        model.save_pretrained(staging / "adapter")
        model = model.merge_and_unload()
    canvas = data_args.canvas_length
    model.generation_config = MDLMGenerationConfig(
        mask_token_id=model.config.mask_token_id, slack_token_id=model.config.slack_token_id,
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id,
        max_new_tokens=canvas, steps=canvas,
        block_length=8 if canvas % 8 == 0 else None,  # semi-autoregressive blocks (docs/objective.md §6)
        # A model trained with <slack> in its canvases, decoded greedily, commits that predictable filler first and
        # returns almost nothing (experiments/eos_study.py, both corpora): its default decoding leaves <slack> out.
        suppress_slack=getattr(trainer.args, "canvas_holds_slack", False) and model.config.slack_token_id is not None,
    )
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    trainer.state.save_to_json(str(staging / "trainer_state.json"))  # the loss curve, for model cards
    save_run_record(trainer.args, staging, data_args=data_args)  # world size, hardware, versions, data
    publish_staged(staging, output_dir)
