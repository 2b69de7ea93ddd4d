"""The joint text + image vocabulary of a unified masked-diffusion backbone.

One frozen :class:`TokenLayout` holds every id the backbone's sequences are made of: the text
vocabulary, the block of image codes after it, the mask / end-of-sequence tokens, the image
block markers (``<|image|> <|reserved_token_h|> <|reserved_token_w|> <boi> codes <|/image|>``),
the grid-size tokens, the thinking markers, the CFG ``<uncondition>`` token and the chat role
tags. Two layouts ship:

- :meth:`TokenLayout.official` -- the published LLaDA2.0-Uni checkpoint. The ids stated by the
  public release are constants here; the ones it does not state (size tokens, role tags,
  thinking markers, ``<uncondition>``) are looked up by their strings in the checkpoint's
  tokenizer when one is given.
- :meth:`TokenLayout.shapes` -- the compact Shapes World layout: a small text vocabulary whose
  special tokens sit at fixed ids (:data:`SHAPES_SPECIAL_TOKENS` order), image codes right after.

A layout is saved beside a checkpoint as ``token_layout.json`` (:meth:`TokenLayout.save_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from enum import IntEnum
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch

TOKEN_LAYOUT_FILE = "token_layout.json"

ROLE_SYSTEM = "<role>SYSTEM</role>"
ROLE_HUMAN = "<role>HUMAN</role>"
ROLE_ASSISTANT = "<role>ASSISTANT</role>"
IMAGE_START_TOKEN = "<|image|>"
IMAGE_END_TOKEN = "<|/image|>"
BEGIN_OF_CODES_TOKEN = "<boi>"
MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
THINK_START_TOKEN = "<think>"
THINK_END_TOKEN = "</think>"
UNCONDITION_TOKEN = "<uncondition>"

# Largest grid side the compact layout can express (<|reserved_token_0|> .. <|reserved_token_64|>).
SHAPES_MAX_GRID_SIDE = 64


def size_token_string(n: int) -> str:
    """The text of the size token for a grid side of ``n`` tokens: ``<|reserved_token_{n}|>``."""
    return f"<|reserved_token_{n}|>"


# The compact layout puts these strings at ids 0..len-1, in this order; the trained Shapes
# tokenizer (text_tokenizer.train_text_tokenizer) uses the same list, so both agree on ids.
SHAPES_SPECIAL_TOKENS: tuple[str, ...] = (
    EOS_TOKEN,
    MASK_TOKEN,
    ROLE_SYSTEM,
    ROLE_HUMAN,
    ROLE_ASSISTANT,
    IMAGE_START_TOKEN,
    IMAGE_END_TOKEN,
    BEGIN_OF_CODES_TOKEN,
    THINK_START_TOKEN,
    THINK_END_TOKEN,
    UNCONDITION_TOKEN,
) + tuple(size_token_string(n) for n in range(SHAPES_MAX_GRID_SIDE + 1))

# Published LLaDA2.0-Uni constants (model card, config.json, sglang-omni llada2_uni).
OFFICIAL_VOCAB_SIZE = 173568
OFFICIAL_IMAGE_TOKEN_OFFSET = 157184
OFFICIAL_CODEBOOK_SIZE = 16384
OFFICIAL_EOS_ID = 156892
OFFICIAL_MASK_ID = 156895
OFFICIAL_IMAGE_START_ID = 156901
OFFICIAL_IMAGE_END_ID = 156902
OFFICIAL_BOI_ID = 156904


class TokenKind(IntEnum):
    """What a sequence position holds; the sampler restricts each kind to its own vocabulary.

    PROMPT positions are given and never sampled; TEXT, IMAGE and SIZE positions are generated
    from the text vocabulary, the image codes and the grid-size tokens respectively.
    """

    PROMPT = 0
    TEXT = 1
    IMAGE = 2
    SIZE = 3


class TextEncoder(Protocol):
    """Anything with ``encode(text) -> list[int]`` (Hugging Face tokenizers qualify)."""

    def encode(self, text: str) -> list[int]: ...


def encode_plain(tokenizer: TextEncoder, text: str) -> list[int]:
    """Encode ``text`` without added special tokens (no BOS/EOS), whatever the tokenizer kind.

    Hugging Face tokenizers take ``add_special_tokens=False``; toy tokenizers with a plain
    ``encode(text)`` are called as they are.
    """
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return [int(i) for i in ids]


def _lookup_single_token(tokenizer: Any, token: str) -> int | None:
    """Id of ``token`` when the tokenizer knows it as one token, else None."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None:
        token_id = convert(token)
        unk_id = getattr(tokenizer, "unk_token_id", None)
        unk_token = getattr(tokenizer, "unk_token", None)
        if isinstance(token_id, int) and token_id >= 0 and (token_id != unk_id or token == unk_token):
            return token_id
        return None
    ids = encode_plain(tokenizer, token)
    return ids[0] if len(ids) == 1 else None


