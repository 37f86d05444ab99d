"""`DiffusionCollator`: prompt and response ids into right-padded batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def _as_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return list(value)


@dataclass
class DiffusionCollator:
    """Batch ``{prompt_ids, response_ids[, example_id]}`` rows into tensors.

    Returns ``input_ids`` (B, T) = ``[prompt][response][pad ...]`` right-padded with ``pad_token_id``,
    ``T = max prompt length + canvas_length`` (right padding keeps every example's absolute positions
    the same whatever the batch), ``prompt_lengths`` (B,) and ``response_lengths`` (B,) as long, and
    ``example_id`` (B,) long when every row has one. The canvas itself is built by
    :func:`build_canvases` at training time.
    """

    pad_token_id: int
    canvas_length: int

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("DiffusionCollator needs a pad_token_id (set tokenizer.pad_token)")
        if int(self.canvas_length) < 1:
            raise ValueError(f"canvas_length must be >= 1; got {self.canvas_length}")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("DiffusionCollator got an empty batch")
        prompts, responses = [], []
        for i, f in enumerate(features):
            if "prompt_ids" not in f or "response_ids" not in f:
                raise KeyError(f"batch row {i} needs 'prompt_ids' and 'response_ids'; it has {sorted(f)} (raw rows "
                               "become them through hf_mdlm.data.preprocess_dataset)")
            p, r = _as_list(f["prompt_ids"]), _as_list(f["response_ids"])
            if len(r) > self.canvas_length:
                ex = f.get("example_id", i)
                raise ValueError(
                    f"example {ex}: response has {len(r)} tokens but canvas_length is {self.canvas_length}"
                )
            prompts.append(p)
            responses.append(r)
        p_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        r_len = torch.tensor([len(r) for r in responses], dtype=torch.long)
        width = int(p_len.max()) + int(self.canvas_length)
        input_ids = torch.full((len(features), width), int(self.pad_token_id), dtype=torch.long)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            row = p + r
            if row:
                input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        batch = {"input_ids": input_ids, "prompt_lengths": p_len, "response_lengths": r_len}
        if all("example_id" in f and f["example_id"] is not None for f in features):
            batch["example_id"] = torch.tensor([int(f["example_id"]) for f in features], dtype=torch.long)
        return batch
