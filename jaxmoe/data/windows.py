"""Series cleaning and the windowed random-access sources of the time-series pipelines.

A series is cleaned once (`clean_series`: float32 values; NaN, inf and values beyond the
float32 range -> value 0 and mask 0); `WindowSource` serves every window of a list of
series (windows with fewer than `MIN_OBSERVED_PER_WINDOW` observed points are skipped) and
`SyntheticWindowSource` one synthetic series per index. Both are `grain.MapDataset.source`
compatible; `jaxmoe.data.timeseries` mixes them into pipelines and `jaxmoe.data.ts_sources`
builds the extra kinds of sources from them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxmoe.data.real_series import SeriesError
from jaxmoe.data.synthetic import synthetic_series

__all__ = ["clean_series", "constant_segments", "constant_segment_mask", "window_starts", "WindowSource",
           "GeneratorWindowSource", "SyntheticWindowSource", "DEFAULT_SYNTHETIC_SIZE", "MIN_OBSERVED_PER_WINDOW"]

DEFAULT_SYNTHETIC_SIZE = 1 << 30
MIN_OBSERVED_PER_WINDOW = 2


# ---------------------------------------------------------------------------------------
# Per-series helpers.


def _as_1d(series, what: str = "series") -> np.ndarray:
    array = np.asarray(series)
    if array.ndim != 1:
        raise SeriesError(
            f"Each {what} must be a 1-D array, got shape {array.shape}; "
            "split a [time, variates] array into columns with list(array.T)."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise SeriesError(f"Each {what} must hold real numbers, got dtype {array.dtype}.")
    return array


def clean_series(series) -> tuple[np.ndarray, np.ndarray]:
    """`(values, mask)` float32: NaN and +-inf become 0 with mask 0, finite points mask 1."""
    array = _as_1d(series).astype(np.float64)
    finite = np.isfinite(array)
    with np.errstate(over="ignore"):
        values = np.where(finite, array, 0.0).astype(np.float32)
    # Values beyond float32 range would become inf in float32: mask those too.
    finite &= np.isfinite(values)
    values[~finite] = 0.0
    return values, finite.astype(np.float32)


def constant_segments(series, min_run: int, atol: float = 0.0) -> list[tuple[int, int]]:
    """Runs of at least `min_run` consecutive finite points that stay constant.

    Two neighbours are "equal" when both are finite and |a - b| <= atol. Returns
    half-open `(start, end)` index pairs, in order.
    """
    if int(min_run) < 2:
        raise ValueError(f"min_run must be at least 2, got {min_run}.")
    array = _as_1d(series).astype(np.float64)
    if len(array) < 2:
        return []
    with np.errstate(invalid="ignore"):
        same = np.isfinite(array[1:]) & np.isfinite(array[:-1]) & (np.abs(array[1:] - array[:-1]) <= atol)
    segments = []
    # same[i] links points i and i+1; a run of k links spans k+1 points.
    padded = np.concatenate([[False], same, [False]]).astype(np.int8)
    edges = np.diff(padded)
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if end - start + 1 >= min_run:
            segments.append((int(start), int(end + 1)))
    return segments


def constant_segment_mask(series, min_run: int, atol: float = 0.0) -> np.ndarray:
    """Boolean `[n]`: True at points inside a constant run of at least `min_run` points."""
    array = _as_1d(series)
    out = np.zeros(len(array), dtype=bool)
    for start, end in constant_segments(array, min_run, atol):
        out[start:end] = True
    return out


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start indices of the windows over a series of `length` points.

    A series shorter than the window gets one window at 0 (right-padded by the source). The
    last window is aligned to the series' end.
    """
    if length >= window:
        starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
        if starts[-1] != length - window:
            starts = np.append(starts, length - window)
        return starts
    return np.zeros(1, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Random-access sources (grain.MapDataset.source compatible).


class WindowSource:
    """All windows of a list of series, random access.

    Args:
      series: list of 1-D arrays (any lengths; NaN/inf allowed).
      context_length: window length minus one.
      stride: distance between window starts.
      min_length: series shorter than this are dropped.
      mask_constant_runs: if set, points in constant runs of at least this many points are
        masked (values 0, mask 0), e.g. filler zeros in raw data.
      name: for messages.
    """

    def __init__(
        self,
        series: Sequence[np.ndarray],
        *,
        context_length: int,
        stride: int,
        min_length: int = 16,
        mask_constant_runs: int | None = None,
        name: str = "series",
    ):
        _check_positive(context_length=context_length, stride=stride)
        self.name = name
        self.window = int(context_length) + 1
        self.stride = int(stride)
        self.min_length = int(min_length)
        self._values: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        series_ids, starts = [], []
        self.num_series = 0
        self.num_dropped_series = 0
        for raw in series:
            values, mask = clean_series(raw)
            if len(values) < max(self.min_length, 1):
                self.num_dropped_series += 1
                continue
            if mask_constant_runs is not None:
                constant = constant_segment_mask(np.where(mask > 0, values, np.nan), int(mask_constant_runs))
                values[constant] = 0.0
                mask[constant] = 0.0
            sid = len(self._values)
            self._values.append(values)
            self._masks.append(mask)
            series_starts = window_starts(len(values), self.window, self.stride)
            observed = np.concatenate([[0.0], np.cumsum(mask, dtype=np.float64)])
            lo = np.maximum(series_starts, 0)
            hi = np.minimum(series_starts + self.window, len(values))
            keep = observed[hi] - observed[lo] >= MIN_OBSERVED_PER_WINDOW
            series_ids.append(np.full(int(keep.sum()), sid, dtype=np.int64))
            starts.append(series_starts[keep])
            self.num_series += 1
        self._series_ids = np.concatenate(series_ids) if series_ids else np.zeros(0, np.int64)
        self._starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} is out of range for {len(self)} windows of {self.name!r}.")
        sid, start = int(self._series_ids[index]), int(self._starts[index])
        values, mask = self._values[sid], self._masks[sid]
        end = start + self.window
        if end <= len(values):
            return {"values": values[start:end].copy(), "mask": mask[start:end].copy()}
        pad = np.zeros(end - len(values), dtype=np.float32)
        return {"values": np.concatenate([values[start:], pad]), "mask": np.concatenate([mask[start:], pad])}

    def __repr__(self) -> str:
        return f"WindowSource({self.name!r}, series={self.num_series}, windows={len(self)}, window={self.window})"


