"""The LLaDA2.0-Uni MoE masked-diffusion backbone, with the official checkpoint's weight names.

Module tree (= weight names): ``model.word_embeddings``, ``model.layers.{i}.{input_layernorm,
attention.{query_key_value,query_layernorm,key_layernorm,dense}, post_attention_layernorm, mlp}``,
``model.norm``, ``lm_head``. Dense layers have ``mlp.{gate,up,down}_proj``; MoE layers have
``mlp.gate.{weight,expert_bias}``, ``mlp.experts`` and ``mlp.shared_experts.{gate,up,down}_proj``.

The experts are stored stacked (``mlp.experts.gate_up_proj`` (E, 2I, H), ``mlp.experts.down_proj``
(E, H, I)) so that transformers' grouped-matmul dispatch can run them; a checkpoint conversion
registered below maps them from/to the official per-expert names
(``mlp.experts.{e}.{gate,up,down}_proj.weight``) in ``from_pretrained``/``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter
from transformers.integrations import use_experts_implementation
from transformers.integrations.moe import ExpertsInterface
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from unimask.checkpoint_files import read_json_object

from .checkpoint_layout import check_official_checkpoint, read_official_weights_into
from .configuration_llada2_moe import LLaDA2MoeConfig
from .kv_cache import PrefixKVCache
from .moe_routing import (
    expert_load,
    naive_experts_forward,
    route_tokens,
    router_z_loss,
    sorted_grouped_experts_forward,
)

# from_pretrained keywords the streamed CPU loader handles; any other goes through transformers' loader.
_STREAMED_LOAD_KWARGS = frozenset({"config", "dtype"})

# transformers' experts interface with "grouped_mm" replaced locally (the global registry is untouched):
# on CPU the combine step scatter-adds instead of un-permuting (see moe_routing.py).
LLADA2_EXPERTS_FUNCTIONS = ExpertsInterface()
LLADA2_EXPERTS_FUNCTIONS["grouped_mm"] = sorted_grouped_experts_forward



class LLaDA2MoeRMSNorm(nn.Module):
    """RMSNorm over the last dimension, computed in fp32 (weight applied in the input dtype)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., hidden), same dtype as the input."""
        input_dtype = hidden_states.dtype
        hidden_fp32 = hidden_states.float()
        hidden_fp32 = hidden_fp32 * torch.rsqrt(hidden_fp32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_fp32.to(input_dtype)


class LLaDA2MoeRotaryEmbedding(nn.Module):
    """Rotary table for the first ``rotary_dim`` channels of each head (rotate-half form)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.rotary_dim = config.rotary_dim
        self.base = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        """(rotary_dim // 2,) float32 inverse frequencies ``base ** (-2i / rotary_dim)``."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64).float() / self.rotary_dim
        return 1.0 / (self.base**exponents)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: (batch, seq) int64 -> ``(cos, sin)``, each (batch, seq, rotary_dim) float32."""
        freqs = position_ids[..., None].float() * self.inv_freq.float().to(position_ids.device)
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_partial_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of each head; the rest pass through.

    Args:
        states: (batch, heads, seq, head_dim).
        cos, sin: (batch, seq, rotary_dim) float32.

    Returns:
        (batch, heads, seq, head_dim) in the dtype of ``states``.
    """
    rotary_dim = cos.shape[-1]
    cos, sin = cos[:, None].to(states.dtype), sin[:, None].to(states.dtype)
    rotated, passed = states[..., :rotary_dim], states[..., rotary_dim:]
    return torch.cat([rotated * cos + _rotate_half(rotated) * sin, passed], dim=-1)


class LLaDA2MoeAttention(nn.Module):
    """GQA self-attention: fused qkv, per-head qk RMSNorm, partial RoPE, SDPA, output ``dense``."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.query_key_value = nn.Linear(
            config.hidden_size,
            (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
            bias=config.use_qkv_bias,
        )
        self.query_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.key_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        prefix_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend the new tokens to the cached prefix (if any) and to each other.

        Args:
            hidden_states: (batch, seq, hidden).
            rotary: ``(cos, sin)`` of the new tokens, each (batch, seq, rotary_dim).
            attention_mask: None (all visible), or a (batch|1, 1, seq, prefix+seq) bool / additive mask.
            prefix_key_value: cached ``(keys, values)``, each (batch, kv_heads, prefix, head_dim).

        Returns:
            ``(output (batch, seq, hidden), (keys, values))`` where keys/values cover prefix + new
            tokens, keys after qk-norm and RoPE.
        """
        batch, seq_len, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(
            batch, seq_len, self.num_heads + 2 * self.num_key_value_heads, self.head_dim
        )
        query, key, value = qkv.transpose(1, 2).split(
            [self.num_heads, self.num_key_value_heads, self.num_key_value_heads], dim=1
        )
        cos, sin = rotary
        query = apply_partial_rotary(self.query_layernorm(query), cos, sin)
        key = apply_partial_rotary(self.key_layernorm(key), cos, sin)
        if prefix_key_value is not None:
            key = torch.cat([prefix_key_value[0].to(key.dtype), key], dim=2)
            value = torch.cat([prefix_key_value[1].to(value.dtype), value], dim=2)
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            enable_gqa=self.num_heads != self.num_key_value_heads,
        )
        output = self.dense(attended.transpose(1, 2).reshape(batch, seq_len, -1))
        return output, (key, value)


class LLaDA2MoeMLP(nn.Module):
    """SwiGLU MLP ``down(act(gate(x)) * up(x))`` (dense layers and shared experts)."""

    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., hidden)."""
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


