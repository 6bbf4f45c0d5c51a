"""Upsampling decoder: aggregated cost maps to one logit map per class, 4× the feature grid.

CAT-Seg's decoder: two stages h→2h→4h, each a stride-2 transposed conv, concatenation with
guidance from intermediate CLIP blocks, and two conv–GroupNorm–ReLU layers; then a 3×3 conv to
one logit per class. The guidance path (transposed convs of the CLIP block outputs to 256 ch at
2h and 128 ch at 4h, then 3×3 conv + ReLU to 32 and 16 ch) is class-independent: it runs once
per image, and so is its share of each stage's first conv; classes run in chunks so peak memory
does not grow with K.

Everything runs in channels-last (NHWC) layout, which is the cost embedding's own layout
``(B, K, h, w, C)``: oneDNN's NHWC convolutions are 1.1-7x faster on CPU than NCHW for these
narrow layers. Channels-last GroupNorm sums in an order that depends on the batch size, so class
chunking changes results by float rounding only (~1e-7 relative).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lmseg.aggregation.common import chunk_size, map_chunks
from lmseg.runtime import RuntimeOptions, runtime_or_default


class DoubleConv(nn.Module):
    """(3×3 conv, no bias → GroupNorm(C/16) → ReLU) × 2, as CAT-Seg.

    Args:
        in_channels: input channels.
        out_channels: output channels (a multiple of 16).
    """

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = out_channels // 16
        if groups < 1:
            raise ValueError(f"decoder width {out_channels} must be at least 16 (GroupNorm of C/16)")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C_out, H, W)``.

        Args:
            x: the first ``C`` input channels (all of them when ``extra`` is None).
            extra: ``(B, C_out, H, W)`` output of the first conv on the remaining input channels,
                computed once per image and broadcast over its ``N / B`` rows (conv is linear:
                ``conv([x, g]) = conv_x(x) + conv_g(g)``).
        """
        if extra is None:
            x = self.conv1(x)
        else:
            x = F.conv2d(x, self.conv1.weight[:, : x.shape[1]], padding=1)
            x.unflatten(0, (extra.shape[0], -1)).add_(extra.unsqueeze(1).to(x.dtype))
        x = self.act(self.norm1(x))
        return self.act(self.norm2(self.conv2(x)))


class UpStage(nn.Module):
    """×2 transposed conv, concatenation with guidance, DoubleConv.

    Args:
        in_channels: input channels C_in; the transposed conv gives C_in − guidance channels so
            that the concatenation has C_in channels again.
        out_channels: output channels.
        guidance_channels: channels of the (projected) guidance.
    """

    def __init__(self, *, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(
            in_channels, in_channels - guidance_channels, kernel_size=2, stride=2
        )
        self.conv = DoubleConv(in_channels=in_channels, out_channels=out_channels)

    def guidance_term(self, guidance: torch.Tensor | None) -> torch.Tensor | None:
        """The guidance channels' share of the first conv, once per image: ``(B, C_out, 2H, 2W)``."""
        if guidance is None:
            return None
        up_channels = self.up.out_channels
        term = F.conv2d(guidance, self.conv.conv1.weight[:, up_channels:], padding=1)
        return term.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, guidance_term: torch.Tensor | None) -> torch.Tensor:
        """``x (B·K, C_in, H, W)`` and :meth:`guidance_term` -> ``(B·K, C_out, 2H, 2W)``.

        Equals CAT-Seg's ``DoubleConv(cat([up(x), guidance]))`` without concatenating a copy of
        the guidance for every class.
        """
        return self.conv(self.up(x), guidance_term)


class UpsamplingDecoder(nn.Module):
    """Decoder from aggregated cost embeddings to per-class logits.

    Args:
        dim: cost-embedding width C (128).
        clip_width: width of the CLIP vision transformer whose intermediate blocks guide the
            decoder (768 for ViT-B, 1024 for ViT-L); 0 disables guidance.
        guidance_dims: channels of the upsampled CLIP guidance ((256, 128)).
        guidance_proj_dims: channels after the 3×3 guidance projections ((32, 16)).
        decoder_dims: output channels of the two stages ((64, 32)).

    The runtime option ``class_chunk`` sets how many classes are decoded together (None: the
    device's default); it bounds memory and changes results only by float rounding.
    """

    def __init__(
        self,
        *,
        dim: int = 128,
        clip_width: int = 768,
        guidance_dims: Sequence[int] = (256, 128),
        guidance_proj_dims: Sequence[int] = (32, 16),
        decoder_dims: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        self.guidance_upsamplers = nn.ModuleList()
        self.guidance_projections = nn.ModuleList()
        if clip_width > 0:
            # CAT-Seg's upsample1 (×2) and upsample2 (×4) of the two intermediate CLIP blocks.
            for scale, g, gp in zip((2, 4), guidance_dims, guidance_proj_dims, strict=True):
                self.guidance_upsamplers.append(
                    nn.ConvTranspose2d(clip_width, g, kernel_size=scale, stride=scale)
                )
                self.guidance_projections.append(
                    nn.Sequential(nn.Conv2d(g, gp, 3, padding=1), nn.ReLU())
                )
        proj = tuple(guidance_proj_dims) if clip_width > 0 else (0, 0)
        self.stages = nn.ModuleList(
            [
                UpStage(in_channels=dim, out_channels=decoder_dims[0], guidance_channels=proj[0]),
                UpStage(
                    in_channels=decoder_dims[0],
                    out_channels=decoder_dims[1],
                    guidance_channels=proj[1],
                ),
            ]
        )
        self.head = nn.Conv2d(decoder_dims[1], 1, 3, padding=1)

    def prepare_guidance(self, clip_taps: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """Project the intermediate CLIP features once per image.

        Args:
            clip_taps: two tensors ``(B, clip_width, h, w)`` (outputs of the guidance blocks).

        Returns:
            ``[(B, 32, 2h, 2w), (B, 16, 4h, 4w)]``, or ``[None, None]`` without guidance.
        """
        if not len(self.guidance_upsamplers):
            return [None, None]
        return [
            proj(up(tap))
            for up, proj, tap in zip(
                self.guidance_upsamplers, self.guidance_projections, clip_taps, strict=True
            )
        ]

    def _decode(self, x: torch.Tensor, terms: Sequence[torch.Tensor | None]) -> torch.Tensor:
        b, num_classes = x.shape[:2]
        y = rearrange(x, "b k h w c -> (b k) c h w")
        for stage, term in zip(self.stages, terms, strict=True):
            y = stage(y, term)
        return rearrange(self.head(y), "(b k) 1 h w -> b k h w", b=b, k=num_classes)

    def forward(
        self,
        x: torch.Tensor,
        guidance: Sequence[torch.Tensor | None],
        *,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """Decode every class.

        Args:
            x: aggregated cost embedding ``(B, K, h, w, C)``.
            guidance: output of :meth:`prepare_guidance`.
            runtime: the class chunk (defaults when None).

        Returns:
            Logits ``(B, K, 4h, 4w)``.
        """
        runtime = runtime_or_default(runtime)
        stages: list[UpStage] = list(self.stages)  # type: ignore[arg-type]
        terms = [stage.guidance_term(g) for stage, g in zip(stages, guidance, strict=True)]
        step = chunk_size(runtime.class_chunk, "classes", x.device)
        return map_chunks(lambda part: self._decode(part, terms), x, dim=1, step=step)
