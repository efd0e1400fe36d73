"""S-Mamba: multivariate forecasting with variates as tokens and bidirectional Mamba.

Following Wang et al. 2024 ("Is Mamba effective for time series forecasting?")::

    x [batch, lookback, C]  --instance norm per variate (mean, sqrt(var_ddof0 + 1e-5))-->
    tokens [batch, C, lookback] --linear lookback -> E-->  h [batch, C, E]
    each layer:  y = mamba_f(h) + flip(mamba_b(flip(h)))      (scan over the variate axis)
                 h = LN(h + y)
                 h = LN(h + W2 drop(gelu(W1 h)))                (E -> d_ff -> E)
    final LN, linear E -> horizon, transpose to [batch, horizon, C], de-normalise.

Loss: MSE of the de-normalised forecast. Because variates are tokens, the parameters do
not depend on the number of variates. The two Mamba blocks of a layer are causal over the
variate order; their sum is the bidirectional mixer (reversing the variate order while
swapping ``mamba_f`` and ``mamba_b`` reverses the output exactly).

Model config fields used: ``lookback``, ``horizon``, ``embed_dim`` (E), ``ffn_dim`` (d_ff,
0 -> 4E), ``num_layers``, ``ssm_state_dim`` / ``ssm_conv_dim`` / ``ssm_expand`` (Mamba N,
d_conv, expand), ``dropout_rate``, ``instance_norm``, ``dtype``. Paper defaults: E 512, d_ff
2048, 2 layers, N 32, d_conv 2, expand 1, lr 1e-4; small datasets: E 256, N 2
(``configs/s_mamba_macro.yaml``).

Params::

    embed:      {kernel [lookback, E], bias [E]}
    layers:     stacked ("layers" axis): {mamba_f, mamba_b (jaxmoe.ssm.mamba params),
                norm1 {scale, bias}, ffn {w1 {kernel [E, d_ff], bias}, w2 {kernel [d_ff, E], bias}},
                norm2 {scale, bias}}
    final_norm: {scale, bias}
    head:       {kernel [E, horizon], bias [horizon]}

Batches: ``{"x": float32 [batch, lookback, C], "y": float32 [batch, horizon, C]}``
(:mod:`jaxmoe.data.pipelines`, data kind ``windows``, shared with ``spacetime``); forecasting
from a univariate context: :mod:`jaxmoe.decode.forecast`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from jax import lax

from jaxmoe.config import Config, ModelConfig, check
from jaxmoe.models.stack import compute_dtype
from jaxmoe.nn.init import logical_axes, split, stack_boxed, unbox
from jaxmoe.nn.layers import init_layernorm, init_linear, layernorm, linear
from jaxmoe.ssm.mamba import init_mamba, mamba

NORM_EPS = 1e-5  # instance-norm variance epsilon (S-Mamba / iTransformer)


def check_window(m) -> None:
    """The lookback window and horizon of the window forecasters (s_mamba, spacetime)."""
    check(m.lookback >= 1 and m.horizon >= 1,
          f"model.lookback={m.lookback} and model.horizon={m.horizon} must be >= 1.")


@dataclasses.dataclass(frozen=True)
class SMambaConfig(ModelConfig):
    """S-Mamba forecaster (``model.family: s_mamba``): lookback window and forecast horizon,
    FFN width (0 -> 4 * embed_dim), Mamba sizes, dropout, per-window instance normalisation."""

    data_kind: ClassVar[str] = "windows"  # jaxmoe.data.pipelines: {"x": [b, lookback, C], "y": [b, horizon, C]}

    family: Literal["s_mamba"] = "s_mamba"
    lookback: int = 96
    horizon: int = 24
    ffn_dim: int = 0
    ssm_state_dim: int = 16  # Mamba N
    ssm_conv_dim: int = 4
    ssm_expand: int = 2
    dropout_rate: float = 0.0
    instance_norm: bool = True
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        check_window(self)
        check(0.0 <= self.dropout_rate < 1.0, f"model.dropout_rate={self.dropout_rate} must be in [0, 1).")


def ffn_width(cfg: SMambaConfig) -> int:
    return cfg.ffn_dim or 4 * cfg.embed_dim


# ----------------------------------------------------------------------------- params


def _init_layer(key, cfg: SMambaConfig) -> dict:
    e, f = cfg.embed_dim, ffn_width(cfg)
    k = split(key, ["fwd", "bwd", "w1", "w2"])
    sizes = dict(d_state=cfg.ssm_state_dim, d_conv=cfg.ssm_conv_dim, expand=cfg.ssm_expand)
    return {
        "mamba_f": init_mamba(k["fwd"], e, **sizes),
        "mamba_b": init_mamba(k["bwd"], e, **sizes),
        "norm1": init_layernorm(e),
        "ffn": {"w1": init_linear(k["w1"], e, f, ("embed", "mlp"), bias=True, std=1 / math.sqrt(e)),
                "w2": init_linear(k["w2"], f, e, ("mlp", "embed"), bias=True, std=1 / math.sqrt(f))},
        "norm2": init_layernorm(e),
    }


def init_boxed(key: jax.Array, cfg: SMambaConfig) -> dict:
    """Boxed params (logical axes) of an S-Mamba forecaster."""
    k = split(key, ["embed", "layers", "head"])
    e = cfg.embed_dim
    return {
        "embed": init_linear(k["embed"], cfg.lookback, e, (None, "embed"), bias=True, std=1 / math.sqrt(cfg.lookback)),
        "layers": stack_boxed(lambda kk: _init_layer(kk, cfg), k["layers"], cfg.num_layers, "layers"),
        "final_norm": init_layernorm(e),
        "head": init_linear(k["head"], e, cfg.horizon, ("embed", None), bias=True, std=1 / math.sqrt(e)),
    }


def init(key: jax.Array, cfg: SMambaConfig) -> dict:
    return unbox(init_boxed(key, cfg))


def param_axes(cfg: SMambaConfig):
    return logical_axes(init_boxed, jax.random.PRNGKey(0), cfg)


# ------------------------------------------------------------------------------ apply


def instance_norm(x: jax.Array, axis: int = 1, eps: float = NORM_EPS):
    """``(x - mean) / std`` over ``axis`` with ``std = sqrt(var_ddof0 + eps)`` (fp32).

    Returns ``(normalised, mean, std)`` with ``mean``/``std`` keeping ``axis`` (size 1).
    """
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=axis, keepdims=True)
    std = jnp.sqrt(jnp.var(x, axis=axis, keepdims=True) + eps)
    return (x - mean) / std, mean, std


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rng is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def bidirectional_mamba(lp: dict, h: jax.Array) -> jax.Array:
    """``mamba_f(h) + flip(mamba_b(flip(h)))`` over axis 1 (the variate tokens)."""
    return mamba(lp["mamba_f"], h) + jnp.flip(mamba(lp["mamba_b"], jnp.flip(h, axis=1)), axis=1)


def encoder_layer(lp: dict, h: jax.Array, cfg: SMambaConfig, rng: jax.Array | None = None) -> jax.Array:
    """One S-Mamba layer on ``h [batch, C, E]``."""
    r1 = r2 = None
    if rng is not None:
        r1, r2 = jax.random.split(rng)
    h = layernorm(lp["norm1"], h + bidirectional_mamba(lp, h))
    f = dropout(jax.nn.gelu(linear(lp["ffn"]["w1"], h)), cfg.dropout_rate, r1)
    f = dropout(linear(lp["ffn"]["w2"], f), cfg.dropout_rate, r2)
    return layernorm(lp["norm2"], h + f)


def apply(params: dict, x: jax.Array, cfg: SMambaConfig, rng: jax.Array | None = None) -> jax.Array:
    """Forecast: ``x [batch, lookback, C] -> [batch, horizon, C]`` float32 (data scale).

    ``rng`` enables dropout (training); ``None`` is deterministic.
    """
    params = unbox(params)
    if x.ndim != 3 or x.shape[1] != cfg.lookback:
        raise ValueError(f"s_mamba: input must be [batch, lookback={cfg.lookback}, variates], got shape {x.shape}.")
    if cfg.instance_norm:
        xn, mean, std = instance_norm(x, axis=1)
    else:
        xn, mean, std = x.astype(jnp.float32), 0.0, 1.0
    dtype = compute_dtype(cfg)
    h = linear(params["embed"], jnp.swapaxes(xn, 1, 2).astype(dtype))  # [B, C, E]
    rngs = jax.random.split(rng, cfg.num_layers) if rng is not None else None

    def body(h, inputs):
        lp, r = inputs
        return encoder_layer(lp, h, cfg, r), None

    if rngs is None:
        h, _ = lax.scan(lambda h, lp: body(h, (lp, None)), h, params["layers"])
    else:
        h, _ = lax.scan(body, h, (params["layers"], rngs))
    h = layernorm(params["final_norm"], h)
    out = jnp.swapaxes(linear(params["head"], h).astype(jnp.float32), 1, 2)  # [B, horizon, C]
    return out * std + mean


def loss_fn(params, batch: dict, cfg: SMambaConfig, rng: jax.Array | None = None):
    """``batch{"x": [b, lookback, C], "y": [b, horizon, C]}`` -> ``(mse, {"mse", "mae"})``."""
    pred = apply(params, batch["x"], cfg, rng)
    err = pred - batch["y"].astype(jnp.float32)
    mse = jnp.mean(err ** 2)
    return mse, {"mse": mse, "mae": jnp.mean(jnp.abs(err))}


__all__ = ["init", "init_boxed", "param_axes", "apply", "loss_fn", "instance_norm", "bidirectional_mamba",
           "encoder_layer"]
