"""Windowing pipelines for time-series pretraining (Time-MoE style point-wise models).

Every element is one window of `context_length + 1` points (inputs are `values[:-1]`,
labels `values[1:]`):

    {"values": float32 [context_length + 1], "mask": float32 [context_length + 1]}

and batches stack them to `[batch, context_length + 1]`. `mask` is 1 where a real,
finite observation sits and 0 elsewhere; wherever `mask` is 0, `values` is 0, so NaN and
+-inf never reach a model.

Windowing a series of length n with window W = context_length + 1:
- n >= W: windows start at 0, stride, 2*stride, ...; if the last one does not end at the
  series' end, one more window aligned to the end is added (every point is covered).
- min_length <= n < W: one window starting at the series' first point, right-padded with
  zeros (mask 0), as the official Time-MoE pipeline pads: under causal attention no real
  point ever attends to padding.
- n < min_length: the series is dropped.
- windows with fewer than 2 observed points are dropped (they carry no training signal).

Sources (`build_timeseries_pipeline(sources=[(spec, weight), ...])`), spec is one of:
- a list of 1-D arrays (or one 1-D array);
- "synthetic" or "synthetic:SIZE": SIZE (default `synthetic_size`) synthetic series of
  exactly one window each (`jaxmoe.data.synthetic`); the seed derives from the pipeline's;
- "real": the training part (held-out tail removed) of every series in
  `jaxmoe.data.real_series.REAL_SERIES`; "real:NAME" for one of them;
- "csv:PATH:COLUMN", "parquet:PATH:COLUMN": one column of a user file (PATH may contain
  colons; the last colon separates the column);
- "corpus" / "corpus:DIR": every series of a real-series corpus (`jaxmoe.data.corpus`; the
  default one is built into the cache folder on first use); "tsmixup" / "tsmixup:DIR":
  mixes of 1-3 corpus series of different datasets; "kernelsynth", "randomwalk", "arima",
  "seasonal_trend", "synthetic2" (each optionally ":SIZE"): the generators of
  `jaxmoe.data.synthetic` (see `jaxmoe.data.ts_sources`).

Leakage control: `exclude` (names or globs) and `exclude_like` (reference series, CSV/Parquet
files or folders) drop matching series from every real-data source (corpus, tsmixup, real,
files, arrays) before windowing; see `jaxmoe.data.corpus.Exclusions`.

Mixing: sources are drawn by weight with a deterministic, seeded, random-access selection:
in every block of `MIX_BLOCK` consecutive elements each source gets a fixed count
proportional to its weight (largest-remainder rounding, at least 1), placed in a seeded
random order (`shuffle=True`) or evenly interleaved (`shuffle=False`). Each source is
shuffled (reshuffled every epoch) and repeated independently. With `num_epochs=None` the
pipeline is infinite; with `num_epochs=k` every source is repeated k times and the mix stops
as soon as one source runs out (as `grain.MapDataset.mix` does).

The pipeline is a `grain.MapDataset`; `pipeline.iterator()` returns a grain iterator whose
`get_state()` / `set_state()` resume exactly (the trainer checkpoints that state).
`import grain` happens only inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

import numpy as np

from jaxmoe.data.real_series import (
    REAL_SERIES,
    SeriesError,
    load_real_train,
    read_csv_series,
    read_parquet_series,
)
from jaxmoe.data.windows import (
    DEFAULT_SYNTHETIC_SIZE,
    MIN_OBSERVED_PER_WINDOW,
    SyntheticWindowSource,
    WindowSource,
    _as_1d,
    _check_positive,
    clean_series,
    constant_segment_mask,
    constant_segments,
    window_starts,
)

__all__ = [
    "SeriesError",
    "clean_series",
    "constant_segments",
    "constant_segment_mask",
    "window_starts",
    "WindowSource",
    "SyntheticWindowSource",
    "EpochShuffledSource",
    "WeightedSelectionMap",
    "SourceInfo",
    "TimeSeriesPipeline",
    "resolve_source",
    "build_timeseries_pipeline",
]

MIX_BLOCK = 1000


class EpochShuffledSource:
    """Repeats a random-access source `num_epochs` times (None = unbounded), optionally
    with a fresh seeded permutation every epoch.

    Element `g` is `source[perm_e[g % n]]` with `e = g // n`. The permutation of the most
    recent epoch is cached (O(n) to build once per epoch), which is much cheaper than a
    per-element index shuffle for the small sources typical of real series.
    """

    def __init__(self, source, *, seed: int, shuffle: bool, num_epochs: int | None):
        self.source = source
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_epochs = num_epochs
        self._n = len(source)
        self._length = sys.maxsize if num_epochs is None else self._n * int(num_epochs)
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return getattr(self.source, "name", type(self.source).__name__)

    def __len__(self) -> int:
        return self._length

    def _permutation(self, epoch: int) -> np.ndarray:
        cache = self._cache
        if cache is not None and cache[0] == epoch:
            return cache[1]
        perm = np.random.default_rng([self.seed, epoch]).permutation(self._n)
        self._cache = (epoch, perm)
        return perm

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} is out of range ({self._length}).")
        epoch, position = divmod(index, self._n)
        if self.shuffle:
            position = int(self._permutation(epoch)[position])
        return self.source[position]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


# ---------------------------------------------------------------------------------------
# Weighted mixing.


def _block_counts(weights: Sequence[float], block: int) -> np.ndarray:
    """Largest-remainder integer counts per block, each at least 1, summing to `block`."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    raw = w * block
    counts = np.floor(raw).astype(np.int64)
    remainder = block - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:remainder]] += 1
    while (counts == 0).any():  # a tiny weight still gets one slot per block
        counts[np.argmin(counts)] += 1
        counts[np.argmax(counts)] -= 1
    return counts


