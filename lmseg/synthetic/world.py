"""A procedural open-vocabulary world: made-up classes defined by colour, shape/size and texture.

Every class is a triple of attribute values — one of 6 colours, one of 6 shapes (circle, square,
triangle, each small or large) and one of 4 textures — with a made-up name ("dakum", "zibor").
Images are ``S×S`` (64 by default) scenes of 1–4 non-overlapping objects on a dark background;
labels give the class of every pixel (0 = background).

Classes are split so that zero-shot transfer is the only way to recognise the unseen ones. The
36 colour+shape pairs form a random 6×6 Latin square, i.e. six edge-disjoint perfect matchings
of colours to shapes (by default):

- **unseen**: two matchings, each pair with two textures (24 classes). Among them are classes
  that differ only in texture (every pair), only in shape and only in colour, so no attribute
  can be skipped at test time;
- **seen**: three other matchings, each pair with all four textures (72 classes). Every colour,
  shape and texture value is used by many seen classes; texture is independent of colour and
  shape, and each colour comes with three shapes, so no attribute can be inferred from the
  others; no unseen colour+shape pair ever occurs in a training image or name; and every seen
  class has seen *partners* differing in one attribute (the hard negatives of training).

Textures are ±``texture_amplitude`` luminance patterns of period 2 pixels in image coordinates
(horizontal stripes, vertical stripes, a checkerboard), zero-mean over every aligned 2×2 block:
an encoder that sees the image at half resolution through bilinear resizing (the CLIP role in
:mod:`lmseg.synthetic.demo`) averages them away exactly, one at full resolution (the SAM role)
sees them. Objects are drawn on whole aligned 2×2 blocks, so this holds at their edges too. A
model blind to texture can name at most one class of each unseen colour+shape pair.

Attribute descriptions follow lmseg's prompt-bank schema (:class:`lmseg.prompts.bank.PromptBank`)
and are name-free: "It is blue.", "It is a small triangle.", "It has a checkered texture.".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmseg.prompts.bank import ClassAttributes, PromptBank, Provenance

__all__ = [
    "BACKGROUND",
    "COLORS",
    "SHAPES",
    "TEXTURES",
    "SyntheticClass",
    "SyntheticWorld",
]

# RGB in [0.25, 0.75]: with the ±0.03 colour jitter and a texture amplitude up to 0.22 no pixel
# clips, so every texture stays exactly zero-mean over 2×2 blocks.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.75, 0.25, 0.25),
    "orange": (0.75, 0.50, 0.25),
    "yellow": (0.72, 0.72, 0.25),
    "green": (0.25, 0.66, 0.28),
    "blue": (0.25, 0.33, 0.75),
    "purple": (0.58, 0.27, 0.73),
}
SHAPES: tuple[str, ...] = (
    "small circle",
    "large circle",
    "small square",
    "large square",
    "small triangle",
    "large triangle",
)
TEXTURES: tuple[str, ...] = ("plain", "horizontally striped", "vertically striped", "checkered")
BACKGROUND = "background"
BACKGROUND_RGB = (0.10, 0.10, 0.10)
IGNORE_VALUE = 255

# Object radius as a fraction of the image side, per size; jittered uniformly in the range.
_RADIUS = {"small": (0.090, 0.110), "large": (0.160, 0.190)}
_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


@dataclass(frozen=True)
class SyntheticClass:
    """One class of the world.

    Attributes:
        name: made-up name (``"background"`` for class 0).
        color, shape, texture: attribute values (keys of :data:`COLORS`, items of
            :data:`SHAPES` and :data:`TEXTURES`); empty for the background.
        seen: whether the class may appear in training images and vocabularies.
    """

    name: str
    color: str
    shape: str
    texture: str
    seen: bool

    @property
    def attributes(self) -> tuple[str, str, str]:
        return self.color, self.shape, self.texture

    def describe(self) -> ClassAttributes:
        """Name-free attribute sentences in the prompt-bank schema."""
        if self.name == BACKGROUND:
            return ClassAttributes(
                name=self.name,
                color="It is dark grey.",
                shape="It is the empty ground around the objects.",
                texture="It has a smooth texture.",
            )
        return ClassAttributes(
            name=self.name,
            color=f"It is {self.color}.",
            shape=f"It is a {self.shape}.",
            texture=f"It has a {self.texture} texture.",
        )


def _one_attribute_pairs(triples: Sequence[tuple[str, str, str, bool]], seen: bool) -> list[int]:
    """For (colour, shape, texture) triples of one split: how many class pairs differ only in
    colour, only in shape, only in texture."""
    mine = [t[:3] for t in triples if t[3] == seen]
    counts = [0, 0, 0]
    for a, b in itertools.combinations(mine, 2):
        diff = [x != y for x, y in zip(a, b, strict=True)]
        if sum(diff) == 1:
            counts[diff.index(True)] += 1
    return counts


def _assign_textures(
    rng: np.random.Generator,
    pairs: Sequence[tuple[str, str, bool]],
    seen_per_pair: int,
    unseen_per_pair: int,
) -> list[tuple[str, str, str, bool]]:
    """Give each seen (unseen) colour+shape pair ``seen_per_pair`` (``unseen_per_pair``)
    distinct textures, redrawn until every texture is used by at least 3 seen classes and by
    an unseen class, and both splits contain classes that differ only in colour and only in
    shape (when they have two matchings or more)."""
    for _ in range(10_000):
        triples = [
            (color, shape, TEXTURES[t], seen)
            for color, shape, seen in pairs
            for t in sorted(
                rng.choice(
                    len(TEXTURES),
                    size=seen_per_pair if seen else unseen_per_pair,
                    replace=False,
                )
            )
        ]
        seen_use = [sum(t[2] == x and t[3] for t in triples) for x in TEXTURES]
        unseen_use = [sum(t[2] == x and not t[3] for t in triples) for x in TEXTURES]
        if min(seen_use) < 3 or min(unseen_use) < 1:
            continue
        ok = True
        for seen in (True, False):
            n_pairs = sum(p[2] == seen for p in pairs)
            if n_pairs > len(COLORS):  # two matchings or more: colour and shape partners exist
                ok &= min(_one_attribute_pairs(triples, seen)[:2]) >= 2
        if ok:
            return triples
    raise RuntimeError("could not assign textures under the coverage constraints")


def _made_up_names(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct pronounceable non-words of 2–3 syllables (and an optional coda)."""
    names: list[str] = []
    while len(names) < count:
        parts = rng.choice(len(_SYLLABLES), size=int(rng.integers(2, 4)))
        word = "".join(_SYLLABLES[i] for i in parts)
        if rng.random() < 0.5:
            word += "nrkl"[int(rng.integers(4))]
        if word not in names and word != BACKGROUND:
            names.append(word)
    return names


