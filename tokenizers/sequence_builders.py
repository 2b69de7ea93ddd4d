"""Turn a task request into the backbone's input ids and a map of what to generate where.

Every builder returns a :class:`SequenceSpec`: the input ids (mask tokens at positions to be
generated), the :class:`~unimask.tokenizers.token_layout.TokenKind` of every position, the image
slots to be generated and, for classifier-free guidance, the unconditional sequence(s).

Prompt format (LLaDA2.0-Uni, as served by sglang-omni's preprocessor):
``<role>SYSTEM</role> {system} `` then per message ``<role>HUMAN</role>`` or
``<role>ASSISTANT</role>`` followed by its images and then its text, and finally
``<role>ASSISTANT</role>`` to open the answer. An image is
``<|image|> <|reserved_token_h|> <|reserved_token_w|> <boi> h*w codes <|/image|>``.
Text is encoded with the tokenizer (no special tokens added); every special token comes from the
layout, so a toy ``encode(text) -> list[int]`` tokenizer is enough.

CFG (unconditional) inputs follow the official serving code: the prompt text is replaced by the
``<uncondition>`` token and the image header is kept, so the image slot has the same (h, w) in
both sequences; the sampler copies committed codes between the slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
import numpy as np
import torch

from unimask.tokenizers.token_layout import TextEncoder, TokenKind, TokenLayout, encode_plain

CHAT_SYSTEM_PROMPT = "detailed thinking off"
TEXT_TO_IMAGE_SYSTEM_PROMPT = "You are a text-to-image generation assistant."
INTERLEAVED_SYSTEM_PROMPT = "You are a interleaved generation assistant."  # sic, as served officially
# Not published: the thinking switch of the Ling chat family appended to the text-to-image prompt.
THINKING_TEXT_TO_IMAGE_SYSTEM_PROMPT = "You are a text-to-image generation assistant. detailed thinking on"
# Not published: the official edit prompt lives in the hub's remote code; the generic one is used.
EDIT_SYSTEM_PROMPT = CHAT_SYSTEM_PROMPT


@dataclasses.dataclass(frozen=True)
class ImageSlot:
    """An image to be generated: codes occupy positions ``[start, start + h * w)``."""

    start: int
    h: int
    w: int

    @property
    def end(self) -> int:
        """One past the last code position."""
        return self.start + self.h * self.w


@dataclasses.dataclass(frozen=True, eq=False)
class ImageGrid:
    """An image as a grid of codebook indices: ``codes`` is an ``(h, w)`` int64 numpy array."""

    codes: np.ndarray

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes.cpu() if isinstance(self.codes, torch.Tensor) else self.codes)
        if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
            raise ValueError(f"image codes must be a non-empty (h, w) grid, got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"image codes must be integers, got dtype {codes.dtype}")
        object.__setattr__(self, "codes", codes.astype(np.int64))

    @classmethod
    def from_flat(cls, codes: Sequence[int] | np.ndarray | torch.Tensor, h: int, w: int) -> ImageGrid:
        """Grid from ``h * w`` codes in row-major order; a count mismatch raises ``ValueError``."""
        flat = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64).reshape(-1)
        if h < 1 or w < 1 or flat.size != h * w:
            raise ValueError(f"grid {h}x{w} needs {h * w} codes, got {flat.size}")
        return cls(flat.reshape(h, w))

    @property
    def h(self) -> int:
        """Grid height in tokens."""
        return int(self.codes.shape[0])

    @property
    def w(self) -> int:
        """Grid width in tokens."""
        return int(self.codes.shape[1])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageGrid) and np.array_equal(self.codes, other.codes)

    def __repr__(self) -> str:
        return f"ImageGrid(h={self.h}, w={self.w})"


GridLike = ImageGrid | np.ndarray | torch.Tensor | Sequence[Sequence[int]]


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One chat turn: ``role`` is ``"user"`` or ``"assistant"``; its images come before its text."""

    role: str
    text: str
    images: tuple[GridLike, ...] = ()


@dataclasses.dataclass
class SequenceSpec:
    """A built sequence.

    ``input_ids``: the ids, mask id where something is generated. ``token_kinds``: one
    :class:`TokenKind` code per position (PROMPT for given tokens). ``image_slots``: the image
    code spans to generate. ``uncond``: the unconditional sequence for CFG (text condition
    dropped), or None. ``uncond_image``: for three-way edit guidance, the sequence with the
    source images dropped and the instruction kept, or None.
    """

    input_ids: list[int]
    token_kinds: list[int]
    image_slots: list[ImageSlot] = dataclasses.field(default_factory=list)
    uncond: SequenceSpec | None = None
    uncond_image: SequenceSpec | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def generated_positions(self) -> list[int]:
        """Positions whose kind is not PROMPT, in order."""
        return [index for index, kind in enumerate(self.token_kinds) if kind != TokenKind.PROMPT]