class WeightedSelectionMap:
    """Global index -> (source index, index within source), random access, deterministic.

    Blocks of `block` elements hold `counts[i]` elements of source i each, ordered by a
    permutation seeded by (seed, block index) when `shuffle`, evenly interleaved otherwise.
    The `k`-th element of source i overall is source index `k` (sources do their own
    shuffling). `lengths` bounds how many elements each source can give
    (`sys.maxsize` = unbounded); `len()` is the largest prefix no source runs out in.
    """

    def __init__(self, lengths: Sequence[int], weights: Sequence[float], *, seed: int,
                 shuffle: bool = True, block: int = MIX_BLOCK):
        if len(lengths) != len(weights) or not lengths:
            raise ValueError("lengths and weights must be non-empty and of equal size.")
        block = max(int(block), len(lengths))
        self.block = block
        self.counts = _block_counts(weights, block)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        if not self.shuffle:
            # Even interleave: source i's k-th slot sits at fractional position (k+0.5)/c_i.
            keys = np.concatenate([(np.arange(c) + 0.5) / c for c in self.counts])
            base = np.repeat(np.arange(len(self.counts)), self.counts)
            self._fixed = base[np.lexsort((base, keys))]
        limits = []
        for i, length in enumerate(lengths):
            if length >= sys.maxsize:
                limits.append(sys.maxsize)
                continue
            full_blocks, rest = divmod(int(length), int(self.counts[i]))
            assign, _ = self._block(full_blocks)
            limits.append(full_blocks * block + int(np.flatnonzero(assign == i)[rest]))
        self._length = min(min(limits), sys.maxsize)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        cache = self._cache
        if cache is not None and cache[0] == b:
            return cache[1], cache[2]
        if self.shuffle:
            base = np.repeat(np.arange(len(self.counts)), self.counts)
            assign = np.random.default_rng([self.seed, b]).permutation(base)
        else:
            assign = self._fixed
        order = np.argsort(assign, kind="stable")
        rank = np.empty(self.block, dtype=np.int64)
        rank[order] = np.arange(self.block) - self._offsets[assign[order]]
        self._cache = (b, assign, rank)
        return assign, rank

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"mixture index {index} is out of range ({self._length}).")
        b, position = divmod(index, self.block)
        assign, rank = self._block(b)
        source = int(assign[position])
        return source, b * int(self.counts[source]) + int(rank[position])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


