"""Every task on the tiny official-layout checkpoint: single and batched, every output type."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from unimask.pipelines import UniPipelineOutput
from unimask.tokenizers.sequence_builders import THINKING_TEXT_TO_IMAGE_SYSTEM_PROMPT
from unimask.tokenizers.token_layout import encode_plain

CODEBOOK = 64


def _check_image(image, output_type, size=(32, 32)):
    if output_type == "pil":
        assert isinstance(image, PIL.Image.Image) and image.size == (size[1], size[0])
    elif output_type == "np":
        assert isinstance(image, np.ndarray) and image.shape == (*size, 3)
        assert 0.0 <= image.min() and image.max() <= 1.0
    elif output_type == "pt":
        assert isinstance(image, torch.Tensor) and image.shape == (3, *size)
    else:
        assert image.dtype == torch.int64 and image.shape == (size[0] // 16, size[1] // 16)
        assert 0 <= int(image.min()) and int(image.max()) < CODEBOOK


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "tokens"])
def test_text_to_image_batched_every_output_type(pipe, output_type):
    out = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, output_type=output_type)
    assert isinstance(out, UniPipelineOutput) and out.task == "text_to_image"
    assert len(out.images) == 4 and all(len(images) == 1 for images in out.images)
    for images in out.images:
        _check_image(images[0], output_type)
    # simple CFG: two forward passes per step
    assert out.stats["nfe"]["image_tokens"] % 2 == 0
    if output_type != "tokens":
        assert out.stats["nfe"]["decoder"] >= 1


def test_text_to_image_single_sizes_and_token_ids(pipe):
    out = pipe.text_to_image("a circle", height=48, width=32, output_type="tokens")
    grid = out.images[0][0]
    assert grid.shape == (3, 2)
    layout = pipe.token_layout
    sequence = out.token_ids[0]
    assert torch.equal(sequence[-7:-1] - layout.image_token_offset, grid.reshape(-1))
    assert int(sequence[-1]) == layout.image_end_id


def test_thinking_mode_generates_text_then_image(pipe):
    out = pipe(["a circle", "a square"], thinking=True, output_type="tokens")
    assert out.task == "thinking"
    assert all(isinstance(text, str) for text in out.texts)
    assert set(out.stats["nfe"]) >= {"thinking", "image_tokens"}
    layout = pipe.token_layout
    for sequence, text in zip(out.token_ids, out.texts):
        ids = sequence.tolist()
        if text:  # an empty thought is dropped with its markers (the next tests)
            assert ids.index(layout.think_end_id) < ids.index(layout.boi_id)
        assert layout.mask_id not in ids


def test_thinking_keeps_a_written_thought_between_its_markers(pipe, scripted_pipe):
    layout = pipe.token_layout
    word = encode_plain(pipe.text_tokenizer, "red")
    out = scripted_pipe([[0] + word])("a circle", thinking=True, output_type="tokens")  # offset 0 is <think>
    ids = out.token_ids[0].tolist()
    start = ids.index(layout.think_start_id)
    assert ids[start + 1 : start + 1 + len(word)] == word and out.texts[0].strip() == "red"
    assert ids.index(layout.think_end_id) < ids.index(layout.boi_id)


@pytest.mark.parametrize("thought", ["nothing", "image header"])
def test_thinking_drops_an_empty_thought_with_its_markers(pipe, scripted_pipe, thought):
    layout = pipe.token_layout
    # End-of-sequence at once, or only special ids the text vocabulary allows (no readable text).
    written = [] if thought == "nothing" else [layout.image_start_id, layout.boi_id]
    out = scripted_pipe([[0] + written])("a circle", thinking=True, output_type="tokens")
    ids = out.token_ids[0].tolist()
    assert out.texts == [""] and layout.think_start_id not in ids and layout.think_end_id not in ids
    h, w = out.images[0][0].shape
    plain = pipe.sequence_builder().text_to_image("a circle", h, w, cfg=False,
                                                  system_prompt=THINKING_TEXT_TO_IMAGE_SYSTEM_PROMPT)
    slot = plain.image_slots[0]
    assert ids[: slot.start] == plain.input_ids[: slot.start]  # conditioned as without thinking
    assert torch.equal(torch.tensor(ids[slot.start : slot.end]) - layout.image_token_offset, out.images[0][0].reshape(-1))


@pytest.mark.parametrize("output_type", ["pil", "tokens"])
def test_understanding_single_and_batched(pipe, image, output_type):
    single = pipe("What colour is the shape?", image=image, output_type=output_type)
    assert single.task == "understanding" and isinstance(single.texts[0], str)
    batched = pipe.understanding(["What is it?", "How many?"], [image, image[::-1].copy()], num_images_per_prompt=2)
    assert len(batched.texts) == 4
    codes = pipe.image_tokenizer.encode(image, target_size=(32, 32)).ids_list()[0].reshape(-1)
    tokens = (codes + pipe.token_layout.image_token_offset).tolist()
    sequence = batched.token_ids[0].tolist()
    assert any(sequence[i : i + len(tokens)] == tokens for i in range(len(sequence)))


def test_edit_single_three_way_and_multi_reference(pipe, image):
    single = pipe("Make the shape blue", image=image, output_type="np", steps=2)
    assert single.task == "edit"
    _check_image(single.images[0][0], "np", size=(32, 32))
    steps_taken = single.stats["stages"]["image_tokens"]["denoising_steps"]
    assert single.stats["nfe"]["image_tokens"] == 2 * steps_taken  # text guidance only -> simple CFG
    three_way = pipe.edit("Make it blue", image, image_guidance_scale=0.5, steps=2, output_type="tokens")
    assert three_way.stats["nfe"]["image_tokens"] == 3 * three_way.stats["stages"]["image_tokens"]["denoising_steps"]
    multi = pipe(["Combine them", "Swap them"], image=[[image, image[:, ::-1].copy()], [image, image]], output_type="pt")
    assert multi.task == "edit" and len(multi.images) == 2
    layout = pipe.token_layout
    assert multi.token_ids[0].tolist().count(layout.image_start_id) == 3  # two references + the target


def test_edit_reads_guidance_scale_as_its_text_guidance_scale(pipe, image, monkeypatch):
    # Editing's sampler reads text_guidance_scale; a guidance_scale must set it, not be overwritten unseen.
    seen = []
    edit = pipe.edit
    real_sample = edit.sample

    def recording_sample(specs, options, *rest):
        seen.append(options)
        return real_sample(specs, options, *rest)

    monkeypatch.setattr(edit, "sample", recording_sample)
    edit("Make it blue", image, guidance_scale=0.25, steps=2, output_type="tokens")
    edit("Make it blue", image, text_guidance_scale=0.25, guidance_scale=0.25, steps=2, output_type="tokens")
    assert [options["guidance_scale"] for options in seen] == [0.25, 0.25]
    assert all(options["text_guidance_scale"] == 0.25 for options in seen)
    with pytest.raises(ValueError, match="guidance_scale=0.25 and text_guidance_scale=2.0"):
        edit("Make it blue", image, guidance_scale=0.25, text_guidance_scale=2.0)


def test_chat_single_batched_and_multi_turn(pipe, image):
    out = pipe(["hello", "tell me a story"], output="text")
    assert out.task == "chat" and len(out.texts) == 2
    conversation = [
        {"role": "user", "content": "hello", "images": [image]},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what is it?"},
    ]
    turn = pipe(messages=conversation)
    ids = turn.token_ids[0].tolist()
    assert ids.count(pipe.token_layout.role_human_ids[0]) == 2
    assert ids.count(pipe.token_layout.role_assistant_ids[0]) == 2


def test_fixed_generator_is_deterministic(pipe):
    def run(seeds):
        return pipe.text_to_image(
            ["a circle", "a square"],
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            temperature=1.0,
            output_type="np",
        )

    first, second = run([1, 2]), run([1, 2])
    for a, b in zip(first.token_ids, second.token_ids):
        assert torch.equal(a, b)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first.images, second.images))
    other = run([3, 4])
    assert any(not torch.equal(a, b) for a, b in zip(first.token_ids, other.token_ids))


def test_step_callback_sees_grids_and_previews(pipe):
    seen = []

    def callback(pipeline, step_index, block_index, kwargs):
        seen.append((step_index, block_index, kwargs["stage"], [g.shape for g in kwargs["token_grids"]]))
        if len(seen) == 1:
            previews = kwargs["preview"]("pil")
            assert len(previews) == 1 and isinstance(previews[0], PIL.Image.Image)

    pipe.text_to_image("a circle", output_type="tokens", callback_on_step_end=callback)
    assert seen and all(stage == "image_tokens" and shapes == [(2, 2)] for _, _, stage, shapes in seen)


def test_sampler_and_decoder_options_pass_through(pipe):
    out = pipe.text_to_image("a circle", steps=1, block_length=4, threshold=0.5, guidance_scale=0.0, decoder_steps=2)
    stage = out.stats["stages"]["image_tokens"]
    assert out.stats["nfe"]["image_tokens"] == stage["denoising_steps"]  # no CFG branch
    assert out.stats["stages"]["decoder"]["steps"] == 2
    sprint = pipe.chat("hello there", use_sprint=True, keep_ratio=0.5, gen_length=16, block_length=8)
    assert sprint.stats["stages"]["text"]["cache_builds"] >= 1


def test_normal_decoder_gets_its_own_default_step_count(pipe):
    """A defaults file tuned for the turbo decoder (1 step) must not starve the normal one (needs >= 2)."""
    out = pipe.text_to_image("a circle", decoder="normal", output_type="pt")
    assert out.stats["stages"]["decoder"]["variant"] == "normal"
    assert out.stats["stages"]["decoder"]["steps"] == 2
    turbo = pipe.text_to_image("a circle", output_type="pt")
    assert turbo.stats["stages"]["decoder"]["steps"] == 1
