"""Label maps: the arg-max over classes of per-class maps upsampled bilinearly to the image size.

:func:`upsampled_argmax` returns what ``F.interpolate(maps[None], size, mode="bilinear",
align_corners=False)[0].argmax(0)`` returns (the first class wins ties), without ever holding the
``(K, H, W)`` upsampled maps. It works on square tiles of the output:

- a tile's bilinear values only read a small window of the input (the source rows and columns of
  its first and last pixels), so a tile needs ``(k, tile, tile)`` numbers at a time for a block of
  k classes: beyond the maps themselves and the ``(H, W)`` int64 label map, memory is a fixed
  working set at any K and image size (plus two ``(k, w')`` tables of window extremes per chunk
  and row of tiles, and an ``(H, W)`` map of the best values so far when the classes come in
  several chunks);
- a class whose maximum over the window is below another class's minimum there cannot win
  anywhere in the tile (bilinear values are convex combinations of the window), so only the
  remaining classes are interpolated, and a tile with one remaining class is filled without any;
- the interpolation repeats PyTorch's own arithmetic (source coordinates, weights, the order and
  fusing of the multiply-adds, measured once per device and dtype against ``F.interpolate`` on a
  probe), so the maps, and hence the labels, are identical bit for bit to the full upsample. If no
  candidate arithmetic matches (another compiler or device), plain float arithmetic is used: the
  maps then agree to a few roundings and labels can differ only at such near-ties.

Class chunks are read one at a time, so a generator of chunks (sliding-window recombination)
never has all K maps alive. With ``keep`` (every probability requested) each class is upsampled on
its own over the whole image, straight into the caller's buffer. Outputs of at most 128 px in
height + width, and three classes on one thread, take PyTorch's own call on all classes at once
(its CPU kernel rounds differently there): at most 4,096 pixels, or three maps of the image size.

The probabilities the arg-max reads are checked for NaN and infinite values on the way
(:class:`NonFiniteProbabilitiesError`): a label map of a broken model is refused, not returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["NonFiniteProbabilitiesError", "upsampled_argmax"]

# Output pixels per tile side, and classes interpolated at once inside a tile (a 1 MiB float32
# block): on the 2-core CPU VM as fast as 192-256 px tiles and 32-64 classes on model maps, and
# the fastest on noise maps, where every class is interpolated everywhere.
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
            ``(k, h', w')`` covering classes 0..K-1 in order, all on one device (an iterator is
            consumed one chunk at a time: chunks need not exist all at once).
        size: (H, W) of the output.
        keep: optional ``(K, H, W)`` buffer filled with every upsampled map (then every class is
            upsampled everywhere, one class at a time: no class is skipped).
        tile: output tile side in pixels.
        class_block: classes interpolated at once within a tile.

    Returns:
        ``(H, W)`` int64 class indices on the maps' device (the first class wins ties), equal to
        ``F.interpolate(maps[None], size, mode="bilinear", align_corners=False)[0].argmax(0)``.

    Raises:
        NonFiniteProbabilitiesError: a map value read by the upsampling is NaN or infinite.
        ValueError: maps of different sizes, an empty class list or an empty output size.
    """
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"the output size must be positive, got {height}x{width}")
    if tile < 1 or class_block < 1:
        raise ValueError(f"tile and class_block must be positive, got {tile} and {class_block}")
    if keep is not None and tuple(keep.shape[1:]) != (height, width):
        raise ValueError(f"keep must have shape (K, {height}, {width}), got {tuple(keep.shape)}")
    chunks = _Chunks(probabilities)
    if not _generic_kernel(chunks, height, width):
        return _whole(chunks, height, width, keep)
    if keep is not None:
        return _every_class(chunks, height, width, keep)
    return _tiled(chunks, height, width, tile, class_block)


