"""Tests of `hf_mdlm/evaluation/` on tiny cases with hand-computed answers (the lm-evaluation-harness adapter:
test_evaluation_lm_eval.py)."""

import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hf_mdlm.evaluation import (
    conditional_log_likelihood,
    distinct_n,
    elbo_perplexity,
    generate_continuations,
    generative_perplexity,
    load_heldout,
    paired_elbo_difference,
    score_texts,
    shift_robustness,
    spread_indices,
    token_entropy,
    win_rate,
)
from hf_mdlm.training.canvas import NoiseSchedule
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
V = 50
MASK, EOS, PAD = 49, 48, 47


# ----------------------------------------------------------------------------- fakes


class UniformModel(nn.Module):
    """Every position predicts the uniform distribution over V tokens: CE = log V per masked token."""

    def __init__(self, vocab=V):
        super().__init__()
        self.vocab = vocab
        self.weight = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
        self.inputs = []

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.weight)


class AllMasked(NoiseSchedule):
    """m(t) = 1 and w(t) = 1: every canvas position is masked and counted once."""

    def mask_prob(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def weight(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))


class UnigramJudge(nn.Module):
    """A causal 'LM' whose next-token distribution is fixed: p(v) at every position, whatever the context."""

    def __init__(self, probs):
        super().__init__()
        probs = torch.as_tensor(probs, dtype=torch.float64)
        self.register_buffer("log_probs", torch.where(probs > 0, probs.log(), torch.full_like(probs, -1e9)).float())
        self.config = SimpleNamespace(n_positions=64)
        self.inputs = []

    def forward(self, input_ids, attention_mask=None):
        for row, mask in zip(input_ids, attention_mask):
            self.inputs.append(row[mask.bool()].tolist())
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1).clone())


def word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def byte_tokenizer():
    """One token per UTF-8 byte, ids unrelated to the bundled BPE tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{ch: i + 3 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


WORDS = ["a", "b", "c", "d"]
# judge probabilities over the word vocabulary: a 1/2, b 1/4, c 1/8, d 1/8 (specials 0)
WORD_PROBS = [0, 0, 0, 0, 0.5, 0.25, 0.125, 0.125]


@pytest.fixture
def judge():
    return UnigramJudge(WORD_PROBS), word_tokenizer(WORDS)


# ----------------------------------------------------------------------------- ELBO


def rows(lengths, prompt_length=3, seed=0):
    g = np.random.default_rng(seed)
    return [{"prompt_ids": g.integers(0, 40, prompt_length).tolist(), "response_ids": g.integers(0, 40, n).tolist()}
            for n in lengths]


def test_a_block_model_is_scored_as_it_decodes_and_one_block_is_the_bidirectional_model():
    """A block-diffusion model's ELBO predicts each block from its noised self and the clean blocks before it; with
    one block spanning every position that is the bidirectional model's ELBO, noise for noise."""
    from hf_mdlm import MDLMForMaskedLM

    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config()).eval()
    data = rows([6, 9, 4], prompt_length=5)
    settings = dict(num_samples=3, mask_token_id=model.config.mask_token_id)
    bidirectional = elbo_perplexity(model, data, **settings)["nll_per_token"]
    model.config.block_size = 64  # one block: the whole sequence
    assert elbo_perplexity(model, data, **settings)["nll_per_token"] == pytest.approx(bidirectional, rel=1e-6)
    model.config.block_size = 4
    assert abs(elbo_perplexity(model, data, **settings)["nll_per_token"] - bidirectional) > 1e-3


def test_elbo_all_masked_is_exactly_log_v_per_position():
    data = rows([4, 7, 1])
    out = elbo_perplexity(UniformModel(), data, num_samples=3, schedule=AllMasked(), mask_token_id=MASK)
    assert out["nll_per_token"] == pytest.approx(math.log(V), rel=1e-6)
    assert out["perplexity"] == pytest.approx(V, rel=1e-5)
    assert out["mc_stderr"] == pytest.approx(0, abs=1e-6) and out["stderr"] == pytest.approx(0, abs=1e-6)
    assert out["num_tokens"] == 12 and out["num_examples"] == 3 and out["num_samples"] == 3
    # with an EOS-filled canvas of 8 positions, the 24 canvas positions all cost log V, per 12 response tokens
    filled = elbo_perplexity(UniformModel(), data, num_samples=2, schedule=AllMasked(), mask_token_id=MASK,
                             canvas_length=8)
    assert filled["nll_per_token"] == pytest.approx(math.log(V) * 24 / 12, rel=1e-6)
    assert filled["num_canvas_positions"] == 24 and filled["num_tokens"] == 12


