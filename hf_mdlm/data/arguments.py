"""`DataArguments`: where the fine-tuning data come from and how they become examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DATA_FORMATS = ("chat", "prompt_completion", "text")

FORMAT_COLUMNS = {"chat": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}


@dataclass
class DataArguments:
    r"""Where the fine-tuning data come from and how they become examples. Every field is a command-line flag of
    `examples/finetune.py` (through `transformers.HfArgumentParser`).

    Parameters:
        > Source

        dataset (`str`, *optional*):
            A local file (.json/.jsonl/.parquet/.csv/.txt, optionally .gz), a local folder (data files or a
            `save_to_disk` dataset) or a Hub dataset name. Default: the bundled Shakespeare corpus.
        dataset_config (`str`, *optional*):
            The Hub dataset's configuration name.
        dataset_cache_dir (`str`, *optional*):
            Cache folder for `datasets` (default: the datasets library's own).
        train_split (`str`, defaults to `"train"`):
            The split trained on.
        eval_split (`str`, *optional*):
            The evaluation split's name, or a path to a separate evaluation file (not the training split or file).
            Default: the `validation` split when there is one (the held-out works of the bundled corpus), else
            `eval_fraction` of the training rows.
        eval_fraction (`float`, defaults to `0.05`):
            The share of training rows held out for evaluation when there is no evaluation split (0: none).
        eval_split_seed (`int`, defaults to `42`):
            Seed of that train/eval split.
        max_train_samples (`int`, *optional*):
            Keep at most this many training examples.
        max_eval_samples (`int`, *optional*):
            Keep at most this many evaluation examples.

        > Format

        data_format (`str`, defaults to `"auto"`):
            `"chat"` (a `messages` column), `"prompt_completion"`, `"text"`, or `"auto"` (picked from the columns in
            that order).
        chat_all_assistant_turns (`bool`, defaults to `False`):
            Chat data: one example per assistant turn instead of the last assistant turn only.

        > Lengths

        canvas_length (`int`, defaults to `128`):
            The response canvas L, the same for every example: response, EOS, then fill.
        max_prompt_length (`int`, *optional*, defaults to `512`):
            Longer prompts keep their last `max_prompt_length` tokens (left truncation); `None`: no limit.
        truncation (`str`, defaults to `"drop"`):
            A response (with its EOS) longer than the canvas: `"drop"` the example, or `"truncate"` the response to
            `canvas_length` tokens without EOS. Either way it is counted and logged.

        > Plain text windows

        text_prompt_length (`int`, defaults to `64`):
            Prompt tokens per window (leading special tokens not counted).
        text_response_length (`int`, *optional*):
            Most continuation tokens per window before EOS (default: `canvas_length - 1`); shorter leaves room in the
            canvas for `<slack>`.
        text_window_stride (`int`, *optional*):
            Tokens between window starts. Default: each continuation starts where the previous one ended, so every
            token after the first prompt is a response token exactly once.
        text_align_lines (`bool`, defaults to `True`):
            End each continuation at a line end when one falls inside the window.
    """

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a local file (.json/.jsonl/.parquet/.csv/.txt, optionally .gz), a local folder "
            "(data files or a save_to_disk dataset) or a Hub dataset name. Default: the bundled Shakespeare corpus."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder for `datasets` (default: the datasets library's own)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation split name, or a path to a separate evaluation file (not the training split or "
            "file). Default: the 'validation' split if the data has one (the held-out works for the bundled corpus), "
            "else --eval_fraction of train."
        },
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the training rows held out for evaluation when there is no eval split (0: none)."
        },
    )
    eval_split_seed: int = field(default=42, metadata={"help": "Seed of the train/eval row split."})
    data_format: Literal["auto", "chat", "prompt_completion", "text"] = field(
        default="auto",
        metadata={"help": "Input format; 'auto' picks chat (messages), prompt_completion, then text by the columns."},
    )
    chat_all_assistant_turns: bool = field(
        default=False,
        metadata={"help": "Chat data: one example per assistant turn instead of only the last assistant turn."},
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Longer prompts keep their LAST max_prompt_length tokens (left truncation). None: no limit."},
    )
    canvas_length: int = field(
        default=128,
        metadata={"help": "Response canvas length L, the same for every example: response + EOS + fill."},
    )
    text_prompt_length: int = field(
        default=64, metadata={"help": "Plain text: prompt tokens per window (leading special tokens not counted)."}
    )
    text_response_length: int | None = field(
        default=None,
        metadata={
            "help": "Plain text: most continuation tokens per window before EOS (default canvas_length - 1). "
            "Shorter leaves room in the canvas for <slack> tokens."
        },
    )
    text_window_stride: int | None = field(
        default=None,
        metadata={
            "help": "Plain text: tokens between window starts. Default: each continuation starts where the previous "
            "one ended, so every token after the first prompt is a response token exactly once."
        },
    )
    text_align_lines: bool = field(
        default=True,
        metadata={"help": "Plain text: end each continuation at a line end when one falls inside the window."},
    )
    truncation: Literal["drop", "truncate"] = field(
        default="drop",
        metadata={
            "help": "Response + EOS longer than canvas_length: 'drop' the example, or 'truncate' the response to "
            "canvas_length tokens WITHOUT EOS."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation examples."})

    def __post_init__(self) -> None:
        if self.data_format not in ("auto", *DATA_FORMATS):
            raise ValueError(f"data_format must be one of auto, {', '.join(DATA_FORMATS)}; got {self.data_format!r}")
        if self.truncation not in ("drop", "truncate"):
            raise ValueError(f"truncation must be 'drop' or 'truncate'; got {self.truncation!r}")
        if self.canvas_length < 1:
            raise ValueError(f"canvas_length must be >= 1; got {self.canvas_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 or None; got {self.max_prompt_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1); got {self.eval_fraction}")
        if self.text_prompt_length < 0:
            raise ValueError(f"text_prompt_length must be >= 0; got {self.text_prompt_length}")
        if self.text_response_length is not None and not 1 <= self.text_response_length <= self.canvas_length - 1:
            raise ValueError(
                f"text_response_length must be in [1, canvas_length - 1 = {self.canvas_length - 1}] (EOS needs a "
                f"canvas slot); got {self.text_response_length}"
            )
        if self.text_window_stride is not None and self.text_window_stride < 1:
            raise ValueError(f"text_window_stride must be >= 1; got {self.text_window_stride}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None; got {value}")
