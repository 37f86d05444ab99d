"""Tests of `hf_mdlm/training/trainer.py`: MDLMTrainer's updates, logs, resumption, seeds and positions, its
standard-CTC ablation, and its refusals (no slack or mask token, a Hub token or push in its arguments)."""

import copy
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_mdlm import MDLMForMaskedLM, convert_llada_checkpoint
from hf_mdlm.data import DiffusionCollator
from hf_mdlm.tokenization import add_diffusion_tokens
from hf_mdlm.training.arguments import MDLMTrainingArguments
from hf_mdlm.training.trainer import MDLMTrainer
from conftest import LLADA_TINY, TOKEN, tiny_config, tiny_model_for

CANVAS = 12


def toy_dataset(n=16, vocab=90, seed=0):
    """Rows of prompt/response ids (responses end with EOS=93), with varied lengths and repeated tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = torch.randint(0, vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(0, 8, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        rows.append({"prompt_ids": prompt, "response_ids": response + [93]})
    return Dataset.from_list(rows)


def make_trainer(tmp_path, model=None, *, per_device=4, accumulation=1, steps=2, eval_dataset=None, **overrides):
    torch.manual_seed(0)
    model = model if model is not None else MDLMForMaskedLM(tiny_config())
    values = dict(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        report_to="none", save_strategy="no", logging_steps=1, seed=7, use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    pad = getattr(model.config, "pad_token_id", None) or 0
    return MDLMTrainer(
        model=model, args=MDLMTrainingArguments(**values), train_dataset=toy_dataset(), eval_dataset=eval_dataset,
        data_collator=DiffusionCollator(pad_token_id=pad, canvas_length=CANVAS),
    )


@pytest.mark.parametrize("normalization", ["canvas", "batch_tokens"])
def test_same_update_whatever_the_accumulation_split(tmp_path, normalization):
    """1 micro-batch of 4, 2 of 2, 4 of 1: the same losses and the same weights after two optimizer steps."""
    results = []
    for per_device, accumulation in [(4, 1), (2, 2), (1, 4)]:
        trainer = make_trainer(tmp_path / f"{per_device}x{accumulation}", per_device=per_device,
                               accumulation=accumulation, loss_normalization=normalization)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        results.append((losses, weights))
    (ref_losses, ref_weights), others = results[0], results[1:]
    start = torch.cat([p.flatten() for p in MDLMForMaskedLM(tiny_config()).parameters()])
    assert (ref_weights - start).abs().max() > 1e-4  # training moved the weights
    for losses, weights in others:
        assert losses == pytest.approx(ref_losses, rel=1e-5)
        torch.testing.assert_close(weights, ref_weights, atol=2e-6, rtol=1e-5)


def test_loss_parts_are_logged_and_eval_uses_diffusion_loss(tmp_path):
    trainer = make_trainer(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
                           eval_dataset=toy_dataset(8, seed=1))
    trainer.train()
    train_log = next(e for e in trainer.state.log_history if "loss" in e)
    for key in ("loss_ce", "loss_ctc", "loss_ce_weighted", "loss_ctc_weighted", "slack_per_example"):
        assert key in train_log and math.isfinite(train_log[key])
    assert train_log["loss_ctc"] <= train_log["loss_ce"] + 1e-6  # CTC <= CE example by example
    first = trainer.evaluate()
    second = trainer.evaluate()
    assert first["eval_loss"] == pytest.approx(second["eval_loss"])  # evaluation noise is fixed
    assert "eval_loss_ctc" in first and first["eval_loss_ctc"] <= first["eval_loss_ce"] + 1e-6


@pytest.mark.parametrize("normalization", ["canvas", "masked", "batch_tokens"])
def test_the_weighted_loss_parts_add_up_to_the_loss(tmp_path, normalization):
    """Logged in the loss's own unit (with batch_tokens: per response token, not per example), so that they can be
    read against it and against each other."""
    trainer = make_trainer(tmp_path, loss_normalization=normalization)
    trainer.train()
    for log in (e for e in trainer.state.log_history if "loss" in e):
        assert log["loss_ce_weighted"] + log["loss_ctc_weighted"] == pytest.approx(log["loss"], rel=1e-4)


def test_ce_only_baseline_needs_no_slack(tmp_path):
    model = MDLMForMaskedLM(tiny_config(slack_token_id=None))
    trainer = make_trainer(tmp_path, model, ctc_weight=0.0, slack_rule="none")
    trainer.train()
    log = next(e for e in trainer.state.log_history if "loss" in e)
    assert "loss_ctc" not in log and math.isfinite(log["loss"])


def test_refuses_without_slack_token_when_ctc_is_on(tmp_path):
    with pytest.raises(ValueError, match="<slack>"):
        make_trainer(tmp_path, MDLMForMaskedLM(tiny_config(slack_token_id=None)))


def test_refuses_without_mask_token(tmp_path):
    with pytest.raises(ValueError, match="mask token"):
        make_trainer(tmp_path, MDLMForMaskedLM(tiny_config(mask_token_id=None)))


def test_mdlm_trainer_refuses_a_token_or_a_push(tokenizer, tmp_path):
    from hf_mdlm import DiffusionCollator, MDLMTrainer, MDLMTrainingArguments
    from hf_mdlm.hub import detach_hub_settings

    model = tiny_model_for(tokenizer)
    collator = DiffusionCollator(pad_token_id=tokenizer.pad_token_id, canvas_length=8)
    for flags in ({"hub_token": TOKEN}, {"push_to_hub": True}):
        args = MDLMTrainingArguments(output_dir=str(tmp_path), report_to="none", **flags)
        with pytest.raises(ValueError, match="must not hold a token"):
            MDLMTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    args = MDLMTrainingArguments(output_dir=str(tmp_path), report_to="none", push_to_hub=True, hub_token=TOKEN,
                                 hub_model_id="org/x", hub_private_repo=True)
    request = detach_hub_settings(args)
    assert (request.repo_id, request.private, request.token) == ("org/x", True, TOKEN)
    assert args.hub_token is None and args.push_to_hub is False
    MDLMTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)


def _trains(trainer):
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_trains_a_converted_llada(tmp_path):
    convert_llada_checkpoint(LLADA_TINY, tmp_path / "llada")
    model = MDLMForMaskedLM.from_pretrained(tmp_path / "llada")
    model.config.slack_token_id = 297  # an unused row of the tiny vocabulary plays <slack>
    _trains(make_trainer(tmp_path / "run", model, learning_rate=1e-3))


def test_trains_a_plain_transformers_bert(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=92)
    config.mask_token_id, config.slack_token_id, config.eos_token_id = 95, 94, 93
    _trains(make_trainer(tmp_path, BertForMaskedLM(config), learning_rate=1e-3))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", steps=4, learning_rate=0.1)
    full.train()
    full_losses = [e["loss"] for e in full.state.log_history if "loss" in e]

    first = make_trainer(tmp_path / "resumed", steps=4, learning_rate=0.1, save_strategy="steps", save_steps=2)
    first.train()
    resumed = make_trainer(tmp_path / "resumed", steps=4, learning_rate=0.1, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses[-2:] == pytest.approx(full_losses[-2:], rel=1e-5)


def test_trainer_ctc_collapse(tmp_path):
    from hf_mdlm.training.arguments import MDLMTrainingArguments

    with pytest.raises(ValueError, match="ctc_collapse"):
        MDLMTrainingArguments(output_dir=str(tmp_path), ctc_collapse="merge", use_cpu=True, report_to="none")
    logs = {}
    for collapse in ("slack", "ctc"):
        trainer = make_trainer(tmp_path / collapse, steps=2, ctc_collapse=collapse)
        trainer.train()
        logs[collapse] = [e for e in trainer.state.log_history if "loss_ctc" in e]
    assert all(math.isfinite(e["loss_ctc"]) for e in logs["ctc"])
    # The toy responses repeat tokens and end in EOS fill: standard CTC merges them, so its loss differs
    # (and, the anchor being one of its paths, stays below the CE).
    assert logs["ctc"][0]["loss_ctc"] != pytest.approx(logs["slack"][0]["loss_ctc"])
    assert all(e["loss_ctc"] <= e["loss_ce"] + 1e-6 for e in logs["ctc"])


# ----------------------------------------------------------------------------- seeds and positions


def _mix_seed_numpy(*parts):
    """`mix_seed` on numpy arrays (uint64 arithmetic wraps like the Python version's masks)."""
    import numpy as np

    def splitmix64(x):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    h = np.full(np.broadcast(*parts).shape, 0x243F6A8885A308D3, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            h = splitmix64(h ^ np.asarray(part).astype(np.int64).astype(np.uint64))
    return h >> np.uint64(1)


def test_example_seeds_collide_no_more_than_an_ideal_32_bit_hash():
    """The trainer seeds example j of step s with mix_seed(seed, s, j); a CPU torch.Generator keeps the low 32 bits.
    Over 2000 steps x 2048 examples (4.1 M triples) the colliding seeds are within 2x of the birthday bound of an
    ideal 32-bit hash (the old mixer: every example of such a run shared its seed with another)."""
    import numpy as np

    from hf_mdlm.generation_mdlm import mix_seed

    a = torch.rand(4, generator=torch.Generator().manual_seed(12345))
    assert torch.equal(a, torch.rand(4, generator=torch.Generator().manual_seed(12345 + 2**32)))  # why 32 bits
    steps, positions = np.meshgrid(np.arange(2000), np.arange(2048), indexing="ij")
    seeds = _mix_seed_numpy(np.int64(0), steps.ravel(), positions.ravel())
    for i in (0, 1, 4095, 2_000_001, seeds.size - 1):
        assert int(seeds[i]) == mix_seed(0, int(steps.ravel()[i]), int(positions.ravel()[i]))
    low = seeds & np.uint64(0xFFFFFFFF)
    n, m = low.size, 2.0**32
    duplicates = n - np.unique(low).size
    ideal = n - m * (1 - (1 - 1 / m) ** n)  # expected n - distinct for n uniform draws from m values
    assert ideal / 2 <= duplicates <= 2 * ideal, (duplicates, ideal)


def test_global_positions_are_disjoint_across_processes_and_micro_steps():
    from hf_mdlm.training.trainer import global_positions

    seen = [global_positions(step, 2, rank, 4, 4).tolist() for step in range(3) for rank in range(2)]
    flat = [p for rows in seen for p in rows]
    assert sorted(flat) == list(range(24))
    assert global_positions(1, 1, 0, 8, 8).tolist() == list(range(8, 16))


def test_eval_noise_differs_between_processes(tmp_path, monkeypatch):
    """prediction_step draws each example's noise from its global position: two processes evaluating the same
    rows draw different noise (before: both restarted at position 0 and drew the same)."""
    trainer = make_trainer(tmp_path)
    rows = toy_dataset()
    batch = trainer.data_collator([rows[i] for i in range(4)])

    def eval_loss(world_size, rank):
        monkeypatch.setattr(MDLMTrainingArguments, "world_size", property(lambda self: world_size))
        monkeypatch.setattr(MDLMTrainingArguments, "process_index", property(lambda self: rank))
        trainer._eval_step = 0
        return float(trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=True)[0])

    single, rank0, rank1 = eval_loss(1, 0), eval_loss(2, 0), eval_loss(2, 1)
    assert single == rank0 and rank1 != rank0 and rank1 > 0  # (outside evaluate: no row is a repeat)


@pytest.mark.parametrize("normalization", ["canvas", "batch_tokens"])
def test_the_eval_loss_does_not_depend_on_the_eval_batch_size(tmp_path, normalization):
    """The times are stratified over the whole eval set and each example's noise follows its index in it, so the
    eval batch size changes nothing (before: times stratified per batch, and an eval batch of 1 gave every example
    the same time; the eval loss moved several-fold). With `batch_tokens` the loss is per token of the whole set."""
    losses = {}
    for size in (1, 3, 8):
        trainer = make_trainer(tmp_path / str(size), eval_dataset=toy_dataset(8, seed=1), per_device_eval_batch_size=size,
                               loss_normalization=normalization)
        metrics = trainer.evaluate()
        assert trainer.evaluate()["eval_loss"] == metrics["eval_loss"]  # every evaluation draws the same noise
        losses[size] = metrics["eval_loss"]
    assert losses[1] == pytest.approx(losses[8], rel=1e-5) and losses[3] == pytest.approx(losses[8], rel=1e-5)


def test_eval_rows_past_the_set_count_nowhere(tmp_path, monkeypatch):
    """Several processes: accelerate fills the last eval batches up with repeats of the first examples. Those rows
    (positions past the set) are left out of the loss and its logged parts, so every example is scored once (the
    parts counted 6 examples of 5 under two processes, and no longer added up to the eval loss)."""
    trainer = make_trainer(tmp_path, per_device_eval_batch_size=4)
    rows = toy_dataset()
    monkeypatch.setattr(MDLMTrainingArguments, "world_size", property(lambda self: 2))
    monkeypatch.setattr(MDLMTrainingArguments, "process_index", property(lambda self: 1))

    def eval_on(batch_rows):
        trainer._eval_step, trainer._eval_total = 0, 5  # rank 1's first batch: positions 4, 5, ...
        trainer._metrics["eval"].clear()
        batch = trainer.data_collator([rows[i] for i in batch_rows])
        loss = float(trainer.prediction_step(trainer.model, batch, prediction_loss_only=True)[0])
        return loss, {name: float(value) for name, value in trainer._metrics["eval"].items()}

    padded, alone = eval_on(range(4)), eval_on([0])  # position 4 is the set's last example; 5, 6, 7 are repeats
    assert padded[1]["count"] == 1 and padded[0] == pytest.approx(alone[0], rel=1e-6)
    assert padded[1] == pytest.approx(alone[1], rel=1e-6)


def test_trainer_settings_it_would_ignore_or_break_on_are_refused(tmp_path):
    for overrides, message in ((dict(label_smoothing_factor=0.1), "label_smoothing_factor"),
                               (dict(accelerator_config={"split_batches": True}), "split_batches")):
        with pytest.raises(ValueError, match=message):
            make_trainer(tmp_path, **overrides)
    with pytest.raises(ValueError, match="compute_loss_func"):
        MDLMTrainer(model=MDLMForMaskedLM(tiny_config()), args=MDLMTrainingArguments(output_dir=str(tmp_path)),
                    data_collator=DiffusionCollator(pad_token_id=0, canvas_length=CANVAS), train_dataset=toy_dataset(),
                    compute_loss_func=lambda *args: 0)
    with pytest.MonkeyPatch.context() as patch:  # several processes without even batches: a hang at the last one
        patch.setattr(MDLMTrainingArguments, "world_size", property(lambda self: 2))
        with pytest.raises(ValueError, match="even_batches=False with several processes"):
            make_trainer(tmp_path, accelerator_config={"even_batches": False})
    raw = Dataset.from_list([{"text": "a line of text"}])
    with pytest.raises(ValueError, match=r"train_dataset has columns \['text'\].*hf_mdlm.data.preprocess_dataset"):
        MDLMTrainer(model=MDLMForMaskedLM(tiny_config()), args=MDLMTrainingArguments(output_dir=str(tmp_path)),
                    data_collator=DiffusionCollator(pad_token_id=0, canvas_length=CANVAS), train_dataset=raw)
    with pytest.raises(NotImplementedError, match="hf_mdlm.hub.export_for_hub"):
        make_trainer(tmp_path).push_to_hub()


def test_ddp_searches_for_unused_parameters_only_where_some_can_be_unused(tmp_path):
    """Trainer's default (search after every backward when gradient checkpointing is off) costs a graph traversal per
    step; a dense model uses every weight, an MoE model may leave experts unused, and a set value is the user's."""
    assert make_trainer(tmp_path / "dense").args.ddp_find_unused_parameters is False
    moe = MDLMForMaskedLM(tiny_config(num_experts=4, moe_intermediate_size=16))
    assert make_trainer(tmp_path / "moe", model=moe).args.ddp_find_unused_parameters is None
    assert make_trainer(tmp_path / "set", ddp_find_unused_parameters=True).args.ddp_find_unused_parameters is True


def test_the_trainer_records_the_token_ids_it_trained_with(tmp_path, tokenizer):
    """A config without [MASK]/<slack> ids, trained with the tokenizer's: the ids go into the config, so that the
    saved model's generate() suppresses and strips <slack> (it sampled all-<slack> rows)."""
    config = tiny_config(vocab_size=len(tokenizer), mask_token_id=None, slack_token_id=None, eos_token_id=None,
                         pad_token_id=None)
    model = MDLMForMaskedLM(config)
    tokenizer = copy.deepcopy(tokenizer)
    add_diffusion_tokens(tokenizer)
    MDLMTrainer(model=model, args=MDLMTrainingArguments(output_dir=str(tmp_path)), processing_class=tokenizer,
                data_collator=DiffusionCollator(pad_token_id=0, canvas_length=CANVAS), train_dataset=toy_dataset())
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert model.config.slack_token_id == tokenizer.convert_tokens_to_ids("<slack>")


def test_evaluation_follows_trainers_contract_for_compute_metrics(tmp_path):
    """`prediction_loss_only=False` (Trainer's choice when there is a `compute_metrics`): logits and labels come
    back, the labels the clean tokens at the masked canvas positions (-100 elsewhere), so metrics can be computed."""
    seen = {}

    def masked_accuracy(prediction):
        logits, labels = prediction.predictions, prediction.label_ids
        scored = labels != -100
        seen.update(shape=logits.shape, scored=int(scored.sum()))
        return {"masked_accuracy": float((logits.argmax(-1)[scored] == labels[scored]).mean())}

    trainer = make_trainer(tmp_path, eval_dataset=toy_dataset(8, seed=1), per_device_eval_batch_size=4)
    trainer.compute_metrics = masked_accuracy
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_masked_accuracy"] <= 1.0 and seen["scored"] > 0
    assert seen["shape"][0] == 8 and seen["shape"][-1] == trainer.model.config.vocab_size
    assert "eval_loss" in metrics
    loss, logits, labels = trainer.prediction_step(trainer.model, next(iter(trainer.get_eval_dataloader())),
                                                   prediction_loss_only=True)
    assert logits is None and labels is None and torch.isfinite(loss)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_run_killed_while_checkpointing_resumes_from_a_complete_checkpoint(tmp_path, caplog):
    """Training with a checkpoint every step, SIGKILLed at 10 random moments inside its checkpoint saves (timed in an
    unkilled run): `--resume_from_checkpoint true` always finds a complete checkpoint (its weights and
    trainer_state.json readable) or says there is none; a checkpoint whose save was cut short is passed over, with a
    warning."""
    import json
    import logging

    from hf_mdlm.hub import OutputFolderError, resolve_resume
    from hf_mdlm.hub.checks import check_folder_files
    from kill_points import killed_runs

    folders = [tmp_path / f"run{i}" for i in range(11)]
    trainers = {folder: make_trainer(folder, steps=16, save_strategy="steps", save_steps=1, save_total_limit=3)
                for folder in folders}  # built here, so that the kills land in the training and its saves

    def train(folder):
        trainers[folder].train()

    from transformers import Trainer

    cut_short = 0
    for folder in killed_runs(train, folders, seed=4, during=(Trainer, "_save_checkpoint")):  # every kill mid-save
        try:
            with caplog.at_level(logging.WARNING, logger="hf_mdlm.hub.outputs"):
                checkpoint = resolve_resume("true", folder)
        except OutputFolderError as error:
            assert "holds no complete checkpoint" in str(error)
            continue
        check_folder_files(checkpoint)
        assert json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"] >= 1
    # The kills did land inside saves: runs left a checkpoint cut short, or one more than save_total_limit (killed
    # between writing the new checkpoint and deleting the oldest).
    for folder in folders[1:]:
        checkpoints = list(folder.glob("checkpoint-*"))
        cut_short += len(checkpoints) > 3 or any(not (c / "trainer_state.json").exists() for c in checkpoints)
    assert cut_short >= 3, cut_short


def test_every_checkpoint_records_the_objective_and_another_objective_cannot_resume_it(tmp_path):
    """A checkpoint records its run's objective; a run resuming from it in another folder with another objective
    (here ctc_weight) is refused, naming the field, and the same objective resumes."""
    import json

    from hf_mdlm.hub import OutputFolderError, prepare_run_outputs
    from hf_mdlm.training.arguments import OBJECTIVE_FILE, MDLMTrainingArguments

    trainer = make_trainer(tmp_path / "first", steps=2, save_strategy="steps", save_steps=1, ctc_weight=0.5)
    trainer.train()
    checkpoint = tmp_path / "first" / "checkpoint-2"
    assert json.loads((checkpoint / OBJECTIVE_FILE).read_text()) == trainer.args.objective_settings()

    def resuming(**overrides):
        return MDLMTrainingArguments(output_dir=str(tmp_path / "second"), resume_from_checkpoint=str(checkpoint),
                                     report_to="none", use_cpu=True, **overrides)

    with pytest.raises(OutputFolderError, match=r"trained another objective \(ctc_weight=1.0 here, 0.5 there\)"):
        prepare_run_outputs(resuming(ctc_weight=1.0))
    with prepare_run_outputs(resuming(ctc_weight=0.5)) as outputs:
        assert outputs.resume == str(checkpoint)
