"""Command-line value parsers shared by the scripts in `examples/`, `bench/` and `experiments/`.

Each parser raises `argparse.ArgumentTypeError` with the offending text, so argparse prints a one-line error
naming the flag. Boolean flags follow `TrainingArguments`: `--flag`, `--flag true` and `--flag false` all work.
"""

from __future__ import annotations

import argparse
import importlib.util

from .generation_mdlm import KV_CACHE_MODES, MDLMGenerationConfig

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


def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {lowest}, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be an integer >= {lowest}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a batch size, a canvas length): 0 is an error, never a silent default."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a count where 0 means none): a negative one is an error, never silently none."""
    return _int_at_least(text, 0)


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


def probability_below_one(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def device_flag(text: str) -> str:
    """A torch device that this machine has: `--device cuda` without CUDA is an error here, not an assertion deep in
    torch after the model loaded."""
    import torch

    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this torch has no CUDA device (torch.cuda.is_available() is "
                                         "False); use cpu")
    return text


def parse_rates(text: str) -> list[float]:
    """Comma-separated shift rates in [0, 1)."""
    return parse_numbers(text, "shift rates", below=1)


# The settings a fast sampler may change (the rest is the exact sampler's): each maps to its value parser.
FAST_SAMPLER_FIELDS = {"kv_cache": str, "kv_cache_refresh": int, "factor": float, "threshold": float}


def parse_fast_samplers(text: str) -> list[dict]:
    """Approximations of the exact sampler to compare with it, comma separated; each joins settings with '+': a
    cache mode ('prefix', 'dual') or NAME=VALUE for kv_cache, kv_cache_refresh, factor, threshold. E.g.
    'prefix,dual,dual+kv_cache_refresh=4,factor=1'."""
    samplers = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        settings = {}
        for part in (x.strip() for x in item.split("+")):
            name, _, value = part.partition("=") if "=" in part else ("kv_cache", "=", part)
            if name not in FAST_SAMPLER_FIELDS:
                raise argparse.ArgumentTypeError(f"unknown setting {name!r} in fast sampler {item!r}: expected a cache "
                                                 f"mode ({', '.join(KV_CACHE_MODES)}) or NAME=VALUE for "
                                                 f"{', '.join(FAST_SAMPLER_FIELDS)}")
            try:
                settings[name] = FAST_SAMPLER_FIELDS[name](value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad value {value!r} for {name} in fast sampler {item!r}") from None
        try:
            MDLMGenerationConfig(max_new_tokens=8, **settings)  # the config's own checks name what is wrong
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"fast sampler {item!r}: {error}") from None
        samplers.append(settings)
    if not samplers:
        raise argparse.ArgumentTypeError("no fast sampler given")
    return samplers


def describe_settings(settings: dict) -> str:
    """'kv_cache=dual+kv_cache_refresh=4': a fast sampler's settings as `parse_fast_samplers` reads them."""
    return "+".join(f"{name}={value}" for name, value in settings.items())


def require_plotting(what: str) -> None:
    """Raise ImportError now, before any work, when matplotlib (the `eval` extra) is missing for `what`'s plots."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"{what} draws plots with matplotlib, which is not installed: pip install 'hf_mdlm[eval]' "
                          "(or pip install matplotlib)")


def check_generation_settings(model, settings: dict) -> None:
    """Exit with one line naming the problem when the generation flags given (`settings`) cannot work with `model`'s
    saved generation config: before any prompt runs, instead of a traceback from inside `generate`."""
    try:
        model._checked_generation_config(settings)
    except ValueError as error:
        raise SystemExit(f"generation settings: {error}") from None


class _Unset:
    """The value of `--flag none`: switch off a setting the model folder saved (not the same as leaving it)."""

    def __repr__(self):
        return "none"


UNSET = _Unset()


def _or_none(kind):
    def parse(text: str):
        return UNSET if text.strip().lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_generation_flags(parser, helps: dict | None = None):
    """One flag per `MDLMGenerationConfig` setting, each defaulting to the model folder's saved value; a setting
    whose default is None (`--kv_cache`, `--threshold`, `--block_length`, ...) also takes `none`, which switches off
    what the folder saved. `generation_settings(args)` collects the flags given."""
    from .generation_mdlm import GENERATION_FIELDS, REMASKING_STRATEGIES

    group = parser.add_argument_group("generation settings (MDLMGenerationConfig; default: the model's)")
    for name, (kind, default) in GENERATION_FIELDS.items():
        flag = f"--{name}"
        helptext = (helps or {}).get(name) or (
            f"default: the model's generation_config.json (MDLMGenerationConfig default: {default})"
            + ("; none switches the saved value off" if default is None else ""))
        if kind is bool:
            add_bool_flag(group, flag, default=None, help=helptext)
        elif name == "eos_token_id":
            group.add_argument(flag, type=int, nargs="+", default=None, help=helptext)
        else:
            choices = (*REMASKING_STRATEGIES,) if name == "remasking" else None
            group.add_argument(flag, type=_or_none(kind) if default is None else kind, default=None, choices=choices,
                               help=helptext)
    return group


def generation_settings(args) -> dict:
    """The generation flags given (`add_generation_flags`), `none` as None: the keyword arguments of `generate`."""
    from .generation_mdlm import GENERATION_FIELDS

    settings = {name: getattr(args, name) for name in GENERATION_FIELDS if getattr(args, name, None) is not None}
    if len(settings.get("eos_token_id") or ()) == 1:
        settings["eos_token_id"] = settings["eos_token_id"][0]
    return {name: None if value is UNSET else value for name, value in settings.items()}
