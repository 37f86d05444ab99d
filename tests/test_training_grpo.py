"""GRPO on TRL (hf_mdlm/training/grpo.py, examples/grpo.py): end to end on a tiny model, the invariances of SFT
(gradient accumulation, two processes), reproducible rollouts, and the errors."""

import json

import pytest
import torch
from example_scripts import TINY, example, launch_two_processes

pytest.importorskip("trl")

# a tiny GRPO run: 2 optimizer steps of 2 prompts x 4 generations each (with --per_device_train_batch_size 8) on
# sorting 3 digits, rollouts of 6 positions
TINY_GRPO = ["--max_steps", "2", "--num_generations", "4", "--learning_rate", "0.01", "--logging_steps", "1",
             "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--disable_tqdm", "true",
             "--reward_funcs", "exact_answer,answer_format", "--seed", "3", "--bf16", "false"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return example("sort_task").write_task(tmp_path_factory.mktemp("sort") / "data", length=3, sft=300, prompts=64,
                                           heldout=4)


@pytest.fixture(scope="module")
def start_model(task, tmp_path_factory):
    """A tiny model fine-tuned briefly on the task (examples/finetune.py): its rollouts earn some reward, not always
    (a random model's earn none, and GRPO has nothing to learn from)."""
    folder = tmp_path_factory.mktemp("start") / "sft"
    example("finetune").main(TINY + ["--dataset", str(task["sft"]), "--output_dir", str(folder), "--max_steps", "100",
                                     "--canvas_length", "6", "--text_response_length", "5", "--learning_rate", "0.005",
                                     "--per_device_train_batch_size", "16", "--max_train_samples", "300"])
    return folder


def grpo(start_model, task, out, *flags):
    return example("grpo").main(TINY_GRPO + ["--model_name_or_path", str(start_model), "--dataset",
                                             str(task["prompts"]), "--output_dir", str(out), *flags])


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("estimator", ["one_step", "coupled"])
def test_grpo_runs_end_to_end_logs_rewards_exports_and_reloads(start_model, task, tmp_path, estimator, capsys):
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.hub import export_for_hub

    out = tmp_path / "grpo"
    trainer = grpo(start_model, task, out, "--per_device_train_batch_size", "8", "--beta", "0.05",
                   "--log_prob_estimator", estimator)
    rewards = [e for e in trainer.state.log_history if "reward" in e]
    assert len(rewards) == 2 and all("kl" in e and "rewards/exact_answer/mean" in e for e in rewards)
    assert all(e["rollout_seconds"] > 0 for e in rewards)  # the sampler's share of each step
    assert "mean reward: first logged" in capsys.readouterr().out
    # the policy moved, the reference (a frozen copy of the start) did not
    start, trained = weights(start_model), weights(out)
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    reference = trainer.ref_model.state_dict()
    assert all(torch.equal(reference[k], start[k]) for k in start if k in reference)
    facts = json.loads((out / "run_info.json").read_text())["reinforcement"]
    assert facts == {"method": "GRPO", "start_model": str(start_model), "rewards": ["exact_answer", "answer_format"],
                     "estimator": estimator, "dataset": str(task["prompts"])}
    assert not any(out.rglob("README.md"))  # TRL's card (a causal LM, "fine-tuned version of None") is not written
    card = (export_for_hub(out, None, tmp_path / "hub", repo_id="org/sort-grpo") / "README.md").read_text()
    assert "Trained with GRPO" in card and "exact_answer, answer_format" in card
    assert f"| Per-token log-probabilities (`log_prob_estimator`) | {estimator} |" in card and '- "grpo"' in card
    # the start model was fine-tuned with <slack>: its decoding leaves <slack> out, and so does the GRPO model's
    assert json.loads((start_model / "generation_config.json").read_text())["suppress_slack"] is True
    assert json.loads((out / "generation_config.json").read_text())["suppress_slack"] is True
    model = MDLMForMaskedLM.from_pretrained(out)
    prompt = torch.tensor([[5, 6, 7]])
    assert model.generate(prompt).shape == (1, 3 + model.generation_config.max_new_tokens)


def test_grpo_with_lora_trains_the_adapter_against_the_base(start_model, task, tmp_path):
    out = tmp_path / "lora"
    trainer = grpo(start_model, task, out, "--per_device_train_batch_size", "8", "--beta", "0.05", "--lora_r", "4")
    assert trainer.ref_model is None  # the reference is the model with the adapter disabled (TRL)
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [value for key, value in adapter.items() if "lora_B" in key]
    assert lora_b and any(value.abs().sum() > 0 for value in lora_b)  # B starts at zero: the adapter trained
    assert [e["reward"] for e in trainer.state.log_history if "reward" in e]


def test_rollouts_are_reproducible_and_do_not_depend_on_the_batch(start_model, task, tmp_path):
    """A row's rollout depends on its seed alone: the same completion alone or among other prompts."""
    trainer = grpo(start_model, task, tmp_path / "a", "--per_device_train_batch_size", "8", "--max_steps", "1")
    prompts = [trainer.processing_class(p, add_special_tokens=False)["input_ids"]
               for p in ["sort 312:", "sort 9:", "sort 55012:", "sort 1:"]]
    trainer._row_seeds = torch.tensor([11, 12, 13, 14])
    together, _ = trainer._generate_single_turn(prompts, None, {}, 4)
    again, _ = trainer._generate_single_turn(prompts, None, {}, 4)
    trainer._row_seeds = torch.tensor([13])
    alone, _ = trainer._generate_single_turn(prompts[2:3], None, {}, 1)
    assert together == again and alone == together[2:3]
    assert len({tuple(c) for c in together}) > 1  # seeded, not identical


def test_gradient_accumulation_gives_the_same_update(start_model, task, tmp_path):
    """8 rollouts in one micro-batch, or in two micro-batches of 4: the same rollouts, the same weights after."""
    one = tmp_path / "one"
    grpo(start_model, task, one, "--per_device_train_batch_size", "8", "--max_steps", "1")
    two = tmp_path / "two"
    grpo(start_model, task, two, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
         "--max_steps", "1")
    a, b = weights(one), weights(two)
    assert any(not torch.equal(a[k], weights(start_model)[k]) for k in a)
    # Adam's first step moves every weight by about the learning rate (0.01) whatever the gradient's size: summing
    # the gradient in another order may move a weight 1e-6 differently, a different rollout or loss would move it 1e-2
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)


