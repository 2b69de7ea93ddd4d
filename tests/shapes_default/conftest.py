"""Fixtures of the Shapes default-model build tests: the trained Shapes text tokenizer (built once)."""

import pytest


@pytest.fixture(scope="session")
def shapes_text_tokenizer():
    """The Shapes World text tokenizer trained on a small sampled corpus (vocab 512)."""
    from unimask.shapes.text_tokenizer_build import build_shapes_text_tokenizer

    return build_shapes_text_tokenizer(num_sampled=200)


@pytest.fixture(scope="session")
def shapes_builder(shapes_text_tokenizer):
    """A SequenceBuilder of the compact layout (512 text ids, 256 codes) and that tokenizer."""
    from unimask.tokenizers.sequence_builders import SequenceBuilder
    from unimask.tokenizers.token_layout import TokenLayout

    layout = TokenLayout.shapes(text_vocab_size=len(shapes_text_tokenizer), codebook_size=256)
    return SequenceBuilder(layout, shapes_text_tokenizer)
