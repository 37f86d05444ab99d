"""Reinforcement learning with verifiable rewards (GRPO on TRL) for a fine-tuned masked diffusion LM.

    pip install -e ".[rl]"
    python examples/sort_task.py --out_dir data/sort                          # a task with checkable answers
    python examples/finetune.py --dataset data/sort/sft.jsonl --output_dir outputs/sort-sft   # SFT first (docs/rl.md)
    accelerate launch examples/grpo.py --model_name_or_path outputs/sort-sft \\
        --dataset data/sort/prompts.jsonl --reward_funcs exact_answer,answer_format --output_dir outputs/sort-grpo

`--dataset` (a file, a saved dataset or a Hub dataset) has a `prompt` column and an `answer` column for the rewards
below. Every `GRPOConfig`/`TrainingArguments` field is a flag (`--num_generations`, `--beta`, `--report_to wandb`,
`--push_to_hub`, ...), and so are the fields of `MDLMGRPOConfig` (`--log_prob_estimator one_step|coupled`, `--prompt_mask_rate`), `hf_mdlm.loading.ModelArguments`
(`--lora_r`) and `--generation_kwargs '{"kv_cache": "dual", "threshold": 0.9}'` (the rollout sampler's settings).
The output folder follows finetune.py's rules: new or empty unless `--overwrite_output_dir` or
`--resume_from_checkpoint`, checked and locked before any work; its model card says it was trained with GRPO, from
which model and on which rewards.
"""

import dataclasses
import logging
import os
import re
import sys

from transformers import HfArgumentParser, set_seed

from hf_mdlm.cli import add_bool_flag
from hf_mdlm.data.loading import load_raw_datasets
from hf_mdlm.hub import check_remote_code_loads, gathered_state_dict, prepare_run_outputs, save_model_folder
from hf_mdlm.loading import ModelArguments, apply_lora, load_model_and_tokenizer

# Rewards for tasks with checkable answers, in TRL's interface: the decoded `completions` and every other column of
# the dataset by name (here `answer`), one float per completion. Examples: add your own here.
def exact_answer(completions, answer, **_):
    """1.0 when the completion, stripped of surrounding white space, is the `answer` column, else 0.0."""
    return [float(text.strip() == str(expected).strip()) for text, expected in zip(completions, answer)]


def answer_format(completions, answer, **_):
    """0.5 when the completion has the answer's shape (its length, digits where it has digits, letters where it has
    letters), else 0.0: a denser signal than `exact_answer` while a policy learns the task's form."""
    def shape(text):
        return re.sub(r"[a-zA-Z]", "a", re.sub(r"[0-9]", "0", text.strip()))

    return [0.5 * float(shape(text) == shape(str(expected))) for text, expected in zip(completions, answer)]


REWARD_FUNCTIONS = {function.__name__: function for function in (exact_answer, answer_format)}

# ModelArguments' flags but `--trust_remote_code`, which GRPOConfig has too: that one flag sets both
MODEL_FLAGS = dataclasses.make_dataclass(
    "ModelFlags", [(f.name, f.type, f) for f in dataclasses.fields(ModelArguments) if f.name != "trust_remote_code"])


@dataclasses.dataclass
class RewardArguments:
    r"""The prompts and the rewards.

    Parameters:
        dataset (`str`):
            The prompts (a file, a saved dataset or a Hub dataset): a `prompt` column, plus the columns the rewards
            read.
        reward_funcs (`str`, defaults to `"exact_answer"`):
            Comma-separated names of the reward functions above (weighted by `--reward_weights`).
        max_train_samples (`int`, *optional*):
            Use only the first this many prompts.
    """

    dataset: str = dataclasses.field(default=None, metadata={"help": "File of prompts (a `prompt` column and the rewards' "
                                                          "columns)."})
    reward_funcs: str = dataclasses.field(default="exact_answer", metadata={
        "help": f"Comma-separated reward functions of this script: {', '.join(REWARD_FUNCTIONS)}."})
    max_train_samples: int = dataclasses.field(default=None, metadata={"help": "Use only the first this many prompts."})