def test_two_process_grpo_matches_one_process(start_model, task, tmp_path):
    single = tmp_path / "single"
    grpo(start_model, task, single, "--per_device_train_batch_size", "8")
    ddp = tmp_path / "ddp"
    result = launch_two_processes("grpo", TINY_GRPO + ["--model_name_or_path", str(start_model), "--dataset",
                                                       str(task["prompts"]), "--output_dir", str(ddp),
                                                       "--per_device_train_batch_size", "4"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single_log = [e for e in json.loads((single / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    ddp_log = [e for e in json.loads((ddp / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    assert [e["reward"] for e in ddp_log] == pytest.approx([e["reward"] for e in single_log], abs=1e-6)
    a, b = weights(single), weights(ddp)
    for key in a:  # (the tolerance: as in test_gradient_accumulation_gives_the_same_update)
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)


def test_bad_settings_and_inputs_are_named_before_any_work(start_model, task, tmp_path):
    from hf_mdlm.training.grpo import MDLMGRPOConfig

    with pytest.raises(ValueError, match="--log_prob_estimator must be one of"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), log_prob_estimator="two_step")
    with pytest.raises(ValueError, match="coupled_min_mask_rate"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), coupled_min_mask_rate=0.9, coupled_max_mask_rate=0.1)
    with pytest.raises(ValueError, match="use_vllm"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), use_vllm=True)
    # settings the rollouts are scored under belong to GRPO; what the sampler cannot apply is refused
    with pytest.raises(ValueError, match="--temperature must be > 0"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), temperature=0.0)
    for setting in (dict(repetition_penalty=1.3), dict(min_p=0.1)):
        with pytest.raises(ValueError, match="--repetition_penalty and --min_p are not applied"):
            MDLMGRPOConfig(output_dir=str(tmp_path / "x"), **setting)
    with pytest.raises(ValueError, match="--generation_kwargs sets \['num_return_sequences', 'temperature'\]"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), generation_kwargs={"temperature": 0, "num_return_sequences": 2})
    with pytest.raises(ValueError, match="\['kv_cach'\] are not MDLMGenerationConfig settings"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), generation_kwargs={"kv_cach": "dual"})
    if not torch.cuda.is_available():  # TRL defaults to bf16, which fails on a CPU
        assert MDLMGRPOConfig(output_dir=str(tmp_path / "x")).bf16 is False
    with pytest.raises(ValueError, match="--eval_strategy: this script has no evaluation prompts"):
        example("grpo").main(TINY_GRPO + ["--model_name_or_path", str(start_model), "--dataset", str(task["prompts"]),
                                          "--output_dir", str(tmp_path / "e"), "--eval_strategy", "steps"])
    with pytest.raises(ValueError, match="the rollout settings .* cannot sample: kv_cache must be None"):
        grpo(start_model, task, tmp_path / "k", "--generation_kwargs", '{"kv_cache": "full"}')  # at init, not rollout
    with pytest.raises(ValueError, match="gives no prompts"):
        example("grpo").main(TINY_GRPO + ["--model_name_or_path", str(start_model), "--dataset", str(task["prompts"]),
                                          "--output_dir", str(tmp_path / "z"), "--max_train_samples", "0"])
    with pytest.raises(ValueError, match="unknown \\['length'\\].*known: exact_answer, answer_format"):
        grpo(start_model, task, tmp_path / "r", "--reward_funcs", "exact_answer,length")
    with pytest.raises(ValueError, match="--model_name_or_path is required"):
        example("grpo").main(TINY_GRPO + ["--dataset", str(task["prompts"]), "--output_dir", str(tmp_path / "m")])
    no_answer = tmp_path / "prompts.jsonl"
    no_answer.write_text('{"prompt": "sort 21:"}\n')
    with pytest.raises(ValueError, match="has no column \\['answer'\\]"):
        example("grpo").main(TINY_GRPO + ["--model_name_or_path", str(start_model), "--dataset", str(no_answer),
                                          "--output_dir", str(tmp_path / "n")])
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_grpo_keeps_the_output_folder_rules(start_model, task, tmp_path):
    """examples/grpo.py takes finetune.py's rules: a folder holding another run is refused, never the model's own
    folder, and --overwrite_output_dir deletes only what a run writes."""
    from hf_mdlm.hub import OutputFolderError

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "config.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="is not empty"):
        grpo(start_model, task, busy)
    with pytest.raises(OutputFolderError, match="--model_name_or_path"):
        grpo(start_model, task, start_model, "--overwrite_output_dir", "true")
    assert (start_model / "model.safetensors").exists()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="notes.txt.*nothing was deleted"):
        grpo(start_model, task, busy, "--overwrite_output_dir", "true")
    assert (busy / "notes.txt").exists() and (busy / "config.json").exists()


