"""Sampling forecasts of a Moirai-MoE style model (:mod:`jaxmoe.models.moirai_moe`).

The context is left-padded (masked) to a whole number of patches and scaled with the
model's per-series statistics (:func:`~jaxmoe.models.moirai_moe.scale_stats`), and
``ceil(horizon / P)`` patches are sampled autoregressively inside one jitted function: the
last token's mixture gives ``num_samples`` draws of the next patch, each draw is fed back
as an observed patch and the next patch is drawn from its own path, and so on; paths are
de-normalised and summarised by quantiles, median and mean. ``use_cache=True`` (default)
prefills a KV cache with the context once (shared by all sample paths) and then decodes one
token per path per step; ``use_cache=False`` re-runs the whole fixed-size token buffer every
step (causal attention makes the not-yet-written tokens invisible) -- the reference path;
both draw the same random numbers. The point forecast of :class:`MoiraiForecaster` (and
so of ``jaxmoe forecast`` / ``evaluate``) is the median of the paths.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.config import Config
from jaxmoe.decode.forecast.base import DEFAULT_QUANTILES, Forecaster
from jaxmoe.models import distributions as dist
from jaxmoe.models.moirai_moe import MoiraiMoEConfig, distribution_params, init_cache, patchify, scale_stats, trunk


def _model_cfg(cfg) -> MoiraiMoEConfig:
    return cfg.model if isinstance(cfg, Config) else cfg


def _sample_cached(params, zp, mp, key, cfg: MoiraiMoEConfig, steps: int, num_samples: int):
    """Prefill the context once (shared by every sample path), then per step: draw each
    path's next patch from its current distribution and decode that patch as one new token.
    Returns scaled samples ``[steps, batch, samples, P]``."""
    b, n_ctx, p = zp.shape
    s = num_samples
    cache = init_cache(cfg, b, n_ctx + steps)
    hidden, _, cache = trunk(params, zp, mp, cfg, cache=cache)
    first = distribution_params(params, hidden[:, -1], cfg)  # leaves [b, P(, C)]
    first = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (b, s) + a.shape[1:]), first)
    cache = {"index": cache["index"], "layers": jax.tree.map(lambda a: jnp.repeat(a, s, axis=1), cache["layers"])}
    ones = jnp.ones((b * s, 1, p), jnp.float32)

    def step(carry, i):
        cache, dp = carry
        z = dist.mixture_sample(jax.random.fold_in(key, i), dp)  # [b, s, P]
        hidden, _, cache = trunk(params, z.reshape(b * s, 1, p), ones, cfg, cache=cache)
        nxt = distribution_params(params, hidden[:, 0], cfg)
        return (cache, jax.tree.map(lambda a: a.reshape((b, s) + a.shape[1:]), nxt)), z

    # (the last step decodes one token more than needed, so the sampler is traced once)
    return jax.lax.scan(step, (cache, first), jnp.arange(steps))[1]


def _sample_full(params, zp, mp, key, cfg: MoiraiMoEConfig, steps: int, num_samples: int):
    """Reference path: every step re-runs the whole fixed-size token buffer (context + the
    patches sampled so far + not-yet-written tokens, which causal attention hides).
    Returns scaled samples ``[steps, batch, samples, P]``."""
    b, n_ctx, p = zp.shape
    s = num_samples
    total = n_ctx + steps - 1
    pad = ((0, 0), (0, total - n_ctx), (0, 0))
    buf_z = jnp.repeat(jnp.pad(zp, pad), s, axis=0)
    buf_m = jnp.repeat(jnp.pad(mp, pad), s, axis=0)

    def step(carry, i):
        bz, bm = carry
        hidden, _, _ = trunk(params, bz, bm, cfg)
        h = jax.lax.dynamic_index_in_dim(hidden, n_ctx - 1 + i, axis=1, keepdims=False)
        dp = distribution_params(params, h, cfg)
        dp = jax.tree.map(lambda a: a.reshape((b, s) + a.shape[1:]), dp)
        z = dist.mixture_sample(jax.random.fold_in(key, i), dp)
        pos = jnp.minimum(n_ctx + i, total - 1)
        write = i < steps - 1
        new_z = jnp.where(write, z.reshape(b * s, 1, p), jax.lax.dynamic_slice_in_dim(bz, pos, 1, axis=1))
        new_m = jnp.where(write, 1.0, jax.lax.dynamic_slice_in_dim(bm, pos, 1, axis=1))
        bz = jax.lax.dynamic_update_slice_in_dim(bz, new_z, pos, axis=1)
        bm = jax.lax.dynamic_update_slice_in_dim(bm, new_m, pos, axis=1)
        return (bz, bm), z

    _, zs = jax.lax.scan(step, (buf_z, buf_m), jnp.arange(steps))
    return zs


@functools.partial(jax.jit, static_argnames=("cfg", "horizon", "num_samples", "levels", "use_cache"))
def _forecast_jit(params, values, mask, key, cfg: MoiraiMoEConfig, horizon: int, num_samples: int,
                  levels: tuple[float, ...], use_cache: bool):
    p = cfg.patch_size
    b = values.shape[0]
    steps = -(-horizon // p)
    loc, scale = scale_stats(values, mask)
    z = jnp.where(mask > 0, (values - loc) / scale, 0.0)
    zp, mp = patchify(z, p), patchify(mask, p)
    sampler = _sample_cached if use_cache else _sample_full
    zs = sampler(params, zp, mp, key, cfg, steps, num_samples)  # [steps, b, s, P]
    zs = jnp.transpose(zs, (1, 2, 0, 3)).reshape(b, num_samples, steps * p)[..., :horizon]
    samples = zs * scale[:, :, None] + loc[:, :, None]
    return {"mean": samples.mean(1), "median": jnp.median(samples, axis=1),
            "quantiles": jnp.quantile(samples, jnp.asarray(levels, jnp.float32), axis=1), "samples": samples}


def _prepare_context(context, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    ctx = np.asarray(context, dtype=np.float64)
    if ctx.ndim == 1:
        ctx = ctx[None]
    if ctx.ndim != 2 or ctx.shape[1] == 0:
        raise ValueError(f"context must be [batch, length] with length >= 1, got shape {ctx.shape}.")
    finite = np.isfinite(ctx)
    empty = np.flatnonzero(~finite.any(1))
    if len(empty):
        raise ValueError(f"context row {int(empty[0])} has no observed (finite) value to forecast from.")
    pad = -ctx.shape[1] % patch_size
    values = np.pad(np.where(finite, ctx, 0.0), ((0, 0), (pad, 0))).astype(np.float32)
    mask = np.pad(finite, ((0, 0), (pad, 0))).astype(np.float32)
    return values, mask


def forecast_moirai(params, cfg, context, horizon: int, num_samples: int = 100, rng: jax.Array | None = None, *,
                    quantile_levels: Sequence[float] = DEFAULT_QUANTILES, use_cache: bool = True) -> dict:
    """Probabilistic forecast of ``horizon`` steps after each context row.

    Args:
      context: ``[batch, length]`` (or ``[length]``) raw values; NaN/inf = missing (masked,
        never fed in); rows are left-padded (masked) to a whole number of patches.
      horizon: steps to forecast (``ceil(horizon / P)`` patches are sampled, then truncated).
      num_samples: sample paths per series (100 as in Moirai).
      rng: PRNG key (default ``PRNGKey(0)``): the same key gives the same paths.
      quantile_levels: levels of the returned quantiles.
      use_cache: KV-cache decoding (default) or full recompute each step (reference path).
    Returns (jax arrays, de-normalised): ``mean``, ``median [batch, horizon]``,
    ``quantiles [len(levels), batch, horizon]``, ``samples [batch, num_samples, horizon]``
    and ``quantile_levels`` (the tuple).
    """
    mcfg = _model_cfg(cfg)
    if isinstance(horizon, bool) or int(horizon) != horizon or int(horizon) < 1:
        raise ValueError(f"the horizon must be a positive integer, got {horizon!r}.")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    levels = tuple(float(q) for q in quantile_levels)
    if not all(0.0 <= q <= 1.0 for q in levels):
        raise ValueError(f"quantile levels must lie in [0, 1], got {list(levels)}.")
    values, mask = _prepare_context(context, mcfg.patch_size)
    key = jax.random.PRNGKey(0) if rng is None else rng
    out = _forecast_jit(params, jnp.asarray(values), jnp.asarray(mask), key, mcfg, int(horizon), int(num_samples),
                        levels, bool(use_cache))
    out["quantile_levels"] = levels
    return out


class MoiraiForecaster(Forecaster):
    """Sampled forecasts (:func:`forecast_moirai`): the point forecast is the median of
    ``num_samples`` paths drawn with ``rng`` (default ``PRNGKey(0)``: the same context gives
    the same forecast); quantiles and samples come from the same paths."""

    probabilistic = True

    def __init__(self, cfg, params, *, num_samples: int = 100, rng: jax.Array | None = None, use_cache: bool = True):
        super().__init__(cfg, params)
        self.num_samples = int(num_samples)
        self.rng = rng
        self.use_cache = bool(use_cache)

    def _run(self, context, horizon: int, levels: Sequence[float] = DEFAULT_QUANTILES,
             num_samples: int | None = None) -> dict:
        return forecast_moirai(self.params, self.model_cfg, context, horizon,
                               self.num_samples if num_samples is None else num_samples, self.rng,
                               quantile_levels=levels, use_cache=self.use_cache)

    def predict(self, context, horizon: int) -> np.ndarray:
        return np.asarray(self._run(context, horizon)["median"], dtype=np.float64)

    def quantiles(self, context, horizon: int, levels: Sequence[float] = DEFAULT_QUANTILES) -> dict[float, np.ndarray]:
        out = self._run(context, horizon, levels)
        qs = np.asarray(out["quantiles"], dtype=np.float64)
        return {q: qs[i] for i, q in enumerate(out["quantile_levels"])}

    def samples(self, context, horizon: int, num_samples: int | None = None) -> np.ndarray:
        return np.asarray(self._run(context, horizon, num_samples=num_samples)["samples"], dtype=np.float64)

    def forecast(self, context, horizon: int) -> dict:
        out = self._run(context, horizon)
        qs = np.asarray(out["quantiles"])
        return {"mean": np.asarray(out["median"]), "quantiles": {float(q): qs[i] for i, q in
                                                                 enumerate(out["quantile_levels"])}}
