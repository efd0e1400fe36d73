"""Moirai-MoE style patch-token forecaster with a mixture distribution head.

A decoder-only transformer over *patches* of ``model.patch_size`` (16) points, in the spirit
of Moirai-MoE (Liu et al. 2024, ``uni2ts`` ``MoiraiMoEModule``), univariate:

- **Scaling.** Per series, ``loc`` = mean and ``scale`` = population std of the observed
  context points (the input part of a training window; the whole context when forecasting);
  when the std is (numerically) 0 the scale is ``|loc|``, or 1 if that is 0 too.
  ``z = (x - loc) / scale``; unobserved points are set to 0 and flagged by the mask.
- **Patch embedding.** A token is one patch ``z_p [P]`` concatenated with its observed mask
  ``m_p [P]`` (``u = [z_p * m_p, m_p]``, 2P numbers; uni2ts feeds only the scaled values,
  the mask here lets the model tell a missing point from a zero):
  ``h0 = feat(silu(in(u))) + res(u)`` with biased linear maps ``in, res: [2P, D]``,
  ``feat: [D, D]``.
- **Blocks** (pre-norm, fp32 RMSNorm, eps ``model.norm_eps``), causal over patch tokens:
  ``h += attn(rmsnorm(h)); h += moe(rmsnorm(h))``.
  Attention has no biases, QK-norm (RMSNorm over each head's dims) and RoPE (theta
  ``model.rope_theta``, rotate-half layout) on the first half of each head's dims
  (``2 * (head_dim // 4)`` dims; the rest carry no position), positions = token index.
  uni2ts uses ``partial_factor=(0, 0.5)`` with an interleaved-pair rotary layout; the
  rotate-half layout is the same rotation up to a fixed permutation of those dims.
  Every FFN is a top-k SwiGLU MoE (``jaxmoe.moe.layer.moe``; Moirai-MoE: 32 experts, top-2,
  width ``model.moe.expert_ffn_dim``, no shared expert) whose gate is either
  - ``model.moirai_gating: learned`` (default): a learned router, softmax over the experts,
    top-k, weights renormalised over the k chosen (= a softmax over the k chosen logits, as
    the released code does with its distances), plus the ``model.moe`` balance loss; or
  - ``centroid``: fixed per-layer centroids ``ffn.centroids [experts, embed]`` (the released
    model stores k-means centroids of a pretrained Moirai's token representations, one set per
    layer): ``d = ||x - c_e||_2``, the k experts with the **largest** ``d`` (exactly what the
    released ``MoEFeedForward`` does: ``torch.topk(cdist, k)``), weights ``softmax`` over those
    k distances; ``centroid_nearest`` takes the k *nearest* centroids (``-d``) instead. The
    centroids get no gradient (``stop_gradient``) and no weight decay, so they stay as loaded
    or initialised (:func:`set_centroids` installs k-means centroids, :func:`kmeans`).
- Final RMSNorm, then one biased linear head ``[D, P * R]`` (computed in fp32): for every point of the **next**
  patch, the ``R = distributions.num_raw_params(model.mixture_components)`` raw parameters of
  a mixture (default Moirai's Student-t, normal with fixed scale 1e-3, negative binomial,
  log-normal; see :mod:`jaxmoe.models.distributions`) over the scaled value ``z``.

**Loss** (:func:`loss_fn`). A window of ``W`` points keeps its last ``N * P`` points
(``N = W // P``; the pipelines of :func:`build_pipelines` give ``W = seq_len + P``).
Tokens ``0..N-2`` are the inputs, token ``t`` predicts patch ``t + 1``; scaling statistics
come from the observed input points. Loss = masked mean over the *observed* target points of
``-log p(z)`` (in scaled space: the ``+ log scale`` Jacobian term is a per-series constant
that carries no gradient, so it is left out) + the summed router aux losses of the layers
(``model.moe.balance_loss`` / ``balance_coef`` / ``z_loss_coef``; none with centroid gating).

**Forecasting** (:func:`forecast_moirai`): the context is left-padded (masked) to a whole
number of patches, scaled, and ``ceil(horizon / P)`` patches are sampled autoregressively
inside one jitted function: the last token's mixture gives ``num_samples`` draws of the next
patch, each draw is fed back as an observed patch and the next patch is drawn from its own
path, and so on; paths are de-normalised and summarised by quantiles, median and mean.
``use_cache=True`` (default) prefills a KV cache with the context once (shared by all sample
paths) and then decodes one token per path per step; ``use_cache=False`` re-runs the whole
fixed-size token buffer every step (causal attention makes the not-yet-written tokens
invisible) -- the reference path; both draw the same random numbers. ``jaxmoe forecast`` /
``evaluate`` use the median as the point forecast (:func:`forecast_quantiles`). As in uni2ts
the mixture lives in scaled space (an affine transform of it gives the raw-scale
distribution), so e.g. negative-binomial draws are ``loc + scale * k`` for integers ``k``.

Params::

    embed:      {in: {kernel [2P, D], bias [D]}, feat: {kernel [D, D], bias [D]},
                 res: {kernel [2P, D], bias [D]}}
    layers:     stacked (leading "layers" axis) {mixer_norm, mixer (attention: q/k/v/o
                kernels, q_norm, k_norm), ffn_norm, ffn (moe params; router, or centroids)}
    final_norm: {scale [D]}
    head:       {kernel [D, P * R], bias [P * R]}
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.config import Config, ConfigError, check
from jaxmoe.models import distributions as dist
from jaxmoe.models.base import TransformerConfig
from jaxmoe.models.series import align_to_first_observation
from jaxmoe.models.stack import scan_group
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.routers.centroid import centroid_routing
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.init import logical_axes, normal, param, split, stack_boxed
from jaxmoe.nn.layers import init_linear, init_rmsnorm, linear, rmsnorm
from jaxmoe.nn.rope import apply_rope

from jaxmoe.models.stack import DTYPES, unbox_params  # noqa: E402
DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclasses.dataclass(frozen=True)
class MoiraiMoEConfig(TransformerConfig):
    """Moirai-MoE style forecaster (``model.family: moirai_moe``): points per patch token,
    components of the mixture distribution head, and the MoE gating: a learned top-k router,
    or fixed per-layer centroids ("centroid": top-k of the distances as in the released
    code; "centroid_nearest": the k nearest)."""

    family: Literal["moirai_moe"] = "moirai_moe"
    patch_size: int = 16
    mixture_components: tuple[str, ...] = ("student_t", "normal_fixed", "negative_binomial", "log_normal")
    moirai_gating: Literal["learned", "centroid", "centroid_nearest"] = "learned"

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        m, d = self, cfg.data
        comps = ("student_t", "normal", "normal_fixed", "negative_binomial", "log_normal")
        check(m.patch_size >= 1 and d.seq_len % m.patch_size == 0,
              f"data.seq_len={d.seq_len} must be a positive multiple of model.patch_size={m.patch_size}.")
        check(len(m.mixture_components) > 0 and len(set(m.mixture_components)) == len(m.mixture_components)
              and all(c in comps for c in m.mixture_components)
              and any(c in comps[:3] for c in m.mixture_components),
              f"model.mixture_components={list(m.mixture_components)} must be distinct names from {', '.join(comps)}, "
              "including one of student_t, normal, normal_fixed (negative values need a real-valued component).")


def _model_cfg(cfg) -> MoiraiMoEConfig:
    return cfg.model if isinstance(cfg, Config) else cfg


def compute_dtype(cfg: MoiraiMoEConfig):
    return DTYPES[cfg.dtype]


def num_raw_params(cfg: MoiraiMoEConfig) -> int:
    return dist.num_raw_params(_model_cfg(cfg).mixture_components)


def moe_config(cfg: MoiraiMoEConfig) -> MoEConfig:
    """The MoEConfig of every FFN: routed SwiGLU experts only, softmax top-k renormalised
    over the chosen experts (learned gating). With centroid gating the router (and its
    losses) is replaced by :func:`jaxmoe.moe.routers.centroid.centroid_routing`."""
    cfg = _model_cfg(cfg)
    m = dataclasses.replace(
        cfg.moe, router="topk", router_options=None, score_func="softmax", norm_topk=True, selection_bias=False,
        bias_update_rate=0.0, routed_scaling_factor=1.0, num_groups=1, topk_groups=1, num_shared_experts=0,
        shared_expert_gate=False, first_k_dense=0, moe_every=1, num_compressed_experts=0)
    if cfg.moirai_gating != "learned":
        m = dataclasses.replace(m, balance_loss="none", z_loss_coef=0.0, device_balance_coef=0.0, seq_aux=False)
    return m


# ------------------------------------------------------------------------------ init


def _init_block(key, cfg: MoiraiMoEConfig) -> dict:
    k = split(key, ["mixer", "ffn", "centroids"])
    ffn = init_moe(k["ffn"], cfg.embed_dim, moe_config(cfg), cfg.init_std)
    if cfg.moirai_gating != "learned":
        ffn.pop("router")
        ffn["centroids"] = param(k["centroids"], (cfg.moe.num_experts, cfg.embed_dim), ("expert", "embed"), normal(1.0))
    return {
        "mixer_norm": init_rmsnorm(cfg.embed_dim),
        "mixer": attn_lib.init_attention(k["mixer"], cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                                         qkv_bias=False, qk_norm=True, std=cfg.init_std),
        "ffn_norm": init_rmsnorm(cfg.embed_dim),
        "ffn": ffn,
    }


def init_boxed(key, cfg: MoiraiMoEConfig) -> dict:
    """Params with their logical axes (``Boxed`` leaves)."""
    cfg = _model_cfg(cfg)
    p, d, std = cfg.patch_size, cfg.embed_dim, cfg.init_std
    k = split(key, ["in", "feat", "res", "layers", "head"])
    return {
        "embed": {"in": init_linear(k["in"], 2 * p, d, (None, "embed"), bias=True, std=std),
                  "feat": init_linear(k["feat"], d, d, (None, "embed"), bias=True, std=std),
                  "res": init_linear(k["res"], 2 * p, d, (None, "embed"), bias=True, std=std)},
        "layers": stack_boxed(lambda kk: _init_block(kk, cfg), k["layers"], cfg.num_layers),
        "final_norm": init_rmsnorm(d),
        "head": init_linear(k["head"], d, p * num_raw_params(cfg), ("embed", None), bias=True, std=std),
    }


def init(key, cfg: MoiraiMoEConfig) -> dict:
    """Random params: normal(0, init_std) kernels, zero biases, unit norms (centroids N(0, 1))."""
    cfg = _model_cfg(cfg)
    return unbox_params(init_boxed(key, cfg), cfg.param_dtype)


def param_axes(cfg: MoiraiMoEConfig) -> Any:
    """Logical axis names of every param (same tree structure as :func:`init`)."""
    return logical_axes(init_boxed, jax.random.PRNGKey(0), _model_cfg(cfg))


def param_counts(cfg: MoiraiMoEConfig) -> dict[str, int]:
    """``{"total", "active"}`` parameter counts (active: k of the experts per token)."""
    cfg = _model_cfg(cfg)
    shapes = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), cfg))
    total = sum(int(x.size) for x in jax.tree.leaves(shapes))
    per_expert = sum(int(x.size) for x in jax.tree.leaves(shapes["layers"]["ffn"]["experts"])) // cfg.moe.num_experts
    return {"total": total, "active": total - per_expert * (cfg.moe.num_experts - cfg.moe.experts_per_token)}


def init_cache(cfg: MoiraiMoEConfig, batch: int, max_tokens: int, dtype=None) -> dict:
    """KV cache ``{"index": int32, "layers": {"k","v": [layers, batch, max_tokens, kv_heads, head_dim]}}``."""
    cfg = _model_cfg(cfg)
    one = attn_lib.init_kv_cache(batch, max_tokens, cfg.kv_heads, cfg.head_size, dtype or compute_dtype(cfg))
    return {"index": jnp.zeros((), jnp.int32),
            "layers": jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.num_layers,) + a.shape), one)}


# --------------------------------------------------------------------------- forward


def embed_patches(params, patches: jax.Array, mask: jax.Array, dtype) -> jax.Array:
    """``patches, mask [batch, tokens, P]`` -> ``[batch, tokens, embed]``:
    ``feat(silu(in(u))) + res(u)`` with ``u = [patches * mask, mask]``."""
    m = mask.astype(jnp.float32)
    u = jnp.concatenate([jnp.where(m > 0, patches.astype(jnp.float32), 0.0), m], axis=-1).astype(dtype)
    h = linear(params["feat"], jax.nn.silu(linear(params["in"], u)))
    return h + linear(params["res"], u)


def rope_dims(head_dim: int) -> int:
    """Dims of each head that carry RoPE: the first half, rounded down to an even count."""
    return 2 * (head_dim // 4)


def partial_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate the first :func:`rope_dims` dims of ``x [batch, seq, heads, head_dim]``."""
    r = rope_dims(x.shape[-1])
    if r == 0:
        return x
    return jnp.concatenate([apply_rope(x[..., :r], positions, theta), x[..., r:]], axis=-1)


