"""GRPO for masked diffusion LMs on TRL: `MDLMGRPOConfig` and `MDLMGRPOTrainer` (needs `pip install -e ".[rl]"`).

TRL's `GRPOTrainer` does the rest of the algorithm (groups, rewards, advantages, clipping, KL to the reference,
reference sync, logging); this subclass changes the two things a diffusion LM does differently:

- **rollouts** come from our sampler (`model.generate`: the model's generation config, its KV caches and
  threshold decoding, overridden by `generation_kwargs`), each row seeded from (seed, optimizer step, the row's
  index in the global batch): batch-invariant, reproducible, and the same for any number of processes;
- **per-token log-probabilities** come from a masked-diffusion estimator (`policy_log_probs`: diffu-GRPO's one-step
  estimate or coupled complementary masks), each update's mask drawn from the rollout's seed and shared by the
  policy, the old policy and the reference model, over the whole canvas (the completion up to its EOS, then EOS to the canvas end, as the
  model fills it in supervised training).

See docs/rl.md for the objective, the choices and the measurements.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import torch

try:
    import trl.trainer.grpo_trainer as _trl_grpo
    from trl import GRPOConfig, GRPOTrainer
except ImportError as error:  # pragma: no cover (the `rl` extra is not installed)
    raise ImportError('MDLMGRPOTrainer needs TRL: pip install -e ".[rl]" (or pip install trl)') from error

from ..generation_mdlm import GENERATION_FIELDS, MDLMGenerationConfig, mix_seed
from .policy_log_probs import ESTIMATORS, completion_log_probs
from .trainer import set_ddp_unused_parameter_search


@dataclass
class MDLMGRPOConfig(GRPOConfig):
    r"""`GRPOConfig` for masked diffusion LMs. Every field is a command-line flag of `examples/grpo.py`.

    Sampling: `temperature`, `top_p`, `top_k` and `max_completion_length` (the canvas, `max_new_tokens`) are passed to
    our sampler; `generation_kwargs` takes any other field of `MDLMGenerationConfig` (e.g.
    `{"kv_cache": "dual", "threshold": 0.9, "steps": 16}`); the model's own generation config gives the rest.

    Parameters:
        log_prob_estimator (`str`, defaults to `"one_step"`):
            How a completion token's log-probability is estimated: `"one_step"` (diffu-GRPO: the completion fully
            masked, the prompt masked at `prompt_mask_rate`, one forward pass) or `"coupled"` (coupled-GRPO: a
            random mask over the completion and its complement, two forward passes, each token scored once).
        prompt_mask_rate (`float`, defaults to `0.15`):
            `"one_step"` only: the probability that each prompt token is masked (d1's value).
        coupled_min_mask_rate (`float`, defaults to `0.2`):
            `"coupled"` only: the lower end of the mask rate t of the first mask (drawn per rollout, uniform).
        coupled_max_mask_rate (`float`, defaults to `0.8`):
            `"coupled"` only: the upper end of that rate.
        max_completion_length (`int`, *optional*):
            The canvas of each rollout (`max_new_tokens`). Default: the model's generation config's.
        masks_per_iteration (`bool`, defaults to `True`):
            With `num_iterations` > 1, each update made from a batch of rollouts scores it under a new mask (as d1
            does), and the old policy's and the reference's log-probabilities are computed under each of those
            masks when the rollouts are drawn. `False`: one mask per rollout for every update.
    """

    log_prob_estimator: str = field(default="one_step", metadata={
        "help": "Per-token log-probability estimator: 'one_step' (diffu-GRPO) or 'coupled' (coupled-GRPO)."})
    prompt_mask_rate: float = field(default=0.15, metadata={
        "help": "one_step: probability that each prompt token is masked."})
    coupled_min_mask_rate: float = field(default=0.2, metadata={
        "help": "coupled: lower end of the first mask's rate (uniform per rollout)."})
    coupled_max_mask_rate: float = field(default=0.8, metadata={
        "help": "coupled: upper end of the first mask's rate."})
    max_completion_length: int | None = field(default=None, metadata={
        "help": "The rollout canvas (max_new_tokens). Default: the model's generation config's."})
    masks_per_iteration: bool = field(default=True, metadata={
        "help": "With num_iterations > 1: a new mask for each update made from a batch of rollouts (d1)."})

    def __post_init__(self):
        if self.log_prob_estimator not in ESTIMATORS:
            raise ValueError(f"--log_prob_estimator must be one of {ESTIMATORS}, got {self.log_prob_estimator!r}")
        if not 0.0 <= self.prompt_mask_rate < 1.0:
            raise ValueError(f"--prompt_mask_rate must lie in [0, 1), got {self.prompt_mask_rate}")
        if not 0.0 < self.coupled_min_mask_rate <= self.coupled_max_mask_rate < 1.0:
            raise ValueError("--coupled_min_mask_rate and --coupled_max_mask_rate need 0 < min <= max < 1, got "
                             f"{self.coupled_min_mask_rate} and {self.coupled_max_mask_rate}")
        if self.use_vllm or self.use_transformers_continuous_batching:
            raise ValueError("use_vllm / use_transformers_continuous_batching sample autoregressively: a masked "
                             "diffusion LM's rollouts come from its own sampler (leave them off)")
        if not self.temperature > 0:  # the rollouts are scored under the distribution they were drawn from
            raise ValueError(f"--temperature must be > 0 (got {self.temperature}): GRPO needs sampled rollouts, and "
                             "greedy ones make every completion of a prompt the same")
        if self.repetition_penalty != 1.0 or self.min_p:
            raise ValueError("--repetition_penalty and --min_p are not applied by the diffusion sampler (its settings: "
                             "--temperature, --top_p, --top_k, --generation_kwargs)")
        if self.bf16 is None and not torch.cuda.is_available():  # TRL's default (bf16) cannot run on the CPU
            self.bf16 = False
        super().__post_init__()
        settings = self.generation_kwargs or {}
        owned = sorted(set(settings) & {"temperature", "top_p", "top_k", "do_sample", "max_new_tokens", "max_length",
                                        "num_return_sequences", "return_dict_in_generate"})
        if owned:
            raise ValueError(f"--generation_kwargs sets {owned}, which GRPO sets itself (rollouts are scored under "
                             "them): use --temperature, --top_p, --top_k, --max_completion_length, --num_generations")
        unknown = sorted(set(settings) - set(GENERATION_FIELDS))
        if unknown:
            raise ValueError(f"--generation_kwargs: {unknown} are not MDLMGenerationConfig settings")


def _rollout_settings(args) -> dict:
    """The `generate` settings of the rollouts: GRPO's own sampling fields, then `generation_kwargs`."""
    settings = dict(max_new_tokens=args.max_completion_length, temperature=args.temperature,
                    top_p=args.top_p if args.top_p < 1.0 else None, top_k=args.top_k or None)
    settings.update(args.generation_kwargs or {})
    return settings


class MDLMGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose rollouts are drawn by masked-diffusion sampling and whose per-token log-probabilities are
    masked-diffusion estimates (see the module docstring). Takes the arguments of `GRPOTrainer`; `model` is an
    hf_mdlm model (or a PEFT model wrapping one), `args` an `MDLMGRPOConfig`.

    The reference model (`beta > 0`, no LoRA) is a frozen copy of the policy as it was passed in: TRL would reload
    it from the policy's path with `AutoModelForCausalLM`, which a masked diffusion LM is not.
    """

    def __init__(self, model, reward_funcs=None, args: MDLMGRPOConfig | None = None, **kwargs):
        if isinstance(model, str):
            raise TypeError("MDLMGRPOTrainer takes a loaded model (hf_mdlm.loading.load_model_and_tokenizer), not a "
                            "path")
        if not isinstance(args, MDLMGRPOConfig):
            raise TypeError(f"args must be an MDLMGRPOConfig, got {type(args).__name__}")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        set_ddp_unused_parameter_search(args, model)
        if getattr(base.config, "mask_token_id", None) is None:
            raise ValueError(f"{type(base).__name__} has no mask_token_id: MDLMGRPOTrainer trains masked diffusion "
                             "LMs (hf_mdlm models)")
        generation = base.generation_config
        if not isinstance(generation, MDLMGenerationConfig):
            raise ValueError("the model's generation_config is not hf_mdlm's MDLMGenerationConfig (a model loaded "
                             "with AutoModel and trust_remote_code runs the folder's copy of the code, another class; "
                             "or not a diffusion LM): load it with hf_mdlm.loading.load_for_inference(path) (or "
                             "load_model_and_tokenizer) so that rollouts use hf_mdlm's diffusion sampler")
        if args.max_completion_length is None:
            args.max_completion_length = generation.max_new_tokens
        try:  # the rollouts' sampler settings, checked now rather than at the first rollout
            base._checked_generation_config(_rollout_settings(args))
        except ValueError as error:
            raise ValueError(f"the rollout settings (--max_completion_length, --temperature, --top_p, --top_k, "
                             f"--generation_kwargs, on the model's generation config) cannot sample: {error}") from None
        self._mask_token_id = base.config.mask_token_id
        self._row_seeds = None  # the seeds of the rows being drawn or scored (set around each call)
        self._mask_iteration = 0  # which of a rollout's masks scores it (one per update made from it)
        reference = None
        if args.beta != 0.0 and not hasattr(model, "peft_config"):
            reference = copy.deepcopy(base).eval().requires_grad_(False)

        def frozen_policy_copy(*_, **__):
            return reference

        patch = (_patched(_trl_grpo, "create_model_from_path", frozen_policy_copy) if reference is not None
                 else contextlib.nullcontext())
        with patch:
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        # what the canvas holds after a response (its EOS padding in supervised training)
        self._fill_token_id = base.config.eos_token_id if base.config.eos_token_id is not None else \
            self.eos_token_ids[0]

    def create_model_card(self, *args, **kwargs):
        """Writes nothing: TRL's card describes a causal LM (a text-generation pipeline, "fine-tuned version of
        None"); this model's card is rendered when it is exported (`hf_mdlm.hub.export_for_hub`)."""

    # ---- rollouts ----------------------------------------------------------------------------------------------

    def _rollout_seeds(self, rows: int) -> torch.Tensor:
        """(rows,) seeds of this process's rollouts: mixed from (seed, optimizer step, index in the global batch).
        TRL's sampler lays the global generation batch out over processes in order, so a row's index (and its
        rollout) is the same however many processes share the batch."""
        first = self.accelerator.process_index * rows
        return torch.tensor([mix_seed(self.args.seed, self.state.global_step, first + i) for i in range(rows)],
                            dtype=torch.long)

    def _generate_and_score_completions(self, inputs):
        self._row_seeds, self._mask_iteration = self._rollout_seeds(len(inputs)), 0
        try:
            output = super()._generate_and_score_completions(inputs)
            if self.model.training and self.num_iterations > 1 and self.args.masks_per_iteration:
                self._score_under_every_mask(output)
        finally:
            seeds, self._row_seeds = self._row_seeds, None
        output["rollout_seeds"] = seeds.to(self.accelerator.device)  # split and shuffled with the rows
        return output

    @torch.no_grad()
    def _score_under_every_mask(self, output):
        """The old policy's and the reference's log-probabilities under each update's mask: (B, num_iterations, C)
        in place of TRL's (B, C), so that every update compares the policy with them under its own mask."""
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        width, batch = output["completion_ids"].shape[1], self.args.per_device_train_batch_size
        with _trl_grpo.disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for key in ("old_per_token_logps", "ref_per_token_logps"):
                if output.get(key) is None:  # no reference (beta 0), or TRL reuses the policy's scores as the old
                    continue
                scores = [output[key]]
                for iteration in range(1, self.num_iterations):
                    self._mask_iteration = iteration
                    with self._scoring_model(key) as model:
                        scores.append(self._get_per_token_logps_and_entropies(model, ids, mask, width, batch)[0])
                output[key] = torch.stack(scores, dim=1)
        self._mask_iteration = 0

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None or multimodal_fields:
            raise ValueError("MDLMGRPOTrainer trains text-only masked diffusion LMs: got images")
        prompts = self._tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt")
        input_ids, attention_mask = prompts["input_ids"].to(self.accelerator.device), prompts["attention_mask"]
        width = input_ids.shape[1]
        args = self.args
        settings = _rollout_settings(args)
        started = time.perf_counter()
        with (
            _trl_grpo.unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            canvas = unwrapped.generate(input_ids, attention_mask=attention_mask.to(input_ids.device),
                                        generator=self._row_seeds.tolist(), **settings)
        completions = canvas[:, width:].cpu()  # (waits for the device: the time below is the whole sampling)
        self._metrics["train" if self.model.training else "eval"]["rollout_seconds"].append(
            time.perf_counter() - started)
        # up to and with the first EOS, as TRL cuts autoregressive completions; the rest of the canvas is EOS fill,
        # rebuilt when the completion is scored
        is_eos = torch.isin(completions, torch.tensor(self.eos_token_ids))
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completions.shape[1])
        return [row[:n].tolist() for row, n in zip(completions, lengths.tolist())], None

    # ---- scoring -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _scoring_model(self, key: str):
        """The model whose scores `key` holds: the policy (old scores), the reference copy, or, under LoRA, the
        policy with TRL's "ref" adapter (when it made one) or with its adapters disabled."""
        if key == "old_per_token_logps" or self.ref_model is not None:
            yield self.model if key == "old_per_token_logps" else self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        with _trl_grpo.use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            yield self.model

    def _compute_loss(self, model, inputs):
        self._row_seeds = inputs["rollout_seeds"]
        generate_every = self.args.steps_per_generation * self.num_iterations
        per_iteration = self.model.training and self.args.masks_per_iteration
        self._mask_iteration = (self._step % generate_every) // self.args.steps_per_generation if per_iteration else 0
        # scores under every update's mask (B, num_iterations, C): this update's
        inputs = {key: value[:, self._mask_iteration] if key in ("old_per_token_logps", "ref_per_token_logps")
                  and value is not None and value.dim() == 3 else value for key, value in inputs.items()}
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._row_seeds, self._mask_iteration = None, 0

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        if self._row_seeds is None:
            raise RuntimeError("completions are scored only inside a training or evaluation step (their mask seeds "
                               "come with the rollouts)")
        prompt_length = input_ids.shape[1] - logits_to_keep
        prompts, prompt_mask = input_ids[:, :prompt_length], attention_mask[:, :prompt_length]
        completions, completion_mask = input_ids[:, prompt_length:], attention_mask[:, prompt_length:]
        # the whole canvas, as sampled: after the completion's EOS, EOS to the end
        canvas = completions.new_full((len(completions), max(self.args.max_completion_length, logits_to_keep)),
                                      self._fill_token_id)
        canvas[:, :logits_to_keep] = completions.masked_fill(~completion_mask.bool(), self._fill_token_id)
        completions = canvas
        config = (model.get_base_model() if hasattr(model, "get_base_model") else
                  self.accelerator.unwrap_model(model)).config
        args = self.args
        batch_size = batch_size or input_ids.shape[0]
        log_probs, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            with self.accelerator.autocast():
                lp, entropy = completion_log_probs(
                    model, prompts[rows], prompt_mask[rows], completions[rows], self._row_seeds[rows],
                    mask_token_id=self._mask_token_id, estimator=args.log_prob_estimator,
                    prompt_mask_rate=args.prompt_mask_rate, min_rate=args.coupled_min_mask_rate,
                    max_rate=args.coupled_max_mask_rate, temperature=self.temperature, config=config,
                    compute_entropy=compute_entropy, iteration=self._mask_iteration)
            log_probs.append(lp[:, :logits_to_keep])
            if compute_entropy:
                entropies.append(entropy[:, :logits_to_keep])
        aux_loss = torch.zeros((), device=input_ids.device) if compute_aux_loss else None
        return torch.cat(log_probs), (torch.cat(entropies) if compute_entropy else None), aux_loss


@contextlib.contextmanager
def _patched(module, name: str, value):
    """`module.name` set to `value` inside the block (an AttributeError names it when TRL no longer has it)."""
    if not hasattr(module, name):
        raise AttributeError(f"{module.__name__}.{name} is gone: this TRL version builds its reference model "
                             "differently; pass beta=0 or train LoRA (its reference is the adapter disabled)")
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)
