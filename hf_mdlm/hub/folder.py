"""The output folder of a training run: a complete, self-contained model folder that loads anywhere."""

from __future__ import annotations

import errno
import math
import shutil

from ..generation_mdlm import MDLMGenerationConfig
from .files import own_hub_code
from .outputs import OutputFolderError, publish_staged, staging_folder
from .records import save_run_record


def save_model_folder(trainer, tokenizer, output_dir, data_args, *, lora: bool = False, state_dict=None,
                      canvas_length: int | None = None, reinforcement: dict | None = None):
    """Write the trained model as a Hub-ready folder: config with `auto_map`, code, weights, tokenizer, a generation
    config sized for the training canvas, the loss curve (`trainer_state.json`) and the run's records.

    With `lora`, the adapter alone (with its new token rows) is saved to `output_dir/adapter` and the folder itself
    holds the merged model. Returns the model saved (the merged one under LoRA), still where it trained.

    `canvas_length` (default `data_args.canvas_length`) sizes the saved generation config; `reinforcement` (the
    facts of an RL run: method, estimator, rewards, starting model) goes into `run_info.json` for the model card.

    A model sharded over processes (FSDP, DeepSpeed ZeRO-3) is saved from `state_dict`, the whole weights that
    `gathered_state_dict` collected on this, the main, process: the same folder as a single process would write.

    Everything is written into a hidden staging folder inside `output_dir` first and moved into place once complete
    (`config.json` last), so a run killed during the save leaves no half-written model that would still load.
    """
    staging = staging_folder(output_dir)
    model = trainer.model if state_dict is None else _unsharded(trainer.model, state_dict)
    if lora:
        model.save_pretrained(staging / "adapter")
        model = model.merge_and_unload()
    fit_generation_config(model, trainer.args, canvas_length or data_args.canvas_length)
    if lora:  # the adapter's card applies these to its base: the run's sampling defaults, not the class's
        model.generation_config.save_pretrained(staging / "adapter")
    try:
        model.save_pretrained(staging)
        if getattr(model.config, "model_type", None) == "mdlm":  # the installed code, whatever the start model carried
            own_hub_code(staging)
        tokenizer.save_pretrained(staging)
        trainer.state.save_to_json(str(staging / "trainer_state.json"))  # the loss curve, for model cards
        save_run_record(trainer.args, staging, data_args=data_args,  # world size, hardware, versions, data
                        reinforcement=reinforcement)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        shutil.rmtree(staging, ignore_errors=True)  # give the space back; the folder's earlier files are untouched
        raise OutputFolderError(
            f"no space left to save the model: writing {error.filename2 or error.filename or staging} failed "
            f"({error.strerror}); {output_dir} keeps what it held before. Free space and save again") from error
    publish_staged(staging, output_dir)
    return model


def fit_generation_config(model, training_args, canvas_length: int) -> None:
    """Give `model` the sampling defaults of a model fine-tuned on `canvas_length` (`trained_generation_config`):
    before training, so that checkpoints carry the same as the final folder, and again at the save (a no-op then)."""
    model.generation_config = trained_generation_config(
        model.generation_config, model.config, canvas_length,
        # A model trained with <slack> in its canvases, decoded greedily, commits that predictable filler first and
        # returns almost nothing (experiments/eos_study.py, both corpora): its default decoding leaves <slack> out.
        # So does a model whose base did (trained so earlier, e.g. the SFT model a GRPO run starts from).
        suppress_slack=model.config.slack_token_id is not None and (
            getattr(training_args, "canvas_holds_slack", False)
            or bool(getattr(model.generation_config, "suppress_slack", False))),
    )


def trained_generation_config(base, config, canvas: int, *, suppress_slack: bool) -> MDLMGenerationConfig:
    """The sampling defaults of a fine-tuned model: the base model's (its family's schedule, remasking, top-p,
    block length...), resized to the training canvas, with the token ids of the trained config.

    The canvas becomes `max_new_tokens`; `steps` keeps the base's steps per token; a block length that does not
    divide the canvas becomes their greatest common divisor (semi-autoregressive decoding kept, blocks made to fit),
    except a block-diffusion model's (absolute alignment), which is its attention's.
    """
    # another masked LM (a BERT) has no diffusion sampling defaults: ours then start from the class defaults
    generation = MDLMGenerationConfig.from_dict(base.to_dict()) if isinstance(base, MDLMGenerationConfig) else \
        MDLMGenerationConfig()
    per_token = (generation.steps / generation.max_new_tokens) if generation.steps and generation.max_new_tokens else 1
    block = generation.block_length
    steps, block_length = max(1, round(canvas * per_token)), math.gcd(canvas, block) if block else None
    if generation.block_alignment == "absolute":  # the model's own blocks: kept, whatever the canvas
        steps, block_length = -(-canvas // block) * max(1, round(block * per_token)), block
    generation.update(
        mask_token_id=config.mask_token_id, slack_token_id=config.slack_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_new_tokens=canvas, steps=steps, block_length=block_length,
        suppress_slack=suppress_slack,
    )
    return generation


def check_remote_code_loads(folder) -> None:
    """Load `folder`'s config and model class as a Hub user does (`trust_remote_code=True`, from the folder's own
    code files), without reading the weights: an error here means the folder would not load on the Hub."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    get_class_from_dynamic_module(config.auto_map["AutoModel"], folder)


def gathered_state_dict(model, accelerator=None):
    """The whole model's weights on the main process when they are sharded over processes (None elsewhere gets an
    empty dict), or None when every process holds the whole model and it saves as it is. Every process must call
    it: the shards are gathered collectively.

    FSDP2 (`fully_shard`, DTensor parameters) is gathered by torch itself, under accelerate or not; FSDP1 and
    DeepSpeed by accelerate (ZeRO-3 gathers its 16-bit weights)."""
    import torch
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name: tensor.contiguous() for name, tensor in full.items() if isinstance(tensor, torch.Tensor)}
    if accelerator is not None and accelerator.distributed_type in ("FSDP", "DEEPSPEED"):
        return accelerator.get_state_dict(model)
    return None


def _unsharded(model, state_dict):
    """A plain model of `model`'s own class holding the gathered `state_dict`. FSDP2 turns the model into an
    instance of a class made on the fly, and saving that would ship torch's FSDP files as the model's code."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls(model.config)
    plain.load_state_dict(state_dict, assign=True, strict=False)
    plain.tie_weights()
    missing = [name for name, tensor in plain.state_dict().items() if tensor.is_meta]
    if missing:
        raise ValueError(f"the gathered weights lack {missing[:5]}: the sharded model was not gathered whole")
    plain.generation_config = model.generation_config
    return plain.eval()