@use_experts_implementation(experts_interface=LLADA2_EXPERTS_FUNCTIONS)
class LLaDA2MoeExperts(nn.Module):
    """The routed SwiGLU experts, stored stacked.

    ``forward`` dispatches on ``config._experts_implementation`` (transformers' experts interface):
    "grouped_mm" (default: tokens sorted by expert, two grouped matmuls; on CPU
    `sorted_grouped_experts_forward`), "batched_mm", or
    "eager" (the per-expert reference loop below).
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.gate_up_proj = nn.Parameter(
            torch.empty(config.num_experts, 2 * config.moe_intermediate_size, config.hidden_size)
        )
        self.down_proj = nn.Parameter(
            torch.empty(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        )
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states (tokens, hidden), top_k_index (tokens, k) int64, top_k_weights (tokens, k)
        -> (tokens, hidden): the weighted sum of the chosen experts' outputs."""
        return naive_experts_forward(
            hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj, self.act_fn
        )


class LLaDA2MoeGate(nn.Module):
    """Sigmoid router in fp32 with a selection bias buffer (``expert_bias``)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden_states (tokens, hidden) -> ``(topk_index (tokens, k) int64, topk_weight (tokens, k)
        float32, router_logits (tokens, num_experts) float32)``."""
        logits = F.linear(hidden_states.float(), self.weight.float())
        topk_index, topk_weight = route_tokens(
            logits,
            self.expert_bias,
            top_k=self.top_k,
            n_group=self.n_group,
            topk_group=self.topk_group,
            routed_scaling_factor=self.routed_scaling_factor,
            norm_topk_prob=self.norm_topk_prob,
        )
        return topk_index, topk_weight, logits


