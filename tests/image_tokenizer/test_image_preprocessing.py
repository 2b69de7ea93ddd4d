"""Preprocessing: grid sizes per size policy, input kinds and modes, size limits, patch layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimask.tokenizers.image_preprocessing import (
    SIZE_POLICIES,
    ImageSizePolicy,
    crop_size_list,
    patchify,
    merge_order_to_grid,
    preprocess_images,
    resolve_size_policy,
)

UNDERSTANDING = SIZE_POLICIES["understanding"]


def grid_of(width, height, policy=UNDERSTANDING):
    image = Image.new("RGB", (width, height), (10, 200, 30))
    return preprocess_images(image, policy).grids[0]


@pytest.mark.parametrize(
    "width, height, grid",
    [
        (512, 512, (32, 32)),  # square -> 512 x 512
        (1000, 1000, (32, 32)),
        (1024, 512, (22, 44)),  # 2:1 -> 704 x 352, the exact 2:1 bucket
        (512, 1024, (44, 22)),
        (640, 480, (28, 36)),  # 4:3 -> 576 x 448 (closest bucket on the crop list)
        (4000, 400, (16, 64)),  # 10:1 is clamped to the 4:1 bucket 1024 x 256
        (64, 64, (32, 32)),  # small inputs are upscaled to the bucket
    ],
)
def test_understanding_policy_grids(width, height, grid):
    assert grid_of(width, height) == grid


@pytest.mark.parametrize("ratio", [0.25, 0.4, 0.6, 0.75, 1.0, 1.3, 1.78, 2.5, 3.0, 4.0])
def test_understanding_policy_keeps_aspect_ratio_within_bucket_limits(ratio):
    width, height = int(round(600 * ratio)), 600
    grid_h, grid_w = grid_of(width, height)
    assert grid_h % 2 == 0 and grid_w % 2 == 0  # 32 px buckets
    assert grid_h * grid_w <= 1024  # at most 256 cells of 32 x 32 px
    assert max(grid_h, grid_w) / min(grid_h, grid_w) <= 4.0
    assert abs(np.log((grid_w / grid_h) / (width / height))) < 0.12


def test_crop_size_list_entries():
    sizes = crop_size_list(256, 32, 4.0)
    assert (512, 512) in sizes and (1024, 256) in sizes and (256, 1024) in sizes
    for width, height in sizes:
        assert width % 32 == 0 and height % 32 == 0
        assert (width // 32) * (height // 32) <= 256
        assert max(width, height) / min(width, height) <= 4.0


def test_other_policies_grids():
    assert grid_of(128, 128, SIZE_POLICIES["shapes_world"]) == (8, 8)
    assert grid_of(300, 200, SIZE_POLICIES["shapes_world"]) == (8, 8)
    assert grid_of(1000, 500, SIZE_POLICIES["smart_single"]) == (32, 62)
    assert grid_of(3000, 3000, SIZE_POLICIES["smart_single"]) == (50, 50)  # 800 x 800 cap
    assert grid_of(3000, 3000, SIZE_POLICIES["smart_multi"]) == (28, 28)  # 448 x 448 cap
    assert grid_of(50, 50, SIZE_POLICIES["smart_single"]) == (8, 8)  # 128 x 128 floor
    assert grid_of(333, 222, resolve_size_policy((96, 160), UNDERSTANDING)) == (6, 10)


def test_resolve_size_policy_rejects_bad_targets():
    with pytest.raises(ValueError, match="multiple of 16"):
        resolve_size_policy((100, 128), UNDERSTANDING)
    with pytest.raises(ValueError, match="multiple of 16"):
        resolve_size_policy((0, 128), UNDERSTANDING)
    with pytest.raises(ValueError, match="target_size"):
        resolve_size_policy("huge", UNDERSTANDING)
    assert resolve_size_policy("auto", SIZE_POLICIES["shapes_world"]) == UNDERSTANDING
    assert resolve_size_policy(None, SIZE_POLICIES["shapes_world"]) == SIZE_POLICIES["shapes_world"]


def test_normalisation_uses_clip_mean_and_std():
    pixels = preprocess_images(Image.new("RGB", (16, 16), (255, 0, 128)), ImageSizePolicy("fixed", fixed_size=(16, 16)))
    values = pixels.pixel_values[0][:, 0, 0]
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(values, expected)


FIXED_64 = ImageSizePolicy("fixed", fixed_size=(64, 64))


def pixels(image):
    return preprocess_images(image, FIXED_64).pixel_values[0]


def test_array_layouts_and_dtypes_agree_with_pil():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    reference = pixels(Image.fromarray(rgb))
    torch.testing.assert_close(pixels(rgb), reference)  # numpy HWC uint8
    torch.testing.assert_close(pixels(rgb.transpose(2, 0, 1).copy()), reference)  # numpy CHW
    torch.testing.assert_close(pixels(torch.from_numpy(rgb).permute(2, 0, 1)), reference)  # tensor CHW uint8
    torch.testing.assert_close(pixels(torch.from_numpy(rgb).float() / 255), reference)  # tensor HWC float
    torch.testing.assert_close(pixels(rgb.astype(np.float32) / 255), reference)  # numpy float
    torch.testing.assert_close(pixels(rgb.astype(np.uint16) * 257), reference)  # 16-bit
    batch = preprocess_images(np.stack([rgb, rgb]), FIXED_64)
    assert len(batch.pixel_values) == 2 and batch.stacked().shape == (2, 3, 64, 64)


def test_pil_modes():
    grey = np.tile(np.arange(64, dtype=np.uint8)[None, :] * 4, (64, 1))
    grey_rgb = pixels(Image.fromarray(np.stack([grey] * 3, axis=-1)))
    for array, mode in [
        (grey, "L"),
        (grey.astype(np.uint16) * 257, "I;16"),
        (grey.astype(np.int32) * 257, "I"),
        (grey.astype(np.float32) / 255, "F"),
    ]:
        image = Image.fromarray(array)
        assert image.mode == mode
        torch.testing.assert_close(pixels(image), grey_rgb)
    torch.testing.assert_close(pixels(Image.fromarray(grey).convert("P")), grey_rgb)

    white = pixels(Image.new("RGB", (64, 64), (255, 255, 255)))
    torch.testing.assert_close(pixels(Image.new("RGBA", (64, 64), (255, 0, 0, 0))), white)  # transparent -> white
    torch.testing.assert_close(pixels(Image.new("LA", (64, 64), (0, 0))), white)
    half = pixels(Image.new("RGBA", (64, 64), (0, 0, 0, 128)))
    torch.testing.assert_close(half, pixels(Image.new("RGB", (64, 64), (127, 127, 127))))
    red = pixels(Image.new("RGB", (64, 64), (255, 0, 0)))
    torch.testing.assert_close(pixels(Image.new("RGB", (64, 64), (255, 0, 0)).convert("CMYK")), red)
    torch.testing.assert_close(pixels(Image.new("1", (64, 64), 1)), white)
    transparent_palette = Image.new("P", (64, 64), 0)
    transparent_palette.putpalette([0, 0, 0] * 256)
    transparent_palette.info["transparency"] = 0
    torch.testing.assert_close(pixels(transparent_palette), white)
    rgba_array = np.zeros((64, 64, 4), dtype=np.uint8)
    torch.testing.assert_close(pixels(rgba_array), white)  # 4-channel arrays are RGBA too


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 32, 3), dtype=np.uint8), "zero size"),
        (np.zeros((8, 8, 3), dtype=np.uint8), r"\[16, 16384\]"),
        (Image.new("RGB", (15, 300)), r"\[16, 16384\]"),
        (np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (9000, 9000, 3)), "decompression-bomb"),
        (np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (20000, 5000, 3)), r"\[16, 16384\]"),
        (np.zeros((16, 512, 3), dtype=np.uint8), "aspect ratio"),
        (np.full((32, 32, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.full((32, 32, 3), np.nan, dtype=np.float32), "non-finite"),
        (np.zeros((32, 32, 2), dtype=np.uint8), "channels"),
        (np.zeros((2, 2, 32, 32, 3), dtype=np.uint8), "dimensions"),
        ([], "empty"),
        ("picture.png", "PIL images"),
    ],
)
def test_bad_inputs_raise_value_error_with_range(image, message):
    with pytest.raises(ValueError, match=message):
        preprocess_images(image, UNDERSTANDING)


def test_bomb_sized_pil_image_is_refused_before_decoding():
    with pytest.raises(ValueError, match="decompression-bomb"):
        preprocess_images(Image.new("1", (9000, 9000)), UNDERSTANDING)


@pytest.mark.parametrize("merge_size", [1, 2])
def test_patchify_layout_and_inverse(merge_size):
    image = torch.randn(3, 64, 96)
    patches = patchify(image, 16, merge_size)
    assert patches.shape == (4 * 6, 3 * 16 * 16)
    grid = merge_order_to_grid(patches, 4, 6, merge_size)
    # Patch at token (row 2, col 3) is the pixel block [32:48, 48:64], flattened (channel, row, col).
    torch.testing.assert_close(grid[2, 3], image[:, 32:48, 48:64].reshape(-1))


def test_patchify_matches_qwen2vl_image_processor(tiny_checkpoint_root, random_images):
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor.from_pretrained(str(tiny_checkpoint_root / "image_tokenizer"), do_resize=False)
    image = random_images[0]
    reference = processor(images=[image], return_tensors="pt")
    ours = patchify(preprocess_images(image, SIZE_POLICIES["shapes_world"]).pixel_values[0], 16, 1)
    assert reference["image_grid_thw"].tolist() == [[1, 8, 8]]
    torch.testing.assert_close(ours, reference["pixel_values"], atol=1e-5, rtol=0)
