"""lm-evaluation-harness adapter: benchmark a masked diffusion LM with `lm_eval` (the optional `eval` extra).

From the command line (registers the model under the names `hf_mdlm` and `mdlm`, then runs lm_eval's CLI):

    python -m hf_mdlm.evaluation.lm_eval --model hf_mdlm --model_args pretrained=DIR,mc_num=64 --tasks piqa

From Python:

    import lm_eval
    from hf_mdlm.evaluation.lm_eval import MDLMEvalLM
    lm_eval.simple_evaluate(model=MDLMEvalLM(model, tokenizer, mc_num=64), tasks=["piqa"])

How the three request types are answered:

- `loglikelihood(context, continuation)`: the Monte-Carlo lower bound of
  `hf_mdlm.evaluation.conditional_log_likelihood` with `mc_num` samples (LLaDA's estimator). Every request uses
  the same seed, so the choices of a multiple-choice question are scored with common random numbers (the same
  numbers of masks), which makes their comparison far less noisy than independent estimates. `is_greedy` is
  False unless `compute_is_greedy=True` (as in LLaDA's own harness, which does not compute it): then it is
  exact (temperature-0 low-confidence decoding of a canvas as long as the continuation, one token per step,
  reproduces the continuation), at the cost of one forward pass per continuation token. Only tasks scored by
  greedy match (e.g. lambada's `acc`) need it.
- `loglikelihood_rolling(text)`: the same bound summed over lm_eval's disjoint rolling windows of
  `max_length` tokens, each conditioned on the tokens before it.
- `generate_until(context, gen_kwargs)`: `model.generate` on a canvas of `max_gen_toks` (rounded up to a
  multiple of `block_length`), `tokens_per_step` tokens committed per step; the text is cut at the first EOS
  and at the first stop string in `until`. Each context draws its noise from a seed derived from its tokens,
  so an answer does not depend on the batch or on the order of requests.

Chat models: `--apply_chat_template` (and `--fewshot_as_multiturn`) render every prompt with the tokenizer's chat
template. Several processes (`accelerate launch -m hf_mdlm.evaluation.lm_eval ...`, or torchrun) split the
requests, each scored once on its own device, and the main process gathers them: since every request's noise
comes from its own seed, the results equal a single process's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ..convert.families import native_folder
from ..generation_mdlm import (
    GENERATION_FIELDS,
    MDLMGenerationConfig,
    mix_seed,
    strip_generation,
)
from ..hub.remote_code import load_model, load_tokenizer
from .likelihood import conditional_log_likelihood

logger = logging.getLogger(__name__)

# lm_eval generation keys we understand besides the sampler's own fields.
_HARNESS_GEN_KEYS = {"until", "max_gen_toks", "do_sample"}


def _request_seed(seed: int, ids: list[int]) -> int:
    """A seed from the run's seed and the context's tokens: the same context gets the same noise in any batch."""
    return mix_seed(seed, int.from_bytes(hashlib.sha256(str(ids).encode()).digest()[:8], "little"))


class MDLMEvalLM(TemplateLM):
    """A masked diffusion LM as an lm_eval `LM`.

    Args:
        pretrained: a model folder or Hub id or a model instance (then pass `tokenizer`). An hf_mdlm folder loads
            with the installed classes and runs none of its files; another model's files run only with
            `trust_remote_code=True`.
        tokenizer: a tokenizer or its folder/id; defaults to `pretrained`'s.
        mc_num: Monte-Carlo samples per log-likelihood (more: less variance, proportionally slower).
        batch_size: model rows per forward pass (Monte-Carlo samples or generation prompts).
        max_length: longest prompt + canvas; longer contexts lose their oldest tokens. Defaults to the
            config's `max_position_embeddings`.
        block_length, tokens_per_step: semi-autoregressive blocks and tokens committed per denoising step of
            `generate_until` (a block-diffusion model always samples in blocks of its `block_size`). Any other `MDLMGenerationConfig` field (e.g. `remasking`, `cfg_scale`) may be
            given here as a default for every generation.
        add_bos_token: prepend BOS to every context (our training prompts start with it).
        device, dtype: where and in which precision to run a model loaded from `pretrained`.
        seed: seeds every Monte-Carlo estimate and every sample.
        compute_is_greedy: compute the exact `is_greedy` of `loglikelihood` (one forward per continuation token);
            off by default, when `is_greedy` is always False.
    """

    backend = "causal"  # encode context + continuation together, then split (lm_eval's convention)

    def __init__(
        self,
        pretrained,
        tokenizer=None,
        *,
        mc_num: int = 32,
        batch_size: int | str = 16,
        max_length: int | None = None,
        block_length: int | None = None,
        tokens_per_step: int = 1,
        add_bos_token: bool = True,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        compute_is_greedy: bool = False,
        max_batch_size: int | None = None,  # passed by lm_eval's CLI; one fixed batch size is used
        **generation_kwargs,
    ):
        super().__init__()
        self._rank, self._world_size = _join_processes()
        unknown = sorted(set(generation_kwargs) - set(GENERATION_FIELDS))
        if unknown:
            raise ValueError(f"unknown argument(s) {unknown}: expected adapter arguments or MDLMGenerationConfig "
                             f"fields ({sorted(GENERATION_FIELDS)})")
        derived = sorted(set(generation_kwargs) & {"steps", "max_new_tokens"})
        if derived:  # each request's canvas and steps come from its max_gen_toks and tokens_per_step
            raise ValueError(f"{derived} are set per request (from the task's max_gen_toks and tokens_per_step): "
                             "pass tokens_per_step instead")
        if isinstance(pretrained, str):
            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
            # An hf_mdlm folder loads with the installed classes; another folder's code runs only when trusted.
            pretrained = native_folder(pretrained)  # LLaDA, LLaDA-MoE, Dream, A2D checkpoints: converted once
            model = load_model(pretrained, trust_remote_code=trust_remote_code, dtype=torch_dtype)
            if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                # lm_eval's command line asks for cuda by default; fall back rather than fail on a CPU machine
                if device is not None:
                    logger.warning("device=%s requested but CUDA is not available: running on the CPU", device)
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if self.world_size > 1 and str(device) == "cuda":  # one GPU per process
                device = f"cuda:{os.environ.get('LOCAL_RANK', self.rank)}"
                torch.cuda.set_device(device)
            model = model.to(device)
            tokenizer = tokenizer if tokenizer is not None else pretrained
        else:
            model = pretrained
            if tokenizer is None:
                raise ValueError("pass `tokenizer` together with a model instance")
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        for name, value in (("mc_num", mc_num), ("tokens_per_step", tokens_per_step)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if batch_size == "auto" or (isinstance(batch_size, str) and batch_size.startswith("auto")):
            raise ValueError("batch_size='auto' is not supported: pass an integer")
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if block_length is not None and (not isinstance(block_length, int) or block_length < 1):
            raise ValueError(f"block_length must be a positive integer or None, got {block_length!r}")
        for name in ("mask_token_id", "eos_token_id"):
            if getattr(model.config, name, None) is None:
                raise ValueError(f"the model config has no {name}: it cannot be scored or sampled as a masked "
                                 "diffusion LM")
        self.model = model.eval()
        self._device = model.device
        self.tokenizer = tokenizer
        self.mc_num = mc_num
        self.batch_size = batch_size
        self.max_length = int(max_length or getattr(model.config, "max_position_embeddings", None) or 4096)
        self.block_length = block_length
        self.tokens_per_step = tokens_per_step
        self.add_bos_token = add_bos_token
        self.compute_is_greedy = compute_is_greedy
        self.seed = int(seed)
        self.generation_kwargs = generation_kwargs

    # -- several processes -----------------------------------------------------------------------------------

    def all_gather(self, tensor):
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    # -- chat templates -------------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("--apply_chat_template: the tokenizer has no chat template (evaluate without it, or "
                             "use the tokenizer of an instruct model)")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # -- tokenisation ---------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.model.config.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tokenizer(string, add_special_tokens=False).input_ids
        add_bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def tok_decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- likelihood -----------------------------------------------------------------------------------------

    def _fit(self, context: list[int], continuation: list[int], what: str) -> list[int]:
        """The context, cut from the left so that context + continuation fit in max_length."""
        if len(continuation) >= self.max_length:
            raise ValueError(f"{what}: the continuation has {len(continuation)} tokens, more than max_length="
                             f"{self.max_length} allows with any context")
        return list(context)[-(self.max_length - len(continuation)):]

    def _score(self, context: list[int], continuation: list[int]) -> float:
        result = conditional_log_likelihood(self.model, context, continuation, num_samples=self.mc_num,
                                            batch_size=self.batch_size, seed=self.seed)
        return result["log_likelihood"]

    @torch.no_grad()
    def _is_greedy(self, context: list[int], continuation: list[int]) -> bool:
        # Our sampler's defaults (not the folder's saved ones): temperature 0, low-confidence, one token per step.
        config = MDLMGenerationConfig.from_model_config(self.model.config)
        prompt = torch.tensor([context], dtype=torch.long, device=self.model.device)
        # (steps unset: one token per step, whole blocks for a block-diffusion model, which may run past the end)
        canvas = self.model.generate(prompt, generation_config=config, max_new_tokens=len(continuation))
        return canvas[0, len(context):len(context) + len(continuation)].tolist() == continuation

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out = []
        for i, ((context_text, continuation_text), context, continuation) in enumerate(
                tqdm(requests, desc="loglikelihood (Monte Carlo)", disable=disable_tqdm)):
            continuation = list(continuation)
            if not continuation:  # the empty continuation has probability 1
                out.append((0.0, False))
                continue
            context = self._fit(context, continuation, f"request {i} (continuation {continuation_text[:40]!r})")
            greedy = self.compute_is_greedy and self._is_greedy(context, continuation)
            result = (self._score(context, continuation), greedy)
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", (context_text, continuation_text), result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for i, request in enumerate(tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm)):
            (text,) = request.args
            ids = self.tok_encode(text, add_special_tokens=False)
            windows = map(make_disjoint_window, get_rolling_token_windows(
                ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length - 1, context_len=1))
            total = sum(self._score(self._fit(ctx, pred, f"request {i}, window {w}"), pred)
                        for w, (ctx, pred) in enumerate(windows))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    # -- generation -----------------------------------------------------------------------------------------

    def _generation_settings(self, gen_kwargs: dict[str, Any], what: str) -> tuple[list[str], dict[str, Any]]:
        gen_kwargs = dict(gen_kwargs)
        unknown = sorted(set(gen_kwargs) - _HARNESS_GEN_KEYS - set(GENERATION_FIELDS))
        if unknown:
            raise ValueError(f"{what}: unsupported generation argument(s) {unknown}")
        if "steps" in gen_kwargs:  # it would be overwritten below
            raise ValueError(f"{what}: 'steps' is set per request from tokens_per_step (an adapter argument)")
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        canvas = int(gen_kwargs.pop("max_gen_toks", None) or gen_kwargs.pop("max_new_tokens", None) or 256)
        do_sample = gen_kwargs.pop("do_sample", None)
        settings = {**self.generation_kwargs, **gen_kwargs}
        if do_sample is not None:  # generate() reads it as transformers does (False: greedy; True: sampled)
            settings["do_sample"] = do_sample
        model_block = getattr(self.model.config, "block_size", None)
        if model_block:  # a block-diffusion model samples its own blocks, the last one possibly partial
            block, num_blocks = model_block, math.ceil(canvas / model_block)
        else:
            block = self.block_length or canvas
            canvas = block * math.ceil(canvas / block)  # the sampler needs whole blocks
            num_blocks = canvas // block
        settings.update(max_new_tokens=canvas, block_length=block if num_blocks > 1 or model_block else None,
                        steps=num_blocks * math.ceil(block / self.tokens_per_step), num_return_sequences=1,
                        return_dict_in_generate=False, output_history=False)
        return until, settings

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.model.config.eos_token_id
        slack = getattr(self.model.config, "slack_token_id", None)
        mask = self.model.config.mask_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        jobs = []
        for i, request in enumerate(requests):
            context_text, gen_kwargs = request.args
            until, settings = self._generation_settings(gen_kwargs, f"request {i}")
            context = self.tok_encode(context_text)
            room = self.max_length - settings["max_new_tokens"]
            if room < 1:
                raise ValueError(f"request {i}: a canvas of {settings['max_new_tokens']} tokens leaves no room for "
                                 f"the context within max_length={self.max_length}")
            jobs.append((i, context[-room:], until, settings))
        # Batch requests with the same settings, longest first; left padding does not change any row's sample.
        groups: dict[str, list] = {}
        for job in jobs:
            groups.setdefault(repr(sorted(job[3].items())), []).append(job)
        out: list[str | None] = [None] * len(jobs)
        bar = tqdm(total=len(jobs), desc="generate_until", disable=disable_tqdm)
        for group in groups.values():
            group.sort(key=lambda job: -len(job[1]))
            for start in range(0, len(group), self.batch_size):
                batch = group[start: start + self.batch_size]
                width = len(batch[0][1])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros_like(ids)
                for b, (_, context, _, _) in enumerate(batch):
                    ids[b, width - len(context):] = torch.tensor(context)
                    attention[b, width - len(context):] = 1
                seeds = [_request_seed(self.seed, context) for _, context, _, _ in batch]
                canvas = self.model.generate(ids.to(self.model.device), attention_mask=attention.to(self.model.device),
                                             generator=seeds, **batch[0][3])
                clean = strip_generation(canvas[:, width:], mask_token_id=mask, slack_token_id=slack,
                                         eos_token_id=eos)
                for b, (i, _, until, _) in enumerate(batch):
                    text = self.tok_decode(clean[b])
                    for stop in until:
                        if stop:
                            text = text.split(stop, 1)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]


def _join_processes() -> tuple[int, int]:
    """(rank, world size): those of the process group a launcher (`accelerate launch`, torchrun) describes in the
    environment, joined here if nobody has yet; (0, 1) for a single process."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# `python -m hf_mdlm.evaluation.lm_eval` runs this file as __main__ and then imports it under its own name; only
# that import registers the class (two registrations under one name are an error in lm_eval).
if __name__ != "__main__":
    register_model("hf_mdlm", "mdlm")(MDLMEvalLM)


def main(argv=None):
    """lm_eval's command line with this adapter registered (`--model hf_mdlm`)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    dist = torch.distributed

    def joined():
        return dist.is_available() and dist.is_initialized()

    # A process group left to the interpreter's exit can abort a rank ("terminate called without an active
    # exception" from gloo's threads): after a run every rank leaves it together; after an error, at once (a
    # barrier could wait for a rank that failed).
    try:
        cli_evaluate()
    except BaseException:
        if joined():
            dist.destroy_process_group()
        raise
    if joined():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    import importlib

    # importing the module under its own name registers the adapter (see above), then lm_eval's CLI runs
    raise SystemExit(importlib.import_module("hf_mdlm.evaluation.lm_eval").main())
