"""Interleaved output with a backbone forced (scripted logits) to open images."""

from __future__ import annotations

import re

import PIL.Image
import pytest
import torch


def _scripts(pipe, sizes, tail="c"):
    layout = pipe.token_layout
    word = pipe.text_tokenizer.encode("a", add_special_tokens=False)[0]
    last = pipe.text_tokenizer.encode(tail, add_special_tokens=False)[0]
    opened = [[word, layout.image_start_id, layout.size_token(h), layout.size_token(w), layout.boi_id] for h, w in sizes]
    return opened + [[last]]


def test_model_opens_two_images_and_text_continues(pipe, scripted_pipe):
    scripted = scripted_pipe(_scripts(pipe, [(1, 2), (2, 1)]))
    out = scripted("tell a story with pictures", output="interleaved", output_type="tokens")
    assert out.task == "interleaved"
    kinds = ["text" if isinstance(part, str) else "image" for part in out.parts[0]]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert [tuple(image.shape) for image in out.images[0]] == [(1, 2), (2, 1)]
    assert out.parts[0][0] == "a" and out.parts[0][-1] == "c"
    assert out.stats["stop_reasons"] == ["end_of_sequence"]
    assert out.stats["nfe"]["image_round"] > 0 and out.stats["malformed_image_blocks"] == 0


def test_interleaved_batched_decodes_images_and_respects_max_images(pipe, scripted_pipe):
    scripted = scripted_pipe(_scripts(pipe, [(1, 2), (2, 2), (2, 2)]))
    out = scripted.interleaved(["story one", "story two"], max_images=2, output_type="pil", generator=[
        torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert len(out.parts) == 2
    for images, reason in zip(out.images, out.stats["stop_reasons"]):
        assert len(images) == 2 and reason == "max_images"
        assert images[0].size == (32, 16) and all(isinstance(image, PIL.Image.Image) for image in images)


def test_invalid_header_gets_sampled_size_tokens(pipe, scripted_pipe):
    layout = pipe.token_layout
    word = pipe.text_tokenizer.encode("a", add_special_tokens=False)[0]
    # <|image|> followed by text, not by size tokens and <boi>: the sizes are sampled as SIZE positions.
    scripted = scripted_pipe([[word, layout.image_start_id, word, word, word], [word]])
    out = scripted.interleaved("draw", max_images=1, output_type="tokens")
    assert len(out.images[0]) == 1
    h, w = out.images[0][0].shape
    assert 1 <= h <= layout.max_grid_side and 1 <= w <= layout.max_grid_side
    assert out.stats["nfe"]["size_tokens"] >= 1


def test_header_beyond_the_decoders_reach_falls_back_to_the_default_grid(pipe, scripted_pipe, monkeypatch):
    from unimask.decoders.semantic_decoder import SemanticImageDecoder

    # A decoder with learned grid positions decodes at most its trained side; a generated header larger
    # than that must not reach the decoder (it raised there before).
    monkeypatch.setattr(SemanticImageDecoder, "max_grid_side", property(lambda self: 2))
    default = tuple(int(side) for side in pipe.generation_defaults.options_for("interleaved", {})[2]["image_grid"])
    scripted = scripted_pipe(_scripts(pipe, [(3, 1)]))
    out = scripted.interleaved("draw", max_images=1, output_type="tokens")
    assert [tuple(image.shape) for image in out.images[0]] == [default]
    assert max(default) <= 2


def test_decoder_reports_its_grid_reach():
    from unimask.decoders.sigvq import SigVQEmbedding

    class Stub:
        pass

    from unimask.decoders.semantic_decoder import SemanticImageDecoder

    stub = Stub()
    stub.sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, grid_position_size=16)
    assert SemanticImageDecoder.max_grid_side.fget(stub) == 8
    stub.sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4)
    assert SemanticImageDecoder.max_grid_side.fget(stub) is None


# ----------------------------------------------------------------------------- step_images="tasks"


def _spy(monkeypatch, cls, calls):
    """Record every call of ``cls`` (a task pipeline) with its prompts, sources and options, then run it."""
    original = cls.__call__

    def spied(self, prompt, *args, **kwargs):
        calls.append((cls.__name__, list(prompt), args, dict(kwargs)))
        return original(self, prompt, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spied)


