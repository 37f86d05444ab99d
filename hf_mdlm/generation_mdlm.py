"""Diffusion sampling for masked diffusion language models (LLaDA-style), as a `generate` mixin.

This file ships to the Hub next to the weights: it imports only torch, transformers, tqdm and sibling files.

How a call works, in short. The canvas is the (left-padded) prompt followed by `max_new_tokens` mask tokens.
The canvas is filled block by block, left to right. Each block gets `steps // num_blocks` denoising steps.
At every step the model sees the whole canvas, proposes a token for every masked position of the current
block (argmax, or Gumbel-max sampling at `temperature > 0`), scores each proposal (`remasking`), and commits
the best-scored ones; the others stay masked for a later step (docs/objective.md §6; LLaDA, arXiv 2502.09992,
its semi-autoregressive low-confidence remasking). With the default settings and
`temperature=0` this reproduces LLaDA's reference sampler token for token, with two deliberate differences
that only matter in degenerate cases: the mask token itself is never proposed, and equal scores are broken
towards the leftmost position (LLaDA's `torch.topk` leaves the order of ties unspecified, which would make a
row's result depend on its padding).

Extras on top of the reference algorithm:

* `threshold`: commit every proposal whose score reaches it, or `factor`: commit the largest n whose n-th best
  score c_n has (n + 1)(1 - c_n) < factor (Fast-dLLM's parallel decoding rules, arXiv 2505.22618); the step budget
  still guarantees the block finishes in `steps // num_blocks` steps, and a block that is done early ends early, so
  fewer model calls are made.
* `<slack>` (slack-CTC) is an ordinary token while sampling; `strip_generation` removes it from the output.
  `suppress_slack=True` forbids it (the saved default of models trained with `<slack>`).
* EOS controls (`suppress_eos`, `eos_penalty`, `stop_at_eos`).
* `shift_rate`: the positional-shift intervention (docs/objective.md §7; the sensitivity test of slack-CTC,
  arXiv 2601.22947).
* Per-row random generators: a row's samples do not depend on what else is in the batch.
"""

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

REMASKING_STRATEGIES = ("low_confidence", "random", "entropy", "margin")
KV_CACHE_MODES = ("prefix", "dual")
SCHEDULES = ("llada", "dream")

