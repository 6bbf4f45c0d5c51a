"""A training-free baseline built from lmseg's blocks: dense CLIP features, cosine similarity to
the class prompts, arg-max (as MaskCLIP, Zhou et al., ECCV 2022, "Extract Free Dense Labels from
CLIP").

It needs nothing but open_clip's weights: the vision-language encoder runs its last block in
MaskCLIP's dense mode (the value path through out-proj, no residual, no MLP), the cost volume's
cosine similarity of every pixel with every class (the prompts of a class averaged, as MaskCLIP's
prompt ensembling) is scaled by CLIP's logit scale and turned into a softmax over the vocabulary.
There is no cost aggregation and no decoder, so the label map is CLIP's own 24×24 (ViT-B/16 at
384 px) or 28×28 (at 448 px) grid, upsampled bilinearly: a weak baseline, far below the trained
models (docs/weights.md compares published numbers).

Its probabilities are the softmax over the vocabulary (they sum to 1 at every pixel), unlike the
trained models' independent sigmoids; :meth:`TrainingFreeModel.decode` returns their logits
(``logit(p)``), so :class:`lmseg.Segmenter`'s sigmoid gives them back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmseg.cost_volume import cosine_cost
from lmseg.encoders.base import VisionLanguageEncoder
from lmseg.model import ImageFeatures
from lmseg.runtime import RuntimeOptions, runtime_or_default

# CLIP's logit scale: OpenAI's trained value, exp(4.6052) = 100 (open_clip clamps at 100).
CLIP_LOGIT_SCALE = 100.0


class TrainingFreeModel(nn.Module):
    """Open-vocabulary segmentation from a vision-language encoder alone, without training.

    Args:
        vision_language_encoder: the CLIP role (in ``dense_mode="maskclip"`` for MaskCLIP).
        num_prompts: P, prompts per class (their embeddings are averaged).
        logit_scale: multiplies the cosine similarities before the softmax over classes.
        config: the model's config as a plain dict, saved with checkpoints.
    """

    # The training-free model has no spatial encoder, no class filtering and nothing to train.
    spatial_encoder = None
    default_top_k = None

    def __init__(
        self,
        *,
        vision_language_encoder: VisionLanguageEncoder,
        num_prompts: int = 1,
        logit_scale: float = CLIP_LOGIT_SCALE,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.vision_language_encoder = vision_language_encoder
        self._num_prompts = num_prompts
        self.logit_scale = logit_scale
        self.config: dict[str, Any] = dict(config or {})

    @property
    def text_encoder(self) -> VisionLanguageEncoder:
        return self.vision_language_encoder

    @property
    def num_prompts(self) -> int:
        return self._num_prompts

    @property
    def embed_dim(self) -> int:
        return self.vision_language_encoder.embed_dim

    def top_k(self, runtime: RuntimeOptions | None = None) -> int | None:
        """No class filtering: every class is scored."""
        return None

    def _check_input(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        weight = next(self.vision_language_encoder.parameters())
        if tensor.device != weight.device:
            raise ValueError(
                f"{what} are on {tensor.device} but the model is on {weight.device}; "
                f"move them with .to({str(weight.device)!r})"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"{what} must be floating point, got {tensor.dtype}")
        return tensor.to(weight.dtype)

    def encode_image(
        self, images: torch.Tensor, runtime: RuntimeOptions | None = None
    ) -> ImageFeatures:
        """Dense features of ``(B, 3, H, W)`` RGB images in [0, 1] (no guidance is needed)."""
        images = self._check_input(images, "images")
        if runtime_or_default(runtime).preprocessing == "catseg":
            raise ValueError("preprocessing='catseg' applies to the CAT-Seg models only")
        dense = self.vision_language_encoder(images)
        return ImageFeatures(
            embedding=dense.embedding,
            decoder_guidance=[],
            vision_language_embedding=dense.embedding,
        )

    def decode(
        self,
        features: ImageFeatures,
        text_embeddings: torch.Tensor,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, K, h, w)`` of the softmax over classes of scaled cosine similarities.

        Args:
            features: from :meth:`encode_image`.
            text_embeddings: ``(K, P, D)`` or ``(B, K, P, D)``.
            runtime: unused (there is nothing to chunk or filter).
        """
        embedding = features.embedding
        if text_embeddings.dim() == 3:
            text_embeddings = text_embeddings.unsqueeze(0).expand(embedding.shape[0], -1, -1, -1)
        if text_embeddings.dim() != 4 or text_embeddings.shape[-1] != embedding.shape[1]:
            raise ValueError(
                f"text embeddings must be (K, P, {embedding.shape[1]}) or "
                f"(B, K, P, {embedding.shape[1]}), got {tuple(text_embeddings.shape)}"
            )
        if text_embeddings.shape[1] == 0:
            raise ValueError("the vocabulary is empty: give at least one class")
        text = self._check_input(text_embeddings, "text embeddings")
        # MaskCLIP's prompt ensemble: the normalised prompt embeddings of a class averaged.
        text = F.normalize(F.normalize(text, dim=-1).mean(dim=2, keepdim=True), dim=-1)
        cost = cosine_cost(embedding, text)[:, 0]  # (B, K, h, w)
        probabilities = (self.logit_scale * cost.float()).softmax(dim=1)
        return torch.logit(probabilities, eps=1e-6).to(embedding.dtype)

    def forward(
        self,
        images: torch.Tensor,
        text_embeddings: torch.Tensor,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] and ``(K, P, D)`` prompts -> logits ``(B, K, h, w)``."""
        return self.decode(self.encode_image(images, runtime), text_embeddings, runtime)
