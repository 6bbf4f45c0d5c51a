"""Label maps (lmseg.label_maps.upsampled_argmax): equal to the full bilinear upsample + arg-max,
bounded memory at any K, classes that cannot win skipped, NaN/inf refused."""

import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import lmseg
import lmseg.label_maps as label_maps
from lmseg.label_maps import NonFiniteProbabilitiesError, upsampled_argmax
from lmseg.segmenter import Segmenter


def full_upsample(maps: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: every class upsampled at once, then the first maximum over classes."""
    up = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return up, up.argmax(dim=0)


def make_maps(kind: str, k: int, h: int, w: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if kind == "noise":  # no class can be skipped anywhere
        return torch.rand(k, h, w, generator=generator, dtype=dtype)
    if kind == "ties":  # four levels, and class 1 a copy of class k-1: exact ties everywhere
        maps = (torch.rand(k, h, w, generator=generator, dtype=dtype) * 3).round() / 3
        maps[k - 1] = maps[min(1, k - 1)]
        return maps
    # smooth fields, like a model's maps: most tiles have one or a few possible winners
    coarse = torch.rand(1, k, 4, 3, generator=generator, dtype=dtype)
    maps = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    maps[k - 1] = maps[0]  # a tie between the first and the last class, resolved for the first
    return maps


# (K, h', w', H, W, tile): up- and down-sampling, non-square, tiles that do not divide the output
CASES = [
    (7, 12, 12, 150, 110, 32),
    (20, 48, 48, 301, 257, 37),
    (5, 33, 41, 97, 211, 16),
    (9, 64, 80, 40, 100, 13),
    (6, 100, 90, 61, 77, 128),
    (12, 17, 17, 17, 300, 16),
    (1, 10, 10, 90, 90, 8),
    (4, 20, 30, 50, 70, 16),  # height + width <= 128: PyTorch's small-output kernel
]


@pytest.mark.parametrize("kind", ["noise", "ties", "smooth"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_labels_equal_the_full_upsample_and_argmax(case, kind):
    k, h, w, height, width, tile = case
    maps = make_maps(kind, k, h, w, seed=sum(case))
    _, expected = full_upsample(maps, (height, width))
    got = upsampled_argmax(maps, (height, width), tile=tile)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    chunks = maps.split(3)  # class chunks, as evaluation passes them
    torch.testing.assert_close(upsampled_argmax(chunks, (height, width), tile=tile,
                                                class_block=2), expected, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "x".join(map(str, c)))
def test_kept_probabilities_equal_the_full_upsample_bit_for_bit(case):
    k, h, w, height, width, _ = case
    maps = make_maps("ties", k, h, w, seed=1)
    expected_maps, expected = full_upsample(maps, (height, width))
    keep = torch.full((k, height, width), float("nan"))
    got = upsampled_argmax(maps.split(4), (height, width), keep=keep)
    assert torch.equal(keep, expected_maps)
    assert torch.equal(got, expected)


def test_float64_maps_are_exact_too():
    maps = make_maps("noise", 6, 35, 39, seed=3, dtype=torch.float64)
    _, expected = full_upsample(maps, (214, 247))  # 39 -> 247 hits integral source coordinates
    assert torch.equal(upsampled_argmax(maps, (214, 247), tile=50), expected)


def test_three_classes_on_one_thread(monkeypatch):
    # On one thread PyTorch upsamples three channels with another kernel (other rounding).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind in ("noise", "ties"):
            maps = make_maps(kind, 3, 20, 30, seed=4)
            expected_maps, expected = full_upsample(maps, (100, 120))
            assert torch.equal(upsampled_argmax(maps, (100, 120), tile=16), expected)
            keep = torch.empty(3, 100, 120)
            upsampled_argmax(maps, (100, 120), keep=keep)
            assert torch.equal(keep, expected_maps)
    finally:
        torch.set_num_threads(threads)


def test_a_near_tie_at_the_skipping_threshold_is_not_skipped():
    # Class 0 is one float step below class 1 everywhere: its window maximum is below class 1's
    # minimum, but interpolation rounds some pixels to an exact tie, which class 0 wins.
    low = torch.tensor(0.11)
    high = torch.nextafter(low, torch.tensor(1.0))
    maps = torch.stack([low.expand(20, 20), high.expand(20, 20)]).contiguous()
    _, expected = full_upsample(maps, (131, 173))
    assert (expected == 0).any() and (expected == 1).any()  # the case is not vacuous
    assert torch.equal(upsampled_argmax(maps, (131, 173), tile=32), expected)


def test_tiles_with_one_possible_winner_are_not_interpolated(monkeypatch):
    calls = []
    resample = label_maps._resample
    monkeypatch.setattr(label_maps, "_resample", lambda *a: calls.append(1) or resample(*a))
    maps = torch.rand(5, 30, 40) * 0.4
    maps[2, :, :20] = 0.9  # class 2 wins the left half, class 4 the right half
    maps[4, :, 20:] = 0.8
    size, tile = (300, 400), 50
    _, expected = full_upsample(maps, size)
    assert torch.equal(upsampled_argmax(maps, size, tile=tile), expected)
    tiles = (300 // tile) * (400 // tile)
    border_tiles = 2 * (300 // tile)  # the two columns of tiles whose windows reach both halves
    assert 0 < len(calls) <= border_tiles < tiles


def test_a_stream_of_chunks_is_read_one_chunk_at_a_time():
    # Evaluation recombines sliding windows chunk by chunk: the chunks must not pile up.
    maps = make_maps("smooth", 40, 24, 24, seed=6)
    alive: weakref.WeakSet = weakref.WeakSet()
    most = 0

    def chunks():
        nonlocal most
        for part in maps.split(4):
            chunk = part.clone()  # a fresh tensor per chunk
            alive.add(chunk)
            most = max(most, len(alive))
            yield chunk

    size = (300, 400)
    assert torch.equal(upsampled_argmax(chunks(), size, tile=64), full_upsample(maps, size)[1])
    assert most <= 3  # the one just used, the one in use, the one read ahead


class LargestTensor(TorchDispatchMode):
    """The bytes of the largest tensor any operation creates (views and in-place results, which
    share their inputs' storage, excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("keep", [False, True])
def test_nothing_larger_than_the_label_map_is_allocated_at_any_k(keep):
    size = (300, 400)
    label_map_bytes = size[0] * size[1] * 8  # int64
    largest = {}
    for k in (40, 400):
        maps = torch.rand(k, 24, 24)  # noise: every class is a possible winner in every tile
        buffer = torch.empty(k, *size) if keep else None
        upsampled_argmax(maps[:2], size)  # measure the arithmetic once, outside the recording
        with LargestTensor() as recorder:
            labels = upsampled_argmax(maps, size, keep=buffer, tile=64, class_block=8)
        assert torch.equal(labels, full_upsample(maps, size)[1])
        largest[k] = recorder.largest
    assert largest[400] == largest[40] <= label_map_bytes


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("size", [(200, 300), (40, 50)], ids=["tiled", "small"])
@pytest.mark.parametrize("keep", [False, True])
def test_nan_and_inf_probabilities_are_refused(bad, size, keep):
    maps = torch.rand(6, 24, 24)
    maps[4, 3, 5] = bad
    maps[1, 10, 10] = bad
    buffer = torch.empty(6, *size) if keep else None
    with pytest.raises(NonFiniteProbabilitiesError, match=r"NaN/inf probabilities for 2 of 576 "):
        upsampled_argmax(maps.split(4), size, keep=buffer)


@pytest.mark.filterwarnings("ignore::lmseg.prompts.MissingBankWarning")
def test_a_model_producing_nan_gets_an_error_not_labels():
    model = lmseg.create_model("lmseg_tiny")
    model.register_forward_hook(lambda module, inputs, logits: logits * float("nan"))
    image = np.random.default_rng(0).integers(0, 256, (50, 170, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="weights may be corrupt"):
        Segmenter(model).predict(image, ["cat", "sofa", "wall"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="K = 0"):
        upsampled_argmax([], (10, 10))
    with pytest.raises(ValueError, match="one size"):
        upsampled_argmax([torch.rand(2, 5, 5), torch.rand(2, 5, 6)], (100, 100))
    with pytest.raises(ValueError, match="the maps have 2 classes, keep has shape"):
        upsampled_argmax(torch.rand(2, 5, 5), (100, 100), keep=torch.empty(3, 100, 100))
    with pytest.raises(ValueError, match="the maps have at least 4 classes"):
        upsampled_argmax(torch.rand(4, 5, 5).split(2), (100, 100), keep=torch.empty(3, 100, 100))
    with pytest.raises(ValueError, match=r"keep must have shape \(K, 100, 100\)"):
        upsampled_argmax(torch.rand(2, 5, 5), (100, 100), keep=torch.empty(2, 100, 99))
    with pytest.raises(TypeError, match="float32 or float64"):
        upsampled_argmax(torch.rand(2, 5, 5).half(), (10, 10))


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: "x".join(map(str, c)))
def test_every_tile_is_computed_bit_for_bit(case):
    # The tiles' own values (not only their arg-max) equal the full upsample's.
    k, h, w, height, width, tile = case
    maps = make_maps("noise", k, h, w, seed=5)
    expected, _ = full_upsample(maps, (height, width))
    arithmetic = label_maps._arithmetic(maps.device, maps.dtype)
    rows = label_maps._Axis.of(h, height, maps.dtype, maps.device, arithmetic.fused_index)
    cols = label_maps._Axis.of(w, width, maps.dtype, maps.device, arithmetic.fused_index)
    for y0, y1 in label_maps._spans(height, tile):
        for x0, x1 in label_maps._spans(width, tile):
            row_window, col_window = rows.window(y0, y1), cols.window(x0, x1)
            values = label_maps._resample(
                maps[:, row_window, col_window], rows.local(y0, y1, row_window),
                cols.local(x0, x1, col_window), arithmetic,
            )
            assert torch.equal(values, expected[:, y0:y1, x0:x1]), (y0, x0)