@dataclass
class RouterStats:
    """Routing statistics of one MoE layer for one forward.

    Attributes:
        layer_idx: index of the decoder layer.
        expert_load: (num_experts,) float32 number of token assignments per expert.
        router_logits: (tokens, num_experts) float32 router logits (for the z-loss).
    """

    layer_idx: int
    expert_load: torch.Tensor
    router_logits: torch.Tensor


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed experts plus shared expert(s): ``experts(x) + shared_experts(x)``."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_experts = config.num_experts
        self.gate = LLaDA2MoeGate(config)
        self.experts = LLaDA2MoeExperts(config)
        self.shared_experts = (
            LLaDA2MoeMLP(config, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """(batch, seq, hidden) -> ``((batch, seq, hidden), RouterStats)``."""
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        topk_index, topk_weight, logits = self.gate(flat)
        output = self.experts(flat, topk_index, topk_weight).view_as(hidden_states)
        if self.shared_experts is not None:
            output = output + self.shared_experts(hidden_states)
        stats = RouterStats(self.layer_idx, expert_load(topk_index.detach(), self.num_experts), logits)
        return output, stats


class LLaDA2MoeDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attention(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention = LLaDA2MoeAttention(config, layer_idx)
        self.post_attention_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.num_experts and layer_idx >= config.first_k_dense_replace:
            self.mlp = LLaDA2MoeSparseMoeBlock(config, layer_idx)
        else:
            self.mlp = LLaDA2MoeMLP(config, config.intermediate_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        prefix_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], RouterStats | None]:
        """(batch, seq, hidden) -> ``(hidden_states, (keys, values), RouterStats or None)``."""
        attended, key_value = self.attention(
            self.input_layernorm(hidden_states), rotary, attention_mask, prefix_key_value
        )
        hidden_states = hidden_states + attended
        mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
        stats = None
        if isinstance(mlp_out, tuple):
            mlp_out, stats = mlp_out
        return hidden_states + mlp_out, key_value, stats


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    """Weight initialisation and transformers plumbing shared by the backbone classes."""

    config_class = LLaDA2MoeConfig
    config: LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = None

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, LLaDA2MoeExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, LLaDA2MoeGate):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.expert_bias)
        elif isinstance(module, LLaDA2MoeRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """Embeddings, decoder layers and the final norm; returns hidden states (see `LLaDA2MoeModelLM`)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            [LLaDA2MoeDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LLaDA2MoeRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past_key_values: PrefixKVCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, PrefixKVCache | None, list[RouterStats]]:
        """Run the decoder on already validated inputs.

        Args:
            input_ids: (batch, seq) int64.
            attention_mask: None or a (batch|1, 1, seq, prefix+seq) bool / additive mask.
            position_ids: (batch, seq) int64.
            past_key_values: cached prefix or None.
            use_cache: also return the keys/values of prefix + these tokens.

        Returns:
            ``(hidden (batch, seq, hidden), cache or None, router stats of the MoE layers)``.
        """
        hidden_states = self.word_embeddings(input_ids)
        rotary = self.rotary_emb(position_ids)
        keys, values, router_stats = [], [], []
        for layer_idx, layer in enumerate(self.layers):
            prefix = None
            if past_key_values is not None:
                prefix = (past_key_values.keys[layer_idx], past_key_values.values[layer_idx])
            hidden_states, (key, value), stats = layer(
                hidden_states, rotary, attention_mask=attention_mask, prefix_key_value=prefix
            )
            if use_cache:
                keys.append(key)
                values.append(value)
            if stats is not None:
                router_stats.append(stats)
        cache = None
        if use_cache:
            positions = position_ids
            if past_key_values is not None:
                positions = torch.cat([past_key_values.positions.to(position_ids.device), position_ids], dim=1)
            cache = PrefixKVCache(keys=keys, values=values, positions=positions)
        return self.norm(hidden_states), cache, router_stats


@dataclass
class LLaDA2MoeOutput(ModelOutput):
    """Output of `LLaDA2MoeModelLM.forward`.

    Attributes:
        logits: (batch, seq, vocab) float32.
        cache: `PrefixKVCache` of the given prefix + this call's tokens when ``use_cache=True``,
            else None; also readable as ``past_key_values`` (transformers >= 5 names the field
            ``cache`` in every `ModelOutput`).
        router_stats: list of `RouterStats` (one per MoE layer) when ``output_router_stats=True``.
        aux_loss: () float32 mean router z-loss over the MoE layers when ``output_router_stats=True``.
        hidden_states: (batch, seq, hidden) final normed hidden states when ``output_hidden_states=True``.
    """

    logits: torch.Tensor | None = None
    cache: PrefixKVCache | None = None
    router_stats: list[RouterStats] | None = None
    aux_loss: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None

    @property
    def past_key_values(self) -> PrefixKVCache | None:
        """The `PrefixKVCache` returned with ``use_cache=True`` (same object as ``cache``)."""
        return self.cache


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel):
    """The LLaDA2.0-Uni backbone: `LLaDA2MoeModel` plus an untied ``lm_head``.

    Load an official checkpoint with ``LLaDA2MoeModelLM.from_pretrained(path, dtype=...)``:
    loading is strict (a missing, unexpected or mis-shaped weight raises a ValueError listing
    the keys).
    """

    _HANDLED_KWARGS = ("return_dict", "output_hidden_states", "output_attentions")

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' ``from_pretrained`` (meta-device init, mmap'd safetensors shards, ``dtype``,
        ``device_map``), made strict: raises ValueError listing missing / unexpected / mis-shaped keys.

        A local directory is first checked against the official layout from the safetensors
        headers (so a missing expert is named, not reported as a failed stacking); transformers'
        own loading report is checked afterwards.
        """
        want_info = kwargs.pop("output_loading_info", False)
        directory = Path(str(pretrained_model_name_or_path))
        if directory.is_dir():
            config = kwargs.get("config")
            if isinstance(config, PretrainedConfig):
                config_dict = config.to_dict()
            else:
                config_dict = read_json_object(directory / "config.json")
                cls.config_class.from_dict(config_dict)  # bad sizes fail here, named, before the layout check
            check_official_checkpoint(directory, config_dict)
            if not model_args and set(kwargs) <= _STREAMED_LOAD_KWARGS:
                model = cls._streamed_from_directory(directory, kwargs.get("config"), kwargs.get("dtype"))
                if model is not None:
                    info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
                    return (model, info) if want_info else model
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        problems = {
            "missing": sorted(info["missing_keys"]),
            "unexpected": sorted(info["unexpected_keys"]),
            "mismatched": sorted(str(item) for item in info["mismatched_keys"]),
            "errors": list(info["error_msgs"]),
        }
        if any(problems.values()):
            details = "; ".join(f"{kind} keys: {keys}" for kind, keys in problems.items() if keys)
            raise ValueError(f"checkpoint at {pretrained_model_name_or_path} does not match {cls.__name__}: {details}")
        return (model, info) if want_info else model

    @classmethod
    def _streamed_from_directory(cls, directory: Path, config, dtype) -> "LLaDA2MoeModelLM | None":
        """Load a local official-layout checkpoint on CPU by reading each tensor into its allocated
        parameter (`read_official_weights_into`): peak memory about one model, where transformers'
        loader holds the mapped shards and the stacked experts at once. Returns None (the caller then
        uses transformers' loader) for a dtype it does not handle or tied embeddings."""
        if not isinstance(config, PretrainedConfig):
            config = LLaDA2MoeConfig.from_pretrained(directory)
        if dtype in (None, "auto"):
            dtype = getattr(config, "dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or config.tie_word_embeddings:
            return None
        with torch.device("meta"):
            model = cls(config).to(dtype)
        model = model.to_empty(device="cpu")
        read_official_weights_into(model, directory)
        # Not stored in checkpoints; float32 whatever the weights' dtype, as the module builds it.
        model.model.rotary_emb.inv_freq = model.model.rotary_emb.compute_inv_freq()
        model.config.dtype = dtype
        return model.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: PrefixKVCache | None = None,
        use_cache: bool = False,
        output_router_stats: bool = False,
        **kwargs,
    ) -> LLaDA2MoeOutput:
        """Predict every position's token distribution.

        Args:
            input_ids: (B, L) int64 ids in [0, vocab_size).
            attention_mask: None (fully bidirectional, all of the cached prefix visible), or a
                bool mask (True = may attend) / additive float mask of shape (L, K), (B, L, K) or
                (B, 1, L, K), batch dim B or 1, with K = prefix_len + L (prefix keys first).
            position_ids: (B, L) int64 absolute positions in [0, max_position_embeddings);
                default 0..L-1; required with ``past_key_values``.
            past_key_values: `PrefixKVCache` the new tokens attend to.
            use_cache: return in the output the cache of the prefix + these L tokens.
            output_router_stats: return per-MoE-layer `RouterStats` and the z-loss as ``aux_loss``.
            **kwargs: ``output_hidden_states`` (return the final hidden states); ``return_dict`` /
                ``output_attentions=False`` are accepted for transformers compatibility.

        Returns:
            `LLaDA2MoeOutput` with ``logits`` (B, L, vocab) float32.

        Raises:
            ValueError: ids outside the vocabulary, positions outside the context, a mask or cache
                whose shape does not fit.
        """
        unknown = set(kwargs) - set(self._HANDLED_KWARGS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions=True is not supported (attention runs through SDPA)")
        position_ids = self._check_inputs(input_ids, position_ids, past_key_values)
        prefix_len = 0 if past_key_values is None else past_key_values.prefix_len
        mask = self._prepare_attention_mask(attention_mask, input_ids.shape, prefix_len)
        hidden, cache, router_stats = self.model(input_ids, mask, position_ids, past_key_values, use_cache)
        logits = self.lm_head(hidden).float()
        aux_loss = None
        if output_router_stats and router_stats:
            aux_loss = torch.stack([router_z_loss(stats.router_logits) for stats in router_stats]).mean()
        return LLaDA2MoeOutput(
            logits=logits,
            cache=cache,
            router_stats=router_stats if output_router_stats else None,
            aux_loss=aux_loss,
            hidden_states=hidden if kwargs.get("output_hidden_states") else None,
        )

    def _check_inputs(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, cache: PrefixKVCache | None
    ) -> torch.Tensor:
        config = self.config
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be (batch, seq) int64, got {tuple(input_ids.shape)} {input_ids.dtype}")
        batch, seq_len = input_ids.shape
        if batch == 0 or seq_len == 0:
            raise ValueError(f"input_ids must hold at least one token per row, got shape {tuple(input_ids.shape)}")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= config.vocab_size:
            raise ValueError(f"input_ids must be in [0, vocab_size={config.vocab_size}), got values in [{low}, {high}]")
        if cache is not None:
            if cache.num_layers != config.num_hidden_layers or cache.batch_size != batch:
                raise ValueError(
                    f"past_key_values has {cache.num_layers} layers and batch {cache.batch_size}, expected "
                    f"{config.num_hidden_layers} layers and batch {batch}"
                )
            if position_ids is None:
                raise ValueError("position_ids are required with past_key_values (absolute positions of input_ids)")
        if position_ids is None:
            if seq_len > config.max_position_embeddings:
                raise ValueError(
                    f"sequence length {seq_len} exceeds max_position_embeddings={config.max_position_embeddings}"
                )
            return torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)
        if position_ids.shape != input_ids.shape:
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected {tuple(input_ids.shape)}")
        low, high = int(position_ids.min()), int(position_ids.max())
        if low < 0 or high >= config.max_position_embeddings:
            raise ValueError(
                f"position_ids must be in [0, max_position_embeddings={config.max_position_embeddings}), "
                f"got values in [{low}, {high}]"
            )
        return position_ids.long()

    def _prepare_attention_mask(
        self, attention_mask: torch.Tensor | None, input_shape: torch.Size, prefix_len: int
    ) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        batch, seq_len = input_shape
        expected_qk = (seq_len, prefix_len + seq_len)
        mask = attention_mask
        if mask.ndim == 2:
            mask = mask[None, None]
        elif mask.ndim == 3:
            mask = mask[:, None]
        if mask.ndim != 4 or tuple(mask.shape[-2:]) != expected_qk or mask.shape[0] not in (1, batch) or (
            mask.shape[1] not in (1, self.config.num_attention_heads)
        ):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (L, K), (B, L, K) or "
                f"(B, 1, L, K) with B in (1, {batch}), L={seq_len}, K=prefix_len+L={expected_qk[1]}"
            )
        if mask.dtype == torch.bool:
            return mask
        if not mask.is_floating_point():
            raise ValueError(f"attention_mask must be bool or floating (additive), got {mask.dtype}")
        return mask.to(self.lm_head.weight.dtype)


# The official checkpoint stores one Linear per expert; the model stacks them (see module docstring).
register_checkpoint_conversion_mapping(
    LLaDA2MoeModelLM.__name__,
    [
        WeightConverter(
            source_patterns=["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
            target_patterns="mlp.experts.gate_up_proj",
            operations=[MergeModulelist(dim=0), Concatenate(dim=1)],
        ),
        WeightConverter(
            source_patterns="mlp.experts.*.down_proj.weight",
            target_patterns="mlp.experts.down_proj",
            operations=[MergeModulelist(dim=0)],
        ),
    ],
    overwrite=True,
)


__all__ = [
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoeOutput",
    "LLaDA2MoePreTrainedModel",
    "RouterStats",
    "apply_partial_rotary",
]