def _tiled(chunks: _Chunks, height: int, width: int, tile: int, class_block: int) -> torch.Tensor:
    """The tiled pass over the chunks in order; per tile, the highest window minimum and the
    largest magnitude seen so far decide which classes of the next chunks can still win."""
    arithmetic = _arithmetic(chunks.device, chunks.dtype)
    rows = _Axis.of(chunks.height, height, chunks.dtype, chunks.device, arithmetic.fused_index)
    cols = _Axis.of(chunks.width, width, chunks.dtype, chunks.device, arithmetic.fused_index)
    row_spans, col_spans = _spans(height, tile), _spans(width, tile)
    labels = torch.empty(height, width, dtype=torch.int64, device=chunks.device)
    # Later chunks are compared with the values of the winners so far: kept only if there are any.
    best = None if chunks.single else torch.empty(height, width, dtype=chunks.dtype, device=chunks.device)
    floor = [[-math.inf] * len(col_spans) for _ in row_spans]
    scale = [[0.0] * len(col_spans) for _ in row_spans]
    started = [[False] * len(col_spans) for _ in row_spans]
    for start, chunk, last in chunks:
        for ty, (y0, y1) in enumerate(row_spans):
            row_window = rows.window(y0, y1)
            band_max, band_min = chunks.extremes_over_rows(chunk, row_window)  # (k, w') each
            for tx, (x0, x1) in enumerate(col_spans):
                col_window = cols.window(x0, x1)
                window_max = band_max[:, col_window].amax(1)
                window_min = band_min[:, col_window].amin(1)
                floor[ty][tx] = max(floor[ty][tx], float(window_min.max()))
                scale[ty][tx] = max(
                    scale[ty][tx], float(window_max.abs().max()), float(window_min.abs().max())
                )
                classes = _possible_winners(window_max, floor[ty][tx], scale[ty][tx])
                if classes.numel() == 0:  # none of this chunk can beat the winners so far
                    continue
                winner = labels[y0:y1, x0:x1]
                if last and not started[ty][tx] and classes.numel() == 1:
                    winner.fill_(start + int(classes[0]))  # it beats every other class everywhere
                    continue
                tile_rows = rows.local(y0, y1, row_window)
                tile_cols = cols.local(x0, x1, col_window)
                current = best[y0:y1, x0:x1] if best is not None and started[ty][tx] else None
                for block in classes.split(class_block):
                    values = _resample(
                        chunk[:, row_window, col_window].index_select(0, block),
                        tile_rows, tile_cols, arithmetic,
                    )  # (k, y1 - y0, x1 - x0)
                    value, index = values.max(dim=0)  # the first maximum: the first class wins ties
                    index = block[index] + start
                    if current is None:
                        current = value
                        winner.copy_(index)
                    else:
                        better = value > current  # strict: an earlier class keeps a tie
                        winner.copy_(torch.where(better, index, winner))
                        current = torch.where(better, value, current)
                if best is not None and current is not None:
                    best[y0:y1, x0:x1] = current
                started[ty][tx] = True
    return labels


def _possible_winners(window_max: torch.Tensor, floor: float, scale: float) -> torch.Tensor:
    """Ascending indices of a chunk's classes that can win somewhere in a tile.

    Every bilinear value in the tile is a convex combination of the tile's input window, so class
    c's values are at most its window maximum and class j's at least its window minimum: c loses
    everywhere to the class with the highest minimum (``floor``, over every class so far) if its
    maximum is below that minimum; ``scale`` (the largest window magnitude) sizes the margin.
    """
    return torch.nonzero(window_max >= floor - _SKIP_MARGIN * scale).squeeze(1)


# -- the maps -------------------------------------------------------------------------------


