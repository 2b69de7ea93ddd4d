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
    """

    @register_to_config
    def __init__(self, vocab_size: int = 16384, inner_dim: int = 4096):
        super().__init__()
        self.prior_token_embedding = nn.Embedding(vocab_size, inner_dim)
        self.prior_projector = FeedForward(
            inner_dim, dim_out=inner_dim, inner_dim=inner_dim, activation_fn="linear-silu", bias=True
        )
        self.requires_grad_(False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids: (batch, seq) int64 -> features (batch, seq, inner_dim)."""
        return self.prior_projector(self.prior_token_embedding(token_ids))

    def encode_grids(self, token_grids: torch.Tensor) -> torch.Tensor:
        """Conditioning features of token grids.

        token_grids: (batch, h, w) int64 -> (batch, 4 * h * w, inner_dim), the grid upsampled 2x
        (nearest) and flattened row-major, as the official decoder does.
        """
        return self(upsample_token_grid(token_grids.to(self.device)))


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


def sigvq_from_state_dict(state: dict[str, torch.Tensor]) -> SigVQEmbedding:
    """Build a `SigVQEmbedding` sized from `state` and load it strictly (unexpected or missing
    keys raise `ValueError`)."""
    if "prior_token_embedding.weight" not in state:
        raise ValueError(f"state has no 'prior_token_embedding.weight'; keys: {sorted(state)[:8]}")
    vocab_size, inner_dim = state["prior_token_embedding.weight"].shape
    with torch.device("meta"):
        model = SigVQEmbedding(vocab_size=vocab_size, inner_dim=inner_dim)
    load_state_dict_strict(model, state)
    return model.eval()
