"""`fill_field` retypes a value a re-rendered Gradio field dropped, and gives up with a clear error."""

from __future__ import annotations

import pytest

from unimask.web_demo_screenshots import fill_field


class _Page:
    def wait_for_timeout(self, ms: int) -> None:
        pass


class _ResettingField:
    """A stand-in locator whose typed value is lost ``resets`` times (a field mounted again after typing)."""

    def __init__(self, resets: int):
        self.page, self.resets, self.value, self.typed = _Page(), resets, "", []

    def fill(self, text: str) -> None:
        self.typed.append(text)
        self.value = text

    def press(self, key: str) -> None:
        if self.resets > 0:
            self.resets -= 1
            self.value = ""

    def input_value(self) -> str:
        return self.value


def test_fill_field_retypes_until_the_value_stays():
    field = _ResettingField(resets=2)
    fill_field(field, "0")
    assert field.input_value() == "0"
    assert field.typed == ["0", "0", "0"]


def test_fill_field_raises_when_the_value_never_stays():
    field = _ResettingField(resets=10**9)
    with pytest.raises(TimeoutError, match="kept resetting"):
        fill_field(field, "0", timeout_ms=0)
