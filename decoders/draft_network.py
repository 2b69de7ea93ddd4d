"""A small convolutional network that regresses a token grid's clean latents (the "draft").

A learned latent patch per code (`SigVQEmbedding.draft_latent_patches`) cannot tell a circle's
corner from a square's: that depends on the neighbouring codes. `DraftNetwork` embeds every code,
mixes each cell with its neighbours through residual 3 x 3 convolutions (whose group norms also
share statistics over the whole grid, e.g. how much of it is background), and writes a latent patch
per cell, trained by regression to the VAE latents of the image the grid was coded from (the
`draft_loss` of `unimask.decoders.training_losses`). The decoder transformer then reads that
estimate beside the noisy latents and only has to sharpen it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DraftNetwork"]


class _ResidualConvBlock(nn.Module):
    """x + GELU(GroupNorm(Conv3x3(x))) on (batch, width, h, w)."""

    def __init__(self, width: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(groups, width)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class DraftNetwork(nn.Module):
    """Token grid -> draft latents.

    Args:
        vocab_size: number of codes.
        width: channels of the convolutional trunk (a multiple of 8, for its group norms).
        layers: residual 3 x 3 blocks (each widens the receptive field by one cell on every side).
        channels, patch: the draft's latent channels and the latent patch side written per cell.
    """

    def __init__(self, vocab_size: int, width: int, layers: int, channels: int, patch: int):
        super().__init__()
        if width <= 0 or width % 8 or layers <= 0 or channels <= 0 or patch <= 0:
            raise ValueError(
                f"DraftNetwork needs width a positive multiple of 8 and layers, channels, patch > 0; got width={width}, "
                f"layers={layers}, channels={channels}, patch={patch}"
            )
        self.channels, self.patch = channels, patch
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList([_ResidualConvBlock(width, groups=8) for _ in range(layers)])
        self.head = nn.Conv2d(width, channels * patch * patch, kernel_size=1)

    def forward(self, token_grids: torch.Tensor) -> torch.Tensor:
        """token_grids: (batch, h, w) int64 -> (batch, channels, h * patch, w * patch) float."""
        x = self.token_embedding(token_grids).permute(0, 3, 1, 2)
        for block in self.blocks:
            x = block(x)
        return nn.functional.pixel_shuffle(self.head(x), self.patch)
