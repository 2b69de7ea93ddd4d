"""Where the shipped default model lives, and how the name ``shapes-default`` resolves to it.

The default model is a small unified model trained by unimask's own training code on Shapes World
(``docs/shapes-world.md``). It ships inside the package as ``unimask/default_model/`` in the layout of
`UniPipelineBase.save_pretrained` (``model_index.json``, ``backbone/``, ``text_tokenizer/``,
``image_tokenizer/``, ``decoder/`` and ``decoder-normal/``, ``token_layout.json``,
``generation_defaults.json``). ``UniPipeline.from_pretrained()`` with no argument, or with
``"shapes-default"``, loads it; so do the command-line subcommands when ``--model`` is left out.

This module imports nothing heavy: the pipelines and the CLI import it to resolve names.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "shapes-default"
# Read at call time (not bound into defaults), so tests can point it elsewhere with monkeypatch.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
# The file whose presence marks a complete saved pipeline (written last by save_pretrained).
MODEL_INDEX_FILE = "model_index.json"

BUILD_HINT = (
    "Build it with `python -m unimask.shapes.build_default` (trains every stage on Shapes World and saves "
    "the pipeline there with UniPipeline.save_pretrained; an interrupted build resumes), or install a "
    "unimask release that ships it."
)


class DefaultModelMissingError(ValueError):
    """The default model was asked for but ``unimask/default_model/`` holds no saved pipeline."""


def default_model_dir() -> Path:
    """The directory of the shipped default model (it may not exist in a development checkout)."""
    return Path(DEFAULT_MODEL_DIR)


def default_model_available() -> bool:
    """True when the default model directory holds a saved pipeline (``model_index.json``)."""
    return (default_model_dir() / MODEL_INDEX_FILE).is_file()


def missing_default_model_message() -> str:
    """The error text for a missing default model: where it was looked for and how to build it."""
    return (
        f"the default model {DEFAULT_MODEL_NAME!r} is not built yet: {default_model_dir()} holds no "
        f"{MODEL_INDEX_FILE}. {BUILD_HINT} Until then --model is required: pass a checkpoint directory "
        "(our saved layout or the official LLaDA2.0-Uni layout)."
    )


def is_default_model_request(name_or_path: str | Path | None) -> bool:
    """True for None and for the name ``shapes-default`` (unless a local directory of that name exists,
    which wins, as a local folder wins over a hub id in diffusers)."""
    if name_or_path is None:
        return True
    return str(name_or_path) == DEFAULT_MODEL_NAME and not Path(name_or_path).is_dir()


def resolve_model_path(name_or_path: str | Path | None = None) -> Path:
    """The checkpoint directory meant by ``name_or_path``.

    name_or_path: None or ``"shapes-default"`` -> the default model directory (raises
    `DefaultModelMissingError`, a ``ValueError``, saying how to build it when it is missing); any other
    string or path -> that path, unchecked (the loaders validate it). Returns a ``Path``.
    """
    if not is_default_model_request(name_or_path):
        return Path(name_or_path)
    if not default_model_available():
        raise DefaultModelMissingError(missing_default_model_message())
    return default_model_dir()
