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
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from transformers import GenerationConfig
from transformers.generation import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList
from transformers.utils import ModelOutput, logging

logger = logging.get_logger(__name__)

REMASKING_STRATEGIES = ("low_confidence", "random", "entropy", "margin", "left_to_right")
KV_CACHE_MODES = ("prefix", "dual")
SCHEDULES = ("llada", "dream", "block")
BLOCK_ALIGNMENTS = ("canvas", "absolute")

# Every setting `generate` uses: name -> (type, default). The first group is ours; the second one are fields of
# transformers' GenerationConfig that we also use (with our defaults). `eos_token_id` may also be a list.
_DIFFUSION_FIELDS = {
    "steps": (int, None),
    "block_length": (int, None),
    "block_alignment": (str, "canvas"),
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
    "kv_cache_refresh": (int, None),
    "sync_interval": (int, 1),
    "compile": (bool, False),
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
# transformers' decoding settings at values that change nothing (what frameworks pass by habit: num_beams=1, ...).
_NEUTRAL_TRANSFORMERS_VALUES = {
    "num_beams": 1, "num_beam_groups": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "typical_p": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "diversity_penalty": 0.0, "min_length": 0, "min_new_tokens": 0,
    "min_p": 0.0, "guidance_scale": 1.0,
}
# Settings that change how fast or what is returned in transformers, never which tokens: accepted, unused.
_HARMLESS_TRANSFORMERS_FIELDS = {"use_cache", "decoder_start_token_id", "transformers_version", "_from_model_config"}


def _leaves_decoding_unchanged(name, value) -> bool:
    return (value is None or value is False or name in _HARMLESS_TRANSFORMERS_FIELDS
            or _NEUTRAL_TRANSFORMERS_VALUES.get(name, object()) == value)


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
        block_alignment (`str`, defaults to "canvas"): "canvas": the blocks tile the generated canvas from its start
            (LLaDA). "absolute" (block diffusion: LLaDA2, SDAR, and every model with `config.block_size`, whose
            attention blocks the sampler's must be): block k holds the token positions [k * block_length,
            (k + 1) * block_length) of each row, counted over its real tokens, so the first block completes the
            prompt's last partial block and the last one runs past `max_new_tokens` to its end (those extra tokens
            are generated and dropped). `max_new_tokens` need not be a multiple of `block_length`; each block, partial
            or not, gets `steps // ceil(max_new_tokens / block_length)` steps. Rows of a left-padded batch have
            their own block boundaries; each gets what it gets alone.
        schedule (`str`, defaults to "llada"): how many tokens each step commits, the family's own rule.
            "llada": `floor(masked / steps)` per step plus one in the first `masked % steps` steps of a block, and
            scores from the model's distribution. "dream" (Dream's sampler, set by its converter): with timesteps
            `linspace(1, schedule_eps, steps + 1)`, step i commits `int(m * (1 - t[i+1] / t[i]))` of the `m` masked
            positions (all of them at the last step), and scores come from the distribution after temperature,
            top-k and top-p (so the filters change the order even at temperature 0); its entropy score is
            `exp(sum p log(p + 1e-10))`.
            "block" (LLaDA2, SDAR): step i commits its share of an even split of `block_length` over the block's
            steps (`block_length // steps`, plus one in the first `block_length % steps` steps), capped by what is
            left, so a partial block finishes in fewer steps; with `threshold`, a step commits every score above it
            (strictly) and never fewer than that share; scores come from the distribution after temperature, top-k
            and top-p, as in "dream".
        schedule_eps (`float`, defaults to 1e-3): the last timestep of the "dream" schedule.

    Choosing tokens:
        temperature (`float`, defaults to 0.0): 0 takes the argmax; > 0 samples by Gumbel-max at that temperature.
        top_k (`int`, *optional*), top_p (`float` in (0, 1], *optional*): restrict sampling to the k most likely
            tokens / to the nucleus of mass `top_p` (of the distribution at `temperature`).
        remasking (`str`, defaults to "low_confidence"): how proposals are ranked for committing.
            "low_confidence": probability of the proposed token; "random": a uniform random number;
            "entropy": negative entropy of the predicted distribution (scored as `exp(-entropy)`, in (0, 1]);
            "margin": probability of the best token minus that of the second best; "left_to_right": the leftmost
            masked positions first (SDAR's "sequential"). Scores use the model's distribution before temperature,
            top-k and top-p (but see `schedule`). Equal scores: the leftmost position first.
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
            else i-1; with absolute blocks, inside the row's block); position i stays masked. "Still masked" means
            masked before the step, not chosen for commitment in this step and not already the target of another
            shift. With a KV cache ("prefix", "dual") a shift in one row can move the block's first masked column,
            where the cached calls start, so a row's approximate logits may depend on the batch
            (`kv_cache_refresh=1`, or no cache, keeps rows independent).

    Speed:
        kv_cache (`str`, *optional*): None (every step runs the whole canvas through the model: exact), "prefix"
            or "dual" (Fast-dLLM's approximate caches, arXiv 2505.22618; docs/objective.md §6). At each block start
            one full forward fills a [`CanvasCache`] with every position's keys and values; later steps of the block
            run only the block and everything after it ("prefix") or only the block ("dual") against the cache,
            writing their fresh entries into it. Works with every other option and with ragged, left-padded batches.
        kv_cache_refresh (`int`, *optional*): with a cache, every `kv_cache_refresh`-th step of a block runs the
            whole canvas again and rewrites every cached entry (a periodic refresh, as dLLM-Cache does: the stale
            entries of the suffix and the prefix are recomputed); 1 makes the cached sampler exact.
        sync_interval (`int`, defaults to 1): the step loop never waits for the device, except to learn whether a
            block finished early (with `threshold`, `factor` or `stop_at_eos`), which it reads every `sync_interval`
            steps. Larger values let an accelerator run ahead; the extra calls commit nothing, so the tokens are the
            same, only `num_model_calls` grows. Non-finite logits are reported at the end of the block.
        compile (`bool`): run the denoising step through `torch.compile(fullgraph=True)`, which fuses its
            operations into fewer kernels (torch's default mode: no CUDA graphs yet, as the step writes the KV cache
            in place); shapes are static per block, so each block shape compiles once. Dense models only (a mixture
            of experts dispatches tokens with data-dependent shapes).
        check_logits (`bool`, defaults to True): raise a clear error when the model returns NaN or infinite
            logits (instead of sampling garbage); False skips the check.

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
        settings = {name: values[name] for name in _MODEL_TOKEN_FIELDS if values.get(name) is not None}
        if values.get("block_size"):
            settings.update(block_sampling(values["block_size"]))
        config = cls(**settings)
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
        if self.block_alignment not in BLOCK_ALIGNMENTS:
            raise ValueError(f"block_alignment must be one of {BLOCK_ALIGNMENTS}, got {self.block_alignment!r}")
        absolute = self.block_alignment == "absolute"
        if absolute and self.block_length is None:
            raise ValueError("block_alignment='absolute' needs a block_length (the model's block_size)")
        if self.block_length is not None:
            if not _is_int(self.block_length) or self.block_length <= 0:
                raise ValueError(f"block_length must be a positive integer or None, got {self.block_length!r}")
            if g % self.block_length and not absolute:
                raise ValueError(f"block_length={self.block_length} must divide max_new_tokens={g}: set a "
                                 f"block_length that does (e.g. {g} for one block), a max_new_tokens that is a "
                                 f"multiple of {self.block_length}, or block_alignment='absolute'")
        num_blocks = self.num_blocks
        if self.steps is not None:
            if not _is_int(self.steps) or self.steps <= 0:
                raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
            if self.steps % num_blocks:
                raise ValueError(
                    f"steps={self.steps} must be a multiple of the number of blocks ({num_blocks} blocks of "
                    f"{self.block_length or self.max_new_tokens} in max_new_tokens={g}): each block gets "
                    "steps // num_blocks steps"
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
        if (self.threshold is not None or self.factor is not None) and self.remasking == "left_to_right":
            rule = f"threshold={self.threshold}" if self.threshold is not None else f"factor={self.factor}"
            raise ValueError(f"{rule} commits the positions whose score passes it, but remasking='left_to_right' "
                             "scores every position 1 (all would pass: a whole block per step): use low_confidence, "
                             "entropy, margin or random (or drop the rule)")
        if self.factor is not None and self.threshold is not None:
            raise ValueError(f"threshold={self.threshold} and factor={self.factor} are two rules for how many tokens "
                             "a step commits: set one of them")
        if not _is_number(self.cfg_scale) or not 0 <= self.cfg_scale < math.inf:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale!r}")
        if not _is_number(self.eos_penalty) or not math.isfinite(self.eos_penalty):
            raise ValueError(f"eos_penalty must be a finite number, got {self.eos_penalty!r}")
        if not _is_number(self.shift_rate) or not 0 <= self.shift_rate < 1:
            raise ValueError(f"shift_rate must be in [0, 1), got {self.shift_rate!r}")
        if self.kv_cache_refresh is not None and (not _is_int(self.kv_cache_refresh) or self.kv_cache_refresh < 1):
            raise ValueError(f"kv_cache_refresh must be a positive integer or None, got {self.kv_cache_refresh!r}")
        if self.kv_cache_refresh is not None and self.kv_cache is None:
            raise ValueError(f"kv_cache_refresh={self.kv_cache_refresh} refreshes a KV cache, but kv_cache is None")
        if not _is_int(self.sync_interval) or self.sync_interval < 1:
            raise ValueError(f"sync_interval must be a positive integer, got {self.sync_interval!r}")
        for name in ("suppress_eos", "stop_at_eos", "suppress_slack", "output_history", "return_dict_in_generate",
                     "check_logits", "compile"):
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
        """Blocks of the canvas; with absolute alignment, those `max_new_tokens` spans (a row may run one more)."""
        return -(-self.max_new_tokens // (self.block_length or self.max_new_tokens))

    @property
    def resolved_steps(self) -> int:
        """`steps`, or one token per step when unset (`num_blocks * block_length` with absolute alignment)."""
        if self.steps is not None:
            return self.steps
        return self.num_blocks * self.block_length if self.block_alignment == "absolute" else self.max_new_tokens


def block_sampling(block_size: int) -> dict:
    """The generation settings with which a block-diffusion model (`config.block_size`) samples its own blocks."""
    return {"block_length": block_size, "block_alignment": "absolute", "schedule": "block"}


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


class CanvasCache:
    """The sampler's KV cache: the keys and values of every canvas position, per layer, in fixed-size buffers.

    A forward with `cache=` writes the keys and values of the positions it runs (`cache_position`) in place and
    attends to every position of the canvas (the fresh entries for the positions it runs, the cached ones for the
    others). Sizes never change, so a compiled step sees the same shapes at every call.
    """

    def __init__(self, num_layers: int, length: int):
        self.length = length
        self.keys: list = [None] * num_layers
        self.values: list = [None] * num_layers

    @classmethod
    def for_model(cls, model, batch: int, length: int) -> "CanvasCache":
        """A cache allocated up front for `model` (an MDLM config: layers, key/value heads, head size)."""
        config = model.config
        cache = cls(config.num_hidden_layers, length)
        shape = (batch, config.num_key_value_heads, length, config.head_dim)
        device = model.device
        # Under autocast the projections return the autocast dtype, whatever the weights' dtype.
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else model.dtype
        for layer in range(config.num_hidden_layers):
            cache.keys[layer] = torch.zeros(shape, dtype=dtype, device=device)
            cache.values[layer] = torch.zeros(shape, dtype=dtype, device=device)
        return cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def write(self, layer: int, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Store `keys`/`values` (B, heads, Q, head_dim) at canvas `positions` (Q,); return the whole layer."""
        if self.keys[layer] is None:
            shape = (*keys.shape[:2], self.length, keys.shape[3])
            self.keys[layer], self.values[layer] = keys.new_zeros(shape), values.new_zeros(shape)
        if self.keys[layer].shape[0] != keys.shape[0]:
            raise ValueError(f"the KV cache holds a batch of {self.keys[layer].shape[0]} rows, the input has "
                             f"{keys.shape[0]}")
        self.keys[layer].index_copy_(2, positions, keys.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, positions, values.to(self.values[layer].dtype))
        return self.keys[layer], self.values[layer]


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
    def _prepare_generation_config(self, generation_config, kwargs, prompt_length=None) -> MDLMGenerationConfig:
        """The config of this call: a passed `MDLMGenerationConfig` as it is (every field), or the model's own
        updated with the fields a passed transformers `GenerationConfig` sets (its unset fields are None: the model's
        values, such as a family's schedule, stay), then `kwargs`. transformers' `do_sample` and `max_length` are
        honoured; its other decoding settings have no diffusion meaning and are refused unless they change nothing."""
        base = (generation_config if isinstance(generation_config, MDLMGenerationConfig)
                else getattr(self, "generation_config", None))
        if isinstance(base, MDLMGenerationConfig):
            config = copy.deepcopy(base)
        elif isinstance(base, GenerationConfig):
            config = MDLMGenerationConfig.from_dict(base.to_dict())
        else:
            config = MDLMGenerationConfig.from_model_config(self.config)
        settings = {}
        if generation_config is not None and not isinstance(generation_config, MDLMGenerationConfig):
            if not isinstance(generation_config, GenerationConfig):
                raise ValueError(f"generation_config must be an MDLMGenerationConfig or a transformers "
                                 f"GenerationConfig, got {type(generation_config).__name__}")
            settings.update({key: value for key, value in generation_config.to_dict().items() if value is not None})
        # None in a call means "not set" for the fields whose default is a value (temperature=None: the config's)
        settings.update({key: value for key, value in kwargs.items()
                         if value is not None or key not in GENERATION_FIELDS or GENERATION_FIELDS[key][1] is None})
        known = set(config.to_dict())
        unknown = sorted(key for key in settings if key not in known)
        if unknown:
            raise ValueError(
                f"generate() got arguments that are not generation settings: {unknown}. "
                f"See MDLMGenerationConfig for the accepted fields."
            )
        do_sample, max_length = settings.pop("do_sample", None), settings.pop("max_length", None)
        unsupported = {key: value for key, value in settings.items() if key not in GENERATION_FIELDS
                       and key not in _MODEL_TOKEN_FIELDS and not _leaves_decoding_unchanged(key, value)}
        if unsupported:
            raise ValueError(
                f"generate() got transformers settings that masked-diffusion sampling does not implement: "
                f"{unsupported}. Where transformers has a logits processor for one (RepetitionPenaltyLogitsProcessor, "
                f"MinPLogitsWarper, SuppressTokensLogitsProcessor, NoBadWordsLogitsProcessor, ...), pass it as "
                f"logits_processor=[...]; MDLMGenerationConfig lists the settings generate() uses."
            )
        if max_length is not None:
            if "max_new_tokens" in settings:
                raise ValueError(f"set max_new_tokens or max_length, not both (got {settings['max_new_tokens']} and "
                                 f"{max_length})")
            if prompt_length is not None:
                if not _is_int(max_length) or max_length <= prompt_length:
                    raise ValueError(f"max_length={max_length!r} (prompt and canvas) leaves no room after the "
                                     f"{prompt_length}-token prompt: set max_new_tokens, the canvas length")
                settings["max_new_tokens"] = max_length - prompt_length
        for key, value in settings.items():
            if key in GENERATION_FIELDS or key in _MODEL_TOKEN_FIELDS:
                setattr(config, key, value)
        if do_sample is False:  # transformers' greedy search, whatever the temperature
            config.temperature = 0.0
        elif do_sample is True and not config.temperature:  # sampling at transformers' default temperature
            config.temperature = 1.0
        for name in _MODEL_TOKEN_FIELDS:
            if getattr(config, name, None) is None and getattr(self.config, name, None) is not None:
                setattr(config, name, getattr(self.config, name))
        config.validate()
        return config

    def _checked_generation_config(self, settings: dict) -> MDLMGenerationConfig:
        """The config `generate(**settings)` would sample with, checked against this model: for callers that check
        their settings before any work (scripts, trainers, evaluations)."""
        config = self._prepare_generation_config(None, dict(settings))
        check_config_fits_model(config, self.config)
        return config

    def _get_logits_processor(self, config, logits_processor=None) -> LogitsProcessorList:
        """What changes the model's distribution (the confidence scores see it): EOS and `<slack>` controls, then
        the user's processors."""
        processors = LogitsProcessorList()
        eos_ids = _as_id_list(config.eos_token_id, "eos_token_id")
        if eos_ids and config.suppress_eos:
            processors.append(SuppressTokensProcessor(eos_ids))
        elif eos_ids and config.eos_penalty:
            processors.append(TokenPenaltyProcessor(eos_ids, config.eos_penalty))
        if config.suppress_slack and config.slack_token_id is not None:
            processors.append(SuppressTokensProcessor([config.slack_token_id]))
        for processor in logits_processor or []:
            if not callable(processor):
                raise ValueError(f"logits_processor entries must be callable as processor(input_ids, scores), got "
                                 f"{type(processor).__name__}")
            processors.append(processor)
        return processors

    def _get_logits_warper(self, config) -> LogitsProcessorList:
        """What shapes the sampling distribution only: temperature, top-k, top-p (in this order)."""
        warpers = LogitsProcessorList()
        if config.temperature > 0:
            warpers.append(TemperatureWarper(config.temperature))
        if config.top_k is not None:
            warpers.append(TopKWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPWarper(config.top_p))
        return warpers

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        generation_config: Optional[MDLMGenerationConfig] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        stopping_criteria: Optional[StoppingCriteriaList] = None,
        streamer=None,
        step_callback: Optional[Callable[[int, torch.LongTensor], Any]] = None,
        progress: bool = False,
        generator=None,
        **kwargs,
    ):
        r"""
        Fill a canvas of `max_new_tokens` mask tokens after each prompt by masked-diffusion sampling.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, prompt_length)`): the prompts, left-padded when ragged
                (right-padded prompts are left-aligned first, with a warning).
            attention_mask (`torch.Tensor` of the same shape, *optional*): 1 for prompt tokens, 0 for padding.
                The generated positions are always attended to.
            generation_config ([`MDLMGenerationConfig`], *optional*): defaults to `self.generation_config`.
            logits_processor (`LogitsProcessorList`, *optional*): processors applied after the built-in ones (EOS
                and `<slack>` controls), before proposals and confidence scores are read. Each is called as
                `processor(input_ids, scores)` with `scores` of shape `(rows * window, vocab)`, one row per position
                of the current block, and `input_ids` the canvas of the row each position belongs to (so
                transformers' processors such as `MinPLogitsWarper` work unchanged).
            stopping_criteria (`StoppingCriteriaList`, *optional*): checked after every block with the finished
                text (the prompts and the generated columns before the first one still masked in some row), as
                transformers' criteria (`StopStringCriteria`, `EosTokenCriteria`, ...) expect; generation ends when
                they hold for every row (the positions not yet filled keep the mask token, which `strip_generation`
                drops).
            streamer (`transformers.generation.BaseStreamer`, *optional*): batch size 1 only. As in transformers,
                `put` first receives the prompt (shape `(1, prompt_length)`), then each block's tokens (a 1-D
                tensor) as soon as the block is final; `end` is called last.
            step_callback (`callable`, *optional*): `step_callback(step, canvas)` after every denoising step
                (`step` counts from 0; `canvas` is a copy of the whole `(batch, length)` canvas).
            progress (`bool`): show a tqdm progress bar over the steps.
            generator (*optional*): the seed of the random choices (`temperature > 0`, `remasking="random"`,
                `shift_rate > 0`): an int, a `torch.Generator` (one seed is drawn from it), or a list with one
                int/Generator per prompt. Every random number is a hash of the row's seed (derived from the seed,
                the prompt index and the copy index of `num_return_sequences`), the step and the position, so a
                row's result never depends on the other rows of the batch. None draws the seed from torch's global
                generator.
            kwargs: any field of [`MDLMGenerationConfig`], overriding `generation_config` for this call.

        Returns:
            `torch.LongTensor` of shape `(batch * num_return_sequences, prompt_length + max_new_tokens)`: the
            prompts followed by the generated tokens; or an [`MDLMGenerateOutput`] with
            `return_dict_in_generate=True`.
        """
        prompt_length = input_ids.shape[-1] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else None
        config = self._prepare_generation_config(generation_config, kwargs, prompt_length)
        state = _prepare_state(self, config, input_ids, attention_mask, generator, streamer, step_callback)
        sampler = DiffusionSampler(self, config, state, self._get_logits_processor(config, logits_processor),
                                   self._get_logits_warper(config), StoppingCriteriaList(stopping_criteria or []))
        was_training = self.training
        self.eval()
        try:
            canvas = sampler.run(streamer, step_callback, progress)
        finally:
            if was_training:
                self.train()
        if config.return_dict_in_generate:
            return MDLMGenerateOutput(sequences=canvas, num_model_calls=state.model_calls,
                                      num_positions=state.positions_run, history=sampler.history)
        return canvas


# ----------------------------------------------------------------------------------------------------------------
# Logits processors (shape-agnostic: they act on the last, vocabulary dimension)


class SuppressTokensProcessor(LogitsProcessor):
    """Never propose these token ids (their logits become -inf)."""

    def __init__(self, token_ids):
        self.token_ids = list(token_ids)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[..., self.token_ids] = float("-inf")
        return scores


class TokenPenaltyProcessor(LogitsProcessor):
    """Subtract `penalty` from the logits of these token ids."""

    def __init__(self, token_ids, penalty: float):
        self.token_ids, self.penalty = list(token_ids), float(penalty)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[..., self.token_ids] -= self.penalty
        return scores


class TemperatureWarper(LogitsProcessor):
    def __init__(self, temperature: float):
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class TopKWarper(LogitsProcessor):
    """Keep the `top_k` largest logits (ties with the k-th included)."""

    def __init__(self, top_k: int):
        self.top_k = int(top_k)

    def __call__(self, input_ids, scores):
        if self.top_k >= scores.shape[-1]:
            return scores
        kth = scores.topk(self.top_k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, float("-inf"))


class TopPWarper(LogitsProcessor):
    """Keep the most likely tokens until their mass reaches `top_p` (the most likely token always stays)."""

    def __init__(self, top_p: float):
        self.top_p = float(top_p)

    def __call__(self, input_ids, scores):
        sorted_logits, order = scores.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= self.top_p)
        return scores.masked_fill(drop, float("-inf"))


_OWN_PROCESSORS = (SuppressTokensProcessor, TokenPenaltyProcessor, TemperatureWarper, TopKWarper, TopPWarper)


def _apply_processors(processors, canvas, logits):
    """Run (B, W, V) logits through `processors`, each seeing (B * W, V) scores (see `generate`)."""
    if not processors:
        return logits
    rows, width, vocab = logits.shape
    input_ids = None
    if not all(isinstance(p, _OWN_PROCESSORS) for p in processors):  # ours never read the canvas
        input_ids = canvas[:, None].expand(rows, width, canvas.shape[1]).reshape(rows * width, -1)
    scores = logits.reshape(rows * width, vocab)
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores.reshape(rows, width, vocab)


# ----------------------------------------------------------------------------------------------------------------
# Counter-based random numbers: a hash of (row seed, step, stream, position, token), the same whatever the batch


_STREAM_GUMBEL, _STREAM_REMASK, _STREAM_SHIFT = 1, 2, 3
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MIX_START = 0x243F6A8885A308D3


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix_tensor(state: torch.Tensor, part) -> torch.Tensor:
    """`mix_seed`'s step on int64 tensors: SplitMix64's finaliser of (state xor part), wrapping like uint64."""
    x = (state ^ part) + _signed(_GOLDEN)
    x = (x ^ _shift_right(x, 30)) * _signed(_MIX1)
    x = (x ^ _shift_right(x, 27)) * _signed(_MIX2)
    return x ^ _shift_right(x, 31)


def _row_keys(row_seeds: torch.Tensor, step: torch.Tensor, stream: int, positions: torch.Tensor) -> torch.Tensor:
    """(B, W) int64: the hash state of `mix_seed(row_seed, step, stream, position, ...)` before its last parts."""
    state = _mix_tensor(torch.full_like(row_seeds, _signed(_MIX_START)), row_seeds)
    state = _mix_tensor(_mix_tensor(state, step), stream)
    return _mix_tensor(state[:, None], positions[None, :])


def _to_uniform(hashed: torch.Tensor) -> torch.Tensor:
    """53 bits of a hash -> float64 uniform in (0, 1)."""
    return (_shift_right(hashed, 11).double() + 0.5) * 2.0**-53


def counter_uniform(row_seeds, step, stream, positions, vocab_size=None) -> torch.Tensor:
    """Uniforms in (0, 1), float64: (B, W) per row and position, or (B, W, V) per token with `vocab_size`.

    Entry (b, w[, v]) is `((mix_seed(row_seeds[b], step, stream, positions[w][, v]) >> 10) + 0.5) / 2**53`
    (`mix_seed` computed on the device), so it depends on nothing but its own coordinates.
    """
    keys = _row_keys(row_seeds, step, stream, positions)
    if vocab_size is not None:
        tokens = torch.arange(vocab_size, device=keys.device)
        keys = _mix_tensor(keys[..., None], tokens)
    return _to_uniform(keys)


# ----------------------------------------------------------------------------------------------------------------
# Input checks and the sampler's state (all checks before the first model call)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too


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
class SamplerState:
    """What one `generate` call works on: the canvas and everything fixed for the call, plus its counters."""

    canvas: torch.Tensor  # (B, P + G): the (repeated) prompts, then mask tokens
    attention_mask: Optional[torch.Tensor]  # (B, P + G), or None without padding
    position_ids: torch.Tensor  # (B, P + G): rotary positions, counted over real tokens as the model does
    row_seeds: torch.Tensor  # (B,) int64: each row's random stream
    prompt_length: int
    gen_length: int  # max_new_tokens: the columns returned after the prompt (absolute blocks may run past them)
    num_blocks: int
    block_length: int
    steps_per_block: int
    shift: int  # 1 when position i predicts the token at i + 1 (the model config's prediction_alignment)
    eos_ids: list
    block_offsets: Optional[list] = None  # absolute alignment: each row's real prompt length % block_length
    cache: Optional[CanvasCache] = None
    model_calls: int = 0
    positions_run: int = 0  # token positions run through the model, summed over calls and rows


def _prepare_state(model, config, input_ids, attention_mask, generator, streamer, step_callback) -> SamplerState:
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
    if isinstance(attention_mask, GenerationConfig):  # transformers' generate takes it second; ours, the mask
        raise ValueError("pass the generation config as generation_config=...: generate's second argument is the "
                         "attention_mask")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
            raise ValueError(f"attention_mask has shape {shape}, expected the shape of input_ids {tuple(input_ids.shape)}")
        # one read of the device for the checks and the longest real prompt
        not_binary, right_padded, longest = torch.stack([
            ((attention_mask != 0) & (attention_mask != 1)).any().long(),
            (attention_mask[:, 1:] < attention_mask[:, :-1]).any().long(),
            (attention_mask != 0).long().sum(-1).max()]).tolist()
        if not_binary:
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        if right_padded:
            # Padding after a token: the canvas must follow each row's last token, so the rows are left-aligned
            # first (a stable sort puts a row's padding before its tokens, which keep their order).
            logger.warning_once("generate() got right-padded prompts and left-aligns them (the returned prompts are "
                                "left-padded); tokenizer.padding_side = 'left' avoids this")
            order = torch.sort(attention_mask.long(), dim=1, stable=True).indices
            input_ids, attention_mask = input_ids.gather(1, order.to(input_ids.device)), attention_mask.gather(1, order)
    elif batch > 1 and prompt_length and config.pad_token_id is not None and bool(
            (input_ids[:, [0, -1]] == config.pad_token_id).any()):
        logger.warning_once(f"input_ids has the pad token ({config.pad_token_id}) at an edge but no attention_mask "
                            "was given: padding is read as prompt tokens; pass the tokenizer's attention_mask")

    gen_length = config.max_new_tokens
    # positions count real tokens only: left padding takes none
    longest = prompt_length if attention_mask is None else longest
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and longest + gen_length > max_positions:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {gen_length} = {longest + gen_length} exceeds "
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
    if config.kv_cache is not None and "cache_position" not in inspect.signature(type(model).forward).parameters:
        raise ValueError(f"kv_cache={config.kv_cache!r} needs a model whose forward takes a cache and "
                         f"cache_position; {type(model).__name__} does not")
    check_config_fits_model(config, model.config)
    device = model.device
    row_seeds = torch.tensor(_row_seeds(generator, batch, config.num_return_sequences), dtype=torch.long,
                             device=device)

    # The canvas: (repeated) prompts, then mask tokens.
    prompts = input_ids.to(device=device, dtype=torch.long)
    if config.num_return_sequences > 1:
        prompts = prompts.repeat_interleave(config.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
    block_length = config.block_length or gen_length
    num_blocks, offsets, width = config.num_blocks, None, gen_length
    if config.block_alignment == "absolute":  # each row's blocks start at multiples of block_length of its own positions
        real = [prompt_length] * rows if attention_mask is None else attention_mask.sum(-1).tolist()
        offsets = [int(length) % block_length for length in real]
        num_blocks = max(-(-(offset + gen_length) // block_length) for offset in offsets)
        width = max(num_blocks * block_length - offset for offset in offsets)  # to the end of every row's last block
    canvas = torch.full((rows, prompt_length + width), config.mask_token_id, dtype=torch.long, device=device)
    canvas[:, :prompt_length] = prompts
    full_mask = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, width)], dim=1)
    if full_mask is None:
        positions = torch.arange(canvas.shape[1], device=device)[None].expand(rows, -1)
    else:
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    if config.kv_cache is not None:  # guidance runs the unconditional rows in the same batch
        cache_rows = rows * (2 if config.cfg_scale > 0 else 1)
        cache = (CanvasCache.for_model(model, cache_rows, canvas.shape[1])
                 if hasattr(model.config, "num_key_value_heads") else CanvasCache(0, canvas.shape[1]))
    return SamplerState(
        canvas=canvas,
        attention_mask=full_mask,
        position_ids=positions,
        row_seeds=row_seeds,
        prompt_length=prompt_length,
        gen_length=gen_length,
        num_blocks=num_blocks,
        block_length=block_length,
        steps_per_block=config.resolved_steps // config.num_blocks,
        block_offsets=offsets,
        shift=getattr(model.config, "prediction_shift", 0),
        eos_ids=eos_ids,
        cache=cache,
    )


def check_config_fits_model(config, model_config) -> None:
    """Raise a ValueError for a generation config that this model's architecture cannot sample with."""
    model_block = getattr(model_config, "block_size", None)
    if model_block is not None and (config.block_alignment != "absolute" or config.block_length != model_block):
        raise ValueError(f"this model attends in blocks of block_size={model_block}, so it samples with "
                         f"block_alignment='absolute' and block_length={model_block}; got block_alignment="
                         f"{config.block_alignment!r} and block_length={config.block_length}")
    if config.compile and getattr(model_config, "num_experts", 0):
        raise ValueError("compile=True needs a dense model: a mixture of experts dispatches tokens to experts with "
                         "data-dependent shapes, which a full-graph compile cannot hold")


def _seed_of(source) -> int:
    if isinstance(source, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=source, device=source.device).item())
    if _is_int(source):
        return int(source) & _MASK64
    raise ValueError(f"generator must be an int seed, a torch.Generator or a list of them, got {type(source).__name__}")


def _row_seeds(generator, batch, copies) -> list:
    """One 63-bit seed per output row, mixed from (prompt seed, copy index); the prompt seed is the list's entry, or
    (seed, prompt index) mixed."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} entries for a batch of {batch} prompts")
        prompt_seeds = [_seed_of(g) for g in generator]
    else:
        base = _seed_of(generator) if generator is not None else int(torch.randint(0, 2**62, (1,)).item())
        prompt_seeds = [mix_seed(base, index) for index in range(batch)]
    return [mix_seed(seed, copy_index) for seed in prompt_seeds for copy_index in range(copies)]


# ----------------------------------------------------------------------------------------------------------------
# The sampler


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


def _dream_fractions(steps: int, eps: float) -> torch.Tensor:
    """(steps,) float32: the share of the masked positions that Dream's step i commits, `1 - t[i+1] / t[i]` for
    `t = linspace(1, eps, steps + 1)` (its last step commits the rest), computed in float32 as Dream does."""
    times = torch.linspace(1, eps, steps + 1)
    return 1 - times[1:] / times[:-1]


def _dream_counts(left: torch.Tensor, fractions: torch.Tensor, step, steps: int) -> torch.Tensor:
    """Tokens Dream's schedule commits at `step` (a tensor) out of `left` masked positions."""
    planned = (left.float() * fractions.index_select(0, step.reshape(1))).long()
    return torch.where(step == steps - 1, left, planned)


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


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}  # per model class: inspected once, not at every step


def _accepts_logits_to_keep(model_class) -> bool:
    if model_class not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[model_class] = "logits_to_keep" in inspect.signature(model_class.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[model_class]


class DiffusionSampler:
    """Runs one `generate` call: the block loop on the host, the denoising step on the device.

    The host decides, once per block, what the block needs (its commit schedule, the window of positions that can
    still change, which steps commit nothing and are skipped, which canvas positions each call runs); the step
    itself (`denoise_step`) is tensor operations only, compiled with `compile=True`. The host reads the device
    only at block boundaries and, when a block can end early, every `sync_interval` steps.
    """

    def __init__(self, model, config, state: SamplerState, processors, warpers, stopping_criteria):
        self.model, self.config, self.state = model, config, state
        self.processors, self.warpers, self.stopping_criteria = processors, warpers, stopping_criteria
        self.history = [] if config.output_history else None
        self.mask_id = config.mask_token_id
        self.dream = config.schedule == "dream"
        self.warped_scores = config.schedule in ("dream", "block")  # scores from the distribution tokens are drawn from
        self.fractions = _dream_fractions(state.steps_per_block, config.schedule_eps).to(state.canvas.device)
        # Ending a block early needs the host: only the rules whose commit counts depend on the model's outputs.
        self.can_end_early = config.threshold is not None or config.factor is not None or config.stop_at_eos
        self.eos_ids = torch.tensor(state.eos_ids, dtype=torch.long, device=state.canvas.device)
        # On the CPU reading a value costs nothing, so each step runs the vocabulary projection and the choice only
        # from the first position still masked (the window shrinks as the block fills; the tokens are the same).
        # On an accelerator, or compiled, the window stays the block's, so that no step waits for the device.
        self.narrow = values_are_free(state.canvas) and not config.compile
        self.stale_from = 0  # absolute blocks with a cache: the first column whose cached keys may be out of date
        self.step_fn = self.denoise_step
        if config.compile:
            self.step_fn = torch.compile(self.denoise_step, fullgraph=True)

    # ---------------------------------------------------------------------------------------------------- host loop
    def run(self, streamer, step_callback, progress):
        state, canvas, P = self.state, self.state.canvas, self.state.prompt_length
        if streamer is not None:
            streamer.put(canvas[:, :P].to("cpu", copy=True))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=state.num_blocks * state.steps_per_block, desc="diffusion steps", leave=False)
        streamed = 0
        try:
            for block in range(state.num_blocks):
                self._run_block(block, step_callback, bar)
                streamed = self._stream(streamer, streamed)
                if self.stopping_criteria and bool(self.stopping_criteria(self._finished_prefix(), None).all()):
                    break
                if self.config.stop_at_eos and not bool((canvas[:, P:P + state.gen_length] == self.mask_id).any()):
                    break
            if streamer is not None:
                streamer.end()
        finally:
            if bar is not None:
                bar.close()
        return canvas[:, :P + state.gen_length]

    def _finished_prefix(self):
        """The canvas up to its first column still masked in some row: the text that is final, as an autoregressive
        model's `input_ids` would be (what transformers' stopping criteria read; one read of the device)."""
        state, P = self.state, self.state.prompt_length
        masked = (state.canvas[:, P:P + state.gen_length] == self.mask_id).any(dim=0)
        end = P + (int(masked.int().argmax()) if bool(masked.any()) else state.gen_length)
        return state.canvas[:, :end]

    def _block_span(self, block):
        """(first canvas column the block's tokens may lie in, its end, the (B, width) columns each row may commit in
        it or None for all). Canvas alignment: up to the block's end, from the first generated column (a position
        left masked by a shift across an earlier block boundary stays eligible, as in LLaDA's sampler). Absolute
        alignment: each row's own block, [k * block_length, (k + 1) * block_length) of its real positions."""
        state, P, L = self.state, self.state.prompt_length, self.state.block_length
        if state.block_offsets is None:
            return P, P + (block + 1) * L, None
        starts = self._row_block_starts(block)
        ends = [start + L for start in starts]
        starts = [max(P, start) for start in starts]  # the prompt's part of a block is not committed
        begin, end = min(starts), max(ends)
        columns = torch.arange(begin, end)
        eligible = (columns >= torch.tensor(starts)[:, None]) & (columns < torch.tensor(ends)[:, None])
        return begin, end, eligible.to(state.canvas.device)

    def _run_block(self, block, step_callback, bar):
        state, config, canvas, P = self.state, self.config, self.state.canvas, self.state.prompt_length
        steps, device = state.steps_per_block, canvas.device
        begin, block_end, eligible = self._block_span(block)
        # One read per block: the positions this block may commit.
        masked = canvas[:, begin:block_end] == self.mask_id
        masked = (masked if eligible is None else masked & eligible).cpu()
        columns = masked.any(dim=0).tolist()
        if not any(columns):
            return
        first = columns.index(True)
        # The positions that can change: from the first one masked (canvas alignment: at most a block back).
        if eligible is None:
            window = (min(begin + first, block_end - state.block_length), block_end)
        else:
            window, eligible = (begin + first, block_end), eligible[:, first:]
        # A shift may move a commit one position past the window, except with absolute blocks (each row's own block).
        beyond = canvas[:, window[1]:window[1] + (1 if eligible is None else 0)]
        # Steps at which no row commits are skipped (no model call). The commit counts are known ahead for the
        # fixed schedules, unless a shift moves commits out of the block (Dream's counts then change).
        plan = None if config.threshold is not None or config.factor is not None else self._commit_plan(masked.sum(-1))
        skippable = plan is not None and not (self.dream and config.shift_rate > 0)
        active = plan.any(dim=0).tolist() if skippable else [True] * steps
        plan_device = None if plan is None else plan.to(device)
        calls = {kind: self._call_inputs(block, window, block_end, kind)
                 for kind in (("full", "first", "step") if state.cache is not None else ("full",))}
        step_inputs = self._window_inputs(window, block_end)  # the static window, or narrowed at every step
        block_step = torch.zeros((), dtype=torch.long, device=device)
        global_step = torch.zeros((), dtype=torch.long, device=device)
        finite = torch.ones((canvas.shape[0], block_end - window[0]), dtype=torch.bool, device=device)
        cache_filled = False
        for step in range(steps):
            if not active[step]:
                continue
            if self.narrow:  # free on the CPU: only from the first position still masked in some row
                still = canvas[:, window[0]:block_end] == self.mask_id
                still = (still if eligible is None else still & eligible).any(dim=0)
                if not bool(still.any()):
                    break  # the block is full: no later step would commit anything
                step_inputs = self._window_inputs((window[0] + int(still.nonzero()[0]), block_end), block_end)
            kind = "full" if state.cache is None else "first" if not cache_filled else "full" if (
                config.kv_cache_refresh is not None and step % config.kv_cache_refresh == 0) else "step"
            fed, call = calls[kind]
            start, region, gen_positions, window_positions = step_inputs
            kept = (window_positions - state.shift).clamp(min=0) - fed[0]
            block_step.fill_(step)
            global_step.fill_(block * steps + step)
            in_block = None if eligible is None else eligible[:, start - window[0]:]
            new_region, new_beyond, step_finite = self.step_fn(canvas, canvas[:, fed[0]:fed[1]], *call, kept, region,
                                                               beyond, in_block, gen_positions, plan_device,
                                                               block_step, global_step)
            region.copy_(new_region)
            beyond.copy_(new_beyond)
            finite[:, start - window[0]:] &= step_finite
            cache_filled = True
            state.model_calls += 1
            state.positions_run += canvas.shape[0] * (2 if config.cfg_scale > 0 else 1) * (fed[1] - fed[0])
            if config.stop_at_eos:
                _finish_rows_at_eos(canvas[:, P:], self.eos_ids, self.mask_id)
            if self.history is not None:
                self.history.append(canvas.to("cpu", copy=True))
            if step_callback is not None:
                step_callback(state.model_calls - 1, canvas.clone())
            if bar is not None:
                bar.update(1)
            if self.can_end_early and not self.narrow and (step + 1) % config.sync_interval == 0 and step + 1 < steps:
                left = canvas[:, window[0]:block_end] == self.mask_id
                if not bool((left if eligible is None else left & eligible).any()):
                    break
        if state.block_offsets is not None and cache_filled:  # this block's last commits are not in the cache yet
            self.stale_from = self._block_start(block)
        if config.check_logits and not bool(finite.all()):
            row, column = (~finite).nonzero()[0].tolist()
            raise ValueError(f"a non-finite logit (NaN or inf) for row {row}, canvas position {window[0] + column} "
                             f"(block {block}): the model's weights or inputs are broken (e.g. a half-precision "
                             "overflow), or a logits processor or an extreme setting (temperature, cfg_scale) made "
                             "it; check_logits=False skips this check")

    def _window_inputs(self, window, block_end):
        """(start, the canvas view of the window, its positions in the generated region, its canvas positions)."""
        device = self.state.canvas.device
        positions = torch.arange(window[0], block_end, device=device)
        return window[0], self.state.canvas[:, window[0]:block_end], positions - self.state.prompt_length, positions

    def _commit_plan(self, counts: torch.Tensor) -> torch.Tensor:
        """(B, steps) tokens each row commits at each step of the block (host tensor)."""
        steps = self.state.steps_per_block
        if self.config.schedule == "block":  # the even split of the whole block, until the masked ones run out
            share = _block_schedule(torch.tensor([self.state.block_length]), steps).expand(counts.shape[0], -1)
            done = torch.minimum(share.cumsum(-1), counts[:, None])
            return torch.diff(done, dim=-1, prepend=torch.zeros_like(done[:, :1]))
        if not self.dream:
            return _block_schedule(counts, steps)
        plan, left = torch.zeros(counts.shape[0], steps, dtype=torch.long), counts.clone()
        fractions = self.fractions.cpu()
        for step in range(steps):
            plan[:, step] = left if step == steps - 1 else (left.float() * fractions[step]).long()
            left -= plan[:, step]
        return plan

    def _row_block_starts(self, block):
        """Each row's canvas column where its block `block` starts (with absolute blocks, possibly in the prompt)."""
        state = self.state
        offsets = state.block_offsets or [0] * state.canvas.shape[0]
        return [state.prompt_length - offset + block * state.block_length for offset in offsets]

    def _block_start(self, block):
        """The earliest canvas column of block `block` over the rows."""
        return max(0, min(self._row_block_starts(block)))

    def _call_inputs(self, block, window, block_end, kind):
        """The canvas positions a call runs, and the model inputs that go with them. "full" (no cache, or a refresh):
        every position; "first" (a block's first call with a cache): the same, which fills the cache; "step" (later
        calls with a cache): from the window start (one earlier for a next-token model, whose outputs predict the
        next position) to the canvas end ("prefix") or to the block end ("dual").

        A block-diffusion model (absolute blocks) never needs what follows the block (no earlier position sees it),
        its cached blocks are exact, and the prompt's part of the current block attends to the rest of it: every
        call stops at the block end, a block's first call starts at the last block that ran (whose last commits are
        not cached yet), and later calls at the block's start. Returns ((start, stop), (attention mask, positions, cache
        positions))."""
        state, device = self.state, self.state.canvas.device
        length = state.canvas.shape[1]
        absolute = state.block_offsets is not None
        start, stop = 0, block_end if absolute else length
        if kind == "first" and absolute:
            start = self.stale_from
        if kind == "step":
            start = max(window[0] - state.shift, 0)
            if absolute:
                start = min(start, self._block_start(block))
            elif self.config.kv_cache == "dual":
                stop = block_end
        mask = state.attention_mask  # with a cache the keys are the whole canvas; without one, the input
        if mask is not None and state.cache is None:
            mask = mask[:, start:stop]
        cache_position = torch.arange(start, stop, device=device) if state.cache is not None else None
        return (start, stop), (mask, state.position_ids[:, start:stop], cache_position)

    def _stream(self, streamer, streamed):
        """Send every block that is now final (no mask token left) to the streamer; return how many were sent."""
        if streamer is None:
            return streamed
        state, canvas, P = self.state, self.state.canvas, self.state.prompt_length
        while streamed < state.num_blocks:
            start = self._row_block_starts(streamed)[0]  # one row
            block = canvas[0, max(P, start):min(start + state.block_length, P + state.gen_length)]
            if bool((block == self.mask_id).any()):
                break
            if block.numel():
                streamer.put(block.to("cpu", copy=True))
            streamed += 1
        return streamed

    # ---------------------------------------------------------------------------------------------------- the step
    def denoise_step(self, canvas, fed_ids, attention_mask, fed_positions, cache_position, kept, region, beyond,
                     in_block, gen_positions, plan, block_step, global_step):
        """One model call and one commit, for every row at once; tensor operations only.

        `fed_ids`: the canvas positions run (with a cache, `cache_position` names them); `kept`: which outputs
        predict the window `region` (B, W), the positions that can change; `beyond`: the position after it (a
        shift target), (B, 1) or (B, 0); `in_block`: (B, W) the window positions in each row's own block (absolute
        alignment), or None for all; `gen_positions`: the window's positions in the generated region (they key
        the random numbers). Returns the window's and `beyond`'s new tokens and (B, W) whether each proposal's logit
        was finite.
        """
        config, state, mask_id = self.config, self.state, self.mask_id
        logits = self._logits(fed_ids, attention_mask, fed_positions, cache_position, kept)
        logits = _apply_processors(self.processors, canvas, logits)

        # Scores read the model's distribution ("llada"), or the one after the warpers ("dream", "block", as those
        # families), with the mask token in it; so they are taken before the mask token is ruled out of the
        # proposals. (A softmax, not exp(logit - logsumexp): the references round that way, and near-ties must break
        # alike.)
        masked = region == mask_id
        if in_block is not None:
            masked = masked & in_block
        if config.remasking not in ("random", "left_to_right"):
            scored = _apply_processors(self.warpers, canvas, logits) if self.warped_scores else logits
            probs = torch.softmax(scored, dim=-1)

        # Proposals: never the mask token itself (the logits are this step's own: changed in place).
        logits[..., mask_id] = float("-inf")
        if config.temperature == 0:
            x0 = logits.argmax(dim=-1)
        else:
            # Gumbel-max at the temperature (warpers divide by it), in float64: lower precision truncates the Gumbel
            # noise and lowers the sampling temperature (arXiv 2409.02908; docs §6).
            warped = _apply_processors(self.warpers, canvas, logits).double()
            u = counter_uniform(state.row_seeds, global_step, _STREAM_GUMBEL, gen_positions, logits.shape[-1])
            x0 = (warped - torch.log(-torch.log(u))).argmax(dim=-1)
        chosen_logit = logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        finite = torch.isfinite(chosen_logit)  # a NaN or +inf wins the argmax; a row of -inf has a -inf maximum

        if config.remasking == "random":
            score = counter_uniform(state.row_seeds, global_step, _STREAM_REMASK, gen_positions).float()
        elif config.remasking == "left_to_right":  # equal scores: the stable sort below takes the leftmost first
            score = torch.ones(region.shape, device=region.device)
        else:
            score = _scores(probs, x0, config.remasking, dream=self.dream)
        score = score.masked_fill(~masked, float("-inf"))

        left = masked.sum(-1)
        steps = state.steps_per_block
        if config.threshold is not None or config.factor is not None:
            # Fast-dLLM's parallel decoding (arXiv 2505.22618), with at least enough to finish within the step
            # budget: every score that reaches the threshold, or the largest n with (n + 1)(1 - c_n) < factor for the
            # sorted scores c_1 >= c_2 >= ... (a product that grows with n, so the passing ranks are a prefix).
            if config.schedule == "block":  # at least the step's share of the block (LLaDA2, SDAR)
                block_length = state.block_length
                needed = block_length // steps + (block_step < block_length % steps).long()
            else:
                steps_left = steps - block_step
                needed = (left + steps_left - 1) // steps_left
            if config.factor is not None:
                best = score.sort(dim=-1, descending=True).values
                ranks = torch.arange(1, best.shape[1] + 1, device=best.device)
                passing = ((ranks + 1) * (1 - best) < config.factor).sum(-1)
            elif config.schedule == "block":  # those families keep scores strictly above the threshold
                passing = (score > config.threshold).sum(-1)
            else:
                passing = (score >= config.threshold).sum(-1)
            k = torch.minimum(torch.maximum(passing, needed), left)
        elif self.dream:  # Dream's counts follow the masked positions actually left
            k = torch.minimum(_dream_counts(left, self.fractions, block_step, steps), left)
        else:
            k = torch.minimum(plan.index_select(1, block_step.reshape(1)).squeeze(1), left)

        # The k best scores of each row; equal scores go to the leftmost position (a stable sort), so that the choice
        # never depends on the window's width or on the other rows (torch.topk leaves the order of ties unspecified).
        order = score.sort(dim=-1, descending=True, stable=True).indices
        ranks_kept = torch.arange(score.shape[1], device=score.device)[None, :] < k[:, None]
        chosen = torch.zeros_like(masked).scatter(1, order, ranks_kept)

        if config.shift_rate > 0:
            u = counter_uniform(state.row_seeds, global_step, _STREAM_SHIFT, gen_positions)
            return (*shift_commits(region, beyond, x0, chosen, masked, u < config.shift_rate, mask_id), finite)
        return torch.where(chosen, x0, region), beyond, finite

    def _logits(self, fed_ids, attention_mask, fed_positions, cache_position, kept):
        """Float logits predicting the window: one model call, with the unconditional rows of classifier-free
        guidance (prompt replaced by mask tokens; LLaDA, arXiv 2502.09992; docs §6) in the same batch."""
        config, model, state = self.config, self.model, self.state
        rows = fed_ids.shape[0]
        ids, mask, positions = fed_ids, attention_mask, fed_positions
        if config.cfg_scale > 0:
            columns = cache_position if cache_position is not None else torch.arange(ids.shape[1], device=ids.device)
            uncond = torch.where((columns < state.prompt_length)[None, :], self.mask_id, ids)
            ids = torch.cat([ids, uncond], dim=0)
            mask = None if mask is None else torch.cat([mask, mask], dim=0)
            positions = torch.cat([positions, positions], dim=0)
        if state.cache is not None:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=state.cache,
                           cache_position=cache_position, logits_to_keep=kept).logits
        elif _accepts_logits_to_keep(type(model)):  # project only the window onto the vocabulary
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=kept).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.index_select(1, kept)
        if config.cfg_scale > 0:
            cond, unc = logits[:rows].float(), logits[rows:].float()
            return unc + (config.cfg_scale + 1) * (cond - unc)
        return logits.float()


