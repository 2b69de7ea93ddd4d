"""Shared fixtures for the token layout tests: a trained Shapes tokenizer and an official stand-in."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unimask.tokenizers.sequence_builders import SequenceBuilder
from unimask.tokenizers.text_tokenizer import shapes_special_tokens, train_text_tokenizer
from unimask.tokenizers.token_layout import (
    BEGIN_OF_CODES_TOKEN,
    EOS_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    MASK_TOKEN,
    ROLE_ASSISTANT,
    ROLE_HUMAN,
    ROLE_SYSTEM,
    THINK_END_TOKEN,
    THINK_START_TOKEN,
    UNCONDITION_TOKEN,
    TokenLayout,
    size_token_string,
)

SHAPES_WORDS = (
    "a large small red green blue yellow purple orange circle square triangle at the top bottom left "
    "right center in on white black gray background and what color is shape how many objects are there "
    "where describe image make move to remove add change put from first second into one two three"
).split()


def shapes_sentence(rng: random.Random) -> str:
    """A random sentence over the Shapes World words, sometimes with punctuation."""
    words = [rng.choice(SHAPES_WORDS) for _ in range(rng.randint(1, 12))]
    return " ".join(words) + rng.choice(["", "?", ".", ", and"])


@pytest.fixture(scope="session")
def shapes_tokenizer() -> PreTrainedTokenizerFast:
    rng = random.Random(0)
    corpus = [shapes_sentence(rng) for _ in range(300)]
    corpus.append("You are a text-to-image generation assistant. detailed thinking off on")
    return train_text_tokenizer(corpus, shapes_special_tokens(), vocab_size=512)


@pytest.fixture(scope="session")
def shapes_layout() -> TokenLayout:
    return TokenLayout.shapes(text_vocab_size=512, codebook_size=256)


@pytest.fixture()
def builder(shapes_layout, shapes_tokenizer) -> SequenceBuilder:
    return SequenceBuilder(shapes_layout, shapes_tokenizer, max_length=2048)


# Invented ids for the tokens the public release does not document; documented ones are real.
OFFICIAL_STAND_IN_IDS = {
    EOS_TOKEN: 156892,
    MASK_TOKEN: 156895,
    IMAGE_START_TOKEN: 156901,
    IMAGE_END_TOKEN: 156902,
    BEGIN_OF_CODES_TOKEN: 156904,
    ROLE_SYSTEM: 157000,
    ROLE_HUMAN: 157001,
    ROLE_ASSISTANT: 157002,
    THINK_START_TOKEN: 157003,
    THINK_END_TOKEN: 157004,
    UNCONDITION_TOKEN: 157005,
    **{size_token_string(n): 157010 + n for n in range(101)},
}


def official_stand_in(overrides: dict[str, int | None] | None = None) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer with the official special-token ids (sparse vocabulary); an
    override of None removes that token."""
    merged = {**OFFICIAL_STAND_IN_IDS, **(overrides or {})}
    specials = {token: token_id for token, token_id in merged.items() if token_id is not None}
    words = SHAPES_WORDS + ["You", "text-to-image", "generation", "assistant.", "detailed", "thinking", "off"]
    vocab = {"[UNK]": 0, **{word: index + 1 for index, word in enumerate(words)}}
    vocab.update(specials)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


@pytest.fixture(scope="session")
def official_tokenizer() -> PreTrainedTokenizerFast:
    return official_stand_in()


@pytest.fixture(scope="session")
def official_ids() -> dict[str, int]:
    """The ids the official stand-in tokenizer gives each special token string."""
    return dict(OFFICIAL_STAND_IN_IDS)


@pytest.fixture(scope="session")
def make_official_tokenizer():
    """Factory: an official stand-in tokenizer with some special-token ids overridden."""
    return official_stand_in


@pytest.fixture(scope="session")
def shapes_words() -> list[str]:
    return list(SHAPES_WORDS)
