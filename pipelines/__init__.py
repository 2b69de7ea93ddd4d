"""Diffusers-style pipelines composing tokenizer, backbone and decoder.

`UniPipeline` picks the task from its inputs; the task pipelines (`UnderstandingPipeline`, `ChatPipeline`,
`TextToImagePipeline`, `ImageEditPipeline`, `InterleavedPipeline`) share its modules (``from_pipe``).
Both load our saved layout and the official LLaDA2.0-Uni directory layout (`checkpoint_loading`).
"""

from unimask.pipelines.generation_defaults import GenerationDefaults
from unimask.pipelines.pipeline_base import UniPipelineBase
from unimask.pipelines.pipeline_interleaved import InterleavedPipeline
from unimask.pipelines.pipeline_output import UniPipelineOutput
from unimask.pipelines.pipeline_tasks import ChatPipeline, ImageEditPipeline, TextToImagePipeline, UnderstandingPipeline
from unimask.pipelines.pipeline_uni import UniPipeline
from unimask.pipelines.task_routing import classify_prompt, infer_task

__all__ = [
    "ChatPipeline",
    "GenerationDefaults",
    "ImageEditPipeline",
    "InterleavedPipeline",
    "TextToImagePipeline",
    "UnderstandingPipeline",
    "UniPipeline",
    "UniPipelineBase",
    "UniPipelineOutput",
    "classify_prompt",
    "infer_task",
]
