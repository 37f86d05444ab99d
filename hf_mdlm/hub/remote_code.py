"""Loading model folders without running their code unless asked to.

A folder (or Hub repository) whose `config.json` has our `model_type` loads with the installed hf_mdlm classes,
whatever Python files it carries: none of them runs. Anything else loads with the `transformers` Auto classes,
with `trust_remote_code` passed through (False by default, as in transformers): a folder that needs its own code
is then refused by transformers before any of that code runs.

Weights that the checkpoint lacks (e.g. the masked-LM head of a BERT saved without it) are an error unless
`init_missing_weights=True`: a silently re-initialised layer is a wrong model that still trains and samples.
"""

from __future__ import annotations

import json
import os

from ..configuration_mdlm import MDLMConfig
from .checks import check_folder_files


def read_model_type(source) -> str | None:
    """The `model_type` of `source`'s config.json (a local folder or a Hub id), read as JSON: no code runs."""
    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        if not os.path.exists(path):
            return None
    else:
        from transformers.utils import cached_file

        path = cached_file(str(source), "config.json", _raise_exceptions_for_missing_entries=False)
        if path is None:
            return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("model_type")


def is_mdlm_source(source) -> bool:
    return read_model_type(source) == MDLMConfig.model_type


def check_loading_info(source, info, *, init_missing_weights: bool = False) -> None:
    """Raise when the checkpoint lacked weights of the model (unless `init_missing_weights`)."""
    missing = sorted(info.get("missing_keys") or ())
    if missing and not init_missing_weights:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise ValueError(
            f"{source} has no weights for {shown}: they would be freshly initialised, i.e. the model would not be "
            "the checkpoint's. Use a checkpoint with these weights, or pass --init_missing_weights true "
            "(init_missing_weights=True) to train them from scratch"
        )


def load_model(source, auto_class=None, *, trust_remote_code: bool = False, init_missing_weights: bool = False,
               **kwargs):
    """A model from `source`: ours with the installed `MDLMForMaskedLM` (no folder code runs), anything else with
    `auto_class` (default `AutoModel`) and `trust_remote_code`. Missing weights are an error (see module doc); so
    is a local folder with a corrupt JSON or safetensors file, named before anything loads."""
    check_folder_files(source)
    if is_mdlm_source(source):
        from ..modeling_mdlm import MDLMForMaskedLM

        model, info = MDLMForMaskedLM.from_pretrained(source, output_loading_info=True, **kwargs)
    else:
        if auto_class is None:
            from transformers import AutoModel as auto_class
        model, info = auto_class.from_pretrained(source, trust_remote_code=bool(trust_remote_code),
                                                 output_loading_info=True, **kwargs)
    check_loading_info(source, info, init_missing_weights=init_missing_weights)
    return model


def load_tokenizer(source, *, trust_remote_code: bool = False):
    """`AutoTokenizer.from_pretrained(source)`; an hf_mdlm folder's tokenizer is a standard one and never needs
    remote code."""
    from transformers import AutoTokenizer

    check_folder_files(source)
    if is_mdlm_source(source):
        # Handing AutoTokenizer our config keeps it from reading config.json as a generic config, which warns
        # "You are using a model of type `mdlm` to instantiate a model of type ``" on every load.
        return AutoTokenizer.from_pretrained(source, config=MDLMConfig.from_pretrained(source),
                                             trust_remote_code=False)  # not None: transformers would ask on stdin
    return AutoTokenizer.from_pretrained(source, trust_remote_code=bool(trust_remote_code))  # None would ask on stdin
