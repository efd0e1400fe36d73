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
- **Blocks** (:mod:`jaxmoe.models.blocks`: pre-norm, fp32 RMSNorm, eps ``model.norm_eps``),
  causal over patch tokens: ``h += attn(rmsnorm(h)); h += moe(rmsnorm(h))``.
  Attention (:func:`jaxmoe.nn.attention.attention`) has no biases, QK-norm (RMSNorm over
  each head's dims) and RoPE (theta ``model.rope_theta``, rotate-half layout) on the first
  half of each head's dims (:func:`rope_dims`: ``2 * (head_dim // 4)`` dims; the rest carry
  no position), positions = token index.
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
    or initialised (:func:`set_centroids` installs k-means centroids,
    :func:`jaxmoe.moe.kmeans.kmeans`).
- Final RMSNorm, then one biased linear head ``[D, P * R]`` (computed in fp32): for every point of the **next**
  patch, the ``R = distributions.num_raw_params(model.mixture_components)`` raw parameters of
  a mixture (default Moirai's Student-t, normal with fixed scale 1e-3, negative binomial,
  log-normal; see :mod:`jaxmoe.models.distributions`) over the scaled value ``z``.

**Loss** (:func:`loss_fn`). A window of ``W`` points keeps its last ``N * P`` points
(``N = W // P``; the training pipelines, :mod:`jaxmoe.data.pipelines` with data kind
``timeseries_patches``, give ``W = seq_len + P``).
Tokens ``0..N-2`` are the inputs, token ``t`` predicts patch ``t + 1``; scaling statistics
come from the observed input points. Loss = masked mean over the *observed* target points of
``-log p(z)`` (in scaled space: the ``+ log scale`` Jacobian term is a per-series constant
that carries no gradient, so it is left out) + the summed router aux losses of the layers
(``model.moe.balance_loss`` / ``balance_coef`` / ``z_loss_coef``; none with centroid gating).

**Forecasting** (:mod:`jaxmoe.decode.forecast`): the context is scaled with the same
statistics and ``ceil(horizon / P)`` patches are sampled autoregressively from the mixture
of the last token (:func:`trunk` with a KV cache from :func:`init_cache`, then
:func:`distribution_params`). As in uni2ts the mixture lives in scaled space (an affine
transform of it gives the raw-scale distribution), so e.g. negative-binomial draws are
``loc + scale * k`` for integers ``k``.

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
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from jaxmoe.config import Config, check
from jaxmoe.models import blocks
from jaxmoe.models import distributions as dist
from jaxmoe.models.base import TransformerConfig
from jaxmoe.models.series import align_to_first_observation
from jaxmoe.models.stack import compute_dtype, scan_group, unbox_params
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.kmeans import kmeans
from jaxmoe.moe.routers.centroid import centroid_routing
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.init import logical_axes, normal, param, split, stack_boxed
from jaxmoe.nn.layers import init_linear, init_rmsnorm, linear, rmsnorm


@dataclasses.dataclass(frozen=True)
class MoiraiMoEConfig(TransformerConfig):
    """Moirai-MoE style forecaster (``model.family: moirai_moe``): points per patch token,
    components of the mixture distribution head, and the MoE gating: a learned top-k router,
    or fixed per-layer centroids ("centroid": top-k of the distances as in the released
    code; "centroid_nearest": the k nearest)."""

    data_kind: ClassVar[str] = "timeseries_patches"  # jaxmoe.data.pipelines: windows of seq_len + P points

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


def num_raw_params(cfg: MoiraiMoEConfig) -> int:
    return dist.num_raw_params(_model_cfg(cfg).mixture_components)


def moe_config(cfg: MoiraiMoEConfig) -> MoEConfig:
    """The MoEConfig of every FFN: routed SwiGLU experts only, softmax top-k renormalised
    over the chosen experts (learned gating). With centroid gating the router (and its
    losses) is replaced by :func:`jaxmoe.moe.routers.centroid.centroid_routing`."""
    cfg = _model_cfg(cfg)
    m = blocks.topk_moe_config(cfg.moe, norm_topk=True, num_shared_experts=0, shared_expert_gate=False,
                               num_compressed_experts=0)
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
    mixer = attn_lib.init_attention(k["mixer"], cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                                    qkv_bias=False, qk_norm=True, std=cfg.init_std)
    return blocks.init_block(mixer, ffn, cfg.embed_dim)


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


def init_cache(cfg: MoiraiMoEConfig, batch: int, max_tokens: int, dtype=None) -> dict:
    """KV cache ``{"index": int32, "layers": {"k","v": [layers, batch, max_tokens, kv_heads, head_dim]}}``."""
    cfg = _model_cfg(cfg)
    return blocks.init_kv_cache(cfg, batch, max_tokens, dtype or compute_dtype(cfg))


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


def _moe_ffn(p, x, cfg: MoiraiMoEConfig, mcfg: MoEConfig):
    """The MoE FFN, gated by the learned router or the fixed centroids."""
    routing = None
    if cfg.moirai_gating != "learned":
        b, s, d = x.shape
        routing = centroid_routing(x.reshape(b * s, d), p["centroids"], mcfg.experts_per_token,
                                   nearest=cfg.moirai_gating == "centroid_nearest")
    y, aux = moe(p, x, mcfg, routing=routing)
    return y, {"aux_loss": aux["aux_loss"], "load": aux["load"], "expert_ids": aux["expert_ids"]}


def _block(p, h, cfg: MoiraiMoEConfig, mcfg: MoEConfig, positions, layer_cache, cache_index):
    mixer = blocks.attention_mixer(cfg, positions, layer_cache, cache_index, rope_dims=rope_dims(cfg.head_size))
    return blocks.block(p, h, mixer, lambda fp, x: _moe_ffn(fp, x, cfg, mcfg), cfg.norm_eps)


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
    index, positions = blocks.positions(cache, b, n)
    h = embed_patches(params["embed"], patches, mask, compute_dtype(cfg))

    def body(h, xs):
        lp, lc = xs
        h, c, stats = _block(lp, h, cfg, mcfg, positions, lc, index)
        return h, (c, stats)

    layer_cache = cache["layers"] if cache is not None else None
    h, (new_layers, stats) = scan_group(body, h, (params["layers"], layer_cache), cfg.remat)
    h = rmsnorm(params["final_norm"], h, cfg.norm_eps)
    aux = {"aux_loss": stats["aux_loss"].sum(), "load": stats["load"], "expert_ids": stats["expert_ids"]}
    return h, aux, blocks.advance(cache, index, n, new_layers)


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


# ----------------------------------------------------------------------- scaling, loss


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


# ------------------------------------------------------------------------ centroids


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

    def ffn(p, x):  # the MoE FFN, reporting its (normalised) input
        return _moe_ffn(p, x, cfg, mcfg)[0], x.reshape(b * n, -1).astype(jnp.float32)

    def body(h, lp):
        h, _, feats = blocks.block(lp, h, blocks.attention_mixer(cfg, positions, None, None,
                                                                 rope_dims=rope_dims(cfg.head_size)), ffn, cfg.norm_eps)
        return h, feats

    return jax.lax.scan(body, h, params["layers"])[1]
