"""Image preprocessing for the SigLIP-VQ image tokenizer.

Turns caller images (PIL images of any mode, numpy arrays, torch tensors; single or batched) into
normalised pixel tensors whose sides are multiples of the token size (16 px: one image token per
16 x 16 pixels), following the official LLaDA2.0-Uni rules:

- ``"understanding"``: the aspect-ratio crop list of about 512 x 512 pixels in 32 px steps (256 cells
  of 32 x 32, aspect ratio at most 4), the entry closest to the image's aspect ratio, resize to
  cover and centre crop (used for understanding and editing inputs);
- ``"smart_single"`` / ``"smart_multi"``: keep the aspect ratio, round each side to 32 px and clamp
  the area to [128^2, 800^2] (one image) or [128^2, 448^2] (several images), then resize to cover
  and centre crop (the serving preprocessor's rule);
- ``"shapes_world"``: a fixed 128 x 128 canvas (an 8 x 8 token grid);
- a fixed ``(height, width)`` in pixels, both multiples of 16.

Pixels are resized with PIL's bicubic filter on 8-bit RGB (as the official code does), rescaled by
1/255 and normalised with the CLIP mean and std. RGBA and other images with transparency are
composited on white. PIL images are turned upright by their EXIF orientation tag first; of an
animated image (GIF, APNG, WebP) only the first frame is used. ``open_image`` reads a file or bytes
with the size limits checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import BinaryIO, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

TOKEN_PIXELS = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MIN_INPUT_SIDE = 16
MAX_INPUT_SIDE = 16384
# Decompression-bomb guard: 64 Mpx, below PIL's own warning threshold (89.5 Mpx).
MAX_INPUT_PIXELS = 8192 * 8192
MAX_INPUT_ASPECT_RATIO = 16.0
MAX_TARGET_SIDE = 4096

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]
TargetSize = Union[None, str, tuple[int, int]]

_PIL_TO_RGB_MODES = {"RGB", "CMYK", "YCbCr", "LAB", "HSV", "L", "1"}
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageSizePolicy:
    """How caller images are sized before tokenisation.

    kind: ``"crop_list"`` (closest aspect-ratio bucket of about ``base_size``^2 pixels in ``step``
    px steps, aspect ratio at most ``max_ratio``), ``"smart"`` (keep aspect ratio, sides rounded to
    ``step``, area clamped to [``min_pixels``, ``max_pixels``]) or ``"fixed"`` (exactly
    ``fixed_size`` = (height, width)).
    """

    kind: str
    base_size: int = 512
    step: int = 32
    max_ratio: float = 4.0
    min_pixels: int = 128 * 128
    max_pixels: int = 800 * 800
    fixed_size: tuple[int, int] | None = None

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Return the (height, width) in pixels an image of ``height`` x ``width`` is cropped to."""
        if self.kind == "fixed":
            return self.fixed_size
        if self.kind == "crop_list":
            buckets = crop_size_list((self.base_size // self.step) ** 2, self.step, self.max_ratio)
            bucket_w, bucket_h = closest_crop_size(width, height, buckets)
            return bucket_h, bucket_w
        if self.kind == "smart":
            return smart_target_size(height, width, self.min_pixels, self.max_pixels, self.step)
        raise ValueError(f"ImageSizePolicy.kind must be 'crop_list', 'smart' or 'fixed', got {self.kind!r}")


SIZE_POLICIES: dict[str, ImageSizePolicy] = {
    "understanding": ImageSizePolicy("crop_list", base_size=512, step=32, max_ratio=4.0),
    "smart_single": ImageSizePolicy("smart", step=32, min_pixels=128 * 128, max_pixels=800 * 800),
    "smart_multi": ImageSizePolicy("smart", step=32, min_pixels=128 * 128, max_pixels=448 * 448),
    "shapes_world": ImageSizePolicy("fixed", fixed_size=(128, 128)),
}


def resolve_size_policy(target_size: TargetSize | ImageSizePolicy, default: ImageSizePolicy) -> ImageSizePolicy:
    """Map a ``target_size`` argument to a policy.

    target_size: None (use ``default``), ``"auto"`` (the ``"understanding"`` crop list), a name in
    ``SIZE_POLICIES``, an ``ImageSizePolicy``, or (height, width) pixels, each a multiple of 16 in
    [16, 4096].
    """
    if target_size is None:
        return default
    if isinstance(target_size, ImageSizePolicy):
        return target_size
    if isinstance(target_size, str):
        if target_size == "auto":
            return SIZE_POLICIES["understanding"]
        if target_size in SIZE_POLICIES:
            return SIZE_POLICIES[target_size]
        raise ValueError(
            f"target_size must be None, 'auto', one of {sorted(SIZE_POLICIES)} or (height, width); got {target_size!r}"
        )
    if isinstance(target_size, (tuple, list)) and len(target_size) == 2:
        height, width = (int(side) for side in target_size)
        for name, side in (("height", height), ("width", width)):
            if side % TOKEN_PIXELS or not TOKEN_PIXELS <= side <= MAX_TARGET_SIDE:
                raise ValueError(
                    f"target_size {name} must be a multiple of {TOKEN_PIXELS} in "
                    f"[{TOKEN_PIXELS}, {MAX_TARGET_SIDE}], got {side}"
                )
        return ImageSizePolicy("fixed", fixed_size=(height, width))
    raise ValueError(f"target_size must be None, 'auto', a policy name or (height, width); got {target_size!r}")


def crop_size_list(num_cells: int, cell: int, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Aspect-ratio buckets: every (width, height) = (cols * cell, rows * cell) with
    cols * rows <= ``num_cells`` that is maximal along the staircase walk from (num_cells, 1) down,
    keeping max(cols, rows) / min(cols, rows) <= ``max_ratio``. Returns (width, height) pixel pairs."""
    if num_cells < 1 or cell < 1 or max_ratio < 1.0:
        raise ValueError(f"need num_cells >= 1, cell >= 1, max_ratio >= 1; got {num_cells}, {cell}, {max_ratio}")
    sizes = []
    cols, rows = num_cells, 1
    while cols > 0:
        if max(cols, rows) / min(cols, rows) <= max_ratio:
            sizes.append((cols * cell, rows * cell))
        if (rows + 1) * cols <= num_cells:
            rows += 1
        else:
            cols -= 1
    return sizes


def closest_crop_size(width: int, height: int, crop_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (width, height) bucket whose aspect ratio is closest to the image's (first one on ties)."""

    def similarity(size: tuple[int, int]) -> float:
        scale_w, scale_h = size[0] / width, size[1] / height
        return min(scale_w, scale_h) / max(scale_w, scale_h)

    return max(crop_sizes, key=similarity)


def smart_target_size(height: int, width: int, min_pixels: int, max_pixels: int, step: int) -> tuple[int, int]:
    """Aspect-preserving (height, width), each a multiple of ``step``, area within [min_pixels, max_pixels]."""
    new_h = max(round(height / step) * step, step)
    new_w = max(round(width / step) * step, step)
    if new_h * new_w > max_pixels:
        scale = math.sqrt(max_pixels / (height * width))
        new_h = max(math.floor(height * scale / step) * step, step)
        new_w = max(math.floor(width * scale / step) * step, step)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * scale / step) * step
        new_w = math.ceil(width * scale / step) * step
    return new_h, new_w


def resize_cover_center_crop(image: Image.Image, target_h: int, target_w: int) -> Image.Image:
    """Bicubic-resize ``image`` so it covers (target_h, target_w) keeping its aspect ratio, then
    centre-crop to exactly that size."""
    width, height = image.size
    if (height, width) == (target_h, target_w):
        return image
    scale = max(target_h / height, target_w / width)
    resized_w = max(int(round(width * scale)), target_w)
    resized_h = max(int(round(height * scale)), target_h)
    image = image.resize((resized_w, resized_h), resample=Image.BICUBIC)
    top = (resized_h - target_h) // 2
    left = (resized_w - target_w) // 2
    return image.crop((left, top, left + target_w, top + target_h))


def check_image_size(height: int, width: int) -> None:
    """Raise ValueError unless an input image of ``height`` x ``width`` pixels is within the limits:
    each side in [16, 16384], at most 64 Mpx, aspect ratio at most 16."""
    if height <= 0 or width <= 0:
        raise ValueError(
            f"image has zero size ({height} x {width}); sides must be in [{MIN_INPUT_SIDE}, {MAX_INPUT_SIDE}]"
        )
    if min(height, width) < MIN_INPUT_SIDE or max(height, width) > MAX_INPUT_SIDE:
        raise ValueError(
            f"image size {height} x {width} is outside the allowed range: each side must be in "
            f"[{MIN_INPUT_SIDE}, {MAX_INPUT_SIDE}] pixels"
        )
    if height * width > MAX_INPUT_PIXELS:
        raise ValueError(
            f"image of {height} x {width} = {height * width} pixels exceeds the limit of {MAX_INPUT_PIXELS} "
            "pixels (decompression-bomb guard)"
        )
    if max(height, width) / min(height, width) > MAX_INPUT_ASPECT_RATIO:
        raise ValueError(
            f"image aspect ratio {max(height, width) / min(height, width):.1f} of {height} x {width} exceeds "
            f"the allowed maximum of {MAX_INPUT_ASPECT_RATIO}"
        )


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8 alpha-composited on a white background."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _high_bit_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """Grey values of a 16/32-bit integer or float PIL image -> uint8. Integers above 255 are read as
    16-bit (0..65535); floats as [0, 1] when their maximum is at most 1, else [0, 255]."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image contains non-finite pixel values (NaN or inf)")
    if is_float and values.size and 0.0 <= values.min() and values.max() <= 1.0:
        values = values * 255.0
    elif values.size and values.max() > 255:
        values = values / 257.0
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def open_image(source: str | os.PathLike | bytes | BinaryIO) -> Image.Image:
    """Read one image file (a path, its bytes or a binary file object) safely -> a loaded PIL image.

    The size limits of ``check_image_size`` (including the 64 Mpx decompression-bomb guard) are
    checked from the file header before any pixel is decoded; an animated image gives its first
    frame; the EXIF orientation is applied. Unreadable, truncated or corrupt data, and images PIL
    itself refuses as decompression bombs, raise ``ValueError`` naming the source.
    """
    name = f"{len(source)} bytes" if isinstance(source, (bytes, bytearray)) else repr(getattr(source, "name", source))
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(stream) as image:
            width, height = image.size
            check_image_size(height, width)
            image.seek(0)
            image.load()
            return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {name} is refused by PIL's decompression-bomb guard: {error}") from error
    except (OSError, SyntaxError, EOFError) as error:  # PIL reports bad data with these
        raise ValueError(f"image {name} cannot be read (unreadable, truncated or corrupt): {error}") from error


def _decode_pixels(image: Image.Image) -> None:
    """Decode a lazily opened PIL image now, so bad data surfaces as ``ValueError``."""
    try:
        image.load()
    except (OSError, SyntaxError, EOFError) as error:
        raise ValueError(f"image data cannot be decoded (truncated or corrupt file?): {error}") from error


def _upright_first_frame(image: Image.Image) -> Image.Image:
    """The first frame of ``image`` turned upright by its EXIF orientation tag (the caller's image is
    left as it was: its frame position is restored)."""
    position = image.tell() if getattr(image, "is_animated", False) else 0
    if position:
        image.seek(0)
    try:
        _decode_pixels(image)
        frame = image.copy() if position else image
        if image.getexif().get(_EXIF_ORIENTATION_TAG, 1) != 1:
            frame = ImageOps.exif_transpose(frame)
    finally:
        if position:
            image.seek(position)
    return frame


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any-mode PIL image -> (H, W, 3) uint8 RGB; transparency is composited on white. Truncated or
    corrupt image data (a lazily opened file) raises ``ValueError``."""
    _decode_pixels(image)
    if image.mode == "La":  # premultiplied alpha: PIL only converts it to LA
        image = image.convert("LA")
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        try:
            return _composite_on_white(np.asarray(image.convert("RGBA")))
        except (ValueError, OSError) as error:
            raise ValueError(f"PIL image mode {mode!r} cannot be converted to RGB: {error}") from error
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = np.asarray(image)
        if mode == "F":
            grey = grey.astype(np.float32)
        return np.repeat(_high_bit_depth_to_uint8(grey)[..., None], 3, axis=-1)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as error:
        raise ValueError(f"PIL image mode {mode!r} cannot be converted to RGB: {error}") from error


def _array_to_rgb_uint8(array: np.ndarray, channels_last: bool) -> np.ndarray:
    """One image as a (H, W), (H, W, C) or (C, H, W) array -> (H, W, 3) uint8 RGB."""
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        if not channels_last:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(f"an image array must have 2 or 3 dimensions, got shape {tuple(array.shape)}")
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must have 1, 3 or 4 channels, got shape {tuple(array.shape)}")
    height, width = array.shape[:2]
    check_image_size(height, width)
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif array.dtype.kind in "ui":
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"integer pixel values must be in [0, 65535], got [{array.min()}, {array.max()}]")
        pixels = array.astype(np.uint8) if array.max() <= 255 else np.round(array / 257.0).astype(np.uint8)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("image contains non-finite pixel values (NaN or inf)")
        low, high = float(array.min()), float(array.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(f"float pixel values must be in [0, 1], got [{low:.4g}, {high:.4g}]")
        pixels = np.clip(np.round(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}; use uint8, integer, bool or float in [0, 1]")
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] == 4:
        return _composite_on_white(pixels)
    return np.ascontiguousarray(pixels)


def _channels_last(shape: tuple[int, ...], prefer_last: bool) -> bool:
    """Whether a 3-D image shape is (H, W, C): the convention of the container (numpy: HWC, torch: CHW)
    wins when both ends look like a channel count."""
    last_is_channels = shape[-1] in (1, 3, 4)
    first_is_channels = shape[0] in (1, 3, 4)
    if last_is_channels and first_is_channels:
        return prefer_last
    return last_is_channels


def split_batch(images) -> list:
    """A single image or a batch (list/tuple, 4-D array/tensor) -> list of single images."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is an empty list; pass at least one image")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch; pass at least one image")
        return list(images)
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    raise ValueError(f"images must be PIL images, numpy arrays or torch tensors, got {type(images).__name__}")


