"""Parameter counts and fine-tuning memory of an `MDLMConfig`, without building the model.

`count_parameters(config)` is exact: it returns what `sum(p.numel() for p in MDLMForMaskedLM(config).parameters())`
returns (tied weights once; the MoE `expert_bias` is a buffer, not a parameter), split into the input embedding, the
LM head, the routed experts and the parameters one token uses ("active", for mixture-of-experts models).

`estimate_finetune_memory(config, ...)` estimates the peak memory of one training step on one device, for a full
fine-tune with AdamW or a LoRA fine-tune, with or without gradient checkpointing. It is an estimate, meant for
sizing hardware; the assumptions are stated where they are made (`MemoryEstimate` fields, the functions below) and
summarised here:

- Sequence: `prompt_length + canvas_length` tokens per row (the model sees prompt and canvas; the logits cover every
  position), `batch_size` rows, per device.
- Weights are held in `dtype`. A full fine-tune keeps, per trainable parameter, a gradient in `dtype`, AdamW's two
  moments in float32 and, when `dtype` is 16-bit (bf16 mixed precision), a float32 master copy: 16 bytes per
  parameter in bf16 (2 + 2 + 4 + 8) and in float32 (4 + 4 + 8) alike.
- LoRA: the base weights are frozen in `dtype`; rank-`r` adapters (A: r x in, B: out x r) on every `nn.Linear` whose
  name is one of `lora_targets` (by default every attention and MLP projection, each expert's included; never the
  router or the LM head) plus the `<slack>`/`[MASK]` rows that `hf_mdlm.loading` keeps trainable
  (`trainable_token_rows` rows of the embedding and, when untied, of the LM head). PEFT keeps adapters in float32
  (`autocast_adapter_dtype`), so they cost 16 bytes per parameter (weight, gradient, two moments).
- Activations: what autograd keeps for the backward pass, counted tensor by tensor for this implementation
  (`activation_bytes_per_token`; `tests/test_memory.py` checks the count against the tensors autograd saves in a
  tiny model): RMSNorm keeps a float32 copy of its input, the normalised input and the weighted output (the next
  projections' input); attention keeps the rotated queries, the keys and values (key/value heads only: the kernel's
  own grouped-query support; transformers repeats them to every query head when it cannot use it, which adds
  2 x (q_dim - kv_dim) x activation bytes per token and layer), its output and the log-sum-exp (a fused SDPA or
  flash kernel: no L x L matrix; `attention="eager"` adds the softmax weights); SwiGLU keeps gate, silu(gate), up
  and their product; an MoE layer keeps the router's float32 probabilities and, for each of the top-k experts of
  a token, the gathered input, the expert's SwiGLU tensors and two float32 copies of its output (weighted and
  not). At the head, the logits (kept by the loss for its backward) and their
  gradient: 2 x vocab x activation bytes per token; the losses' own float32 work is a few per cent of that
  (`bench/bench_losses.py`) and is not counted.
- Gradient checkpointing (per decoder layer, `model.gradient_checkpointing_enable()`): each layer keeps only its
  input; the backward pass recomputes one layer at a time, so the peak is every layer's input plus the larger of
  the head's tensors and one layer's activations.
- Not counted: the CUDA context and kernels' workspaces (typically 0.5-2 GB), allocator fragmentation, the data
  batch, the transient gradients of activations during backward, and framework buffers (DDP's gradient buckets,
  FSDP's gathered layers, DeepSpeed's partitions). Sharding (FSDP / ZeRO-3 over N devices) divides weights,
  gradients, master weights and optimizer states by N, not activations.

On real hardware expect the measured peak within about 10-30% of the estimate; `bench/memory_table.py` prints the
table in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .configuration_mdlm import MDLMConfig

GIB = 1024**3
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPE_BYTES = {"float32": 4, "fp32": 4, "float": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2}


def dtype_bytes(dtype) -> int:
    """Bytes per element of a dtype given as a torch dtype or its name ("bfloat16", "bf16", "float32", ...)."""
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of an `MDLMForMaskedLM`, as `model.parameters()` counts them (tied weights once).

    total: every parameter. embedding: the input embedding table. lm_head: the output projection (0 when tied to
    the embedding). routed_experts: the routed experts of every MoE layer (all of them); routed_experts_active: the
    `num_experts_per_tok` of them one token uses. active: the parameters one token's forward pass uses: total minus
    the experts it is not routed to (the input embedding counted whole, as in total). Models report "active" with
    different conventions; `active - embedding` is the usual one (the embedding is a lookup, not a matmul).
    """

    total: int
    embedding: int
    lm_head: int
    routed_experts: int = 0
    routed_experts_active: int = 0

    @property
    def active(self) -> int:
        return self.total - self.routed_experts + self.routed_experts_active

    @property
    def non_embedding(self) -> int:
        """Without the input embedding and the LM head (the convention of LLaDA's and Qwen's model cards)."""
        return self.total - self.embedding - self.lm_head


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _mlp(config: MDLMConfig, width: int) -> int:
    h, bias = config.hidden_size, config.mlp_bias
    return 2 * _linear(h, width, bias) + _linear(width, h, bias)


