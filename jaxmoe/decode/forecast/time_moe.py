"""Forecasting any horizon with a Time-MoE model (KV-cache autoregression inside jit).

Procedure (as the Time-MoE paper and its Hugging Face model forecast):

1. **Missing values.** Points that are NaN/inf are never fed to the model. Leading missing
   points are dropped: series are grouped by the position of their first observation and
   each group runs from there (positions restart at 0, as Hugging Face Time-MoE does with
   a left-padding attention mask). Missing points *inside* the context are masked out of
   the normalisation statistics and then forward-filled with the last observed value
   (in normalised space), so the model always sees a gap-free series.
2. **Normalisation.** Per series z-score over the observed context points (population
   std); when the std is 0 only the mean is subtracted. Forecasts are de-normalised with
   the same statistics. ``normalize=False`` skips both steps: the caller has normalised
   the context already and gets the forecasts back in the same units (parity checks
   against another implementation's normalisation).
3. **Horizon schedule.** :func:`horizon_schedule`: at each pass use the largest head
   ``h <= remaining``; if even the smallest head is longer, use it and truncate
   (96 = 64 + 32, 6 = 6 x 1, 100 = 64 + 32 + 4 x 1 with heads 1/8/32/64).
4. **Autoregression.** The context fills a KV cache; each pass takes the chosen head's
   ``h`` predictions at the last position and feeds them back as the next ``h`` inputs.
   The whole schedule runs in one jitted function per (batch, context length, schedule).
   ``use_cache=False`` re-runs the full sequence each pass (the reference path for tests).

Public API: :func:`horizon_schedule`, :func:`forecast`, :func:`forecast_normalized`, and
:class:`TimeMoEForecaster` (the :class:`~jaxmoe.decode.forecast.Forecaster` of the family).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.config import Config
from jaxmoe.decode.forecast.base import Forecaster
from jaxmoe.models.time_moe import TimeMoEConfig


def horizon_schedule(horizon: int, horizons) -> list[int]:
    """Head lengths used pass by pass to cover ``horizon`` steps (largest head first).

    ``sum(schedule) >= horizon``; it exceeds it only in the last pass, when even the
    smallest head is longer than what remains (that pass is truncated).
    """
    horizon = int(horizon)
    if horizon < 1:
        raise ValueError(f"the horizon must be a positive integer, got {horizon}.")
    heads = sorted(set(int(h) for h in horizons))
    if not heads or heads[0] < 1:
        raise ValueError(f"model horizons must be positive integers, got {list(horizons)}.")
    out, remaining = [], horizon
    while remaining > 0:
        fitting = [h for h in heads if h <= remaining]
        h = fitting[-1] if fitting else heads[0]
        out.append(h)
        remaining -= h
    return out


def _model_cfg(cfg) -> TimeMoEConfig:
    return cfg.model if isinstance(cfg, Config) else cfg


@functools.partial(jax.jit, static_argnames=("cfg", "schedule", "horizon", "use_cache", "normalize"))
def _forecast_jit(params, values, mask, cfg: TimeMoEConfig, schedule: tuple[int, ...], horizon: int, use_cache: bool,
                  normalize: bool):
    """``values, mask [b, L]`` -> ``(normalised, raw)`` forecasts ``[b, horizon]`` (the same
    array twice without ``normalize``)."""
    from jaxmoe.models import time_moe as tm

    b, length = values.shape
    if normalize:
        normed, mean, std = tm.normalize(values, mask)
    else:  # the caller normalised the context
        normed = jnp.where(mask > 0, values, 0.0)[..., None]
    x = tm.fill_missing(normed, mask)[..., 0]  # [b, L]
    head_index = {h: i for i, h in enumerate(cfg.horizons)}
    if use_cache:
        preds = _cached_passes(params, x, cfg, schedule, head_index)
    else:
        preds, seq = [], x
        for h in schedule:
            hidden, _, _ = tm.trunk(params, seq, cfg)
            p = tm.apply_head(params, hidden[:, -1], cfg, head_index[h])[..., 0]
            preds.append(p)
            seq = jnp.concatenate([seq, p.astype(seq.dtype)], axis=1)
    out = jnp.concatenate(preds, axis=1)[:, :horizon]
    if not normalize:
        return out, out
    return out, out * std[..., 0] + mean[..., 0]


def _cached_passes(params, x, cfg: TimeMoEConfig, schedule: tuple[int, ...], head_index: dict) -> list:
    """KV-cache passes. After the prefill, every pass feeds a fixed-size chunk (the longest
    fed length) whose first ``n`` entries are the previous pass's predictions; the cache
    index advances by ``n`` only, so the padding is overwritten by the next pass before any
    real query can attend to it (causal mask). All passes after the prefill share one
    ``lax.scan`` body, so compile time does not grow with the horizon."""
    from jaxmoe.models import time_moe as tm

    b, length = x.shape
    feed = schedule[:-1]
    chunk = max(feed) if feed else 0
    widest = max(schedule)
    cache = tm.init_cache(cfg, b, length + sum(feed) + chunk, jnp.float32)
    hidden, _, cache = tm.trunk(params, x, cfg, cache=cache)
    first = tm.apply_head(params, hidden[:, -1], cfg, head_index[schedule[0]])[..., 0]
    if not feed:
        return [first]

    def all_heads(last):  # [b, embed] -> [num_heads, b, widest], zero-padded
        outs = []
        for i, h in enumerate(cfg.horizons):
            o = tm.apply_head(params, last, cfg, i)[..., 0]
            o = o[:, :widest] if h >= widest else jnp.pad(o, ((0, 0), (0, widest - h)))
            outs.append(o)
        return jnp.stack(outs)

    def step(carry, xs):
        cache, prev = carry
        n, head = xs
        index = cache["index"]
        hid, _, cache = tm.trunk(params, prev, cfg, cache=cache)
        cache = {"index": index + n, "layers": cache["layers"]}
        last = jax.lax.dynamic_index_in_dim(hid, n - 1, axis=1, keepdims=False)
        p = all_heads(last)[head]  # [b, widest]
        nxt = p[:, :chunk] if widest >= chunk else jnp.pad(p, ((0, 0), (0, chunk - widest)))
        return (cache, nxt), p

    prev = jnp.pad(first, ((0, 0), (0, chunk - schedule[0])))
    xs = (jnp.asarray(feed, jnp.int32), jnp.asarray([head_index[h] for h in schedule[1:]], jnp.int32))
    _, ps = jax.lax.scan(step, (cache, prev), xs)
    return [first] + [ps[i, :, :h] for i, h in enumerate(schedule[1:])]


def _prepare(context) -> tuple[np.ndarray, bool]:
    arr = np.asarray(context, dtype=np.float64)
    squeeze = arr.ndim == 1
    if squeeze:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"the context must be [batch, length] (or [length]) with length >= 1, got shape {arr.shape}.")
    return arr, squeeze


def forecast(params, cfg, context, horizon: int, *, use_cache: bool = True, return_normalized: bool = False,
             normalize: bool = True):
    """Forecast ``horizon`` steps after each row of ``context``.

    Args:
      params: Time-MoE params (:func:`jaxmoe.models.time_moe.init` layout).
      cfg: the run's Config or its TimeMoEConfig.
      context: ``[batch, length]`` (or ``[length]``) raw values; NaN/inf = missing.
      horizon: number of future steps (>= 1).
      use_cache: KV-cache autoregression (True) or re-run the full sequence each pass.
      return_normalized: also return the forecasts in each series' normalised units.
      normalize: z-normalise each context row (and de-normalise its forecasts); False: the
        context is already normalised and the forecasts come back in the same units.
    Returns ``[batch, horizon]`` float64 forecasts on the original scale (``[horizon]`` for a
    1-D context), or ``(forecast, normalised)`` with ``return_normalized``.
    """
    mcfg = _model_cfg(cfg)
    if mcfg.moe.dispatch == "capacity":  # token dropping would make forecasts depend on padding
        mcfg = dataclasses.replace(mcfg, moe=dataclasses.replace(mcfg.moe, dispatch="dropless"))
    if mcfg.input_size != 1:
        raise ValueError(f"forecast() handles univariate models (input_size 1); this model has input_size {mcfg.input_size}.")
    horizon = int(horizon)
    schedule = tuple(horizon_schedule(horizon, mcfg.horizons))
    arr, squeeze = _prepare(context)
    finite = np.isfinite(arr)
    if not finite.any(axis=1).all():
        bad = int(np.flatnonzero(~finite.any(axis=1))[0])
        raise ValueError(f"context row {bad} has no observed (finite) value.")
    first = finite.argmax(axis=1)
    out = np.zeros((arr.shape[0], horizon))
    out_norm = np.zeros((arr.shape[0], horizon))
    for start in np.unique(first):
        rows = np.flatnonzero(first == start)
        sub = arr[rows, start:]
        m = np.isfinite(sub)
        vals = np.where(m, sub, 0.0).astype(np.float32)
        norm, raw = _forecast_jit(params, jnp.asarray(vals), jnp.asarray(m.astype(np.float32)), mcfg, schedule,
                                  horizon, bool(use_cache), bool(normalize))
        out[rows] = np.asarray(raw, dtype=np.float64)
        out_norm[rows] = np.asarray(norm, dtype=np.float64)
    if squeeze:
        out, out_norm = out[0], out_norm[0]
    return (out, out_norm) if return_normalized else out


def forecast_normalized(params, cfg, context, horizon: int, *, use_cache: bool = True):
    """Like :func:`forecast` but returns the forecasts in normalised units."""
    return forecast(params, cfg, context, horizon, use_cache=use_cache, return_normalized=True)[1]


class TimeMoEForecaster(Forecaster):
    """Point forecasts of any horizon (:func:`forecast`); the context is the run's
    ``data.seq_len`` by default, and any length works. ``normalize=False``: contexts are
    already normalised and forecasts come back in the same units."""

    def __init__(self, cfg, params, *, use_cache: bool = True, normalize: bool = True):
        super().__init__(cfg, params)
        self.use_cache = bool(use_cache)
        self.normalize = bool(normalize)

    def predict(self, context, horizon: int) -> np.ndarray:
        return forecast(self.params, self.model_cfg, self._context(context), self._horizon(horizon),
                        use_cache=self.use_cache, normalize=self.normalize)
