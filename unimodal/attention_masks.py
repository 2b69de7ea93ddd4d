"""Boolean attention masks (True = may attend) for masked and block diffusion.

Masks are (query, key) boolean tensors: (seq, seq) for one unpacked sequence, (batch, seq, seq)
when ``document_ids`` describe several documents packed into each row (tokens never attend
across documents, and blocks restart at each document's first token). The model takes them as
``attention_mask`` directly (2-D, 3-D or (batch, 1, q, k)); `to_additive_mask` converts one to
an additive float mask.
"""

from __future__ import annotations

import torch


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_document_ids(document_ids: torch.Tensor, seq_len: int) -> None:
    if document_ids.ndim != 2 or document_ids.shape[1] != seq_len:
        raise ValueError(f"document_ids must be (batch, seq_len={seq_len}), got shape {tuple(document_ids.shape)}")


def positions_in_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its document (restarts at 0 where the id changes).

    Args:
        document_ids: (batch, seq) int, equal for the contiguous tokens of one document.

    Returns:
        (batch, seq) int64 positions; use them as ``position_ids`` for packed sequences.
    """
    batch, seq_len = document_ids.shape
    index = torch.arange(seq_len, device=document_ids.device).expand(batch, seq_len)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal mask of packed documents: a token sees every token of its own document.

    Args:
        document_ids: (batch, seq) int.

    Returns:
        (batch, seq, seq) bool.
    """
    return document_ids[:, :, None] == document_ids[:, None, :]


def bidirectional_mask(
    seq_len: int, *, document_ids: torch.Tensor | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Full attention (masked diffusion), optionally restricted to each packed document.

    Returns:
        (seq_len, seq_len) bool of all True, or (batch, seq_len, seq_len) with documents.
    """
    _check_positive("seq_len", seq_len)
    if document_ids is None:
        return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)
    _check_document_ids(document_ids, seq_len)
    return document_mask(document_ids)


def _block_index(seq_len: int, block_length: int, document_ids: torch.Tensor | None, device) -> torch.Tensor:
    if document_ids is None:
        return torch.arange(seq_len, device=device) // block_length
    return positions_in_documents(document_ids) // block_length


def block_causal_mask(
    seq_len: int,
    block_length: int,
    *,
    document_ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Block-causal mask of block diffusion: bidirectional inside a block, causal across blocks.

    Blocks are aligned from position 0 of the sequence (of each document when packed), so
    token i is in block ``i // block_length`` and sees every token of blocks <= its own.

    Returns:
        (seq_len, seq_len) bool, or (batch, seq_len, seq_len) with ``document_ids`` (batch, seq_len).
    """
    _check_positive("seq_len", seq_len)
    _check_positive("block_length", block_length)
    if document_ids is not None:
        _check_document_ids(document_ids, seq_len)
    block = _block_index(seq_len, block_length, document_ids, device)
    mask = block[..., None, :] <= block[..., :, None]
    if document_ids is not None:
        mask = mask & document_mask(document_ids)
    return mask


def padded_block_causal_mask(valid: torch.Tensor, block_length: int) -> torch.Tensor:
    """The block-causal mask of rows with padding, as sampling attends: padding is never a key, and every
    query sees itself (so a padding query never gets an empty softmax).

    valid: (batch, seq) bool, True for real tokens. Returns (batch, 1, seq, seq) bool.
    """
    seq_len = valid.shape[-1]
    causal = block_causal_mask(seq_len, block_length, device=valid.device)
    itself = torch.eye(seq_len, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | itself).unsqueeze(1)


def block_diffusion_training_mask(
    seq_len: int,
    block_length: int,
    *,
    document_ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask of the packed block-diffusion training layout ``[noisy x_t ; clean x_0]`` (length 2L).

    As in BD3-LM / LLaDA2.0: noisy block b attends to noisy block b (block-diagonal) and to clean
    blocks < b (offset block-causal); clean block b attends to clean blocks <= b (block-causal);
    clean tokens never see noisy ones. One forward thus gives, for every block, the denoising
    prediction conditioned on the clean previous blocks. Both halves use the same positions.

    Args:
        seq_len: L, the length of one copy.
        block_length: tokens per block (aligned from position 0 / each document's start).
        document_ids: optional (batch, L) ids of packed documents (the same for both copies).

    Returns:
        (2L, 2L) bool, or (batch, 2L, 2L) with ``document_ids``.
    """
    _check_positive("seq_len", seq_len)
    _check_positive("block_length", block_length)
    if document_ids is not None:
        _check_document_ids(document_ids, seq_len)
    block = _block_index(seq_len, block_length, document_ids, device)
    query_block, key_block = block[..., :, None], block[..., None, :]
    noisy_to_noisy = query_block == key_block
    noisy_to_clean = key_block < query_block
    clean_to_clean = key_block <= query_block
    if document_ids is not None:
        same_document = document_mask(document_ids)
        noisy_to_noisy = noisy_to_noisy & same_document
        noisy_to_clean = noisy_to_clean & same_document
        clean_to_clean = clean_to_clean & same_document
    top = torch.cat([noisy_to_noisy, noisy_to_clean], dim=-1)
    bottom = torch.cat([torch.zeros_like(clean_to_clean), clean_to_clean], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a boolean mask (True = may attend) into an additive one (0 or the dtype's minimum).

    Args:
        mask: bool tensor of any shape.
        dtype: floating dtype of the result.

    Returns:
        Tensor of ``mask.shape`` and ``dtype``.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)


__all__ = [
    "bidirectional_mask",
    "block_causal_mask",
    "block_diffusion_training_mask",
    "document_mask",
    "padded_block_causal_mask",
    "positions_in_documents",
    "to_additive_mask",
]
