"""SigVQ: semantic image tokens -> conditioning features of the diffusion decoder.

The official decoder conditions its Z-Image transformer on these features in place of caption
features. The module is a token embedding followed by a SiLU feed-forward; its weight names
(`prior_token_embedding`, `prior_projector.net.0.proj`, `prior_projector.net.2`) are the
official ones, so `image_tokenizer/sigvq_embedding.pt` loads into it strictly.
"""

from __future__ import annotations

import pickle

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from unimask.checkpoint_files import load_safetensors, load_state_dict_strict
from unimask.decoders.draft_network import DraftNetwork
from unimask.decoders.velocity import DecoderCondition

# The token grid is upsampled this much (nearest) before embedding: one feature per latent patch
# of the 1024 px output of a 512 px token grid.
GRID_UPSAMPLE = 2


def upsample_token_grid(token_grids: torch.Tensor, factor: int = GRID_UPSAMPLE) -> torch.Tensor:
    """Nearest-upsample token grids and flatten them row-major.

    token_grids: (batch, h, w) int64 -> (batch, h * factor * w * factor) int64.
    """
    batch, height, width = token_grids.shape
    grids = token_grids[:, :, None, :, None].expand(batch, height, factor, width, factor)
    return grids.reshape(batch, height * factor * width * factor)


class SigVQEmbedding(ModelMixin, ConfigMixin):
    """Embeds semantic token ids and projects them with a SiLU feed-forward (frozen by default).

    Args:
        vocab_size: codebook size (official: 16384).
        inner_dim: feature width (official: 4096); equals the transformer's `cap_feat_dim`.
        grid_position_size: 0 (official) or the largest side of the upsampled grid; when > 0, learned
            row and column embeddings (`grid_row_embedding`, `grid_col_embedding`) are added to the
            features of `encode_grids`. The transformer sees caption features at 1-D positions only,
            so a small decoder trained from scratch learns which latent patch a token belongs to
            far faster when the feature carries its grid cell.
        draft_channels, draft_patch: 0 (official) or the shape of a learned latent patch per code
            (`draft_latent_patches`, (vocab_size, draft_channels, draft_patch, draft_patch)): `draft_latents`
            tiles a grid's patches into a draft image at latent resolution, which a transformer built with
            `draft_channels` more input channels than the VAE latents reads next to the noisy latents, so
            every latent patch sees its own code in place (see `unimask.decoders.velocity`).
        draft_layers, draft_width: 0 (default) or a `DraftNetwork` (`draft_network`) of that many residual
            3 x 3 blocks of that width, which writes the draft from each code and its neighbours in place of
            the per-code patches; it is trained by regression to the clean latents (`draft_loss`), so its
            draft is an estimate of the image itself.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 16384,
        inner_dim: int = 4096,
        grid_position_size: int = 0,
        draft_channels: int = 0,
        draft_patch: int = 0,
        draft_layers: int = 0,
        draft_width: int = 0,
    ):
        super().__init__()
        self.prior_token_embedding = nn.Embedding(vocab_size, inner_dim)
        self.prior_projector = FeedForward(
            inner_dim, dim_out=inner_dim, inner_dim=inner_dim, activation_fn="linear-silu", bias=True
        )
        if grid_position_size < 0:
            raise ValueError(f"grid_position_size must be >= 0, got {grid_position_size}")
        if grid_position_size:
            self.grid_row_embedding = nn.Embedding(grid_position_size, inner_dim)
            self.grid_col_embedding = nn.Embedding(grid_position_size, inner_dim)
            # small next to the token features, so the cell does not drown what the token says
            nn.init.normal_(self.grid_row_embedding.weight, std=0.1)
            nn.init.normal_(self.grid_col_embedding.weight, std=0.1)
        if draft_channels < 0 or draft_patch < 0 or bool(draft_channels) != bool(draft_patch):
            raise ValueError(
                f"draft_channels ({draft_channels}) and draft_patch ({draft_patch}) must both be 0 or both be > 0"
            )
        if (draft_layers or draft_width) and not (draft_channels and draft_layers > 0 and draft_width > 0):
            raise ValueError(
                f"draft_layers ({draft_layers}) and draft_width ({draft_width}) must both be > 0, with draft_channels > 0"
            )
        if draft_layers:
            self.draft_network = DraftNetwork(vocab_size, draft_width, draft_layers, draft_channels, draft_patch)
        elif draft_channels:
            # random, not zero: the transformer's draft input weights start at zero when it continues an
            # earlier decoder, and two zero factors would never receive a gradient
            self.draft_latent_patches = nn.Parameter(torch.randn(vocab_size, draft_channels, draft_patch, draft_patch) * 0.5)
        self.requires_grad_(False)

    def grid_position_parameters(self) -> list[nn.Parameter]:
        """The learned grid position embeddings (empty for the official layout)."""
        if not self.config.grid_position_size:
            return []
        return [self.grid_row_embedding.weight, self.grid_col_embedding.weight]

    def trained_with_transformer(self) -> list[nn.Parameter]:
        """Parameters learned together with the transformer that reads them: grid positions and
        draft patches (empty for the official layout)."""
        return self.grid_position_parameters() + self.draft_parameters()

    def draft_parameters(self) -> list[nn.Parameter]:
        """The parameters that write the draft: the draft network's or the per-code patches (empty
        without a draft)."""
        if self.config.draft_layers:
            return list(self.draft_network.parameters())
        return [self.draft_latent_patches] if self.config.draft_channels else []

    @property
    def has_draft_network(self) -> bool:
        """True when the draft comes from a `DraftNetwork` trained to regress the clean latents."""
        return bool(self.config.draft_layers)

    def draft_latents(self, token_grids: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """The draft image of token grids: each code's learned latent patch in its cell, or the
        `DraftNetwork`'s estimate of the latents when this SigVQ has one.

        token_grids: (batch, h, w) int64; latent_size: (H, W) of the latents it sits beside (patches
        are resized nearest when H != h * draft_patch). Returns (batch, draft_channels, 1, H, W).
        Raises `ValueError` when this SigVQ has no draft patches.
        """
        if not self.config.draft_channels:
            raise ValueError("this SigVQ has no draft patches (draft_channels is 0)")
        token_grids = token_grids.to(self.device)
        batch, height, width = token_grids.shape
        channels, patch = self.config.draft_channels, self.config.draft_patch
        if self.config.draft_layers:
            draft = self.draft_network(token_grids)
        else:
            patches = self.draft_latent_patches[token_grids]  # (batch, h, w, C, P, P)
            draft = patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height * patch, width * patch)
        if tuple(draft.shape[-2:]) != tuple(latent_size):
            draft = nn.functional.interpolate(draft, size=tuple(latent_size), mode="nearest")
        return draft.unsqueeze(2)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids: (batch, seq) int64 -> features (batch, seq, inner_dim)."""
        return self.prior_projector(self.prior_token_embedding(token_ids))

    def encode_grids(self, token_grids: torch.Tensor) -> torch.Tensor:
        """Conditioning features of token grids.

        token_grids: (batch, h, w) int64 -> (batch, 4 * h * w, inner_dim), the grid upsampled 2x
        (nearest) and flattened row-major, as the official decoder does.
        """
        token_grids = token_grids.to(self.device)
        features = self(upsample_token_grid(token_grids))
        size = self.config.grid_position_size
        if not size:
            return features
        height, width = token_grids.shape[1] * GRID_UPSAMPLE, token_grids.shape[2] * GRID_UPSAMPLE
        if max(height, width) > size:
            raise ValueError(f"token grid {tuple(token_grids.shape[1:])} is larger than this SigVQ's grid positions allow "
                             f"({size // GRID_UPSAMPLE} per side)")
        rows = self.grid_row_embedding.weight[:height, None, :].expand(height, width, -1)
        cols = self.grid_col_embedding.weight[None, :width, :].expand(height, width, -1)
        return features + (rows + cols).reshape(1, height * width, -1).to(features.dtype)

    def encode_cells(self, token_grids: torch.Tensor) -> torch.Tensor:
        """Features of each grid cell, not upsampled and without grid position embeddings (a
        transformer that reads them places them at the cells' own 2-D positions).

        token_grids: (batch, h, w) int64 -> (batch, h, w, inner_dim).
        """
        return self(token_grids.to(self.device))

    def condition(
        self, token_grids: torch.Tensor, cells: bool = False, latent_size: tuple[int, int] | None = None
    ) -> DecoderCondition:
        """The decoder transformer's condition for token grids (batch, h, w) int64: `encode_grids`
        as the caption sequence, with `cells` also `encode_cells` (see `reads_cell_features`), and
        the `draft_latents` at `latent_size` (H, W) when this SigVQ has draft patches (then
        `latent_size` is required)."""
        draft = None
        if self.config.draft_channels:
            if latent_size is None:
                raise ValueError("latent_size is required: this SigVQ tiles draft latents beside the noisy latents")
            draft = self.draft_latents(token_grids, latent_size)
        cell_features = self.encode_cells(token_grids) if cells else None
        return DecoderCondition(self.encode_grids(token_grids), cell_features, draft)


