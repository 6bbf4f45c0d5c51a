"""The model zoo: where every variant's weights come from, and how a request for weights resolves.

The table is data: one :class:`WeightsEntry` per (variant, tag), naming each file's source
(a Hugging Face repository file or a plain URL), its checksum and size where published, its
licence, what it contains and which conversion it needs. Users extend it with
:func:`register_weights`.

:func:`resolve` turns ``pretrained=`` (``True``, ``False``, a tag, a file, ``"hf-hub:org/name"``)
into a :class:`WeightsPlan`: the full-model checkpoint file if any, the CLIP weights file, the
SAM checkpoint file, and which parts stay random. It downloads, verifies and converts what is
needed; the factory only builds the model the plan describes.

Released weights:

- **CAT-Seg** (``catseg_vitb16``/``catseg_vitl14``, tag ``catseg``): the CVPR 2024 checkpoints
  linked from CAT-Seg's README, files of the Hugging Face Space ``hamacojr/CAT-Seg-weights``.
  Downloaded once, converted once with the strict converter (:mod:`lmseg.convert`) and cached
  as lmseg safetensors.
- **CLIP**: open_clip's pretrained tags (``"openai"``), fetched from the Hub repository that
  open_clip's pretrained config names and handed to open_clip as a file.
- **SAM**: Meta's official ``segment_anything`` checkpoints.
- **LMSeg**: no trained LMSeg weights have been released. The ``lmseg_*`` variants default to
  CLIP (openai) + SAM (official) + an **untrained** aggregator, and say so when built.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lmseg.download import download_url, forget, verify_file
from lmseg.encoders.sam import SAM_CHECKPOINTS, SAM_DOWNLOAD
from lmseg.hub import CHECKPOINT_FILE, hub_download, hub_url, is_hub_id, parse_hub_id
from lmseg.weights import (
    ChecksumError,
    RandomWeightsWarning,
    WeightsNotFoundError,
    cache_dir,
)

__all__ = [
    "FileSource",
    "WeightsEntry",
    "WeightsPlan",
    "checkpoint_file",
    "clip_source",
    "default_tag",
    "get_weights",
    "list_weights",
    "locate_checkpoint",
    "register_weights",
    "resolve",
    "split_name",
    "unregister_weights",
]

def random_by_design(variant: str) -> bool:
    """A test/demo variant that is random on purpose (``tiny=True`` in the model registry)."""
    from lmseg.factory import get_variant

    try:
        return get_variant(variant).tiny
    except KeyError:
        return False


def _trained_head(config: Any) -> tuple[str, ...]:
    """``("aggregator",)`` for models with a trained head; none for the training-free one."""
    return ("aggregator",) if config.aggregator is not None else ()


CheckpointFormat = Literal["lmseg", "catseg"]


@dataclass(frozen=True)
class FileSource:
    """Where one file comes from: a Hub repository file or a plain URL, with what is known of it.

    Attributes:
        url: plain download address (``https://...``); or None for a Hub file.
        repo_id: Hub repository ``org/name``.
        repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
        filename: file in the repository.
        revision: branch, tag or commit of the repository.
        sha256: published sha256 (hex), or None when not published.
        md5: published MD5 (hex), or None.
        size: size in bytes, or None when not published.
        folder: sub-folder of lmseg's cache for plain-URL files.
    """

    url: str | None = None
    repo_id: str | None = None
    repo_type: str = "model"
    filename: str | None = None
    revision: str = "main"
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    folder: str = "downloads"

    def __post_init__(self) -> None:
        if (self.url is None) == (self.repo_id is None):
            raise ValueError("a FileSource needs exactly one of url= or repo_id= (+ filename=)")
        if self.repo_id is not None and not self.filename:
            raise ValueError(f"the Hub source {self.repo_id} needs filename=")

    @property
    def name(self) -> str:
        """The file's name."""
        if self.url is not None:
            return self.url.rstrip("/").rsplit("/", 1)[-1]
        return str(self.filename).rsplit("/", 1)[-1]

    @property
    def address(self) -> str:
        """The file's canonical address (URL), for tables and messages."""
        if self.url is not None:
            return self.url
        return hub_url(str(self.repo_id), str(self.filename), repo_type=self.repo_type, revision=self.revision)

    def cache_path(self) -> Path | None:
        """Where a plain-URL file is cached (None for Hub files, which live in the Hub cache)."""
        return cache_dir(self.folder) / self.name if self.url is not None else None

    def cached(self) -> Path | None:
        """The cached copy if there is one (not verified; no network)."""
        if self.url is not None:
            path = self.cache_path()
            return path if path is not None and path.is_file() else None
        from huggingface_hub import constants, try_to_load_from_cache

        found = try_to_load_from_cache(
            str(self.repo_id), str(self.filename), cache_dir=constants.HF_HUB_CACHE,
            revision=self.revision, repo_type=self.repo_type,
        )
        return Path(found) if isinstance(found, str) else None

    def fetch(self, *, cache: str | os.PathLike[str] | None = None) -> Path:
        """The verified local file, downloaded first if needed (see :mod:`lmseg.download`,
        :func:`lmseg.hub.hub_download`)."""
        if self.url is not None:
            path = self.cache_path()
            assert path is not None
            return download_url(self.url, path, sha256=self.sha256, md5=self.md5, size=self.size)
        return hub_download(
            str(self.repo_id), str(self.filename), repo_type=self.repo_type,
            revision=self.revision, sha256=self.sha256, size=self.size, cache_dir=cache,
        )


@dataclass(frozen=True)
class WeightsEntry:
    """One (variant, tag) of the zoo.

    Attributes:
        variant: model variant (``lmseg.list_models()``).
        tag: weights name, unique per variant.
        description: what the weights contain, in one line.
        license: licence of the weights.
        checkpoint: a full-model checkpoint, or None (then CLIP/SAM parts, the rest random).
        checkpoint_format: ``"lmseg"`` (safetensors, loaded as is) or ``"catseg"`` (a released
            CAT-Seg ``.pth``, converted once and cached).
        vision_language: weights of the vision-language encoder (CLIP role) when there is no
            full checkpoint: an open_clip pretrained tag (``"openai"``) or a file source.
        spatial: weights of the spatial encoder (SAM role) when there is no full checkpoint:
            ``"official"`` (Meta's checkpoint of the variant's SAM size) or a file source.
        metrics: published mIoU per benchmark (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b).
        default: the variant's default tag (``pretrained=True``).
    """

    variant: str
    tag: str
    description: str
    license: str
    checkpoint: FileSource | None = None
    checkpoint_format: CheckpointFormat = "lmseg"
    vision_language: str | FileSource | None = None
    spatial: str | FileSource | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    default: bool = False

    def random_parts(self, config: Any) -> tuple[str, ...]:
        """Parts a model of ``config`` built from this entry leaves randomly initialised."""
        if self.checkpoint is not None:
            return ()
        parts = [] if self.vision_language is not None else [part_name(config, "vision_language")]
        if config.spatial_encoder is not None and self.spatial is None:
            parts.append(part_name(config, "spatial"))
        return (*parts, *_trained_head(config))


# -- the table ----------------------------------------------------------------------------------
_TABLE: dict[str, dict[str, WeightsEntry]] = {}


def register_weights(
    variant: str,
    tag: str,
    *,
    description: str,
    license: str,
    checkpoint: FileSource | None = None,
    checkpoint_format: CheckpointFormat = "lmseg",
    vision_language: str | FileSource | None = None,
    spatial: str | FileSource | None = None,
    metrics: Mapping[str, float] | None = None,
    default: bool = False,
    overwrite: bool = False,
) -> WeightsEntry:
    """Add weights to the zoo (see :class:`WeightsEntry` for the fields).

    Args:
        overwrite: replace an existing (variant, tag) instead of raising.

    Returns:
        The new entry. With ``default=True`` it becomes the variant's default tag.
    """
    if checkpoint_format not in ("lmseg", "catseg"):
        raise ValueError(f"checkpoint_format must be 'lmseg' or 'catseg', not {checkpoint_format!r}")
    if ":" in tag or not tag:
        raise ValueError(f"invalid weights tag {tag!r} (non-empty, no ':')")
    tags = _TABLE.setdefault(variant, {})
    if tag in tags and not overwrite:
        raise ValueError(f"{variant}:{tag} is already registered (pass overwrite=True to replace it)")
    entry = WeightsEntry(
        variant=variant, tag=tag, description=description, license=license,
        checkpoint=checkpoint, checkpoint_format=checkpoint_format,
        vision_language=vision_language, spatial=spatial,
        metrics=dict(metrics or {}), default=default,
    )
    if default:
        for other, old in tags.items():
            if old.default:
                tags[other] = replace(old, default=False)
    tags[tag] = entry
    return entry


def unregister_weights(variant: str, tag: str) -> None:
    """Remove a (variant, tag) from the zoo."""
    _TABLE.get(variant, {}).pop(tag, None)


def list_weights(variant: str | None = None) -> list[WeightsEntry]:
    """Every entry of the zoo, or a variant's."""
    variants = [variant] if variant is not None else list(_TABLE)
    return [entry for v in variants for entry in _TABLE.get(v, {}).values()]


def get_weights(variant: str, tag: str) -> WeightsEntry:
    """The entry of ``variant:tag``; KeyError naming the known tags."""
    tags = _TABLE.get(variant, {})
    if tag not in tags:
        known = ", ".join(tags) or "none"
        raise KeyError(f"{variant} has no weights tagged {tag!r} (known tags: {known})")
    return tags[tag]


def default_tag(variant: str) -> str | None:
    """The tag ``pretrained=True`` loads, or None."""
    return next((e.tag for e in _TABLE.get(variant, {}).values() if e.default), None)


def split_name(spec: str) -> tuple[str, str | None]:
    """``"catseg_vitb16:catseg"`` -> ``("catseg_vitb16", "catseg")``; no tag -> None."""
    name, _, tag = spec.partition(":")
    return name, tag or None


# -- released weights ---------------------------------------------------------------------------
# Meta's segment_anything checkpoints. The six hex digits in each name start its MD5. Full MD5s
# as verified by IOPaint (github.com/Sanster/IOPaint, iopaint/plugins/interactive_seg.py @2f83302);
# sha256s as verified by SlicerSegmentWithSAM (github.com/mazurowski-lab/SlicerSegmentWithSAM,
# SegmentWithSAM/SegmentWithSAM.py @09079a9); sizes as served by dl.fbaipublicfiles.com (the same
# byte counts recorded by several independent public download manifests).
SAM_WEIGHTS: dict[str, FileSource] = {
    "vit_b": FileSource(
        url=SAM_DOWNLOAD + SAM_CHECKPOINTS["vit_b"], folder="sam", size=375_042_383,
        md5="01ec64d29a2fca3f0661936605ae66f8",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": FileSource(
        url=SAM_DOWNLOAD + SAM_CHECKPOINTS["vit_l"], folder="sam", size=1_249_524_607,
        md5="0b3195507c641ddb6910d2bb5adee89c",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": FileSource(
        url=SAM_DOWNLOAD + SAM_CHECKPOINTS["vit_h"], folder="sam", size=2_564_550_879,
        md5="4b8939a88964f0f4ff5f5b2642c598a6",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}
SAM_LICENSE = "Apache-2.0"  # segment-anything's code and weights

# CAT-Seg's released checkpoints, linked from its README (cvlab-kaist/CAT-Seg @6d3a188). Neither
# their sha256 nor their size is published: sha256=None, size=None until a maintainer records
# them from the real files (`lmseg weights download catseg_vitb16` then `sha256sum` on the file
# `lmseg weights path` names, and `stat -c %s` for the size). Meanwhile every download is checked
# against the sha256 the Hub reports for it, and the strict converter checks every key and shape.
CATSEG_SPACE = "hamacojr/CAT-Seg-weights"
CATSEG_LICENSE = "MIT"  # CAT-Seg's code and weights; the CLIP inside is OpenAI's, MIT too
# mIoU from the same README table (CLIP ViT-B/16 and ViT-L/14, trained on COCO-Stuff).
CATSEG_VITB_MIOU = {"A-847": 12.0, "PC-459": 19.0, "A-150": 31.8, "PC-59": 57.5, "PAS-20": 94.6, "PAS-20b": 77.3}
CATSEG_VITL_MIOU = {"A-847": 16.0, "PC-459": 23.8, "A-150": 37.9, "PC-59": 63.3, "PAS-20": 97.0, "PAS-20b": 82.5}
OPENAI_CLIP_LICENSE = "MIT"  # OpenAI CLIP

for _variant, _file, _miou, _clip in (
    ("catseg_vitb16", "model_base.pth", CATSEG_VITB_MIOU, "ViT-B/16"),
    ("catseg_vitl14", "model_large.pth", CATSEG_VITL_MIOU, "ViT-L/14-336"),
):
    register_weights(
        _variant, "catseg", default=True, license=CATSEG_LICENSE, metrics=_miou,
        checkpoint=FileSource(repo_id=CATSEG_SPACE, repo_type="space", filename=_file),
        checkpoint_format="catseg",
        description=f"CAT-Seg CVPR 2024 release: fine-tuned CLIP {_clip}, aggregator and decoder, "
        "trained on COCO-Stuff",
    )
    register_weights(
        _variant, "openai", license=OPENAI_CLIP_LICENSE, vision_language="openai",
        description=f"CLIP {_clip} (openai) + an untrained aggregator: the start of training",
    )
for _variant, _clip in (("lmseg_vitb16_samb", "ViT-B/16"), ("lmseg_vitl14_samb", "ViT-L/14-336")):
    register_weights(
        _variant, "openai", default=True, license=f"{OPENAI_CLIP_LICENSE} + {SAM_LICENSE}",
        vision_language="openai", spatial="official",
        description=f"CLIP {_clip} (openai) + SAM vit_b (official) + an UNTRAINED aggregator: no "
        "released LMSeg weights exist; train it or load a trained checkpoint",
    )
register_weights(
    "maskclip_vitb16", "openai", default=True, license=OPENAI_CLIP_LICENSE, vision_language="openai",
    description="CLIP ViT-B/16 (openai), training-free (MaskCLIP-style dense features, cosine "
    "similarity): nothing else to download or train",
)


def clip_source(model_name: str, tag: str) -> FileSource:
    """The Hub file (or URL) behind an open_clip pretrained tag, from open_clip's own config.

    ``("ViT-B-16", "openai")`` -> ``timm/vit_base_patch16_clip_224.openai``,
    ``open_clip_model.safetensors``.
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    cfg = open_clip.pretrained.get_pretrained_cfg(model_name, tag)
    if not cfg:
        known = open_clip.pretrained.list_pretrained_tags_by_model(model_name)
        raise WeightsNotFoundError(
            f"{tag!r} is neither a file nor an open_clip pretrained tag for {model_name}; known tags: {known}"
        )
    if cfg.get("hf_hub"):
        # open_clip's form: "org/name/" (its default file) or "org/name/file".
        repo_id, filename = os.path.split(str(cfg["hf_hub"]))
        return FileSource(repo_id=repo_id, filename=filename or HF_SAFE_WEIGHTS_NAME)
    url = str(cfg.get("url", ""))
    # OpenAI's URLs carry the file's sha256 as their second-to-last path segment.
    segments = url.split("/")
    digest = segments[-2] if len(segments) > 1 and re.fullmatch(r"[0-9a-f]{64}", segments[-2]) else None
    return FileSource(url=url, sha256=digest, folder="clip")


# -- plans --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsPlan:
    """What to build: weight files per part and the parts left random.

    Attributes:
        variant: the model variant.
        source: what was asked for (``"catseg_vitb16:catseg"``, a path, an ``hf-hub:`` id,
            ``"random"``).
        checkpoint: a full-model lmseg checkpoint to load after building, or None.
        vision_language: weights of the vision-language encoder (for open_clip: a file, or an
            open_clip tag), or None.
        spatial: weights of the spatial encoder (for SAM: a checkpoint file), or None.
        random_parts: parts left randomly initialised (``"CLIP"``, ``"SAM"``, ``"aggregator"``).
        by_design: a test/demo variant that is random on purpose (never warned about).
    """

    variant: str
    source: str
    checkpoint: Path | None = None
    vision_language: str | None = None
    spatial: str | None = None
    random_parts: tuple[str, ...] = ()
    by_design: bool = False

    def warning(self) -> str | None:
        """The one-line warning for random parts, or None."""
        if self.by_design or not self.random_parts:
            return None
        from lmseg.factory import get_variant

        try:
            config = get_variant(self.variant).config
            complete = [e.tag for e in list_weights(self.variant) if not e.random_parts(config)]
        except KeyError:  # a config that is not a registered variant
            complete = [e.tag for e in list_weights(self.variant) if e.checkpoint is not None]
        hint = (
            f"the released weights are {self.variant}:{complete[0]}"
            if complete
            else "no trained weights have been released for it: train it or load a trained checkpoint"
        )
        if self.random_parts == ("aggregator",):
            return (
                f"lmseg: {self.variant} ({self.source}) has an untrained aggregator (cost "
                f"embedding, aggregation, decoder): its segmentations are meaningless; {hint}"
            )
        *first, last = self.random_parts
        parts = f"{', '.join(first)} and {last}" if first else last
        return (
            f"lmseg: {self.variant} was built with random {parts} weights: its segmentations are "
            f"meaningless; {hint} (lmseg weights list)"
        )

    def warn(self) -> None:
        """Emit :meth:`warning` as a :class:`~lmseg.weights.RandomWeightsWarning`, if any."""
        message = self.warning()
        if message:
            warnings.warn(message, RandomWeightsWarning, stacklevel=3)


def resolve(
    config: Any,
    pretrained: bool | str | os.PathLike[str] | None = True,
    *,
    vision_language: str | os.PathLike[str] | None = None,
    spatial: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> WeightsPlan:
    """Resolve a request for weights into files, downloading and converting what is missing.

    Args:
        config: the variant's model config (``lmseg.factory.get_config(name)``).
        pretrained: ``True``: the variant's default tag; ``False``/``None``: random weights
            (except ``vision_language``/``spatial``); a tag of the variant; a file (an lmseg ``.safetensors``, or
            a released CAT-Seg ``.pth``, detected by content and converted once); or
            ``"hf-hub:org/name[@revision]"`` (a checkpoint pushed with :func:`lmseg.push_to_hub`).
        vision_language: vision-language encoder weights that replace the plan's (an open_clip
            tag or a file). Ignored when a full checkpoint is loaded (it holds them).
        spatial: spatial encoder weights that replace the plan's (for SAM: a path, an official
            file name, or ``"official"``). Ignored when a full checkpoint is loaded.
        cache: huggingface_hub cache folder for Hub files (its default when None).

    Raises:
        WeightsNotFoundError: unknown tag/file, offline and not cached, or not downloadable.
        ChecksumError: a download does not match its recorded digest.
        lmseg.checkpoint.CheckpointError: a file that is neither an lmseg nor a CAT-Seg checkpoint.
    """
    variant = str(config.name)
    has_spatial = config.spatial_encoder is not None
    by_design = random_by_design(variant)
    if pretrained is True:
        tag = default_tag(variant)
        if tag is None:
            if not by_design:
                raise WeightsNotFoundError(
                    f"{variant} has no default weights in the zoo (lmseg weights list); pass "
                    "pretrained=False for random weights, a checkpoint file or an hf-hub: id"
                )
            pretrained = None
        else:
            pretrained = tag
    if pretrained is None or pretrained is False:
        vl_file = _vision_language_file(config, vision_language, cache)
        spatial_file = _spatial_file(config, spatial, cache) if has_spatial else None
        random = [] if vl_file is not None else [part_name(config, "vision_language")]
        if has_spatial and spatial_file is None:
            random.append(part_name(config, "spatial"))
        return WeightsPlan(
            variant, "random", vision_language=vl_file, spatial=spatial_file,
            random_parts=(*random, *_trained_head(config)), by_design=by_design,
        )
    spec = os.fspath(pretrained)
    if is_hub_id(spec):
        repo_id, revision = parse_hub_id(spec)
        path = hub_download(repo_id, CHECKPOINT_FILE, revision=revision, cache_dir=cache)
        return WeightsPlan(variant, spec, checkpoint=path)
    if spec in _TABLE.get(variant, {}):
        return _entry_plan(_TABLE[variant][spec], config, vision_language, spatial, cache)
    if Path(spec).expanduser().is_file():
        return WeightsPlan(variant, spec, checkpoint=checkpoint_file(spec, variant), by_design=by_design)
    tags = ", ".join(_TABLE.get(variant, {})) or "none"
    raise WeightsNotFoundError(
        f"pretrained={spec!r} is neither a file, an hf-hub:org/name id nor a weights tag of "
        f"{variant} (tags: {tags})"
    )


def _entry_plan(
    entry: WeightsEntry, config: Any, vision_language: Any, spatial: Any, cache: Any
) -> WeightsPlan:
    source = f"{entry.variant}:{entry.tag}"
    by_design = random_by_design(entry.variant)
    if entry.checkpoint is not None:
        if entry.checkpoint_format == "catseg":
            path = _converted(entry, cache)
        else:
            path = entry.checkpoint.fetch(cache=cache)
        return WeightsPlan(entry.variant, source, checkpoint=path, by_design=by_design)
    has_spatial = config.spatial_encoder is not None
    vl = vision_language if vision_language is not None else entry.vision_language
    vl_file = _vision_language_file(config, vl, cache)
    sp = spatial if spatial is not None else entry.spatial
    spatial_file = _spatial_file(config, sp, cache) if has_spatial else None
    random = [] if vl_file is not None else [part_name(config, "vision_language")]
    if has_spatial and spatial_file is None:
        random.append(part_name(config, "spatial"))
    return WeightsPlan(
        entry.variant, source, vision_language=vl_file, spatial=spatial_file,
        random_parts=(*random, *_trained_head(config)), by_design=by_design,
    )


def part_name(config: Any, role: str) -> str:
    """A role's name in messages: the weights users know (``CLIP``, ``SAM``), else the type."""
    section = config.vision_language_encoder if role == "vision_language" else config.spatial_encoder
    kind = (section or {}).get("type", role)
    return {"open_clip": "CLIP", "sam": "SAM"}.get(kind, kind)


