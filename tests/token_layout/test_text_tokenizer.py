"""The trained text tokenizer: exact round trip, special tokens fixed at their ids across save/load."""

from __future__ import annotations

import pytest

from unimask.tokenizers.text_tokenizer import load_text_tokenizer, shapes_special_tokens, train_text_tokenizer


def test_shapes_special_tokens_list():
    tokens = shapes_special_tokens()
    assert tokens[:2] == ["<|endoftext|>", "<|mask|>"]
    for required in ("<role>SYSTEM</role>", "<role>HUMAN</role>", "<role>ASSISTANT</role>", "<|image|>",
                     "<|/image|>", "<boi>", "<think>", "</think>", "<uncondition>"):
        assert required in tokens
    assert [t for t in tokens if t.startswith("<|reserved_token_")] == [f"<|reserved_token_{n}|>" for n in range(65)]


def test_round_trip_and_specials_after_save_load(tmp_path, shapes_tokenizer):
    texts = [
        "a large red circle at the top left and a small blue square in the center on a white background",
        "what color is the triangle?",
        "  odd  spacing, unicode é ✓ and words never seen: zebra",
    ]
    shapes_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = load_text_tokenizer(tmp_path)
    for tokenizer in (shapes_tokenizer, loaded):
        for text in texts:
            assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
        for index, token in enumerate(shapes_special_tokens()):
            assert tokenizer.convert_tokens_to_ids(token) == index
            ids = tokenizer.encode(f" red{token}blue", add_special_tokens=False)
            assert ids.count(index) == 1 and tokenizer.decode(ids) == f" red{token}blue"
        assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 0 and tokenizer.mask_token_id == 1
    assert len(loaded) <= 512
    assert loaded.encode(texts[0]) == shapes_tokenizer.encode(texts[0])


def test_training_checks_its_arguments():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_text_tokenizer(["a b"], ["<a>", "<b>"], vocab_size=100)
    with pytest.raises(ValueError, match="distinct"):
        train_text_tokenizer(["a b"], ["<a>", "<a>"], vocab_size=400)


def test_load_requires_tokenizer_json(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_text_tokenizer(tmp_path)