# ---------------------------------------------------------------------------------------
# Source specs and the pipeline.


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What one pipeline source holds: `num_windows` per epoch, `num_series` series."""

    name: str
    weight: float
    num_series: int
    num_windows: int


def _derive_seed(seed: int, *salt: int) -> int:
    return int(np.random.SeedSequence([int(seed), *salt]).generate_state(1)[0])


def resolve_source(
    spec,
    *,
    context_length: int,
    stride: int,
    seed: int,
    min_length: int = 16,
    mask_constant_runs: int | None = None,
    synthetic_size: int = DEFAULT_SYNTHETIC_SIZE,
    exclusions=None,
):
    """A source spec (see module docstring) -> a random-access window source.

    `exclusions` (a `jaxmoe.data.corpus.Exclusions`) filters the series of real-data sources.
    """
    from jaxmoe.data.ts_sources import exclude_named_series, resolve_extra_source

    kwargs = dict(context_length=context_length, stride=stride, min_length=min_length,
                  mask_constant_runs=mask_constant_runs)
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind == "synthetic":
            size = synthetic_size
            if rest:
                try:
                    size = int(rest)
                except ValueError:
                    raise SeriesError(f"Source {spec!r}: the synthetic size must be an integer, as in 'synthetic:100000'.") from None
            return SyntheticWindowSource(seed, context_length, size)
        if kind == "real":
            names = [rest] if rest else list(REAL_SERIES)
            if rest and rest not in REAL_SERIES:
                raise SeriesError(f"Source {spec!r}: unknown real series {rest!r}; choose one of: {', '.join(REAL_SERIES)}.")
            named = exclude_named_series([(n, load_real_train(n)) for n in names], exclusions, spec)
            return WindowSource([v for _, v in named], name=spec, **kwargs)
        if kind in ("csv", "parquet"):
            path, sep, column = rest.rpartition(":")
            if not sep or not path or not column:
                raise SeriesError(f"Source {spec!r} must look like '{kind}:PATH:COLUMN'.")
            reader = read_csv_series if kind == "csv" else read_parquet_series
            named = exclude_named_series([(f"{path}/{column}", reader(path, column))], exclusions, spec)
            return WindowSource([v for _, v in named], name=spec, **kwargs)
        extra = resolve_extra_source(kind, rest, spec, context_length=context_length, seed=seed,
                                     synthetic_size=synthetic_size, window_kwargs=kwargs, exclusions=exclusions)
        if extra is not None:
            return extra
        raise SeriesError(
            f"Unknown source {spec!r}; use 'synthetic', 'synthetic:SIZE', 'real', 'real:NAME', "
            "'csv:PATH:COLUMN', 'parquet:PATH:COLUMN', 'corpus', 'corpus:DIR', 'tsmixup', 'tsmixup:DIR', "
            "'kernelsynth', 'randomwalk', 'arima', 'seasonal_trend', 'synthetic2' (each ':SIZE') or a list of 1-D arrays."
        )
    if isinstance(spec, np.ndarray):
        if spec.ndim != 1:
            raise SeriesError(
                f"An array source must be 1-D (one series), got shape {spec.shape}; "
                "pass a list of 1-D arrays instead (list(array.T) for [time, variates])."
            )
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SeriesError("An array-list source is empty; give at least one series.")
        named = exclude_named_series([(f"arrays[{i}]", _as_1d(s)) for i, s in enumerate(spec)], exclusions,
                                     f"arrays[{len(spec)}]")
        return WindowSource([v for _, v in named], name=f"arrays[{len(spec)}]", **kwargs)
    raise SeriesError(f"Cannot use a {type(spec).__name__} as a source; give a source string or a list of 1-D arrays.")


@dataclasses.dataclass
class TimeSeriesPipeline:
    """A built pipeline: `dataset` is a `grain.MapDataset` of batches.

    `iterator()` returns a fresh grain `DatasetIterator` (supports `get_state()` and
    `set_state()`); batches are `{"values", "mask"}` float32 `[batch, context_length + 1]`.
    """

    dataset: Any
    sources: tuple[SourceInfo, ...]
    context_length: int
    batch_size: int
    num_threads: int = 0
    prefetch_buffer_size: int = 16

    def iterator(self):
        import grain

        read_options = grain.ReadOptions(num_threads=self.num_threads,
                                         prefetch_buffer_size=self.prefetch_buffer_size)
        return iter(self.dataset.to_iter_dataset(read_options))

    def __iter__(self):
        return self.iterator()

    def __len__(self) -> int:
        """Number of batches (`sys.maxsize`-ish when infinite)."""
        return len(self.dataset)


def build_timeseries_pipeline(
    *,
    sources: Sequence[tuple[Any, float]],
    context_length: int,
    stride: int | None = None,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    min_length: int = 16,
    mask_constant_runs: int | None = None,
    synthetic_size: int = DEFAULT_SYNTHETIC_SIZE,
    drop_remainder: bool = True,
    num_threads: int = 0,
    prefetch_buffer_size: int = 16,
    exclude: Sequence[str] = (),
    exclude_like=(),
) -> TimeSeriesPipeline:
    """Windows from weighted sources, shuffled, mixed and batched.

    Args:
      sources: `[(spec, weight), ...]`, spec as in the module docstring, weight > 0.
      context_length: windows hold `context_length + 1` points.
      stride: distance between window starts (default `context_length`).
      batch_size: windows per batch.
      seed: seeds shuffling, mixing and the synthetic stream.
      shuffle: shuffle windows (per epoch) and the source order within mixing blocks.
      num_epochs: None = infinite; k = repeat each source k times (stops when one runs out).
      min_length: shorter series are dropped (longer-but-short ones are right-padded).
      mask_constant_runs: mask constant runs of at least this many points (off by default).
      synthetic_size: number of series behind a plain "synthetic" spec.
      drop_remainder: drop a final partial batch (finite pipelines).
      num_threads / prefetch_buffer_size: grain read options for `iterator()` (0 threads =
        synchronous reads; data are in memory).
      exclude: dataset/series names or globs left out of every real-data source.
      exclude_like: reference series (arrays, CSV/Parquet files, folders); any series sharing
        a run of 16 equal values (6 significant digits) with one of them is left out.

    Returns:
      TimeSeriesPipeline.
    """
    import grain

    _check_positive(context_length=context_length, batch_size=batch_size)
    stride = context_length if stride is None else stride
    _check_positive(stride=stride)
    if num_epochs is not None:
        _check_positive(num_epochs=num_epochs)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    if isinstance(sources, (str, np.ndarray)) or not sources:
        raise SeriesError("sources must be a non-empty list of (spec, weight) pairs, e.g. [('synthetic', 1.0)].")

    from jaxmoe.data.corpus import Exclusions

    exclusions = Exclusions(exclude, exclude_like)
    datasets, infos, weights = [], [], []
    for i, item in enumerate(sources):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise SeriesError(f"Source entry {i} must be a (spec, weight) pair, got {type(item).__name__}.")
        spec, weight = item
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise SeriesError(f"Source entry {i} has a non-numeric weight {weight!r}.") from None
        if not np.isfinite(weight) or weight <= 0:
            raise SeriesError(f"Source entry {i} has weight {weight}; weights must be positive and finite.")
        source = resolve_source(
            spec, context_length=context_length, stride=stride, seed=_derive_seed(seed, i, 1),
            min_length=min_length, mask_constant_runs=mask_constant_runs, synthetic_size=synthetic_size,
            exclusions=exclusions,
        )
        if len(source) == 0:
            raise SeriesError(
                f"Source {source.name!r} yields no windows: its series are shorter than "
                f"min_length={min_length} or have fewer than {MIN_OBSERVED_PER_WINDOW} finite points."
            )
        # Synthetic series are already i.i.d. draws: no need to shuffle them.
        repeated = EpochShuffledSource(
            source, seed=_derive_seed(seed, i, 2), num_epochs=num_epochs,
            shuffle=shuffle and not (isinstance(source, SyntheticWindowSource) or getattr(source, "iid", False)),
        )
        datasets.append(grain.MapDataset.source(repeated))
        weights.append(weight)
        infos.append(SourceInfo(
            name=source.name,
            weight=weight,
            num_series=getattr(source, "num_series", len(source)),
            num_windows=len(source),
        ))

    total = sum(weights)
    infos = [dataclasses.replace(info, weight=w / total) for info, w in zip(infos, weights)]
    if len(datasets) == 1:
        mixed = datasets[0]
    else:
        selection = WeightedSelectionMap([len(d) for d in datasets], weights,
                                         seed=_derive_seed(seed, 0, 3), shuffle=shuffle)
        mixed = grain.MapDataset.select_from_datasets(datasets, selection)
    batched = mixed.batch(batch_size, drop_remainder=drop_remainder)
    if len(batched) == 0:
        raise SeriesError(
            f"The pipeline yields no full batch: {len(mixed)} windows in total for batch_size={batch_size}; "
            "lower batch_size, raise num_epochs, or use num_epochs=None."
        )
    return TimeSeriesPipeline(
        dataset=batched, sources=tuple(infos), context_length=int(context_length),
        batch_size=int(batch_size), num_threads=int(num_threads),
        prefetch_buffer_size=int(prefetch_buffer_size),
    )