def test_elbo_slack_marginal_credits_the_alignment_entropy():
    """All positions masked, uniform logits, room for every slack: X = L log V + log q(a), and at p = 1/2 every
    one of the 2^3 layouts of a 2-token response has q = 1/8."""
    data = rows([2, 2])
    out = elbo_perplexity(UniformModel(), data, num_samples=3, schedule=AllMasked(), mask_token_id=MASK,
                          canvas_length=5, slack_prob=0.5, slack_token_id=46)
    assert out["nll_per_token"] == pytest.approx((5 * math.log(V) + 3 * math.log(0.5)) / 2, rel=1e-6)
    assert out["slack_prob"] == 0.5


def test_elbo_slack_alignments_are_drawn_from_q_and_scored_by_it():
    """The proposal is the training-time insertion (a random subset kept when too many slacks are drawn), and the
    log q the bound credits is that of the drawn layout."""
    from hf_mdlm.evaluation.likelihood import _slack_alignment

    g = torch.Generator().manual_seed(0)
    counts, log_qs = Counter(), {}
    for _ in range(4000):
        canvas, log_q = _slack_alignment([7, 8], 1, 0.3, 46, g)
        assert [t for t in canvas if t != 46] == [7, 8] and canvas.count(46) <= 1
        counts[tuple(canvas)] += 1
        log_qs[tuple(canvas)] = log_q
    # room for 1 slack of 3 gaps: P(no slack) = 0.7^3; one given gap = 0.3 * 0.7^2 + P(2 or 3 drawn) / 3
    one = 0.3 * 0.7**2 + (3 * 0.3**2 * 0.7 + 0.3**3) / 3
    assert 0.7**3 + 3 * one == pytest.approx(1)
    assert counts[(7, 8)] / 4000 == pytest.approx(0.7**3, abs=0.03)
    assert counts[(46, 7, 8)] / 4000 == pytest.approx(one, abs=0.03)
    assert log_qs[(7, 8)] == pytest.approx(3 * math.log(0.7)) and log_qs[(7, 46, 8)] == pytest.approx(math.log(one))
    with pytest.raises(ValueError, match="canvas_length"):
        elbo_perplexity(UniformModel(), rows([3]), slack_prob=0.1, slack_token_id=46)


@pytest.mark.parametrize("schedule, expected", [("linear", 1.0), ("cosine", 1 - 1e-3)])
def test_elbo_uniform_logits_match_the_weighting_expectation(schedule, expected):
    """E_t[w(t) #masked] = n E_t[w(t) m(t)]: n for linear (w = 1/m), n (1 - eps) for cosine (w = m'/m)."""
    out = elbo_perplexity(UniformModel(), rows([6] * 40), num_samples=16, schedule=schedule, mask_token_id=MASK,
                          batch_size=64, seed=3)
    ratio = out["nll_per_token"] / math.log(V)
    assert abs(ratio - expected) < 4 * out["mc_stderr"] / math.log(V) + 1e-9
    assert abs(ratio - expected) < 0.05
    assert 0 < out["mc_stderr"] and 0 < out["stderr"]


def test_elbo_is_deterministic_and_independent_of_batch_size(tiny_model):
    data = rows([5, 9, 2, 7], seed=1)
    kwargs = dict(num_samples=3, canvas_length=10, seed=7)
    a = elbo_perplexity(tiny_model, data, batch_size=1, **kwargs)
    b = elbo_perplexity(tiny_model, data, batch_size=5, **kwargs)
    assert a["per_example_nll"] == pytest.approx(b["per_example_nll"], rel=1e-5)
    assert elbo_perplexity(tiny_model, data, batch_size=1, **kwargs) == a
    other = elbo_perplexity(tiny_model, data, batch_size=1, **{**kwargs, "seed": 8})
    assert other["per_example_nll"] != a["per_example_nll"]
    assert not tiny_model.training
    tiny_model.train()
    elbo_perplexity(tiny_model, data, **kwargs)
    assert tiny_model.training  # the mode is restored


