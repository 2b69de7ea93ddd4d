"""Semantic probes of the VQ stage: how much of an image label survives quantization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimask.tokenizers.image_tokenizer_training import VQStageModel

__all__ = ["nearest_centroid_accuracy", "semantic_probe"]


def nearest_centroid_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> float:
    """Semantic probe: classify each test vector by the cosine-nearest class mean of the training
    vectors. x: (N, D) float, y: (N,) int64 labels. Returns accuracy in [0, 1]."""
    classes = torch.unique(train_y)
    centroids = torch.stack([F.normalize(train_x[train_y == c], dim=-1).mean(0) for c in classes])
    predictions = classes[(F.normalize(test_x, dim=-1) @ F.normalize(centroids, dim=-1).T).argmax(dim=1)]
    return (predictions == test_y).float().mean().item()


@torch.no_grad()
def semantic_probe(
    model: VQStageModel, pixel_values: torch.Tensor, labels: torch.Tensor, train_fraction: float = 0.5
) -> dict[str, float]:
    """Compare how well image labels are recovered from continuous vs quantized tokens.

    pixel_values: (B, 3, H, W); labels: (B,) int64 (e.g. an attribute such as shape or colour).
    The first ``train_fraction`` of the images fit class centroids of mean-pooled latents (continuous)
    and of mean-pooled codes (quantized); the rest are classified. Returns ``continuous_accuracy``,
    ``quantized_accuracy`` and ``quantized_cosine``.
    """
    if not 0.0 < train_fraction < 1.0 or labels.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"need 0 < train_fraction < 1 and one label per image, got {train_fraction}, {tuple(labels.shape)}"
        )
    was_training = model.training
    model.eval()
    output = model(pixel_values)
    model.train(was_training)
    batch = pixel_values.shape[0]
    continuous = output.latents.view(batch, -1, output.latents.shape[-1]).mean(1)
    quantized = output.quantized.view(batch, -1, output.quantized.shape[-1]).mean(1)
    split = max(1, int(batch * train_fraction))

    def accuracy(vectors: torch.Tensor) -> float:
        return nearest_centroid_accuracy(vectors[:split], labels[:split], vectors[split:], labels[split:])

    return {
        "continuous_accuracy": accuracy(continuous),
        "quantized_accuracy": accuracy(quantized),
        "quantized_cosine": (output.latents * output.quantized).sum(-1).mean().item(),
    }
