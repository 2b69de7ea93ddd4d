"""One image code per background colour: merge a trained tokenizer's background codes.

A plain background patch of a SigLIP-VQ tokenizer trained on Shapes World is not one code but one
of 70-110 per colour (about 5.5 bits), because the tower's attention mixes the rest of the picture
into every patch feature. The decoder reads any of them as the same flat colour, but the backbone
must generate them, and 45 or more of the 64 codes of an image are background: most of its image
loss is spent guessing which background code the tokenizer would have picked.

:func:`merge_background_codes` gives each background colour one code, inside the official layout:
the codes whose patches are (almost) all background of one colour form a group, the most frequent
keeps its index and becomes the group's normalised centroid, and the others become the negated
centroid, which the cosine quantiser never picks again. Object codes are left as they are.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unimask.shapes.patch_owners import patch_owners
from unimask.shapes.render import render
from unimask.shapes.scene import Scene

__all__ = ["code_owner_counts", "merge_background_codes", "merged_codebook", "owner_entropy"]

# A patch class: ("background", colour) or ("object", colour, shape).
PatchClass = tuple[str, ...]


def code_owner_counts(grids: Sequence[np.ndarray], scenes: Sequence[Scene]) -> dict[int, Counter]:
    """How often each code stands for each patch class.

    grids: one (8, 8) int code grid per scene (the scene rendered and tokenised). Returns
    ``{code: Counter({("background", colour) | ("object", colour, shape): patches})}``, patch owners
    as :func:`unimask.shapes.patch_owners.patch_owners` assigns them.
    """
    if len(grids) != len(scenes):
        raise ValueError(f"got {len(grids)} grids for {len(scenes)} scenes; pass one grid per scene")
    counts: dict[int, Counter] = defaultdict(Counter)
    for grid, scene in zip(grids, scenes):
        grid = np.asarray(grid)
        owners = patch_owners(scene)
        if grid.shape != owners.shape:
            raise ValueError(f"grid shape {grid.shape} does not match the patch grid {owners.shape}")
        for (row, col), owner in np.ndenumerate(owners):
            if owner < 0:
                label: PatchClass = ("background", scene.background)
            else:
                item = scene.objects[owner]
                label = ("object", item.colour, item.shape)
            counts[int(grid[row, col])][label] += 1
    return dict(counts)


def owner_entropy(counts: dict[int, Counter]) -> dict[PatchClass, dict[str, float]]:
    """Per patch class: ``{"codes": distinct codes, "bits": entropy of the code, "top_share": most common code's share}``."""
    by_class: dict[PatchClass, Counter] = defaultdict(Counter)
    for code, classes in counts.items():
        for label, n in classes.items():
            by_class[label][code] += n
    report = {}
    for label, codes in by_class.items():
        total = sum(codes.values())
        bits = -sum(n / total * math.log2(n / total) for n in codes.values())
        report[label] = {"codes": float(len(codes)), "bits": bits, "top_share": codes.most_common(1)[0][1] / total}
    return report


def merged_codebook(
    codebook: torch.Tensor, counts: dict[int, Counter], share: float = 0.9, min_count: int = 2
) -> tuple[torch.Tensor, dict[str, dict[str, Any]]]:
    """A codebook in which each background colour's codes collapse into one.

    codebook: (num_codes, dim) float; counts: from :func:`code_owner_counts`. A code joins colour c's
    group when it was seen at least ``min_count`` times and at least ``share`` of its patches are
    background c. Returns the new (num_codes, dim) codebook (rows L2-normalised, as the quantiser
    compares them) and ``{colour: {"representative": code, "merged": [codes]}}``.
    """
    if not 0.5 < share <= 1.0:
        raise ValueError(f"share={share} must be in (0.5, 1]: a code may join one background group only")
    if codebook.ndim != 2:
        raise ValueError(f"codebook must be (num_codes, dim), got shape {tuple(codebook.shape)}")
    book = F.normalize(codebook.detach().float(), dim=-1)
    merged = book.clone()
    colours = sorted({label[1] for classes in counts.values() for label in classes if label[0] == "background"})
    groups: dict[str, dict[str, Any]] = {}
    for colour in colours:
        label = ("background", colour)
        members = [
            code for code, classes in counts.items()
            if sum(classes.values()) >= min_count and classes[label] / sum(classes.values()) >= share
        ]
        if not members:
            continue
        if max(members) >= len(book):
            raise ValueError(f"code {max(members)} is outside the codebook of {len(book)} codes")
        representative = max(members, key=lambda code: (counts[code][label], -code))
        weights = torch.tensor([float(counts[code][label]) for code in members])
        centroid = F.normalize((book[members] * weights[:, None]).sum(dim=0), dim=-1)
        merged[members] = -centroid
        merged[representative] = centroid
        groups[colour] = {"representative": representative, "merged": sorted(members)}
    return merged.to(codebook.dtype), groups


def merge_background_codes(
    tokenizer: Any,
    scenes: Sequence[Scene],
    shares: Sequence[float] = (0.9, 0.8),
    encode: Callable[[], list[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Merge ``tokenizer``'s background codes in place, one round per entry of ``shares``.

    tokenizer: a ``SigLIPVQTokenizer`` (its ``vqmodel.quantize.embedding`` is rewritten); scenes: the
    Shapes World scenes the statistics are taken on (1500 is plenty). Each round re-encodes the scenes
    with the merged codebook, so codes that only stood in for background after the first merge join
    in the second. ``encode`` (default: render the scenes once, tokenise them on each call) returns the
    (8, 8) code grids of ``scenes`` under the tokenizer's current codebook. Returns ``{"before": ..., "after": ..., "rounds": [groups, ...]}`` (entropies keyed
    ``"background <colour>"`` and ``"objects"``, see :func:`owner_entropy`).
    """
    if encode is None:
        images = [render(scene) for scene in scenes]

        def encode() -> list[np.ndarray]:
            return [np.asarray(grid) for grid in tokenizer.encode(images, "shapes_world", batch_size=100).ids]

    embedding = tokenizer.vqmodel.quantize.embedding
    counts = code_owner_counts(encode(), scenes)
    report: dict[str, Any] = {"before": _summary(counts), "rounds": []}
    for share in shares:
        new_codebook, groups = merged_codebook(embedding.weight, counts, share)
        with torch.no_grad():
            embedding.weight.copy_(new_codebook)
        report["rounds"].append({"share": share, "groups": groups})
        counts = code_owner_counts(encode(), scenes)
    report["after"] = _summary(counts)
    return report


def _summary(counts: dict[int, Counter]) -> dict[str, dict[str, float]]:
    entropy = owner_entropy(counts)
    summary = {f"background {label[1]}": values for label, values in sorted(entropy.items()) if label[0] == "background"}
    objects = [values for label, values in entropy.items() if label[0] == "object"]
    if objects:
        summary["objects"] = {key: sum(v[key] for v in objects) / len(objects) for key in ("codes", "bits", "top_share")}
    return summary