def to_rgb_uint8(image: ImageInput) -> np.ndarray:
    """One image (PIL any mode; numpy HWC/CHW/HW; tensor CHW/HWC/HW on any device with data; uint8,
    integer, bool or float in [0, 1]) -> (H, W, 3) uint8 RGB, after checking its size against the
    documented limits. PIL images: first frame, EXIF orientation applied."""
    if isinstance(image, Image.Image):
        width, height = image.size
        check_image_size(height, width)
        return pil_to_rgb_array(_upright_first_frame(image))
    if isinstance(image, torch.Tensor):
        if image.device.type == "meta":
            raise ValueError(f"image tensor of shape {tuple(image.shape)} is on the meta device and holds no data")
        array = image.detach().cpu()
        if array.dtype == torch.bfloat16 or array.dtype == torch.float16:
            array = array.float()
        array = array.numpy()
        return _array_to_rgb_uint8(array, array.ndim == 3 and _channels_last(array.shape, prefer_last=False))
    if isinstance(image, np.ndarray):
        return _array_to_rgb_uint8(image, image.ndim == 3 and _channels_last(image.shape, prefer_last=True))
    raise ValueError(f"an image must be a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def normalize_rgb(
    rgb: np.ndarray, image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, rescaled by 1/255 and normalised with mean/std."""
    pixels = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


@dataclass
class PreprocessedImages:
    """Output of ``preprocess_images``.

    pixel_values: list of (3, H_i, W_i) float32 normalised tensors, H_i and W_i multiples of 16.
    grids: list of (h_i, w_i) token grids, h_i = H_i / 16, w_i = W_i / 16.
    """

    pixel_values: list[torch.Tensor]
    grids: list[tuple[int, int]]

    def stacked(self) -> torch.Tensor | None:
        """(B, 3, H, W) when every image has the same size, else None."""
        if len(set(self.grids)) != 1:
            return None
        return torch.stack(self.pixel_values)


def preprocess_images(
    images,
    policy: ImageSizePolicy,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
) -> PreprocessedImages:
    """Size, crop and normalise one image or a batch.

    images: a PIL image, numpy array, tensor, a list of those, or a 4-D (B, H, W, C) array /
    (B, C, H, W) tensor. Returns ``PreprocessedImages`` with one (3, H, W) tensor per image.
    """
    pixel_values, grids = [], []
    for image in split_batch(images):
        rgb = to_rgb_uint8(image)
        target_h, target_w = policy.target_size(rgb.shape[0], rgb.shape[1])
        if target_h % TOKEN_PIXELS or target_w % TOKEN_PIXELS:
            raise ValueError(f"size policy produced {target_h} x {target_w}, not a multiple of {TOKEN_PIXELS}")
        if rgb.shape[:2] != (target_h, target_w):
            rgb = np.asarray(resize_cover_center_crop(Image.fromarray(rgb), target_h, target_w))
        pixel_values.append(normalize_rgb(rgb, image_mean, image_std))
        grids.append((target_h // TOKEN_PIXELS, target_w // TOKEN_PIXELS))
    return PreprocessedImages(pixel_values=pixel_values, grids=grids)


def patchify(pixel_values: torch.Tensor, patch_size: int, merge_size: int = 1) -> torch.Tensor:
    """(3, H, W) -> (H/p * W/p, 3 * p * p) patches in merge-window order (raster order of
    ``merge_size`` x ``merge_size`` windows, raster inside each; plain raster order when merge_size is 1),
    each patch flattened as (channel, row, col): the layout ``GlmImageVisionModel`` expects."""
    channels, height, width = pixel_values.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h * patch_size != height or grid_w * patch_size != width or grid_h % merge_size or grid_w % merge_size:
        raise ValueError(
            f"pixel size {height} x {width} must be a multiple of patch_size * merge_size = {patch_size * merge_size}"
        )
    patches = pixel_values.reshape(
        channels, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    )
    patches = patches.permute(1, 4, 2, 5, 0, 3, 6)
    return patches.reshape(grid_h * grid_w, channels * patch_size * patch_size)


def merge_order_to_grid(tokens: torch.Tensor, grid_h: int, grid_w: int, merge_size: int = 1) -> torch.Tensor:
    """Inverse of ``patchify``'s ordering: (h * w, D) in merge-window order -> (h, w, D) raster grid."""
    dim = tokens.shape[-1]
    blocks = tokens.reshape(grid_h // merge_size, grid_w // merge_size, merge_size, merge_size, dim)
    return blocks.permute(0, 2, 1, 3, 4).reshape(grid_h, grid_w, dim)
