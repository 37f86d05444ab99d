"""Configuration of a masked diffusion language model (MDLM).

This file ships to the Hub next to the weights: it imports only transformers.
"""

import operator

from transformers import PretrainedConfig

# What a saved folder needs so that `AutoModel.from_pretrained(dir, trust_remote_code=True)` finds our classes.
# AutoModel maps to the model *with* the LM head and `generate`, as LLaDA and Dream do.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_mdlm.MDLMConfig",
    "AutoModel": "modeling_mdlm.MDLMForMaskedLM",
    "AutoModelForMaskedLM": "modeling_mdlm.MDLMForMaskedLM",
}


PREDICTION_ALIGNMENTS = ("same_token", "next_token")


class MDLMConfig(PretrainedConfig):
    r"""
    Configuration of [`MDLMModel`] / [`MDLMForMaskedLM`]: a bidirectional (non-causal) transformer with RMSNorm,
    rotary position embeddings, a SwiGLU MLP (or a mixture of SwiGLU experts) and grouped-query attention. It
    represents LLaDA-8B, LLaDA-MoE, Dream-7B and Llama/Qwen2/Qwen3 causal LMs run bidirectionally (A2D) exactly;
    the converters in `hf_mdlm.convert` set the fields.

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
        attention_bias (`bool`): bias on the query/key/value projections (Qwen2, Dream).
        attention_output_bias (`bool`): bias on the attention output projection.
        mlp_bias (`bool`): bias on the MLP projections (gate, up, down) and on the experts'.
        qk_norm (`bool`): RMS-normalise queries and keys per head over `head_dim` (one weight shared by the heads),
            before the rotary embedding (Qwen3, LLaDA-MoE).
        partial_rotary_factor (`float`): the rotary embedding turns the first `int(head_dim * factor)` dims of each
            head; the others pass through (LLaDA-MoE: 0.5).
        num_experts (`int`): 0 for dense MLPs; otherwise the MoE layers have this many SwiGLU experts of
            `moe_intermediate_size`, a linear router whose softmax scores pick `num_experts_per_tok` experts per
            token.
        num_experts_per_tok (`int`), moe_intermediate_size (`int`): top-k and expert width.
        moe_layers (`list[int]`, *optional*): indices of the MoE layers (default: all when `num_experts > 0`); the
            others have a dense MLP of `intermediate_size`.
        shared_expert_intermediate_size (`int`, *optional*): an always-on SwiGLU expert added to every MoE layer.
        expert_bias (`bool`): a per-expert bias (a buffer, as in auxiliary-loss-free balancing) added to the router
            scores before the top-k.
        expert_bias_in_weights (`bool`, defaults to True): the chosen experts' weights are the biased scores (as in
            LLaDA-MoE); False: the bias only chooses, the weights are the unbiased scores (LLaDA2, DeepSeek-V3).
        router_score_function (`str`, defaults to "softmax"): "softmax" over the experts or an independent
            "sigmoid" per expert (LLaDA2).
        router_groups (`int`, defaults to 1), router_topk_groups (`int`, *optional*): group-limited routing
            (LLaDA2): the experts form `router_groups` equal groups, a group's score is the sum of its two best
            routing scores, and each token chooses its experts among the `router_topk_groups` best groups only.
        routed_scaling_factor (`float`, defaults to 1.0): multiplies the chosen experts' weights (after
            `norm_topk_prob`).
        norm_topk_prob (`bool`): renormalise the chosen experts' weights to sum to 1.
        prediction_alignment (`str`): "same_token" (position i predicts the token at i: LLaDA, LLaDA-MoE) or
            "next_token" (position i predicts the token at i + 1: Dream and causal LMs adapted to diffusion).
            `forward` returns the raw per-position logits either way; the sampler, losses and evaluation read the
            prediction of token i from position i - 1 for "next_token" (position 0, which has no predecessor,
            uses its own logits, as Dream does).
        block_size (`int`, *optional*): None (the default) for full bidirectional attention; N for block diffusion
            (BD3LM, LLaDA2, SDAR): attention inside a block of N positions is bidirectional and across blocks causal,
            position i seeing position j when `j // N <= i // N`, positions counted over real tokens (the rotary
            positions, so left padding does not move the blocks). Finished blocks then never change the earlier
            ones, and the sampler's KV cache over them is exact. A 4D `attention_mask` passed to `forward` replaces
            this mask; flash attention cannot apply it.
        attention_dropout (`float`): dropout on attention probabilities during training.
        initializer_range (`float`): std of the normal initialisation.
        tie_word_embeddings (`bool`): share the input embedding and the LM head.
        mask_token_id (`int`): the `[MASK]` token of the diffusion process.
        slack_token_id (`int`, *optional*): the `<slack>` token of slack-CTC; None until a tokenizer adds it.
        eos_token_id, pad_token_id, bos_token_id (`int`, *optional*): the usual special tokens.
    """

    model_type = "mdlm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
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
        attention_output_bias=False,
        mlp_bias=False,
        qk_norm=False,
        partial_rotary_factor=1.0,
        num_experts=0,
        num_experts_per_tok=2,
        moe_intermediate_size=None,
        moe_layers=None,
        shared_expert_intermediate_size=None,
        expert_bias=False,
        expert_bias_in_weights=True,
        router_score_function="softmax",
        router_groups=1,
        router_topk_groups=None,
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        prediction_alignment="same_token",
        block_size=None,
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
        self.attention_output_bias = attention_output_bias
        self.mlp_bias = mlp_bias
        self.qk_norm = qk_norm
        self.partial_rotary_factor = partial_rotary_factor
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.moe_layers = None if moe_layers is None else list(moe_layers)
        self.shared_expert_intermediate_size = shared_expert_intermediate_size
        self.expert_bias = expert_bias
        self.expert_bias_in_weights = expert_bias_in_weights
        self.router_score_function = router_score_function
        self.router_groups = router_groups
        self.router_topk_groups = router_groups if router_topk_groups is None else router_topk_groups
        self.routed_scaling_factor = routed_scaling_factor
        self.norm_topk_prob = norm_topk_prob
        self.prediction_alignment = prediction_alignment
        self.block_size = block_size
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

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # What from_pretrained builds the config from. transformers only warns about another model_type, then builds
        # a model of default shape with random weights (or drops the weights it does not know): another family's
        # checkpoint is converted first, not loaded as it is.
        source_type = config_dict.get("model_type")
        if source_type != cls.model_type:
            raise ValueError(
                f"the config has model_type={source_type!r}, not {cls.model_type!r}: not an hf_mdlm model. Convert "
                "the checkpoint with hf_mdlm first (python -m hf_mdlm.convert FAMILY SRC DST; "
                "hf_mdlm.loading.load_for_inference and finetune.py convert it once on the fly) and load the "
                "converted folder"
            )
        return super().from_dict(config_dict, **kwargs)

    @property
    def prediction_shift(self) -> int:
        """1 when position i predicts token i + 1 ("next_token"), else 0."""
        return 1 if self.prediction_alignment == "next_token" else 0

    def is_moe_layer(self, index: int) -> bool:
        return bool(self.num_experts) and (self.moe_layers is None or index in self.moe_layers)

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
        if not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool) or self.head_dim <= 0:
            raise ValueError(f"MDLMConfig.head_dim must be a positive integer, got {self.head_dim!r}")
        if not self.initializer_range >= 0:
            raise ValueError(f"MDLMConfig.initializer_range must be >= 0, got {self.initializer_range!r}")
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
        rotary_dim = int(self.head_dim * self.partial_rotary_factor) if 0 < self.partial_rotary_factor <= 1 else 0
        if rotary_dim < 2 or rotary_dim % 2:
            raise ValueError(f"MDLMConfig.partial_rotary_factor={self.partial_rotary_factor!r} must be in (0, 1] and "
                             f"turn an even, non-zero number of the head's {self.head_dim} dims")
        if self.prediction_alignment not in PREDICTION_ALIGNMENTS:
            raise ValueError(f"MDLMConfig.prediction_alignment must be one of {PREDICTION_ALIGNMENTS}, got "
                             f"{self.prediction_alignment!r}")
        if self.block_size is not None and (not isinstance(self.block_size, int) or isinstance(self.block_size, bool)
                                            or self.block_size < 1):
            raise ValueError(f"MDLMConfig.block_size must be a positive integer or None, got {self.block_size!r}")
        if self.num_experts:
            if not isinstance(self.num_experts, int) or self.num_experts < 1:
                raise ValueError(f"MDLMConfig.num_experts must be 0 or a positive integer, got {self.num_experts!r}")
            if not isinstance(self.num_experts_per_tok, int) or not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"MDLMConfig.num_experts_per_tok={self.num_experts_per_tok!r} must be in "
                                 f"[1, num_experts={self.num_experts}]")
            if not isinstance(self.moe_intermediate_size, int) or self.moe_intermediate_size < 1:
                raise ValueError(f"MDLMConfig.moe_intermediate_size must be a positive integer with num_experts > 0, "
                                 f"got {self.moe_intermediate_size!r}")
            if self.router_score_function not in ("softmax", "sigmoid"):
                raise ValueError(f"MDLMConfig.router_score_function must be 'softmax' or 'sigmoid', got "
                                 f"{self.router_score_function!r}")
            groups, best = self.router_groups, self.router_topk_groups
            if (not isinstance(groups, int) or groups < 1 or self.num_experts % groups
                    or (groups > 1 and self.num_experts // groups < 2)):
                raise ValueError(f"MDLMConfig.router_groups={groups!r} must divide num_experts={self.num_experts} "
                                 "into groups of at least two experts")
            if not isinstance(best, int) or not 1 <= best <= groups or best * (self.num_experts // groups) < \
                    self.num_experts_per_tok:
                raise ValueError(f"MDLMConfig.router_topk_groups={best!r} must be in [1, router_groups={groups}] and "
                                 f"hold at least num_experts_per_tok={self.num_experts_per_tok} experts")
            shared = self.shared_expert_intermediate_size
            if shared is not None and (not isinstance(shared, int) or isinstance(shared, bool) or shared < 1):
                raise ValueError(f"MDLMConfig.shared_expert_intermediate_size must be None or a positive integer, got "
                                 f"{shared!r}")
            bad = [i for i in self.moe_layers or [] if not isinstance(i, int) or not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"MDLMConfig.moe_layers holds {bad}, not layer indices in [0, {self.num_hidden_layers})")
        for name in ("mask_token_id", "slack_token_id", "pad_token_id", "bos_token_id"):
            check_token_id(name, getattr(self, name), self.vocab_size)
        eos = self.eos_token_id
        for token in eos if isinstance(eos, (list, tuple)) else [eos]:
            check_token_id("eos_token_id", token, self.vocab_size)
        if self.mask_token_id is not None and self.mask_token_id == self.slack_token_id:
            raise ValueError(f"MDLMConfig.slack_token_id must differ from mask_token_id ({self.mask_token_id})")
        if self.mask_token_id is not None and self.mask_token_id in (eos if isinstance(eos, (list, tuple)) else [eos]):
            # the canvas is filled with EOS after the response: a [MASK] there could not be told from noise
            raise ValueError(f"MDLMConfig.eos_token_id must differ from mask_token_id ({self.mask_token_id})")


def _div_or_none(a, b):
    if isinstance(a, int) and isinstance(b, int) and b > 0 and a % b == 0:
        return a // b
    return None


def check_token_id(name, value, vocab_size, *, required=False, owner="MDLMConfig."):
    """`value` as a token id in [0, vocab_size), or None for None (an error when `required`); a ValueError naming
    `owner + name` otherwise. Shared by the config and the losses (which pass their logits' vocabulary)."""
    if value is None:
        if required:
            raise ValueError(f"{owner}{name} is None: the tokenizer/model config must define it")
        return None
    try:
        index = operator.index(value)  # ints of any kind (numpy, 0-d tensors), never bools or floats
    except TypeError:
        index = None
    if index is None or isinstance(value, bool) or not 0 <= index < vocab_size:
        raise ValueError(f"{owner}{name}={value!r} is not a token id of the vocabulary [0, {vocab_size})")
    return index


__all__ = ["MDLMConfig", "check_token_id"]
