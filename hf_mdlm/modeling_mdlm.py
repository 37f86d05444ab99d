"""A bidirectional transformer for masked diffusion language modelling (LLaDA-style).

This file ships to the Hub next to the weights: it imports only torch, transformers and its sibling files.

Attention goes through transformers' attention-function registry (`config._attn_implementation`: "eager", which
can return attention weights, "sdpa", "flash_attention_2", "flex_attention"), always bidirectional. A KV cache
serves diffusion sampling (docs/objective.md §6; Fast-dLLM, arXiv 2505.22618); `cache_position` names the canvas
positions that `input_ids` holds, and every layer writes their keys and values into the cache:

* a `CanvasCache` (the sampler's) holds every canvas position at a fixed size: the fed positions are written in
  place and attend to the whole canvas (their own fresh entries, the cached ones elsewhere);
* a transformers `Cache` (e.g. `DynamicCache`) grows, as in transformers' own models: the fed positions are
  appended after the cached ones and attend to all of them.

Keys are cached after rotation: rotary positions are absolute positions on the canvas (`position_ids`, by default
counted over the real tokens of a left-padded row, as without a cache).
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_mdlm import MDLMConfig
from .generation_mdlm import CanvasCache, MDLMGenerationMixin, values_are_free

logger = logging.get_logger(__name__)


def _cache_argument(cache, kwargs):
    """The cache, passed as `cache` or, as transformers before 5.2x names it, `past_key_values` (with a warning)."""
    older = kwargs.pop("past_key_values", None)
    if older is None:
        return cache
    if cache is not None:
        raise ValueError("pass the KV cache once: as `cache` (or `past_key_values`, its older name), not both")
    warnings.warn("`past_key_values` is deprecated: pass the KV cache as `cache`", FutureWarning, stacklevel=3)
    return older


class MDLMRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states):
        # Normalise in float32 (bf16 variance loses too much precision), scale in the input dtype, as LLaDA and
        # Llama do; torch's fused rms_norm computes x * rsqrt(mean(x^2) + eps) in one kernel.
        normalized = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.eps)
        return self.weight * normalized.to(hidden_states.dtype)


class MDLMRotaryEmbedding(nn.Module):
    """Rotary position embedding (half-split convention), evaluated in float32 at the given positions.

    The frequencies are recomputed per call rather than kept in a buffer: they cost nothing, and a buffer
    would not survive transformers' meta-device loading or a dtype cast unchanged.
    """

    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.rotary_dim = int(config.head_dim * config.partial_rotary_factor)
        self.rope_theta = config.rope_theta

    @torch.no_grad()
    def forward(self, position_ids):
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=position_ids.device)
        inv_freq = 1.0 / (self.rope_theta ** (exponents / self.rotary_dim))
        freqs = position_ids.float()[..., None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x, cos, sin):
    """Rotate the first `rotary_dim` dims of (B, heads, S, head_dim) by per-position angles (B, S, rotary_dim) in
    float32 (partial rotary: the other dims pass through)."""
    rotary_dim = cos.shape[-1]
    x_float = x.float()
    turned, rest = x_float[..., :rotary_dim], x_float[..., rotary_dim:]
    rotated = turned * cos[:, None] + rotate_half(turned) * sin[:, None]
    return (torch.cat([rotated, rest], dim=-1) if rest.shape[-1] else rotated).to(x.dtype)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention written out, returning its weights: softmax in float32 over (B, heads, Q, K)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask if attention_mask.dtype != torch.bool else scores.masked_fill(
            ~attention_mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class MDLMAttention(nn.Module):
    """Bidirectional grouped-query attention, dispatched through transformers' attention registry."""

    is_causal = False

    def __init__(self, config: MDLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_output_bias)
        if config.qk_norm:  # per head over head_dim, one weight for all heads (Qwen3, LLaDA-MoE)
            self.q_norm = MDLMRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = MDLMRMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, hidden_states, cos, sin, masks, cache=None, cache_position=None, output_attentions=False):
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = _attend_with_cache(cache, self.layer_idx, k, v, cache_position)

        implementation = self.config._attn_implementation
        if output_attentions or implementation == "eager":
            attend = eager_attention_forward
        else:  # (get_interface is also what lets transformers' set_attn_implementation switch this model)
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        mask = masks.get("flash" if implementation.startswith("flash") else "flex" if implementation == "flex_attention"
                         else "dense") if not (output_attentions or implementation == "eager") else masks.get("dense")
        out, weights = attend(self, q, k, v, mask, scaling=self.scaling, is_causal=False,
                              dropout=self.dropout if self.training else 0.0)
        return self.o_proj(out.reshape(batch, length, self.num_heads * self.head_dim)), weights