# Every setting `generate` uses: name -> (type, default). The first group is ours; the second one are fields of
# transformers' GenerationConfig that we also use (with our defaults). `eos_token_id` may also be a list.
_DIFFUSION_FIELDS = {
    "steps": (int, None),
    "block_length": (int, None),
    "schedule": (str, "llada"),
    "schedule_eps": (float, 1e-3),
    "remasking": (str, "low_confidence"),
    "threshold": (float, None),
    "factor": (float, None),
    "cfg_scale": (float, 0.0),
    "suppress_eos": (bool, False),
    "eos_penalty": (float, 0.0),
    "stop_at_eos": (bool, False),
    "suppress_slack": (bool, False),
    "shift_rate": (float, 0.0),
    "mask_token_id": (int, None),
    "slack_token_id": (int, None),
    "output_history": (bool, False),
    "kv_cache": (str, None),
    "check_logits": (bool, True),
}
_TRANSFORMERS_FIELDS = {
    "max_new_tokens": (int, 128),
    "temperature": (float, 0.0),
    "top_k": (int, None),
    "top_p": (float, None),
    "num_return_sequences": (int, 1),
    "return_dict_in_generate": (bool, False),
    "eos_token_id": (int, None),
    "pad_token_id": (int, None),
}
GENERATION_FIELDS = {**_DIFFUSION_FIELDS, **_TRANSFORMERS_FIELDS}
_DIFFUSION_DEFAULTS = {name: default for name, (_, default) in _DIFFUSION_FIELDS.items()}
_BASE_DEFAULTS = {
    name: GENERATION_FIELDS[name][1]
    for name in ("max_new_tokens", "temperature", "num_return_sequences", "return_dict_in_generate")
}
# Token ids a generation config inherits from the model config when it does not set them.
_MODEL_TOKEN_FIELDS = ("mask_token_id", "slack_token_id", "eos_token_id", "pad_token_id", "bos_token_id")

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (order matters; negative parts allowed), the same on every platform and run.

    The one seed mixer of hf_mdlm: the sampler's rows, the trainer's examples, evaluation and the lm-eval adapter
    all draw from `torch.Generator().manual_seed(mix_seed(...))`. Each part is folded into the state through
    SplitMix64's finaliser, so nearby tuples (seed, step, position) give unrelated seeds; a CPU generator keeps
    only the low 32 bits, and those behave like an ideal 32-bit hash (tests/test_training_trainer.py counts collisions
    against the birthday bound).
    """
    h = 0x243F6A8885A308D3
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


class MDLMGenerationConfig(GenerationConfig):
    r"""
    Settings of [`MDLMGenerationMixin.generate`] (masked-diffusion sampling). Saved as `generation_config.json`.

    Length and schedule:
        max_new_tokens (`int`, defaults to 128): length of the generated canvas (all of it is filled).
        steps (`int`, *optional*): number of denoising steps (model calls, without `threshold`); defaults to
            `max_new_tokens` (one token per step). It must be a multiple of the number of blocks
            (`max_new_tokens // block_length`), as in LLaDA: each block gets `steps // num_blocks` steps. Steps
            that would commit nothing (when a block has fewer masked positions than steps) are skipped.
        block_length (`int`, *optional*): length of the blocks filled one after the other (semi-autoregressive
            decoding); must divide `max_new_tokens`. None = one block.
        schedule (`str`, defaults to "llada"): how many tokens each step commits, the family's own rule.
            "llada": `floor(masked / steps)` per step plus one in the first `masked % steps` steps of a block, and
            scores from the model's distribution. "dream" (Dream's sampler, set by its converter): with timesteps
            `linspace(1, schedule_eps, steps + 1)`, step i commits `int(m * (1 - t[i+1] / t[i]))` of the `m` masked
            positions (all of them at the last step), and scores come from the distribution after temperature,
            top-k and top-p (so the filters change the order even at temperature 0); its entropy score is
            `exp(sum p log(p + 1e-10))`.
        schedule_eps (`float`, defaults to 1e-3): the last timestep of the "dream" schedule.

    Choosing tokens:
        temperature (`float`, defaults to 0.0): 0 takes the argmax; > 0 samples by Gumbel-max at that temperature.
        top_k (`int`, *optional*), top_p (`float` in (0, 1], *optional*): restrict sampling to the k most likely
            tokens / to the nucleus of mass `top_p` (of the distribution at `temperature`).
        remasking (`str`, defaults to "low_confidence"): how proposals are ranked for committing.
            "low_confidence": probability of the proposed token; "random": a uniform random number;
            "entropy": negative entropy of the predicted distribution (scored as `exp(-entropy)`, in (0, 1]);
            "margin": probability of the best token minus that of the second best. Scores use the model's
            distribution before temperature, top-k and top-p. Equal scores: the leftmost position first.
        threshold (`float` in (0, 1], *optional*): commit, at each step, every masked position of the current
            block whose score reaches `threshold`, and never fewer than needed to finish the block within its
            step budget (so at least one). A block whose positions are all committed ends early.
        factor (`float` > 0, *optional*): Fast-dLLM's factor rule instead of `threshold`: with the scores of the
            block's masked positions sorted, c_1 >= c_2 >= ..., commit the largest n with (n + 1)(1 - c_n) < factor
            (more tokens when the model is confident about many), never fewer than needed to finish in budget.
        cfg_scale (`float`, defaults to 0.0): classifier-free guidance; > 0 adds an unconditional pass (prompt
            replaced by mask tokens) in the same batched forward, mixed as `uncond + (cfg_scale + 1) * (cond - uncond)`.

    End of sequence:
        suppress_eos (`bool`): never propose EOS. eos_penalty (`float`): subtracted from the EOS logits.
        stop_at_eos (`bool`): a row is finished once it has committed an EOS with every position before it
            committed; its remaining mask tokens are then filled with EOS. Generation stops when every row has
            finished (fewer model calls).

    Slack-CTC:
        suppress_slack (`bool`): never propose `<slack>` (otherwise an ordinary token, deleted from the final text
            by `strip_generation` / `skip_special_tokens=True`). Folders saved after training with `<slack>` set it:
            greedy decoding of such a model otherwise commits `<slack>` almost everywhere.
        shift_rate (`float` in [0, 1)): positional-shift intervention: each token about to be committed at
            position i is committed, with this probability, at the adjacent still-masked position instead (i+1,
            else i-1); position i stays masked. "Still masked" means masked before the step, not chosen for
            commitment in this step and not already the target of another shift.

    Speed:
        kv_cache (`str`, *optional*): None (every step runs the whole canvas through the model: exact), "prefix"
            or "dual" (Fast-dLLM's approximate caches, arXiv 2505.22618; docs/objective.md §6). At each block start
            one full forward fills a KV cache; "prefix" then feeds the block and everything after it against the
            cached keys/values of the positions before the block; "dual" feeds only the block, overwriting its
            entries, against the cached prefix and the (stale) cached suffix. Nothing is cached across blocks.
            Works with every other option and with ragged, left-padded batches.
        check_logits (`bool`, defaults to True): raise a clear error when the model returns NaN or infinite
            logits (instead of sampling garbage); False skips the check (one reduction per step).

    Token ids (default: the model config's): mask_token_id, slack_token_id, eos_token_id (int or list),
        pad_token_id.

    Outputs: num_return_sequences (`int`, defaults to 1), return_dict_in_generate (`bool`): return an
        [`MDLMGenerateOutput`] instead of the canvas; output_history (`bool`): keep the canvas after every step.

    Fields of `transformers.GenerationConfig` not listed here (beams, repetition penalties, caches, `do_sample`,
    `max_length`, ...) do not apply to diffusion sampling and are ignored.
    """

    def __init__(self, **kwargs):
        for name, default in _DIFFUSION_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        for name, default in _BASE_DEFAULTS.items():
            if kwargs.get(name) is None:
                kwargs[name] = default
        # transformers' __init__ ends with `self.validate(...)`, which is ours and sees every field set.
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, model_config) -> "MDLMGenerationConfig":
        """The default generation config of a model: our defaults plus the model config's special token ids."""
        values = model_config if isinstance(model_config, dict) else model_config.to_dict()
        config = cls(**{name: values[name] for name in _MODEL_TOKEN_FIELDS if values.get(name) is not None})
        config._original_object_hash = hash(config)
        return config

    def validate(self, strict: bool = False, user_set_attributes=None, **kwargs):
        """Raise a ValueError naming the field for any value or combination that cannot work.

        Only the fields that diffusion sampling uses are checked; nothing is logged or warned (transformers'
        checks of autoregressive flags, e.g. `temperature` without `do_sample`, do not apply here).
        """
        g = self.max_new_tokens
        if not _is_int(g) or g <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer (the canvas length), got {g!r}")
        if self.block_length is not None:
            if not _is_int(self.block_length) or self.block_length <= 0:
                raise ValueError(f"block_length must be a positive integer or None, got {self.block_length!r}")
            if g % self.block_length:
                raise ValueError(f"block_length={self.block_length} must divide max_new_tokens={g}")
        num_blocks = g // (self.block_length or g)
        if self.steps is not None:
            if not _is_int(self.steps) or self.steps <= 0:
                raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
            if self.steps % num_blocks:
                raise ValueError(
                    f"steps={self.steps} must be a multiple of the number of blocks "
                    f"(max_new_tokens // block_length = {num_blocks}): each block gets steps // num_blocks steps"
                )
        if not _is_number(self.temperature) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        if self.remasking not in REMASKING_STRATEGIES:
            raise ValueError(f"remasking must be one of {REMASKING_STRATEGIES}, got {self.remasking!r}")
        if self.threshold is not None and (not _is_number(self.threshold) or not 0 < self.threshold <= 1):
            raise ValueError(f"threshold must be in (0, 1] or None, got {self.threshold!r}")
        if self.factor is not None and (not _is_number(self.factor) or not 0 < self.factor < math.inf):
            raise ValueError(f"factor must be a finite number > 0 or None, got {self.factor!r}")
        if self.factor is not None and self.threshold is not None:
            raise ValueError(f"threshold={self.threshold} and factor={self.factor} are two rules for how many tokens "
                             "a step commits: set one of them")
        if not _is_number(self.cfg_scale) or not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale!r}")
        if not _is_number(self.eos_penalty) or not math.isfinite(self.eos_penalty):
            raise ValueError(f"eos_penalty must be a finite number, got {self.eos_penalty!r}")
        if not _is_number(self.shift_rate) or not 0 <= self.shift_rate < 1:
            raise ValueError(f"shift_rate must be in [0, 1), got {self.shift_rate!r}")
        for name in ("suppress_eos", "stop_at_eos", "suppress_slack", "output_history", "return_dict_in_generate",
                     "check_logits"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not _is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be an integer >= 1, got {self.num_return_sequences!r}")
        for name in ("mask_token_id", "slack_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative token id or None, got {value!r}")
        for value in _as_id_list(self.eos_token_id, "eos_token_id"):
            if value < 0:
                raise ValueError(f"eos_token_id must hold non-negative token ids, got {self.eos_token_id!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not _is_number(self.schedule_eps) or not 0 < self.schedule_eps < 1:
            raise ValueError(f"schedule_eps must be in (0, 1), got {self.schedule_eps!r}")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHE_MODES:
            raise ValueError(f"kv_cache must be None, 'prefix' or 'dual', got {self.kv_cache!r}")
        if self.mask_token_id is not None and self.mask_token_id == self.slack_token_id:
            raise ValueError(f"slack_token_id must differ from mask_token_id ({self.mask_token_id})")

    @property
    def num_blocks(self) -> int:
        return self.max_new_tokens // (self.block_length or self.max_new_tokens)

    @property
    def resolved_steps(self) -> int:
        """`steps`, or `max_new_tokens` when unset."""
        return self.steps if self.steps is not None else self.max_new_tokens


@dataclass
class MDLMGenerateOutput(ModelOutput):
    """What `generate(..., return_dict_in_generate=True)` returns.

    Args:
        sequences (`torch.LongTensor` of shape `(batch * num_return_sequences, prompt_length + max_new_tokens)`):
            the final canvases: the (padded) prompt followed by the generated tokens (which may contain
            `<slack>`, and anything after the first EOS; see `strip_generation`).
        num_model_calls (`int`): forward passes made (classifier-free guidance batches both passes in one).
        num_positions (`int`): token positions run through the model, summed over calls and rows (the work a KV
            cache saves).
        history (`list[torch.LongTensor]`, *optional*): with `output_history=True`, the canvas (on the CPU)
            after every step.
    """

    sequences: Optional[torch.LongTensor] = None
    num_model_calls: Optional[int] = None
    num_positions: Optional[int] = None
    history: Optional[list] = None


def strip_generation(ids, *, mask_token_id=None, slack_token_id=None, eos_token_id=None, prompt_length=0):
    """Clean token lists from generated canvases: one list per row.

    Drops the first `prompt_length` tokens of every row, cuts each row before its first EOS (`eos_token_id`
    may be an int or a list of ints), and deletes `<slack>` and mask tokens. `ids` is a tensor or nested list
    of shape (batch, length), or a single row.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if ids and not isinstance(ids[0], (list, tuple)):
        ids = [ids]
    eos = set(_as_id_list(eos_token_id, "eos_token_id"))
    drop = {t for t in (mask_token_id, slack_token_id) if t is not None}
    rows = []
    for row in ids:
        clean = []
        for token in list(row)[prompt_length:]:
            token = int(token)
            if token in eos:
                break
            if token not in drop:
                clean.append(token)
        rows.append(clean)
    return rows


class MDLMGenerationMixin:
    """Adds `generate` (masked-diffusion sampling) to a model whose forward returns `.logits` over the canvas."""

    # transformers builds `model.generation_config` from this class (`PreTrainedModel.__init__`).
    generation_config_class = MDLMGenerationConfig

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             *args, **kwargs):
        """Called by `from_pretrained`: load `generation_config.json` as an `MDLMGenerationConfig`."""
        if generation_config is not None:
            loaded = MDLMGenerationConfig.from_dict(generation_config.to_dict())
        elif pretrained_model_name_or_path is not None:
            hub_kwargs = {
                key: kwargs[key]
                for key in ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision",
                            "subfolder")
                if kwargs.get(key) is not None
            }
            try:
                loaded = MDLMGenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
            except OSError:
                return  # no generation_config.json: keep the one built from the model config
        else:
            return
        for name in _MODEL_TOKEN_FIELDS:
            if getattr(loaded, name, None) is None and getattr(self.config, name, None) is not None:
                setattr(loaded, name, getattr(self.config, name))
        self.generation_config = loaded

    # ------------------------------------------------------------------------------------------------------------
    def _resolve_generation_config(self, generation_config, kwargs) -> MDLMGenerationConfig:
        base = generation_config if generation_config is not None else getattr(self, "generation_config", None)
        if base is None:
            config = MDLMGenerationConfig.from_model_config(self.config)
        elif isinstance(base, MDLMGenerationConfig):
            config = copy.deepcopy(base)
        elif isinstance(base, GenerationConfig):
            config = MDLMGenerationConfig.from_dict(base.to_dict())
        else:
            raise ValueError(f"generation_config must be an MDLMGenerationConfig, got {type(base).__name__}")
        known = set(config.to_dict())
        unknown = sorted(key for key in kwargs if key not in known)
        if unknown:
            raise ValueError(
                f"generate() got arguments that are not generation settings: {unknown}. "
                f"See MDLMGenerationConfig for the accepted fields."
            )
        for key, value in kwargs.items():
            setattr(config, key, value)
        for name in _MODEL_TOKEN_FIELDS:
            if getattr(config, name, None) is None and getattr(self.config, name, None) is not None:
                setattr(config, name, getattr(self.config, name))
        config.validate()
        return config

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        generation_config: Optional[MDLMGenerationConfig] = None,
        streamer=None,
        step_callback: Optional[Callable[[int, torch.LongTensor], Any]] = None,
        progress: bool = False,
        generator=None,
        **kwargs,
    ):
        r"""
        Fill a canvas of `max_new_tokens` mask tokens after each prompt by masked-diffusion sampling.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, prompt_length)`): the prompts, left-padded when ragged.
            attention_mask (`torch.Tensor` of the same shape, *optional*): 1 for prompt tokens, 0 for padding.
                The generated positions are always attended to.
            generation_config ([`MDLMGenerationConfig`], *optional*): defaults to `self.generation_config`.
            streamer (`transformers.generation.BaseStreamer`, *optional*): batch size 1 only. As in transformers,
                `put` first receives the prompt (shape `(1, prompt_length)`), then each block's tokens (a 1-D
                tensor) as soon as the block is final; `end` is called last.
            step_callback (`callable`, *optional*): `step_callback(step, canvas)` after every denoising step
                (`step` counts from 0; `canvas` is a copy of the whole `(batch, length)` canvas).
            progress (`bool`): show a tqdm progress bar over the steps.
            generator (*optional*): source of randomness (`temperature > 0`, `remasking="random"`,
                `shift_rate > 0`): an int seed, a `torch.Generator` (one seed is drawn from it), or a list with
                one int/Generator per prompt. Every row gets its own generator, derived from the seed, the row's
                prompt index and its copy index (`num_return_sequences`), so a row's result never depends on the
                other rows of the batch. None draws the seed from torch's global generator.
            kwargs: any field of [`MDLMGenerationConfig`], overriding `generation_config` for this call.

        Returns:
            `torch.LongTensor` of shape `(batch * num_return_sequences, prompt_length + max_new_tokens)`: the
            prompts followed by the generated tokens; or an [`MDLMGenerateOutput`] with
            `return_dict_in_generate=True`.
        """
        config = self._resolve_generation_config(generation_config, kwargs)
        plan = _prepare(self, config, input_ids, attention_mask, generator, streamer, step_callback)
        was_training = self.training
        self.eval()
        try:
            return _sample(self, config, plan, streamer, step_callback, progress)
        finally:
            if was_training:
                self.train()


# ----------------------------------------------------------------------------------------------------------------
# Input checks (all before the first model call)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_id_list(value, name) -> list:
    if value is None:
        return []
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if not _is_int(v):
            raise ValueError(f"{name} must be a token id or a list of token ids, got {value!r}")
    return values


@dataclass
class _Plan:
    canvas: torch.Tensor  # (B, P + G)
    attention_mask: Optional[torch.Tensor]  # (B, P + G) or None
    position_ids: torch.Tensor  # (B, P + G): rotary positions, counted over real tokens as the model does
    shift: int  # 1 when position i predicts the token at i + 1 (the model config's prediction_alignment)
    prompt_length: int
    eos_ids: list
    generators: list
    num_blocks: int
    block_length: int
    steps_per_block: int


def _prepare(model, config, input_ids, attention_mask, generator, streamer, step_callback) -> _Plan:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2-D tensor of token ids (batch, prompt_length), got {shape}")
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    batch, prompt_length = input_ids.shape
    if batch == 0:
        raise ValueError("input_ids has no rows")
    vocab = model.config.vocab_size
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
        raise ValueError(f"input_ids holds token ids outside the vocabulary [0, {vocab})")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
            raise ValueError(f"attention_mask has shape {shape}, expected the shape of input_ids {tuple(input_ids.shape)}")
        if attention_mask.numel() and not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")

    gen_length = config.max_new_tokens
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and prompt_length + gen_length > max_positions:
        raise ValueError(
            f"prompt length {prompt_length} + max_new_tokens {gen_length} = {prompt_length + gen_length} exceeds "
            f"the model's max_position_embeddings={max_positions}"
        )
    if config.mask_token_id is None:
        raise ValueError("mask_token_id is not set (neither in the generation config nor in the model config)")
    for name in ("mask_token_id", "slack_token_id"):
        value = getattr(config, name)
        if value is not None and value >= vocab:
            raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab})")
    eos_ids = _as_id_list(config.eos_token_id, "eos_token_id")
    if any(e >= vocab for e in eos_ids):
        raise ValueError(f"eos_token_id={config.eos_token_id} is outside the vocabulary [0, {vocab})")
    if not eos_ids and (config.suppress_eos or config.stop_at_eos or config.eos_penalty != 0):
        raise ValueError("eos_token_id is not set, but suppress_eos / stop_at_eos / eos_penalty need it")
    rows = batch * config.num_return_sequences
    if streamer is not None and rows != 1:
        raise ValueError(
            f"a streamer needs a single sequence, got batch size {batch} x num_return_sequences "
            f"{config.num_return_sequences}"
        )
    if step_callback is not None and not callable(step_callback):
        raise ValueError("step_callback must be callable as step_callback(step, canvas)")
    generators = _row_generators(generator, batch, config.num_return_sequences, model.device)

    # Build the canvas: (repeated) prompts, then mask tokens.
    device = model.device
    prompts = input_ids.to(device=device, dtype=torch.long)
    if config.num_return_sequences > 1:
        prompts = prompts.repeat_interleave(config.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
    canvas = torch.full((rows, prompt_length + gen_length), config.mask_token_id, dtype=torch.long, device=device)
    canvas[:, :prompt_length] = prompts
    full_mask = None
    if attention_mask is not None:
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, gen_length)], dim=1)
    if config.kv_cache is not None and "past_key_values" not in inspect.signature(type(model).forward).parameters:
        raise ValueError(f"kv_cache={config.kv_cache!r} needs a model whose forward takes past_key_values; "
                         f"{type(model).__name__} does not")
    block_length = config.block_length or gen_length
    num_blocks = gen_length // block_length
    if full_mask is None:
        positions = torch.arange(canvas.shape[1], device=device)[None].expand(rows, -1)
    else:
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    return _Plan(
        canvas=canvas,
        attention_mask=full_mask,
        position_ids=positions,
        shift=getattr(model.config, "prediction_shift", 0),
        prompt_length=prompt_length,
        eos_ids=eos_ids,
        generators=generators,
        num_blocks=num_blocks,
        block_length=block_length,
        steps_per_block=config.resolved_steps // num_blocks,
    )


def _seed_of(source) -> int:
    if isinstance(source, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=source, device=source.device).item())
    if _is_int(source):
        return source & _MASK64
    raise ValueError(f"generator must be an int seed, a torch.Generator or a list of them, got {type(source).__name__}")


def _row_generators(generator, batch, copies, device) -> list:
    """One torch.Generator per output row, seeded from (prompt seed, copy index); the prompt seed is the list's
    entry, or (seed, prompt index) mixed."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} entries for a batch of {batch} prompts")
        prompt_seeds = [_seed_of(g) for g in generator]
    else:
        base = _seed_of(generator) if generator is not None else int(torch.randint(0, 2**62, (1,)).item())
        prompt_seeds = [mix_seed(base, index) for index in range(batch)]
    generators = []
    for seed in prompt_seeds:
        for copy_index in range(copies):
            generators.append(torch.Generator(device=device).manual_seed(mix_seed(seed, copy_index)))
    return generators


# ----------------------------------------------------------------------------------------------------------------
# The sampler


def _dream_count(masked: torch.Tensor, step: int, steps: int, eps: float) -> torch.Tensor:
    """(B,) tokens to commit at `step` under Dream's schedule, in float32 and truncated as Dream computes them."""
    if step == steps - 1:
        return masked
    times = torch.linspace(1, eps, steps + 1)
    return (masked.float().cpu() * (1 - times[step + 1] / times[step])).long().to(masked.device)


def logits_for_tokens(logits: torch.Tensor, model_config) -> torch.Tensor:
    """(B, S, V) model outputs -> the logits predicting the token at each position: the same tensor for a
    same-token model; for a next-token one (`prediction_alignment="next_token"`) the outputs one position earlier,
    position 0 using its own (as Dream). Training, evaluation and sampling read predictions through this."""
    if not getattr(model_config, "prediction_shift", 0):
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _block_schedule(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) tokens to commit per step: floor(masked / steps), plus one for the first masked % steps steps."""
    base = masked // steps
    extra = masked % steps
    step_index = torch.arange(steps, device=masked.device)
    return base[:, None] + (step_index[None, :] < extra[:, None]).long()


def _filter_logits(logits: torch.Tensor, top_k, top_p, temperature) -> torch.Tensor:
    """Set to -inf every token outside the top-k and outside the top-p nucleus of softmax(logits / temperature)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits / temperature, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p  # the most likely token always stays (mass before it is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _scores(probs: torch.Tensor, x0: torch.Tensor, remasking: str, dream: bool = False) -> torch.Tensor:
    """Higher = more confident. All scores lie in [0, 1] (so that `threshold` applies to each)."""
    if remasking == "low_confidence":
        return probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    if remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if remasking == "entropy":
        log_probs = torch.log(probs + 1e-10) if dream else torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
        return torch.exp((probs * log_probs).sum(-1))
    raise ValueError(f"unknown remasking {remasking!r}")


def _sample(model, config: MDLMGenerationConfig, plan: _Plan, streamer, step_callback, progress):
    x = plan.canvas
    P = plan.prompt_length
    L = plan.block_length
    mask_id = config.mask_token_id
    eos_fill = plan.eos_ids[0] if plan.eos_ids else None
    history = [] if config.output_history else None
    counts = {"calls": 0, "positions": 0}
    step_count = 0
    streamed_blocks = 0

    if streamer is not None:
        streamer.put(x[:, :P].to("cpu", copy=True))

    def stream_finished_blocks():
        nonlocal streamed_blocks
        if streamer is None:
            return
        while streamed_blocks < plan.num_blocks:
            start = P + streamed_blocks * L
            block = x[0, start:start + L]
            if bool((block == mask_id).any()):
                break
            streamer.put(block.to("cpu", copy=True))
            streamed_blocks += 1

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.num_blocks * plan.steps_per_block, desc="diffusion steps", leave=False)

    try:
        for block in range(plan.num_blocks):
            block_end = (block + 1) * L  # in generated-region coordinates
            # Masked positions up to the end of this block (a position left masked by a shift across an earlier
            # block boundary stays eligible, as masked positions of earlier blocks do in LLaDA's reference sampler).
            masked = x[:, P:P + block_end] == mask_id
            schedule = _block_schedule(masked.sum(-1), plan.steps_per_block)
            cache = None
            if config.kv_cache is not None:  # positions before the first masked one are final for this block
                first = masked.any(dim=0).nonzero()
                start = max(P + (int(first[0]) if len(first) else block_end) - plan.shift, 0)
                cache = _BlockCache(config.kv_cache, start, P + block_end)
            for step in range(plan.steps_per_block):
                masked = x[:, P:P + block_end] == mask_id
                left = masked.sum(-1)
                if config.threshold is None and config.factor is None:
                    planned = schedule[:, step] if config.schedule == "llada" else _dream_count(
                        left, step, plan.steps_per_block, config.schedule_eps)
                    scheduled = torch.minimum(planned, left)
                    active = scheduled > 0
                else:
                    scheduled = None
                    active = left > 0
                if not bool(active.any()):
                    if scheduled is None:
                        break  # the block is full: go on with the next one
                    continue  # nothing to commit at this step: no model call
                # Rows with nothing to commit are left out of the forward (rows do not interact); with a cache every
                # row runs, since the cache holds them all (a row with nothing to commit commits nothing).
                index = None if cache is not None or bool(active.all()) else active.nonzero().flatten()
                sub = slice(None) if index is None else index

                def window_logits(ids, window, sub=sub):
                    mask = None if plan.attention_mask is None else plan.attention_mask[sub]
                    return _guided_logits(model, config, ids, mask, plan.position_ids[sub], window, P, cache, counts,
                                          plan.shift)

                new_rows = _denoise_step(
                    window_logits,
                    config,
                    x[sub],
                    plan.generators if index is None else [plan.generators[i] for i in index.tolist()],
                    masked[sub],
                    None if scheduled is None else scheduled[sub],
                    P,
                    block_end,
                    plan.steps_per_block - step,
                )
                counts["calls"] += 1
                x[sub] = new_rows
                if config.stop_at_eos and eos_fill is not None:
                    _finish_rows_at_eos(x[:, P:], plan.eos_ids, mask_id, eos_fill)
                if history is not None:
                    history.append(x.to("cpu", copy=True))
                if step_callback is not None:
                    step_callback(step_count, x.clone())
                step_count += 1
                if bar is not None:
                    bar.update(1)
                stream_finished_blocks()
            if config.stop_at_eos and not bool((x[:, P:] == mask_id).any()):
                break
        stream_finished_blocks()
        if streamer is not None:
            streamer.end()
    finally:
        if bar is not None:
            bar.close()

    if config.return_dict_in_generate:
        return MDLMGenerateOutput(sequences=x, num_model_calls=counts["calls"], num_positions=counts["positions"],
                                  history=history)
    return x


def _finish_rows_at_eos(gen: torch.Tensor, eos_ids, mask_id, eos_fill):
    """Fill with EOS the remaining mask tokens of every row that has committed an EOS after a committed prefix."""
    is_eos = torch.isin(gen, torch.tensor(eos_ids, device=gen.device))
    committed_prefix = (gen != mask_id).long().cumprod(dim=-1).bool()
    done = (is_eos & committed_prefix).any(dim=-1)
    if bool(done.any()):
        fill = done[:, None] & (gen == mask_id)
        gen.masked_fill_(fill, eos_fill)


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}  # per model class: inspected once, not at every step


def _accepts_logits_to_keep(model_class) -> bool:
    if model_class not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[model_class] = "logits_to_keep" in inspect.signature(model_class.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[model_class]


class _BlockCache:
    """The KV cache of one block (docs/objective.md §6, Fast-dLLM arXiv 2505.22618): the block-start forward fills
    it; later steps feed positions [start, end of canvas) ("prefix", against the cached positions before `start`)
    or [start, block_end) ("dual", overwriting their entries, against everything else cached)."""

    def __init__(self, mode: str, start: int, block_end: int):
        self.mode, self.start, self.block_end = mode, start, block_end
        self.cache = None

    def logits(self, model, ids, mask, positions, window, counts):
        if self.cache is None:  # block start: the whole canvas, every position's keys and values cached
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=window)
            self.cache = out.past_key_values
            if self.mode == "prefix":
                self.cache = _cache_prefix(self.cache, self.start)
            counts["positions"] += ids.numel()
            return out.logits
        stop = ids.shape[1] if self.mode == "prefix" else self.block_end
        fed = slice(self.start, stop)
        out = model(input_ids=ids[:, fed], attention_mask=mask, position_ids=positions[:, fed],
                    past_key_values=self.cache, use_cache=self.mode == "dual",
                    cache_position=torch.arange(self.start, stop, device=ids.device),
                    logits_to_keep=slice(window.start - self.start, window.stop - self.start))
        counts["positions"] += ids.shape[0] * (stop - self.start)
        return out.logits


def _cache_prefix(cache, length: int):
    """A new cache with the first `length` positions of every layer of `cache`."""
    prefix = type(cache)()
    for index, layer in enumerate(cache.layers):
        prefix.update(layer.keys[:, :, :length], layer.values[:, :, :length], index)
    return prefix


def _guided_logits(model, config, x, attention_mask, positions, window, P, cache, counts, shift=0):
    """Float logits predicting the tokens of `window` for the rows of `x`: one model call (with the unconditional rows
    of classifier-free guidance in the same batch), through the block's KV cache when there is one. With next-token
    alignment (`shift` 1) they are the model's outputs one position earlier; position 0 uses its own (as Dream)."""
    rows = x.shape[0]
    target = window
    if shift:
        window = slice(max(window.start - shift, 0), window.stop - shift)
    if config.cfg_scale > 0:  # classifier-free guidance with a masked prompt (LLaDA, arXiv 2502.09992; docs §6)
        uncond = x.clone()
        uncond[:, :P] = config.mask_token_id
        x = torch.cat([x, uncond], dim=0)
        attention_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask], dim=0)
        positions = torch.cat([positions, positions], dim=0)
    if cache is not None:
        logits = cache.logits(model, x, attention_mask, positions, window, counts)
    else:
        counts["positions"] += x.numel()
        if _accepts_logits_to_keep(type(model)):  # project only the window onto the vocabulary
            logits = model(input_ids=x, attention_mask=attention_mask, logits_to_keep=window).logits
        else:
            logits = model(input_ids=x, attention_mask=attention_mask).logits[:, window]
    if shift and target.start < shift:  # position 0 predicts itself
        logits = torch.cat([logits[:, :1], logits], dim=1)
    if config.cfg_scale > 0:
        cond, unc = logits[:rows].float(), logits[rows:].float()
        return unc + (config.cfg_scale + 1) * (cond - unc)
    return logits.float()


def _check_finite(logits, x0, window):
    """A NaN or +inf logit wins the argmax, and a row of -inf has a -inf maximum: checking the W proposals' logits
    finds a broken model at the cost of W values, not W x V."""
    if bool(torch.isfinite(logits.gather(-1, x0.unsqueeze(-1))).all()):
        return
    bad = (~torch.isfinite(logits)).nonzero()[0].tolist()
    raise ValueError(f"the model returned a non-finite logit ({logits[tuple(bad)].item()}) for row {bad[0]}, "
                     f"canvas position {window.start + bad[1]}, token {bad[2]}: its weights or inputs are broken "
                     "(e.g. a half-precision overflow); check_logits=False skips this check")


def _denoise_step(window_logits, config, x, generators, masked, scheduled, P, block_end, steps_left):
    """One model call for the rows of `x`; returns their updated canvases.

    `window_logits(x, window)` gives the float logits of the canvas positions `window`; `masked` (B, block_end):
    mask positions of the generated region up to the end of the current block; `scheduled` (B,): tokens to commit
    per row (None with `threshold` or `factor`); `steps_left`: steps left in the block, this one included.
    """
    mask_id = config.mask_token_id
    rows = x.shape[0]
    temperature = float(config.temperature)

    # Only positions from the first masked one (over these rows) to the block end can change.
    first = int(masked.any(dim=0).nonzero()[0])
    window = slice(P + first, P + block_end)
    w_masked = masked[:, first:]
    logits = window_logits(x, window)

    # Adjustments that the scores see too (as LLaDA's EOS switch does).
    eos_ids = _as_id_list(config.eos_token_id, "eos_token_id")
    if eos_ids and (config.suppress_eos or config.eos_penalty):
        eos_index = torch.tensor(eos_ids, device=logits.device)
        if config.suppress_eos:
            logits[..., eos_index] = float("-inf")
        else:
            logits[..., eos_index] -= config.eos_penalty
    if config.suppress_slack and config.slack_token_id is not None:
        logits[..., config.slack_token_id] = float("-inf")

    # Proposals: never the mask token itself.
    choice = logits.clone()
    choice[..., mask_id] = float("-inf")
    if temperature == 0:
        x0 = choice.argmax(dim=-1)
    else:
        choice = _filter_logits(choice, config.top_k, config.top_p, temperature).double()
        for r in range(rows):
            where = w_masked[r].nonzero().flatten()
            u = torch.rand((where.numel(), choice.shape[-1]), generator=generators[r], dtype=torch.float64,
                           device=choice.device)
            # Gumbel-max at this temperature: argmax(logits - T * log(-log u)), in float64: lower precision
            # truncates the Gumbel noise and lowers the sampling temperature (arXiv 2409.02908; docs §6).
            choice[r, where] -= temperature * torch.log(-torch.log(u))
        x0 = choice.argmax(dim=-1)

    if config.check_logits:
        _check_finite(logits, x0, window)
    if config.schedule == "dream":  # scores from the distribution after temperature, top-k and top-p (as Dream)
        scored = _filter_logits(logits / temperature if temperature > 0 else logits, config.top_k, config.top_p, 1.0)
    else:
        scored = logits
    if config.remasking == "random":
        score = torch.zeros(w_masked.shape, device=logits.device)
        for r in range(rows):
            where = w_masked[r].nonzero().flatten()
            score[r, where] = torch.rand(where.numel(), generator=generators[r], device=logits.device)
    else:
        score = _scores(torch.softmax(scored, dim=-1), x0, config.remasking, dream=config.schedule == "dream")
    score = score.masked_fill(~w_masked, float("-inf"))

    left = w_masked.sum(-1)
    if scheduled is not None:
        k = torch.minimum(scheduled, left)
    else:
        # Fast-dLLM's parallel decoding (arXiv 2505.22618), with at least enough to finish within the step budget:
        # every score that reaches the threshold, or the largest n with (n + 1)(1 - c_n) < factor for the sorted
        # scores c_1 >= c_2 >= ... (a product that grows with n, so the passing ranks are a prefix).
        needed = (left + steps_left - 1) // steps_left
        if config.factor is not None:
            best = score.sort(dim=-1, descending=True).values
            ranks = torch.arange(1, best.shape[1] + 1, device=best.device)
            passing = ((ranks + 1) * (1 - best) < config.factor).sum(-1)
        else:
            passing = (score >= config.threshold).sum(-1)
        k = torch.minimum(torch.maximum(passing, needed), left)

    # The k best scores of each row; equal scores go to the leftmost position (a stable sort), so that the choice
    # never depends on the window's width or on the other rows (torch.topk leaves the order of ties unspecified).
    order = score.sort(dim=-1, descending=True, stable=True).indices
    ranks_kept = torch.arange(score.shape[1], device=score.device)[None, :] < k[:, None]
    chosen = torch.zeros_like(w_masked).scatter(1, order, ranks_kept)

    x = x.clone()
    w_region = x[:, window]
    if config.shift_rate > 0:
        _apply_shift(w_region, x0, chosen, w_masked, config.shift_rate, generators, x[:, P + block_end:], mask_id)
    else:
        w_region[chosen] = x0[chosen]
    return x


def _apply_shift(w_region, x0, chosen, w_masked, rate, generators, beyond, mask_id):
    """Commit the chosen proposals, each moved with probability `rate` to an adjacent still-masked position.

    The right neighbour is tried first, then the left one. The right neighbour of the last position of the window
    is the first position after it (`beyond`, the rest of the canvas, updated in place).
    """
    width = w_region.shape[1]
    for r in range(w_region.shape[0]):
        positions = chosen[r].nonzero().flatten().tolist()
        if not positions:
            continue
        draws = torch.rand(len(positions), generator=generators[r], device=w_region.device).tolist()
        free = (w_masked[r] & ~chosen[r]).tolist()
        free_beyond = beyond.shape[1] > 0 and bool(beyond[r, 0] == mask_id)
        tokens = x0[r].tolist()
        for pos, u in zip(positions, draws):
            token = tokens[pos]
            if u < rate:
                if pos + 1 < width and free[pos + 1]:
                    free[pos + 1] = False
                    w_region[r, pos + 1] = token
                    continue
                if pos + 1 == width and free_beyond:
                    free_beyond = False
                    beyond[r, 0] = token
                    continue
                if pos > 0 and free[pos - 1]:
                    free[pos - 1] = False
                    w_region[r, pos - 1] = token
                    continue
            w_region[r, pos] = token


__all__ = ["MDLMGenerationConfig", "MDLMGenerationMixin", "MDLMGenerateOutput", "strip_generation",
           "GENERATION_FIELDS", "REMASKING_STRATEGIES", "logits_for_tokens", "mix_seed"]
