"""Cost volume: cosine similarity between dense image features and class prompt embeddings.

``E[b, p, k, i, j] = <F[b, :, i, j], T[k, p, :]> / (|F| |T|)``, shape ``(B, P, K, h, w)``,
embedded per class by a 7×7 conv from P prompt channels to C = 128 (CAT-Seg's ``conv1``).

Class filtering (for large vocabularies): CAT-Seg keeps the ``pad_len`` = 256 classes with the
highest maximum initial similarity and gives the rest logit −100; the revised LMSeg keeps the top
32 ("category filtering"). :func:`select_classes` implements both; exact full-vocabulary
inference simply skips it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# Logit given to classes removed by class filtering (CAT-Seg).
FILTERED_LOGIT = -100.0


def cosine_cost(image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel with every prompt of every class.

    Args:
        image_embedding: ``(B, D, h, w)``.
        text_embedding: ``(B, K, P, D)`` (or ``(K, P, D)``, shared by the batch).

    Returns:
        ``(B, P, K, h, w)``.
    """
    if text_embedding.dim() == 3:
        text_embedding = text_embedding.unsqueeze(0).expand(image_embedding.shape[0], -1, -1, -1)
    image = F.normalize(image_embedding, dim=1)
    text = F.normalize(text_embedding, dim=-1)
    return torch.einsum("bdhw,bkpd->bpkhw", image, text)


def select_classes(cost: torch.Tensor, top_k: int) -> torch.Tensor:
    """Indices of the ``top_k`` classes with the highest maximum cost (over prompts and pixels).

    Args:
        cost: ``(B, P, K, h, w)``.
        top_k: number of classes to keep (≤ K).

    Returns:
        ``(B, top_k)`` int64 class indices, in increasing class order.
    """
    best = rearrange(cost, "b p k h w -> b k (p h w)").amax(dim=-1)
    return best.topk(top_k, dim=-1).indices.sort(dim=-1).values


def gather_classes(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather per-image class indices ``(B, k)`` along ``dim`` of a ``(B, ...)`` tensor."""
    shape = [1] * tensor.dim()
    shape[0], shape[dim] = index.shape
    expanded = index.view(shape).expand(*tensor.shape[:dim], index.shape[1], *tensor.shape[dim + 1 :])
    return tensor.gather(dim, expanded)


def scatter_classes(logits: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Put the logits of kept classes ``(B, k, H, W)`` back into a ``(B, K, H, W)`` map.

    Classes that were filtered out get :data:`FILTERED_LOGIT`, as CAT-Seg.
    """
    out = logits.new_full((logits.shape[0], num_classes, *logits.shape[2:]), FILTERED_LOGIT)
    return out.scatter(1, index[:, :, None, None].expand_as(logits), logits)


class CostVolume(nn.Module):
    """Cosine cost volume and its per-class 7×7 embedding P → C.

    Args:
        num_prompts: P, prompts per class (1 for CAT-Seg's single template, 4 for LMSeg's
            template + three attribute sentences).
        dim: embedding width C (128).
        kernel_size: embedding conv kernel (7).
    """

    def __init__(self, *, num_prompts: int = 1, dim: int = 128, kernel_size: int = 7) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.embed = nn.Conv2d(num_prompts, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        """Embed a cost volume.

        Args:
            cost: ``(B, P, K, h, w)`` from :func:`cosine_cost`.

        Returns:
            ``(B, K, h, w, C)`` (channels-last, the aggregators' layout).
        """
        b, p, num_classes = cost.shape[:3]
        if p != self.num_prompts:
            raise ValueError(
                f"cost volume has {p} prompts per class but the embedding expects "
                f"{self.num_prompts}; build the model with num_prompts={p} or use matching prompts"
            )
        x = rearrange(cost, "b p k h w -> (b k) p h w")
        x = self.embed(x.contiguous(memory_format=torch.channels_last))
        return rearrange(x, "(b k) c h w -> b k h w c", b=b, k=num_classes)
