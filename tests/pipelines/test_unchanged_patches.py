"""Copying unchanged patches into decoded edits: the rule itself, and how edit and interleaved output use it."""

from __future__ import annotations

import pytest
import torch

from unimask.pipelines.pipeline_base import StageStats, UniPipelineBase
from unimask.pipelines.unchanged_patches import copy_unchanged_patches


def _flat(colour: float, size: int = 32) -> torch.Tensor:
    return torch.full((3, size, size), colour)


def test_copies_only_where_codes_match_and_pixels_are_close():
    image, reference = _flat(0.5), _flat(0.55)
    reference[:, 16:, 16:] = 0.9  # bottom-right patch: far from the decoded pixels
    grid = torch.tensor([[1, 2], [3, 4]])
    codes = torch.tensor([[1, 9], [3, 4]])  # top-right code changed
    result, copied = copy_unchanged_patches(image, grid, [(reference, codes)], tolerance=0.1)
    assert copied.tolist() == [[True, False], [True, False]]
    assert torch.equal(result[:, :16, :16], reference[:, :16, :16])
    assert torch.equal(result[:, 16:, :16], reference[:, 16:, :16])
    assert torch.equal(result[:, :16, 16:], image[:, :16, 16:])  # code changed
    assert torch.equal(result[:, 16:, 16:], image[:, 16:, 16:])  # pixels too different
    assert torch.equal(image, _flat(0.5))  # the input is not modified


def test_first_qualifying_reference_wins_and_sizes_and_grids_are_matched():
    image, grid = _flat(0.5), torch.zeros(2, 2, dtype=torch.long)
    first, second = _flat(0.52, size=64), _flat(0.48)
    other_shape = (_flat(0.5), torch.zeros(1, 2, dtype=torch.long))
    result, copied = copy_unchanged_patches(
        image, grid, [other_shape, (first, torch.tensor([[0, 1], [1, 1]])), (second, grid)], tolerance=0.1
    )
    assert copied.all()
    assert torch.allclose(result[:, :16, :16], torch.full((3, 16, 16), 0.52))  # resized 64 -> 32
    assert torch.allclose(result[:, 16:, 16:], torch.full((3, 16, 16), 0.48))


@pytest.mark.parametrize("tolerance", [-0.1, 1.5, "0.1", True])
def test_bad_tolerance_is_a_value_error(tolerance):
    with pytest.raises(ValueError, match="unchanged_patch_tolerance"):
        copy_unchanged_patches(_flat(0.5), torch.zeros(2, 2), [], tolerance=tolerance)


def test_image_not_a_whole_number_of_patches_is_a_value_error():
    with pytest.raises(ValueError, match="whole number of patches"):
        copy_unchanged_patches(_flat(0.5, size=30), torch.zeros(4, 4), [])


def test_decode_grids_copies_references_and_earlier_images(pipe):
    grid = torch.tensor([[1, 2], [3, 4]])
    reference = torch.rand(3, 32, 32)
    options = {"copy_unchanged_patches": True, "unchanged_patch_tolerance": 1.0, "resolution_multiplier": 1}
    images = pipe.decode_grids([grid, grid, grid + 1], options, torch.Generator().manual_seed(0), "pt", StageStats(),
                               references=[[(reference, grid)], [(0, grid)], [(0, grid)]])
    assert torch.allclose(images[0], reference) and torch.allclose(images[1], reference)
    assert not torch.allclose(images[2], reference)  # other codes: decoded as they are
    plain = pipe.decode_grids([grid], {**options, "copy_unchanged_patches": False}, torch.Generator().manual_seed(0),
                              "pt", StageStats(), references=[[(reference, grid)]])
    assert not torch.allclose(plain[0], reference)


def test_decode_grids_rejects_a_non_bool_switch(pipe):
    with pytest.raises(ValueError, match="copy_unchanged_patches"):
        pipe.decode_grids([torch.zeros(2, 2, dtype=torch.long)], {"copy_unchanged_patches": "yes"}, None, "pt",
                          StageStats(), references=[[]])


def _capture_references(monkeypatch):
    seen = []
    original = UniPipelineBase.decode_grids

    def spy(self, grids, decoder_options, generator, output_type, stats, references=None):
        seen.append((grids, references))
        return original(self, grids, decoder_options, generator, output_type, stats, references)

    monkeypatch.setattr(UniPipelineBase, "decode_grids", spy)
    return seen


def test_edit_passes_its_references_last_image_first(pipe, image, monkeypatch):
    seen = _capture_references(monkeypatch)
    flipped = image[:, ::-1].copy()
    out = pipe.edit("Combine them", [image, flipped], copy_unchanged_patches=True, output_type="np")
    assert out.images[0][0].shape == (32, 32, 3)
    (_, references), = seen
    pixels = pipe.reference_pixels([[image, flipped]], [32, 32])[0]
    codes = pipe.encode_images([[image, flipped]], [32, 32])[0]
    assert len(references) == 1 and len(references[0]) == 2
    assert torch.allclose(references[0][0][0], pixels[1]) and torch.equal(references[0][0][1], codes[1])
    assert torch.allclose(references[0][1][0], pixels[0]) and torch.equal(references[0][1][1], codes[0])
    seen.clear()
    pipe.edit("Combine them", [image, flipped], output_type="np")
    assert seen[0][1] is None  # switched off: nothing to copy from


def test_interleaved_images_reference_the_image_before(pipe, scripted_pipe, monkeypatch):
    layout = pipe.token_layout
    word = pipe.text_tokenizer.encode("a", add_special_tokens=False)[0]
    opened = [[word, layout.image_start_id, layout.size_token(h), layout.size_token(w), layout.boi_id]
              for h, w in [(2, 2), (2, 2), (1, 2)]]
    seen = _capture_references(monkeypatch)
    scripted = scripted_pipe(opened + [[word]])
    scripted.interleaved("draw three", max_images=3, output_type="pt", copy_unchanged_patches=True)
    (grids, references), = seen
    assert [tuple(grid.shape) for grid in grids] == [(2, 2), (2, 2), (1, 2)]
    assert references[0] == []
    assert references[1][0][0] == 0 and torch.equal(references[1][0][1], grids[0])
    assert references[2][0][0] == 1 and torch.equal(references[2][0][1], grids[1])
