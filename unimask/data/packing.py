"""Packing variable-length token sequences into fixed-budget rows, with document boundaries.

A packed row holds several documents back to back; ``document_ids`` tells which document each
token belongs to, so ``unimask.unimodal.attention_masks`` can build the packed (block-)diffusion
mask (no attention across documents, blocks restarting at each document) and
``positions_in_documents`` the position ids.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

__all__ = ["PackedRows", "pack_documents", "fits_in_budget"]


@dataclasses.dataclass
class PackedRows:
    """Documents packed into rows of ``token_budget`` tokens.

    Attributes:
        ids: (rows, token_budget) int64 token ids, padded with ``pad_id``.
        document_ids: (rows, token_budget) int64, 0.. per row for documents; padding gets the
            id after the row's last document, so it forms its own document.
        loss_mask: (rows, token_budget) bool, True on document tokens, False on padding.
        lengths: list of per-document lengths after truncation, in packing order.
    """

    ids: torch.Tensor
    document_ids: torch.Tensor
    loss_mask: torch.Tensor
    lengths: list[int]


def fits_in_budget(lengths: Sequence[int], next_length: int, token_budget: int) -> bool:
    """Whether a document of ``next_length`` tokens (capped at the budget) still fits in a row."""
    return sum(min(n, token_budget) for n in lengths) + min(next_length, token_budget) <= token_budget


def pack_documents(
    documents: Sequence[torch.Tensor],
    token_budget: int,
    pad_id: int,
    rows: int | None = None,
) -> PackedRows:
    """Pack 1-D token sequences greedily, in order, into rows of ``token_budget`` tokens.

    A document longer than the budget is truncated to it. A new row starts when the next
    document does not fit in the current one. The order of documents is kept, so packing is
    deterministic.

    Args:
        documents: list of (len_i,) int64 token ids.
        token_budget: tokens per row, >= 1.
        pad_id: id for padding.
        rows: number of rows to return (extra rows are all padding); None means as many as needed.
    Returns:
        :class:`PackedRows`.
    Raises:
        ValueError: empty ``documents``, bad budget, a non-1-D document, or more rows needed than ``rows``.
    """
    if not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(f"token_budget={token_budget!r} must be an integer >= 1")
    if not documents:
        raise ValueError("documents is empty: nothing to pack")
    packed: list[list[torch.Tensor]] = [[]]
    used = 0
    lengths = []
    for index, document in enumerate(documents):
        if document.ndim != 1 or document.numel() == 0:
            raise ValueError(f"documents[{index}] must be a non-empty 1-D tensor, got shape {tuple(document.shape)}")
        document = document[:token_budget]
        if used + len(document) > token_budget:
            packed.append([])
            used = 0
        packed[-1].append(document)
        used += len(document)
        lengths.append(len(document))
    n_rows = len(packed) if rows is None else rows
    if len(packed) > n_rows:
        raise ValueError(f"documents need {len(packed)} rows of {token_budget} tokens, but rows={rows}")
    ids = torch.full((n_rows, token_budget), pad_id, dtype=torch.long)
    document_ids = torch.zeros((n_rows, token_budget), dtype=torch.long)
    loss_mask = torch.zeros((n_rows, token_budget), dtype=torch.bool)
    for row, row_documents in enumerate(packed):
        offset = 0
        for doc_index, document in enumerate(row_documents):
            ids[row, offset : offset + len(document)] = document
            document_ids[row, offset : offset + len(document)] = doc_index
            loss_mask[row, offset : offset + len(document)] = True
            offset += len(document)
        document_ids[row, offset:] = len(row_documents)
    return PackedRows(ids=ids, document_ids=document_ids, loss_mask=loss_mask, lengths=lengths)
