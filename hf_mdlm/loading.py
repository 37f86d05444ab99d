"""Models and tokenizers for training and inference: from scratch, from an hf_mdlm folder, from a LLaDA
checkpoint (converted on the fly) or from any masked LM; LoRA wrapping with the new token rows kept trainable.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_mdlm import MDLMConfig
from .convert.families import native_folder
from .data.loading import bundled_corpus_files
from .generation_mdlm import block_sampling
from .hub.remote_code import load_model, load_tokenizer
from .modeling_mdlm import MDLMForMaskedLM
from .tokenization import SLACK_TOKEN, add_diffusion_tokens

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class ModelArguments:
    r"""The model to train. Every field is a command-line flag of `examples/finetune.py` (through
    `transformers.HfArgumentParser`).

    Parameters:
        > The model

        model_name_or_path (`str`, *optional*):
            An hf_mdlm folder or Hub id; a LLaDA, LLaDA-MoE or Dream checkpoint or a Llama/Qwen causal LM (converted
            once, on the fly); or any masked LM (e.g. a BERT). Default: a small MDLM trained from scratch.
        tokenizer_name (`str`, *optional*):
            The tokenizer (default: the model's; from scratch, the bundled one).
        trust_remote_code (`bool`, defaults to `False`):
            Run the Python files of a model folder that is not an hf_mdlm one. An hf_mdlm folder always loads with
            the installed classes and runs none of its files.
        init_missing_weights (`bool`, defaults to `False`):
            Initialise weights the checkpoint lacks (e.g. a new masked-LM head) instead of failing.
        dtype (`str`, *optional*):
            Load the weights in this dtype, e.g. `"bfloat16"`.
        block_size (`int`, *optional*):
            Train as block diffusion (BD3LM): attention becomes bidirectional inside blocks of this many positions
            and causal across them, each block is learnt from its noised self and the clean blocks before it, and
            the saved generation config samples block by block. Default: the model's own (None: bidirectional).

        > A model from scratch

        hidden_size (`int`, defaults to `192`):
            Width.
        num_hidden_layers (`int`, defaults to `4`):
            Number of transformer blocks.
        num_attention_heads (`int`, defaults to `4`):
            Attention heads.
        intermediate_size (`int`, defaults to `512`):
            SwiGLU width.

        > LoRA

        lora_r (`int`, defaults to `0`):
            LoRA rank; 0 trains all weights.
        lora_alpha (`int`, defaults to `32`):
            LoRA alpha (the update is scaled by alpha / r).
        lora_dropout (`float`, defaults to `0.0`):
            Dropout on the LoRA input.
        lora_target_modules (`str`, defaults to every attention and MLP projection):
            Comma-separated module name patterns (fnmatch on the full name or its last part); each must match at
            least one `Linear` module, or the error lists the module names. `all-linear`: every `Linear` module but
            the output head, as in PEFT.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An hf_mdlm folder or Hub id, a LLaDA checkpoint folder (converted on the fly), or any "
                          "masked LM (e.g. a BERT). Default: a small MDLM trained from scratch."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the model's, or the bundled one from scratch)."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the Python files of a model folder that is not an hf_mdlm one (an hf_mdlm folder "
                          "always loads with the installed classes and runs none of its files)."},
    )
    init_missing_weights: bool = field(
        default=False,
        metadata={"help": "Initialise weights the checkpoint lacks (e.g. a new masked-LM head) instead of failing."},
    )
    dtype: str | None = field(default=None, metadata={"help": "Load the weights in this dtype, e.g. bfloat16."})
    block_size: int | None = field(
        default=None,
        metadata={"help": "Train as block diffusion with blocks of this many positions (default: the model's own)."},
    )
    # A model from scratch
    hidden_size: int = field(default=192, metadata={"help": "From scratch: width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "From scratch: number of blocks."})
    num_attention_heads: int = field(default=4, metadata={"help": "From scratch: attention heads."})
    intermediate_size: int = field(default=512, metadata={"help": "From scratch: SwiGLU width."})
    # LoRA
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS,
        metadata={"help": "Comma-separated module name patterns (fnmatch on the full name or the last part); "
                          "each must match at least one module. all-linear: every Linear module but the output head."},
    )


def model_from_scratch(model_args: ModelArguments):
    """A fresh MDLM of `model_args`' shape with the bundled tokenizer (or `tokenizer_name`), `[MASK]` and `<slack>`
    added."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or bundled_corpus_files()["tokenizer"],
                                              trust_remote_code=False)
    add_diffusion_tokens(tokenizer)
    config = MDLMConfig(
        vocab_size=len(tokenizer), hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size, num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads, max_position_embeddings=1024,
        mask_token_id=tokenizer.mask_token_id, slack_token_id=tokenizer.convert_tokens_to_ids(SLACK_TOKEN),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = MDLMForMaskedLM(config)
    model.generation_config.block_length = 8  # semi-autoregressive blocks (docs/objective.md §6), fit on save
    return set_block_size(model, model_args.block_size), tokenizer


def set_block_size(model, block_size: int | None):
    """Make `model` a block-diffusion model with blocks of `block_size` (None: leave it as it is): block-causal
    attention, and a generation config that samples those blocks."""
    if block_size is None:
        return model
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"--block_size must be a positive integer (tokens per attention block), got {block_size!r}")
    if not hasattr(model.config, "block_size"):
        raise ValueError(f"--block_size needs an hf_mdlm model; {type(model).__name__} has no block-causal attention")
    model.config.block_size = block_size
    model.config._check()
    model.generation_config.update(**block_sampling(block_size), steps=None)  # one token per step of each block
    return model


def load_model_and_tokenizer(model_args: ModelArguments, output_dir):
    """The model to train, with `[MASK]` and `<slack>` in its tokenizer and config.

    No `model_name_or_path`: a model from scratch. A LLaDA, LLaDA-MoE or Dream checkpoint, or a Llama/Qwen causal
    LM, is converted first (once; `hf_mdlm.convert.native_folder`). A folder whose config is ours loads with the installed classes, whatever
    code it carries; any other masked LM loads with `AutoModelForMaskedLM`, running the folder's code only with
    `trust_remote_code`. Weights the checkpoint lacks are an error unless `init_missing_weights`.
    """
    from transformers import AutoModelForMaskedLM

    if model_args.model_name_or_path is None:
        return model_from_scratch(model_args)
    dtype = getattr(torch, model_args.dtype) if model_args.dtype else None
    source = native_folder(model_args.model_name_or_path, dtype=dtype)  # LLaDA, LLaDA-MoE, Dream, A2D: converted
    if model_args.tokenizer_name is None and not (Path(source) / "tokenizer_config.json").exists() \
            and os.path.isdir(source):
        raise ValueError(f"{model_args.model_name_or_path} has no tokenizer: pass --tokenizer_name")
    trust = model_args.trust_remote_code
    tokenizer = load_tokenizer(model_args.tokenizer_name or source, trust_remote_code=trust)
    model = load_model(source, AutoModelForMaskedLM, trust_remote_code=trust,
                       init_missing_weights=model_args.init_missing_weights, dtype=dtype)
    add_diffusion_tokens(tokenizer, model)
    return set_block_size(model, model_args.block_size), tokenizer


def load_for_inference(path, device="cpu", *, tokenizer=None, dtype=None, trust_remote_code: bool = False):
    """(model in eval mode on `device`, tokenizer) of a saved folder or Hub id, for sampling and evaluation.

    Another family's checkpoint (LLaDA, LLaDA-MoE, Dream, a Llama/Qwen causal LM) is converted first, once. An
    hf_mdlm folder loads with the installed classes (none of its files runs); another model's code runs only with
    `trust_remote_code`. `tokenizer`: another tokenizer folder or id (default: `path`'s). Missing weights are an
    error.
    """
    kwargs = {} if dtype is None else {"dtype": dtype}
    path = native_folder(path)  # LLaDA, LLaDA-MoE, Dream, A2D checkpoints: converted once
    model = load_model(path, trust_remote_code=trust_remote_code, **kwargs)
    return model.to(device).eval(), load_tokenizer(tokenizer or path, trust_remote_code=trust_remote_code)


def position_limit(model) -> int | None:
    """The longest sequence (prompt + canvas) the model was built for: `config.max_position_embeddings`."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def _linear_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.rsplit(".", 1)[-1], pattern)


def lora_targets(model, patterns) -> list[str]:
    """The Linear modules matched by `patterns` (comma-separated string or list; `"all-linear"`, as in PEFT, is
    every Linear module but the output head); a pattern that matches none is an error listing the model's Linear
    layer names, so a typo never silently trains nothing."""
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    patterns = [p.strip() for p in patterns if p.strip()]
    names = _linear_names(model)
    if patterns == ["all-linear"]:
        head = model.get_output_embeddings()
        return [name for name in names if model.get_submodule(name) is not head]
    unmatched = [p for p in patterns if not any(_matches(n, p) for n in names)]
    if unmatched:
        examples = sorted({n.rsplit(".", 1)[-1] for n in names})[:12]
        raise ValueError(
            f"--lora_target_modules patterns {unmatched} match no Linear module of {type(model).__name__}; "
            f"its Linear layers are named like {examples}"
        )
    return [n for n in names if any(_matches(n, p) for p in patterns)]


def apply_lora(model, model_args: ModelArguments):
    """Wrap the model with LoRA; the new [MASK]/<slack> rows stay trainable through `trainable_token_indices`
    (and are saved with the adapter)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, model_args.lora_target_modules)
    new_rows = sorted({model.config.mask_token_id, model.config.slack_token_id} - {None})
    embeddings = {_module_name(model, model.get_input_embeddings()): new_rows}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        embeddings[_module_name(model, output)] = new_rows
    lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=targets, trainable_token_indices=embeddings)
    model = get_peft_model(model, lora)
    model.print_trainable_parameters()
    return model


def _module_name(model, module):
    return next(name for name, m in model.named_modules() if m is module)