def _attention(config: MDLMConfig) -> int:
    h, q_dim = config.hidden_size, config.num_attention_heads * config.head_dim
    kv_dim = config.num_key_value_heads * config.head_dim
    count = _linear(h, q_dim, config.attention_bias) + 2 * _linear(h, kv_dim, config.attention_bias)
    count += _linear(q_dim, h, config.attention_output_bias)
    return count + (2 * config.head_dim if config.qk_norm else 0)  # q_norm, k_norm: one weight over head_dim


def _moe_layers(config: MDLMConfig) -> list[int]:
    return [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]


def count_parameters(config: MDLMConfig) -> ParameterCount:
    """Exact parameter counts of `MDLMForMaskedLM(config)` (see `ParameterCount`)."""
    h = config.hidden_size
    n_moe = len(_moe_layers(config))
    n_dense = config.num_hidden_layers - n_moe
    per_layer = _attention(config) + 2 * h  # + input_layernorm, post_attention_layernorm
    total = config.num_hidden_layers * per_layer + n_dense * _mlp(config, config.intermediate_size)
    expert = routed = routed_active = 0
    if n_moe:
        expert = _mlp(config, config.moe_intermediate_size)
        shared = _mlp(config, config.shared_expert_intermediate_size) if config.shared_expert_intermediate_size else 0
        routed = n_moe * config.num_experts * expert
        routed_active = n_moe * config.num_experts_per_tok * expert
        total += routed + n_moe * (h * config.num_experts + shared)  # + the router (no bias) and the shared expert
    embedding = config.vocab_size * h
    lm_head = 0 if config.tie_word_embeddings else config.vocab_size * h
    total += embedding + lm_head + h  # + the final norm
    return ParameterCount(total, embedding, lm_head, routed, routed_active)


def _linear_shapes(config: MDLMConfig):
    """(name, in, out, count) of every `nn.Linear` of the model, by its last name component."""
    h, q_dim = config.hidden_size, config.num_attention_heads * config.head_dim
    kv_dim = config.num_key_value_heads * config.head_dim
    layers = config.num_hidden_layers
    yield from [("q_proj", h, q_dim, layers), ("k_proj", h, kv_dim, layers), ("v_proj", h, kv_dim, layers),
                ("o_proj", q_dim, h, layers)]
    n_moe = len(_moe_layers(config))
    mlps = [(config.intermediate_size, layers - n_moe)]
    if n_moe:
        mlps.append((config.moe_intermediate_size, n_moe * config.num_experts))
        if config.shared_expert_intermediate_size:
            mlps.append((config.shared_expert_intermediate_size, n_moe))
        yield ("router", h, config.num_experts, n_moe)
    for width, count in mlps:
        yield from [("gate_proj", h, width, count), ("up_proj", h, width, count), ("down_proj", width, h, count)]
    yield ("lm_head", h, config.vocab_size, 1)


def count_lora_parameters(config: MDLMConfig, r: int, targets=DEFAULT_LORA_TARGETS,
                          trainable_token_rows: int = 0) -> int:
    """Trainable parameters of a rank-`r` LoRA on every `nn.Linear` named in `targets` (r x (in + out) each), plus
    `trainable_token_rows` rows of the embedding and, when untied, of the LM head (PEFT's `trainable_token_indices`,
    which `hf_mdlm.loading` uses for `[MASK]` and `<slack>`)."""
    targets = set(targets)
    unknown = targets - {name for name, *_ in _linear_shapes(config)}
    if unknown:
        raise ValueError(f"LoRA targets {sorted(unknown)} name no nn.Linear of this model")
    adapters = sum(r * (n_in + n_out) * count for name, n_in, n_out, count in _linear_shapes(config) if name in targets)
    heads = 1 if config.tie_word_embeddings else 2
    return adapters + trainable_token_rows * config.hidden_size * heads


