"""`UniPipeline`: one entry point for every task of a unified model; it picks the task from the inputs.

    pipe = UniPipeline.from_pretrained(path)          # our layout or the official LLaDA2.0-Uni one
    pipe("a red circle").images[0][0]                 # text-to-image
    pipe("What colour is the shape?", image=img)      # understanding (a question)
    pipe("Make the circle blue", image=img)           # editing (an instruction)
    pipe("Combine them", image=[img_a, img_b])        # multi-reference editing
    pipe("Hello", output="text")                      # chat
    pipe("Tell a story with pictures", output="interleaved")

The rule that tells a question from an instruction is in `task_routing`. The task pipelines are reachable
as properties (``pipe.text_to_image``, ``pipe.understanding``, ``pipe.edit``, ``pipe.interleaved``,
``pipe.chat``) and share this pipeline's modules.
"""

from __future__ import annotations

from typing import Any

from unimask.pipelines.call_inputs import check_prompts, images_per_prompt
from unimask.pipelines.pipeline_base import UniPipelineBase
from unimask.pipelines.pipeline_interleaved import InterleavedPipeline
from unimask.pipelines.pipeline_output import UniPipelineOutput
from unimask.pipelines.pipeline_tasks import (
    ChatPipeline,
    ImageEditPipeline,
    TextToImagePipeline,
    UnderstandingPipeline,
)
from unimask.pipelines.task_routing import infer_task

TASK_PIPELINES: dict[str, type[UniPipelineBase]] = {
    "understanding": UnderstandingPipeline,
    "chat": ChatPipeline,
    "text_to_image": TextToImagePipeline,
    "thinking": TextToImagePipeline,
    "edit": ImageEditPipeline,
    "interleaved": InterleavedPipeline,
}


class UniPipeline(UniPipelineBase):
    """Routes a call to the task pipeline its inputs ask for (see the module docstring)."""

    def task_pipeline(self, task: str) -> UniPipelineBase:
        """The pipeline of ``task`` built on this pipeline's modules (cached; `UniPipelineBase.sibling`)."""
        return self.sibling(TASK_PIPELINES[task])

    @property
    def understanding(self) -> UnderstandingPipeline:
        """`UnderstandingPipeline` sharing this pipeline's modules."""
        return self.task_pipeline("understanding")

    @property
    def chat(self) -> ChatPipeline:
        """`ChatPipeline` sharing this pipeline's modules."""
        return self.task_pipeline("chat")

    @property
    def text_to_image(self) -> TextToImagePipeline:
        """`TextToImagePipeline` sharing this pipeline's modules."""
        return self.task_pipeline("text_to_image")

    @property
    def edit(self) -> ImageEditPipeline:
        """`ImageEditPipeline` sharing this pipeline's modules."""
        return self.task_pipeline("edit")

    @property
    def interleaved(self) -> InterleavedPipeline:
        """`InterleavedPipeline` sharing this pipeline's modules."""
        return self.task_pipeline("interleaved")

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        task: str | None = None,
        output: str | None = None,
        thinking: bool = False,
        messages: list | None = None,
        **kwargs: Any,
    ) -> UniPipelineOutput | tuple:
        """Run the task chosen by `task_routing.infer_task` (``task=`` overrides the guess).

        prompt / image: as in the task pipelines; output: "text" | "image" | "interleaved" hint;
        thinking: thinking text-to-image; messages: a chat conversation (implies ``task="chat"``);
        kwargs: the task pipeline's arguments and sampler/decoder options.
        """
        if messages is not None:
            chosen = infer_task([], [], task=task or "chat")
            if chosen != "chat":
                raise ValueError(f"messages: only the chat task takes messages, got task={task!r}")
            return self.chat(prompt=prompt, messages=messages, **kwargs)
        prompts = check_prompts(prompt)
        chosen = infer_task(prompts, [len(group) for group in images_per_prompt(image, len(prompts))], task, output, thinking)
        pipeline = self.task_pipeline(chosen)
        if chosen in ("understanding", "edit"):
            return pipeline(prompt, image, **kwargs)
        if image is not None:
            raise ValueError(f"image: task={chosen!r} takes no input image")
        if chosen in ("text_to_image", "thinking"):
            return pipeline(prompt, thinking=chosen == "thinking", **kwargs)
        return pipeline(prompt, **kwargs)