class _Chunks:
    """The class chunks ``(k, h', w')``, checked as they come, iterated once in order as
    ``(first class index, chunk, is the last chunk)`` with one chunk of lookahead."""

    def __init__(self, probabilities: torch.Tensor | Iterable[torch.Tensor]) -> None:
        self._source = iter([probabilities] if isinstance(probabilities, torch.Tensor) else probabilities)
        self._pending: list[torch.Tensor] = []
        self._kind: tuple[torch.Size, torch.dtype, torch.device] | None = None  # of the first
        first = self._pull()
        if first is None:
            raise ValueError("no class maps to take the arg-max of (K = 0)")
        if first.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"class maps must be float32 or float64, got {first.dtype}")
        self.height, self.width = int(first.shape[1]), int(first.shape[2])
        self.dtype, self.device = first.dtype, first.device
        self.single = self._pull() is None

    def _pull(self) -> torch.Tensor | None:
        """Read the next non-empty chunk into the lookahead; None at the end."""
        for chunk in self._source:
            if chunk.dim() != 3:
                raise ValueError(f"class maps must be (k, h, w) chunks; got {tuple(chunk.shape)}")
            if self._kind is None:
                self._kind = (chunk.shape[1:], chunk.dtype, chunk.device)
            elif chunk.shape[1:] != self._kind[0]:
                raise ValueError(
                    "class map chunks must be of one size: "
                    f"{tuple(self._kind[0])} and {tuple(chunk.shape[1:])}"
                )
            elif (chunk.dtype, chunk.device) != self._kind[1:]:
                raise ValueError("class map chunks must share one dtype and device")
            if chunk.shape[0]:
                self._pending.append(chunk)
                return chunk
        return None

    def at_least(self, count: int) -> bool:
        """Whether there are at least ``count`` classes (reading ahead as far as needed)."""
        while sum(int(c.shape[0]) for c in self._pending) < count:
            if self._pull() is None:
                return False
        return True

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, bool]]:
        start = 0
        while self._pending:
            chunk = self._pending.pop(0)
            if not self._pending:
                self._pull()
            yield start, chunk, not self._pending
            start += int(chunk.shape[0])

    def extremes_over_rows(self, chunk: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class maximum and minimum of ``chunk`` over input rows ``rows``: ``(k, w')`` each.

        Raises:
            NonFiniteProbabilitiesError: one of these rows holds NaN or an infinite value.
        """
        high, low = chunk[:, rows].amax(dim=1), chunk[:, rows].amin(dim=1)
        # amax/amin propagate NaN, and an infinity is its own extreme: two numbers tell.
        if not (math.isfinite(float(high.max())) and math.isfinite(float(low.min()))):
            raise self.non_finite_error(chunk)
        return high, low

    @staticmethod
    def is_finite(chunk: torch.Tensor) -> bool:
        low, high = torch.aminmax(chunk)
        return math.isfinite(float(low)) and math.isfinite(float(high))

    def non_finite_error(self, *chunks: torch.Tensor) -> NonFiniteProbabilitiesError:
        """The error for ``chunks`` (from the first with a non-finite value read) and the rest."""
        bad = torch.zeros(self.height, self.width, dtype=torch.bool, device=self.device)
        for part in [*chunks, *self._pending, *self._source]:
            for piece in part.split(64):  # bounded temporaries even here
                bad |= ~torch.isfinite(piece).all(dim=0)
        count = int(bad.sum())
        return NonFiniteProbabilitiesError(
            f"the model produced NaN/inf probabilities for {count:,} of "
            f"{self.height * self.width:,} pixels (at its output resolution "
            f"{self.height}x{self.width}); the weights may be corrupt"
        )


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


def _generic_kernel(chunks: _Chunks, height: int, width: int) -> bool:
    """Whether ``F.interpolate`` takes PyTorch's generic bilinear kernel for this call, the one
    :func:`_resample` reproduces. On CPU it switches to a channels-last kernel, whose rounding
    depends on the number of channels, for small outputs (height + width <= 128) and for three
    channels on one thread (ATen's ``upsample_bilinear2d_kernel_impl``)."""
    if chunks.device.type != "cpu":
        return True
    if height + width <= 128:
        return False
    return not (torch.get_num_threads() == 1 and chunks.at_least(3) and not chunks.at_least(4))


def _whole(chunks: _Chunks, height: int, width: int, keep: torch.Tensor | None) -> torch.Tensor:
    """The cases :func:`_generic_kernel` leaves out, all small (at most 4,096 pixels, or three
    classes): one ``F.interpolate`` of every class, as the definition says."""
    parts = [chunk for _, chunk, _ in chunks]
    if not all(chunks.is_finite(part) for part in parts):
        raise chunks.non_finite_error(*parts)
    stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
    up = F.interpolate(stacked[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    if keep is not None:
        _check_keep(keep, up.shape[0])
        keep.copy_(up)
    return up.max(dim=0).indices  # the first maximum (and 6x faster than argmax over dim 0 here)


def _every_class(chunks: _Chunks, height: int, width: int, keep: torch.Tensor) -> torch.Tensor:
    """Every class upsampled everywhere, into ``keep``: one ``F.interpolate`` per class (its
    generic kernel rounds each value independently of the other channels, so this equals the
    upsample of all classes at once), with the arg-max kept up to date on the way."""
    labels = torch.zeros(height, width, dtype=torch.int64, device=chunks.device)
    best: torch.Tensor | None = None
    count = 0
    for start, chunk, _ in chunks:
        if not chunks.is_finite(chunk):
            raise chunks.non_finite_error(chunk)
        count = start + int(chunk.shape[0])
        _check_keep(keep, count, at_least=True)
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
    _check_keep(keep, count)
    return labels


def _check_keep(keep: torch.Tensor, num_classes: int, *, at_least: bool = False) -> None:
    """``keep`` holds one plane per class: ``num_classes`` (or, while counting, at least that)."""
    if keep.shape[0] < num_classes or (not at_least and keep.shape[0] != num_classes):
        more = " at least" if at_least else ""
        raise ValueError(
            f"keep must have one (H, W) plane per class: the maps have{more} {num_classes} "
            f"classes, keep has shape {tuple(keep.shape)}"
        )


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, n)) for start in range(0, n, step)]
