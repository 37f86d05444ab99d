"""Samples judged by a reference autoregressive model: generative perplexity (always with token entropy and
distinct-n, since a low perplexity alone rewards degenerate text) and pairwise win rates with bootstrap intervals.

Texts cross from the diffusion model to the judge as *strings*, re-tokenised with the judge's tokenizer.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .utils import _batches, _check_positive_int, _check_seed, _device, _inference

logger = logging.getLogger(__name__)

DISTINCT_NS = (1, 2, 3)


def token_entropy(tokens: Sequence) -> float:
    """Entropy (nats) of a text's own token distribution: ``-sum_v f_v log f_v`` with ``f_v`` the fraction
    of the text's tokens equal to ``v``. 0 for a text of one repeated token, ``log n`` for ``n`` distinct
    tokens; low values flag repetitive text. Raises on an empty text (undefined)."""
    tokens = list(tokens)
    if not tokens:
        raise ValueError("token_entropy of an empty text is undefined")
    n = len(tokens)
    return float(-sum(c / n * math.log(c / n) for c in Counter(tokens).values()))


def distinct_n(token_lists: Sequence[Sequence], n: int) -> float:
    """Corpus-level distinct-n: distinct n-grams / all n-grams, over all texts (n-grams never cross texts).

    nan when the texts hold no n-gram at all (every text shorter than ``n``).
    """
    n = _check_positive_int("n", n)
    seen, total = set(), 0
    for tokens in token_lists:
        tokens = tuple(tokens)
        for start in range(len(tokens) - n + 1):
            seen.add(tokens[start : start + n])
            total += 1
    return len(seen) / total if total else float("nan")


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{what}[{i}] must be a string (decoded text), got {type(t).__name__}")
    return texts


def _judge_max_length(judge_model, max_length):
    if max_length is not None:
        return _check_positive_int("max_length", max_length, 2)
    config = getattr(judge_model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def score_texts(
    texts: Sequence[str],
    judge_model,
    judge_tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """Log-likelihood of each text under a causal LM judge, after re-tokenising it with the judge's tokenizer.

    The judge's context for text ``i`` is a start token (the judge tokenizer's BOS, else its EOS) followed by
    ``prompts[i]`` (tokenised without special tokens) when prompts are given; only the text's own tokens
    are scored. A text that is empty or only whitespace is *empty*: not scored (``num_tokens = 0``) and
    flagged. Context + text longer than the judge's window (``max_length``, default its config's
    ``n_positions`` / ``max_position_embeddings``) keeps the start token and the end of the prompt; a text
    longer than the window alone is cut to fit and flagged ``truncated``.

    Returns one dict per text: ``logprob`` (sum, nats), ``num_tokens``, ``tokens`` (the judge's ids of the
    scored tokens), ``empty``, ``truncated``.
    """
    texts = _check_texts(texts, "texts")
    if prompts is not None:
        prompts = _check_texts(prompts, "prompts")
        if len(prompts) != len(texts):
            raise ValueError(f"got {len(prompts)} prompts for {len(texts)} texts")
    batch_size = _check_positive_int("batch_size", batch_size)
    start = judge_tokenizer.bos_token_id if judge_tokenizer.bos_token_id is not None else judge_tokenizer.eos_token_id
    if start is None:
        raise ValueError("the judge tokenizer has neither a BOS nor an EOS token to start the context with")
    pad = judge_tokenizer.pad_token_id if judge_tokenizer.pad_token_id is not None else start
    window = _judge_max_length(judge_model, max_length)

    def encode(text):
        return list(judge_tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    results, jobs = [], []
    for i, text in enumerate(texts):
        empty = text.strip() == ""
        cont = [] if empty else encode(text)
        if not cont:
            results.append({"logprob": 0.0, "num_tokens": 0, "tokens": [], "empty": True, "truncated": False})
            continue
        context = [int(start)] + (encode(prompts[i]) if prompts is not None else [])
        truncated = False
        if window is not None:
            if len(cont) > window - 1:
                cont, truncated = cont[: window - 1], True
            room = window - len(cont)
            if len(context) > room:
                context = [context[0]] + (context[len(context) - (room - 1) :] if room > 1 else [])
        results.append({"logprob": 0.0, "num_tokens": len(cont), "tokens": cont, "empty": False, "truncated": truncated})
        jobs.append((i, context, cont))

    device = _device(judge_model)
    jobs.sort(key=lambda job: len(job[1]) + len(job[2]))  # similar lengths together: less padding
    with _inference(judge_model):
        for batch in _batches(jobs, batch_size):
            width = max(len(c) + len(t) for _, c, t in batch)
            ids = torch.full((len(batch), width), int(pad), dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (_, context, cont) in enumerate(batch):
                seq = context + cont
                ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention[b, : len(seq)] = 1
            logits = judge_model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            for b, (i, context, cont) in enumerate(batch):
                rows = logits[b, len(context) - 1 : len(context) + len(cont) - 1].float()
                target = torch.tensor(cont, dtype=torch.long, device=rows.device)
                logprob = rows.gather(-1, target[:, None])[:, 0] - rows.logsumexp(-1)
                results[i]["logprob"] = float(logprob.double().sum())
    return results


def summarize_scores(scores: Sequence[Mapping]) -> dict[str, Any]:
    """Generative perplexity, entropy and distinct-n from :func:`score_texts` output (see :func:`generative_perplexity`)."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to summarise")
    kept = [s for s in scores if not s["empty"]]
    num_tokens = sum(s["num_tokens"] for s in kept)
    nll = -sum(s["logprob"] for s in kept) / num_tokens if num_tokens else float("nan")
    out = {
        "gen_ppl": math.exp(nll) if num_tokens else float("nan"),
        "nll_per_token": nll,
        "entropy": float(np.mean([token_entropy(s["tokens"]) for s in kept])) if kept else float("nan"),
    }
    for n in DISTINCT_NS:
        out[f"distinct_{n}"] = distinct_n([s["tokens"] for s in kept], n)
    out.update(
        num_texts=len(scores),
        num_empty=len(scores) - len(kept),
        num_tokens=num_tokens,
        mean_tokens=num_tokens / len(scores),
        num_truncated=sum(bool(s["truncated"]) for s in kept),
    )
    return out