def reward_functions(names: str):
    """The reward functions named in `--reward_funcs`, or an error listing the known ones."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in REWARD_FUNCTIONS]
    if unknown or not chosen:
        raise ValueError(f"--reward_funcs {names!r}: unknown {unknown or 'empty'}; known: {', '.join(REWARD_FUNCTIONS)}")
    return [REWARD_FUNCTIONS[name] for name in chosen]


def load_prompts(reward_args, needs):
    """The prompts (a file, a saved dataset or a Hub dataset), checked to hold the columns in `needs`."""
    if not reward_args.dataset:
        raise ValueError("--dataset is required: a file of prompts (a `prompt` column and the rewards' columns)")
    dataset = load_raw_datasets(reward_args.dataset)["train"]
    missing = [column for column in needs if column not in dataset.column_names]
    if missing:
        raise ValueError(f"--dataset {reward_args.dataset} has no column {missing} (it has {dataset.column_names})")
    if reward_args.max_train_samples is not None:
        dataset = dataset.select(range(min(reward_args.max_train_samples, len(dataset))))
    if len(dataset) == 0:  # training on nothing would save the start model as a GRPO model
        raise ValueError(f"--dataset {reward_args.dataset} gives no prompts (with --max_train_samples "
                         f"{reward_args.max_train_samples})")
    return dataset


def main(argv=None):
    from hf_mdlm.training.grpo import MDLMGRPOConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((MODEL_FLAGS, RewardArguments, MDLMGRPOConfig))
    add_bool_flag(parser, "--overwrite_output_dir",
                  help="Delete an earlier run's files from --output_dir (and its -hub export) first.")
    model_flags, reward_args, training_args, extra = parser.parse_args_into_dataclasses(args=argv)
    model_args = ModelArguments(**dataclasses.asdict(model_flags), trust_remote_code=training_args.trust_remote_code)
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: GRPO starts from a fine-tuned model (examples/finetune.py)")
    if training_args.eval_strategy != "no":
        raise ValueError("--eval_strategy: this script has no evaluation prompts; evaluate the saved model with "
                         "examples/evaluate.py, or call MDLMGRPOTrainer with an eval_dataset")
    rewards = reward_functions(reward_args.reward_funcs)  # before any work, as every other input
    inputs = {"--model_name_or_path": model_args.model_name_or_path, "--tokenizer_name": model_args.tokenizer_name,
              "--dataset": reward_args.dataset}
    with prepare_run_outputs(training_args, overwrite=extra.overwrite_output_dir, inputs=inputs,
                             lora_r=model_args.lora_r) as outputs:
        return run(model_args, reward_args, training_args, rewards, outputs)


def run(model_args, reward_args, training_args, rewards, outputs):
    from hf_mdlm.training.grpo import MDLMGRPOTrainer

    set_seed(training_args.seed)
    dataset = load_prompts(reward_args, needs=("prompt", "answer"))  # every reward above reads `answer`
    model, tokenizer = load_model_and_tokenizer(model_args, training_args.output_dir)
    lora = model_args.lora_r > 0
    if lora:
        model = apply_lora(model, model_args)
    trainer = MDLMGRPOTrainer(model, reward_funcs=rewards, args=training_args, train_dataset=dataset,
                              processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=outputs.resume)
    rewarded = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    if rewarded and trainer.is_world_process_zero():
        print(f"mean reward: first logged {rewarded[0]:.4f}, last logged {rewarded[-1]:.4f}")
    state_dict = gathered_state_dict(trainer.model_wrapped, trainer.accelerator)
    if trainer.is_world_process_zero():
        facts = {"method": "GRPO", "start_model": model_args.model_name_or_path,
                 "rewards": [f.__name__ for f in rewards], "estimator": training_args.log_prob_estimator,
                 "dataset": reward_args.dataset}
        save_model_folder(trainer, tokenizer, training_args.output_dir, reward_args, lora=lora, state_dict=state_dict,
                          canvas_length=training_args.max_completion_length, reinforcement=facts)
        check_remote_code_loads(training_args.output_dir)
        print(f"saved a self-contained model folder to {os.path.abspath(training_args.output_dir)}")
        outputs.publish(training_args.output_dir, base_model=model_args.model_name_or_path)
    return trainer


if __name__ == "__main__":
    main()
