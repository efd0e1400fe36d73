"""Time-MoE: a decoder-only mixture-of-experts foundation model for time series.

Point-wise tokens (one time step = one token), following the Time-MoE paper (Shi et al.
2024) and the Hugging Face ``TimeMoeForPrediction`` model:

- embedding ``h0 = silu(x @ W_gate) * (x @ W_emb)`` (both ``[input_size, embed]``, no bias);
- pre-norm blocks (:mod:`jaxmoe.models.blocks`; fp32 RMSNorm, eps ``model.norm_eps``): causal RoPE attention with biased
  q/k/v and an unbiased output projection, then a MoE FFN: softmax router in fp32, top-k
  probabilities kept *without* renormalisation, routed SwiGLU experts of width
  ``ffn_dim // k`` and one shared SwiGLU expert of width ``ffn_dim`` scaled by
  ``sigmoid(h @ w_shared_gate)`` (or one dense SwiGLU of width ``ffn_dim`` with
  ``model.use_dense``);
- final RMSNorm and one linear head per horizon ``h`` in ``model.horizons``,
  ``[embed, input_size * h]`` (output index ``j * input_size + c`` = step ``j``, channel ``c``).

Loss (:func:`loss_fn`): windows aligned to their first observation, per window
z-normalisation over the observed input points, Huber
(delta 2) over every head with right-padded/unfolded targets and masks, averaged over
heads, plus ``model.aux_loss_coef`` (0.02) times the Switch-style balance loss over the
router logits of all layers concatenated (:func:`time_moe_aux_loss`).

Params::

    embed:      {gate [input_size, embed], emb [input_size, embed]}
    layers:     stacked block params (leading "layers" axis):
                {mixer_norm, mixer (attention), ffn_norm, ffn (moe layer or swiglu)}
    final_norm: {scale [embed]}
    heads:      list over horizons of {kernel [embed, input_size * h]}

``model.ffn_dim`` is Time-MoE's ``intermediate_size`` (0 -> 4 * embed); the ``model.moe``
fields used are ``num_experts``, ``experts_per_token``, ``dispatch``, ``capacity_factor`` and
``gmm_backend`` -- everything else about the MoE layer is fixed by :func:`moe_config`.

Training windows come from :mod:`jaxmoe.data.pipelines` (data kind ``timeseries_points``);
forecasting any horizon is :mod:`jaxmoe.decode.forecast`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from jaxmoe.config import Config, check
from jaxmoe.models import blocks
from jaxmoe.models.base import TransformerConfig
from jaxmoe.models.series import align_to_first_observation
from jaxmoe.models.stack import compute_dtype, scan_group, unbox_params
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.losses import expert_counts
from jaxmoe.moe.routers import route
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.init import logical_axes, normal, param, split, stack_boxed
from jaxmoe.nn.layers import init_rmsnorm, init_swiglu, rmsnorm, swiglu

HUBER_DELTA = 2.0


@dataclasses.dataclass(frozen=True)
class TimeMoEConfig(TransformerConfig):
    """Time-MoE forecaster (``model.family: time_moe``): FFN width (0 -> 4 * embed_dim; routed
    experts get ffn_dim // k), forecast heads, point dimension, dense FFNs instead of MoE,
    router aux-loss weight."""

    data_kind: ClassVar[str] = "timeseries_points"  # jaxmoe.data.pipelines: windows of seq_len + 1 points

    family: Literal["time_moe"] = "time_moe"
    ffn_dim: int = 0
    horizons: tuple[int, ...] = (1, 8, 32, 64)
    input_size: int = 1
    use_dense: bool = False
    aux_loss_coef: float = 0.02

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        m = self
        check(len(m.horizons) > 0 and all(h >= 1 for h in m.horizons) and len(set(m.horizons)) == len(m.horizons),
              f"model.horizons={list(m.horizons)} must be distinct positive integers, e.g. [1, 8, 32, 64].")
        check(m.input_size >= 1 and m.ffn_dim >= 0 and m.aux_loss_coef >= 0,
              "model.input_size must be >= 1, model.ffn_dim >= 0 (0 = 4 * embed_dim), model.aux_loss_coef >= 0.")


def ffn_width(cfg: TimeMoEConfig) -> int:
    """Time-MoE ``intermediate_size``: the shared expert / dense FFN width."""
    return cfg.ffn_dim or 4 * cfg.embed_dim


def expert_width(cfg: TimeMoEConfig) -> int:
    """Routed expert width ``ffn_dim // k``."""
    return max(1, ffn_width(cfg) // cfg.moe.experts_per_token)


def moe_config(cfg: TimeMoEConfig) -> MoEConfig:
    """The MoEConfig of a Time-MoE FFN: softmax top-k without renormalisation, experts of
    width ``ffn_dim // k``, one sigmoid-gated shared expert of width ``ffn_dim``; the balance
    loss is computed over all layers by :func:`time_moe_aux_loss`, so the layer's own is off."""
    return blocks.topk_moe_config(
        cfg.moe, norm_topk=False, expert_ffn_dim=expert_width(cfg), num_shared_experts=1,
        shared_ffn_dim=ffn_width(cfg), shared_expert_gate=True, balance_loss="none", seq_aux=False,
        device_balance_coef=0.0, z_loss_coef=0.0, router_jitter=0.0)


def _model_cfg(cfg) -> TimeMoEConfig:
    return cfg.model if isinstance(cfg, Config) else cfg


# ------------------------------------------------------------------------------ init


def _init_block(key, cfg: TimeMoEConfig) -> dict:
    k = split(key, ["mixer", "ffn"])
    mixer = attn_lib.init_attention(k["mixer"], cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                                    qkv_bias=True, qk_norm=False, std=cfg.init_std)
    if cfg.use_dense:
        ffn = init_swiglu(k["ffn"], cfg.embed_dim, ffn_width(cfg), cfg.init_std)
    else:
        ffn = init_moe(k["ffn"], cfg.embed_dim, moe_config(cfg), cfg.init_std)
    return blocks.init_block(mixer, ffn, cfg.embed_dim)


def init_boxed(key, cfg: TimeMoEConfig) -> dict:
    """Params with their logical axes (``Boxed`` leaves)."""
    cfg = _model_cfg(cfg)
    k = split(key, ["gate", "emb", "layers", "heads"])
    c, d = cfg.input_size, cfg.embed_dim
    head_keys = jax.random.split(k["heads"], len(cfg.horizons))
    return {
        "embed": {"gate": param(k["gate"], (c, d), (None, "embed"), normal(cfg.init_std)),
                  "emb": param(k["emb"], (c, d), (None, "embed"), normal(cfg.init_std))},
        "layers": stack_boxed(lambda kk: _init_block(kk, cfg), k["layers"], cfg.num_layers),
        "final_norm": init_rmsnorm(d),
        "heads": [{"kernel": param(hk, (d, c * h), ("embed", None), normal(cfg.init_std))}
                  for hk, h in zip(head_keys, cfg.horizons)],
    }


def init(key, cfg: TimeMoEConfig) -> dict:
    """Random params (nested dicts/lists of arrays), normal(0, init_std), biases 0, norms 1."""
    cfg = _model_cfg(cfg)
    return unbox_params(init_boxed(key, cfg), cfg.param_dtype)


def param_axes(cfg: TimeMoEConfig) -> Any:
    """Logical axis names of every param (same tree structure as :func:`init`)."""
    return logical_axes(init_boxed, jax.random.PRNGKey(0), _model_cfg(cfg))


# ----------------------------------------------------------------------------- cache


def init_cache(cfg: TimeMoEConfig, batch: int, max_len: int | None = None, dtype=None) -> dict:
    """KV cache ``{"index": int32, "layers": {"k","v": [layers, batch, max_len, kv_heads, head_dim]}}``."""
    cfg = _model_cfg(cfg)
    return blocks.init_kv_cache(cfg, batch, max_len or cfg.max_seq_len, dtype or compute_dtype(cfg))


# --------------------------------------------------------------------------- forward


def embed_points(params, x: jax.Array, dtype) -> jax.Array:
    """Point-wise SwiGLU embedding ``[batch, seq, input_size] -> [batch, seq, embed]``."""
    x = x.astype(dtype)
    return jax.nn.silu(x @ params["gate"].astype(dtype)) * (x @ params["emb"].astype(dtype))


def _moe_ffn(p, x, mcfg: MoEConfig, expert_mask, force_mask, valid=None):
    """The MoE FFN with Time-MoE's routing statistics (``counts``, ``prob_mean``, ``expert_ids``)."""
    b, s, d = x.shape
    routing = route(p["router"], x.reshape(b * s, d), mcfg, expert_mask=expert_mask, force_mask=force_mask)
    y, _ = moe(p, x, mcfg, routing=routing)
    probs = routing.probs.astype(jnp.float32)
    if valid is None:
        counts, prob_mean = expert_counts(routing.expert_ids, mcfg.num_experts), probs.mean(0)
    else:  # [T] token weights: padding and degenerate windows take no part in the statistics
        counts = expert_counts(routing.expert_ids, mcfg.num_experts, valid[:, None])
        prob_mean = (probs * valid[:, None]).sum(0) / jnp.maximum(valid.sum(), 1.0)
    return y, {"counts": counts, "prob_mean": prob_mean, "expert_ids": routing.expert_ids}


def _block(p, h, cfg: TimeMoEConfig, mcfg: MoEConfig, positions, layer_cache, cache_index, expert_mask, force_mask,
           valid=None):
    mixer = blocks.attention_mixer(cfg, positions, layer_cache, cache_index)
    if cfg.use_dense:
        ffn = lambda fp, x: (swiglu(fp, x), None)  # noqa: E731
    else:
        ffn = lambda fp, x: _moe_ffn(fp, x, mcfg, expert_mask, force_mask, valid)  # noqa: E731
    return blocks.block(p, h, mixer, ffn, cfg.norm_eps)


def time_moe_aux_loss(counts: jax.Array, prob_mean: jax.Array, tokens_per_layer: int) -> jax.Array:
    """Time-MoE balance loss over the router logits of all layers concatenated.

    ``counts [layers, N]``: top-k picks per expert in each layer; ``prob_mean [layers, N]``:
    mean softmax probability per expert in each layer. With ``T = layers * tokens``:
    ``f_i = sum_l counts[l, i] / T``, ``P_i = sum_l prob_mean[l, i] * tokens / T`` and
    ``L = N * sum_i f_i P_i`` (not divided by k).
    """
    n_layers, n = counts.shape
    total = n_layers * tokens_per_layer
    f = counts.sum(0) / total
    p = prob_mean.mean(0)
    return n * jnp.sum(f * p)


def trunk(params, x: jax.Array, cfg: TimeMoEConfig, *, cache: dict | None = None,
          expert_mask: jax.Array | None = None, force_mask: jax.Array | None = None,
          token_mask: jax.Array | None = None):
    """Embedding + blocks + final norm.

    Args:
      x: ``[batch, seq]`` or ``[batch, seq, input_size]`` (already normalised, no NaNs).
      cache: optional :func:`init_cache` cache; ``x`` is written at ``cache["index"]``.
      expert_mask / force_mask: optional ``[layers, experts]`` bool router inputs.
      token_mask: optional ``[batch, seq]`` weights of the tokens in the routing statistics
        (the balance loss and the load); default all 1.
    Returns ``(hidden [batch, seq, embed], aux, new_cache)``; aux has ``aux_loss`` (the
    unweighted Time-MoE balance loss), ``load [layers, experts]`` (fraction of picks),
    ``counts``, ``prob_mean`` and ``expert_ids [layers, batch*seq, k]`` (MoE only).
    """
    cfg = _model_cfg(cfg)
    dt = compute_dtype(cfg)
    if x.ndim == 2:
        x = x[..., None]
    b, s, _ = x.shape
    mcfg = moe_config(cfg)
    index, positions = blocks.positions(cache, b, s)
    h = embed_points(params["embed"], x, dt)
    valid = None if token_mask is None else token_mask.reshape(b * s).astype(jnp.float32)
    tokens = b * s if valid is None else jnp.maximum(valid.sum(), 1.0)

    def body(h, xs):
        lp, lc, em, fm = xs
        h, c, stats = _block(lp, h, cfg, mcfg, positions, lc, index, em, fm, valid)
        return h, (c, stats)

    layer_cache = cache["layers"] if cache is not None else None
    h, (new_layers, stats) = scan_group(body, h, (params["layers"], layer_cache, expert_mask, force_mask), cfg.remat)
    h = rmsnorm(params["final_norm"], h, cfg.norm_eps)
    if cfg.use_dense:
        zero = jnp.float32(0.0)
        aux = {"aux_loss": zero, "load": jnp.zeros((0, cfg.moe.num_experts)), "expert_ids": None}
    else:
        counts = stats["counts"]
        aux = {"aux_loss": time_moe_aux_loss(counts, stats["prob_mean"], tokens),
               "load": counts / jnp.maximum(counts.sum(-1, keepdims=True), 1.0),
               "counts": counts, "prob_mean": stats["prob_mean"], "expert_ids": stats["expert_ids"]}
    return h, aux, blocks.advance(cache, index, s, new_layers)


def apply_head(params, hidden: jax.Array, cfg: TimeMoEConfig, head: int) -> jax.Array:
    """Head ``head`` (index into ``model.horizons``): ``[..., embed] -> [..., h, input_size]`` fp32."""
    cfg = _model_cfg(cfg)
    h = cfg.horizons[head]
    out = hidden @ params["heads"][head]["kernel"].astype(hidden.dtype)
    return out.astype(jnp.float32).reshape(out.shape[:-1] + (h, cfg.input_size))


def forward(params, x: jax.Array, cfg: TimeMoEConfig, *, cache: dict | None = None,
            expert_mask: jax.Array | None = None, force_mask: jax.Array | None = None,
            token_mask: jax.Array | None = None, return_hidden: bool = False):
    """Full forward: ``x [batch, seq(, input_size)]`` -> ``(predictions, aux, new_cache)``.

    ``predictions`` is a list over ``model.horizons`` of fp32 ``[batch, seq, h, input_size]``:
    entry ``[:, t, j]`` forecasts step ``t + 1 + j``.
    """
    cfg = _model_cfg(cfg)
    hidden, aux, new_cache = trunk(params, x, cfg, cache=cache, expert_mask=expert_mask, force_mask=force_mask,
                                   token_mask=token_mask)
    preds = [apply_head(params, hidden, cfg, i) for i in range(len(cfg.horizons))]
    if return_hidden:
        aux["hidden"] = hidden
    return preds, aux, new_cache


def apply(params, x: jax.Array, cfg: TimeMoEConfig, **kwargs) -> tuple[list[jax.Array], dict]:
    """Forward without a cache: ``(predictions per head [batch, seq, h, input_size], aux)``."""
    preds, aux, _ = forward(params, x, cfg, **kwargs)
    return preds, aux


# ----------------------------------------------------------------------- normalisation


def _channels(a: jax.Array) -> jax.Array:
    return a[..., None] if a.ndim == 2 else a


def _series_stats(cv: jax.Array, cm: jax.Array):
    """Mean, population std and a "constant" flag of the observed points of ``cv`` (time axis 1)."""
    cv = jnp.where(cm > 0, cv, 0.0)
    n = jnp.maximum(cm.sum(1, keepdims=True), 1.0)
    mean = cv.sum(1, keepdims=True) / n
    var = (cm * (cv - mean) ** 2).sum(1, keepdims=True) / n
    std = jnp.sqrt(var)
    constant = (std == 0) | (std <= 1e-6 * jnp.abs(mean))
    return mean, jnp.where(constant, 1.0, std), constant


def normalize(values: jax.Array, mask: jax.Array, context: jax.Array | None = None, *, return_constant: bool = False):
    """Per-series z-score: ``values [batch, seq(, C)]``, ``mask`` same (1 = observed).

    Statistics (mean, population std) come from the observed points of ``context``
    (default: ``values`` itself) along the time axis; where the std is 0 (a constant
    series, up to float32 rounding) only the mean is subtracted.
    Returns ``(normalised [batch, seq, C], mean [batch, 1, C], std [batch, 1, C])`` fp32,
    plus the bool ``constant [batch, 1, C]`` flags with ``return_constant``.
    """
    values = _channels(values).astype(jnp.float32)
    mask = jnp.broadcast_to(_channels(mask), values.shape).astype(jnp.float32)
    if context is None:
        cv, cm = values, mask
    else:
        cv, cm = context
        cv = _channels(cv).astype(jnp.float32)
        cm = jnp.broadcast_to(_channels(cm), cv.shape).astype(jnp.float32)
    mean, std, constant = _series_stats(cv, cm)
    out = (jnp.where(mask > 0, values, 0.0) - mean) / std
    return (out, mean, std, constant) if return_constant else (out, mean, std)


def fill_missing(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Replace unobserved points (mask 0) by the last observed value before them (forward
    fill); points before the first observation become 0 (the normalised mean)."""
    x = _channels(x)
    mask = jnp.broadcast_to(_channels(mask), x.shape)
    s = x.shape[1]
    idx = jnp.where(mask > 0, jnp.arange(s, dtype=jnp.int32)[None, :, None], -1)
    last = jax.lax.cummax(idx, axis=1)
    filled = jnp.take_along_axis(x, jnp.maximum(last, 0), axis=1)
    return jnp.where(last >= 0, filled, 0.0).astype(x.dtype)


# ------------------------------------------------------------------------------- loss


def huber(pred: jax.Array, target: jax.Array, delta: float = HUBER_DELTA) -> jax.Array:
    """Element-wise Huber loss (torch ``HuberLoss(delta)``, reduction none)."""
    err = jnp.abs(pred - target)
    return jnp.where(err <= delta, 0.5 * err * err, delta * (err - 0.5 * delta))


def unfold_targets(labels: jax.Array, mask: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
    """Right-pad ``labels/mask [batch, seq, C]`` with ``horizon - 1`` zeros and unfold with
    window ``horizon``, stride 1: ``out[:, t, j] = labels[:, t + j]`` -> ``[batch, seq, h, C]``."""
    s = labels.shape[1]
    pad = [(0, 0), (0, horizon - 1), (0, 0)]
    lp = jnp.pad(labels, pad)
    mp = jnp.pad(mask, pad)
    idx = jnp.arange(s)[:, None] + jnp.arange(horizon)[None, :]  # [s, h]
    return lp[:, idx], mp[:, idx]


def multi_horizon_loss(preds: list[jax.Array], labels: jax.Array, mask: jax.Array,
                       horizons: tuple[int, ...], delta: float = HUBER_DELTA) -> tuple[jax.Array, list[jax.Array]]:
    """Mean over heads of the masked-mean Huber loss of each head.

    ``preds[i] [batch, seq, h_i, C]``; ``labels, mask [batch, seq(, C)]``.
    Returns ``(loss, per-head losses)``.
    """
    labels = _channels(labels).astype(jnp.float32)
    mask = jnp.broadcast_to(_channels(mask), labels.shape).astype(jnp.float32)
    per_head = []
    for p, h in zip(preds, horizons):
        t, m = unfold_targets(labels, mask, h)
        per_head.append((huber(p.astype(jnp.float32), t, delta) * m).sum() / jnp.maximum(m.sum(), 1.0))
    return sum(per_head) / len(per_head), per_head


def prepare_windows(values: jax.Array, mask: jax.Array | None) -> dict:
    """Window ``[batch, seq+1(, C)]`` -> normalised, gap-filled inputs and labels.

    Each row is first shifted so that it starts at its first observed input point
    (:func:`~jaxmoe.models.series.align_to_first_observation`: leading padding becomes
    trailing padding). Statistics come from the observed *input* points
    (``values[:, :-1]``); inputs are forward-filled where unobserved; labels are 0 where
    unobserved (and masked). A window whose observed inputs are constant (in a channel)
    normalises to exact zeros and carries nothing to learn: its labels are masked.

    Returns ``{"inputs", "labels", "label_mask": [b, s, C], "token_mask": [b, s]}``;
    ``token_mask`` is 1 at the positions that carry information (from the first to the last
    observed input of a non-constant window); only these count in the balance loss, so
    padding and degenerate windows take no part in training at all.
    """
    values = _channels(values).astype(jnp.float32)
    if mask is None:
        mask = jnp.isfinite(values).astype(jnp.float32)
    mask = jnp.broadcast_to(_channels(mask), values.shape).astype(jnp.float32)
    mask = jnp.where(jnp.isfinite(values), mask, 0.0)
    values = jnp.where(mask > 0, values, 0.0)
    values, mask = align_to_first_observation(values, mask, values.shape[1] - 1)
    normed, _, _, constant = normalize(values, mask, context=(values[:, :-1], mask[:, :-1]), return_constant=True)
    inputs = fill_missing(normed[:, :-1], mask[:, :-1])
    label_mask = mask[:, 1:] * (~constant).astype(jnp.float32)
    labels = jnp.where(label_mask > 0, normed[:, 1:], 0.0)
    seen = mask[:, :-1].max(-1) > 0  # [b, s]
    before_last = jnp.flip(jax.lax.cummax(jnp.flip(seen, 1).astype(jnp.int32), axis=1), 1) > 0
    informative = ~constant.any(-1)  # [b, 1]
    token_mask = (before_last & informative).astype(jnp.float32)
    return {"inputs": inputs, "labels": labels, "label_mask": label_mask, "token_mask": token_mask}


def prepare_batch(values: jax.Array, mask: jax.Array | None):
    """:func:`prepare_windows` as a tuple ``(inputs, labels, label_mask)``."""
    w = prepare_windows(values, mask)
    return w["inputs"], w["labels"], w["label_mask"]


def loss_fn(params, batch: dict, cfg: TimeMoEConfig, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``batch{"values": [batch, seq+1(, C)], "mask": same}`` -> ``(loss, metrics)``.

    loss = mean over heads of the masked Huber(2) loss on z-normalised windows
    + ``aux_loss_coef`` * Time-MoE balance loss.
    """
    del rng
    cfg = _model_cfg(cfg)
    w = prepare_windows(batch["values"], batch.get("mask"))
    preds, aux = apply(params, w["inputs"], cfg, token_mask=w["token_mask"])
    ar, per_head = multi_horizon_loss(preds, w["labels"], w["label_mask"], cfg.horizons)
    loss = ar
    metrics = {"ar_loss": ar}
    for h, l in zip(cfg.horizons, per_head):
        metrics[f"loss_h{h}"] = l
    if not cfg.use_dense:
        loss = loss + cfg.aux_loss_coef * aux["aux_loss"]
        metrics["aux_loss"] = aux["aux_loss"]
        metrics["load"] = aux["load"]
        metrics["max_load"] = (aux["load"].max(-1) * cfg.moe.num_experts).mean()
    return loss, metrics
