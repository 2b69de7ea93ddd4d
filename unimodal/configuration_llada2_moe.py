"""Configuration of the LLaDA2.0-Uni MoE masked-diffusion backbone (``model_type`` "llada2_moe").

The attribute names are the keys of the official backbone ``config.json``, so an official
checkpoint directory loads with ``LLaDA2MoeConfig.from_pretrained(path)`` and a config saved here
reads back in the official code. The defaults are the published LLaDA2.0-Uni (16B) values.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# Keys of the official backbone config.json. Written by `tiny_checkpoint` and checked by the
# tests; ``architectures`` / ``model_type`` / ``dtype`` are handled by transformers itself.
OFFICIAL_CONFIG_KEYS = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "use_qkv_bias",
    "use_qk_norm",
    "use_bias",
    "use_rmsnorm",
    "norm_head",
    "norm_softmax",
    "rms_norm_eps",
    "embedding_dropout",
    "attention_dropout",
    "output_dropout",
    "initializer_range",
    "max_position_embeddings",
    "max_window_layers",
    "use_sliding_window",
    "sliding_window",
    "rope_theta",
    "rope_scaling",
    "partial_rotary_factor",
    "rotary_dim",
    "pad_token_id",
    "eos_token_id",
    "num_experts",
    "num_shared_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "routed_scaling_factor",
    "moe_intermediate_size",
    "first_k_dense_replace",
    "moe_router_enable_expert_bias",
    "norm_topk_prob",
    "router_dtype",
    "score_function",
    "output_router_logits",
    "using_split_qkv_in_self_attention",
    "image_token_offset",
    "tie_word_embeddings",
    "use_cache",
)


# Sizes that must be positive integers; checked before any arithmetic on them.
_POSITIVE_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "moe_intermediate_size",
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class LLaDA2MoeConfig(PretrainedConfig):
    """Hyper-parameters of `LLaDA2MoeModelLM` (the names of the official config.json).

    Architecture summary: ``num_hidden_layers`` pre-norm blocks; GQA attention with a fused
    ``query_key_value`` projection, per-head RMSNorm on queries and keys and RoPE on the first
    ``head_dim * partial_rotary_factor`` channels; layers ``< first_k_dense_replace`` use a dense
    SwiGLU MLP of width ``intermediate_size``, the others a MoE of ``num_experts`` SwiGLU experts of
    width ``moe_intermediate_size`` with a sigmoid router (group-limited top-``num_experts_per_tok``
    over ``n_group`` groups, best ``topk_group`` groups) and ``num_shared_experts`` shared experts.

    Raises:
        ValueError: when the sizes are inconsistent (e.g. heads not divisible by kv heads, experts
            not divisible by groups, top-k larger than the experts in the kept groups).
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 173568,
        hidden_size: int = 2048,
        intermediate_size: int = 5120,
        num_hidden_layers: int = 20,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 4,
        head_dim: int | None = 128,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_qk_norm: bool = True,
        use_bias: bool = False,
        use_rmsnorm: bool = True,
        norm_head: bool = False,
        norm_softmax: bool = False,
        rms_norm_eps: float = 1e-6,
        embedding_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        output_dropout: float = 0.0,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 8192,
        max_window_layers: int = 20,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        rope_theta: float = 600000.0,
        rope_scaling: dict | None = None,
        partial_rotary_factor: float = 0.5,
        rotary_dim: int | None = None,
        pad_token_id: int | None = 156892,
        eos_token_id: int | None = 156892,
        num_experts: int = 256,
        num_shared_experts: int = 1,
        num_experts_per_tok: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        routed_scaling_factor: float = 2.5,
        moe_intermediate_size: int = 512,
        first_k_dense_replace: int = 1,
        moe_router_enable_expert_bias: bool = True,
        norm_topk_prob: bool = True,
        router_dtype: str = "fp32",
        score_function: str = "sigmoid",
        output_router_logits: bool = False,
        using_split_qkv_in_self_attention: bool = False,
        image_token_offset: int = 157184,
        tie_word_embeddings: bool = False,
        use_cache: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_qk_norm = use_qk_norm
        self.use_bias = use_bias
        self.use_rmsnorm = use_rmsnorm
        self.norm_head = norm_head
        self.norm_softmax = norm_softmax
        self.rms_norm_eps = rms_norm_eps
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.max_window_layers = max_window_layers
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.rope_theta = rope_theta
        # transformers >= 5 turns `rope_scaling` into `rope_parameters`; the official checkpoint has
        # rope_scaling null and only plain RoPE is implemented, so anything else is refused.
        _require(rope_scaling is None, f"rope_scaling={rope_scaling!r} is not supported, only null")
        self.partial_rotary_factor = partial_rotary_factor
        self.rotary_dim = rotary_dim if rotary_dim is not None else int(self.head_dim * partial_rotary_factor)
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.norm_topk_prob = norm_topk_prob
        self.router_dtype = router_dtype
        self.score_function = score_function
        self.output_router_logits = output_router_logits
        self.using_split_qkv_in_self_attention = using_split_qkv_in_self_attention
        self.image_token_offset = image_token_offset
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate_sizes()

    def _validate_sizes(self) -> None:
        for name in _POSITIVE_SIZES:
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name}={value!r} must be a positive integer",
            )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_attention_heads={self.num_attention_heads} must be a multiple of "
            f"num_key_value_heads={self.num_key_value_heads}",
        )
        _require(
            0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0,
            f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]",
        )
        _require(
            0 <= self.first_k_dense_replace <= self.num_hidden_layers,
            f"first_k_dense_replace={self.first_k_dense_replace} must be in [0, {self.num_hidden_layers}]",
        )
        _require(
            self.pad_token_id is None or 0 <= self.pad_token_id < self.vocab_size,
            f"pad_token_id={self.pad_token_id} must be in [0, vocab_size={self.vocab_size})",
        )
        if self.num_experts is None:
            return
        _require(
            self.n_group >= 1 and self.num_experts % self.n_group == 0,
            f"num_experts={self.num_experts} must be a multiple of n_group={self.n_group}",
        )
        experts_per_group = self.num_experts // self.n_group
        _require(
            1 <= self.topk_group <= self.n_group,
            f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}]",
        )
        _require(
            experts_per_group >= 2 or self.n_group == 1,
            f"each of the n_group={self.n_group} groups needs at least 2 experts (group score = sum of "
            f"the top-2 scores), got {experts_per_group}",
        )
        _require(
            1 <= self.num_experts_per_tok <= self.topk_group * experts_per_group,
            f"num_experts_per_tok={self.num_experts_per_tok} must be in "
            f"[1, topk_group * experts_per_group = {self.topk_group * experts_per_group}]",
        )
        _require(
            self.score_function == "sigmoid",
            f"score_function={self.score_function!r} is not supported, only 'sigmoid'",
        )

    @property
    def image_vocab_size(self) -> int:
        """Number of image codes in the joint vocabulary: ``vocab_size - image_token_offset``."""
        return self.vocab_size - self.image_token_offset


__all__ = ["LLaDA2MoeConfig", "OFFICIAL_CONFIG_KEYS"]
