"""Background code merging: each background colour ends with one code, object codes stay."""

import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimask.shapes.background_codes import code_owner_counts, merge_background_codes, merged_codebook, owner_entropy
from unimask.shapes.patch_owners import patch_owners
from unimask.shapes.scene import Scene, ShapeObject, sample_scene


def _nearest(book: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The cosine quantiser of GlmImageVQVAE: index of the closest normalised row."""
    return (F.normalize(features, dim=-1) @ F.normalize(book, dim=-1).T).argmax(-1)


def test_owner_counts_follow_the_patch_owners():
    scene = Scene("gray", (ShapeObject("square", "red", "large", "top left", (0, 0)),))
    owners = patch_owners(scene)
    grid = np.where(owners < 0, 1, 5)
    grid[7, 7] = 2
    counts = code_owner_counts([grid], [scene])
    background = int((owners < 0).sum())
    assert counts[1] == Counter({("background", "gray"): background - 1})
    assert counts[2] == Counter({("background", "gray"): 1})
    assert counts[5] == Counter({("object", "red", "square"): 64 - background})
    entropy = owner_entropy(counts)
    assert entropy[("object", "red", "square")] == {"codes": 1.0, "bits": 0.0, "top_share": 1.0}
    assert entropy[("background", "gray")]["codes"] == 2.0


def test_owner_counts_reject_mismatched_inputs():
    scene = Scene("gray", (ShapeObject("square", "red", "large", "top left", (0, 0)),))
    with pytest.raises(ValueError, match="one grid per scene"):
        code_owner_counts([np.zeros((8, 8), int)] * 2, [scene])
    with pytest.raises(ValueError, match="does not match the patch grid"):
        code_owner_counts([np.zeros((4, 4), int)], [scene])


def test_merged_group_quantises_to_its_most_frequent_code():
    generator = torch.Generator().manual_seed(0)
    book = torch.randn(8, 6, generator=generator)
    book[[1, 2, 4]] = book[1] + 0.2 * torch.randn(3, 6, generator=generator)  # one background's codes lie close
    gray, white = ("background", "gray"), ("background", "white")
    counts = {
        1: Counter({gray: 30}), 2: Counter({gray: 50}), 4: Counter({gray: 19, ("object", "red", "circle"): 1}),
        3: Counter({gray: 6, ("object", "red", "circle"): 4}),  # mixed: stays
        5: Counter({("object", "red", "circle"): 40}),
        6: Counter({white: 9}), 7: Counter({white: 1}),  # seen once: too rare to judge
    }
    new_book, groups = merged_codebook(book, counts, share=0.9)
    assert groups == {"gray": {"representative": 2, "merged": [1, 2, 4]}, "white": {"representative": 6, "merged": [6]}}
    assert _nearest(new_book, book[[1, 2, 4]]).tolist() == [2, 2, 2]
    assert _nearest(new_book, book[[0, 3, 5, 7]]).tolist() == [0, 3, 5, 7]
    centroid = F.normalize(30 * F.normalize(book[1], dim=0) + 50 * F.normalize(book[2], dim=0)
                           + 19 * F.normalize(book[4], dim=0), dim=0)
    torch.testing.assert_close(new_book[2], centroid)
    assert new_book.shape == book.shape and new_book.dtype == book.dtype


@pytest.mark.parametrize("share", [0.5, 1.5])
def test_merged_codebook_rejects_an_ambiguous_share(share):
    with pytest.raises(ValueError, match="share"):
        merged_codebook(torch.randn(4, 3), {}, share=share)


def test_merge_makes_background_codes_deterministic_and_keeps_object_codes():
    """A fake tokenizer whose background features wander with the rest of the picture, as the trained one's do."""
    torch.manual_seed(0)
    rng = random.Random(3)
    scenes = [sample_scene(rng) for _ in range(60)]
    dim, per_background = 16, 12
    anchors = {name: F.normalize(torch.randn(dim), dim=0) for name in ("white", "gray", "black")}
    # 12 codes near each background anchor, then one code per (colour, shape) object kind.
    background_rows = {name: anchors[name] + 0.1 * torch.randn(per_background, dim) for name in anchors}
    kinds = sorted({(o.colour, o.shape) for s in scenes for o in s.objects})
    object_rows = {kind: F.normalize(torch.randn(dim), dim=0) for kind in kinds}
    book = torch.cat([*background_rows.values(), torch.stack(list(object_rows.values()))])
    embedding = torch.nn.Embedding.from_pretrained(book.clone(), freeze=False)
    tokenizer = SimpleNamespace(vqmodel=SimpleNamespace(quantize=SimpleNamespace(embedding=embedding)))
    context = {id(s): torch.randn(dim) for s in scenes}

    def encode(batch):
        grids = []
        for scene in batch:
            owners = patch_owners(scene)
            features = torch.empty(8, 8, dim)
            for (row, col), owner in np.ndenumerate(owners):
                if owner < 0:
                    features[row, col] = anchors[scene.background] + 0.1 * context[id(scene)]
                else:
                    item = scene.objects[owner]
                    features[row, col] = object_rows[(item.colour, item.shape)]
            grids.append(_nearest(embedding.weight.detach(), features.reshape(64, dim)).reshape(8, 8).numpy())
        return grids

    before_grids = encode(scenes)
    # A code nobody used before a round can take over a merged one's features: later rounds catch it.
    report = merge_background_codes(tokenizer, scenes, shares=(0.9, 0.8, 0.8, 0.8), encode=lambda: encode(scenes))
    after_grids = encode(scenes)
    for name in ("white", "gray", "black"):
        assert report["before"][f"background {name}"]["codes"] > 2
        assert report["after"][f"background {name}"] == {"codes": 1.0, "bits": 0.0, "top_share": 1.0}
    assert [r["share"] for r in report["rounds"]] == [0.9, 0.8, 0.8, 0.8] and set(report["rounds"][0]["groups"]) == {"white", "gray", "black"}
    for scene, before, after in zip(scenes, before_grids, after_grids):
        objects = patch_owners(scene) >= 0
        assert np.array_equal(before[objects], after[objects])