def attention(params, x: jax.Array, positions: jax.Array, cfg: MoiraiMoEConfig, *, cache: dict | None = None,
              cache_index: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
    """Causal attention over patch tokens: no biases, per-head QK RMSNorm, RoPE on half the
    head dims. ``x [batch, seq, embed]``, ``positions [batch, seq]``; with a cache
    ``{"k","v": [batch, max_len, kv_heads, head_dim]}`` the new keys/values go to
    ``cache_index`` and queries see every cached position ``<=`` their own.
    Returns ``(y [batch, seq, embed], new cache or None)``."""
    proj = lambda p: jnp.einsum("bsd,dhk->bshk", x, p["kernel"].astype(x.dtype))
    q, k, v = proj(params["q"]), proj(params["k"]), proj(params["v"])
    q = rmsnorm(params["q_norm"], q, cfg.norm_eps)
    k = rmsnorm(params["k_norm"], k, cfg.norm_eps)
    q = partial_rope(q, positions, cfg.rope_theta)
    k = partial_rope(k, positions, cfg.rope_theta)
    scale = 1.0 / math.sqrt(q.shape[-1])
    new_cache = None
    if cache is None:
        implementation = attn_lib._choose_impl(cfg.attention_impl, x.dtype, False)  # cuDNN on GPU for bf16/fp16
        try:
            out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation=implementation)
        except Exception:  # cuDNN unavailable for this shape/dtype: fall back to XLA
            if implementation is None:
                raise
            out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)
    else:
        idx = jnp.asarray(cache_index, jnp.int32)
        ck = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, idx, 0, 0))
        cv = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, idx, 0, 0))
        new_cache = {"k": ck, "v": cv}
        s, max_len = x.shape[1], ck.shape[1]
        allowed = jnp.arange(max_len)[None, :] <= (idx + jnp.arange(s))[:, None]
        out = jax.nn.dot_product_attention(q, ck.astype(q.dtype), cv.astype(q.dtype), scale=scale,
                                           mask=allowed[None, None])
    y = jnp.einsum("bshk,hkd->bsd", out, params["o"]["kernel"].astype(x.dtype))
    return y, new_cache


