"""Write a tiny random unified checkpoint in the official LLaDA2.0-Uni directory layout.

Composed from the components' own tiny writers (backbone, image tokenizer, decoder) plus a small
byte-level BPE ``tokenizer.json`` whose special tokens carry the official strings (``<role>HUMAN</role>``,
``<|image|>``, ``<boi>``, ``<|reserved_token_n|>``, ...) trained with `train_text_tokenizer`. Sizes:
text vocabulary 384 (76 special tokens first), image codes 384 + [0, 64), backbone vocab 448, hidden 32,
context 512 by default. Used by the pipeline tests and smoke runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unimask.decoders.tiny_decoder_checkpoint import write_tiny_official_decoder
from unimask.pipelines.generation_defaults import GENERATION_DEFAULTS_FILE, TINY_GENERATION_DEFAULTS
from unimask.tokenizers.text_tokenizer import shapes_special_tokens, train_text_tokenizer
from unimask.tokenizers.tiny_image_tokenizer_checkpoint import TINY_VQ_CONFIG, write_tiny_official_image_tokenizer
from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone

TINY_TEXT_VOCAB_SIZE = 384
TINY_CODEBOOK_SIZE = TINY_VQ_CONFIG["num_embeddings"]

_CORPUS_WORDS = (
    "a large small red green blue yellow circle square triangle at the top bottom left right center in on "
    "white black background and what color is the shape how many objects are there where describe image "
    "make move remove add change put draw picture of cat dog tell me story hello please answer with"
).split()


def tiny_corpus() -> list[str]:
    """A fixed small English corpus for the tiny tokenizer (deterministic)."""
    lines = []
    for offset in range(len(_CORPUS_WORDS)):
        words = [_CORPUS_WORDS[(offset * 7 + k * 3) % len(_CORPUS_WORDS)] for k in range(9)]
        lines.append(" ".join(words) + ("?" if offset % 3 == 0 else "."))
    lines.append("You are a text-to-image generation assistant. detailed thinking off on")
    lines.append("You are a interleaved generation assistant.")
    return lines


def write_tiny_official_checkpoint(
    root: str | Path,
    seed: int = 0,
    write_generation_defaults: bool = True,
    **backbone_overrides: Any,
) -> Path:
    """Create ``root`` holding a tiny random checkpoint in the official layout.

    root: directory to create (may exist). seed: seed of every component's random weights.
    write_generation_defaults: also write ``generation_defaults.json`` with `TINY_GENERATION_DEFAULTS`
    (few tokens, 2x2 grids; not part of the official layout, read by `UniPipeline.from_pretrained`).
    backbone_overrides: backbone config.json keys to change (e.g. ``max_position_embeddings=256``).
    Returns the root path.
    """
    root = Path(root)
    overrides = {
        "vocab_size": TINY_TEXT_VOCAB_SIZE + TINY_CODEBOOK_SIZE,
        "image_token_offset": TINY_TEXT_VOCAB_SIZE,
        **backbone_overrides,
    }
    write_tiny_official_backbone(root, seed=seed, **overrides)
    write_tiny_official_image_tokenizer(root / "image_tokenizer", seed=seed)
    # After the image tokenizer: the decoder writer owns image_tokenizer/sigvq_embedding.pt (its width
    # must match the decoder transformer's caption features).
    write_tiny_official_decoder(root, seed=seed)
    tokenizer = train_text_tokenizer(tiny_corpus(), shapes_special_tokens(), vocab_size=TINY_TEXT_VOCAB_SIZE)
    tokenizer.save_pretrained(str(root))
    if write_generation_defaults:
        (root / GENERATION_DEFAULTS_FILE).write_text(json.dumps(TINY_GENERATION_DEFAULTS, indent=2) + "\n")
    return root
