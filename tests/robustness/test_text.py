"""Empty, blank, over-long, non-UTF-8 and unusual text through the text tokenizer and the sequence builders.

Already covered elsewhere (see docs/robustness.md): a prompt longer than the context for
``text_to_image`` (tests/token_layout/test_sequence_builders.py), a folder without tokenizer.json
(tests/token_layout/test_text_tokenizer.py), blank pipeline prompts (tests/pipelines).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unimask.tokenizers.sequence_builders import ChatMessage
from unimask.tokenizers.sequence_parser import TextSpan, parse_sequence
from unimask.tokenizers.text_tokenizer import load_text_tokenizer
from unimask.tokenizers.token_layout import TokenKind

UNUSUAL = {
    "control": "a\x00b\x07c\x1b[31m red\r\n\t",
    "emoji": "👍🏽 👨‍👩‍👧 🇫🇷 red",
    "rtl": "مرحبا بالعالم שלום עולם",
    "mixed_direction": "red \u202eemordnilap\u202c circle",
    "combining": "e\u0301 n\u0303 \u0915\u094d\u0937",
    "cjk": "红色的圆 赤い円",
    "zero_width": "a\u200bb\u200dc\ufeff",
}


def prompt_text(spec, layout, tokenizer) -> str:
    """The decoded text of the given (PROMPT) tokens of a built sequence."""
    prompt_ids = [i for i, kind in zip(spec.input_ids, spec.token_kinds) if kind == TokenKind.PROMPT]
    return "".join(part.text for part in parse_sequence(prompt_ids, layout, tokenizer) if isinstance(part, TextSpan))


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_text_survives_tokenizer_and_builders_exactly(name, builder, layout, text_tokenizer):
    text = UNUSUAL[name]
    assert text_tokenizer.decode(text_tokenizer.encode(text, add_special_tokens=False)) == text
    for spec in (
        builder.text_to_image(text, 2, 2, cfg=False),
        builder.chat([ChatMessage("user", text)], answer_length=4),
        builder.edit([[[1, 2], [3, 4]]], text, h=2, w=2, cfg=False),
    ):
        assert text in prompt_text(spec, layout, text_tokenizer)
        assert all(0 <= i < layout.vocab_size for i in spec.input_ids)


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_valid_unicode_round_trips_through_the_builder(text, builder, layout, text_tokenizer):
    spec = builder.chat([ChatMessage("user", text)], answer_length=2)
    assert text in prompt_text(spec, layout, text_tokenizer)


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_and_blank_prompts_build_a_valid_sequence_in_the_builder(text, builder):
    spec = builder.text_to_image(text, 2, 2)
    assert len(spec) > 4 and spec.uncond is not None  # the builder is low level: no text is a valid condition


@pytest.mark.parametrize("text", ["", "   \n\t  ", ["ok", " "]])
def test_pipelines_refuse_empty_and_blank_prompts(text):
    from unimask.pipelines.call_inputs import check_prompts

    with pytest.raises(ValueError, match=r"prompt(\[\d\])? is an empty string"):
        check_prompts(text)


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"\xff\xfe red", "must be a str, got bytes .decode bytes"),
        (b"\xff\xfe".decode("utf-8", "surrogateescape"), "not valid Unicode"),
        ("red \ud800 circle", "not valid Unicode"),
        (None, "must be a str, got NoneType"),
        (42, "must be a str, got int"),
    ],
)
def test_non_utf8_and_non_text_prompts_raise_value_error(bad, message, builder):
    calls = [
        lambda: builder.text_to_image(bad, 2, 2),
        lambda: builder.edit([[[1]]], bad, h=1, w=1),
        lambda: builder.interleaved(bad, text_length=4),
        lambda: builder.chat([ChatMessage("user", bad)], answer_length=2),
        lambda: builder.text_to_image("ok", 2, 2, system_prompt=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("task", ["chat", "edit", "interleaved", "uncond_branch"])
def test_prompts_longer_than_the_context_raise_for_every_task(task, builder):
    long = "red circle " * 400
    with pytest.raises(ValueError, match="longer than the model's context max_length=512"):
        if task == "chat":
            builder.chat([ChatMessage("user", long)], answer_length=2)
        elif task == "edit":
            builder.edit([[[1, 2], [3, 4]]], long, h=2, w=2)
        elif task == "interleaved":
            builder.interleaved(long, text_length=2)
        else:  # short prompt, but the generated image makes the sequence too long
            builder.text_to_image("red", 30, 30)


@pytest.mark.parametrize("content", ["{broken json", '{"model": 1}', "[]"])
def test_corrupt_tokenizer_json_raises_value_error_naming_the_file(tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_text_tokenizer(tmp_path)
