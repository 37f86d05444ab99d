"""Fine-tune a masked diffusion LM with masked-diffusion CE + slack-CTC.

With no arguments it runs the bundled default: a small MDLM trained from scratch on the bundled
Shakespeare corpus for a few minutes on CPU, saved as a self-contained Hub folder (checked to load with
`trust_remote_code=True`), and sampled on held-out prompts where it trained.

    python examples/finetune.py                                   # the bundled default
    accelerate launch examples/finetune.py --model_name_or_path MODEL --dataset data.jsonl \\
        --output_dir out --ctc_weight 1.0 --lora_r 16              # your model, your data, LoRA

Every `TrainingArguments` field is a flag (`--learning_rate`, `--report_to wandb`, `--push_to_hub`, ...),
and so are the fields of `hf_mdlm.loading.ModelArguments` (`--trust_remote_code`, `--init_missing_weights`),
`hf_mdlm.data.DataArguments` and `MDLMTrainingArguments`. `--output_dir` must be new or empty unless
`--overwrite_output_dir` or `--resume_from_checkpoint true|PATH`; it is checked and locked before any work.
"""

import logging
import os
import sys

import torch
from transformers import HfArgumentParser, set_seed

from hf_mdlm import strip_generation
from hf_mdlm.cli import add_bool_flag, non_negative_int
from hf_mdlm.data import DataArguments, DiffusionCollator, prepare_datasets
from hf_mdlm.hub import (check_remote_code_loads, fit_generation_config, gathered_state_dict, prepare_run_outputs,
                         save_model_folder)
from hf_mdlm.hub.remote_code import load_model
from hf_mdlm.loading import ModelArguments, apply_lora, load_model_and_tokenizer, position_limit
from hf_mdlm.tokenization import diffusion_token_ids
from hf_mdlm.training.arguments import MDLMTrainingArguments
from hf_mdlm.training.trainer import MDLMTrainer, sharded

logger = logging.getLogger("finetune")

# The bundled default run: overridden by any flag given on the command line (later flags win).
BUNDLED_DEFAULTS = [
    "--output_dir", "outputs/shakespeare-mdlm", "--max_steps", "400", "--per_device_train_batch_size", "16",
    "--learning_rate", "2e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "20", "--weight_decay", "0.01",
    "--logging_steps", "25", "--eval_strategy", "steps", "--eval_steps", "200", "--per_device_eval_batch_size", "32",
    "--max_eval_samples", "128", "--save_strategy", "no", "--report_to", "none", "--canvas_length", "48",
    "--text_prompt_length", "32", "--text_response_length", "40", "--seed", "0",
]


def with_bundled_defaults(argv):
    """The bundled default run's flags before the user's, unless a model or a dataset is named (the exact flags:
    `--dataset_cache_dir` and the other `--dataset*` options keep the defaults)."""
    named = any(arg.split("=")[0] in ("--model_name_or_path", "--dataset") for arg in argv)
    return list(argv) if named else BUNDLED_DEFAULTS + list(argv)


