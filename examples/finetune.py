"""Fine-tune a masked diffusion LM with masked-diffusion CE + slack-CTC.

With no arguments it runs the bundled default: a small MDLM trained from scratch on the bundled
Shakespeare corpus for a few minutes on CPU, saved as a self-contained Hub folder, reloaded with
`AutoModel.from_pretrained(..., trust_remote_code=True)`, and sampled on held-out prompts.

    python examples/finetune.py                                   # the bundled default
    accelerate launch examples/finetune.py --model_name_or_path MODEL --dataset data.jsonl \\
        --output_dir out --ctc_weight 1.0 --lora_r 16              # your model, your data, LoRA

Every `TrainingArguments` field is a flag (`--learning_rate`, `--report_to wandb`, `--push_to_hub`, ...),
and so are the fields of `ModelArguments`, `hf_mdlm.data.DataArguments` and `MDLMTrainingArguments`.
"""

import fnmatch
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, HfArgumentParser, set_seed

from hf_mdlm import MDLMConfig, MDLMForMaskedLM, MDLMGenerationConfig, convert_llada_checkpoint
from hf_mdlm.data import DataArguments, DiffusionCollator, bundled_corpus_files, prepare_datasets
from hf_mdlm.generation_mdlm import strip_generation
from hf_mdlm.hub import export_for_hub, push_to_hub, save_run_record
from hf_mdlm.tokenization import add_diffusion_tokens
from hf_mdlm.trainer import MDLMTrainer, MDLMTrainingArguments

logger = logging.getLogger("finetune")

# The bundled default run: overridden by any flag given on the command line (later flags win).
BUNDLED_DEFAULTS = [
    "--output_dir", "outputs/shakespeare-mdlm",
    "--max_steps", "400",
    "--per_device_train_batch_size", "16",
    "--learning_rate", "2e-3",
    "--lr_scheduler_type", "cosine",
    "--warmup_steps", "20",
    "--weight_decay", "0.01",
    "--logging_steps", "25",
    "--eval_strategy", "steps",
    "--eval_steps", "200",
    "--per_device_eval_batch_size", "32",
    "--max_eval_samples", "128",
    "--save_strategy", "no",
    "--report_to", "none",
    "--canvas_length", "48",
    "--text_prompt_length", "32",
    "--text_response_length", "40",
    "--seed", "0",
]


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An hf_mdlm folder or Hub id, a LLaDA checkpoint folder (converted on the fly), or any "
                          "masked LM (e.g. a BERT). Default: a small MDLM trained from scratch."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the model's, or the bundled one from scratch)."}
    )
    trust_remote_code: bool = field(default=True, metadata={"help": "Allow model code from the Hub folder."})
    dtype: str | None = field(default=None, metadata={"help": "Load the weights in this dtype, e.g. bfloat16."})
    # A model from scratch
    hidden_size: int = field(default=192, metadata={"help": "From scratch: width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "From scratch: number of blocks."})
    num_attention_heads: int = field(default=4, metadata={"help": "From scratch: attention heads."})
    intermediate_size: int = field(default=512, metadata={"help": "From scratch: SwiGLU width."})
    # LoRA
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "Comma-separated module name patterns (fnmatch on the full name or the last part); "
                          "each must match at least one module."},
    )
    num_samples: int = field(default=3, metadata={"help": "Held-out prompts sampled after training."})


def is_llada_folder(path) -> bool:
    config = Path(path) / "config.json"
    return config.exists() and "d_model" in json.loads(config.read_text()) and "block_type" in config.read_text()


def load_model_and_tokenizer(model_args, output_dir):
    """The model to train, with `[MASK]` and `<slack>` in its tokenizer and config."""
    dtype = getattr(torch, model_args.dtype) if model_args.dtype else None
    source = model_args.model_name_or_path
    if source is None:
        bundled = bundled_corpus_files()
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or bundled["tokenizer"])
        add_diffusion_tokens(tokenizer)
        config = MDLMConfig(
            vocab_size=len(tokenizer), hidden_size=model_args.hidden_size,
            intermediate_size=model_args.intermediate_size, num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=model_args.num_attention_heads, max_position_embeddings=1024,
            mask_token_id=tokenizer.mask_token_id, slack_token_id=tokenizer.convert_tokens_to_ids("<slack>"),
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        return MDLMForMaskedLM(config), tokenizer
    if is_llada_folder(source):
        converted = Path(output_dir) / "converted-llada"
        logger.info("converting the LLaDA checkpoint %s into %s", source, converted)
        convert_llada_checkpoint(source, converted, dtype=dtype)
        source = str(converted)
        if model_args.tokenizer_name is None and not (converted / "tokenizer_config.json").exists():
            raise ValueError(f"{model_args.model_name_or_path} has no tokenizer: pass --tokenizer_name")
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or source,
                                              trust_remote_code=model_args.trust_remote_code)
    config = AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    if config.model_type == "mdlm":  # ours: load with the installed classes, whatever code the folder carries
        model = MDLMForMaskedLM.from_pretrained(source, dtype=dtype)
    else:
        model = AutoModelForMaskedLM.from_pretrained(source, dtype=dtype,
                                                     trust_remote_code=model_args.trust_remote_code)
    add_diffusion_tokens(tokenizer, model)
    return model, tokenizer