def test_paired_difference(tiny_model):
    data = rows([5, 9, 2, 7], seed=1)
    a = elbo_perplexity(tiny_model, data, num_samples=2, seed=0)
    same = paired_elbo_difference(a, a)
    assert same["nll_difference"] == 0 and same["stderr"] == 0
    with pytest.raises(ValueError, match="same examples"):
        paired_elbo_difference(a, elbo_perplexity(tiny_model, data[:3], num_samples=2))


def test_elbo_bad_input():
    model = UniformModel()
    with pytest.raises(ValueError, match="empty"):
        elbo_perplexity(model, [])
    with pytest.raises(ValueError, match="empty response"):
        elbo_perplexity(model, [{"prompt_ids": [1], "response_ids": []}])
    with pytest.raises(ValueError, match="prompt_ids"):
        elbo_perplexity(model, [{"response_ids": [1]}])
    with pytest.raises(ValueError, match="canvas_length"):
        elbo_perplexity(model, rows([9]), canvas_length=4)
    with pytest.raises(ValueError, match="num_samples"):
        elbo_perplexity(model, rows([3]), num_samples=0)
    with pytest.raises(ValueError, match="None"):
        elbo_perplexity(model, None)


# ----------------------------------------------------------------------------- conditional log-likelihood


def test_conditional_log_likelihood_uniform_is_exact():
    """Every sample is (M / l) * l * (-log V) = -M log V whatever l: the estimate is exact, stderr 0."""
    out = conditional_log_likelihood(UniformModel(), [1, 2, 3], [4, 5, 6, 7], num_samples=9, batch_size=4)
    assert out["log_likelihood"] == pytest.approx(-4 * math.log(V), rel=1e-6)
    assert out["stderr"] == pytest.approx(0, abs=1e-6)
    assert out["num_tokens"] == 4 and len(out["per_sample"]) == 9
    filled = conditional_log_likelihood(UniformModel(), [1], [4, 5], num_samples=4, canvas_length=6)
    assert filled["log_likelihood"] == pytest.approx(-6 * math.log(V), rel=1e-6)
    assert filled["num_completion_tokens"] == 2


def test_conditional_log_likelihood_masks_only_the_completion_and_is_seeded(tiny_model):
    model = UniformModel()
    conditional_log_likelihood(model, [1, 2, 3], [4, 5, 6], num_samples=20, seed=1)
    for batch in model.inputs:
        assert (batch[:, :3] == torch.tensor([1, 2, 3])).all()
        assert ((batch[:, 3:] == MASK).sum(1) >= 1).all()
    a = conditional_log_likelihood(tiny_model, [1, 2], [4, 5, 6], num_samples=5, seed=2, batch_size=2)
    b = conditional_log_likelihood(tiny_model, [1, 2], [4, 5, 6], num_samples=5, seed=2, batch_size=5)
    assert a["per_sample"] == pytest.approx(b["per_sample"], rel=1e-5)
    assert a["log_likelihood"] < 0 and a["stderr"] > 0
    with pytest.raises(ValueError, match="empty"):
        conditional_log_likelihood(tiny_model, [1], [])


# ----------------------------------------------------------------------------- text statistics


def test_entropy_and_distinct_n_on_hand_strings():
    assert token_entropy("a a b b".split()) == pytest.approx(math.log(2))
    assert token_entropy(["x", "x", "x"]) == 0
    assert token_entropy("a b c".split()) == pytest.approx(math.log(3))
    texts = ["a b a b".split(), "a b".split()]
    assert distinct_n(texts, 1) == pytest.approx(2 / 6)
    assert distinct_n(texts, 2) == pytest.approx(2 / 4)  # ab ba ab | ab
    assert distinct_n(texts, 3) == pytest.approx(1.0)  # aba bab
    assert math.isnan(distinct_n(texts, 5))
    with pytest.raises(ValueError):
        token_entropy([])


# ----------------------------------------------------------------------------- generative perplexity