def activation_bytes_per_token(config: MDLMConfig, dtype="bfloat16", attention: str = "sdpa",
                               sequence_length: int | None = None) -> dict:
    """Bytes autograd keeps per token for the backward pass: {"layers": [per decoder layer], "head": final norm +
    logits + their gradient}. See the module docstring for what is counted; `attention="eager"` adds the L x L
    softmax weights of every head (needs `sequence_length`)."""
    b, f = dtype_bytes(dtype), 4
    h, heads = config.hidden_size, config.num_attention_heads
    q_dim, kv_dim = heads * config.head_dim, config.num_key_value_heads * config.head_dim

    def norm(n):  # float32 copy of the input (the input itself when float32), normalised input, weighted output
        return n * (f + 2 * b) + f

    attention_bytes = norm(h) + (2 * q_dim + 2 * kv_dim) * b + heads * f  # q, k, v, output, log-sum-exp
    if config.qk_norm:  # per head; the weighted output goes to the rotary embedding, which keeps none of it
        attention_bytes += (q_dim + kv_dim) * (f + b) + 2 * heads * f
    if attention == "eager":
        if sequence_length is None:
            raise ValueError("attention='eager' needs sequence_length (the L x L weights grow with it)")
        attention_bytes += heads * sequence_length * b
    elif attention != "sdpa":
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")

    def swiglu(width):  # gate, silu(gate), up, silu(gate) * up
        return 4 * width * b

    layers = []
    for index in range(config.num_hidden_layers):
        mlp = norm(h)
        if config.is_moe_layer(index):
            k = config.num_experts_per_tok
            mlp += config.num_experts * f + k * 8  # router softmax (float32), top-k indices
            mlp += k * (h * b + swiglu(config.moe_intermediate_size) + 2 * h * f + 3 * 8 + f)  # per chosen expert
            if config.shared_expert_intermediate_size:
                mlp += swiglu(config.shared_expert_intermediate_size)
        else:
            mlp += swiglu(config.intermediate_size)
        layers.append(attention_bytes + mlp)
    head = norm(h) + 2 * config.vocab_size * b
    return {"layers": layers, "head": head}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training step on one device, in bytes (see the module docstring for the assumptions).

    weights: every parameter in the training dtype. gradients: one per trainable parameter (in `dtype` for a full
    fine-tune, float32 for LoRA adapters). optimizer: AdamW's two float32 moments per trainable parameter.
    master_weights: float32 copies of 16-bit trainable weights (full fine-tune in bf16/fp16), or LoRA's float32
    adapter weights. activations: the peak of what autograd keeps (with or without gradient checkpointing).
    """

    method: str
    trainable_parameters: int
    weights: int
    gradients: int
    optimizer: int
    master_weights: int
    activations: int
    settings: dict = field(default_factory=dict, compare=False)

    @property
    def states(self) -> int:
        """Everything but the activations: what a sharded run (FSDP, ZeRO-3) divides by the number of devices."""
        return self.weights + self.gradients + self.optimizer + self.master_weights

    @property
    def total(self) -> int:
        return self.states + self.activations

    def gib(self) -> dict:
        names = ("weights", "gradients", "optimizer", "master_weights", "activations", "states", "total")
        return {name: getattr(self, name) / GIB for name in names}


def estimate_finetune_memory(config: MDLMConfig, *, method: str = "full", canvas_length: int = 1024,
                             prompt_length: int = 0, batch_size: int = 1, dtype="bfloat16",
                             gradient_checkpointing: bool = False, lora_r: int = 16,
                             lora_targets=DEFAULT_LORA_TARGETS, trainable_token_rows: int = 2,
                             attention: str = "sdpa") -> MemoryEstimate:
    """Estimate the peak memory of fine-tuning `config` on one device (method "full": AdamW on every parameter;
    "lora": rank `lora_r` adapters on `lora_targets`). Tokens per step: batch_size x (prompt_length + canvas_length).
    See the module docstring for every assumption."""
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    if canvas_length < 1 or prompt_length < 0 or batch_size < 1:
        raise ValueError("canvas_length and batch_size must be positive and prompt_length non-negative")
    b = dtype_bytes(dtype)
    params = count_parameters(config).total
    if method == "full":
        trainable = params
        gradients, master = trainable * b, (trainable * 4 if b < 4 else 0)
    else:
        trainable = count_lora_parameters(config, lora_r, lora_targets, trainable_token_rows)
        gradients, master = trainable * 4, trainable * 4  # PEFT keeps adapters (and their gradients) in float32
    sequence = prompt_length + canvas_length
    tokens = batch_size * sequence
    per_token = activation_bytes_per_token(config, dtype, attention, sequence)
    if gradient_checkpointing:
        layer_inputs = config.num_hidden_layers * config.hidden_size * b
        activations = tokens * (layer_inputs + max(per_token["head"], max(per_token["layers"])))
    else:
        activations = tokens * (sum(per_token["layers"]) + per_token["head"])
    settings = dict(canvas_length=canvas_length, prompt_length=prompt_length, batch_size=batch_size,
                    dtype=str(dtype).replace("torch.", ""), gradient_checkpointing=gradient_checkpointing,
                    attention=attention, **({"lora_r": lora_r, "lora_targets": tuple(lora_targets)}
                                            if method == "lora" else {}))
    return MemoryEstimate(method, trainable, params * b, gradients, trainable * 8, master, activations, settings)


__all__ = ["DEFAULT_LORA_TARGETS", "GIB", "MemoryEstimate", "ParameterCount", "activation_bytes_per_token",
           "count_lora_parameters", "count_parameters", "dtype_bytes", "estimate_finetune_memory"]
