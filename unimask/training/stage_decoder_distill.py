"""The ``decoder_distill`` stage: consistency distillation of the few-step turbo decoder.

The teacher is a trained decoder folder (``stage_options.teacher``: what the ``decoder_flow``
stage exported) or, when absent, the student's own initial weights (for tests). The student
starts from the teacher's transformer and uses the teacher's frozen ``sigvq`` and ``vae``. ``stage_options``: ``teacher``, ``teacher_steps`` (default
50), ``guidance_scale`` (default 1.0), ``resolution_multiplier``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unimask.config import ConfigError
from unimask.training.stage_decoder_flow import DecoderFlowStage, DecoderParts

__all__ = ["DecoderDistillStage"]


class DecoderDistillStage(DecoderFlowStage):
    """``unimask.decoders.distillation.distillation_loss`` against a frozen teacher."""

    name = "decoder_distill"
    option_defaults = {"teacher": None, "teacher_steps": 50, "guidance_scale": 1.0, "resolution_multiplier": None, "variant": "turbo", "init_vae": None}

    def check_config(self) -> None:
        super().check_config()
        teacher = self.options["teacher"]
        if teacher is not None and not (Path(teacher) / "transformer").is_dir():
            raise ConfigError(f"stage_options.teacher={teacher!r} is not a decoder folder with a transformer/ sub-folder")
        self._teacher: DecoderParts | None = None

    def build_model(self) -> nn.Module:
        student = super().build_model()
        teacher_path = self.options["teacher"]
        if teacher_path is not None:
            from diffusers import AutoencoderKL, ZImageTransformer2DModel

            from unimask.decoders.sigvq import SigVQEmbedding

            trained = ZImageTransformer2DModel.from_pretrained(Path(teacher_path) / "transformer")
            student.transformer.load_state_dict(trained.state_dict())
            # The teacher was trained against its own frozen conditioning and latents: keep them.
            if (Path(teacher_path) / "sigvq").is_dir():
                student.sigvq.load_state_dict(SigVQEmbedding.from_pretrained(Path(teacher_path) / "sigvq").state_dict())
            if (Path(teacher_path) / "vae").is_dir():
                student.vae.load_state_dict(AutoencoderKL.from_pretrained(Path(teacher_path) / "vae").state_dict())
        if self._teacher is None:
            self._teacher = DecoderParts(copy.deepcopy(student.sigvq), copy.deepcopy(student.transformer), copy.deepcopy(student.vae), ())
            self._teacher.eval()
        return student

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.decoders.distillation import distillation_loss

        device = batch["pixel_values"].device
        self._teacher.to(device)
        return distillation_loss(model, self._teacher, batch, teacher_steps=self.options["teacher_steps"], guidance_scale=self.options["guidance_scale"])