def load_sigvq_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read SigVQ weights from the official `sigvq_embedding.pt` (a plain state dict, read with
    `torch.load(weights_only=True)`) or from a safetensors file. Returns name -> tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing SigVQ weights {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(
            f"{path} is refused: it is not a plain state dict of tensors readable with weights_only=True "
            f"(truncated, or holds arbitrary pickled objects): {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def sigvq_from_state_dict(state: dict[str, torch.Tensor], config: dict | None = None) -> SigVQEmbedding:
    """Build a `SigVQEmbedding` sized from `state` and load it strictly (unexpected or missing
    keys raise `ValueError`). A draft network's sizes cannot all be read off its weights, so a state
    with `draft_network.*` needs `config` (the saved `config.json`), which gives its draft settings."""
    if "prior_token_embedding.weight" not in state:
        raise ValueError(f"state has no 'prior_token_embedding.weight'; keys: {sorted(state)[:8]}")
    vocab_size, inner_dim = state["prior_token_embedding.weight"].shape
    grid_rows = state.get("grid_row_embedding.weight")
    grid_position_size = int(grid_rows.shape[0]) if grid_rows is not None else 0
    draft = state.get("draft_latent_patches")
    sizes = {"draft_channels": int(draft.shape[1]), "draft_patch": int(draft.shape[2])} if draft is not None else {}
    if any(name.startswith("draft_network.") for name in state):
        keys = ("draft_channels", "draft_patch", "draft_layers", "draft_width")
        if config is None or not all(isinstance(config.get(key), int) for key in keys):
            raise ValueError(f"these SigVQ weights hold a draft network; its sizes {list(keys)} must come from the "
                             "saved sigvq/config.json")
        sizes = {key: config[key] for key in keys}
    with torch.device("meta"):
        model = SigVQEmbedding(vocab_size=vocab_size, inner_dim=inner_dim, grid_position_size=grid_position_size, **sizes)
    load_state_dict_strict(model, state)
    return model.eval()