def _attend_with_cache(cache, layer_idx, k, v, positions):
    """Write the fed keys and values into the cache; return the keys and values the queries attend to."""
    if isinstance(cache, CanvasCache):
        return cache.write(layer_idx, positions, k, v)
    layer = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
    if layer is not None and layer.is_initialized and layer.keys.shape[2] and layer.keys.shape[0] != k.shape[0]:
        raise ValueError(f"the KV cache holds a batch of {layer.keys.shape[0]} rows, the input has {k.shape[0]}")
    return cache.update(k, v, layer_idx)


class MDLMMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: MDLMConfig, intermediate_size: int | None = None):
        super().__init__()
        width = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=config.mlp_bias)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MDLMSparseMoE(nn.Module):
    """Token-choice mixture of SwiGLU experts: router scores in float32 (softmax or sigmoid), plus the expert bias when
    there is one, pick the top-k experts of each token (among its best groups with group-limited routing); their
    weighted outputs plus the shared expert's make the output. See `MDLMConfig` for each option."""

    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.config = config
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(MDLMMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts))
        if config.expert_bias:  # a buffer: balancing updates it outside of gradient descent
            self.register_buffer("expert_bias", torch.zeros(config.num_experts, dtype=torch.float32))
        else:
            self.expert_bias = None
        self.shared_expert = (MDLMMLP(config, config.shared_expert_intermediate_size)
                              if config.shared_expert_intermediate_size else None)

    def route(self, tokens):
        """(weights, chosen experts), each (tokens, top_k)."""
        config = self.config
        logits = self.router(tokens).float()
        scores = torch.sigmoid(logits) if config.router_score_function == "sigmoid" else torch.softmax(logits, dim=-1)
        routing = scores if self.expert_bias is None else scores + self.expert_bias.float()
        if config.router_groups > 1:
            grouped = routing.view(routing.shape[0], config.router_groups, -1)
            best_groups = grouped.topk(2, dim=-1).values.sum(-1).topk(config.router_topk_groups, dim=-1).indices
            kept = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter(1, best_groups, True)
            routing = grouped.masked_fill(~kept[..., None], float("-inf")).view_as(routing)
        weights, chosen = routing.topk(config.num_experts_per_tok, dim=-1)
        if not config.expert_bias_in_weights:
            weights = scores.gather(1, chosen)
        if config.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * config.routed_scaling_factor, chosen

    def forward(self, x):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        weights, chosen = self.route(tokens)
        out = torch.zeros_like(tokens, dtype=torch.float32)
        for index, expert in enumerate(self.experts):
            rows, slot = (chosen == index).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(tokens[rows]).float() * weights[rows, slot, None])
        out = out.to(x.dtype).reshape(shape)
        return out + self.shared_expert(x) if self.shared_expert is not None else out


class MDLMDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MDLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = MDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MDLMAttention(config, layer_idx)
        self.post_attention_layernorm = MDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MDLMSparseMoE(config) if config.is_moe_layer(layer_idx) else MDLMMLP(config)

    def forward(self, hidden_states, cos, sin, masks, cache=None, cache_position=None, output_attentions=False):
        attended, weights = self.self_attn(self.input_layernorm(hidden_states), cos, sin, masks, cache,
                                           cache_position, output_attentions)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), weights