@pytest.mark.parametrize("per_iteration", ["true", "false"])
def test_every_update_scores_policy_old_and_reference_under_the_same_masks(start_model, task, tmp_path,
                                                                           per_iteration):
    """Three updates per batch of rollouts, learning rate 0 (the policy stays the reference and the old policy): the KL
    and every clipped ratio are exactly 0 at each update only if the three are scored under the same masks, including
    when each update draws new ones (masks_per_iteration, d1's way)."""
    trainer = grpo(start_model, task, tmp_path / "iterations", "--per_device_train_batch_size", "8",
                   "--learning_rate", "0", "--beta", "0.1", "--num_iterations", "3", "--max_steps", "3",
                   "--log_prob_estimator", "coupled", "--masks_per_iteration", per_iteration)
    logged = [e for e in trainer.state.log_history if "kl" in e]
    assert len(logged) == 3
    assert all(e["kl"] == 0 and e["clip_ratio/region_mean"] == 0 for e in logged), [(e["kl"], e["clip_ratio/region_mean"]) for e in logged]
    reference = trainer._buffered_inputs[0]["ref_per_token_logps"]
    if per_iteration == "true":  # (rows, updates, tokens): each update's own masks give other estimates
        assert reference.dim() == 3 and reference.shape[1] == 3
        assert not torch.equal(reference[:, 0], reference[:, 1])
    else:
        assert reference.dim() == 2


def test_the_config_documents_every_field_it_adds():
    import re

    from hf_mdlm.training.grpo import MDLMGRPOConfig

    own = set(MDLMGRPOConfig.__annotations__)
    assert own == {"log_prob_estimator", "prompt_mask_rate", "coupled_min_mask_rate", "coupled_max_mask_rate",
                   "max_completion_length", "masks_per_iteration"}
    assert set(re.findall(r"^        (\w+) \(`", MDLMGRPOConfig.__doc__, flags=re.M)) == own


def test_reference_sync_moves_the_frozen_copy_toward_the_policy(start_model, task, tmp_path):
    """TRL's reference sync (`sync_ref_model`) works on our frozen copy: mixed toward the policy every step."""
    trainer = grpo(start_model, task, tmp_path / "sync", "--per_device_train_batch_size", "8", "--beta", "0.05",
                   "--sync_ref_model", "true", "--ref_model_sync_steps", "1", "--ref_model_mixup_alpha", "0.5")
    start, reference = weights(start_model), trainer.ref_model.state_dict()
    assert any(not torch.equal(reference[k], start[k]) for k in start if k in reference)