def _block(p, h, cfg: MoiraiMoEConfig, mcfg: MoEConfig, positions, layer_cache, cache_index):
    x = rmsnorm(p["mixer_norm"], h, cfg.norm_eps)
    y, new_cache = attention(p["mixer"], x, positions, cfg, cache=layer_cache, cache_index=cache_index)
    h = h + y
    x = rmsnorm(p["ffn_norm"], h, cfg.norm_eps)
    routing = None
    if cfg.moirai_gating != "learned":
        b, s, d = x.shape
        routing = centroid_routing(x.reshape(b * s, d), p["ffn"]["centroids"], mcfg.experts_per_token,
                                   nearest=cfg.moirai_gating == "centroid_nearest")
    y, aux = moe(p["ffn"], x, mcfg, routing=routing)
    return h + y, new_cache, {"aux_loss": aux["aux_loss"], "load": aux["load"], "expert_ids": aux["expert_ids"]}


def trunk(params, patches: jax.Array, mask: jax.Array, cfg: MoiraiMoEConfig, *, cache: dict | None = None):
    """Embedding + blocks + final norm.

    Args:
      patches, mask: ``[batch, tokens, P]`` scaled values and their observed mask.
      cache: optional :func:`init_cache` cache; the tokens are written at ``cache["index"]``.
    Returns ``(hidden [batch, tokens, embed], aux, new_cache)``; aux: ``aux_loss`` (summed over
    layers, already weighted), ``load [layers, experts]``, ``expert_ids [layers, batch*tokens, k]``.
    """
    cfg = _model_cfg(cfg)
    b, n, _ = patches.shape
    mcfg = moe_config(cfg)
    index = cache["index"] if cache is not None else jnp.zeros((), jnp.int32)
    positions = jnp.broadcast_to(index + jnp.arange(n, dtype=jnp.int32), (b, n))
    h = embed_patches(params["embed"], patches, mask, compute_dtype(cfg))

    def body(h, xs):
        lp, lc = xs
        h, c, stats = _block(lp, h, cfg, mcfg, positions, lc, index)
        return h, (c, stats)

    layer_cache = cache["layers"] if cache is not None else None
    h, (new_layers, stats) = scan_group(body, h, (params["layers"], layer_cache), cfg.remat)
    h = rmsnorm(params["final_norm"], h, cfg.norm_eps)
    aux = {"aux_loss": stats["aux_loss"].sum(), "load": stats["load"], "expert_ids": stats["expert_ids"]}
    new_cache = None if cache is None else {"index": index + n, "layers": new_layers}
    return h, aux, new_cache