class _SequenceWriter:
    """Accumulates ids, kinds and image slots for one sequence."""

    def __init__(self, layout: TokenLayout) -> None:
        self.layout = layout
        self.ids: list[int] = []
        self.kinds: list[int] = []
        self.slots: list[ImageSlot] = []

    def given(self, ids: Sequence[int]) -> None:
        self.ids.extend(int(i) for i in ids)
        self.kinds.extend([int(TokenKind.PROMPT)] * len(ids))

    def masked(self, count: int, kind: TokenKind) -> None:
        self.ids.extend([self.layout.mask_id] * count)
        self.kinds.extend([int(kind)] * count)

    def image_header(self, h: int, w: int) -> None:
        layout = self.layout
        self.given([layout.image_start_id, layout.size_token(h), layout.size_token(w), layout.boi_id])

    def given_image(self, grid: ImageGrid) -> None:
        self.image_header(grid.h, grid.w)
        self.given(self.layout.image_code_to_token(grid.codes.reshape(-1)).tolist())
        self.given([self.layout.image_end_id])

    def image_to_generate(self, h: int, w: int) -> None:
        self.image_header(h, w)
        self.slots.append(ImageSlot(len(self.ids), h, w))
        self.masked(h * w, TokenKind.IMAGE)
        self.given([self.layout.image_end_id])

    def spec(self) -> SequenceSpec:
        return SequenceSpec(list(self.ids), list(self.kinds), list(self.slots))


def as_image_grid(grid: GridLike, codebook_size: int | None = None) -> ImageGrid:
    """Normalise an ``(h, w)`` array-like of codes to :class:`ImageGrid`, checking the code range."""
    if isinstance(grid, ImageGrid):
        result = grid
    else:
        result = ImageGrid(np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid))
    if codebook_size is not None and (result.codes.min() < 0 or result.codes.max() >= codebook_size):
        raise ValueError(
            f"image codes span [{result.codes.min()}, {result.codes.max()}], outside the codebook [0, {codebook_size})"
        )
    return result


