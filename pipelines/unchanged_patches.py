"""Keep what an edit did not change: copy a reference image's pixels into the decoded image where the codes agree.

An edit copies most of its source's codes, but the decoder draws copied codes afresh, so an object the
edit should keep can come out slightly different (a small square with rounded corners reads as a disc).
Where an output code equals the code at the same place in a reference image, and the decoded patch is
already close to the reference's pixels (mean absolute difference at most ``tolerance``, on [0, 1]
pixels), the reference's pixels are copied in. The closeness test keeps a patch the edit did change in
ways its code does not show, such as a new background behind an unchanged object's edge.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_TOLERANCE = 0.1


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float; ``ValueError`` naming ``unchanged_patch_tolerance`` unless in [0, 1]."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"unchanged_patch_tolerance={tolerance!r} must be a number in [0, 1]")
    return float(tolerance)


def copy_unchanged_patches(
    image: torch.Tensor,
    grid: torch.Tensor,
    references: Sequence[tuple[torch.Tensor, torch.Tensor]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy reference pixels into ``image`` wherever the codes and the pixels agree.

    image: (3, H, W) decoded pixels in [0, 1]; grid: (h, w) its codes, H and W multiples of h and w.
    references: (pixels (3, H_r, W_r) in [0, 1], codes (h, w)) pairs in priority order (a patch takes the
    first reference that qualifies); a reference with another grid shape is skipped, and reference pixels
    of another size are resized to (H, W). Returns (the new image (3, H, W), copied (h, w) bool).
    """
    tolerance = check_tolerance(tolerance)
    if image.ndim != 3 or grid.ndim != 2:
        raise ValueError(f"image must be (3, H, W) and grid (h, w), got {tuple(image.shape)} and {tuple(grid.shape)}")
    (h, w), (height, width) = grid.shape, image.shape[1:]
    if height % h or width % w:
        raise ValueError(f"image {height} x {width} is not a whole number of patches of the {h} x {w} grid")
    ph, pw = height // h, width // w
    result = image.clone()
    copied = torch.zeros((h, w), dtype=torch.bool)
    grid = grid.cpu()
    for pixels, codes in references:
        if tuple(codes.shape) != (h, w):
            continue
        pixels = pixels.to(device=image.device, dtype=image.dtype)
        if tuple(pixels.shape[1:]) != (height, width):
            pixels = F.interpolate(pixels[None], size=(height, width), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1)
        difference = (image - pixels).abs().mean(0).view(h, ph, w, pw).mean(dim=(1, 3)).cpu()
        take = (codes.cpu() == grid) & (difference <= tolerance) & ~copied
        for row, column in take.nonzero().tolist():
            rows, columns = slice(row * ph, (row + 1) * ph), slice(column * pw, (column + 1) * pw)
            result[:, rows, columns] = pixels[:, rows, columns]
        copied |= take
    return result, copied


__all__ = ["DEFAULT_TOLERANCE", "check_tolerance", "copy_unchanged_patches"]
