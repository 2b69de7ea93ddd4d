import itertools
import logging

import pytest
import webdataset as wds

from unimask.data.loader import CORRUPT, ShardSampleStream, check_dataset_not_empty, expand_shard_paths, iterate_samples
from unimask.data.shard_format import encode_record


def keys(stream, n):
    return [s["__key__"] for s in itertools.islice(iterate_samples(stream), n)]


@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("split", ["shard", "sample"])
def test_order_is_deterministic_in_the_seed(toy_shards, resampled, split):
    make = lambda seed: ShardSampleStream(toy_shards, seed=seed, resampled=resampled, split=split, shuffle_buffer=8, world_size=2, rank=1)
    assert keys(make(1), 40) == keys(make(1), 40)
    assert keys(make(1), 40) != keys(make(2), 40)


def test_epochs_visit_every_sample_once_and_ranks_are_disjoint(toy_shards):
    per_rank = [keys(ShardSampleStream(toy_shards, seed=5, rank=r, world_size=2, resampled=False), 24) for r in (0, 1)]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 48


@pytest.mark.parametrize("resampled", [False, True])
def test_sample_split_gives_the_same_global_stream_for_any_world_size(toy_shards, resampled):
    options = dict(seed=9, split="sample", shuffle_buffer=10, resampled=resampled)
    global_stream = keys(ShardSampleStream(toy_shards, **options), 60)
    rank0 = keys(ShardSampleStream(toy_shards, rank=0, world_size=2, **options), 30)
    rank1 = keys(ShardSampleStream(toy_shards, rank=1, world_size=2, **options), 30)
    assert [k for pair in zip(rank0, rank1) for k in pair] == global_stream


@pytest.mark.parametrize("split, resampled, workers", [("shard", False, 0), ("shard", True, 0), ("sample", False, 0), ("shard", False, 2), ("sample", True, 2)])
def test_fast_forward_resumes_exactly(toy_shards, split, resampled, workers):
    options = dict(seed=4, split=split, resampled=resampled, num_workers=workers, shuffle_buffer=6, world_size=2, rank=0)
    full = keys(ShardSampleStream(toy_shards, **options), 50)
    for start in (7, 13):
        assert keys(ShardSampleStream(toy_shards, start=start, **options), 50 - start) == full[start:]


def test_workers_split_shards_like_one_reader_per_worker(toy_shards):
    with_workers = keys(ShardSampleStream(toy_shards, seed=2, num_workers=2, resampled=False), 48)
    assert len(set(with_workers)) == 48


def _write_corrupt_shard(path):
    good = encode_record({"__key__": "good1", "json": {"task": "t"}})
    bad_json = {"__key__": "badjson", "json": b"{not json"}
    bad_image = {**encode_record({"__key__": "badimage", "json": {"task": "t"}}), "0.png": b"garbage"}
    good2 = encode_record({"__key__": "good2", "json": {"task": "t"}})
    with wds.TarWriter(str(path)) as sink:
        for record in (good, bad_json, bad_image, good2):
            sink.write(record)


def test_corrupt_samples_become_markers_with_their_keys(tmp_path, caplog):
    _write_corrupt_shard(tmp_path / "c.tar")
    truncated = tmp_path / "t.tar"
    _write_corrupt_shard(truncated)
    truncated.write_bytes(truncated.read_bytes()[:1500])
    with caplog.at_level(logging.WARNING, logger="unimask.data.loader"):
        items = list(itertools.islice(iterate_samples(ShardSampleStream([str(tmp_path / "c.tar")], resampled=False)), 4))
    assert [i["__key__"] for i in items] == ["good1", "badjson", "badimage", "good2"]
    assert [bool(i.get(CORRUPT)) for i in items] == [False, True, True, False]
    assert "badjson" in caplog.text and "badimage" in caplog.text
    items = list(itertools.islice(iterate_samples(ShardSampleStream([str(truncated)], resampled=False)), 6))
    assert any(i.get(CORRUPT) for i in items)


def test_bad_inputs_fail_with_a_message(tmp_path, toy_shards):
    with pytest.raises(ValueError, match="does not exist"):
        expand_shard_paths([str(tmp_path / "missing-000000.tar")])
    with pytest.raises(ValueError, match="matches no shard"):
        expand_shard_paths([str(tmp_path / "*.nothing")])
    assert expand_shard_paths([str(tmp_path / "toy")]) == sorted(toy_shards)
    assert len(expand_shard_paths([str(tmp_path / "toy" / "shard-{000000..000001}.tar")])) == 2
    empty = tmp_path / "empty.tar"
    wds.TarWriter(str(empty)).close()
    with pytest.raises(ValueError, match="dataset is empty"):
        check_dataset_not_empty([str(empty)])
    with pytest.raises(ValueError, match="at least world_size \\* num_workers = 8 shards"):
        ShardSampleStream(toy_shards, world_size=4, num_workers=2, resampled=False)