def sample_held_out(model, eval_dataset, tokenizer, num_samples, seed, bf16=False):
    """Continuations of held-out prompts from the trained model, where it trained (its device; bf16 autocast when it
    trained so), at temperature 0.7: small models trained for minutes otherwise commit their most confident tokens
    (newlines, EOS) first."""
    model.eval()
    device = next(model.parameters()).device
    for index in range(min(num_samples, len(eval_dataset))):
        row = eval_dataset[index * max(1, len(eval_dataset) // num_samples)]
        prompt = torch.tensor([row["prompt_ids"]], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            canvas = model.generate(prompt, temperature=0.7, generator=seed + index)
        [completion] = strip_generation(
            canvas[:, prompt.shape[1]:], mask_token_id=model.config.mask_token_id,
            slack_token_id=model.config.slack_token_id, eos_token_id=model.config.eos_token_id,
        )
        print(f"\n--- prompt: {tokenizer.decode(row['prompt_ids'], skip_special_tokens=True)!r}")
        print(f"--- sample: {tokenizer.decode(completion, skip_special_tokens=True)!r}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, MDLMTrainingArguments))
    parser.add_argument("--num_samples", type=non_negative_int, default=3,
                        help="Held-out prompts sampled after training.")
    add_bool_flag(parser, "--overwrite_output_dir",
                        help="Delete an earlier run's files from --output_dir (and its -hub export) first.")
    model_args, data_args, training_args, extra = parser.parse_args_into_dataclasses(args=with_bundled_defaults(argv))
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    # Before any work: the output folders (writable, locked, empty unless resuming), the Hub token taken out of
    # the arguments Trainer sees (it would pickle it into training_args.bin), the checkpoint to resume from.
    inputs = {"--model_name_or_path": model_args.model_name_or_path, "--tokenizer_name": model_args.tokenizer_name,
              "--dataset": data_args.dataset, "--eval_split": data_args.eval_split}
    with prepare_run_outputs(training_args, overwrite=extra.overwrite_output_dir, inputs=inputs,
                             lora_r=model_args.lora_r) as outputs:
        return run(model_args, data_args, training_args, extra, outputs)


def run(model_args, data_args, training_args, extra, outputs):
    set_seed(training_args.seed)  # the same initial weights in every process and every run
    model, tokenizer = load_model_and_tokenizer(model_args, training_args.output_dir)
    train_dataset, eval_dataset = prepare_datasets(data_args, tokenizer, max_length=position_limit(model))
    if training_args.eval_strategy != "no" and eval_dataset is None:
        raise ValueError("--eval_strategy needs held-out data: pass --eval_split or --eval_fraction")
    # The pad id only right-pads batches (masked out by attention): the tokenizer's, else the config's, else EOS.
    pad_id = diffusion_token_ids(tokenizer, model.config, need_slack=False, need_pad=False)[3]
    if tokenizer.pad_token_id is None:
        source = "the model config's pad_token_id" if getattr(model.config, "pad_token_id", None) == pad_id else "EOS"
        logger.info("the tokenizer has no pad token: batches are padded with id %d (%s)", pad_id, source)
    fit_generation_config(model, training_args, data_args.canvas_length)  # checkpoints sample as the final model
    if model_args.lora_r > 0:
        model = apply_lora(model, model_args)

    trainer = MDLMTrainer(
        model=model, args=training_args, processing_class=tokenizer,
        data_collator=DiffusionCollator(pad_token_id=pad_id, canvas_length=data_args.canvas_length),
        train_dataset=train_dataset, eval_dataset=eval_dataset,
    )
    if model_args.lora_r > 0 and sharded(trainer):  # before any work: the adapter could not be saved
        raise ValueError("LoRA with sharded weights (FSDP, ZeRO-3) is not supported: the adapter fits on every GPU, "
                         "so train it with data parallelism (examples/configs/ddp.yaml)")
    trainer.train(resume_from_checkpoint=outputs.resume)
    logger.info("trained with %d process(es)", training_args.world_size)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses and trainer.is_world_process_zero():
        print(f"training loss: first logged {losses[0]:.4f}, last logged {losses[-1]:.4f}")
    # sharded weights (FSDP, ZeRO-3) are gathered by every process; the main process writes the folder
    state_dict = gathered_state_dict(trainer.model_wrapped, trainer.accelerator)
    if trainer.is_world_process_zero():
        saved = save_model_folder(trainer, tokenizer, training_args.output_dir, data_args, lora=model_args.lora_r > 0,
                                  state_dict=state_dict)
        check_remote_code_loads(training_args.output_dir)  # as Hub users load it: config and code, not the weights
        print(f"saved a self-contained model folder to {os.path.abspath(training_args.output_dir)}")
        if extra.num_samples == 0 or eval_dataset is None:
            print("no samples drawn (--num_samples 0 or no held-out data)")
        else:  # a sharded model (FSDP, ZeRO) is whole only in the saved folder: load it where it trained
            model = load_model(training_args.output_dir, dtype="auto",
                               device_map=str(training_args.device)) if state_dict is not None else saved
            sample_held_out(model, eval_dataset, tokenizer, extra.num_samples, training_args.seed,
                            bf16=training_args.bf16)
        outputs.publish(training_args.output_dir)  # with --push_to_hub: our checked export, the only upload
    return trainer


if __name__ == "__main__":
    main()