class SequenceBuilder:
    """Builds :class:`SequenceSpec` for every task from one layout and one text tokenizer.

    ``tokenizer`` is any object with ``encode(text) -> list[int]`` (special tokens are not added).
    ``max_length`` is the model's context; a longer sequence (conditional or unconditional) raises
    ``ValueError``. None disables the check.
    """

    def __init__(self, layout: TokenLayout, tokenizer: TextEncoder, max_length: int | None = None) -> None:
        missing = [
            name
            for name in ("role_system_ids", "role_human_ids", "role_assistant_ids")
            if not getattr(layout, name)
        ]
        if missing:
            raise ValueError(
                f"token layout lacks {missing}; build it with TokenLayout.official(tokenizer) or "
                "TokenLayout.from_tokenizer(...) so the role tags are resolved"
            )
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {max_length}")
        self.layout = layout
        self.tokenizer = tokenizer
        self.max_length = max_length

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _check_text(name: str, text: str) -> None:
        """Raise ValueError unless ``text`` is a ``str`` that encodes to UTF-8 (no lone surrogates)."""
        if not isinstance(text, str):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise ValueError(f"{name} must be a str, got {type(text).__name__}{hint}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{name} is not valid Unicode: {error.reason} at position {error.start} "
                f"({text[error.start:error.end]!r}); it cannot be encoded as UTF-8"
            ) from None

    def _text(self, writer: _SequenceWriter, text: str) -> None:
        self._check_text("text", text)
        ids = encode_plain(self.tokenizer, text)
        bad = [i for i in ids if not 0 <= i < self.layout.text_vocab_size]
        if bad:
            raise ValueError(
                f"tokenizer produced ids {bad[:5]} outside the text vocabulary [0, {self.layout.text_vocab_size})"
            )
        writer.given(ids)

    def _system(self, writer: _SequenceWriter, system_prompt: str) -> None:
        self._check_text("system_prompt", system_prompt)
        writer.given(self.layout.role_system_ids)
        self._text(writer, f" {system_prompt} ")

    def _turn(self, writer: _SequenceWriter, role: str, text: str | None, images: Sequence[GridLike] = ()) -> None:
        if role not in ("user", "assistant"):
            raise ValueError(f"message role must be 'user' or 'assistant', got {role!r}")
        writer.given(self.layout.role_human_ids if role == "user" else self.layout.role_assistant_ids)
        for grid in images:
            writer.given_image(as_image_grid(grid, self.layout.codebook_size))
        if text is None:
            writer.given(self._uncondition_ids())
        else:
            self._text(writer, text)

    def _uncondition_ids(self) -> tuple[int, ...]:
        if not self.layout.uncondition_ids:
            raise ValueError("CFG needs the <uncondition> token, and this token layout has none")
        return self.layout.uncondition_ids

    def _check_grid_side(self, name: str, value: int) -> None:
        if not isinstance(value, (int, np.integer)) or not 1 <= value <= self.layout.max_grid_side:
            raise ValueError(f"{name}={value} must be an int in [1, {self.layout.max_grid_side}]")

    def _check_count(self, name: str, value: int, minimum: int = 1) -> None:
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name}={value} must be an int >= {minimum}")

    def _finish(self, writer: _SequenceWriter, **branches: _SequenceWriter | None) -> SequenceSpec:
        spec = writer.spec()
        for name, branch in branches.items():
            if branch is not None:
                setattr(spec, name, branch.spec())
        for name, candidate in (("input", spec), ("uncond", spec.uncond), ("uncond_image", spec.uncond_image)):
            if candidate is not None and self.max_length is not None and len(candidate) > self.max_length:
                raise ValueError(
                    f"{name} sequence has {len(candidate)} tokens, longer than the model's context "
                    f"max_length={self.max_length}"
                )
        return spec

    # ------------------------------------------------------------------ tasks

    def chat(
        self, messages: Sequence[ChatMessage], answer_length: int, system_prompt: str = CHAT_SYSTEM_PROMPT
    ) -> SequenceSpec:
        """Multi-turn chat: the messages, then ``<role>ASSISTANT</role>`` and ``answer_length``
        masked TEXT positions. Messages may carry images (understanding in a conversation)."""
        if not messages:
            raise ValueError("messages must not be empty")
        self._check_count("answer_length", answer_length)
        for index, message in enumerate(messages):
            self._check_text(f"messages[{index}].text", message.text)
        writer = _SequenceWriter(self.layout)
        self._system(writer, system_prompt)
        for message in messages:
            self._turn(writer, message.role, message.text, message.images)
        writer.given(self.layout.role_assistant_ids)
        writer.masked(answer_length, TokenKind.TEXT)
        return self._finish(writer)

    def understanding(
        self, images: Sequence[GridLike], question: str, answer_length: int, system_prompt: str = CHAT_SYSTEM_PROMPT
    ) -> SequenceSpec:
        """Images + question -> answer: one user turn (images first), ``answer_length`` TEXT masks."""
        return self.chat([ChatMessage("user", question, tuple(images))], answer_length, system_prompt)

    def text_to_image(
        self, prompt: str, h: int, w: int, cfg: bool = True, system_prompt: str = TEXT_TO_IMAGE_SYSTEM_PROMPT
    ) -> SequenceSpec:
        """Prompt -> an ``h x w`` grid: the assistant turn is the image header, ``h * w`` IMAGE
        masks and ``<|/image|>``. With ``cfg`` the unconditional input replaces the prompt by
        ``<uncondition>``."""
        self._check_text("prompt", prompt)
        self._check_grid_side("h", h)
        self._check_grid_side("w", w)

        def build(text: str | None) -> _SequenceWriter:
            writer = _SequenceWriter(self.layout)
            self._system(writer, system_prompt)
            self._turn(writer, "user", text)
            writer.given(self.layout.role_assistant_ids)
            writer.image_to_generate(h, w)
            return writer

        return self._finish(build(prompt), uncond=build(None) if cfg else None)

    def thinking_text_to_image(
        self,
        prompt: str,
        h: int,
        w: int,
        thinking_length: int,
        cfg: bool = True,
        system_prompt: str = THINKING_TEXT_TO_IMAGE_SYSTEM_PROMPT,
    ) -> SequenceSpec:
        """Prompt -> ``<think>`` + ``thinking_length`` TEXT masks + ``</think>`` + the image.

        The unconditional input has no thinking span (``<uncondition>`` prompt, then the image
        header and slot): guidance applies to the image only.
        """
        if self.layout.think_start_id is None or self.layout.think_end_id is None:
            raise ValueError("thinking needs <think> and </think>, and this token layout lacks them")
        self._check_text("prompt", prompt)
        self._check_grid_side("h", h)
        self._check_grid_side("w", w)
        self._check_count("thinking_length", thinking_length)
        writer = _SequenceWriter(self.layout)
        self._system(writer, system_prompt)
        self._turn(writer, "user", prompt)
        writer.given(self.layout.role_assistant_ids)
        writer.given([self.layout.think_start_id])
        writer.masked(thinking_length, TokenKind.TEXT)
        writer.given([self.layout.think_end_id])
        writer.image_to_generate(h, w)
        uncond = None
        if cfg:
            uncond = _SequenceWriter(self.layout)
            self._system(uncond, system_prompt)
            self._turn(uncond, "user", None)
            uncond.given(self.layout.role_assistant_ids)
            uncond.image_to_generate(h, w)
        return self._finish(writer, uncond=uncond)

    def edit(
        self,
        source_images: Sequence[GridLike],
        instruction: str,
        h: int,
        w: int,
        cfg: bool = True,
        system_prompt: str = EDIT_SYSTEM_PROMPT,
    ) -> SequenceSpec:
        """Single- or multi-reference edit: user turn with the source grids then the instruction;
        the assistant turn is the target ``h x w`` image.

        With ``cfg``: ``uncond`` keeps the source images and replaces the instruction by
        ``<uncondition>``; ``uncond_image`` drops the images and keeps the instruction (for
        three-way text/image guidance).
        """
        if not source_images:
            raise ValueError("source_images must hold at least one image grid")
        self._check_text("instruction", instruction)
        self._check_grid_side("h", h)
        self._check_grid_side("w", w)
        grids = [as_image_grid(grid, self.layout.codebook_size) for grid in source_images]

        def build(images: Sequence[ImageGrid], text: str | None) -> _SequenceWriter:
            writer = _SequenceWriter(self.layout)
            self._system(writer, system_prompt)
            self._turn(writer, "user", text, images)
            writer.given(self.layout.role_assistant_ids)
            writer.image_to_generate(h, w)
            return writer

        return self._finish(
            build(grids, instruction),
            uncond=build(grids, None) if cfg else None,
            uncond_image=build([], instruction) if cfg else None,
        )

    def interleaved(
        self, prompt: str, text_length: int, system_prompt: str = INTERLEAVED_SYSTEM_PROMPT
    ) -> SequenceSpec:
        """Interleaved output: a TEXT span of ``text_length`` masks after the assistant tag. The
        model opens an image itself by generating ``<|image|> h w <boi>``; continue with
        :meth:`continue_after_image_open`."""
        self._check_text("prompt", prompt)
        self._check_count("text_length", text_length)
        writer = _SequenceWriter(self.layout)
        self._system(writer, system_prompt)
        self._turn(writer, "user", prompt)
        writer.given(self.layout.role_assistant_ids)
        writer.masked(text_length, TokenKind.TEXT)
        return self._finish(writer)

    def continue_after_image_open(
        self,
        prefix_ids: Sequence[int] | torch.Tensor,
        text_length: int = 0,
        cfg: bool = True,
        system_prompt: str = INTERLEAVED_SYSTEM_PROMPT,
    ) -> SequenceSpec:
        """Continue an interleaved sequence whose generated prefix ends in ``<|image|> h w <boi>``.

        Returns prefix + ``h * w`` IMAGE masks + ``<|/image|>`` + ``text_length`` TEXT masks.
        With ``cfg`` the unconditional inputs follow the official interleaved serving code: for
        the first image ``uncond`` is the ``<uncondition>`` prompt + header; once an earlier image
        exists, ``uncond`` is the history up to that image's ``<|/image|>`` + ``<uncondition>`` +
        header, and ``uncond_image`` is the ``<uncondition>`` prompt + the text since that image +
        header. A prefix that does not end in a valid header raises ``ValueError``.
        """
        layout = self.layout
        prefix = [int(i) for i in (prefix_ids.tolist() if isinstance(prefix_ids, torch.Tensor) else prefix_ids)]
        self._check_count("text_length", text_length, minimum=0)
        if len(prefix) < 4 or prefix[-4] != layout.image_start_id or prefix[-1] != layout.boi_id:
            raise ValueError("prefix_ids must end with the image header <|image|> <size h> <size w> <boi>")
        h, w = layout.token_to_size(prefix[-3]), layout.token_to_size(prefix[-2])
        if h is None or w is None or h < 1 or w < 1:
            raise ValueError(f"prefix_ids header holds ids {prefix[-3]}, {prefix[-2]}, which are not size tokens >= 1")
        bad = [i for i in prefix if not 0 <= i < layout.vocab_size or i == layout.mask_id]
        if bad:
            raise ValueError(f"prefix_ids holds ids {bad[:5]} that are masks or outside [0, {layout.vocab_size})")
        header = prefix[-4:]

        def finish(writer: _SequenceWriter) -> _SequenceWriter:
            writer.slots.append(ImageSlot(len(writer.ids), h, w))
            writer.masked(h * w, TokenKind.IMAGE)
            writer.given([layout.image_end_id])
            writer.masked(text_length, TokenKind.TEXT)
            return writer

        writer = _SequenceWriter(layout)
        writer.given(prefix)
        uncond = uncond_image = None
        if cfg:
            bare = _SequenceWriter(layout)
            self._system(bare, system_prompt)
            self._turn(bare, "user", None)
            bare.given(layout.role_assistant_ids)
            history_end = max((i for i, t in enumerate(prefix[:-4]) if t == layout.image_end_id), default=-1)
            if history_end >= 0:
                uncond = _SequenceWriter(layout)
                uncond.given(prefix[: history_end + 1] + list(self._uncondition_ids()) + header)
                uncond_image = bare
                uncond_image.given(prefix[history_end + 1 : -4] + header)
                uncond_image = finish(uncond_image)
            else:
                uncond = bare
                uncond.given(header)
            uncond = finish(uncond)
        return self._finish(finish(writer), uncond=uncond, uncond_image=uncond_image)


