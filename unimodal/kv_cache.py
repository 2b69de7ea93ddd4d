"""Per-layer key/value cache of a prefix, for reusing a prompt across diffusion steps (SPRINT).

Unlike an autoregressive cache it is never appended to token by token: the sampler builds it
with one forward over the prefix (``use_cache=True``), may prune it (`PrefixKVCache.select`),
and passes it to every later forward, whose tokens then attend to the cached prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefixKVCache:
    """Keys and values of a prefix for every layer, plus the positions of the cached tokens.

    Attributes:
        keys: one (batch, kv_heads, prefix_len, head_dim) tensor per layer, stored AFTER the
            per-head RMSNorm and RoPE (ready to attend to).
        values: one (batch, kv_heads, prefix_len, head_dim) tensor per layer.
        positions: (batch, prefix_len) int64 absolute positions of the cached tokens.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(
                f"keys and values need one tensor per layer, got {len(self.keys)} and {len(self.values)}"
            )
        if self.positions.ndim != 2:
            raise ValueError(f"positions must be (batch, prefix_len), got shape {tuple(self.positions.shape)}")
        expected = (self.positions.shape[0], self.positions.shape[1])
        for layer, (key, value) in enumerate(zip(self.keys, self.values)):
            if key.shape != value.shape or key.ndim != 4 or (key.shape[0], key.shape[2]) != expected:
                raise ValueError(
                    f"layer {layer}: keys {tuple(key.shape)} / values {tuple(value.shape)} must both be "
                    f"(batch={expected[0]}, kv_heads, prefix_len={expected[1]}, head_dim)"
                )

    @property
    def num_layers(self) -> int:
        """Number of layers cached."""
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        """Batch size of the cached prefix."""
        return self.positions.shape[0]

    @property
    def prefix_len(self) -> int:
        """Number of cached tokens per sample."""
        return self.positions.shape[1]

    def __len__(self) -> int:
        return self.prefix_len

    def select(self, keep_index: torch.Tensor) -> PrefixKVCache:
        """Keep a subset of the cached tokens (e.g. SPRINT pruning), per sample.

        Args:
            keep_index: (batch, n_keep) int64 indices into the prefix, in [0, prefix_len).

        Returns:
            A new `PrefixKVCache` of prefix_len ``n_keep`` whose token j is the input's token
            ``keep_index[:, j]`` (keys, values and positions gathered alike).
        """
        if keep_index.ndim != 2 or keep_index.shape[0] != self.batch_size:
            raise ValueError(
                f"keep_index must be (batch={self.batch_size}, n_keep), got shape {tuple(keep_index.shape)}"
            )
        if keep_index.numel() and (keep_index.min() < 0 or keep_index.max() >= self.prefix_len):
            raise ValueError(
                f"keep_index values must be in [0, prefix_len={self.prefix_len}), got "
                f"[{int(keep_index.min())}, {int(keep_index.max())}]"
            )
        keep_index = keep_index.to(self.positions.device)

        def gather(tensor: torch.Tensor) -> torch.Tensor:
            index = keep_index[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3])
            return tensor.gather(2, index.to(tensor.device))

        return PrefixKVCache(
            keys=[gather(key) for key in self.keys],
            values=[gather(value) for value in self.values],
            positions=self.positions.gather(1, keep_index),
        )

    def key_norm_importance(self) -> torch.Tensor:
        """Score each cached token by the L2 norm of its keys.

        Returns:
            (batch, prefix_len) float32: the key L2 norm averaged over layers and kv heads,
            min-max normalised per sample to [0, 1] (all zeros when a sample's norms are equal).
        """
        norms = torch.stack([key.float().norm(dim=-1).mean(dim=1) for key in self.keys]).mean(dim=0)
        low = norms.min(dim=1, keepdim=True).values
        span = norms.max(dim=1, keepdim=True).values - low
        return torch.where(span > 0, (norms - low) / span.clamp_min(1e-12), torch.zeros_like(norms))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PrefixKVCache:
        """Move keys/values to ``device`` and cast them to ``dtype`` (positions stay int64)."""
        return PrefixKVCache(
            keys=[key.to(device=device, dtype=dtype) for key in self.keys],
            values=[value.to(device=device, dtype=dtype) for value in self.values],
            positions=self.positions.to(device=device),
        )


__all__ = ["PrefixKVCache"]
