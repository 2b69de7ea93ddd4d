"""Broken, huge, odd-mode, rotated and animated images; arrays and tensors on other devices.

Already covered elsewhere (see docs/robustness.md): zero-size / too-small / too-large arrays,
non-finite and out-of-range floats, wrong channel counts and dimensions, array layouts and dtypes
(tests/image_tokenizer/test_image_preprocessing.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from unimask.tokenizers.image_preprocessing import (
    MAX_INPUT_ASPECT_RATIO,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    MIN_INPUT_SIDE,
    SIZE_POLICIES,
    ImageSizePolicy,
    open_image,
    preprocess_images,
)

UNDERSTANDING = SIZE_POLICIES["understanding"]
FIXED_64 = ImageSizePolicy("fixed", fixed_size=(64, 64))


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(height: int = 64, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if any image file gets its pixels decoded."""

    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_value_error(fmt):
    data = encoded(gradient(), fmt)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        open_image(data[: len(data) * 2 // 3])


def test_truncated_lazily_opened_image_raises_value_error_in_preprocessing():
    data = encoded(gradient(), "PNG")
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))  # PIL reads only the header here
    with pytest.raises(ValueError, match="truncated or corrupt"):
        preprocess_images(lazy, UNDERSTANDING)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_corrupt_bytes_raise_value_error(data):
    with pytest.raises(ValueError, match="cannot be read"):
        open_image(data)


def test_missing_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        open_image(tmp_path / "missing.png")


def test_open_image_reads_paths_and_file_objects(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(encoded(gradient(), "PNG"))
    with open(path, "rb") as handle:
        assert open_image(handle).size == (64, 64)
    assert np.array_equal(np.asarray(open_image(path)), gradient())


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_zero_size_pil_image_raises(size):
    with pytest.raises(ValueError, match="zero size"):
        preprocess_images(Image.new("RGB", size), UNDERSTANDING)


def test_one_by_one_image_raises_with_the_range():
    with pytest.raises(ValueError, match=r"1 x 1 .*\[16, 16384\]"):
        preprocess_images(Image.new("RGB", (1, 1)), UNDERSTANDING)
    with pytest.raises(ValueError, match=r"\[16, 16384\]"):
        open_image(encoded(np.zeros((1, 1, 3), np.uint8), "PNG"))


def test_our_pixel_limit_is_below_pils_own_guard():
    assert MAX_INPUT_PIXELS < Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    "width, height, message",
    [
        (20000, 20000, "decompression-bomb"),  # PIL itself refuses this one (> 2 x MAX_IMAGE_PIXELS)
        (9000, 9000, "decompression-bomb"),  # below PIL's warning level, above ours: refused by ours
        (16400, 1100, r"\[16, 16384\]"),  # one side over our limit
    ],
)
def test_decompression_bomb_file_is_refused_from_its_header(width, height, message, no_pixel_decoding):
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")  # a few kB on disk, hundreds of Mpx decoded
    with pytest.raises(ValueError, match=message):
        open_image(buffer.getvalue())


def test_lazily_opened_bomb_is_refused_before_decoding(no_pixel_decoding):
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")
    lazy = Image.open(io.BytesIO(buffer.getvalue()))
    with pytest.raises(ValueError, match="decompression-bomb"):
        preprocess_images(lazy, UNDERSTANDING)


MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_gives_finite_normalised_pixels(mode):
    image = Image.new(mode, (48, 32))
    out = preprocess_images(image, UNDERSTANDING)
    assert out.pixel_values[0].shape[0] == 3 and out.pixel_values[0].dtype == torch.float32
    assert torch.isfinite(out.pixel_values[0]).all()
    assert out.grids[0] == (out.pixel_values[0].shape[1] // 16, out.pixel_values[0].shape[2] // 16)


@pytest.mark.parametrize("orientation, upright_size", [(1, (32, 64)), (3, (32, 64)), (6, (64, 32)), (8, (64, 32))])
def test_exif_rotated_jpeg_gives_the_upright_grid(orientation, upright_size):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(stored, "JPEG", exif=exif.tobytes(), quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270)) if orientation == 6 else None
    for image in (Image.open(io.BytesIO(data)), open_image(data)):
        out = preprocess_images(image, ImageSizePolicy("fixed", fixed_size=upright_size))
        assert out.grids == [(upright_size[0] // 16, upright_size[1] // 16)]
    if expected is not None:  # orientation 6: displayed = stored rotated 90 degrees clockwise
        upright = np.asarray(open_image(data))
        assert upright.shape[:2] == (64, 32)
        assert upright[:32].mean() > 200 and upright[32:].mean() < 50  # white half is now on top
        assert np.abs(upright.astype(int) - expected.astype(int)).max() <= 2


def test_animated_gif_uses_the_first_frame_and_keeps_the_callers_position():
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    frames = []
    for index in range(3):
        frame = Image.new("P", (32, 32), index)
        frame.putpalette(palette)
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=10, disposal=2)
    gif = Image.open(io.BytesIO(buffer.getvalue()))
    assert gif.n_frames == 3
    gif.seek(2)
    first = preprocess_images(gif, FIXED_64).pixel_values[0]
    black = preprocess_images(Image.new("RGB", (32, 32)), FIXED_64).pixel_values[0]
    torch.testing.assert_close(first, black)
    assert gif.tell() == 2
    torch.testing.assert_close(preprocess_images(open_image(buffer.getvalue()), FIXED_64).pixel_values[0], black)


def test_meta_device_tensor_raises_value_error():
    with pytest.raises(ValueError, match="meta device"):
        preprocess_images(torch.zeros(3, 64, 64, device="meta"), UNDERSTANDING)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the meta-device case runs instead")
def test_cuda_tensor_matches_cpu_tensor():
    image = torch.rand(3, 64, 64)
    torch.testing.assert_close(
        preprocess_images(image.cuda(), FIXED_64).pixel_values[0], preprocess_images(image, FIXED_64).pixel_values[0]
    )


def test_grad_non_contiguous_and_half_precision_tensors_are_accepted():
    base = torch.rand(64, 64, 3)
    reference = preprocess_images(base.numpy(), FIXED_64).pixel_values[0]
    for tensor in (base.permute(2, 0, 1).requires_grad_(), base.permute(2, 0, 1).half()):
        out = preprocess_images(tensor, FIXED_64).pixel_values[0]
        assert torch.allclose(out, reference, atol=0.03)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"]),
    policy=st.sampled_from(sorted(SIZE_POLICIES)),
)
def test_random_sizes_and_modes_give_a_valid_grid_or_the_documented_error(height, width, mode, policy):
    image = Image.new(mode, (width, height))
    in_limits = (
        MIN_INPUT_SIDE <= min(height, width)
        and max(height, width) <= MAX_INPUT_SIDE
        and max(height, width) / min(height, width) <= MAX_INPUT_ASPECT_RATIO
    )
    if not in_limits:
        with pytest.raises(ValueError, match=r"\[16, 16384\]|aspect ratio"):
            preprocess_images(image, SIZE_POLICIES[policy])
        return
    out = preprocess_images(image, SIZE_POLICIES[policy])
    (grid_h, grid_w), pixels = out.grids[0], out.pixel_values[0]
    assert pixels.shape == (3, grid_h * 16, grid_w * 16) and torch.isfinite(pixels).all()
    area = grid_h * grid_w * 256
    if policy == "understanding":
        assert max(grid_h, grid_w) / min(grid_h, grid_w) <= 4 and area <= 512 * 512
    elif policy.startswith("smart"):
        assert grid_h % 2 == 0 and grid_w % 2 == 0  # 32 px steps
        assert area <= SIZE_POLICIES[policy].max_pixels
    else:
        assert (grid_h, grid_w) == (8, 8)


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(MIN_INPUT_SIDE, MAX_INPUT_SIDE),
    ratio=st.floats(1 / MAX_INPUT_ASPECT_RATIO, MAX_INPUT_ASPECT_RATIO),
    policy=st.sampled_from(["understanding", "smart_single", "smart_multi"]),
)
def test_size_policies_stay_within_limits_for_any_allowed_input(height, ratio, policy):
    width = min(MAX_INPUT_SIDE, max(MIN_INPUT_SIDE, round(height * ratio)))
    target_h, target_w = SIZE_POLICIES[policy].target_size(height, width)
    assert target_h % 16 == 0 and target_w % 16 == 0 and target_h >= 16 and target_w >= 16
    if policy == "understanding":
        assert target_h * target_w <= 512 * 512
    else:
        assert target_h * target_w <= SIZE_POLICIES[policy].max_pixels
        assert target_h * target_w >= SIZE_POLICIES[policy].min_pixels // 4  # aspect-ratio corners round down


@pytest.mark.parametrize("side", [20000, 9000])
def test_cli_image_loading_refuses_bombs_with_value_error_before_decoding(tmp_path, side, no_pixel_decoding):
    from unimask.pipelines.cli_common import load_images

    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_images([str(path)])


@pytest.mark.parametrize("content", ["garbage", "truncated", "bomb"])
@pytest.mark.parametrize("source", ["--jsonl", "--images"])
def test_data_write_names_a_bad_image_instead_of_crashing(tmp_path, capsys, content, source):
    from unimask.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    path = folder / "bad.png"
    if content == "garbage":
        path.write_bytes(b"garbage")
    elif content == "truncated":
        data = encoded(gradient(), "PNG")
        path.write_bytes(data[: len(data) // 2])
    else:
        Image.new("1", (9000, 9000)).save(path)
    (folder / "bad.txt").write_text("a caption")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"task": "caption", "images": ["images/bad.png"]}\n')
    argument = str(jsonl) if source == "--jsonl" else str(folder)
    assert main(["data", "write", source, argument, "--out", str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err
    assert "bad.png" in message and "cannot be used" in message
    assert not list((tmp_path / "out").glob("*.tar")) if (tmp_path / "out").exists() else True