class MDLMPreTrainedModel(PreTrainedModel):
    config_class = MDLMConfig
    config: MDLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MDLMDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        """Normal(0, initializer_range) for projections and embeddings, zero biases, unit RMSNorm weights (through
        transformers' `initialization`, which leaves weights loaded from a checkpoint alone)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MDLMRMSNorm):
            init.ones_(module.weight)

    def save_pretrained(self, *args, **kwargs):
        # A config changed since it was built (e.g. resize_token_embeddings below the [MASK] id) would save a folder
        # that does not load: refuse it now, naming the field.
        self.config._check()
        return super().save_pretrained(*args, **kwargs)


class MDLMModel(MDLMPreTrainedModel):
    """The transformer body: token embeddings, bidirectional blocks and the final norm."""

    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MDLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = MDLMRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        cache=None,
        use_cache=None,
        cache_position=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        attention_mask: (B, K) with 1 on real tokens and 0 on padding, K the number of keys (the canvas length with
            a `CanvasCache`, the cached plus the fed positions with a growing cache), or a 4D mask (B or 1, 1, Q, K),
            boolean (True = attend) or additive (0 = attend, large negative = do not).
        cache (`CanvasCache` or transformers `Cache`): a KV cache, written as the module docstring says
            (`past_key_values`, its name in transformers before 5.2x, is accepted too).
        use_cache: return the cache (a new `DynamicCache` when none is given).
        cache_position: (Q,) canvas positions of the fed tokens; by default the positions after the cached ones.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        cache = _cache_argument(cache, kwargs)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if input_ids is not None:
            self._check_input_ids(input_ids)
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if use_cache and cache is None:
            cache = DynamicCache()
        if cache is not None and not isinstance(cache, (Cache, CanvasCache)):
            raise TypeError(f"cache must be a CanvasCache or a transformers Cache (e.g. DynamicCache), got "
                            f"{type(cache).__name__}")
        keys, cache_position = self._cache_positions(cache, cache_position, length, inputs_embeds.device)
        masks, key_mask_2d = self._masks(attention_mask, batch, length, keys)
        if position_ids is None:
            position_ids = self._default_positions(key_mask_2d, cache_position, batch)
        elif position_ids.shape[-1] != length:
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected (batch, {length})")
        if self.config.block_size and (attention_mask is None or attention_mask.dim() == 2):
            masks = self._block_causal_masks(key_mask_2d, position_ids.expand(batch, length), keys)
        if masks and self.config._attn_implementation == "flex_attention" and inputs_embeds.device.type == "cpu":
            # torch's CPU flex kernel aborts the whole process (a heap corruption) when given a mask
            raise ValueError("flex_attention cannot apply a padding or block mask on the CPU (torch's kernel crashes "
                             "the process): load the model with attn_implementation='sdpa' to run it on the CPU")
        cos, sin = self.rotary_emb(position_ids.expand(batch, length))

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = layer(hidden_states, cos, sin, masks, cache, cache_position, output_attentions)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        # Positional: the cache field is `past_key_values` up to transformers 5.2x and `cache` after.
        output = BaseModelOutputWithPast(hidden_states, cache, all_hidden_states, all_attentions)
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _cache_positions(cache, cache_position, length, device):
        """(number of keys, canvas positions of the fed tokens), checked where the values are free to read."""
        if cache is None:
            cached, keys = 0, length
        elif isinstance(cache, CanvasCache):
            cached, keys = 0, cache.length
        else:
            cached = cache.get_seq_length()
            keys = cached + length
        if cache_position is None:
            return keys, torch.arange(cached, cached + length, device=device)
        if tuple(cache_position.shape) != (length,):
            raise ValueError(f"cache_position has shape {tuple(cache_position.shape)}, expected ({length},)")
        if cache is not None and length and values_are_free(cache_position):
            first, last = int(cache_position.min()), int(cache_position.max())
            if isinstance(cache, CanvasCache) and (first < 0 or last >= keys):
                raise ValueError(f"the KV cache holds positions [0, {keys}): it cannot serve positions "
                                 f"[{first}, {last + 1})")
            if not isinstance(cache, CanvasCache) and first != cached:
                raise ValueError(f"a growing KV cache ({type(cache).__name__}) appends: the fed positions must start "
                                 f"at {cached}, the end of the cache, not at {first} (a CanvasCache writes anywhere)")
        return keys, cache_position

    def _check_input_ids(self, input_ids):
        if input_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        vocab = self.config.vocab_size
        if values_are_free(input_ids) and input_ids.numel() and ((input_ids < 0) | (input_ids >= vocab)).any():
            bad = input_ids[(input_ids < 0) | (input_ids >= vocab)][0].item()
            raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab})")

    def _masks(self, attention_mask, batch, length, keys):
        """The mask in each backend's form ({"dense": 4D bool or additive, "flash": 2D, "flex": 4D additive}, or
        None when nothing is masked) and the 2D key mask (None for a 4D input)."""
        if attention_mask is None:
            return {}, None
        if attention_mask.dim() == 4:
            if self.config._attn_implementation.startswith("flash"):  # it takes a 2D padding mask only
                raise ValueError("flash attention cannot apply a 4D attention_mask (it would be ignored): load the "
                                 "model with attn_implementation='sdpa', 'eager' or 'flex_attention' for 4D masks")
            expected = (1 if attention_mask.shape[0] == 1 else batch, 1, length, keys)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(f"a 4D attention_mask must have shape (batch or 1, 1, queries, keys) = "
                                 f"{(batch, 1, length, keys)}, got {tuple(attention_mask.shape)}")
            if attention_mask.dtype == torch.bool:
                additive = torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device)
                additive = additive.masked_fill(~attention_mask, torch.finfo(torch.float32).min)
            elif attention_mask.is_floating_point():
                additive = attention_mask
            else:
                raise ValueError(f"a 4D attention_mask must be boolean or floating point, got {attention_mask.dtype}")
            return {"dense": attention_mask, "flex": additive.expand(batch, 1, length, keys)}, None
        if tuple(attention_mask.shape) != (batch, keys):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, keys) = {(batch, keys)} "
                "(1 = real token, 0 = padding; keys = the cached positions plus the fed ones) or a 4D mask"
            )
        keep = attention_mask.bool()
        if values_are_free(keep):  # on an accelerator these reads would stall it at every forward
            empty = ~keep.any(dim=1)
            if empty.any():
                raise ValueError(f"attention_mask row {int(empty.nonzero()[0])} has no real token")
            if keep.all():
                return {}, attention_mask
        dense = keep[:, None, None, :]
        flex = torch.zeros(dense.shape, dtype=torch.float32, device=keep.device).masked_fill(
            ~dense, torch.finfo(torch.float32).min).expand(batch, 1, length, keys)
        return {"dense": dense, "flash": attention_mask, "flex": flex}, attention_mask

    def _block_causal_masks(self, key_mask, query_positions, keys):
        """Block-causal attention (block diffusion): a query sees a key when the key's block is not after its own,
        blocks being `block_size` consecutive positions counted over real tokens (as the rotary positions are), so
        left padding does not move them. Padding keys are never seen."""
        if self.config._attn_implementation.startswith("flash"):
            raise ValueError("flash attention takes a 2D padding mask only and cannot apply the block-causal mask of "
                             "block_size: load the model with attn_implementation='sdpa', 'eager' or 'flex_attention'")
        device = query_positions.device
        key_positions = self._default_positions(key_mask, torch.arange(keys, device=device), query_positions.shape[0])
        size = self.config.block_size
        dense = (key_positions[:, None, :] // size <= query_positions[:, :, None] // size)[:, None]
        if key_mask is not None:
            dense = dense & key_mask.bool()[:, None, None, :]
        flex = torch.zeros(dense.shape, dtype=torch.float32, device=device).masked_fill(
            ~dense, torch.finfo(torch.float32).min)
        return {"dense": dense, "flex": flex}

    @staticmethod
    def _default_positions(key_mask, cache_position, batch):
        """Count only real tokens so that left padding does not shift a sequence's positions."""
        if key_mask is None:
            return cache_position[None].expand(batch, -1)
        return (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, cache_position]