def distribution_params(params, hidden: jax.Array, cfg: MoiraiMoEConfig) -> dict:
    """``hidden [batch, tokens, embed]`` -> mixture params of the next patch, leaves
    ``[batch, tokens, P]`` (``weights_logits [batch, tokens, P, components]``); the head is
    computed in fp32 whatever the compute dtype."""
    cfg = _model_cfg(cfg)
    raw = linear(params["head"], hidden.astype(jnp.float32))  # fp32: a 1e-3 normal needs a precise loc
    raw = raw.reshape(raw.shape[:-1] + (cfg.patch_size, num_raw_params(cfg)))
    return dist.domain_map(raw, cfg.mixture_components)


def forward(params, patches: jax.Array, mask: jax.Array, cfg: MoiraiMoEConfig, *, cache: dict | None = None):
    """``(distribution params of the next patch per token, aux, new_cache)``."""
    hidden, aux, new_cache = trunk(params, patches, mask, cfg, cache=cache)
    return distribution_params(params, hidden, cfg), aux, new_cache


def apply(params, patches: jax.Array, cfg: MoiraiMoEConfig, mask: jax.Array | None = None) -> tuple[dict, dict]:
    """``patches [batch, tokens, P]`` (scaled, no NaNs; ``mask`` default all observed) ->
    ``(mixture params for the next patch of every token, leaves [batch, tokens, P]; aux)``."""
    if mask is None:
        mask = jnp.ones(patches.shape, jnp.float32)
    out, aux, _ = forward(params, patches, mask, cfg)
    return out, aux