def test_generative_perplexity_with_known_probabilities(judge):
    model, tok = judge
    out = generative_perplexity(["a b", "c", "", "  \n"], model, tok)
    # log p: a b -> log 1/2 + log 1/4 = -3 log 2; c -> -3 log 2; 3 tokens in all
    assert out["nll_per_token"] == pytest.approx(2 * math.log(2))
    assert out["gen_ppl"] == pytest.approx(4.0)
    assert out["num_empty"] == 2 and out["num_texts"] == 4 and out["num_tokens"] == 3
    assert out["entropy"] == pytest.approx(math.log(2) / 2)  # (log 2 + 0) / 2 non-empty texts
    assert out["distinct_1"] == 1 and out["distinct_2"] == 1 and math.isnan(out["distinct_3"])
    assert out["mean_tokens"] == pytest.approx(3 / 4)


def test_all_empty_generations_are_reported_not_dropped(judge):
    out = generative_perplexity(["", " "], *judge)
    assert out["num_empty"] == 2 and out["num_tokens"] == 0 and math.isnan(out["gen_ppl"])


def test_judge_sees_its_own_tokenization_and_only_the_text_is_scored(judge):
    model, tok = judge
    scores = score_texts(["b a", "d"], model, tok, prompts=["a a a", "c"])
    assert sorted(model.inputs) == sorted([[1, 4, 4, 4, 5, 4], [1, 6, 7]])  # <s> + prompt + text, judge ids
    assert scores[0]["tokens"] == [5, 4] and scores[0]["logprob"] == pytest.approx(math.log(1 / 8))
    assert scores[1]["logprob"] == pytest.approx(math.log(1 / 8))
    # a different tokenizer of the same words gives other ids: only the judge's are ever used
    reversed_tok = word_tokenizer(WORDS[::-1])
    judge2 = UnigramJudge([0, 0, 0, 0, 0.125, 0.125, 0.25, 0.5])  # the same word probabilities, reversed ids
    out = generative_perplexity(["a b", "c"], judge2, reversed_tok)
    assert out["gen_ppl"] == pytest.approx(4.0)
    assert sorted(judge2.inputs) == sorted([[1, 7, 6], [1, 5]])


def test_long_texts_are_truncated_to_the_judge_window(judge):
    model, tok = judge
    model.config.n_positions = 4
    [score] = score_texts(["a a a a a a"], model, tok, prompts=["b b b"])
    assert score["truncated"] and score["num_tokens"] == 3
    assert model.inputs == [[1, 4, 4, 4]]


def test_text_input_errors(judge):
    with pytest.raises(ValueError, match="empty"):
        generative_perplexity([], *judge)
    with pytest.raises(ValueError, match="string"):
        generative_perplexity([[1, 2]], *judge)
    with pytest.raises(ValueError, match="prompts"):
        score_texts(["a"], *judge, prompts=["a", "b"])


def test_train_judge_refuses_an_unknown_architecture():
    from transformers import AutoTokenizer

    from hf_mdlm.data import bundled_corpus_files
    from hf_mdlm.evaluation import train_judge

    tokenizer = AutoTokenizer.from_pretrained(bundled_corpus_files()["tokenizer"])
    rows = {"prompt_ids": [[1, 5, 6]], "response_ids": [[7, 2]]}
    with pytest.raises(ValueError, match="unknown architecture 'bert'"):
        train_judge(rows, tokenizer, width=8, layers=1, heads=2, steps=1, batch=1, lr=1e-3, seed=0,
                    architecture="bert")
    model, losses = train_judge(rows, tokenizer, width=8, layers=1, heads=2, steps=2, batch=1, lr=1e-3, seed=0,
                                architecture="llama", keep_eos=True)
    assert type(model).__name__ == "LlamaForCausalLM" and len(losses) == 2 and model.config.intermediate_size == 32


# ----------------------------------------------------------------------------- win rate


def test_win_rate_with_constructed_ties(judge):
    a = ["a a", "a b", "c", "", ""]
    b = ["b b", "b a", "c", "d", " "]
    # win; tie (same mean log-likelihood, different texts); tie (identical); loss (empty); tie (both empty)
    out = win_rate(a, b, *judge, num_bootstrap=500, seed=0)
    assert (out["wins"], out["ties"], out["losses"]) == (1, 3, 1)
    assert out["win_rate"] == pytest.approx(0.5)
    assert out["num_empty_a"] == 2 and out["num_empty_b"] == 1 and out["num_pairs"] == 5
    assert 0 <= out["ci_low"] <= 0.5 <= out["ci_high"] <= 1
    assert win_rate(a, b, *judge, num_bootstrap=500, seed=0) == out
    reverse = win_rate(b, a, *judge, num_bootstrap=10)
    assert reverse["win_rate"] == pytest.approx(0.5) and (reverse["wins"], reverse["losses"]) == (1, 1)


