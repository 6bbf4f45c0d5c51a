"""CAT-Seg checkpoint conversion: every tensor lands where CAT-Seg's layout says, by value.

The expected CAT-Seg -> lmseg name mapping is written out here from the two layouts (CAT-Seg's
released aggregator keys in ``data/catseg_aggregator_keys.txt``; OpenAI's CLIP layout with the
attention input projection split into q/k/v, as CAT-Seg stores it), independently of the
converter's rename rules. A synthetic CAT-Seg state dict gets distinct values in every element
of every tensor, so a tensor that lands on the wrong key, two swapped same-shaped tensors or a
q/k/v block in the wrong place all fail the value comparison.
"""

from pathlib import Path

import pytest
import torch

import lmseg
from lmseg.checkpoint import CheckpointError
from lmseg.cli import main
from lmseg.convert import _rename, convert_state_dict
from lmseg.weights import RandomWeightsWarning

REFERENCE = Path(__file__).parent / "data" / "catseg_aggregator_keys.txt"

# CAT-Seg's prefixes (released checkpoints).
CATSEG_CLIP = "sem_seg_head.predictor.clip_model."
CATSEG_AGG = "sem_seg_head.predictor.transformer."
# lmseg's module names: the one place to edit if the model's attributes are renamed.
CLIP = "vision_language_encoder.model."
COST = "cost_volume."
AGG = "aggregator."
DEC = "decoder."


