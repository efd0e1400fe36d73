"""Guards of a training run: loss-spike detection, naming non-finite values, and checking
user time series before training starts. Leaf naming and the non-finite-parameter check
(which also guards every checkpoint save) live in :mod:`jaxmoe.checkpoint`."""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Sequence

import numpy as np

from jaxmoe.checkpoint import leaf_names

log = logging.getLogger("jaxmoe")

SPIKE_WINDOW = 20  # losses in the running mean
SPIKE_MIN_HISTORY = 5  # losses seen before spikes are flagged


class SpikeDetector:
    """Flags a loss that exceeds ``factor`` x the running mean of the last ``window`` finite
    losses: ``loss - mean > (factor - 1) * |mean|`` (the same as ``loss > factor * mean``
    for positive losses). ``factor <= 0`` disables it. ``history`` restores the window
    saved in a checkpoint, so a resumed run flags exactly the steps an uninterrupted one does.
    """

    def __init__(self, factor: float, window: int = SPIKE_WINDOW, min_history: int = SPIKE_MIN_HISTORY,
                 history: Sequence[float] = ()):
        self.factor = float(factor)
        self.min_history = int(min_history)
        self.history: collections.deque = collections.deque((float(x) for x in history), maxlen=int(window))

    def update(self, loss: float) -> float | None:
        """Record ``loss``; returns the running mean it spiked above, or None."""
        loss = float(loss)
        if not math.isfinite(loss):
            return None
        spiked = None
        if self.factor > 0 and len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            if loss - mean > (self.factor - 1.0) * abs(mean):
                spiked = mean
        self.history.append(loss)
        return spiked

    def state(self) -> list[float]:
        return list(self.history)


def load_entropy(load: np.ndarray) -> list[float]:
    """Normalised entropy of the router load per layer, ``load [layers, experts]`` (fractions
    of assignments): 1 = perfectly even, 0 = every token on one expert."""
    load = np.asarray(load, dtype=np.float64)
    if load.ndim != 2 or load.shape[1] < 2:
        return []
    p = load / np.maximum(load.sum(-1, keepdims=True), 1e-12)
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1)
    return [float(x) for x in ent / math.log(load.shape[1])]