def collate(specs: Sequence[SequenceSpec], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad specs into a batch.

    Returns ``input_ids: (B, L) int64`` (``pad_id`` in the padding), ``token_kinds: (B, L) int64``
    (PROMPT in the padding), ``attention_valid: (B, L) bool`` (False in the padding) and
    ``left_pad: (B,) int64`` -- add it to a spec's ``ImageSlot.start`` to find the slot in the
    batch. ``uncond`` sequences are not included: collate them as their own batch.
    """
    if not specs:
        raise ValueError("specs must not be empty")
    length = max(len(spec) for spec in specs)
    batch = len(specs)
    input_ids = torch.full((batch, length), int(pad_id), dtype=torch.int64)
    token_kinds = torch.full((batch, length), int(TokenKind.PROMPT), dtype=torch.int64)
    attention_valid = torch.zeros((batch, length), dtype=torch.bool)
    left_pad = torch.zeros(batch, dtype=torch.int64)
    for row, spec in enumerate(specs):
        if len(spec.token_kinds) != len(spec.input_ids):
            raise ValueError(f"spec {row} has {len(spec.input_ids)} ids but {len(spec.token_kinds)} kinds")
        pad = length - len(spec)
        left_pad[row] = pad
        input_ids[row, pad:] = torch.tensor(spec.input_ids, dtype=torch.int64)
        token_kinds[row, pad:] = torch.tensor(spec.token_kinds, dtype=torch.int64)
        attention_valid[row, pad:] = True
    return {
        "input_ids": input_ids,
        "token_kinds": token_kinds,
        "attention_valid": attention_valid,
        "left_pad": left_pad,
    }


def fill_masks(spec: SequenceSpec, values: Sequence[int]) -> list[int]:
    """Ids of ``spec`` with its generated positions replaced by ``values`` in order (a helper for
    tests and teacher forcing); a wrong number of values raises ``ValueError``."""
    positions = spec.generated_positions()
    if len(values) != len(positions):
        raise ValueError(f"spec has {len(positions)} generated positions, got {len(values)} values")
    ids = list(spec.input_ids)
    for position, value in zip(positions, values):
        ids[position] = int(value)
    return ids


__all__ = [
    "CHAT_SYSTEM_PROMPT",
    "EDIT_SYSTEM_PROMPT",
    "INTERLEAVED_SYSTEM_PROMPT",
    "TEXT_TO_IMAGE_SYSTEM_PROMPT",
    "THINKING_TEXT_TO_IMAGE_SYSTEM_PROMPT",
    "ChatMessage",
    "ImageGrid",
    "ImageSlot",
    "SequenceBuilder",
    "SequenceSpec",
    "as_image_grid",
    "collate",
    "fill_masks",
]