@dataclass
class MDLMMaskedLMOutput(ModelOutput):
    """`MaskedLMOutput` plus the KV cache: loss, logits (B, Q or kept, V), cache, hidden_states, attentions.
    The cache is also `past_key_values`, its name before transformers 5.2x."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None

    @property
    def past_key_values(self):
        return self.cache


class MDLMForMaskedLM(MDLMGenerationMixin, MDLMPreTrainedModel):
    """The MDLM with its LM head: predicts the clean token at every position, and samples with `generate`."""

    _auto_class = "AutoModel"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.model = MDLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        cache=None,
        use_cache=None,
        cache_position=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep: int | slice | torch.Tensor = 0,
        **kwargs,
    ):
        r"""
        labels: (B, Q) the token of each position, -100 where not scored: the plain cross-entropy of predicting them,
            read where the model predicts each token (a next-token model, e.g. Dream: position i - 1 predicts
            token i, so position 0's label is not scored).
        logits_to_keep (`int`, `slice` or 1-D `torch.Tensor`, defaults to 0): compute the LM head only where it is
            needed: an int k > 0 keeps the last k positions, a slice or a tensor of indices keeps those positions,
            0 keeps all. The sampler keeps only the current block, which saves the vocabulary projection of the
            prompt (`labels` need all positions).
        The other arguments are `MDLMModel.forward`'s.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            cache=_cache_argument(cache, kwargs),
            use_cache=use_cache,
            cache_position=cache_position,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        keep_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
        if labels is not None and not keep_all:
            raise ValueError(f"labels need the logits of every position, but logits_to_keep={logits_to_keep!r}")
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden.index_select(1, logits_to_keep.to(hidden.device))
        elif isinstance(logits_to_keep, slice):
            hidden = hidden[:, logits_to_keep]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}")
            # Plain CE over labelled positions, in float32 whatever the model's dtype.
            shift = self.config.prediction_shift
            scoring, scored = logits[:, : logits.shape[1] - shift], labels[:, shift:]
            loss = F.cross_entropy(scoring.float().flatten(0, 1), scored.flatten().to(logits.device), ignore_index=-100)
        # The body's output names the cache `cache` (transformers >= 5.2x) or `past_key_values` (before).
        cache = next((outputs[name] for name in ("cache", "past_key_values") if name in outputs.keys()), None)
        output = MDLMMaskedLMOutput(loss, logits, cache, outputs.hidden_states, outputs.attentions)
        return output if return_dict else output.to_tuple()


__all__ = ["MDLMPreTrainedModel", "MDLMModel", "MDLMForMaskedLM", "MDLMMaskedLMOutput"]
