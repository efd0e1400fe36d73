"""Extra time-series pipeline sources: the real-series corpus, the synthetic generators and
TSMixup, plus the exclusion hook every source goes through.

Source specs handled here (the pipeline in `jaxmoe.data.timeseries` delegates to
`resolve_extra_source`):

- `corpus` / `corpus:DIR`: every series of a corpus folder (`jaxmoe.data.corpus`); plain
  `corpus` is the default corpus, built into the cache folder on first use.
- `kernelsynth[:SIZE]`, `randomwalk[:SIZE]`, `arima[:SIZE]`, `seasonal_trend[:SIZE]`,
  `synthetic2[:SIZE]`: SIZE series of exactly one window each from the generators in
  `jaxmoe.data.synthetic` (i.i.d. draws, so never shuffled).
- `tsmixup` / `tsmixup:DIR`: windows that mix 1-3 mean-scaled series of different datasets
  of a corpus (default corpus when no DIR).

Exclusions (`jaxmoe.data.corpus.Exclusions`: names/globs and reference series) apply to
every source built from real data: corpus series and TSMixup's pool are filtered before
windowing; the `real` and file sources are filtered by the pipeline through
`exclude_named_series`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxmoe.data.corpus import Exclusions, ensure_default_corpus, read_corpus
from jaxmoe.data.synthetic import SYNTHETIC_GENERATORS, synthetic2_series, tsmixup_series
from jaxmoe.data.windows import GeneratorWindowSource, WindowSource
from jaxmoe.errors import SeriesError

__all__ = ["GENERATOR_KINDS", "GeneratorWindowSource", "TSMixupWindowSource", "resolve_extra_source",
           "exclude_named_series", "corpus_series"]

GENERATOR_KINDS: dict[str, Callable[[int, int, int], np.ndarray]] = {
    "kernelsynth": SYNTHETIC_GENERATORS["kernelsynth"],
    "randomwalk": SYNTHETIC_GENERATORS["randomwalk"],
    "arima": SYNTHETIC_GENERATORS["arima"],
    "seasonal_trend": SYNTHETIC_GENERATORS["seasonal_trend"],
    "synthetic2": synthetic2_series,
}
EXTRA_KINDS = ("corpus", "tsmixup", *GENERATOR_KINDS)


class TSMixupWindowSource(GeneratorWindowSource):
    """`size` TSMixup windows over a pool of real series grouped by dataset."""

    def __init__(self, pool: Sequence[np.ndarray], groups: Sequence[int], name: str, seed: int,
                 context_length: int, size: int):
        if not len(pool):
            raise SeriesError(f"Source {name!r} has no series to mix (all excluded or an empty corpus).")
        self.pool = [np.asarray(p, dtype=np.float64) for p in pool]
        self.groups = np.asarray(groups)
        self.num_series = len(self.pool)
        super().__init__(self._mix, name, seed, context_length, size)

    def _mix(self, seed: int, index: int, window: int) -> np.ndarray:
        return tsmixup_series(self.pool, seed, index, window, groups=self.groups)

    def __repr__(self) -> str:
        return f"TSMixupWindowSource({self.name!r}, series={self.num_series}, window={self.window}, size={self.size})"


def corpus_series(directory: str, exclusions: Exclusions | None):
    """The corpus series (default corpus for an empty `directory`), exclusions applied."""
    path = directory or ensure_default_corpus(progress=True)
    return read_corpus(path, exclusions=exclusions or Exclusions())


def exclude_named_series(named: Sequence[tuple[str, np.ndarray]], exclusions: Exclusions | None, what: str):
    """The `(name, values)` pairs that survive the exclusions; an error if none does."""
    if exclusions is None or exclusions.empty:
        return list(named)
    kept, dropped = exclusions.filter(named)
    if named and not kept:
        first = next(iter(dropped.items()))
        raise SeriesError(f"Source {what!r}: every series is excluded ({first[0]}: {first[1]}).")
    return [named[i] for i in kept]


def resolve_extra_source(kind: str, rest: str, spec: str, *, context_length: int, seed: int, synthetic_size: int,
                         window_kwargs: dict, exclusions: Exclusions | None):
    """A source for one of `EXTRA_KINDS`, or None when `kind` is not one of them."""
    if kind in GENERATOR_KINDS:
        size = synthetic_size
        if rest:
            try:
                size = int(rest)
            except ValueError:
                raise SeriesError(f"Source {spec!r}: the size must be an integer, as in '{kind}:100000'.") from None
            if size < 1:
                raise SeriesError(f"Source {spec!r}: the size must be positive.")
        return GeneratorWindowSource(GENERATOR_KINDS[kind], kind, seed, context_length, size)
    if kind == "corpus":
        series = corpus_series(rest, exclusions)
        if not series:
            raise SeriesError(f"Source {spec!r} holds no series after exclusions.")
        return WindowSource([s.values for s in series], name=spec, **window_kwargs)
    if kind == "tsmixup":
        series = corpus_series(rest, exclusions)
        labels = {d: i for i, d in enumerate(sorted({s.dataset for s in series}))}
        return TSMixupWindowSource([s.values for s in series], [labels[s.dataset] for s in series], spec, seed,
                                   context_length, synthetic_size)
    return None
