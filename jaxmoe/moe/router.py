"""Routers: token representations -> one :class:`Routing` record.

Inference-time interventions are *inputs* to the router (never forks of the layer):
``expert_mask`` switches experts off (they receive zero tokens, the next best fill in),
``force_mask`` forces experts into every token's set.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from jaxmoe.config import MoEConfig
from jaxmoe.nn.init import normal, param, split, zeros


@flax.struct.dataclass
class Routing:
    """What a router decided for ``T`` tokens with (at most) ``K`` experts each.

    expert_ids: ``[T, K]`` int32; weights: ``[T, K]`` fp32 combine weights;
    probs: ``[T, N]`` fp32 router probabilities (for balance losses and statistics);
    logits: ``[T, N]`` fp32; valid: ``[T, K]`` bool or None (variable experts per token).
    """

    expert_ids: jax.Array
    weights: jax.Array
    probs: jax.Array
    logits: jax.Array
    valid: Optional[jax.Array] = None


def init_router(key, embed_dim: int, cfg: MoEConfig, std: float = 0.02) -> dict:
    k = split(key, ["kernel", "bias"])
    p = {"kernel": param(k["kernel"], (embed_dim, cfg.num_experts), ("embed", None), normal(std))}
    if cfg.selection_bias:
        p["selection_bias"] = param(k["bias"], (cfg.num_experts,), (None,), zeros)
    return p


def router_logits(params, x: jax.Array) -> jax.Array:
    """``x [T, embed] -> logits [T, N]`` in fp32."""
    return x.astype(jnp.float32) @ params["kernel"].astype(jnp.float32)


def _scores(logits: jax.Array, cfg: MoEConfig) -> jax.Array:
    if cfg.score_func == "sigmoid":
        return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits, axis=-1)


def _group_limit(sel: jax.Array, cfg: MoEConfig) -> jax.Array:
    """DeepSeek-V3 group-limited routing: keep the ``topk_groups`` groups with the largest
    sum of their top-2 selection scores; other experts get selection score 0 (as HF does)."""
    t, n = sel.shape
    g = cfg.num_groups
    grouped = sel.reshape(t, g, n // g)
    top2 = jax.lax.top_k(grouped, min(2, n // g))[0].sum(-1)  # [T, G]
    _, gidx = jax.lax.top_k(top2, cfg.topk_groups)
    gmask = jax.nn.one_hot(gidx, g, dtype=jnp.bool_).any(1)  # [T, G]
    emask = jnp.repeat(gmask, n // g, axis=1)
    return jnp.where(emask, sel, 0.0)


def apply_interventions(sel: jax.Array, expert_mask: jax.Array | None, force_mask: jax.Array | None) -> jax.Array:
    """Disabled experts (``expert_mask`` False) can never be chosen; forced experts
    (``force_mask`` True) are always chosen. Both are ``[N]`` bool."""
    if expert_mask is not None:
        sel = jnp.where(expert_mask, sel, -jnp.inf)
    if force_mask is not None:
        sel = jnp.where(force_mask, jnp.float32(1e30), sel)
    return sel


def topk_route(params, x: jax.Array, cfg: MoEConfig, *, expert_mask=None, force_mask=None) -> Routing:
    """Top-k routing for ``x [T, embed]``.

    softmax (or sigmoid) scores in fp32; optional selection bias (selection only) and
    group limit; weights are the unbiased scores of the chosen experts, renormalised when
    ``norm_topk``, times ``routed_scaling_factor``.
    """
    logits = router_logits(params, x)
    scores = _scores(logits, cfg)
    sel = scores
    if cfg.selection_bias:
        sel = sel + jax.lax.stop_gradient(params["selection_bias"].astype(jnp.float32))
    if cfg.num_groups > 1:
        sel = _group_limit(sel, cfg)
    sel = apply_interventions(sel, expert_mask, force_mask)
    _, ids = jax.lax.top_k(sel, cfg.experts_per_token)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    if cfg.norm_topk:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    weights = weights * cfg.routed_scaling_factor
    probs = scores
    if cfg.score_func == "sigmoid":  # balance losses use normalised scores
        probs = scores / (scores.sum(-1, keepdims=True) + 1e-20)
    return Routing(ids.astype(jnp.int32), weights, probs, logits)


ROUTERS = {"topk": topk_route}


def route(params, x: jax.Array, cfg: MoEConfig, **kwargs) -> Routing:
    """Dispatch on ``cfg.router``."""
    try:
        fn = ROUTERS[cfg.router]
    except KeyError:
        raise ValueError(f"router {cfg.router!r} is not available; choose one of {', '.join(ROUTERS)}.") from None
    return fn(params, x, cfg, **kwargs)