def _open_clip_name(config: Any) -> str | None:
    """The open_clip architecture of a config's vision-language encoder, or None when it has no
    open_clip pretrained tags (another type, or custom sizes)."""
    section = config.vision_language_encoder
    if section.get("type") != "open_clip" or section.get("model_cfg") is not None:
        return None
    return str(section.get("model_name"))


def _sam_variant(config: Any) -> str | None:
    """The SAM size of a config's spatial encoder (None for other types)."""
    section = config.spatial_encoder or {}
    return str(section.get("variant", "vit_b")) if section.get("type") == "sam" else None


def _vision_language_file(config: Any, weights: Any, cache: Any) -> str | None:
    if weights is None:
        return None
    if isinstance(weights, FileSource):
        return str(weights.fetch(cache=cache))
    weights = os.fspath(weights)
    if Path(weights).expanduser().is_file():
        return weights
    model_name = _open_clip_name(config)
    if model_name is None:
        raise WeightsNotFoundError(
            f"{part_name(config, 'vision_language')} weights {weights!r}: not a file, and "
            f"{config.name}'s vision-language encoder has no open_clip pretrained tags"
        )
    return str(clip_source(model_name, weights).fetch(cache=cache))


def _spatial_file(config: Any, weights: Any, cache: Any) -> str | None:
    if weights is None:
        return None
    if isinstance(weights, FileSource):
        return str(weights.fetch(cache=cache))
    weights = os.fspath(weights)
    if Path(weights).expanduser().is_file():
        return weights
    variant = _sam_variant(config)
    if variant is None:
        if weights == "official":
            raise WeightsNotFoundError(
                f"the zoo has no official {part_name(config, 'spatial')} weights; give a file"
            )
        return weights  # the encoder's builder names what it could not find
    official = SAM_WEIGHTS.get(variant)
    by_name = {s.name: s for s in SAM_WEIGHTS.values()}
    if weights == "official":
        if official is None:
            raise WeightsNotFoundError(f"no official SAM checkpoint for SAM variant {variant!r}")
        return str(official.fetch())
    if weights in by_name:
        return str(by_name[weights].fetch())
    return weights  # a name in $LMSEG_CACHE/sam, or a clear error from the SAM encoder