def values_are_free(tensor) -> bool:
    """Checks that read tensor values cost nothing on the CPU; on an accelerator (or while compiling) they would
    stall the device, so there the entry points (`generate`, the data pipeline) check values instead."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def _finish_rows_at_eos(gen: torch.Tensor, eos_ids: torch.Tensor, mask_id):
    """Fill with EOS the remaining mask tokens of every row that has committed an EOS after a committed prefix
    (in place, tensor operations only)."""
    is_eos = torch.isin(gen, eos_ids)
    committed_prefix = (gen != mask_id).long().cumprod(dim=-1).bool()
    done = (is_eos & committed_prefix).any(dim=-1)
    gen.copy_(torch.where(done[:, None] & (gen == mask_id), eos_ids[0], gen))


def shift_commits(region, beyond, x0, chosen, masked, moving, mask_id):
    """Commit the chosen proposals; each `moving` one goes to an adjacent still-masked position instead.

    Positions are handled left to right: the right neighbour is tried first, then the left one; "still masked"
    means masked before the step, not chosen, and not already the target of another move. The right neighbour of
    the window's last position is `beyond` (the first position after the window, (B, 1); (B, 0) at the canvas end).
    Vectorised: a right move of p is never contested (only p moves right into p + 1, before p + 2 could move left
    into it), and a left move of p into p - 1 is blocked exactly when p - 2 moved right into p - 1.
    Returns the new (region, beyond).
    """
    rows, width = region.shape
    free = masked & ~chosen
    beyond_free = (beyond == mask_id) if beyond.shape[1] else torch.zeros_like(free[:, :1])
    moving = moving & chosen
    right = moving & torch.cat([free[:, 1:], beyond_free], dim=1)
    no = torch.zeros_like(free[:, :1])
    left_free = torch.cat([no, free[:, :-1] & ~torch.cat([no, right[:, :-2]], dim=1)], dim=1) if width > 1 else no
    left = moving & ~right & left_free
    new = torch.where(chosen & ~right & ~left, x0, region)
    # Right moves: position p + 1 (or beyond) receives x0[p]; left moves: position p - 1 receives x0[p].
    extended = torch.cat([new, beyond], dim=1)
    from_right = torch.cat([no, right], dim=1)[:, :extended.shape[1]]
    extended = torch.where(from_right, torch.cat([x0[:, :1], x0], dim=1)[:, :extended.shape[1]], extended)
    from_left = torch.cat([left[:, 1:], no], dim=1)
    new = torch.where(from_left, torch.cat([x0[:, 1:], x0[:, :1]], dim=1), extended[:, :width])
    return new, extended[:, width:]


__all__ = ["MDLMGenerationConfig", "MDLMGenerationMixin", "MDLMGenerateOutput", "CanvasCache", "DiffusionSampler",
           "SamplerState", "strip_generation", "counter_uniform", "GENERATION_FIELDS", "REMASKING_STRATEGIES",
           "logits_for_tokens", "mix_seed", "block_sampling", "values_are_free"]
