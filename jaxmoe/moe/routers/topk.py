"""Top-k routing (``router: topk``): DeepSeekMoE / Mixtral / Qwen-MoE / OLMoE / DeepSeek-V3.

Softmax (or sigmoid) scores in fp32 over a learned kernel ``[embed, experts]``; optional
selection-only bias and group limit; combine weights are the unbiased scores of the chosen
experts, renormalised when ``norm_topk``, times ``routed_scaling_factor``. No options of
its own: everything it reads is a shared field of ``model.moe``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxmoe.moe.routers.base import Router, Routing, apply_interventions, override_scores, router_logits

if TYPE_CHECKING:
    from jaxmoe.moe.config import MoEConfig


def _scores(logits: jax.Array, cfg: MoEConfig) -> jax.Array:
    if cfg.score_func == "sigmoid":
        return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits, axis=-1)


def _group_limit(sel: jax.Array, cfg: MoEConfig) -> jax.Array:
    """DeepSeek-V3 group-limited routing: keep the ``topk_groups`` groups with the largest
    sum of their top-2 selection scores; other experts get selection score -inf (as
    transformers' DeepseekV3TopkRouter does), so they are never chosen even when a selection
    bias makes in-group scores negative."""
    t, n = sel.shape
    g = cfg.num_groups
    grouped = sel.reshape(t, g, n // g)
    top2 = jax.lax.top_k(grouped, min(2, n // g))[0].sum(-1)  # [T, G]
    _, gidx = jax.lax.top_k(top2, cfg.topk_groups)
    gmask = jax.nn.one_hot(gidx, g, dtype=jnp.bool_).any(1)  # [T, G]
    emask = jnp.repeat(gmask, n // g, axis=1)
    return jnp.where(emask, sel, -jnp.inf)


def route(params, x: jax.Array, cfg: MoEConfig, *, expert_mask=None, force_mask=None, rank_select: int | None = None,
          weight_override=None, override_mask=None, logits=None) -> Routing:
    """Top-k routing for ``x [T, embed]``.

    ``logits [T, N]`` replaces the router's own logits (Read-ME, MoE-X; ``x`` is then not
    read); ``weight_override`` replaces the scores (selection and weights) of the tokens in
    ``override_mask``; ``rank_select=r`` keeps only the expert at rank ``r`` (0 = top-1)
    with weight 1 (its weight renormalised) times ``routed_scaling_factor``.
    """
    if logits is None:
        logits = router_logits(params, x)
    scores = override_scores(_scores(logits, cfg), weight_override, override_mask)
    sel = scores
    if cfg.selection_bias:
        sel = sel + jax.lax.stop_gradient(params["selection_bias"].astype(jnp.float32))
    if cfg.num_groups > 1:
        sel = _group_limit(sel, cfg)
    sel = apply_interventions(sel, expert_mask, force_mask)
    probs = scores
    if cfg.score_func == "sigmoid":
        probs = scores / (scores.sum(-1, keepdims=True) + 1e-20)
    if rank_select is not None:
        if not 0 <= rank_select < cfg.num_experts:
            raise ValueError(f"rank_select={rank_select} must be between 0 and num_experts-1={cfg.num_experts - 1}.")
        ids = jax.lax.top_k(sel, rank_select + 1)[1][:, rank_select:]
        weights = jnp.full(ids.shape, cfg.routed_scaling_factor, jnp.float32)
        return Routing(ids.astype(jnp.int32), weights, probs, logits)
    _, ids = jax.lax.top_k(sel, cfg.experts_per_token)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    if cfg.norm_topk:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    weights = weights * cfg.routed_scaling_factor
    return Routing(ids.astype(jnp.int32), weights, probs, logits)  # probs: normalised scores for the losses


class TopKRouter(Router):
    name = "topk"
    ranked = True
    route = staticmethod(route)


ROUTER = TopKRouter()
