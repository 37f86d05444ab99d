"""Reward functions for GRPO on tasks with verifiable answers (examples, not library code: copy and adapt them).

Each follows TRL's reward-function interface: called with the batch's `prompts`, `completions` (decoded text) and
every other column of the dataset as a keyword argument (a list, one entry per completion), it returns one float
per completion. `examples/grpo.py --reward_funcs exact_answer,answer_format` picks them by name.
"""

import re


def exact_answer(completions, answer, **_):
    """1.0 when the completion, stripped of surrounding white space, is the dataset's `answer` column, else 0.0."""
    return [float(text.strip() == str(expected).strip()) for text, expected in zip(completions, answer)]


def answer_format(completions, answer, **_):
    """0.5 when the completion has the answer's shape (the same number of characters, digits where it has digits,
    letters where it has letters), else 0.0: a denser signal than `exact_answer` while a policy learns the task."""
    def shape(text):
        return re.sub(r"[a-zA-Z]", "a", re.sub(r"[0-9]", "0", text.strip()))

    return [0.5 * float(shape(text) == shape(str(expected))) for text, expected in zip(completions, answer)]


REWARD_FUNCTIONS = {function.__name__: function for function in (exact_answer, answer_format)}