class HealthMonitor:
    """One-line warnings that a run is not learning, checked after warmup over the last
    ``window`` steps: the loss has not moved by ``min_change`` (relative change between the
    means of the first and last fifth of the window), or the router load matrix has not
    moved (largest change of an expert's share between the means of the first and last fifth
    of the window's snapshots below ``load_tol``). Each warns once per run;
    ``window <= 0`` disables both."""

    def __init__(self, warmup: int, window: int, min_change: float = 0.01, load_tol: float = 1e-3):
        self.start = int(warmup)
        self.window = int(window)
        self.min_change = float(min_change)
        self.load_tol = float(load_tol)
        self.losses: collections.deque = collections.deque(maxlen=max(self.window, 1))
        self.loads: collections.deque = collections.deque()
        self.warned: set[str] = set()

    def update(self, step: int, loss: float | None = None, load: np.ndarray | None = None) -> list[str]:
        if self.window <= 0 or step <= self.start:
            return []
        out = []
        if loss is not None and math.isfinite(loss):
            self.losses.append(float(loss))
            if "loss" not in self.warned and len(self.losses) == self.window:
                k = max(1, self.window // 5)
                xs = list(self.losses)
                first, last = sum(xs[:k]) / k, sum(xs[-k:]) / k
                if abs(last - first) <= self.min_change * max(abs(first), 1e-12):
                    self.warned.add("loss")
                    out.append(f"step {step}: the loss has not moved by {100 * self.min_change:g}% over the last "
                               f"{self.window} steps ({first:.4g} -> {last:.4g}); the run may not be learning "
                               "(check grad_norm and skipped in metrics.jsonl, the learning rate and train.grad_clip).")
        if load is not None and np.size(load):
            self.loads.append((step, np.asarray(load, dtype=np.float64)))
            while self.loads and self.loads[0][0] < step - self.window:
                self.loads.popleft()
            s0 = self.loads[0][0]
            shapes = {x.shape for _, x in self.loads}
            if "load" not in self.warned and step - s0 >= self.window * 0.9 and len(shapes) == 1:
                k = max(1, len(self.loads) // 5)  # means of the first and last fifth: batch noise averages out
                snaps = [x for _, x in self.loads]
                change = float(np.max(np.abs(np.mean(snaps[-k:], 0) - np.mean(snaps[:k], 0))))
                if change < self.load_tol:
                    self.warned.add("load")
                    out.append(f"step {step}: the router load has not moved over the last {step - s0} steps (largest "
                               f"change {change:.2g}); the routers may not be learning.")
        return out


def nonfinite_batch_fields(batch: dict) -> list[str]:
    """Names of the floating-point batch arrays holding NaN/inf."""
    out = []
    for k, v in batch.items():
        a = np.asarray(v)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            out.append(k)
    return out


def describe_nonfinite(loss: float, leaf_index: int, params: Any, batch: dict, grad_norm: float | None = None,
                       leaf_norm: float | None = None) -> str:
    """What was not finite in a skipped step, as a clause for one-sentence messages:
    the loss, the gradient norm with the leaf holding the largest (or a non-finite)
    gradient, and the batch arrays holding NaN/inf."""
    bad = nonfinite_batch_fields(batch)
    worst = leaf_names(params)[leaf_index] if leaf_index >= 0 else None
    # a NaN in the worst leaf (or, when no norm is given, any non-finite value) names that leaf
    leaf_bad = worst is not None and (leaf_norm is None or math.isnan(leaf_norm))
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
        if not bad and leaf_bad:
            what += f" (first non-finite gradient: {worst})"
    elif leaf_bad:
        what = f"the gradient of {worst} is not finite (loss {loss:.4g})"
    elif grad_norm is not None and not math.isfinite(grad_norm):
        what = "the gradient norm is inf (a gradient is infinite or the norm exceeds float32's range"
        what += f"; largest in {worst})" if worst is not None else ")"
        what += f" (loss {loss:.4g})"
    else:
        what = "the loss or gradients are not finite"
    if bad:
        what += f" and the batch holds NaN/inf in {', '.join(repr(b) for b in bad)}"
    return what


def check_series(values: np.ndarray, name: str) -> None:
    """Raise SeriesError for a series nothing can be learned from (fewer than 2 finite
    points, or constant); warn about NaN/inf points (masked) and long constant segments."""
    from jaxmoe.data.real_series import SeriesError
    from jaxmoe.data.timeseries import constant_segments

    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    n_finite = int(finite.sum())
    if n_finite < 2:
        raise SeriesError(f"{name} has {n_finite} finite values out of {len(values)}; a training series needs "
                          "at least 2 (NaN and inf are masked).")
    observed = values[finite]
    if np.all(observed == observed[0]):
        raise SeriesError(f"{name} is constant (every finite value is {observed[0]:g}); it holds nothing to learn, "
                          "so choose another column or drop it from data.sources.")
    if n_finite < len(values):
        log.warning("%s: %d of %d values are NaN or infinite; they are masked out of the loss.",
                    name, len(values) - n_finite, len(values))
    min_run = max(16, len(values) // 10)
    segments = constant_segments(values, min_run) if len(values) >= min_run else []
    if segments:
        a, b = max(segments, key=lambda s: s[1] - s[0])
        log.warning("%s has %d constant segment(s) of at least %d points (longest: rows %d-%d); check for filler "
                    "values.", name, len(segments), min_run, a, b - 1)


def check_series_sources(sources: Sequence[str]) -> None:
    """Read the user-file sources (``csv:PATH:COLUMN``, ``parquet:PATH:COLUMN``) of a
    time-series config and :func:`check_series` each (built-in sources are known good)."""
    from jaxmoe.data.real_series import read_csv_series, read_parquet_series

    for spec in sources:
        kind, _, rest = str(spec).partition(":")
        if kind not in ("csv", "parquet"):
            continue
        path, sep, column = rest.rpartition(":")
        if not sep or not path or not column:
            continue  # the pipeline reports the malformed spec
        reader = read_csv_series if kind == "csv" else read_parquet_series
        check_series(reader(path, column), f"column {column!r} of {kind.upper() if kind == 'csv' else 'Parquet'} "
                                           f"file {path!r}")
