"""The forecaster interface (see :mod:`jaxmoe.decode.forecast`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmoe.config import Config

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Forecaster:
    """A trained model that forecasts univariate series.

    ``predict(context [batch, length], horizon) -> [batch, horizon]`` float64 point
    forecasts in the context's units (NaN/inf in the context = missing). Probabilistic
    forecasters (``probabilistic = True``) also give ``quantiles(context, horizon, levels)
    -> {level: [batch, horizon]}`` and ``samples(context, horizon, num_samples) -> [batch,
    num_samples, horizon]``; the others raise ``NotImplementedError`` there.
    ``forecast(context, horizon)`` is what ``jaxmoe forecast`` / ``evaluate`` print:
    ``{"mean": point [batch, horizon], "quantiles": {level: [batch, horizon]} (maybe empty)}``.

    ``context_length`` is the number of points the model reads by default (the run's
    training context, or a fixed lookback window).
    """

    probabilistic = False

    def __init__(self, cfg, params):
        self.cfg = cfg if isinstance(cfg, Config) else None
        self.model_cfg = cfg.model if isinstance(cfg, Config) else cfg
        self.params = params

    @property
    def family(self) -> str:
        return self.model_cfg.family

    @property
    def context_length(self) -> int:
        if self.cfg is None:
            raise ValueError("the default context length is the run's data.seq_len: build the forecaster from the "
                             "run's Config, not its model config.")
        return int(self.cfg.data.seq_len)

    def predict(self, context, horizon: int) -> np.ndarray:
        raise NotImplementedError

    def quantiles(self, context, horizon: int, levels: Sequence[float] = DEFAULT_QUANTILES) -> dict[float, np.ndarray]:
        raise NotImplementedError(f"{self.family} models give point forecasts only (no quantiles).")

    def samples(self, context, horizon: int, num_samples: int = 100) -> np.ndarray:
        raise NotImplementedError(f"{self.family} models give point forecasts only (no sample paths).")

    def forecast(self, context, horizon: int) -> dict:
        return {"mean": self.predict(context, horizon), "quantiles": {}}

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _horizon(horizon) -> int:
        if isinstance(horizon, bool) or int(horizon) != horizon or int(horizon) < 1:
            raise ValueError(f"the horizon must be a positive integer, got {horizon!r}.")
        return int(horizon)

    @staticmethod
    def _context(context) -> np.ndarray:
        """``[batch, length]`` float64 (a 1-D context is one row)."""
        arr = np.asarray(context, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"the context must be [batch, length] (or [length]) with length >= 1, "
                             f"got shape {arr.shape}.")
        return arr
