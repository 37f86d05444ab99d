"""Small helpers shared by the evaluation modules: argument checks, seeds, inference mode, (prompt, response) rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..generation_mdlm import mix_seed

# Stream tags, so that the different random draws of one call never share a generator.
_TAG_OFFSET, _TAG_ELBO, _TAG_CLL, _TAG_PROMPT, _TAG_SLACK = 0x0FF5E7, 0xE1B0, 0xC11, 0x5EED, 0x51AC


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def _inference(model):
    """Eval mode and no gradients for the duration; the previous training mode is restored."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _config_value(model, name):
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, name, None)
        if value is not None:
            return value[0] if isinstance(value, (list, tuple)) and value else value
    return None


def _id_list(value, what: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {tuple(value.shape)}")
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise ValueError(f"{what} must be a sequence of token ids, got {type(value).__name__}")
    out = []
    for v in list(value):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{what} must hold integer token ids, got {v!r}")
        if int(v) < 0:
            raise ValueError(f"{what} holds a negative token id {int(v)}")
        out.append(int(v))
    return out


def _pairs(dataset, what: str = "dataset") -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, response_ids) pairs from a datasets.Dataset, a list of dicts or a list of 2-tuples."""
    if dataset is None:
        raise ValueError(f"{what} is None: pass rows with 'prompt_ids' and 'response_ids' (e.g. a held-out split)")
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        missing = [c for c in ("prompt_ids", "response_ids") if c not in columns]
        if missing:
            raise ValueError(f"{what} lacks column(s) {missing}; it has columns {list(columns)}")
        rows = zip(dataset["prompt_ids"], dataset["response_ids"])
    else:
        rows = list(dataset)
    pairs = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            if "prompt_ids" not in row or "response_ids" not in row:
                raise ValueError(f"{what} row {i} needs 'prompt_ids' and 'response_ids'; it has {sorted(row)}")
            prompt, response = row["prompt_ids"], row["response_ids"]
        elif isinstance(row, (tuple, list)) and len(row) == 2:
            prompt, response = row
        else:
            raise ValueError(f"{what} row {i} must be a mapping with prompt_ids/response_ids or a (prompt, response) pair")
        prompt, response = _id_list(prompt, f"{what} row {i} prompt_ids"), _id_list(response, f"{what} row {i} response_ids")
        if not response:
            raise ValueError(f"{what} row {i} has an empty response: there is nothing to score")
        pairs.append((prompt, response))
    if not pairs:
        raise ValueError(f"{what} is empty: nothing to evaluate")
    return pairs


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ratio_stderr(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """Standard error of sum(x) / sum(n) over iid units (delta method, "ratio estimator"); nan with < 2 units."""
    k = len(numerators)
    if k < 2:
        return float("nan")
    ratio = numerators.sum() / denominators.sum()
    residuals = numerators - ratio * denominators
    return float(math.sqrt(k / (k - 1) * np.sum(residuals**2)) / denominators.sum())