def test_evaluation_draws_and_scores_rollouts_too(tokenizer, tmp_path):
    """`eval_strategy` runs TRL's evaluation: rollouts of the held-out prompts, rewards and the loss, logged as eval_*."""
    from datasets import Dataset
    from conftest import tiny_model_for

    from hf_mdlm.training.grpo import MDLMGRPOConfig, MDLMGRPOTrainer

    prompts = Dataset.from_list([{"prompt": f"To be or not {i}"} for i in range(16)])
    args = MDLMGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                          num_generations=4, max_steps=2, eval_strategy="steps", eval_steps=1, num_iterations=2,
                          beta=0.04, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                          disable_tqdm=True)
    trainer = MDLMGRPOTrainer(tiny_model_for(tokenizer), args=args, train_dataset=prompts,
                              eval_dataset=prompts.select(range(8)), processing_class=tokenizer,
                              reward_funcs=lambda completions, **_: [len(text) / 10 for text in completions])
    trainer.train()
    evaluated = [e for e in trainer.state.log_history if "eval_reward" in e]
    assert len(evaluated) == 2 and all(e["eval_rollout_seconds"] > 0 and "eval_kl" in e for e in evaluated)


def test_grpo_pushes_its_checked_export_once_and_never_writes_the_token(start_model, task, tmp_path, hub_calls):
    from conftest import TOKEN

    out = tmp_path / "pushed"
    grpo(start_model, task, out, "--per_device_train_batch_size", "8", "--push_to_hub", "true",
         "--hub_model_id", "org/sort-grpo", "--hub_token", TOKEN)
    assert [name for name, _, _ in hub_calls].count("create_commit") == 1
    card = (tmp_path / "pushed-hub" / "README.md").read_text()
    assert "Trained with GRPO" in card
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_the_trainer_and_the_task_name_what_is_wrong(tokenizer, task, tmp_path):
    import types

    from conftest import make_model, tiny_model_for

    from hf_mdlm.training import grpo as grpo_module
    from hf_mdlm.training.grpo import MDLMGRPOConfig, MDLMGRPOTrainer

    args = MDLMGRPOConfig(output_dir=str(tmp_path / "x"), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="--prompt_mask_rate must lie in"):
        MDLMGRPOConfig(output_dir=str(tmp_path / "x"), prompt_mask_rate=1.5)
    with pytest.raises(TypeError, match="takes a loaded model"):
        MDLMGRPOTrainer("some/model", args=args)
    with pytest.raises(TypeError, match="args must be an MDLMGRPOConfig"):
        MDLMGRPOTrainer(make_model(), args=types.SimpleNamespace())
    no_mask = make_model()
    no_mask.config.mask_token_id = None
    with pytest.raises(ValueError, match="has no mask_token_id"):
        MDLMGRPOTrainer(no_mask, args=args)
    plain = make_model()
    from transformers import GenerationConfig

    plain.generation_config = GenerationConfig()
    with pytest.raises(ValueError, match="not hf_mdlm.s MDLMGenerationConfig .*load_for_inference"):
        MDLMGRPOTrainer(plain, args=args)
    with pytest.raises(AttributeError, match="no_such_function is gone"):
        with grpo_module._patched(grpo_module._trl_grpo, "no_such_function", None):
            pass
    from datasets import Dataset

    trainer = MDLMGRPOTrainer(tiny_model_for(tokenizer), args=args, processing_class=tokenizer,
                              reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              train_dataset=Dataset.from_list([{"prompt": "To be"}] * 8))
    with pytest.raises(RuntimeError, match="scored only inside a training or evaluation step"):
        trainer._get_per_token_logps_and_entropies(trainer.model, torch.tensor([[5, 6, 7]]),
                                                   torch.ones(1, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="text-only"):
        trainer._generate_single_turn([[5, 6]], [["an image"]], {}, 1)
    with pytest.raises(ValueError, match="--dataset is required"):
        example("grpo").main(TINY_GRPO + ["--model_name_or_path", "m", "--output_dir", str(tmp_path / "d")])
    sort_task = example("sort_task")
    with pytest.raises(ValueError, match="only 10 distinct lists of 1 digits are left, asked 11"):
        sort_task.sort_rows(11, 1, seed=0)
    with pytest.raises(FileExistsError, match="is not empty"):
        sort_task.write_task(task["sft"].parent, length=3, sft=2, prompts=2, heldout=2)