def generative_perplexity(
    texts: Sequence[str],
    judge_model,
    judge_tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Perplexity of generated texts under a judge causal LM, with the diversity numbers that must go with it.

    ``texts`` are clean generations (cut at their first EOS, ``<slack>``/mask removed, decoded: see
    :func:`generate_continuations`); each is re-tokenised with ``judge_tokenizer`` and scored by
    :func:`score_texts` (optionally conditioned on ``prompts``). Returns

    * ``gen_ppl = exp(-sum log p / number of judge tokens)`` over the non-empty texts, and ``nll_per_token``;
    * ``entropy``: the mean over non-empty texts of :func:`token_entropy` of the text's judge tokens (nats);
    * ``distinct_1``, ``distinct_2``, ``distinct_3``: :func:`distinct_n` over the non-empty texts' judge tokens;
    * ``num_texts``, ``num_empty`` (empty or whitespace-only texts: counted here, left out of every other
      number), ``num_tokens``, ``mean_tokens`` (per text, empty ones included), ``num_truncated``.

    A low gen-PPL alone is not quality: repeating one likely token gives a low gen-PPL with an entropy and
    distinct-n near 0, and many empty generations hide failures; read the numbers together.
    """
    return summarize_scores(
        score_texts(texts, judge_model, judge_tokenizer, prompts=prompts, batch_size=batch_size, max_length=max_length)
    )


def win_rate_from_scores(
    scores_a: Sequence[Mapping],
    scores_b: Sequence[Mapping],
    *,
    texts_a: Sequence[str] | None = None,
    texts_b: Sequence[str] | None = None,
    num_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    tie_tolerance: float = 1e-6,
) -> dict[str, Any]:
    """Win rate of A over B from per-text judge scores (see :func:`win_rate` for the rules)."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"got {len(scores_a)} texts for A but {len(scores_b)} for B: they must pair up per prompt")
    if not scores_a:
        raise ValueError("no pairs to compare")
    if texts_a is not None and texts_b is not None and not len(texts_a) == len(texts_b) == len(scores_a):
        raise ValueError("texts_a / texts_b do not match the scores in length")
    num_bootstrap = _check_positive_int("num_bootstrap", num_bootstrap, 0)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    outcomes = np.empty(len(scores_a), dtype=np.float64)
    for i, (a, b) in enumerate(zip(scores_a, scores_b)):
        if texts_a is not None and texts_b is not None and texts_a[i] == texts_b[i]:
            outcomes[i] = 0.5
        elif a["empty"] or b["empty"]:
            outcomes[i] = 0.5 if a["empty"] and b["empty"] else (0.0 if a["empty"] else 1.0)
        else:
            diff = a["logprob"] / a["num_tokens"] - b["logprob"] / b["num_tokens"]
            outcomes[i] = 0.5 if abs(diff) <= tie_tolerance else float(diff > 0)
    rate = float(outcomes.mean())
    low = high = float("nan")
    if num_bootstrap > 0:
        rng = np.random.default_rng(_check_seed(seed))
        draws = outcomes[rng.integers(0, len(outcomes), size=(num_bootstrap, len(outcomes)))].mean(axis=1)
        alpha = (1 - confidence) / 2
        low, high = (float(x) for x in np.quantile(draws, [alpha, 1 - alpha]))
    return {
        "win_rate": rate,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "wins": int((outcomes == 1).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "losses": int((outcomes == 0).sum()),
        "num_pairs": len(outcomes),
        "num_empty_a": int(sum(bool(s["empty"]) for s in scores_a)),
        "num_empty_b": int(sum(bool(s["empty"]) for s in scores_b)),
        "num_bootstrap": num_bootstrap,
    }


def win_rate(
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    judge_model,
    judge_tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    num_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    tie_tolerance: float = 1e-6,
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, Any]:
    """How often text A beats text B for the same prompt, judged by the judge's mean log-likelihood per token.

    Per pair ``i`` (``texts_a[i]`` against ``texts_b[i]``): identical strings tie; an empty text (empty or
    whitespace only) loses to a non-empty one and ties with another empty one; otherwise A wins when its
    mean log-likelihood per judge token exceeds B's by more than ``tie_tolerance``, and the pair ties when
    they differ by at most ``tie_tolerance``. Wins count 1, ties 1/2, losses 0; ``win_rate`` is the mean.
    The confidence interval is the percentile bootstrap over prompts (``num_bootstrap`` resamples of the
    pairs with replacement, numpy generator seeded with ``seed``; 0 resamples: no interval).

    Returns ``win_rate``, ``ci_low``, ``ci_high``, ``wins``, ``ties``, ``losses``, ``num_pairs``,
    ``num_empty_a``, ``num_empty_b``, ``num_bootstrap``, ``confidence``.
    """
    texts_a = _check_texts(texts_a, "texts_a")
    texts_b = _check_texts(texts_b, "texts_b")
    if len(texts_a) != len(texts_b):
        raise ValueError(f"got {len(texts_a)} texts for A but {len(texts_b)} for B: they must pair up per prompt")
    if prompts is not None:
        prompts = _check_texts(prompts, "prompts")
        if len(prompts) != len(texts_a):
            raise ValueError(f"got {len(prompts)} prompts for {len(texts_a)} pairs")
        prompts = prompts + prompts  # one per text of A, then one per text of B
    scores = score_texts(texts_a + texts_b, judge_model, judge_tokenizer, prompts=prompts, batch_size=batch_size,
                         max_length=max_length)
    return win_rate_from_scores(
        scores[: len(texts_a)], scores[len(texts_a) :], texts_a=texts_a, texts_b=texts_b,
        num_bootstrap=num_bootstrap, seed=seed, confidence=confidence, tie_tolerance=tie_tolerance,
    )


# ---- a judge of our own, for offline experiments


def train_judge(train_rows, tokenizer, *, width: int, layers: int, heads: int, steps: int, batch: int, lr: float,
                seed: int, device="cpu", architecture: str = "gpt2", intermediate: int | None = None,
                keep_eos: bool = False, max_positions: int | None = None):
    """A causal LM trained on `prompt + continuation` windows of `train_rows` (plain causal-LM loop): a GPT-2
    judge by default, or with `architecture="llama"` a `LlamaForCausalLM` (SwiGLU width `intermediate`, default
    4 x `width`), e.g. the source of an A2D conversion. `keep_eos` keeps the responses' EOS in the training
    sequences (the judge drops it: it scores texts cut at EOS). `max_positions`: the position limit (default: 128
    or the longest window).

    Returns (model in eval mode, the loss of every step)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        get_cosine_schedule_with_warmup,
    )

    eos = tokenizer.eos_token_id
    sequences = [list(p) + [t for t in r if keep_eos or t != eos]
                 for p, r in zip(train_rows["prompt_ids"], train_rows["response_ids"])]
    n_positions = max_positions or max(128, max(len(s) for s in sequences))
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=width, n_layer=layers,
                            n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
        model_class = GPT2LMHeadModel
    elif architecture == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate or 4 * width,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=n_positions, tie_word_embeddings=False, **special)
        model_class = LlamaForCausalLM
    else:
        raise ValueError(f"unknown architecture {architecture!r}: expected 'gpt2' or 'llama'")
    torch.manual_seed(seed)
    model = model_class(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        rows = [sequences[i] for i in torch.randint(len(sequences), (batch,), generator=g).tolist()]
        longest = max(len(s) for s in rows)
        ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for b, s in enumerate(rows):
            ids[b, : len(s)] = torch.tensor(s)
            attention[b, : len(s)] = 1
        labels = ids.masked_fill(attention == 0, -100)
        loss = model(input_ids=ids.to(device), attention_mask=attention.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            logger.info("%s step %d/%d loss %.3f", architecture, step + 1, steps, sum(losses[-20:]) / len(losses[-20:]))
    return model.eval(), losses


def load_judge(path, device="cpu"):
    """(causal LM in eval mode on `device`, its tokenizer) from a folder or Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hub.checks import check_folder_files
    from ..hub.remote_code import is_mdlm_source

    check_folder_files(path)  # a mistyped folder is named as one, not as a bad Hub id
    if is_mdlm_source(path):  # transformers would ask to run its code, then fail: it is not a causal LM
        raise ValueError(f"--judge {path} is an hf_mdlm (diffusion) model: the judge scores text with a causal LM "
                         "(e.g. a GPT-2 or Qwen folder)")
    # trust_remote_code=False, not None: transformers would ask on stdin, and a "y" would run the folder's code
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def load_judge_checked(folder, width: int, layers: int, device="cpu"):
    """The judge of an earlier run, refused unless it has the expected width and depth."""
    judge, _ = load_judge(folder, device)
    config = judge.config
    if config.hidden_size != width or config.num_hidden_layers != layers:
        raise SystemExit(f"--judge {folder}: width {config.hidden_size} x {config.num_hidden_layers} layers does "
                         f"not match this mode's judge ({width} x {layers})")
    return judge
