"""Evaluation of masked diffusion language models.

    likelihood.py  ELBO perplexity bounds, paired differences, LLaDA's conditional log-likelihood
    judge.py       samples judged by an autoregressive model: gen-PPL, entropy, distinct-n, win rates; a judge of
                   our own for offline experiments
    shift.py       sampling held-out prompts; the positional-shift diagnostic
    suite.py       one model measured with all of the above (named samplers, shift rates)
    report.py      results.json, Markdown tables, plots
    lm_eval.py     the lm-evaluation-harness adapter (needs `lm_eval`; imported on its own)

All results are plain dictionaries of numbers, lists and strings (NaN marks a value that is undefined, e.g. the
perplexity of a set of texts that are all empty). Every function is deterministic given its ``seed``.
"""

from ..data.loading import load_heldout, spread_indices
from .judge import (
    distinct_n,
    generative_perplexity,
    load_judge,
    score_texts,
    summarize_scores,
    token_entropy,
    train_judge,
    win_rate,
    win_rate_from_scores,
)
from .likelihood import (
    conditional_log_likelihood,
    elbo_perplexity,
    paired_elbo_difference,
)
from .report import markdown_tables, plot_shift_robustness, plot_training, write_report
from .shift import PAIRED_REFERENCE_RATE, generate_continuations, shift_robustness
from .suite import SAMPLERS, evaluate_model, reference_quality

__all__ = [
    "PAIRED_REFERENCE_RATE",
    "SAMPLERS",
    "conditional_log_likelihood",
    "distinct_n",
    "elbo_perplexity",
    "evaluate_model",
    "generate_continuations",
    "generative_perplexity",
    "load_heldout",
    "load_judge",
    "markdown_tables",
    "paired_elbo_difference",
    "plot_shift_robustness",
    "plot_training",
    "reference_quality",
    "score_texts",
    "shift_robustness",
    "spread_indices",
    "summarize_scores",
    "token_entropy",
    "train_judge",
    "win_rate",
    "win_rate_from_scores",
    "write_report",
]