class GeneratorWindowSource:
    """`size` generated series of exactly one window each: item i is `fn(seed, i, window)`."""

    iid = True  # independent draws: the pipeline does not shuffle them

    def __init__(self, fn: Callable[[int, int, int], np.ndarray], name: str, seed: int, context_length: int, size: int):
        self.fn, self.name = fn, name
        self.seed, self.window, self.size = int(seed), int(context_length) + 1, int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} is out of range for {self.size} {self.name} series.")
        values, mask = clean_series(self.fn(self.seed, index, self.window))
        return {"values": values, "mask": mask}

    def __repr__(self) -> str:
        return f"GeneratorWindowSource({self.name!r}, seed={self.seed}, window={self.window}, size={self.size})"


class SyntheticWindowSource(GeneratorWindowSource):
    """`size` synthetic series of exactly one window each (`synthetic_series(seed, i, W)`)."""

    def __init__(self, seed: int, context_length: int, size: int = DEFAULT_SYNTHETIC_SIZE):
        _check_positive(context_length=context_length, size=size)
        super().__init__(synthetic_series, "synthetic", seed, context_length, size)

    def __repr__(self) -> str:
        return f"SyntheticWindowSource(seed={self.seed}, window={self.window}, size={self.size})"


def _check_positive(**kwargs) -> None:
    for key, value in kwargs.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}.")
