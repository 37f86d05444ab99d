"""`MDLMTrainer`: masked-diffusion SFT with the slack-CTC objective, as a `transformers.Trainer`.

Every random choice of a training example (its slack placement, its time t, its masked positions) is drawn
from a generator seeded by (seed, optimizer step, the example's position in the global batch). The loss of
an optimizer step is therefore the same whatever the split into processes and gradient-accumulation
micro-batches, and a resumed run draws exactly what the uninterrupted run drew.
"""

import json
import os
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback

from ..data.collator import DiffusionCollator
from ..generation_mdlm import mix_seed
from ..tokenization import diffusion_token_ids
from .arguments import OBJECTIVE_FILE, MDLMTrainingArguments
from .block_diffusion import block_positions, token_logits
from .canvas import build_canvases, get_schedule, low_discrepancy_times, mask_canvas
from .losses import diffusion_loss


def global_positions(micro_step, world_size, process_index, per_device_batch, batch_size, device=None):
    """Positions of a micro-batch's rows among all processes' rows: micro-step k of process r holds rows
    (k * world_size + r) * per_device_batch + [0, batch_size)."""
    first = (micro_step * world_size + process_index) * per_device_batch
    return torch.arange(first, first + batch_size, device=device)


class MDLMTrainer(Trainer):
    """A `Trainer` whose `compute_loss` is the masked-diffusion ELBO plus slack-CTC.

    Works with any model whose forward takes `input_ids` and `attention_mask` and returns `.logits`
    (hf_mdlm models, converted LLaDA, BERT-style masked LMs, PEFT-wrapped versions of them).
    The batches come from `hf_mdlm.data.DiffusionCollator` (prompt ⊕ response, right padded).
    """

    def __init__(self, model=None, args: MDLMTrainingArguments = None, data_collator=None, **kwargs):
        if args is None or not isinstance(args, MDLMTrainingArguments):
            raise TypeError("MDLMTrainer needs args=MDLMTrainingArguments(...)")
        if args.push_to_hub or args.hub_token:
            # Trainer's push uploads the output folder unchecked, and every training_args.bin it writes pickles
            # hub_token in plain text: the token must never reach a Trainer.
            raise ValueError(
                "MDLMTrainer does not push to the Hub and must not hold a token (Trainer would upload the folder "
                "unchecked and pickle hub_token into every training_args.bin): train with push_to_hub=False and "
                "hub_token=None, then publish with hf_mdlm.hub.export_for_hub and hf_mdlm.hub.push_to_hub "
                "(hf_mdlm.hub.detach_hub_settings(args) takes both out; examples/finetune.py --push_to_hub does this)"
            )
        _check_trainer_settings(args, kwargs)
        set_ddp_unused_parameter_search(args, model)
        tokenizer = kwargs.get("processing_class")
        config = getattr(model, "config", None)
        self.mask_id, self.slack_id, self.eos_id, _ = diffusion_token_ids(
            tokenizer, config, need_pad=False, need_slack=args.needs_slack_token,
        )
        for name, value in (("mask_token_id", self.mask_id), ("slack_token_id", self.slack_id)):
            if config is not None and value is not None and getattr(config, name, None) is None:
                setattr(config, name, value)  # saved with the model: generate() suppresses and strips what it learnt
        if not isinstance(data_collator, DiffusionCollator):
            raise TypeError(
                "MDLMTrainer needs data_collator=hf_mdlm.data.DiffusionCollator(pad_token_id, canvas_length) "
                f"(batches of prompt/response ids); got {type(data_collator).__name__}"
            )
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        self.add_callback(_RecordObjective())
        self.schedule = get_schedule(args.noise_schedule, args.time_eps)
        # We scale the loss for gradient accumulation ourselves (see compute_loss): tell Trainer to divide it
        # by the accumulation steps uniformly, whatever the transformers version.
        self.model_accepts_loss_kwargs = False
        self._step_examples = None  # examples and response tokens in the current optimizer step, all processes
        self._micro_step = 0
        self._metrics = {"train": defaultdict(float), "eval": defaultdict(float)}  # sums, plus a "count"

    def push_to_hub(self, *args, **kwargs):
        raise NotImplementedError(
            "MDLMTrainer does not push to the Hub (Trainer would upload the output folder unchecked): publish the "
            "saved folder with hf_mdlm.hub.export_for_hub and hf_mdlm.hub.push_to_hub (examples/push_to_hub.py)"
        )

    # ---- global-batch bookkeeping --------------------------------------------------------------------------
    def get_batch_samples(self, *args, **kwargs):
        batch_samples, num_items = super().get_batch_samples(*args, **kwargs)
        counts = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        for batch in batch_samples:
            counts[0] += batch["input_ids"].shape[0]
            counts[1] += batch["response_lengths"].sum()
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._step_examples = counts
        self._micro_step = 0
        self._accumulation = max(len(batch_samples), 1)
        return batch_samples, num_items

    def _global_positions(self, batch_size, device):
        """Index of each row of this micro-batch in the optimizer step's global batch (same for every layout)."""
        return global_positions(self._micro_step, self.args.world_size, self.args.process_index,
                                self.args.per_device_train_batch_size, batch_size, device)

    # ---- the objective -------------------------------------------------------------------------------------
    def diffusion_forward(self, model, inputs, step, positions, total):
        """Build canvases, noise them, run the model and return the per-example `DiffusionLoss`."""
        args = self.args
        input_ids = inputs["input_ids"]
        prompt_lengths, response_lengths = inputs["prompt_lengths"], inputs["response_lengths"]
        canvas_length = input_ids.shape[1] - int(prompt_lengths.max())
        generators = [
            torch.Generator().manual_seed(mix_seed(args.seed, step, int(j))) for j in positions.tolist()
        ]
        clean_ids, canvas_mask, attention_mask = build_canvases(
            input_ids.cpu(), prompt_lengths.cpu(), response_lengths.cpu(),
            canvas_length=canvas_length,
            slack_token_id=self.slack_id,
            fill_token_id=self.eos_id if args.canvas_padding == "eos" else self.slack_id,
            slack_rule=args.slack_rule,
            slack_prob=args.slack_prob,
            generators=generators,
        )
        if args.antithetic_time:
            offset = torch.rand(1, generator=torch.Generator().manual_seed(mix_seed(args.seed, step, -1)))
            t = low_discrepancy_times(offset, positions.cpu() % total, total)
        else:
            t = torch.stack([torch.rand((), generator=g) for g in generators])
        noised_ids, masked = mask_canvas(
            clean_ids, t, canvas_mask, mask_token_id=self.mask_id, schedule=self.schedule, generator=generators
        )
        device = input_ids.device
        config = getattr(self.model, "config", None)  # self.model: DDP/FSDP wrappers have no config
        # The emission of canvas position i is the prediction of token i (block models: given the clean blocks before).
        logits = token_logits(model, noised_ids.to(device), clean_ids.to(device), attention_mask.to(device), config)
        block_size = getattr(config, "block_size", None)
        blocks = (block_positions(attention_mask) // block_size).to(device) if block_size else None  # CTC per block
        result = diffusion_loss(
            logits, noised_ids.to(device), clean_ids.to(device),
            masked=masked.to(device), loss_mask=canvas_mask.to(device), t=t.to(device), schedule=self.schedule,
            mask_token_id=self.mask_id, slack_token_id=self.slack_id,
            ce_weight=args.ce_weight, ctc_weight=args.ctc_weight,
            normalization=args.loss_normalization, collapse=args.ctc_collapse, blocks=blocks,
        )
        num_slack = ((clean_ids == self.slack_id) & canvas_mask).sum(1) if self.slack_id is not None else None
        # what `compute_metrics` scores: the logits, and the clean tokens where they were masked (-100 elsewhere)
        labels = torch.where(masked, clean_ids, torch.full_like(clean_ids, -100)).to(device)
        return result, num_slack, (logits, labels)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._step_examples is None:  # called outside the training loop (e.g. by a user): this batch alone
            self._step_examples = torch.tensor(
                [inputs["input_ids"].shape[0], float(inputs["response_lengths"].sum())], dtype=torch.float64
            )
            self._accumulation, self._micro_step = 1, 0
        total_examples, total_tokens = self._step_examples.tolist()
        positions = self._global_positions(inputs["input_ids"].shape[0], inputs["input_ids"].device)
        result, num_slack, _ = self.diffusion_forward(
            model, inputs, self.state.global_step, positions, max(int(total_examples), 1)
        )
        denominator = total_tokens if self.args.loss_normalization == "batch_tokens" else total_examples
        # Sum over this micro-batch / global denominator; times (processes x accumulation steps) because DDP
        # averages over processes and Trainer divides by the accumulation steps.
        scale = self.args.world_size * self._accumulation / max(denominator, 1.0)
        loss = result.per_example.sum() * scale
        self._micro_step += 1
        if self._micro_step >= self._accumulation:  # the optimizer step is complete
            self._step_examples = None
        self._record(result, num_slack, inputs["response_lengths"], "train")
        return (loss, {"loss": loss}) if return_outputs else loss

    # ---- evaluation with the diffusion loss ----------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        batch = inputs["input_ids"].shape[0]
        # Each example's position in the evaluated set (every process draws different noise for its examples),
        # the same in every evaluation and for every eval batch size.
        step = getattr(self, "_eval_step", 0)
        positions = global_positions(step, self.args.world_size, self.args.process_index,
                                     self.args.per_device_eval_batch_size, batch, inputs["input_ids"].device)
        self._eval_step = step + 1
        with torch.no_grad():
            # A fixed pseudo-step makes every evaluation draw the same noise: losses are comparable over time. The
            # times are stratified over the whole evaluated set, not per batch (small eval batches gave few distinct
            # times, and an eval loss that changed several-fold with the batch size).
            size = getattr(self, "_eval_total", None)  # None: an iterable dataset (times stratified per batch)
            result, num_slack, (logits, labels) = self.diffusion_forward(model, inputs, -1, positions, size or batch)
        # With several processes the last batches are filled up with repeats of the first examples (positions past
        # the set): they count nowhere, so that every example is scored once.
        real = positions < size if size else torch.ones_like(positions, dtype=torch.bool)
        self._record(result, num_slack, inputs["response_lengths"], "eval", real)
        lengths = inputs["response_lengths"].to(result.per_example.dtype)
        denominator = (lengths * real).sum() if self.args.loss_normalization == "batch_tokens" else real.sum()
        loss = torch.where(real, result.per_example, 0.0).sum() / denominator.clamp(min=1)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), logits.detach(), labels  # Trainer's contract: compute_metrics gets both

    def evaluation_loop(self, dataloader, *args, **kwargs):
        self._eval_step = 0
        try:
            self._eval_total = len(dataloader.dataset)
        except TypeError:  # an iterable dataset: times stratified per batch
            self._eval_total = None
        try:
            output = super().evaluation_loop(dataloader, *args, **kwargs)
        finally:  # a prediction_step called on its own afterwards scores its batch alone
            self._eval_total = None
        prefix = kwargs.get("metric_key_prefix", "eval")
        parts = self._flush_metrics("eval")
        for name, value in parts.items():
            output.metrics[f"{prefix}_{name}"] = value
        if self.args.loss_normalization == "batch_tokens" and parts:
            # Trainer averages per-batch losses; per response token of the whole set, the loss is its parts' sum
            output.metrics[f"{prefix}_loss"] = round(parts["loss_ce_weighted"] + parts.get("loss_ctc_weighted", 0.0), 6)
        return output

    # ---- logging -------------------------------------------------------------------------------------------
    def _record(self, result, num_slack, response_lengths, phase, rows=None):
        """Accumulate the loss parts for `phase` 'train' or 'eval', averaged at the next log over examples, or over
        response tokens with `loss_normalization="batch_tokens"` (the loss's own unit: its weighted parts add up to
        it). `rows`: which rows count (default all)."""
        counts = torch.ones_like(result.ce, dtype=torch.bool) if rows is None else rows

        def counted(values):
            return torch.where(counts, values.detach().double(), 0.0).sum()

        parts = {"loss_ce": result.ce / result.normalizer,
                 "loss_ce_weighted": self.args.ce_weight * result.weight * result.ce / result.normalizer}
        if result.ctc is not None:
            parts["loss_ctc"] = result.ctc / result.normalizer
            parts["loss_ctc_weighted"] = self.args.ctc_weight * result.weight * result.ctc / result.normalizer
        if num_slack is not None:
            parts["slack_per_example"] = num_slack
        sums = self._metrics[phase]
        for name, values in parts.items():  # tensor sums: no host sync until the next log
            sums[name] = sums[name] + counted(values)
        sums["count"] = sums["count"] + counts.double().sum()
        if self.args.loss_normalization == "batch_tokens":  # the loss is per response token: so are its parts
            sums["tokens"] = sums["tokens"] + counted(response_lengths)

    def _flush_metrics(self, phase):
        """Means since the last flush, over all processes (every process calls this: it is a collective)."""
        sums = self._metrics[phase]
        self._metrics[phase] = defaultdict(float)
        names = sorted(n for n in sums if n not in ("count", "tokens"))
        values = torch.stack([torch.as_tensor(sums[n], dtype=torch.float64).to(self.args.device)
                              for n in names + ["count", "tokens"]])
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        *totals, count, tokens = values.tolist()
        per = {n: tokens if tokens and n.startswith("loss_") else count for n in names}  # loss parts per token
        return {n: round(v / per[n], 6) for n, v in zip(names, totals)} if count else {}

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # a training log: add the loss parts averaged since the previous one
            logs.update(self._flush_metrics("train"))
        return super().log(logs, *args, **kwargs)


