import pytest

from unimask.training.schedules import lr_multiplier


def test_cosine_warms_up_then_decays_to_the_floor():
    values = [lr_multiplier(s, 10, "cosine", warmup_steps=2, min_lr_ratio=0.1) for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(values[2:], values[3:]))
    assert values[-1] == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    values = [lr_multiplier(s, 10, "wsd", warmup_steps=1, decay_steps=4, min_lr_ratio=0.0) for s in range(10)]
    assert values[:6] == [1.0] * 6
    assert values[6:] == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert lr_multiplier(3, 10, "constant", warmup_steps=0) == 1.0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind='linear'"):
        lr_multiplier(0, 10, "linear")
    with pytest.raises(ValueError, match="step=10"):
        lr_multiplier(10, 10, "cosine")
