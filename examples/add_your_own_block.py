"""Add your own block: a new spatial encoder and a new class attention, one registration each.

A tiny conv net takes the spatial-encoder role (SAM's in LMSeg) and a cosine-similarity kernel
the class-attention role; each is a class plus a builder registered by name, after which the
factory builds, validates, saves and reloads models that use them like the built-in blocks. The
script builds ``lmseg_tiny`` with both, trains it a few steps on the synthetic world, saves it
with ``lmseg.save_model``, reloads it with ``lmseg.load_model`` and checks that the reloaded model
gives the same logits (docs/add-your-own-block.md). About five seconds on two CPU cores.

    python examples/add_your_own_block.py [--steps 5] [--out outputs/add_your_own_block]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import lmseg
from lmseg.aggregation import CLASS_ATTENTIONS
from lmseg.checkpoint import CheckpointError
from lmseg.encoders import SPATIAL_ENCODERS, SpatialEncoder
from lmseg.registry import RegistryError
from lmseg.runtime import RuntimeOptions
from lmseg.synthetic import SyntheticWorld
from lmseg.synthetic.model import text_embeddings
from lmseg.synthetic.settings import DemoSettings
from lmseg.synthetic.training import batch_loss, training_vocabulary

# ------------------------------------------------------------------------------------------
# A new spatial encoder: the SpatialEncoder interface is `out_channels` and
# `forward(images (B, 3, H, W) in [0, 1]) -> (B, C, s, s)`; the encoder owns its resizing.


class TinyConvEncoder(SpatialEncoder):
    """``layers`` stride-2 3×3 convolutions: ``(B, 3, H, W)`` -> ``(B, width, S/2^layers, ...)``.

    Args:
        width: channels of every layer, C of the output.
        layers: stride-2 convolutions (GELU between them).
        image_size: square side S the images are resized to.
    """

    def __init__(self, *, width: int = 32, layers: int = 3, image_size: int = 96) -> None:
        super().__init__()
        self.image_size = image_size
        self.width = width
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Conv2d(3 if i == 0 else width, width, 3, stride=2, padding=1), nn.GELU()]
        self.net = nn.Sequential(*blocks[:-1])  # the last layer's output is the feature map

    @property
    def out_channels(self) -> int:
        return self.width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return self.net(images * 2 - 1)  # [0, 1] -> [-1, 1]


@SPATIAL_ENCODERS.register("tiny_conv")
def build_tiny_conv(
    *, width: int = 32, layers: int = 3, image_size: int = 96, weights: str | None = None
) -> TinyConvEncoder:
    """Its options are the config's; ``weights`` comes from the factory
    (``create_model(..., spatial_weights=path)``), never from a config."""
    encoder = TinyConvEncoder(width=width, layers=layers, image_size=image_size)
    if weights is not None:
        encoder.load_state_dict(load_file(weights))
    return encoder


# ------------------------------------------------------------------------------------------
# A new class attention: `forward(q, k, v, *, extra_k, extra_v, extra_count, runtime)`, with
# q, k, v (N, K, heads, d) over the K classes of a pixel, plus one key/value standing for
# `extra_count` identical padding tokens (CAT-Seg pads the class axis to pad_len).


class CosineClassAttention(nn.Module):
    """``softmax(cos(q, k) / temperature) v`` per head, over the classes of every pixel.

    Args:
        temperature: divides the cosine similarities (lower: sharper).
    """

    def __init__(self, *, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        extra_k: torch.Tensor | None = None,
        extra_v: torch.Tensor | None = None,
        extra_count: int = 0,
        runtime: RuntimeOptions | None = None,
    ) -> torch.Tensor:
        """``q, k, v (N, K, heads, d)``, ``extra_k, extra_v (N or 1, heads, d)`` -> ``(N, K,
        heads, d)``."""
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        logits = torch.einsum("nqhd,nkhd->nhqk", q, k) / self.temperature
        if extra_count and extra_k is not None and extra_v is not None:
            # extra_count identical keys = one key with its weight times extra_count.
            extra = F.normalize(extra_k, dim=-1).expand(len(q), -1, -1)  # (N, heads, d)
            pad = torch.einsum("nqhd,nhd->nhq", q, extra) / self.temperature
            logits = torch.cat([logits, pad[..., None] + math.log(extra_count)], dim=-1)
            v = torch.cat([v, extra_v.expand(len(q), -1, -1)[:, None]], dim=1)  # (N, K+1, h, d)
        return torch.einsum("nhqk,nkhd->nqhd", logits.softmax(dim=-1), v)


@CLASS_ATTENTIONS.register("cosine")
def build_cosine(*, temperature: float = 0.1) -> CosineClassAttention:
    return CosineClassAttention(temperature=temperature)


# ------------------------------------------------------------------------------------------

BLOCKS = {"spatial_encoder": {"type": "tiny_conv", "width": 16}, "class_attention": "cosine"}
EXACT = RuntimeOptions(top_k=None)  # no class filtering: every class is scored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="training steps")
    parser.add_argument("--out", default="outputs/add_your_own_block", help="results folder")
    args = parser.parse_args(argv)

    # Options are checked against the builder's signature before anything is built.
    try:
        lmseg.create_model("lmseg_tiny", spatial_encoder={"type": "tiny_conv", "widht": 16})
    except RegistryError as error:
        print(f"a misspelt option: {error}")

    # A kernel's contract: the one extra key/value stands for `extra_count` identical padding
    # tokens, so it must equal running on the explicit copies (whose outputs are discarded).
    q, k, v = torch.randn(3, 4, 5, 2, 8).unbind(0)  # (N, K, heads, d)
    pad_k, pad_v = torch.randn(2, 1, 2, 8).unbind(0)  # (1, heads, d)
    attention = CosineClassAttention()
    closed = attention(q, k, v, extra_k=pad_k, extra_v=pad_v, extra_count=3)
    copies = [t.expand(4, -1, -1)[:, None].expand(-1, 3, -1, -1) for t in (pad_k, pad_v)]
    explicit = attention(
        torch.cat([q, torch.zeros_like(copies[0])], dim=1),
        torch.cat([k, copies[0]], dim=1),
        torch.cat([v, copies[1]], dim=1),
    )[:, :5]
    print(
        "closed-form padding vs 3 explicit padding tokens: max |difference| "
        f"{(closed - explicit).abs().max().item():.1e}"
    )

    # Build: the new blocks by name, P = 3 prompts per class (the world's attribute sentences).
    torch.manual_seed(0)
    model = lmseg.create_model("lmseg_tiny", num_prompts=3, **BLOCKS).train()
    print(
        f"built: spatial encoder {type(model.spatial_encoder).__name__}, class attention "
        f"{type(model.aggregator.layers[0].classes.attention).__name__}"
    )

    # Train a few steps on the synthetic world's seen classes (the demo's loss).
    world = SyntheticWorld.generate(0)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = {k: v.clone() for k, v in model.spatial_encoder.state_dict().items()}
    losses = []
    for _ in range(args.steps):
        images, labels = world.sample(rng, world.seen_ids, 4)
        vocabs = [training_vocabulary(world, rng, torch.unique(y).tolist(), 6) for y in labels]
        loss = batch_loss(model, world, "attributes_only", images, labels, vocabs, DemoSettings())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    changed = any(
        not torch.equal(before[k], v) for k, v in model.spatial_encoder.state_dict().items()
    )
    print(
        f"trained {args.steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
        f"the new encoder's weights {'changed' if changed else 'did not change'}"
    )

    # Save: the weights and the config (which names "tiny_conv" and "cosine").
    path = Path(args.out) / "model.safetensors"
    lmseg.save_model(model, path)
    print(f"saved {path}")

    # Reload. The registrations must be imported first: without them the file cannot be read.
    SPATIAL_ENCODERS.unregister("tiny_conv")
    try:
        lmseg.load_model(path)
    except CheckpointError as error:
        print(f"without the registration: {error}")
    SPATIAL_ENCODERS.register("tiny_conv", build_tiny_conv)
    reloaded = lmseg.load_model(path)

    # The same outputs: an unseen scene, segmented with the unseen classes.
    model.eval()
    images, _ = world.sample(np.random.default_rng(1), world.unseen_ids, 2)
    vocab = [0, *world.unseen_ids]
    with torch.no_grad():
        text = text_embeddings(model, world, vocab, "attributes_only")
        logits = model(images, text, EXACT)
        again = reloaded(images, text, EXACT)
    same = torch.equal(logits, again)
    print(
        f"reloaded: logits {tuple(again.shape)}, max |difference| "
        f"{(logits - again).abs().max().item():.3g}: {'identical' if same else 'DIFFERENT'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
