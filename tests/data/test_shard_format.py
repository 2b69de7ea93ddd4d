import numpy as np
import pytest
from PIL import Image

from unimask.data.shard_format import SampleDecodeError, decode_record, encode_record


def _sample(**extra):
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    return {"__key__": "k1", "json": {"task": "edit", "instruction": "make it red"}, "images": [image, image[::-1]], **extra}


def test_roundtrip_keeps_text_images_and_codes_exactly():
    codes = np.arange(2 * 2 * 3, dtype=np.int16).reshape(2, 2, 3)
    record = encode_record(_sample(codes=codes))
    assert sorted(k for k in record if k != "__key__") == ["0.png", "1.png", "codes.npy", "json"]
    sample = decode_record(record)
    assert sample["json"] == {"task": "edit", "instruction": "make it red"}
    assert [im.size for im in sample["images"]] == [(16, 16), (16, 16)]
    np.testing.assert_array_equal(np.asarray(sample["images"][1]), np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)[::-1])
    np.testing.assert_array_equal(sample["codes"], codes)
    assert sample["codes"].dtype == np.int16


def test_jpg_and_raw_image_bytes():
    record = encode_record(_sample(), image_format="jpg")
    assert "0.jpg" in record
    raw = decode_record(record, decode_images=False)
    assert isinstance(raw["images"][0], bytes)
    assert isinstance(decode_record(record)["images"][0], Image.Image)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"__key__": "a.b"}, "without '.'"),
        ({"json": {"no_task": 1}}, "string 'task'"),
        ({"codes": np.zeros((2, 2, 2), dtype=np.float32)}, "int16 or int32"),
        ({"codes": np.zeros((3, 2, 2), dtype=np.int32)}, "3 grids for 2 images"),
        ({"json": {"task": "edit", "n_images": 5}}, "n_images=5"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_encode_rejects_invalid_samples(bad, match):
    with pytest.raises(ValueError, match=match):
        encode_record({**_sample(), **bad})


def test_decode_reports_undecodable_records():
    record = encode_record(_sample())
    with pytest.raises(SampleDecodeError, match="no json"):
        decode_record({k: v for k, v in record.items() if k != "json"})
    with pytest.raises(SampleDecodeError):
        decode_record({**record, "0.png": b"not a png"})
    with pytest.raises(SampleDecodeError, match="without gaps"):
        decode_record({k: v for k, v in record.items() if k != "0.png"})
