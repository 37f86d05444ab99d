"""Command-line value parsers shared by the scripts in `examples/`, `bench/` and `experiments/`.

Each parser raises `argparse.ArgumentTypeError` with the offending text, so argparse prints a one-line error
naming the flag. Boolean flags follow `TrainingArguments`: `--flag`, `--flag true` and `--flag false` all work.
"""

from __future__ import annotations

import argparse
import importlib.util

from .generation_mdlm import KV_CACHE_MODES

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def parse_bool(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no, on/off), any case."""
    lowered = str(text).lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool_flag(parser, flag: str, *, default: bool | None = False, help: str | None = None, **kwargs):
    """A boolean option that takes `--flag`, `--flag true` or `--flag false`, as every `TrainingArguments` bool."""
    return parser.add_argument(flag, type=parse_bool, nargs="?", const=True, default=default, metavar="{true,false}",
                               help=help, **kwargs)


def positive_int(text: str) -> int:
    """An integer >= 1 (a batch size, a canvas length): 0 is an error, never a silent default."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def parse_numbers(text: str, what: str = "values", below: float | None = None) -> list[float]:
    """Comma-separated numbers >= 0 (and < `below` if given)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (0 <= v and (below is None or v < below)) for v in values):
        allowed = "non-negative numbers" if below is None else f"numbers in [0, {below:g})"
        raise argparse.ArgumentTypeError(f"{what} must be {allowed}, got {text!r}")
    return values


def parse_rates(text: str) -> list[float]:
    """Comma-separated shift rates in [0, 1)."""
    return parse_numbers(text, "shift rates", below=1)


def parse_kv_caches(text: str) -> list:
    """'prefix,dual' (or 'none'): the KV cache modes to compare with the exact sampler."""
    modes = [m.strip() for m in text.split(",") if m.strip() and m.strip() != "none"]
    unknown = [m for m in modes if m not in KV_CACHE_MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kv_cache {unknown}: expected {', '.join(KV_CACHE_MODES)}")
    return modes


def require_plotting(what: str) -> None:
    """Raise ImportError now, before any work, when matplotlib (the `eval` extra) is missing for `what`'s plots."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"{what} draws plots with matplotlib, which is not installed: pip install 'hf_mdlm[eval]' "
                          "(or pip install matplotlib)")
