"""Task routing and bad inputs: every error is a ValueError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimask.pipelines import classify_prompt, infer_task


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("What colour is it?", "question"),
        ("describe the image", "question"),
        ("is there a cat", "question"),
        ("Make the sky red", "instruction"),
        ("  remove the dog.", "instruction"),
        ("A red circle", None),
        ("Change it?", "question"),  # a trailing '?' wins
    ],
)
def test_classify_prompt(prompt, expected):
    assert classify_prompt(prompt) == expected


def test_infer_task_rule():
    assert infer_task(["a cat"], [0]) == "text_to_image"
    assert infer_task(["a cat"], [0], thinking=True) == "thinking"
    assert infer_task(["hi"], [0], output="text") == "chat"
    assert infer_task(["hi"], [0], output="interleaved") == "interleaved"
    assert infer_task(["What is it?"], [1]) == "understanding"
    assert infer_task(["Make it red"], [1]) == "edit"
    assert infer_task(["A cat"], [1], output="text") == "understanding"
    assert infer_task(["Combine"], [2]) == "edit"
    assert infer_task(["What is it?"], [1], task="edit") == "edit"
    with pytest.raises(ValueError, match="task='understanding' or task='edit'"):
        infer_task(["A cat"], [1])
    with pytest.raises(ValueError, match="prompt"):
        infer_task(["What is it?", "Make it red"], [1, 1])


@pytest.mark.parametrize("prompt", [None, "", "   ", [], ["ok", ""], [3]])
def test_missing_or_empty_prompt(pipe, prompt):
    with pytest.raises(ValueError, match="prompt"):
        pipe(prompt)


def test_unknown_task_and_output(pipe):
    with pytest.raises(ValueError, match="task='painting'"):
        pipe("a cat", task="painting")
    with pytest.raises(ValueError, match="output="):
        pipe("a cat", output="video")


@pytest.mark.parametrize("bad", ["picture.png", 3, [np.zeros((32, 32, 3), np.uint8), "x"], {"image": 1}])
def test_unsupported_image_types(pipe, bad):
    with pytest.raises(ValueError, match="image"):
        pipe("What is it?", image=bad)


def test_image_too_small_names_image(pipe):
    with pytest.raises(ValueError, match="image"):
        pipe("What is it?", image=np.zeros((4, 4, 3), np.uint8))


def test_more_images_than_the_context_allows(pipe, image):
    # 128 px inputs are 8 x 8 = 64 codes (+5 markers) each: 8 of them exceed the 512-token context.
    with pytest.raises(ValueError, match="image: .*context"):
        pipe("What is in these?", image=[image] * 8, task="understanding", image_size=[128, 128])


def test_bad_options_and_arguments(pipe, image):
    with pytest.raises(ValueError, match="stepz"):
        pipe("a cat", stepz=3)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a cat", output_type="gif")
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe("a cat", num_images_per_prompt=0)
    with pytest.raises(ValueError, match="generator"):
        pipe(["a cat", "a dog"], generator=[torch.Generator()])
    with pytest.raises(ValueError, match="height"):
        pipe("a cat", height=20)
    with pytest.raises(ValueError, match="threshold"):
        pipe("a cat", threshold=0.0)
    with pytest.raises(ValueError, match="decoder"):
        pipe("a cat", decoder="fast")
    with pytest.raises(ValueError, match="image"):
        pipe("hello", image=image, task="chat")
    with pytest.raises(ValueError, match="image"):
        pipe.understanding("What?", None)