def test_step_images_by_tasks_draw_the_first_image_then_edit_it(pipe, scripted_pipe, monkeypatch):
    from unimask.pipelines.pipeline_tasks import ImageEditPipeline, TextToImagePipeline

    calls: list = []
    _spy(monkeypatch, TextToImagePipeline, calls)
    _spy(monkeypatch, ImageEditPipeline, calls)
    scripted = scripted_pipe(_scripts(pipe, [(2, 2), (2, 2)]))
    out = scripted.interleaved(
        "draw then edit", output_type="pt", step_images="tasks", step_prompt_patterns=[r"^(a)$", r"^x(.*)$"],
        generator=torch.Generator().manual_seed(0), decoder_steps=1, threshold=0.5,
    )
    assert [(name, prompts) for name, prompts, _, _ in calls] == [
        ("TextToImagePipeline", ["a"]),  # group 1 of the first step's pattern
        ("ImageEditPipeline", ["a"]),  # the later pattern does not match: the whole sentence
    ]
    assert calls[0][3]["image_grid"] == [2, 2] and calls[0][3]["output_type"] == "pt"
    # The call's decoder options reach the tasks; its sampler options are the text rounds' own.
    assert all(kwargs["decoder_steps"] == 1 and "threshold" not in kwargs for _, _, _, kwargs in calls)
    first, second = out.images[0]
    source = calls[1][2][0][0]
    assert torch.equal(source, first), "the edit's source is the first step image as drawn"
    assert first.shape == second.shape == (3, 32, 32)
    assert "image_round" not in out.stats["nfe"]
    assert out.stats["nfe"]["step_text_to_image"] > 0 and out.stats["nfe"]["step_edit"] > 0
    assert out.stats["stop_reasons"] == ["end_of_sequence"]
    # The sequence holds each drawn image as the image tokenizer reads it, under a header of its grid.
    layout = pipe.token_layout
    ids = out.token_ids[0].tolist()
    grids = pipe.encode_images([[first], [second]], [32, 32])
    for image_end, (grid,) in zip([i for i, t in enumerate(ids) if t == layout.image_end_id], grids):
        codes = ids[image_end - grid.numel() : image_end]
        assert codes == (grid.flatten() + layout.image_token_offset).tolist()
        assert ids[image_end - grid.numel() - 3 : image_end - grid.numel()] == [
            layout.size_token(2), layout.size_token(2), layout.boi_id]


def test_step_images_by_tasks_come_in_every_output_form(pipe, scripted_pipe):
    scripted = scripted_pipe(_scripts(pipe, [(2, 2), (2, 2)]))
    for output_type in ("pil", "np", "tokens"):
        out = scripted.interleaved(["one", "two"], output_type=output_type, step_images="tasks", max_images=2,
                                   generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
        kinds = ["text" if isinstance(part, str) else "image" for part in out.parts[1]]
        assert kinds == ["text", "image", "text", "image", "text"]
        for images in out.images:
            assert len(images) == 2
            if output_type == "pil":
                assert all(isinstance(image, PIL.Image.Image) and image.size == (32, 32) for image in images)
            elif output_type == "np":
                assert all(image.shape == (32, 32, 3) and 0 <= image.min() <= image.max() <= 1 for image in images)
            else:
                assert all(tuple(image.shape) == (2, 2) for image in images)


def test_a_step_with_no_sentence_ends_the_sample(pipe, scripted_pipe):
    layout = pipe.token_layout
    scripted = scripted_pipe([[layout.image_start_id, layout.size_token(2), layout.size_token(2), layout.boi_id]])
    out = scripted.interleaved("draw", output_type="tokens", step_images="tasks")
    assert out.images[0] == [] and out.stats["stop_reasons"] == ["no_step_text"]
    answer = out.token_ids[0].tolist()
    assert answer[-1] == layout.eos_id and layout.image_start_id not in answer[-5:], "the open header is cut"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"step_images": "pixels"}, "step_images='pixels' is unknown"),
        ({"step_images": "tasks", "step_prompt_patterns": ["only one"]}, "must be two regular expressions"),
        ({"step_images": "tasks", "step_prompt_patterns": ["(", "x"]}, "is not a regular expression"),
    ],
)
def test_bad_step_image_options_raise(pipe, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe.interleaved("draw", **options)


def test_step_images_by_tasks_need_a_decoder(pipe):
    from unimask.pipelines.pipeline_interleaved import InterleavedPipeline

    bare = InterleavedPipeline.from_pipe(pipe, decoder=None)
    with pytest.raises(ValueError, match="needs a decoder and an image tokenizer"):
        bare("draw", step_images="tasks", output_type="tokens")


@pytest.mark.parametrize(
    "sentence, pattern, expected",
    [
        ("first, draw a red square.", r"^first, draw (.*)\.$", "a red square"),
        ("  then make it blue.  ", r"^then (.*)\.$", "make it blue"),
        ("something else", r"^then (.*)\.$", "something else"),
        ("then go", r"then", "then"),
        ("then go", None, "then go"),
    ],
)
def test_step_prompt_cuts_the_task_prompt_out_of_a_sentence(sentence, pattern, expected):
    from unimask.pipelines.pipeline_interleaved import step_prompt

    assert step_prompt(sentence, None if pattern is None else re.compile(pattern)) == expected
