"""Configuration of a masked diffusion language model (MDLM).

This file ships to the Hub next to the weights: it imports only transformers.
"""

from transformers import PretrainedConfig

# What a saved folder needs so that `AutoModel.from_pretrained(dir, trust_remote_code=True)` finds our classes.
# AutoModel maps to the model *with* the LM head and `generate`, as LLaDA and Dream do.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_mdlm.MDLMConfig",
    "AutoModel": "modeling_mdlm.MDLMForMaskedLM",
    "AutoModelForMaskedLM": "modeling_mdlm.MDLMForMaskedLM",
}


class MDLMConfig(PretrainedConfig):
    r"""
    Configuration of [`MDLMModel`] / [`MDLMForMaskedLM`]: a bidirectional (non-causal) transformer with RMSNorm,
    rotary position embeddings, a SwiGLU MLP and grouped-query attention. With the defaults of
    `convert_llada_checkpoint` it represents LLaDA-8B exactly.

    Args:
        vocab_size (`int`): number of rows of the embedding and of the LM head.
        hidden_size (`int`): width of the residual stream.
        intermediate_size (`int`): width of the SwiGLU MLP.
        num_hidden_layers (`int`): number of transformer blocks.
        num_attention_heads (`int`): number of query heads.
        num_key_value_heads (`int`, *optional*): number of key/value heads (grouped-query attention);
            defaults to `num_attention_heads`.
        head_dim (`int`, *optional*): defaults to `hidden_size // num_attention_heads`.
        max_position_embeddings (`int`): longest sequence (prompt + canvas) the model is meant for.
        rope_theta (`float`): base of the rotary embedding frequencies.
        rms_norm_eps (`float`): epsilon of the RMSNorm layers.
        attention_bias (`bool`): bias on the query/key/value projections.
        mlp_bias (`bool`): bias on the MLP projections (gate, up, down); the attention output projection has none.
        attention_dropout (`float`): dropout on attention probabilities during training.
        initializer_range (`float`): std of the normal initialisation.
        tie_word_embeddings (`bool`): share the input embedding and the LM head.
        mask_token_id (`int`): the `[MASK]` token of the diffusion process.
        slack_token_id (`int`, *optional*): the `<slack>` token of slack-CTC; None until a tokenizer adds it.
        eos_token_id, pad_token_id, bos_token_id (`int`, *optional*): the usual special tokens.
    """

    model_type = "mdlm"
    keys_to_ignore_at_inference = ["past_key_values"]
    _auto_class = "AutoConfig"

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=None,
        head_dim=None,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        tie_word_embeddings=False,
        mask_token_id=None,
        slack_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        bos_token_id=None,
        auto_map=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else _div_or_none(hidden_size, num_attention_heads)
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        self.slack_token_id = slack_token_id
        self.auto_map = dict(auto_map) if auto_map is not None else dict(DEFAULT_AUTO_MAP)
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._check()

    def _check(self):
        """Refuse contradictory values at creation, naming the field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MDLMConfig.{name} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            raise ValueError(
                f"MDLMConfig.num_attention_heads={self.num_attention_heads} does not divide "
                f"hidden_size={self.hidden_size}; set head_dim explicitly or change one of them"
            )
        if self.head_dim % 2:
            raise ValueError(f"MDLMConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"MDLMConfig.num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if not self.rope_theta > 0:
            raise ValueError(f"MDLMConfig.rope_theta must be positive, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"MDLMConfig.rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"MDLMConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        for name in ("mask_token_id", "slack_token_id", "pad_token_id", "bos_token_id"):
            _check_token_id(name, getattr(self, name), self.vocab_size)
        eos = self.eos_token_id
        for token in eos if isinstance(eos, (list, tuple)) else [eos]:
            _check_token_id("eos_token_id", token, self.vocab_size)
        if self.mask_token_id is not None and self.mask_token_id == self.slack_token_id:
            raise ValueError(f"MDLMConfig.slack_token_id must differ from mask_token_id ({self.mask_token_id})")


def _div_or_none(a, b):
    if isinstance(a, int) and isinstance(b, int) and b > 0 and a % b == 0:
        return a // b
    return None


def _check_token_id(name, value, vocab_size):
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
        raise ValueError(f"MDLMConfig.{name}={value!r} is not a token id in [0, vocab_size={vocab_size})")


__all__ = ["MDLMConfig"]