def apply_lora(model, model_args, tokenizer):
    """Wrap the model with LoRA; the new [MASK]/<slack> rows stay trainable through trainable_token_indices."""
    from peft import LoraConfig, get_peft_model

    patterns = [p.strip() for p in model_args.lora_target_modules.split(",") if p.strip()]
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n.rsplit(".", 1)[-1], p)
                                                for n in names)]
    if unmatched:
        examples = sorted({n.rsplit(".", 1)[-1] for n in names})[:12]
        raise ValueError(
            f"--lora_target_modules patterns {unmatched} match no Linear module of {type(model).__name__}; "
            f"its Linear layers are named like {examples}"
        )
    targets = [n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n.rsplit(".", 1)[-1], p)
                                       for p in patterns)]
    new_rows = sorted({model.config.mask_token_id, model.config.slack_token_id} - {None})
    embeddings = {_module_name(model, model.get_input_embeddings()): new_rows}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        embeddings[_module_name(model, output)] = new_rows
    lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=targets, trainable_token_indices=embeddings)
    model = get_peft_model(model, lora)
    model.print_trainable_parameters()
    return model


def _module_name(model, module):
    return next(name for name, m in model.named_modules() if m is module)


def save_for_hub(trainer, tokenizer, output_dir, data_args, lora):
    """Write a complete, self-contained Hub folder: config + auto_map, code, weights, tokenizer, generation config."""
    model = trainer.model
    if lora:
        model.save_pretrained(Path(output_dir) / "adapter")  # the adapter alone, with the new token rows
        model = model.merge_and_unload()
    model.generation_config = MDLMGenerationConfig(
        mask_token_id=model.config.mask_token_id, slack_token_id=model.config.slack_token_id,
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id,
        max_new_tokens=data_args.canvas_length, steps=data_args.canvas_length,
        block_length=8 if data_args.canvas_length % 8 == 0 else None,  # semi-autoregressive blocks
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))  # the loss curve, for model cards
    save_run_record(trainer.args, output_dir, data_args=data_args)  # world size, hardware, versions, data


def sample_held_out(output_dir, eval_dataset, tokenizer, num_samples, seed):
    """Reload the saved folder as a Hub user would and sample continuations of held-out prompts.

    The saved generation config's semi-autoregressive blocks, with temperature 0.7: small models trained for
    minutes otherwise commit their most confident tokens (newlines, EOS) first and stop early.
    """
    model = AutoModel.from_pretrained(output_dir, trust_remote_code=True).eval()
    for index in range(min(num_samples, len(eval_dataset))):
        row = eval_dataset[index * max(1, len(eval_dataset) // num_samples)]
        prompt = torch.tensor([row["prompt_ids"]])
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
    bundled_run = not any(a.startswith("--model_name_or_path") or a.startswith("--dataset") for a in argv)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        args=(BUNDLED_DEFAULTS if bundled_run else []) + argv
    )
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")

    set_seed(training_args.seed)  # the same initial weights in every process and every run
    model, tokenizer = load_model_and_tokenizer(model_args, training_args.output_dir)
    train_dataset, eval_dataset = prepare_datasets(data_args, tokenizer)
    if training_args.eval_strategy != "no" and eval_dataset is None:
        raise ValueError("--eval_strategy needs held-out data: pass --eval_split or --eval_fraction")
    if model_args.lora_r > 0:
        model = apply_lora(model, model_args, tokenizer)

    trainer = MDLMTrainer(
        model=model, args=training_args, processing_class=tokenizer,
        data_collator=DiffusionCollator(pad_token_id=tokenizer.pad_token_id, canvas_length=data_args.canvas_length),
        train_dataset=train_dataset, eval_dataset=eval_dataset,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    logger.info("trained with %d process(es)", training_args.world_size)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        print(f"training loss: first logged {losses[0]:.4f}, last logged {losses[-1]:.4f}")
    if trainer.is_world_process_zero():
        save_for_hub(trainer, tokenizer, training_args.output_dir, data_args, lora=model_args.lora_r > 0)
        print(f"saved a self-contained model folder to {os.path.abspath(training_args.output_dir)}")
        if eval_dataset is not None and model_args.num_samples > 0:
            sample_held_out(training_args.output_dir, eval_dataset, tokenizer, model_args.num_samples,
                            training_args.seed)
        if training_args.push_to_hub:
            push_folder(training_args)
    return trainer


def push_folder(training_args):
    """Export the saved folder with its model card, check it, and upload it in one commit."""
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    folder = export_for_hub(training_args.output_dir, None, f"{training_args.output_dir.rstrip('/')}-hub",
                            repo_id=repo_id)
    push_to_hub(folder, repo_id, private=training_args.hub_private_repo, token=training_args.hub_token)


if __name__ == "__main__":
    main()