def _require_single_token(tokenizer: Any, token: str) -> int:
    token_id = _lookup_single_token(tokenizer, token)
    if token_id is None:
        raise ValueError(f"tokenizer has no single token for {token!r}; it is required by the token layout")
    return token_id


def _optional_sequence(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(encode_plain(tokenizer, text))


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """All ids and sizes of a joint text + image vocabulary.

    Text ids are ``[0, text_vocab_size)``; image code ``c`` is id ``image_token_offset + c`` for
    ``c`` in ``[0, codebook_size)``; ``vocab_size`` is the backbone's embedding/logit width.
    ``size_token_ids[n]`` is the id of ``<|reserved_token_n|>`` (grid side ``n``); an empty tuple
    means the size tokens are unknown (official layout built without a tokenizer). Role tags and
    ``<uncondition>`` are id *sequences*, since a tokenizer may spell them with several tokens.
    Ids that are unknown are ``None`` / empty; the builders that need them say so.
    """

    text_vocab_size: int
    image_token_offset: int
    codebook_size: int
    vocab_size: int
    mask_id: int
    eos_id: int
    pad_id: int
    image_start_id: int
    image_end_id: int
    boi_id: int
    size_token_ids: tuple[int, ...] = ()
    think_start_id: int | None = None
    think_end_id: int | None = None
    uncondition_ids: tuple[int, ...] = ()
    role_system_ids: tuple[int, ...] = ()
    role_human_ids: tuple[int, ...] = ()
    role_assistant_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("size_token_ids", "uncondition_ids", "role_system_ids", "role_human_ids", "role_assistant_ids"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        if self.text_vocab_size <= 0:
            raise ValueError(f"text_vocab_size must be positive, got {self.text_vocab_size}")
        if self.codebook_size <= 0:
            raise ValueError(f"codebook_size must be positive, got {self.codebook_size}")
        if self.image_token_offset < self.text_vocab_size:
            raise ValueError(
                f"image_token_offset={self.image_token_offset} overlaps the text vocabulary "
                f"[0, {self.text_vocab_size})"
            )
        if self.image_token_offset + self.codebook_size > self.vocab_size:
            raise ValueError(
                f"vocab_size={self.vocab_size} is smaller than image_token_offset + codebook_size = "
                f"{self.image_token_offset + self.codebook_size}"
            )
        single_ids = {
            "mask_id": self.mask_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "image_start_id": self.image_start_id,
            "image_end_id": self.image_end_id,
            "boi_id": self.boi_id,
            "think_start_id": self.think_start_id,
            "think_end_id": self.think_end_id,
        }
        for name, value in single_ids.items():
            if value is not None and not 0 <= value < self.text_vocab_size:
                raise ValueError(f"{name}={value} is outside the text vocabulary [0, {self.text_vocab_size})")
        for name in ("size_token_ids", "uncondition_ids", "role_system_ids", "role_human_ids", "role_assistant_ids"):
            for value in getattr(self, name):
                if not 0 <= value < self.text_vocab_size:
                    raise ValueError(f"{name} holds {value}, outside the text vocabulary [0, {self.text_vocab_size})")
        if len(set(self.size_token_ids)) != len(self.size_token_ids):
            raise ValueError("size_token_ids must be distinct")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def official(cls, tokenizer: Any | None = None, max_grid_side: int = 128) -> TokenLayout:
        """The LLaDA2.0-Uni layout: vocab 173568, image codes at 157184 + [0, 16384).

        Documented ids are constants: eos/pad 156892, mask 156895, ``<|image|>`` 156901,
        ``<|/image|>`` 156902, ``<boi>`` 156904. Size tokens, role tags, thinking markers and
        ``<uncondition>`` are not documented: pass the checkpoint's ``tokenizer`` to resolve them
        by their strings (``<|reserved_token_n|>`` for ``n`` up to ``max_grid_side``). A tokenizer
        that disagrees with a documented image-marker id raises ``ValueError``.
        """
        constants = dict(
            text_vocab_size=OFFICIAL_IMAGE_TOKEN_OFFSET,
            image_token_offset=OFFICIAL_IMAGE_TOKEN_OFFSET,
            codebook_size=OFFICIAL_CODEBOOK_SIZE,
            vocab_size=OFFICIAL_VOCAB_SIZE,
            mask_id=OFFICIAL_MASK_ID,
            eos_id=OFFICIAL_EOS_ID,
            pad_id=OFFICIAL_EOS_ID,
            image_start_id=OFFICIAL_IMAGE_START_ID,
            image_end_id=OFFICIAL_IMAGE_END_ID,
            boi_id=OFFICIAL_BOI_ID,
        )
        if tokenizer is None:
            return cls(**constants)
        documented = {
            IMAGE_START_TOKEN: OFFICIAL_IMAGE_START_ID,
            IMAGE_END_TOKEN: OFFICIAL_IMAGE_END_ID,
            BEGIN_OF_CODES_TOKEN: OFFICIAL_BOI_ID,
        }
        for token, expected in documented.items():
            found = _lookup_single_token(tokenizer, token)
            if found != expected:
                raise ValueError(
                    f"tokenizer maps {token!r} to {found}, but the official layout documents {expected}; "
                    "this is not the LLaDA2.0-Uni tokenizer"
                )
        resolved = cls._resolve_undocumented(tokenizer, max_grid_side)
        return cls(**constants, **resolved)

    @classmethod
    def shapes(cls, text_vocab_size: int = 512, codebook_size: int = 256) -> TokenLayout:
        """The compact Shapes World layout: special tokens at ids 0.. in :data:`SHAPES_SPECIAL_TOKENS`
        order, text vocabulary ``[0, text_vocab_size)``, image codes right after it.

        Size tokens cover grid sides 0..64; ``vocab_size = text_vocab_size + codebook_size``.
        """
        if text_vocab_size < len(SHAPES_SPECIAL_TOKENS):
            raise ValueError(
                f"text_vocab_size={text_vocab_size} cannot hold the {len(SHAPES_SPECIAL_TOKENS)} special tokens"
            )
        ids = {token: index for index, token in enumerate(SHAPES_SPECIAL_TOKENS)}
        return cls(
            text_vocab_size=text_vocab_size,
            image_token_offset=text_vocab_size,
            codebook_size=codebook_size,
            vocab_size=text_vocab_size + codebook_size,
            mask_id=ids[MASK_TOKEN],
            eos_id=ids[EOS_TOKEN],
            pad_id=ids[EOS_TOKEN],
            image_start_id=ids[IMAGE_START_TOKEN],
            image_end_id=ids[IMAGE_END_TOKEN],
            boi_id=ids[BEGIN_OF_CODES_TOKEN],
            size_token_ids=tuple(ids[size_token_string(n)] for n in range(SHAPES_MAX_GRID_SIDE + 1)),
            think_start_id=ids[THINK_START_TOKEN],
            think_end_id=ids[THINK_END_TOKEN],
            uncondition_ids=(ids[UNCONDITION_TOKEN],),
            role_system_ids=(ids[ROLE_SYSTEM],),
            role_human_ids=(ids[ROLE_HUMAN],),
            role_assistant_ids=(ids[ROLE_ASSISTANT],),
        )

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        image_token_offset: int,
        codebook_size: int,
        vocab_size: int,
        max_grid_side: int = 128,
        mask_token: str = MASK_TOKEN,
        eos_token: str = EOS_TOKEN,
    ) -> TokenLayout:
        """Build a layout by looking every special token up by its string in ``tokenizer``.

        Works for the official tokenizer and for ours. The text vocabulary is
        ``[0, image_token_offset)``. Mask, end-of-sequence (also pad) and the three image markers
        must be single tokens (``ValueError`` otherwise); size tokens are the contiguous run
        ``<|reserved_token_0|>``, ``<|reserved_token_1|>``, ... that the tokenizer knows (at most
        ``max_grid_side + 1``); thinking markers, role tags and ``<uncondition>`` are optional.
        """
        eos_id = _require_single_token(tokenizer, eos_token)
        return cls(
            text_vocab_size=image_token_offset,
            image_token_offset=image_token_offset,
            codebook_size=codebook_size,
            vocab_size=vocab_size,
            mask_id=_require_single_token(tokenizer, mask_token),
            eos_id=eos_id,
            pad_id=eos_id,
            image_start_id=_require_single_token(tokenizer, IMAGE_START_TOKEN),
            image_end_id=_require_single_token(tokenizer, IMAGE_END_TOKEN),
            boi_id=_require_single_token(tokenizer, BEGIN_OF_CODES_TOKEN),
            **cls._resolve_undocumented(tokenizer, max_grid_side),
        )

    @staticmethod
    def _resolve_undocumented(tokenizer: Any, max_grid_side: int) -> dict[str, Any]:
        size_ids: list[int] = []
        for n in range(max_grid_side + 1):
            token_id = _lookup_single_token(tokenizer, size_token_string(n))
            if token_id is None:
                break
            size_ids.append(token_id)
        return dict(
            size_token_ids=tuple(size_ids),
            think_start_id=_lookup_single_token(tokenizer, THINK_START_TOKEN),
            think_end_id=_lookup_single_token(tokenizer, THINK_END_TOKEN),
            uncondition_ids=_optional_sequence(tokenizer, UNCONDITION_TOKEN),
            role_system_ids=_optional_sequence(tokenizer, ROLE_SYSTEM),
            role_human_ids=_optional_sequence(tokenizer, ROLE_HUMAN),
            role_assistant_ids=_optional_sequence(tokenizer, ROLE_ASSISTANT),
        )

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (tuples become lists)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        """Inverse of :meth:`to_dict`; unknown or missing required keys raise ``ValueError``."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"token layout has unknown keys {sorted(unknown)}; allowed keys are {sorted(names)}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(f"token layout is incomplete: {error}") from error

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write ``token_layout.json`` into ``directory`` (created if needed); returns the file path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKEN_LAYOUT_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> TokenLayout:
        """Read ``token_layout.json`` from ``directory``."""
        with open(os.path.join(directory, TOKEN_LAYOUT_FILE), encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    # ------------------------------------------------------------------ id conversions

    def is_image_token(self, token_id: int) -> bool:
        """True when ``token_id`` is an image code token."""
        return self.image_token_offset <= token_id < self.image_token_offset + self.codebook_size

    def image_code_to_token(self, code: Any) -> Any:
        """Codebook index -> token id. Takes an int, a numpy array or a tensor of codes in
        ``[0, codebook_size)`` and returns the same type; out-of-range codes raise ``ValueError``."""
        if isinstance(code, (int, np.integer)):
            if not 0 <= code < self.codebook_size:
                raise ValueError(f"image code {code} is outside the codebook [0, {self.codebook_size})")
            return int(code) + self.image_token_offset
        low, high = _min_max(code)
        if low is not None and (low < 0 or high >= self.codebook_size):
            raise ValueError(f"image codes span [{low}, {high}], outside the codebook [0, {self.codebook_size})")
        return code + self.image_token_offset

    def token_to_image_code(self, token_id: Any) -> Any:
        """Token id -> codebook index (int, numpy array or tensor); non-image ids raise ``ValueError``."""
        high_limit = self.image_token_offset + self.codebook_size
        if isinstance(token_id, (int, np.integer)):
            if not self.image_token_offset <= token_id < high_limit:
                raise ValueError(
                    f"token id {token_id} is not an image code token [{self.image_token_offset}, {high_limit})"
                )
            return int(token_id) - self.image_token_offset
        low, high = _min_max(token_id)
        if low is not None and (low < self.image_token_offset or high >= high_limit):
            raise ValueError(
                f"token ids span [{low}, {high}], outside the image code tokens [{self.image_token_offset}, {high_limit})"
            )
        return token_id - self.image_token_offset

    @property
    def max_grid_side(self) -> int:
        """Largest grid side a size token can express (-1 when size tokens are unknown)."""
        return len(self.size_token_ids) - 1

    def size_token(self, n: int) -> int:
        """Id of the size token ``<|reserved_token_n|>`` for a grid side of ``n`` tokens."""
        if not self.size_token_ids:
            raise ValueError(
                "this token layout has no size tokens; build it with TokenLayout.official(tokenizer) "
                "or TokenLayout.from_tokenizer(...) so <|reserved_token_n|> ids are resolved"
            )
        if not 0 <= n <= self.max_grid_side:
            raise ValueError(f"grid side {n} has no size token; allowed range is [0, {self.max_grid_side}]")
        return self.size_token_ids[n]

    @cached_property
    def _size_by_token(self) -> dict[int, int]:
        return {token_id: n for n, token_id in enumerate(self.size_token_ids)}

    def token_to_size(self, token_id: int) -> int | None:
        """Grid side encoded by a size token id, or None when ``token_id`` is not a size token."""
        return self._size_by_token.get(int(token_id))

    def vocab_mask(self, kind: TokenKind | int) -> torch.Tensor:
        """Which ids may be sampled at a position of ``kind``: a ``(vocab_size,)`` bool tensor.

        TEXT: the text vocabulary without the mask and ``<uncondition>`` tokens (image markers and
        size tokens stay allowed, so interleaved text can open an image). IMAGE: the image codes.
        SIZE: the size tokens. PROMPT: nothing (prompt positions are never sampled).
        """
        kind = TokenKind(int(kind))
        allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
        if kind == TokenKind.TEXT:
            allowed[: self.text_vocab_size] = True
            allowed[self.mask_id] = False
            if len(self.uncondition_ids) == 1:
                allowed[self.uncondition_ids[0]] = False
        elif kind == TokenKind.IMAGE:
            allowed[self.image_token_offset : self.image_token_offset + self.codebook_size] = True
        elif kind == TokenKind.SIZE:
            if not self.size_token_ids:
                raise ValueError("vocab_mask(SIZE) needs size tokens, and this layout has none")
            allowed[list(self.size_token_ids)] = True
        return allowed


def _min_max(values: Any) -> tuple[int | None, int | None]:
    if isinstance(values, torch.Tensor):
        if values.numel() == 0:
            return None, None
        return int(values.min()), int(values.max())
    array = np.asarray(values)
    if array.size == 0:
        return None, None
    return int(array.min()), int(array.max())
