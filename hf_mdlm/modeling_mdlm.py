"""A bidirectional transformer for masked diffusion language modelling (LLaDA-style).

This file ships to the Hub next to the weights: it imports only torch, transformers and its sibling files.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .configuration_mdlm import MDLMConfig
from .generation_mdlm import MDLMGenerationMixin


def _values_are_free(tensor) -> bool:
    """Checks that read tensor values cost nothing on the CPU; on an accelerator (or while compiling) they would
    stall the device, so there the entry points (`generate`, the data pipeline) check values instead."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


class MDLMRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        # Normalise in float32: bf16 variance loses too much precision.
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden_states.to(dtype)


class MDLMRotaryEmbedding(nn.Module):
    """Rotary position embedding (half-split convention), evaluated in float32 at the given positions.

    The frequencies are recomputed per call rather than kept in a buffer: they cost nothing, and a buffer
    would not survive transformers' meta-device loading or a dtype cast unchanged.
    """

    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta

    @torch.no_grad()
    def forward(self, position_ids):
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=position_ids.device)
        inv_freq = 1.0 / (self.rope_theta ** (exponents / self.head_dim))
        freqs = position_ids.float()[..., None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x, cos, sin):
    """Rotate (B, heads, S, head_dim) by per-position angles (B, S, head_dim) in float32."""
    x_float = x.float()
    rotated = x_float * cos[:, None] + rotate_half(x_float) * sin[:, None]
    return rotated.to(x.dtype)


class MDLMAttention(nn.Module):
    """Bidirectional grouped-query attention through `scaled_dot_product_attention`."""

    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, cos, sin, key_mask):
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class MDLMMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MDLMDecoderLayer(nn.Module):
    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.input_layernorm = MDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MDLMAttention(config)
        self.post_attention_layernorm = MDLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MDLMMLP(config)

    def forward(self, hidden_states, cos, sin, key_mask):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin, key_mask)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class MDLMPreTrainedModel(PreTrainedModel):
    config_class = MDLMConfig
    config: MDLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MDLMDecoderLayer"]
    _supports_sdpa = True


class MDLMModel(MDLMPreTrainedModel):
    """The transformer body: token embeddings, bidirectional blocks and the final norm."""

    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MDLMDecoderLayer(config) for _ in range(config.num_hidden_layers))
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
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self._check_input_ids(input_ids)
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        key_mask = self._key_mask(attention_mask, batch, length)
        if position_ids is None:
            position_ids = self._default_positions(attention_mask, batch, length, inputs_embeds.device)
        elif position_ids.shape[-1] != length:
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected (batch, {length})")
        cos, sin = self.rotary_emb(position_ids.expand(batch, length))

        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        all_hidden_states = () if output_hidden_states else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states, cos, sin, key_mask)
            else:
                hidden_states = layer(hidden_states, cos, sin, key_mask)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)

    def _check_input_ids(self, input_ids):
        if input_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        vocab = self.config.vocab_size
        if _values_are_free(input_ids) and input_ids.numel() and ((input_ids < 0) | (input_ids >= vocab)).any():
            bad = input_ids[(input_ids < 0) | (input_ids >= vocab)][0].item()
            raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab})")

    @staticmethod
    def _key_mask(attention_mask, batch, length):
        """(B, 1, 1, S) boolean mask of the keys each query may attend to, or None when nothing is padded."""
        if attention_mask is None:
            return None
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, length) = "
                f"{(batch, length)} like input_ids (1 = real token, 0 = padding)"
            )
        keep = attention_mask.bool()
        if _values_are_free(keep):  # on an accelerator these reads would stall it at every forward
            empty = ~keep.any(dim=1)
            if empty.any():
                raise ValueError(f"attention_mask row {int(empty.nonzero()[0])} has no real token")
            if keep.all():
                return None
        return keep[:, None, None, :]

    @staticmethod
    def _default_positions(attention_mask, batch, length, device):
        """Count only real tokens so that left padding does not shift a sequence's positions."""
        if attention_mask is None:
            return torch.arange(length, device=device)[None].expand(batch, length)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep: int | slice = 0,
        **kwargs,
    ):
        r"""
        logits_to_keep (`int` or `slice`, defaults to 0): compute the LM head only where it is needed: an int
            k > 0 keeps the last k positions, a slice keeps those positions, 0 keeps all. The sampler keeps only
            the current block, which saves the vocabulary projection of the prompt (`labels` need all positions).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        if labels is not None and (isinstance(logits_to_keep, slice) or logits_to_keep):
            raise ValueError(f"labels need the logits of every position, but logits_to_keep={logits_to_keep!r}")
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, slice):
            hidden = hidden[:, logits_to_keep]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}")
            # Plain CE over labelled positions, in float32 whatever the model's dtype.
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["MDLMPreTrainedModel", "MDLMModel", "MDLMForMaskedLM"]