class SyntheticWorld:
    """Classes, prompt bank and renderer of one procedurally generated world.

    Build with :meth:`generate`. Class 0 is the background; ``seen_ids`` and ``unseen_ids``
    index :attr:`classes` and never include 0.

    Args:
        classes: all classes, background first.
        image_size: S, the side of rendered images.
        texture_amplitude: luminance amplitude of the textures.
        max_objects: at most this many objects per image (at least 1).
        seed: the seed the world was generated with (recorded in the bank).
    """

    def __init__(
        self,
        *,
        classes: Sequence[SyntheticClass],
        image_size: int = 64,
        texture_amplitude: float = 0.22,
        max_objects: int = 4,
        seed: int = 0,
    ) -> None:
        if image_size % 2:
            raise ValueError(f"image_size must be even (period-2 textures), got {image_size}")
        if not classes or classes[0].name != BACKGROUND:
            raise ValueError("classes must start with the background class")
        self.classes = list(classes)
        self.image_size = image_size
        self.texture_amplitude = texture_amplitude
        self.max_objects = max_objects
        self.seed = seed
        self.seen_ids = [i for i, c in enumerate(self.classes) if i and c.seen]
        self.unseen_ids = [i for i, c in enumerate(self.classes) if i and not c.seen]
        self._textures = self._texture_patterns(image_size)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        seed: int = 0,
        *,
        image_size: int = 64,
        unseen_matchings: int = 2,
        seen_matchings: int = 3,
        seen_textures: int = 4,
        unseen_textures: int = 2,
        max_objects: int = 4,
        texture_amplitude: float = 0.22,
    ) -> SyntheticWorld:
        """A world whose split and names depend only on ``seed``.

        Args:
            seed: world seed (class split, textures, names).
            image_size: S.
            unseen_matchings: colour/shape matchings of the unseen classes; each gives
                6 × ``unseen_textures`` unseen classes. With 2 or more, some unseen classes
                differ only in colour and some only in shape, so every attribute is needed.
            seen_matchings: colour/shape matchings of the seen classes.
            seen_textures: textures per seen colour+shape pair (2–4). All four (the default)
                make texture independent of colour and shape in training, so that no attribute
                can be inferred from the others instead of being seen.
            unseen_textures: textures per unseen colour+shape pair (2–4).
            max_objects: objects per image, 1..max_objects.
            texture_amplitude: luminance amplitude of the textures (≤ 0.22: no clipping).
        """
        n = len(COLORS)
        if unseen_matchings < 1 or seen_matchings < 1 or unseen_matchings + seen_matchings > n:
            raise ValueError(
                f"need unseen_matchings, seen_matchings >= 1 with a sum <= {n}, got "
                f"{unseen_matchings} and {seen_matchings}"
            )
        for count in (seen_textures, unseen_textures):
            if not 2 <= count <= len(TEXTURES):
                raise ValueError(f"textures per pair must lie in [2, {len(TEXTURES)}], got {count}")
        rng = np.random.default_rng(seed)
        colors = list(COLORS)
        assert n == len(SHAPES)
        # A random Latin square: matching j pairs colour c[i] with shape s[(i + j) mod n].
        color_order, shape_order, matchings = (rng.permutation(n) for _ in range(3))
        pairs: list[tuple[str, str, bool]] = []
        for m, j in enumerate(matchings[: unseen_matchings + seen_matchings]):
            for i in range(n):
                shape = SHAPES[shape_order[(i + j) % n]]
                pairs.append((colors[color_order[i]], shape, m >= unseen_matchings))
        triples = _assign_textures(rng, pairs, seen_textures, unseen_textures)
        names = _made_up_names(rng, len(triples))
        order = rng.permutation(len(triples))  # class ids do not reveal the split
        classes = [SyntheticClass(BACKGROUND, "", "", "", seen=True)]
        classes += [SyntheticClass(names[k], *triples[k]) for k in order]
        return cls(
            classes=classes,
            image_size=image_size,
            texture_amplitude=texture_amplitude,
            max_objects=max_objects,
            seed=seed,
        )

    # -- vocabulary --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """All class names, background first."""
        return [c.name for c in self.classes]

    def bank(self) -> PromptBank:
        """The attribute bank of every class (background first), in lmseg's bank schema."""
        return PromptBank(
            vocabulary=f"synthetic-{self.seed}",
            provenance=Provenance(
                model="procedural (lmseg.synthetic.world)",
                prompt="fixed sentences filled with each class's colour, shape and texture",
                created="2026-01-01",
                notes="name-free attribute sentences of a made-up-class world",
            ),
            classes=[c.describe() for c in self.classes],
        )

    def partners(self, class_id: int, pool: Sequence[int] | None = None) -> list[int]:
        """Classes of ``pool`` (default: seen) that differ from ``class_id`` in exactly one
        attribute: the hard negatives of a training vocabulary."""
        pool = self.seen_ids if pool is None else pool
        mine = self.classes[class_id].attributes
        return [
            k
            for k in pool
            if k != class_id
            and sum(a != b for a, b in zip(mine, self.classes[k].attributes, strict=True)) == 1
        ]

    # -- rendering ---------------------------------------------------------------------------
    @staticmethod
    def _texture_patterns(size: int) -> dict[str, np.ndarray]:
        """±1 patterns ``(S, S)`` of period 2 in image coordinates (0 for plain)."""
        y, x = np.mgrid[:size, :size]
        return {
            "plain": np.zeros((size, size), np.float32),
            "horizontally striped": (2.0 * (y % 2) - 1).astype(np.float32),
            "vertically striped": (2.0 * (x % 2) - 1).astype(np.float32),
            "checkered": (2.0 * ((x + y) % 2) - 1).astype(np.float32),
        }

    def _shape_mask(self, shape: str, cy: float, cx: float, r: float) -> np.ndarray:
        """``(S, S)`` bool mask of a shape, made of whole aligned 2×2 blocks: drawn on the
        half-resolution grid and repeated, so that every texture stays zero-mean over every
        block, object edges included."""
        half = self.image_size // 2
        y, x = (np.mgrid[:half, :half].astype(np.float32) + 0.5) * 2  # block centres
        dy, dx = y - cy, x - cx
        kind = shape.split()[1]
        if kind == "circle":
            mask = dy**2 + dx**2 <= r**2
        elif kind == "square":  # the circle's area
            a = r * np.sqrt(np.pi) / 2
            mask = (np.abs(dy) <= a) & (np.abs(dx) <= a)
        else:  # upward equilateral triangle of the circle's area, centred on its centroid
            side = r * np.sqrt(4 * np.pi / np.sqrt(3))
            h = side * np.sqrt(3) / 2
            top = -2 * h / 3
            mask = (dy >= top) & (dy <= h / 3) & (np.abs(dx) <= (dy - top) / h * side / 2)
        return mask.repeat(2, axis=0).repeat(2, axis=1)

    @staticmethod
    def _extent(shape: str, r: float) -> float:
        """Radius of a disc that contains the shape."""
        kind = shape.split()[1]
        if kind == "circle":
            return r
        if kind == "square":
            return r * np.sqrt(np.pi / 2)
        side = r * np.sqrt(4 * np.pi / np.sqrt(3))
        return side / np.sqrt(3)

    def render(
        self, rng: np.random.Generator, class_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one scene with one object of each class in ``class_ids`` (some may be dropped
        when they do not fit without overlap).

        Returns:
            image ``(3, S, S)`` float32 RGB in [0, 1], label ``(S, S)`` int64 class ids
            (0 = background).
        """
        s = self.image_size
        image = np.empty((3, s, s), np.float32)
        image[:] = np.asarray(BACKGROUND_RGB, np.float32)[:, None, None]
        label = np.zeros((s, s), np.int64)
        placed: list[tuple[float, float, float]] = []
        for k in class_ids:
            c = self.classes[k]
            lo, hi = _RADIUS[c.shape.split()[0]]
            r = float(rng.uniform(lo, hi)) * s
            extent = self._extent(c.shape, r)
            for _ in range(30):
                cy, cx = rng.uniform(extent + 1, s - extent - 1, size=2)
                if all(
                    (cy - py) ** 2 + (cx - px) ** 2 > (extent + pe + 1.5) ** 2
                    for py, px, pe in placed
                ):
                    break
            else:
                continue
            placed.append((float(cy), float(cx), extent))
            mask = self._shape_mask(c.shape, float(cy), float(cx), r)
            rgb = np.asarray(COLORS[c.color], np.float32) + rng.uniform(-0.03, 0.03, 3)
            pattern = self.texture_amplitude * self._textures[c.texture]
            for ch in range(3):
                image[ch][mask] = (rgb[ch] + pattern)[mask]
            label[mask] = k
        return np.clip(image, 0.0, 1.0), label

    def sample(
        self, rng: np.random.Generator, pool: Sequence[int], batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of scenes whose objects are drawn (distinct within an image) from ``pool``.

        Returns:
            images ``(B, 3, S, S)`` float32 in [0, 1], labels ``(B, S, S)`` int64 class ids.
        """
        images, labels = [], []
        for _ in range(batch_size):
            n = int(rng.integers(1, min(self.max_objects, len(pool)) + 1))
            ids = [int(pool[i]) for i in rng.choice(len(pool), size=n, replace=False)]
            image, label = self.render(rng, ids)
            images.append(image)
            labels.append(label)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))

    def dataset(
        self, seed: int, pool: Sequence[int], num_images: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed, seeded set of scenes (an evaluation split): ``(N, 3, S, S)``, ``(N, S, S)``."""
        return self.sample(np.random.default_rng(seed), pool, num_images)

    # -- checks ------------------------------------------------------------------------------
    def coverage(self, ids: Sequence[int] | None = None) -> dict[str, dict[str, int]]:
        """How many classes of ``ids`` (default: seen) use each attribute value."""
        ids = self.seen_ids if ids is None else ids
        out: dict[str, dict[str, int]] = {"color": {}, "shape": {}, "texture": {}}
        for k in ids:
            c = self.classes[k]
            for attribute, value in zip(out, c.attributes, strict=True):
                out[attribute][value] = out[attribute].get(value, 0) + 1
        return out

    def unseen_pairs_in_training(self) -> list[tuple[str, str]]:
        """Colour+shape pairs shared by a seen and an unseen class (empty by construction)."""
        seen = {self.classes[k].attributes[:2] for k in self.seen_ids}
        unseen = {self.classes[k].attributes[:2] for k in self.unseen_ids}
        return sorted(seen & unseen)
