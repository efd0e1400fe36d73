"""One forecaster interface for every forecasting family.

``get_forecaster(cfg, params) -> Forecaster`` for a run's config (or its model config) and
params; every forecaster has

- ``predict(context [batch, length], horizon) -> [batch, horizon]`` float64 point forecasts
  in the context's units (NaN/inf = missing points);
- ``context_length``: the points it reads by default (Time-MoE, Moirai: the run's
  ``data.seq_len``; S-Mamba, SpaceTime: ``model.lookback``);
- ``forecast(context, horizon) -> {"mean": [batch, horizon], "quantiles": {level: [batch,
  horizon]}}`` (what ``jaxmoe forecast`` / ``evaluate`` use; quantiles empty for point
  forecasters);
- on probabilistic forecasters (``probabilistic``), ``quantiles(context, horizon, levels)``
  and ``samples(context, horizon, num_samples)``.

Families (:data:`FORECASTERS`):

- ``time_moe`` (:mod:`.time_moe`): any horizon by KV-cached autoregression over the
  multi-horizon heads; ``normalize=False`` for contexts the caller has normalised;
- ``moirai_moe`` (:mod:`.moirai_moe`): sample paths; point forecast = their median;
- ``s_mamba`` / ``spacetime`` (:mod:`.window`): the last ``model.lookback`` points; S-Mamba
  rolls forward past ``model.horizon``, SpaceTime's closed-loop decoder runs any horizon.

Other families (language models, the LSSL classifier) do not forecast:
:func:`get_forecaster` says so in one line that names the forecasting families.
"""

from __future__ import annotations

import importlib

from jaxmoe.config import Config, ConfigError
from jaxmoe.decode.forecast.base import DEFAULT_QUANTILES, Forecaster
from jaxmoe.decode.forecast.time_moe import (
    TimeMoEForecaster,
    forecast,
    forecast_normalized,
    horizon_schedule,
)

# model.family -> its forecaster, "module:Class" (imported when first needed)
FORECASTERS: dict[str, str] = {
    "time_moe": "jaxmoe.decode.forecast.time_moe:TimeMoEForecaster",
    "moirai_moe": "jaxmoe.decode.forecast.moirai_moe:MoiraiForecaster",
    "s_mamba": "jaxmoe.decode.forecast.window:SMambaForecaster",
    "spacetime": "jaxmoe.decode.forecast.window:SpaceTimeForecaster",
}


def forecaster_class(family: str) -> type[Forecaster]:
    """The forecaster class of ``family``; a family that does not forecast is a one-line
    :class:`~jaxmoe.errors.ConfigError` naming the forecasting families."""
    try:
        path = FORECASTERS[family]
    except KeyError:
        raise ConfigError(f"{family} models do not forecast; forecasting needs a model of one of the forecasting "
                          f"families: {', '.join(FORECASTERS)}.") from None
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def get_forecaster(cfg, params, **options) -> Forecaster:
    """The :class:`Forecaster` of a trained model: ``cfg`` is the run's :class:`Config` (or
    its model config; then ``context_length`` of Time-MoE/Moirai is unknown), ``options``
    go to the family's forecaster (e.g. ``normalize=False`` for Time-MoE, ``num_samples`` /
    ``rng`` for Moirai)."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    return forecaster_class(model_cfg.family)(cfg, params, **options)


def forecast_moirai(*args, **kwargs):
    """:func:`jaxmoe.decode.forecast.moirai_moe.forecast_moirai` (sample paths, quantiles)."""
    from jaxmoe.decode.forecast.moirai_moe import forecast_moirai as fn

    return fn(*args, **kwargs)


__all__ = ["DEFAULT_QUANTILES", "FORECASTERS", "Forecaster", "TimeMoEForecaster", "forecast", "forecast_moirai",
           "forecast_normalized", "forecaster_class", "get_forecaster", "horizon_schedule"]