# -- checkpoints --------------------------------------------------------------------------------
def _converted_path(entry: WeightsEntry) -> Path:
    assert entry.checkpoint is not None
    # A recorded digest in the name: updating it in the table invalidates older conversions.
    digest = f"-{entry.checkpoint.sha256[:12]}" if entry.checkpoint.sha256 else ""
    return cache_dir("zoo") / entry.variant / f"{entry.tag}{digest}.safetensors"


def _converted(entry: WeightsEntry, cache: Any) -> Path:
    """A zoo CAT-Seg checkpoint as a verified lmseg safetensors file, converted once."""
    from filelock import FileLock

    target = _converted_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            try:
                verify_file(target)
                return target
            except ChecksumError:
                forget(target)  # modified in the cache: converted again below
        assert entry.checkpoint is not None
        source = entry.checkpoint.fetch(cache=cache)
        _convert(source, target, entry.variant)
    return target


def _convert(source: Path, target: Path, variant: str | None) -> None:
    from lmseg.convert import convert_catseg

    convert_catseg(source, target, model=variant)
    verify_file(target)  # records the digest: a later change in the cache is caught


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    return "unknown"


def checkpoint_file(path: str | os.PathLike[str], variant: str | None = None) -> Path:
    """An lmseg safetensors checkpoint for ``path``: itself, or a CAT-Seg ``.pth`` converted.

    The format is detected from the content, never the name. A released CAT-Seg checkpoint
    (``{"model": state_dict}`` with ``sem_seg_head.predictor.*`` keys, read with
    ``weights_only=True``) is converted once with the strict converter into ``variant`` (detected
    from the CLIP width when None) and cached under ``$LMSEG_CACHE/converted``, keyed by the
    source file's sha256.

    Raises:
        lmseg.checkpoint.CheckpointError: neither an lmseg nor a CAT-Seg checkpoint.
    """
    from filelock import FileLock

    from lmseg.checkpoint import CheckpointError

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    kind = _sniff(path)
    if kind == "safetensors":
        return path
    if kind != "torch":
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint, nor a PyTorch (.pth) file")
    with tempfile.TemporaryDirectory() as tmp:
        # torch.load picks its reader by the ".safetensors" suffix: a neutral name makes the
        # content decide.
        neutral = Path(tmp) / (path.stem + ".pth" if path.suffix == ".safetensors" else path.name)
        neutral.symlink_to(path.resolve())
        try:
            try:  # mmap: the tensors are not read just to look at the key names
                loaded = torch.load(neutral, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (pre-zip) torch.save file cannot be mapped
                loaded = torch.load(neutral, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"could not read {path} as a PyTorch checkpoint: {error}") from error
        state = loaded.get("model", loaded) if isinstance(loaded, Mapping) else None
        if not isinstance(state, Mapping) or not any(str(k).startswith("sem_seg_head.predictor.") for k in state):
            raise CheckpointError(
                f"{path} is a PyTorch file but not a CAT-Seg checkpoint (no sem_seg_head.predictor.* "
                "keys); lmseg loads its own .safetensors checkpoints and released CAT-Seg .pth files"
            )
        del loaded, state
        digest = verify_file(path)
        target = cache_dir("converted") / digest / f"{variant or 'detected'}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if target.is_file():
                try:
                    verify_file(target)
                    return target
                except ChecksumError:
                    forget(target)
            _convert(neutral, target, variant)
    return target


def locate_checkpoint(spec: str | os.PathLike[str], variant: str | None = None) -> Path:
    """A local lmseg checkpoint for a file (see :func:`checkpoint_file`) or an ``hf-hub:`` id."""
    if is_hub_id(spec):
        repo_id, revision = parse_hub_id(str(spec))
        return hub_download(repo_id, CHECKPOINT_FILE, revision=revision)
    return checkpoint_file(spec, variant)


def cached_files(entry: WeightsEntry, config: Any) -> dict[str, Path | None]:
    """Part -> cached file (None when not cached) for an entry; no network, nothing verified."""
    if entry.checkpoint is not None:
        if entry.checkpoint_format == "catseg":
            target = _converted_path(entry)
            return {"checkpoint": target if target.is_file() else None}
        return {"checkpoint": entry.checkpoint.cached()}
    files: dict[str, Path | None] = {}
    for part, source in sources(entry, config).items():
        files[part] = source.cached()
    return files


def sources(entry: WeightsEntry, config: Any) -> dict[str, FileSource]:
    """Part -> where it is downloaded from, for an entry."""
    if entry.checkpoint is not None:
        return {"checkpoint": entry.checkpoint}
    out: dict[str, FileSource] = {}
    vl_name, spatial_name = part_name(config, "vision_language"), part_name(config, "spatial")
    model_name, variant = _open_clip_name(config), _sam_variant(config)
    if isinstance(entry.vision_language, FileSource):
        out[vl_name] = entry.vision_language
    elif isinstance(entry.vision_language, str) and model_name is not None:
        out[vl_name] = clip_source(model_name, entry.vision_language)
    if config.spatial_encoder is not None:
        if isinstance(entry.spatial, FileSource):
            out[spatial_name] = entry.spatial
        elif entry.spatial == "official" and variant in SAM_WEIGHTS:
            out[spatial_name] = SAM_WEIGHTS[variant]
    return out