def reference_keys() -> dict[str, tuple[int, ...]]:
    """CAT-Seg's aggregator parameters (ViT-B, 2 layers): name without prefix -> shape."""
    rows = {}
    for line in REFERENCE.read_text().splitlines():
        name, shape = line.split(" ", 1)
        rows[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return rows


def _catseg_checkpoint(model: lmseg.LMSeg) -> dict[str, torch.Tensor]:
    """A synthetic CAT-Seg state dict with CAT-Seg's names, shaped for ``model`` (random values;
    :class:`Synthetic` below gives distinct values and the expected mapping)."""
    own = model.state_dict()
    source = {}
    for name in reference_keys():
        source[CATSEG_AGG + name] = torch.randn(own[_rename(CATSEG_AGG + name)].shape)
    for key, value in own.items():
        if not key.startswith("vision_language_encoder.model."):
            continue
        rest = key[len("vision_language_encoder.model."):]
        base = "sem_seg_head.predictor.clip_model." + rest
        if rest.endswith("attn.in_proj_weight"):
            for part, chunk in zip("qkv", torch.randn(value.shape).chunk(3), strict=True):
                source[base.replace("in_proj_weight", f"{part}_proj_weight")] = chunk
        else:
            source[base] = torch.randn(value.shape)
    for i in (1, 2):
        target = own[f"decoder.guidance_upsamplers.{i - 1}.weight"]
        source[f"upsample{i}.weight"] = torch.randn(target.shape)
        source[f"upsample{i}.bias"] = torch.randn(target.shape[1])
    source[CATSEG_AGG + "layers.0.swin_block.block_2.attn_mask"] = torch.zeros(4, 36, 36)
    return source


def aggregator_table(num_layers: int) -> dict[str, str]:
    """CAT-Seg aggregator/decoder name (after ``transformer.``, or ``upsampleN.``) -> lmseg name."""
    table = {
        "conv1.weight": COST + "embed.weight",
        "conv1.bias": COST + "embed.bias",
        "guidance_projection.0.weight": AGG + "appearance_projection.0.weight",
        "guidance_projection.0.bias": AGG + "appearance_projection.0.bias",
        "text_guidance_projection.0.weight": AGG + "text_projection.0.weight",
        "text_guidance_projection.0.bias": AGG + "text_projection.0.bias",
        "head.weight": DEC + "head.weight",
        "head.bias": DEC + "head.bias",
    }
    for p in ("weight", "bias"):
        for i in (0, 1):
            table[f"decoder_guidance_projection.{i}.0.{p}"] = DEC + f"guidance_projections.{i}.0.{p}"
    for stage in (1, 2):
        src, dst = f"decoder{stage}.", DEC + f"stages.{stage - 1}."
        table[src + "up.weight"] = dst + "up.weight"
        table[src + "up.bias"] = dst + "up.bias"
        # DoubleConv's Sequential: conv (no bias), GroupNorm, ReLU, conv (no bias), GroupNorm, ReLU.
        table[src + "conv.double_conv.0.weight"] = dst + "conv.conv1.weight"
        table[src + "conv.double_conv.3.weight"] = dst + "conv.conv2.weight"
        for p in ("weight", "bias"):
            table[src + f"conv.double_conv.1.{p}"] = dst + f"conv.norm1.{p}"
            table[src + f"conv.double_conv.4.{p}"] = dst + f"conv.norm2.{p}"
    swin = [("norm1", "norm1"), ("attn.q", "q"), ("attn.k", "k"), ("attn.v", "v"),
            ("attn.proj", "proj"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
    classes = [("attention.q", "q"), ("attention.k", "k"), ("attention.v", "v"),
               ("MLP.0", "mlp.fc1"), ("MLP.2", "mlp.fc2"), ("norm1", "norm1"), ("norm2", "norm2")]
    for layer in range(num_layers):
        src, dst = f"layers.{layer}.", AGG + f"layers.{layer}."
        for p in ("weight", "bias"):
            table[src + f"swin_block.guidance_norm.{p}"] = dst + f"spatial.guidance_norm.{p}"
            for block in (1, 2):
                for a, b in swin:
                    table[src + f"swin_block.block_{block}.{a}.{p}"] = (
                        dst + f"spatial.blocks.{block - 1}.{b}.{p}"
                    )
            for a, b in classes:
                table[src + f"attention.{a}.{p}"] = dst + f"classes.{b}.{p}"
        for token in ("padding_tokens", "padding_guidance"):
            table[src + f"attention.{token}"] = dst + f"classes.{token}"
    return table


def clip_table(visual_layers: int, text_layers: int) -> tuple[dict[str, str], dict[str, str]]:
    """OpenAI CLIP layout as CAT-Seg stores it -> open_clip's (lmseg's) names.

    Returns ``(plain, qkv)``: one-to-one names, and each attention's
    ``{q,k,v}_proj_weight`` prefix -> the packed ``in_proj_weight`` it becomes (q; k; v rows).
    """
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    names = ["visual.class_embedding", "visual.positional_embedding", "visual.proj",
             "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias",
             "visual.ln_post.weight", "visual.ln_post.bias", "token_embedding.weight",
             "positional_embedding", "text_projection", "logit_scale", "ln_final.weight",
             "ln_final.bias"]
    qkv = {}
    for tower, depth in (("visual.transformer", visual_layers), ("transformer", text_layers)):
        for i in range(depth):
            names += [f"{tower}.resblocks.{i}.{b}" for b in block]
            qkv[f"{tower}.resblocks.{i}.attn."] = CLIP + f"{tower}.resblocks.{i}.attn.in_proj_weight"
    plain = {CATSEG_CLIP + n: CLIP + n for n in names}
    return plain, {CATSEG_CLIP + k: v for k, v in qkv.items()}


# Source keys a real checkpoint holds and the conversion must drop (and nothing else).
EXPECTED_UNUSED = ["layers.0.swin_block.block_2.attn_mask", "layers.1.swin_block.block_2.attn_mask"]
NORMALISATION_BUFFERS = ["pixel_mean", "pixel_std", "clip_pixel_mean", "clip_pixel_std"]


class Synthetic:
    """A CAT-Seg state dict shaped for an lmseg model, every element a distinct integer."""

    def __init__(self, model: lmseg.LMSeg, *, distinct: bool = True) -> None:
        own = model.state_dict()
        self.distinct = distinct
        visual = len(model.vision_language_encoder.model.visual.transformer.resblocks)
        text = len(model.vision_language_encoder.model.transformer.resblocks)
        agg = aggregator_table(len(model.aggregator.layers))
        self.plain, self.qkv = clip_table(visual, text)
        self.plain.update({CATSEG_AGG + name: target for name, target in agg.items()})
        self.plain["upsample1.weight"] = DEC + "guidance_upsamplers.0.weight"
        self.plain["upsample1.bias"] = DEC + "guidance_upsamplers.0.bias"
        self.plain["upsample2.weight"] = DEC + "guidance_upsamplers.1.weight"
        self.plain["upsample2.bias"] = DEC + "guidance_upsamplers.1.bias"
        self.state: dict[str, torch.Tensor] = {}
        self._next = 0
        for source, target in self.plain.items():
            self.state[source] = self._distinct(own[target].shape)
        for prefix, target in self.qkv.items():
            rows, width = own[target].shape
            for part in "qkv":
                self.state[prefix + f"{part}_proj_weight"] = self._distinct((rows // 3, width))
        for name in EXPECTED_UNUSED:
            self.state[CATSEG_AGG + name] = self._distinct((4, 36, 36))
        for name in NORMALISATION_BUFFERS:
            self.state[name] = self._distinct((3, 1, 1))

    def _distinct(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        if not self.distinct:
            return torch.empty(shape)
        n = int(torch.Size(shape).numel())
        # consecutive integers: exact in float32 up to 2**24, far above a tiny model's size
        values = torch.arange(self._next, self._next + n, dtype=torch.float32).reshape(shape)
        self._next += n
        assert self._next < 2**24
        return values


def test_table_covers_catseg_released_aggregator_layout_exactly():
    rows = reference_keys()
    table = aggregator_table(num_layers=2)
    assert set(table) == set(rows), (sorted(set(rows) - set(table)), sorted(set(table) - set(rows)))
    assert len(set(table.values())) == len(table)  # one-to-one


def test_every_reference_key_lands_on_the_vitb_parameter_of_its_shape():
    with pytest.warns(RandomWeightsWarning):  # the layout is what is checked, not the weights
        model = lmseg.create_model("catseg_vitb16", pretrained=False)
    # OpenAI CLIP's activation: converted CAT-Seg weights are wrong under exact GELU.
    assert type(model.vision_language_encoder.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert model.vision_language_encoder.text_architecture == "QuickGELU"
    own = model.state_dict()
    table = aggregator_table(num_layers=2)
    for name, shape in reference_keys().items():
        assert tuple(own[table[name]].shape) == shape, name
    # The ViT-B CLIP of CAT-Seg: 12 + 12 blocks; the whole model converts strictly.
    synthetic = Synthetic(model, distinct=False)
    out = convert_state_dict(synthetic.state, own)
    assert set(out) == set(own)


@pytest.fixture(scope="module")
def tiny():
    return lmseg.create_model("catseg_tiny")


def test_every_tensor_is_converted_by_value_from_its_source_key(tiny):
    synthetic = Synthetic(tiny)
    own = tiny.state_dict()
    out = convert_state_dict(synthetic.state, own)
    assert set(out) == set(own)
    expected: dict[str, torch.Tensor] = {t: synthetic.state[s] for s, t in synthetic.plain.items()}
    for prefix, target in synthetic.qkv.items():
        expected[target] = torch.cat([synthetic.state[prefix + f"{p}_proj_weight"] for p in "qkv"])
    assert set(expected) == set(own), sorted(set(own) ^ set(expected))
    wrong = [k for k in own if not torch.equal(out[k], expected[k])]
    assert not wrong, f"{len(wrong)} tensors differ from their CAT-Seg source, e.g. {wrong[:5]}"
    # q, k, v are the first, second and third thirds of the packed projection
    target = CLIP + "visual.transformer.resblocks.1.attn.in_proj_weight"
    third = out[target].shape[0] // 3
    source = CATSEG_CLIP + "visual.transformer.resblocks.1.attn."
    for i, part in enumerate("qkv"):
        assert torch.equal(out[target][i * third:(i + 1) * third], synthetic.state[source + f"{part}_proj_weight"])


def test_an_extra_key_that_extends_a_known_name_is_refused(tiny):
    # A key that only starts like a known one (e.g. a second cost embedding) must not be
    # renamed onto the known target and silently overwrite it.
    synthetic = Synthetic(tiny)
    for extra in (CATSEG_AGG + "conv1.weight_extra", CATSEG_AGG + "head.bias.old",
                  "upsample1.weight.ema", CATSEG_AGG + "layers.0.swin_block.block_2.attn_mask2"):
        source = dict(synthetic.state)
        source[extra] = torch.zeros(1)
        with pytest.raises(CheckpointError) as error:
            convert_state_dict(source, tiny.state_dict())
        # named as an unknown source key, or as the unknown lmseg key it would rename to
        tail = extra.rsplit(".", 1)[-1]
        assert f"{tail}']" in str(error.value), (extra, str(error.value))


def test_missing_misshapen_and_unknown_keys_are_named(tiny):
    source = Synthetic(tiny).state
    missing = dict(source)
    del missing[CATSEG_AGG + "head.bias"]
    with pytest.raises(CheckpointError, match=r"target keys not filled \['decoder.head.bias'\]"):
        convert_state_dict(missing, tiny.state_dict())
    misshapen = dict(source)
    misshapen[CATSEG_AGG + "conv1.weight"] = torch.randn(32, 2, 7, 7)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches \['cost_volume.embed.weight: checkpoint \(32, 2, 7, 7\) vs lmseg \(32, 1, 7, 7\)'\]",
    ):
        convert_state_dict(misshapen, tiny.state_dict())
    unknown = dict(source)
    unknown["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unknown source keys \['sem_seg_head.predictor.extra.weight'\]"):
        convert_state_dict(unknown, tiny.state_dict())
    half = dict(source)
    del half[CATSEG_CLIP + "transformer.resblocks.0.attn.k_proj_weight"]
    with pytest.raises(CheckpointError, match=r"transformer.resblocks.0.attn.: missing \['k'\] projection"):
        convert_state_dict(half, tiny.state_dict())


def test_cli_converts_a_detectron2_checkpoint(tiny, tmp_path, capsys):
    synthetic = Synthetic(tiny)
    path = tmp_path / "catseg.pth"
    torch.save({"model": synthetic.state, "iteration": 79999}, path)
    out = tmp_path / "converted.safetensors"
    assert main(["convert-catseg", str(path), str(out), "--model", "catseg_tiny"]) == 0
    model = lmseg.load_model(out)
    assert model.vision_language_encoder.text_architecture == "QuickGELU"  # the config keeps it across reloads
    state = model.state_dict()
    for source, target in synthetic.plain.items():
        assert torch.equal(state[target], synthetic.state[source]), target
    capsys.readouterr()
    assert main(["convert-catseg", str(tmp_path / "nope.pth"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not read CAT-Seg checkpoint") and "nope.pth" in err