# ----------------------------------------------------------------------- scaling, data


def scale_stats(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-series ``(loc, scale) [batch, 1]`` from the observed points of ``values [batch, n]``:
    mean and population std; where the std is (numerically) 0 the scale is ``|loc|``, or 1
    when that is 0 too. Homogeneous: scaling the series by ``c > 0`` scales both by ``c``."""
    v = values.astype(jnp.float32)
    m = mask.astype(jnp.float32)
    v = jnp.where(m > 0, v, 0.0)
    n = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    loc = v.sum(-1, keepdims=True) / n
    std = jnp.sqrt((m * (v - loc) ** 2).sum(-1, keepdims=True) / n)
    flat = (std == 0) | (std <= 1e-6 * jnp.abs(loc))
    fallback = jnp.where(jnp.abs(loc) > 0, jnp.abs(loc), 1.0)
    return loc, jnp.where(flat, fallback, std)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """``[batch, n * P] -> [batch, n, P]``."""
    b, n = x.shape
    if n % patch_size:
        raise ValueError(f"length {n} is not a multiple of the patch size {patch_size}.")
    return x.reshape(b, n // patch_size, patch_size)


def _clean(values: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    values = jnp.asarray(values, jnp.float32)
    finite = jnp.isfinite(values)
    mask = finite.astype(jnp.float32) if mask is None else jnp.where(finite, jnp.asarray(mask, jnp.float32), 0.0)
    return jnp.where(mask > 0, values, 0.0), mask


def prepare_batch(values: jax.Array, mask: jax.Array | None, patch_size: int):
    """Window ``[batch, W]`` -> scaled ``(inputs, input_mask, targets, target_mask)``, each
    ``[batch, N - 1, P]`` with ``N = W // P`` (the first ``W mod P`` points are dropped);
    rows shifted left by their whole patches of leading padding; statistics from the observed
    input points; unobserved points are 0."""
    values, mask = _clean(values, mask)
    w = values.shape[1]
    n = w // patch_size
    if n < 2:
        raise ValueError(f"a window of {w} points holds fewer than two patches of {patch_size}.")
    values, mask = values[:, w - n * patch_size:], mask[:, w - n * patch_size:]
    ctx = (n - 1) * patch_size
    # whole patches of leading padding become trailing padding (see align_to_first_observation)
    values, mask = align_to_first_observation(values, mask, ctx, multiple=patch_size)
    loc, scale = scale_stats(values[:, :ctx], mask[:, :ctx])
    z = jnp.where(mask > 0, (values - loc) / scale, 0.0)
    zp, mp = patchify(z, patch_size), patchify(mask, patch_size)
    return zp[:, :-1], mp[:, :-1], zp[:, 1:], mp[:, 1:]


def masked_nll(dist_params: dict, targets: jax.Array, target_mask: jax.Array) -> jax.Array:
    """Mean of ``-log p(target)`` over the points where ``target_mask`` is 1 (others ignored)."""
    lp = dist.mixture_log_prob(dist_params, targets)
    m = target_mask.astype(jnp.float32)
    return -jnp.sum(jnp.where(m > 0, lp, 0.0)) / jnp.maximum(m.sum(), 1.0)


def loss_fn(params, batch: dict, cfg: MoiraiMoEConfig, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``batch{"values": [batch, W], "mask": [batch, W]}`` -> ``(loss, metrics)``:
    masked NLL of the next patches (scaled space) + summed router aux losses."""
    del rng
    cfg = _model_cfg(cfg)
    inputs, in_mask, targets, t_mask = prepare_batch(batch["values"], batch.get("mask"), cfg.patch_size)
    dparams, aux = apply(params, inputs, cfg, in_mask)
    nll = masked_nll(dparams, targets, t_mask)
    loss = nll + aux["aux_loss"]
    metrics = {"nll": nll, "aux_loss": aux["aux_loss"], "load": aux["load"],
               "max_load": (aux["load"].max(-1) * cfg.moe.num_experts).mean()}
    return loss, metrics


def build_pipelines(cfg: Config):
    """Training / evaluation window pipelines from ``data.sources`` (default: synthetic).

    Windows hold ``data.seq_len + patch_size`` points: ``seq_len / patch_size`` input patches
    and one more patch of targets. Stride ``data.stride`` (0 -> seq_len), weights
    ``data.source_weights`` (empty -> equal); the evaluation pipeline draws from the same
    sources with seed ``train.seed + 1`` (none when ``data.eval_fraction`` is 0).
    """
    from jaxmoe.data.timeseries import build_timeseries_pipeline

    d = cfg.data
    specs = tuple(d.sources) or ("synthetic",)
    weights = tuple(d.source_weights) or (1.0,) * len(specs)
    if len(weights) != len(specs):
        raise ConfigError(f"data.source_weights has {len(weights)} entries for {len(specs)} sources.")
    common = dict(sources=list(zip(specs, weights)), context_length=d.seq_len + cfg.model.patch_size - 1,
                  stride=d.stride or d.seq_len, batch_size=cfg.train.batch_size, shuffle=d.shuffle,
                  exclude=tuple(d.exclude), exclude_like=tuple(d.exclude_like), num_threads=d.num_threads)
    train = build_timeseries_pipeline(seed=cfg.train.seed % (2 ** 32), **common)
    evalp = None
    if d.eval_fraction > 0:
        evalp = build_timeseries_pipeline(seed=(cfg.train.seed + 1) % (2 ** 32), **common)
    return train, evalp


# ------------------------------------------------------------------------ centroids


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(x: jax.Array, k: int, key: jax.Array, iters: int = 25) -> jax.Array:
    """Lloyd's k-means on ``x [n, d]`` (fp32) -> centroids ``[k, d]`` (k-means++-free: k
    distinct random points as the start; an empty cluster keeps its centroid)."""
    x = jnp.asarray(x, jnp.float32)
    c = x[jax.random.choice(key, x.shape[0], (k,), replace=x.shape[0] < k)]

    def step(c, _):
        d2 = jnp.sum(x * x, -1, keepdims=True) - 2.0 * x @ c.T + jnp.sum(c * c, -1)[None]
        onehot = jax.nn.one_hot(jnp.argmin(d2, -1), k, dtype=jnp.float32)
        count = onehot.sum(0)[:, None]
        return jnp.where(count > 0, onehot.T @ x / jnp.maximum(count, 1.0), c), None

    return jax.lax.scan(step, c, None, length=iters)[0]


def ffn_inputs(params, patches: jax.Array, mask: jax.Array, cfg: MoiraiMoEConfig) -> jax.Array:
    """The normalised FFN inputs (what the gate sees) of every layer for ``patches, mask
    [batch, tokens, P]``: ``[layers, batch * tokens, embed]`` fp32, one forward pass."""
    cfg = _model_cfg(cfg)
    b, n, _ = patches.shape
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    h = embed_patches(params["embed"], patches, mask, compute_dtype(cfg))
    return _ffn_inputs_scan(params, h, positions, cfg, moe_config(cfg))


def set_centroids(params, cfg: MoiraiMoEConfig, values: jax.Array, mask: jax.Array | None, key: jax.Array,
                  iters: int = 25) -> dict:
    """Moirai-MoE's gate: k-means centroids (``model.moe.num_experts`` per layer) of each
    layer's FFN inputs over the context patches of the windows ``values [batch, W]``.

    All layers' inputs come from one forward pass with the current params, so a layer's
    inputs reflect the routing of the layers below *before* their centroids change (the
    paper clusters a pretrained dense Moirai's representations). Needs centroid gating.
    Returns new params (the input params are not modified).
    """
    cfg = _model_cfg(cfg)
    if cfg.moirai_gating == "learned":
        raise ValueError("set_centroids needs model.moirai_gating=centroid or centroid_nearest.")
    cents = _fit_centroids(params, jnp.asarray(values, jnp.float32), None if mask is None else jnp.asarray(mask),
                           key, cfg, iters)
    old = params["layers"]["ffn"]["centroids"]
    layers = dict(params["layers"], ffn=dict(params["layers"]["ffn"], centroids=cents.astype(old.dtype)))
    return dict(params, layers=layers)


@functools.partial(jax.jit, static_argnames=("cfg", "iters"))
def _fit_centroids(params, values, mask, key, cfg: MoiraiMoEConfig, iters: int):
    inputs, in_mask, _, _ = prepare_batch(values, mask, cfg.patch_size)
    feats = ffn_inputs(params, inputs, in_mask, cfg)
    keys = jax.random.split(key, feats.shape[0])
    return jax.vmap(lambda x, k: kmeans(x, cfg.moe.num_experts, k, iters))(feats, keys)


def _ffn_inputs_scan(params, h, positions, cfg: MoiraiMoEConfig, mcfg: MoEConfig):
    b, n, _ = h.shape

    def body(h, lp):
        x = rmsnorm(lp["mixer_norm"], h, cfg.norm_eps)
        h = h + attention(lp["mixer"], x, positions, cfg)[0]
        x = rmsnorm(lp["ffn_norm"], h, cfg.norm_eps)
        routing = None
        if cfg.moirai_gating != "learned":
            routing = centroid_routing(x.reshape(b * n, -1), lp["ffn"]["centroids"], mcfg.experts_per_token,
                                       nearest=cfg.moirai_gating == "centroid_nearest")
        y, _ = moe(lp["ffn"], x, mcfg, routing=routing)
        return h + y, x.reshape(b * n, -1).astype(jnp.float32)

    return jax.lax.scan(body, h, params["layers"])[1]


# ------------------------------------------------------------------------ forecasting


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


def forecast_quantiles(params, cfg, context, horizon: int, num_samples: int = 100, rng: jax.Array | None = None) -> dict:
    """The ``jaxmoe forecast`` / ``evaluate`` hook: ``{"mean", "median": [batch, horizon],
    "quantiles": {level: [batch, horizon]}}`` as numpy (levels 0.1 .. 0.9)."""
    out = forecast_moirai(params, cfg, context, horizon, num_samples, rng)
    qs = np.asarray(out["quantiles"])
    return {"mean": np.asarray(out["mean"]), "median": np.asarray(out["median"]),
            "quantiles": {q: qs[i] for i, q in enumerate(out["quantile_levels"])}}