def test_win_rate_all_wins_has_a_degenerate_interval(judge):
    out = win_rate(["a", "a a"], ["b", "c d"], *judge, num_bootstrap=100)
    assert out["win_rate"] == 1 and out["ci_low"] == 1 and out["ci_high"] == 1
    none = win_rate(["a"], ["b"], *judge, num_bootstrap=0)
    assert math.isnan(none["ci_low"])


def test_win_rate_errors(judge):
    with pytest.raises(ValueError, match="pair up"):
        win_rate(["a"], ["a", "b"], *judge)
    with pytest.raises(ValueError, match="empty"):
        win_rate([], [], *judge)


# ----------------------------------------------------------------------------- sampling and shift robustness


@pytest.fixture(scope="module")
def bundled_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ROOT / "hf_mdlm" / "data" / "bundled" / "tokenizer")


@pytest.fixture
def sampler_model():
    from hf_mdlm import MDLMForMaskedLM

    torch.manual_seed(0)
    return MDLMForMaskedLM(tiny_config()).eval()


PROMPTS = [[1, 40, 41, 42], [1, 50, 51], [1, 60, 61, 62]]
GEN = dict(max_new_tokens=8, steps=8, temperature=1.0)


def test_generate_continuations_is_seeded_per_prompt(sampler_model, bundled_tokenizer):
    full = generate_continuations(sampler_model, bundled_tokenizer, PROMPTS, seed=3, batch_size=2, generation_kwargs=GEN)
    alone = generate_continuations(sampler_model, bundled_tokenizer, PROMPTS[2:], seed=3, generation_kwargs=GEN)
    assert [r["text"] for r in full] == [r["text"] for r in
                                         generate_continuations(sampler_model, bundled_tokenizer, PROMPTS, seed=3,
                                                                batch_size=3, generation_kwargs=GEN)]
    assert len(full) == 3 and all(isinstance(r["text"], str) for r in full)
    # prompt 2 gets the seed of index 0 when alone; the ids it sees are its own, not the model's specials
    assert all(t not in (tiny_config().mask_token_id, tiny_config().eos_token_id) for r in full for t in r["ids"])
    assert alone[0]["prompt_ids"] == PROMPTS[2]
    with pytest.raises(ValueError, match="seed"):
        generate_continuations(sampler_model, bundled_tokenizer, PROMPTS, generation_kwargs={"generator": 1})


def test_shift_robustness_retokenizes_for_the_judge(sampler_model, bundled_tokenizer):
    jtok = byte_tokenizer()
    judge = UnigramJudge(torch.full((len(jtok),), 1.0 / len(jtok)))
    judge.config.n_positions = 512
    out = shift_robustness(sampler_model, bundled_tokenizer, PROMPTS, shift_rates=[0.5], judge_model=judge,
                           judge_tokenizer=jtok, generation_kwargs=GEN, seed=1, num_bootstrap=50)
    assert out["shift_rates"] == [0.0, 0.5]  # the unshifted reference is always there
    ref, shifted = out["per_rate"]
    assert ref["win_rate_unshifted"]["ties"] == 3 and ref["win_rate_unshifted"]["win_rate"] == 0.5
    for row in out["per_rate"]:
        assert {"gen_ppl", "entropy", "distinct_1", "distinct_2", "distinct_3", "num_empty", "mean_slack"} <= set(row)
    # uniform judge over its byte vocabulary: perplexity = vocabulary size, counted in judge (byte) tokens
    texts = out["texts"]["0"] + out["texts"]["0.5"]
    num_bytes = sum(len(t.encode("utf-8")) for t in texts if t.strip())
    assert ref["num_tokens"] + shifted["num_tokens"] == num_bytes
    if ref["num_tokens"]:
        assert ref["gen_ppl"] == pytest.approx(len(jtok), rel=1e-4)
    # what the judge received: <s> + judge ids of the prompt text + judge ids of the generated text
    seen = {tuple(x) for x in judge.inputs}
    for text, prompt in zip(out["texts"]["0"], PROMPTS):
        if text.strip():
            ids = [1] + jtok(bundled_tokenizer.decode(prompt, skip_special_tokens=True) + text,
                             add_special_tokens=False)["input_ids"]
            assert tuple(ids) in seen
    again = shift_robustness(sampler_model, bundled_tokenizer, PROMPTS, shift_rates=[0.5], judge_model=judge,
                             judge_tokenizer=jtok, generation_kwargs=GEN, seed=1, num_bootstrap=50)
    assert again["texts"] == out["texts"]


