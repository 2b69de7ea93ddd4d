"""Which task a `UniPipeline` call is, from its inputs.

Rule (documented in `infer_task`):

- ``task=`` given: it wins (must be one of `PIPELINE_TASKS`).
- no image: ``output="text"`` -> chat; otherwise text-to-image (``thinking=True`` -> thinking text-to-image).
- several images for one prompt: multi-reference editing.
- one image: the prompt is a *question* (understanding) when, after trimming, it ends with "?" or its
  first word is an interrogative or auxiliary (what, which, who, whom, whose, where, when, why, how,
  is, are, was, were, do, does, did, can, could, would, should, will, describe, explain, count, tell,
  name, list); it is an *instruction* (editing) when its first word is an imperative of the editing
  vocabulary (make, change, turn, add, remove, replace, put, convert, transform, swap, delete, erase,
  set, give, let, move, recolor, recolour, paint, colour, color, edit); anything else is ambiguous and
  raises ``ValueError`` saying to pass ``task="understanding"`` or ``task="edit"``.
  ``output="text"`` with one image means understanding, ``output="image"`` means editing.
"""

from __future__ import annotations

import re

PIPELINE_TASKS = ("understanding", "text_to_image", "thinking", "edit", "interleaved", "chat")
OUTPUTS = ("text", "image", "interleaved")

QUESTION_WORDS = frozenset(
    "what which who whom whose where when why how is are was were do does did can could would should will "
    "describe explain count tell name list".split()
)
INSTRUCTION_WORDS = frozenset(
    "make change turn add remove replace put convert transform swap delete erase set give let move recolor "
    "recolour paint colour color edit".split()
)
_FIRST_WORD = re.compile(r"[A-Za-z']+")


def classify_prompt(prompt: str) -> str | None:
    """"question", "instruction" or None (ambiguous) for one prompt, by the rule in the module docstring."""
    text = prompt.strip()
    if text.endswith("?"):
        return "question"
    match = _FIRST_WORD.search(text)
    first = match.group(0).lower() if match else ""
    if first in QUESTION_WORDS:
        return "question"
    if first in INSTRUCTION_WORDS:
        return "instruction"
    return None


def infer_task(
    prompts: list[str],
    images_per_prompt: list[int],
    task: str | None = None,
    output: str | None = None,
    thinking: bool = False,
) -> str:
    """Pick the task of a call.

    prompts: the call's prompts; images_per_prompt: how many input images each prompt has (same
    length); task / output / thinking: the caller's explicit choices. Returns one of `PIPELINE_TASKS`.
    Raises ``ValueError`` for an unknown ``task`` or ``output``, and for calls whose prompts classify
    differently or ambiguously (the message says how to choose).
    """
    if task is not None:
        if task not in PIPELINE_TASKS:
            raise ValueError(f"task={task!r} is unknown; allowed tasks are {list(PIPELINE_TASKS)}")
        return task
    if output is not None and output not in OUTPUTS:
        raise ValueError(f"output={output!r} is unknown; allowed values are {list(OUTPUTS)}")
    counts = set(images_per_prompt)
    if counts == {0}:
        if output == "text":
            return "chat"
        if output == "interleaved":
            return "interleaved"
        return "thinking" if thinking else "text_to_image"
    if 0 in counts:
        raise ValueError("image: some prompts have images and others none; split the call or pass task=")
    if max(counts) > 1:
        if output == "text":
            return "understanding"
        return "edit"
    if output == "text":
        return "understanding"
    if output == "image":
        return "edit"
    kinds = {classify_prompt(prompt) for prompt in prompts}
    if kinds == {"question"}:
        return "understanding"
    if kinds == {"instruction"}:
        return "edit"
    raise ValueError(
        "prompt: cannot tell whether a prompt with one image is a question (understanding) or an instruction "
        "(editing); a question ends with '?' or starts with an interrogative word, an instruction starts with "
        "an editing verb such as 'make', 'change', 'add', 'remove', 'replace'. Pass task='understanding' or "
        "task='edit' (or output='text' / output='image') to choose."
    )
