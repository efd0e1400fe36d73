"""Forecasters of the lookback-window families: S-Mamba and SpaceTime.

Both read a fixed window of ``model.lookback`` points: the forecaster takes the last
``lookback`` points of each context row (a shorter context is refused in one line that
names the lookback), fills missing points (NaN/inf) with the last observed value before
them (leading ones with the first observed value) and forecasts each row as a one-variate
series ``[batch, lookback, 1]``.

Horizons longer than the model's:

- **S-Mamba** has one linear head of ``model.horizon`` steps. Longer horizons are rolled
  forward: the forecast is appended to the window, the window slides by ``model.horizon``
  and the model runs again, ``ceil(horizon / model.horizon)`` passes in all (the last one
  truncated).
- **SpaceTime**'s closed-loop decoder runs any number of steps, so the whole horizon comes
  from one pass (:func:`jaxmoe.models.spacetime.apply` with ``horizon``).

With ``model.instance_norm`` on, the model normalises each window itself; with it off, the
forecaster z-normalises each window with its own mean and standard deviation (the models
are trained on z-normalised series) and de-normalises the forecasts.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmoe.decode.forecast.base import Forecaster
from jaxmoe.errors import SeriesError


def fill_gaps(rows: np.ndarray) -> np.ndarray:
    """Missing points (non-finite) of ``rows [batch, length]`` -> the last observed value
    before them; leading missing points -> the first observed value."""
    out = np.array(rows, dtype=np.float64)
    finite = np.isfinite(out)
    empty = np.flatnonzero(~finite.any(1))
    if len(empty):
        raise SeriesError(f"context row {int(empty[0])} has no observed (finite) value to forecast from.")
    idx = np.where(finite, np.arange(out.shape[1])[None], -1)
    last = np.maximum.accumulate(idx, axis=1)
    first = finite.argmax(1)
    last = np.where(last < 0, first[:, None], last)
    return np.take_along_axis(out, last, axis=1)


class WindowForecaster(Forecaster):
    """Point forecasts from the last ``model.lookback`` points (see the module doc)."""

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.lookback)

    def _window(self, context) -> np.ndarray:
        rows = self._context(context)
        lookback = self.model_cfg.lookback
        if rows.shape[1] < lookback:
            raise SeriesError(f"{self.family} forecasts from the last {lookback} points (model.lookback); "
                              f"the context has only {rows.shape[1]}.")
        return fill_gaps(rows[:, -lookback:])

    def _run(self, window: np.ndarray, horizon: int) -> np.ndarray:
        """``window [batch, lookback]`` -> ``[batch, horizon]`` (one pass)."""
        raise NotImplementedError

    def predict(self, context, horizon: int) -> np.ndarray:
        horizon = self._horizon(horizon)
        window = self._window(context)
        if self.model_cfg.instance_norm:
            return self._run(window, horizon)
        mean = window.mean(1, keepdims=True)
        std = window.std(1, keepdims=True)
        std = np.where(std > 0, std, 1.0)
        return self._run((window - mean) / std, horizon) * std + mean


class SMambaForecaster(WindowForecaster):
    """S-Mamba: ``model.horizon`` steps per pass; longer horizons roll the window forward."""

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        from jaxmoe.models import s_mamba

        mcfg = self.model_cfg
        self._apply = jax.jit(lambda p, x: s_mamba.apply(p, x, mcfg))

    def _run(self, window: np.ndarray, horizon: int) -> np.ndarray:
        step = self.model_cfg.horizon
        out = []
        for _ in range(-(-horizon // step)):
            y = np.asarray(self._apply(self.params, window[:, :, None].astype(np.float32)), np.float64)[:, :, 0]
            out.append(y)
            window = np.concatenate([window, y], axis=1)[:, -window.shape[1]:]
        return np.concatenate(out, axis=1)[:, :horizon]


class SpaceTimeForecaster(WindowForecaster):
    """SpaceTime: the closed-loop decoder forecasts the whole horizon in one pass."""

    def __init__(self, cfg, params):
        super().__init__(cfg, params)
        from jaxmoe.models import spacetime

        mcfg = self.model_cfg
        self._apply = jax.jit(lambda p, x, h: spacetime.apply(p, x, mcfg, h), static_argnums=2)

    def _run(self, window: np.ndarray, horizon: int) -> np.ndarray:
        x = window[:, :, None].astype(np.float32)
        return np.asarray(self._apply(self.params, x, horizon), np.float64)[:, :, 0]
