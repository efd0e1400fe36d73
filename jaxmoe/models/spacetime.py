"""SpaceTime forecaster (Zhang et al. 2023): companion-SSM encoder + closed-loop decoder.

Channel-independent: each variate of ``x [batch, lookback, C]`` is forecast as its own
univariate series (the parameters do not depend on ``C``). Per series ``u [lookback]``::

    u       = instance_norm(u)                              (model.instance_norm; mean, sqrt(var + 1e-5))
    p       = preprocess(u)                                 fixed companion kernels: differencing of each
                                                            order in model.preprocess_diff_orders, moving-
                                                            average residuals of each window in
                                                            model.preprocess_ma_windows -> [lookback, K]
    z       = p @ W_in + b                                  [lookback, H]    (H = model.embed_dim)
    encoder layers (model.num_layers):
            z = z + W_mix gelu(companion_ssm(LN(z)))       open-loop companion SSM per channel
            z = z + W2 gelu(W1 LN(z))                       (H -> ffn_dim -> H)
    decoder: v = LN(z); closed-loop companion SSM over v (jaxmoe.ssm.companion_forecast):
            output_t     = c . x_t + D v_t                 open loop, predicts step t + 1
            next_input_t = k . x_t                          predicts v_{t+1}
            forecast_j   = c . (A + b k^T)^j x + ...        closed loop, predicts step lookback + j
    head:   linear H -> 1 applied to output and forecast; de-normalise.

Loss (``model.loss_weights``, default 1, 1, 1), all MSEs:

* horizon: the closed-loop forecast vs the future ``y``;
* lag: the open-loop outputs vs the next lag value (``output_t`` vs ``u_{t+1}``);
* next_input: ``next_input_t`` vs the decoder's actual next input ``v_{t+1}`` (the target is
  a stop-gradient, so this part trains the decoder to predict its inputs, not the encoder
  to make them predictable).

``model.ssm_state_dim`` is the companion state size d (SpaceTime: 64); taps of the
preprocessing kernels must fit in it. ``model.normalize_a`` L1-normalises the companion
columns (default off).

Params::

    embed:   {kernel [K, H], bias [H]}
    layers:  stacked ("layers" axis): {norm, ssm (companion a/b/c/k [H, d], D [H]),
             mix {kernel [H, H], bias}, mlp_norm, mlp {w1 {kernel [H, F], bias}, w2 {kernel [F, H], bias}}}
    dec_norm:{scale, bias}
    decoder: companion a/b/c/k [H, d], D [H]
    head:    {kernel [H, 1], bias [1]}

Batches: ``{"x": [batch, lookback, C], "y": [batch, horizon, C]}`` (:mod:`jaxmoe.data.pipelines`,
data kind ``windows``); forecasting from a univariate context: :mod:`jaxmoe.decode.forecast`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from jax import lax

from jaxmoe.config import Config, ModelConfig, check
from jaxmoe.models.s_mamba import check_window, instance_norm
from jaxmoe.nn.init import logical_axes, split, stack_boxed, unbox
from jaxmoe.nn.layers import init_layernorm, init_linear, layernorm, linear
from jaxmoe.ssm.companion import companion_forecast, companion_ssm, init_companion, preprocess, preprocessing_kernels

LOSS_PARTS = ("horizon", "lag", "next_input")


@dataclasses.dataclass(frozen=True)
class SpaceTimeConfig(ModelConfig):
    """SpaceTime forecaster (``model.family: spacetime``): lookback window and forecast horizon,
    companion state size, FFN width (0 -> 2 * embed_dim), fixed preprocessing kernels, loss
    weights (horizon, lag, next input), per-window instance normalisation, and the L1
    normalisation of the companion columns."""

    data_kind: ClassVar[str] = "windows"  # jaxmoe.data.pipelines: {"x": [b, lookback, C], "y": [b, horizon, C]}

    family: Literal["spacetime"] = "spacetime"
    lookback: int = 96
    horizon: int = 24
    ffn_dim: int = 0
    ssm_state_dim: int = 16  # companion state size d
    preprocess_diff_orders: tuple[int, ...] = (0, 1, 2)
    preprocess_ma_windows: tuple[int, ...] = ()
    loss_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    instance_norm: bool = True
    normalize_a: bool = False

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        m = self
        check_window(m)
        taps = [o + 1 for o in m.preprocess_diff_orders] + list(m.preprocess_ma_windows)
        check(len(m.loss_weights) == 3 and all(w >= 0 for w in m.loss_weights),
              f"model.loss_weights={list(m.loss_weights)} must be 3 numbers >= 0 (horizon, lag, next input).")
        check(bool(taps) and all(o >= 0 for o in m.preprocess_diff_orders)
              and all(w >= 1 for w in m.preprocess_ma_windows) and max(taps) <= m.ssm_state_dim,
              "model.preprocess_diff_orders (>= 0) and model.preprocess_ma_windows (>= 1) must name at least one "
              f"kernel, each no longer than model.ssm_state_dim={m.ssm_state_dim} taps.")


def num_kernels(cfg: SpaceTimeConfig) -> int:
    return len(cfg.preprocess_diff_orders) + len(cfg.preprocess_ma_windows)


def ffn_width(cfg: SpaceTimeConfig) -> int:
    return cfg.ffn_dim or 2 * cfg.embed_dim


def _init_layer(key, cfg: SpaceTimeConfig) -> dict:
    h, f = cfg.embed_dim, ffn_width(cfg)
    k = split(key, ["ssm", "mix", "w1", "w2"])
    return {
        "norm": init_layernorm(h),
        "ssm": init_companion(k["ssm"], h, state_size=cfg.ssm_state_dim),
        "mix": init_linear(k["mix"], h, h, ("embed", "mlp"), bias=True, std=1 / math.sqrt(h)),
        "mlp_norm": init_layernorm(h),
        "mlp": {"w1": init_linear(k["w1"], h, f, ("embed", "mlp"), bias=True, std=1 / math.sqrt(h)),
                "w2": init_linear(k["w2"], f, h, ("mlp", "embed"), bias=True, std=1 / math.sqrt(f))},
    }


def init_boxed(key: jax.Array, cfg: SpaceTimeConfig) -> dict:
    """Boxed params (logical axes) of a SpaceTime forecaster."""
    k = split(key, ["embed", "layers", "decoder", "head"])
    h = cfg.embed_dim
    nk = num_kernels(cfg)
    return {
        "embed": init_linear(k["embed"], nk, h, (None, "embed"), bias=True, std=1 / math.sqrt(nk)),
        "layers": stack_boxed(lambda kk: _init_layer(kk, cfg), k["layers"], cfg.num_layers, "layers"),
        "dec_norm": init_layernorm(h),
        "decoder": init_companion(k["decoder"], h, state_size=cfg.ssm_state_dim),
        "head": init_linear(k["head"], h, 1, ("embed", None), bias=True, std=1 / math.sqrt(h)),
    }


def init(key: jax.Array, cfg: SpaceTimeConfig) -> dict:
    return unbox(init_boxed(key, cfg))


def param_axes(cfg: SpaceTimeConfig):
    return logical_axes(init_boxed, jax.random.PRNGKey(0), cfg)


def _kernels(cfg: SpaceTimeConfig) -> dict:
    return preprocessing_kernels(cfg.ssm_state_dim, diff_orders=cfg.preprocess_diff_orders,
                                 ma_windows=cfg.preprocess_ma_windows)


def encode(params: dict, u: jax.Array, cfg: SpaceTimeConfig) -> jax.Array:
    """Encoder: ``u [series, lookback, 1]`` (normalised) -> ``z [series, lookback, H]``."""
    p = preprocess(u, _kernels(cfg))[:, :, 0, :]  # [S, L, K]
    z = linear(params["embed"], p)
    norm_a = cfg.normalize_a

    def body(z, lp):
        y = companion_ssm(lp["ssm"], layernorm(lp["norm"], z), normalize_a=norm_a)
        z = z + linear(lp["mix"], jax.nn.gelu(y))
        m = linear(lp["mlp"]["w2"], jax.nn.gelu(linear(lp["mlp"]["w1"], layernorm(lp["mlp_norm"], z))))
        return z + m, None

    z, _ = lax.scan(body, z, params["layers"])
    return z


def forward(params: dict, x: jax.Array, cfg: SpaceTimeConfig, horizon: int | None = None) -> dict:
    """All SpaceTime outputs for ``x [batch, lookback, C]``.

    Returns (float32): ``forecast [batch, horizon, C]`` (data scale), ``lag_pred [batch,
    lookback, C]`` (open-loop one-step predictions, data scale), ``next_input`` and
    ``decoder_input`` ``[batch * C, lookback, H]``, and ``u`` / ``mean`` / ``std`` of the
    instance normalisation.
    """
    params = unbox(params)
    horizon = cfg.horizon if horizon is None else int(horizon)
    if x.ndim != 3:
        raise ValueError(f"spacetime: input must be [batch, lookback, variates], got shape {x.shape}.")
    b, length, c = x.shape
    series = jnp.swapaxes(x.astype(jnp.float32), 1, 2).reshape(b * c, length, 1)  # [S, L, 1]
    if cfg.instance_norm:
        u, mean, std = instance_norm(series, axis=1)
    else:
        u, mean, std = series, jnp.zeros((b * c, 1, 1)), jnp.ones((b * c, 1, 1))
    v = layernorm(params["dec_norm"], encode(params, u, cfg))
    out = companion_forecast(params["decoder"], v, horizon, normalize_a=cfg.normalize_a)
    to_data = lambda y: (linear(params["head"], y) * std + mean).reshape(b, c, y.shape[1]).swapaxes(1, 2)  # noqa: E731
    return {"forecast": to_data(out["forecast"]), "lag_pred": to_data(out["output"]),
            "next_input": out["next_input"], "decoder_input": v, "mean": mean, "std": std}


def apply(params: dict, x: jax.Array, cfg: SpaceTimeConfig, horizon: int | None = None) -> jax.Array:
    """Closed-loop forecast ``[batch, horizon, C]`` float32 (data scale)."""
    return forward(params, x, cfg, horizon)["forecast"]


def loss_parts(params, batch: dict, cfg: SpaceTimeConfig) -> dict:
    """The three MSEs ``{"horizon", "lag", "next_input"}`` of a batch."""
    x = batch["x"].astype(jnp.float32)
    y = batch["y"].astype(jnp.float32)
    out = forward(params, x, cfg, y.shape[1])
    v = lax.stop_gradient(out["decoder_input"])
    return {
        "horizon": jnp.mean((out["forecast"] - y) ** 2),
        "lag": jnp.mean((out["lag_pred"][:, :-1] - x[:, 1:]) ** 2),
        "next_input": jnp.mean((out["next_input"][:, :-1] - v[:, 1:]) ** 2),
    }


def loss_fn(params, batch: dict, cfg: SpaceTimeConfig, rng: jax.Array | None = None):
    """``w_h * horizon + w_l * lag + w_n * next_input`` (``model.loss_weights``); metrics hold
    each part and the forecast MSE (``mse`` = the horizon part)."""
    del rng
    parts = loss_parts(params, batch, cfg)
    w = cfg.loss_weights
    loss = sum(wi * parts[name] for wi, name in zip(w, LOSS_PARTS))
    metrics = {f"{name}_loss": parts[name] for name in LOSS_PARTS}
    metrics["mse"] = parts["horizon"]
    return loss, metrics


__all__ = ["init", "init_boxed", "param_axes", "encode", "forward", "apply", "loss_parts", "loss_fn", "LOSS_PARTS"]
