"""Interleaved output with a backbone forced (scripted logits) to open images."""

from __future__ import annotations

import PIL.Image
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