def set_ddp_unused_parameter_search(args, model) -> None:
    """Every weight of a dense hf_mdlm model takes part in every step, so DDP need not search the autograd graph for
    unused parameters after each backward (Trainer searches when `ddp_find_unused_parameters` is unset and gradient
    checkpointing is off). Experts no token chose are unused: MoE models keep the search. A set value is kept."""
    if args.ddp_find_unused_parameters is not None:
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) == "mdlm" and not getattr(config, "num_experts", 0):
        args.ddp_find_unused_parameters = False


def _check_trainer_settings(args, kwargs) -> None:
    """Refuse Trainer settings that MDLMTrainer would silently ignore or that break its exact global batch."""
    if args.label_smoothing_factor:
        raise ValueError(f"label_smoothing_factor={args.label_smoothing_factor}: MDLMTrainer's loss is the diffusion "
                         "objective (masked CE + slack-CTC), which has no label smoothing; leave it at 0")
    if kwargs.get("compute_loss_func") is not None:
        raise ValueError("compute_loss_func: MDLMTrainer computes the diffusion objective itself; to change the loss, "
                         "subclass MDLMTrainer and override compute_loss")
    accelerator = args.accelerator_config
    if getattr(accelerator, "split_batches", False):
        # each example's noise is drawn from its position in the global batch, counted in per-device batches
        raise ValueError("accelerator_config split_batches=True is not supported by MDLMTrainer: set "
                         "per_device_train_batch_size to the per-process batch instead")
    if args.world_size > 1 and not getattr(accelerator, "even_batches", True):
        raise ValueError("accelerator_config even_batches=False with several processes: a process without a last "
                         "batch would wait for the others forever; keep even_batches=True (the default)")
    for name in ("train_dataset", "eval_dataset"):
        datasets = kwargs.get(name)
        for dataset in datasets.values() if isinstance(datasets, dict) else [datasets]:
            columns = getattr(dataset, "column_names", None)
            if isinstance(columns, list) and not {"prompt_ids", "response_ids"} <= set(columns):
                raise ValueError(f"{name} has columns {columns}, not prompt_ids/response_ids: turn raw rows (text, "
                                 "prompt/completion or messages) into them with hf_mdlm.data.preprocess_dataset")


def sharded(trainer) -> bool:
    """Whether the trained weights are split over the processes (FSDP, DeepSpeed ZeRO-3), so that no process holds
    the whole model in memory."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3


class _RecordObjective(TrainerCallback):
    """Writes the run's objective settings into every checkpoint, so that a run resuming from it elsewhere can be
    checked to train the same thing (`hf_mdlm.hub.resolve_resume`)."""

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, OBJECTIVE_FILE), "w") as handle:
                json.dump(args.objective_settings(), handle, indent=2, sort_keys=True)
