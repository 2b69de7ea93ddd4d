"""Start a backbone's image-code rows from the image tokenizer's codebook.

A fresh backbone sees every image code as an unrelated random vector and must learn, code by code,
that (say) the thirty codes of a plain white background all mean "white". The quantiser already
knows which codes are alike: it picks codes by cosine similarity. Mapping the L2-normalised codebook
into the backbone width with a random orthonormal map keeps those cosines exactly, so alike codes
start alike, in the input embedding and in the output head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["codebook_embedding_rows", "init_image_code_rows"]


def codebook_embedding_rows(
    codebook: torch.Tensor, hidden_size: int, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The codebook mapped isometrically (after L2 normalisation) into ``hidden_size`` dimensions.

    Args:
        codebook: (num_codes, dim) codebook vectors, ``dim <= hidden_size``.
        hidden_size: width of the result.
        std: per-element standard deviation of the result (the backbone's ``initializer_range``);
            every row gets the norm ``std * sqrt(hidden_size)``.
        generator: draws the orthonormal map.
    Returns:
        (num_codes, hidden_size) float32; the cosine of two rows equals that of their codes.
    Raises:
        ValueError: a codebook that is not 2-D or wider than ``hidden_size``.
    """
    if codebook.ndim != 2 or codebook.shape[1] > hidden_size:
        raise ValueError(f"codebook must be (num_codes, dim) with dim <= hidden_size={hidden_size}, got {tuple(codebook.shape)}")
    basis, _ = torch.linalg.qr(torch.randn(hidden_size, codebook.shape[1], generator=generator))
    rows = F.normalize(codebook.float(), dim=-1) @ basis.T
    return rows * (std * hidden_size**0.5)


def init_image_code_rows(model: nn.Module, image_tokenizer: str | Path, seed: int = 0) -> None:
    """Overwrite the image-code rows of ``model``'s input embedding and output head (in place).

    Args:
        model: an ``LLaDA2MoeModelLM``; its image codes are ids ``image_token_offset ..
            vocab_size - 1``.
        image_tokenizer: a saved ``SigLIPVQTokenizer`` folder whose codebook size equals the model's
            image-code count.
        seed: seed of the orthonormal map.
    Raises:
        ValueError: the codebook size differs from the model's image-code count.
    """
    from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer

    codebook = SigLIPVQTokenizer.from_pretrained(image_tokenizer).vqmodel.quantize.embedding.weight.detach()
    config = model.config
    offset, count = config.image_token_offset, config.vocab_size - config.image_token_offset
    if codebook.shape[0] != count:
        raise ValueError(
            f"the image tokenizer at {image_tokenizer} has {codebook.shape[0]} codes, the backbone {count} "
            f"(vocab_size {config.vocab_size} - image_token_offset {offset})"
        )
    rows = codebook_embedding_rows(codebook, config.hidden_size, config.initializer_range, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
            weight[offset : offset + count] = rows.to(weight.dtype)
