import numpy as np
import pytest

from unimask.data import tokenize_shards
from unimask.data.loader import ShardSampleStream, iterate_samples
from unimask.data.tokenize_shards import add_image_codes, done_marker_path


def fake_encode(calls):
    def encode(images):
        calls.append(len(images))
        return [np.full((2, 2), int(np.asarray(im)[0, 0, 0]), dtype=np.int64) for im in images]

    return encode


def read_all(shards):
    import itertools

    return list(itertools.islice(iterate_samples(ShardSampleStream(shards, resampled=False, split="sample")), 6))


def test_codes_are_added_batched_and_done_shards_are_skipped(image_shards):
    before = {s["__key__"]: s for s in read_all(image_shards)}
    calls = []
    report = add_image_codes(image_shards, fake_encode(calls), batch_size=3)
    assert report.shards_done == 2 and report.samples_coded == 6
    assert max(calls) <= 4  # flushed once a batch holds >= 3 images
    for sample in read_all(image_shards):
        original = before[sample["__key__"]]
        assert sample["codes"].shape == (len(original["images"]), 2, 2) and sample["codes"].dtype == np.int16
        assert sample["codes"][0, 0, 0] == np.asarray(original["images"][0])[0, 0, 0]
        assert sample["json"] == original["json"]
    again = add_image_codes(image_shards, fake_encode([]))
    assert again.shards_skipped == 2 and again.shards_done == 0


def test_failure_mid_shard_leaves_the_original_intact(image_shards, monkeypatch):
    original = open(image_shards[0], "rb").read()

    def broken(images):
        raise OSError("tokenizer crashed")

    with pytest.raises(OSError):
        add_image_codes(image_shards[:1], broken, batch_size=1)
    assert open(image_shards[0], "rb").read() == original
    assert not done_marker_path(image_shards[0]).exists()
    report = add_image_codes(image_shards[:1], fake_encode([]), batch_size=1)  # resumable
    assert report.shards_done == 1


def test_missing_shard_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        add_image_codes([tmp_path / "nope.tar"], fake_encode([]))
    assert tokenize_shards.encode_fn_from_tokenizer
