"""Label maps: the arg-max over classes of per-class maps upsampled bilinearly to the image size.

:func:`upsampled_argmax` returns what ``F.interpolate(maps[None], size, mode="bilinear",
align_corners=False)[0].argmax(0)`` returns (the first class wins ties), without ever holding the
``(K, H, W)`` upsampled maps. It works on square tiles of the output:

- a tile's bilinear values only read a small window of the input (the source rows and columns of
  its first and last pixels), so a tile needs ``(k, tile, tile)`` numbers at a time for a block of
  k classes: memory beyond the model's output ``(K, h', w')`` and the label map is a fixed working
  set at any K and image size (plus two ``(K, w')`` tables of window extremes per row of tiles);
- a class whose maximum over the window is below another class's minimum there cannot win
  anywhere in the tile (bilinear values are convex combinations of the window), so only the
  remaining classes are interpolated, and a tile with one remaining class is filled without any;
- the interpolation repeats PyTorch's own arithmetic (source coordinates, weights, the order and
  fusing of the multiply-adds, checked once per device and dtype against ``F.interpolate`` on a
  probe), so the maps, and hence the labels, are identical bit for bit to the full upsample.

The probabilities the arg-max reads are checked for NaN and infinite values on the way
(:class:`NonFiniteProbabilitiesError`): a label map of a broken model is refused, not returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["NonFiniteProbabilitiesError", "upsampled_argmax"]

# Output pixels per tile side, and classes interpolated at once inside a tile: a block's
# (16, 128, 128) float32 maps (1 MiB) stay in this CPU's L2/L3 caches (benchmarks/argmax.py).
TILE = 128
CLASS_BLOCK = 16

# A class is skipped in a tile only if its window maximum is below the best window minimum by this
# fraction of the window's largest magnitude: bilinear values computed in floating point can leave
# the window's [min, max] by a few roundings (~1e-7 relative in float32), far less than 2**-16.
_SKIP_MARGIN = 2.0**-16


class NonFiniteProbabilitiesError(ValueError):
    """The per-class maps hold NaN or infinite values, so no label map can be made from them."""


def upsampled_argmax(
    probabilities: torch.Tensor | Iterable[torch.Tensor],
    size: tuple[int, int],
    *,
    keep: torch.Tensor | None = None,
    tile: int = TILE,
    class_block: int = CLASS_BLOCK,
) -> torch.Tensor:
    """Arg-max over classes of per-class maps upsampled bilinearly (align_corners=False) to ``size``.

    Args:
        probabilities: ``(K, h', w')`` float32/float64 maps, or consecutive class chunks
            ``(k, h', w')`` covering classes 0..K-1 in order, all on one device.
        size: (H, W) of the output.
        keep: optional ``(K, H, W)`` buffer filled with every upsampled map (then every class is
            interpolated everywhere: no class is skipped).
        tile: output tile side in pixels.
        class_block: classes interpolated at once within a tile.

    Returns:
        ``(H, W)`` int64 class indices on the maps' device (the first class wins ties), equal to
        ``F.interpolate(maps[None], size, mode="bilinear", align_corners=False)[0].argmax(0)``.

    Raises:
        NonFiniteProbabilitiesError: a map value read by the upsampling is NaN or infinite.
        ValueError: maps of different sizes, an empty class list or an empty output size.
    """
    maps = _ClassMaps(probabilities)
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"the output size must be positive, got {height}x{width}")
    if keep is not None and tuple(keep.shape) != (maps.num_classes, height, width):
        raise ValueError(
            f"keep must have shape {(maps.num_classes, height, width)}, got {tuple(keep.shape)}"
        )
    if tile < 1 or class_block < 1:
        raise ValueError(f"tile and class_block must be positive, got {tile} and {class_block}")
    if not _generic_kernel(maps, height, width):
        return _whole(maps, height, width, keep)
    if keep is not None:
        return _every_class(maps, height, width, keep)

    arithmetic = _arithmetic(maps.device, maps.dtype)
    rows = _Axis.of(maps.height, height, maps.dtype, maps.device, arithmetic.fused_index)
    cols = _Axis.of(maps.width, width, maps.dtype, maps.device, arithmetic.fused_index)
    labels = torch.empty(height, width, dtype=torch.int64, device=maps.device)
    for y0, y1 in _spans(height, tile):
        row_window = rows.window(y0, y1)
        band_max, band_min = maps.extremes_over_rows(row_window)  # (K, w') each
        for x0, x1 in _spans(width, tile):
            col_window = cols.window(x0, x1)
            classes = _possible_winners(
                band_max[:, col_window].amax(1), band_min[:, col_window].amin(1)
            )
            winner = labels[y0:y1, x0:x1]
            if classes.numel() == 1:  # it beats every other class everywhere in the tile
                winner.fill_(classes[0])
                continue
            tile_rows = rows.local(y0, y1, row_window)
            tile_cols = cols.local(x0, x1, col_window)
            best: torch.Tensor | None = None
            for block in classes.split(class_block):
                values = _resample(
                    maps.window(block, row_window, col_window), tile_rows, tile_cols, arithmetic
                )  # (k, y1 - y0, x1 - x0)
                value, index = values.max(dim=0)  # the first maximum: the first class wins ties
                if best is None:
                    best = value
                    winner.copy_(block[index])
                else:
                    better = value > best  # strict: an earlier class keeps a tie
                    best = torch.where(better, value, best)
                    winner.copy_(torch.where(better, block[index], winner))
    return labels


# -- the maps -------------------------------------------------------------------------------


class _ClassMaps:
    """Class chunks ``(k, h', w')`` seen as one ``(K, h', w')`` stack, without concatenating."""

    def __init__(self, probabilities: torch.Tensor | Iterable[torch.Tensor]) -> None:
        chunks = [probabilities] if isinstance(probabilities, torch.Tensor) else list(probabilities)
        if not chunks or sum(int(c.shape[0]) for c in chunks if c.dim() == 3) == 0:
            raise ValueError("no class maps to take the arg-max of (K = 0)")
        first = chunks[0]
        for chunk in chunks:
            if chunk.dim() != 3 or chunk.shape[1:] != first.shape[1:]:
                raise ValueError(
                    "class maps must be (k, h, w) chunks of one size; got "
                    f"{[tuple(c.shape) for c in chunks]}"
                )
            if chunk.dtype != first.dtype or chunk.device != first.device:
                raise ValueError("class map chunks must share one dtype and device")
        if first.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"class maps must be float32 or float64, got {first.dtype}")
        self.chunks = chunks
        self.num_classes = sum(int(c.shape[0]) for c in chunks)
        self.height, self.width = int(first.shape[1]), int(first.shape[2])
        self.dtype, self.device = first.dtype, first.device
        starts = [0]
        for chunk in chunks:
            starts.append(starts[-1] + int(chunk.shape[0]))
        self.starts = starts

    def stacked(self) -> torch.Tensor:
        return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)

    def extremes_over_rows(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class maximum and minimum over input rows ``rows``: two ``(K, w')`` tables.

        Raises:
            NonFiniteProbabilitiesError: one of these rows holds NaN or an infinite value.
        """
        highs = [chunk[:, rows].amax(dim=1) for chunk in self.chunks]
        lows = [chunk[:, rows].amin(dim=1) for chunk in self.chunks]
        high = highs[0] if len(highs) == 1 else torch.cat(highs)
        low = lows[0] if len(lows) == 1 else torch.cat(lows)
        # amax/amin propagate NaN, and an infinity is its own extreme: two numbers tell.
        if not (math.isfinite(float(high.max())) and math.isfinite(float(low.min()))):
            raise self.non_finite_error()
        return high, low

    def window(self, classes: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """``(k, rows, cols)`` window of the classes ``classes`` (ascending indices)."""
        if len(self.chunks) == 1:
            return self.chunks[0][:, rows, cols].index_select(0, classes)
        parts = []
        for chunk, start, stop in zip(self.chunks, self.starts, self.starts[1:], strict=False):
            inside = classes[(classes >= start) & (classes < stop)]
            if inside.numel():
                parts.append(chunk[:, rows, cols].index_select(0, inside - start))
        return torch.cat(parts)

    def non_finite_error(self) -> NonFiniteProbabilitiesError:
        bad = torch.zeros(self.height, self.width, dtype=torch.bool, device=self.device)
        for chunk in self.chunks:
            for part in chunk.split(64):  # bounded temporaries even here
                bad |= ~torch.isfinite(part).all(dim=0)
        count = int(bad.sum())
        return NonFiniteProbabilitiesError(
            f"the model produced NaN/inf probabilities for {count:,} of "
            f"{self.height * self.width:,} pixels (at its output resolution "
            f"{self.height}x{self.width}); the weights may be corrupt"
        )


def _possible_winners(window_max: torch.Tensor, window_min: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the classes that can win somewhere in a tile, from ``(K,)`` extremes.

    Every bilinear value in the tile is a convex combination of the tile's input window, so class
    c's values are at most ``window_max[c]`` and class j's at least ``window_min[j]``: c loses
    everywhere to the class with the highest minimum if its maximum is below that minimum.
    """
    threshold = window_min.max()
    scale = torch.maximum(window_max.abs().max(), window_min.abs().max())
    return torch.nonzero(window_max >= threshold - _SKIP_MARGIN * scale).squeeze(1)


# -- PyTorch's bilinear arithmetic ------------------------------------------------------------


@dataclass(frozen=True)
class _Arithmetic:
    """How PyTorch's kernel rounds on this device: whether the source coordinate
    ``scale * (i + 0.5) - 0.5`` is one fused multiply-add, and how ``w0 * a + w1 * b`` is formed
    (``"first"``: ``fma(a, w0, b * w1)``, ``"second"``: ``fma(b, w1, a * w0)``, or ``"plain"``).
    Compilers contract these differently per CPU build (AVX2/AVX-512 fuse, the baseline build
    does not) and on GPUs, so it is measured rather than assumed."""

    fused_index: bool
    sum: Literal["first", "second", "plain"]


_CANDIDATES = [
    _Arithmetic(True, "first"),
    _Arithmetic(True, "second"),
    _Arithmetic(False, "plain"),
    _Arithmetic(True, "plain"),
    _Arithmetic(False, "first"),
    _Arithmetic(False, "second"),
]
_MEASURED: dict[tuple[str, torch.dtype], _Arithmetic] = {}


def _arithmetic(device: torch.device, dtype: torch.dtype) -> _Arithmetic:
    """The candidate that reproduces ``F.interpolate`` on a probe, measured once per device type
    and dtype; plain arithmetic (agreeing to a few roundings) if none does."""
    key = (device.type, dtype)
    if key not in _MEASURED:
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(5, 37, 53, generator=generator, dtype=dtype).to(device)
        size = (211, 29)  # up- and down-sampling; height + width > 128 (PyTorch's generic kernel)
        expected = F.interpolate(probe[None], size=size, mode="bilinear", align_corners=False)[0]
        _MEASURED[key] = _CANDIDATES[2]
        for candidate in _CANDIDATES:
            rows = _Axis.of(37, size[0], dtype, device, candidate.fused_index)
            cols = _Axis.of(53, size[1], dtype, device, candidate.fused_index)
            got = _resample(
                probe, rows.local(0, size[0], slice(0, 37)), cols.local(0, size[1], slice(0, 53)),
                candidate,
            )
            if torch.equal(got, expected):
                _MEASURED[key] = candidate
                break
    return _MEASURED[key]


@dataclass(frozen=True)
class _Axis:
    """Bilinear resampling along one axis, ``n_in -> n_out``, as PyTorch computes it
    (``area_pixel_compute_source_index`` and ``guard_index_and_lambda`` in ATen): source index
    pairs ``(low, high)`` ``(n_out,)`` int64 and their weights ``(n_out,)``."""

    low: torch.Tensor
    high: torch.Tensor
    w_low: torch.Tensor
    w_high: torch.Tensor
    low_list: list[int]
    high_list: list[int]

    @classmethod
    def of(
        cls, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device, fused: bool
    ) -> _Axis:
        scale = torch.tensor(float(n_in), dtype=dtype) / torch.tensor(float(n_out), dtype=dtype)
        centre = torch.arange(n_out, dtype=dtype) + 0.5
        if fused:
            source = torch.addcmul(torch.full_like(centre, -0.5), centre, scale)
        else:
            source = centre * scale - 0.5
        source = source.clamp_min(0)
        # ATen floors with floorf: a float64 coordinate is rounded to float32 first.
        low = source.float().floor().to(torch.int64).clamp_max(n_in - 1)
        w_high = (source - low.to(dtype)).clamp(0, 1)
        w_low = 1 - w_high
        high = low + (low < n_in - 1).to(torch.int64)
        return cls(
            low.to(device), high.to(device), w_low.to(device), w_high.to(device),
            low.tolist(), high.tolist(),
        )

    def window(self, start: int, stop: int) -> slice:
        """Input indices read by outputs ``start..stop-1`` (both indices are monotonic)."""
        return slice(self.low_list[start], self.high_list[stop - 1] + 1)

    def local(self, start: int, stop: int, window: slice) -> _Axis:
        """Outputs ``start..stop-1`` with indices relative to ``window``."""
        offset = int(window.start)
        return _Axis(
            self.low[start:stop] - offset, self.high[start:stop] - offset,
            self.w_low[start:stop], self.w_high[start:stop], [], [],
        )


def _weighted_sum(
    a: torch.Tensor, w_a: torch.Tensor, b: torch.Tensor, w_b: torch.Tensor, how: str
) -> torch.Tensor:
    """``a * w_a + b * w_b`` rounded as the kernel rounds it (``torch.addcmul`` is one fused
    multiply-add on CPU and GPU; the probe in :func:`_arithmetic` checks that too)."""
    if how == "first":
        return (b * w_b).addcmul_(a, w_a)
    if how == "second":
        return (a * w_a).addcmul_(b, w_b)
    return (a * w_a).add_(b * w_b)


def _resample(window: torch.Tensor, rows: _Axis, cols: _Axis, arithmetic: _Arithmetic) -> torch.Tensor:
    """Bilinear values ``(k, len(rows), len(cols))`` of a window ``(k, h, w)``; ``rows`` and
    ``cols`` index into the window. Columns first, then rows: ATen's order of evaluation."""
    left, right = window.index_select(2, cols.low), window.index_select(2, cols.high)
    across = _weighted_sum(left, cols.w_low, right, cols.w_high, arithmetic.sum)  # (k, h, tw)
    top, bottom = across.index_select(1, rows.low), across.index_select(1, rows.high)
    return _weighted_sum(top, rows.w_low[:, None], bottom, rows.w_high[:, None], arithmetic.sum)


def _generic_kernel(maps: _ClassMaps, height: int, width: int) -> bool:
    """Whether ``F.interpolate`` takes PyTorch's generic bilinear kernel for this call, the one
    :func:`_resample` reproduces. On CPU it switches to a channels-last kernel, whose rounding
    depends on the number of channels, for small outputs (height + width <= 128) and for three
    channels on one thread (ATen's ``upsample_bilinear2d_kernel_impl``)."""
    if maps.device.type != "cpu":
        return True
    if height + width <= 128:
        return False
    return not (torch.get_num_threads() == 1 and maps.num_classes == 3)


def _whole(maps: _ClassMaps, height: int, width: int, keep: torch.Tensor | None) -> torch.Tensor:
    """The cases :func:`_generic_kernel` leaves out, all small (at most 4,096 pixels, or three
    classes): one ``F.interpolate`` of every class, as the definition says."""
    for chunk in maps.chunks:
        low, high = torch.aminmax(chunk)
        if not (math.isfinite(float(low)) and math.isfinite(float(high))):
            raise maps.non_finite_error()
    stacked = maps.stacked()
    up = F.interpolate(stacked[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    if keep is not None:
        keep.copy_(up)
    return up.argmax(dim=0)


def _every_class(
    maps: _ClassMaps, height: int, width: int, keep: torch.Tensor
) -> torch.Tensor:
    """Every class upsampled everywhere, into ``keep``: one ``F.interpolate`` per class (its
    generic kernel rounds each value independently of the other channels, so this equals the
    upsample of all classes at once), with the arg-max kept up to date on the way."""
    labels = torch.zeros(height, width, dtype=torch.int64, device=maps.device)
    best: torch.Tensor | None = None
    for chunk, start in zip(maps.chunks, maps.starts, strict=False):
        low, high = torch.aminmax(chunk)
        if not (math.isfinite(float(low)) and math.isfinite(float(high))):
            raise maps.non_finite_error()
        for offset, plane in enumerate(chunk):
            up = F.interpolate(plane[None, None], size=(height, width), mode="bilinear",
                               align_corners=False)[0, 0]  # (H, W)
            keep[start + offset].copy_(up)
            if best is None:
                best = up
                continue
            better = up > best  # strict: an earlier class keeps a tie
            labels.masked_fill_(better, start + offset)
            torch.maximum(best, up, out=best)
    return labels


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, n)) for start in range(0, n, step)]