def test_shift_robustness_errors(sampler_model, bundled_tokenizer, judge):
    kwargs = dict(judge_model=judge[0], judge_tokenizer=judge[1], generation_kwargs=GEN)
    with pytest.raises(ValueError, match="shift_rates"):
        shift_robustness(sampler_model, bundled_tokenizer, PROMPTS, shift_rates=[], **kwargs)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        shift_robustness(sampler_model, bundled_tokenizer, PROMPTS, shift_rates=[1.5], **kwargs)
    with pytest.raises(ValueError, match="shift_rates="):
        shift_robustness(sampler_model, bundled_tokenizer, PROMPTS, shift_rates=[0.1],
                         **{**kwargs, "generation_kwargs": {"shift_rate": 0.1}})
    with pytest.raises(ValueError, match="prompts"):
        shift_robustness(sampler_model, bundled_tokenizer, [], **kwargs)


# ----------------------------------------------------------------------------- held-out data


def test_load_heldout_bundled_and_missing(tmp_path, bundled_tokenizer):
    from hf_mdlm.data import DataArguments

    args = DataArguments(canvas_length=24, text_prompt_length=8, text_response_length=16)
    rows_ = load_heldout(args, bundled_tokenizer, max_examples=5)
    assert len(rows_) == 5 and all(len(r["response_ids"]) <= 24 for r in rows_)
    path = tmp_path / "train_only.jsonl"
    path.write_text(json.dumps({"text": "one two three four five six seven eight nine ten"}) + "\n")
    with pytest.raises(ValueError, match="no held-out part"):
        load_heldout(DataArguments(dataset=str(path), canvas_length=24, text_prompt_length=2), bundled_tokenizer)
    assert spread_indices(10, 3) == [0, 4, 9] and spread_indices(3, 10) == [0, 1, 2]


def test_sampler_names_are_checked_against_the_sampler():
    import argparse

    from hf_mdlm.evaluation.suite import parse_samplers

    assert parse_samplers("ancestral,mine:entropy:0.5")["mine"] == {"remasking": "entropy", "temperature": 0.5}
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown remasking 'entropi' in sampler 'x:entropi:1'"):
        parse_samplers("x:entropi:1")
    with pytest.raises(argparse.ArgumentTypeError, match="bad temperature"):
        parse_samplers("x:random:hot")


def test_a_diffusion_model_as_judge_is_named_before_transformers_asks_to_run_its_code(model_folder):
    from hf_mdlm.evaluation import load_judge

    with pytest.raises(ValueError, match="is an hf_mdlm \\(diffusion\\) model: the judge scores text with a causal LM"):
        load_judge(str(model_folder))


def test_every_sampler_setting_is_checked_before_the_elbo():
    """A block model with --steps its blocks do not divide (or a rule a sampler cannot apply) failed after the ELBO,
    the slow part on a real model."""
    from hf_mdlm import MDLMForMaskedLM
    from hf_mdlm.evaluation.suite import SAMPLERS, check_samplers

    torch.manual_seed(0)
    plain, blocks = MDLMForMaskedLM(tiny_config()), MDLMForMaskedLM(tiny_config(block_size=4))
    defaults = {name: SAMPLERS[name] for name in ("ancestral", "greedy")}
    check_samplers(plain, 16, defaults, [{"kv_cache": "dual"}, {"factor": 1.0}])  # the default samplers: fine
    check_samplers(blocks, 16, defaults, [{"kv_cache": "dual"}])
    with pytest.raises(ValueError, match="sampler ancestral: steps=3 must be a multiple of the number of blocks"):
        check_samplers(blocks, 16, defaults, steps=3)
    with pytest.raises(ValueError, match="sampler l2r with threshold=0.9: threshold=0.9 commits"):
        check_samplers(plain, 16, {"l2r": {"remasking": "left_to_right", "temperature": 0.0}}, [{"threshold": 0.9}])
