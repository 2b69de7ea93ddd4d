"""The MoE masked-diffusion backbone (LLaDA2.0-Uni layout): config, model, cache, masks, losses."""

from .configuration_llada2_moe import LLaDA2MoeConfig
from .kv_cache import PrefixKVCache
from .modeling_llada2_moe import LLaDA2MoeModel, LLaDA2MoeModelLM, LLaDA2MoeOutput, RouterStats

__all__ = [
    "LLaDA2MoeConfig",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoeOutput",
    "PrefixKVCache",
    "RouterStats",
]
