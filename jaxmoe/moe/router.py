"""Routers: token representations -> one :class:`Routing` record.

Inference-time interventions are *inputs* to the router (never forks of the layer):
``expert_mask`` switches experts off (they receive zero tokens, the next best fill in),
``force_mask`` forces experts into every token's set, ``rank_select=r`` keeps only the
expert ranked ``r`` (SCMoE's weak routing), ``weight_override [T, N]`` (with
``override_mask [T]``) replaces the router scores of some tokens (C3PO re-mixing),
``rng`` drives THOR's random experts and ``pregate_logits [T, N]`` carries Read-ME's
pre-computed router logits.

Routers (``cfg.router``): ``topk``; ``topp`` (dynamic top-p, variable experts per token
through ``Routing.valid``); ``thor`` (one random expert, no router params); ``readme``
(top-k over the pre-gating network's logits, no per-layer router params); ``moex``
(top-k over logits minus the experts' expected ReLU activity).
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from jaxmoe.moe.config import MoEConfig
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
    if cfg.router in ("thor", "readme"):  # no per-layer router (random / pre-gated)
        p = {}
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


def apply_interventions(sel: jax.Array, expert_mask: jax.Array | None, force_mask: jax.Array | None) -> jax.Array:
    """Disabled experts (``expert_mask`` False) can never be chosen; forced experts
    (``force_mask`` True) are always chosen. Both are ``[N]`` bool."""
    if expert_mask is not None:
        sel = jnp.where(expert_mask, sel, -jnp.inf)
    if force_mask is not None:
        sel = jnp.where(force_mask, jnp.float32(1e30), sel)
    return sel


def override_scores(scores: jax.Array, weight_override: jax.Array | None, override_mask: jax.Array | None):
    """Replace the router scores ``[T, N]`` of the tokens where ``override_mask [T]`` is
    True (every token when it is None) by ``weight_override [T, N]``."""
    if weight_override is None:
        return scores
    w = weight_override.astype(jnp.float32)
    if override_mask is None:
        return w
    return jnp.where(override_mask[:, None], w, scores)


def topk_route(params, x: jax.Array, cfg: MoEConfig, *, expert_mask=None, force_mask=None, logits=None,
               rank_select: int | None = None, weight_override=None, override_mask=None, **_) -> Routing:
    """Top-k routing for ``x [T, embed]``.

    softmax (or sigmoid) scores in fp32; optional selection bias (selection only) and
    group limit; weights are the unbiased scores of the chosen experts, renormalised when
    ``norm_topk``, times ``routed_scaling_factor``.

    ``logits [T, N]`` replaces the router's own logits (Read-ME, MoE-X);
    ``weight_override`` replaces the scores (selection and weights) of the tokens in
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


def _reject(router: str, **inputs) -> None:
    given = [k for k, v in inputs.items() if v is not None]
    if given:
        raise ValueError(f"the {router} router does not take {', '.join(given)}; use router topk, moex or readme.")


def topp_route(params, x: jax.Array, cfg: MoEConfig, *, expert_mask=None, force_mask=None, rank_select=None,
               weight_override=None, override_mask=None, **_) -> Routing:
    """Dynamic top-p routing ("Harder Tasks Need More Experts").

    ``P = softmax(x W)``; sort descending; keep the smallest prefix whose cumulative mass
    exceeds ``cfg.top_p`` (position j is kept iff the mass *before* it is <= p, so p = 1
    keeps every expert and the first expert is always kept). Returns the top-``max_k``
    ids with ``valid [T, max_k]`` marking the kept ones; weights are the raw P (not
    renormalised). Disabled experts carry no mass and are never valid; forced experts
    are always valid. ``weight_override`` replaces P for the overridden tokens.
    """
    _reject("topp", rank_select=rank_select)
    n = cfg.num_experts
    max_k = cfg.max_experts_per_token or n
    logits = router_logits(params, x)
    probs = jax.nn.softmax(logits, axis=-1)
    scores = override_scores(probs, weight_override, override_mask)
    sel = apply_interventions(scores, expert_mask, force_mask)
    _, ids = jax.lax.top_k(sel, max_k)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    enabled = jnp.ones_like(weights, jnp.bool_)
    if expert_mask is not None:
        enabled = jnp.take(jnp.asarray(expert_mask, jnp.bool_), ids)
    mass = jnp.where(enabled, weights, 0.0)
    before = jnp.cumsum(mass, axis=-1) - mass  # exclusive cumulative mass
    valid = (before <= cfg.top_p) & enabled
    if force_mask is not None:
        valid = valid | jnp.take(jnp.asarray(force_mask, jnp.bool_), ids)
    return Routing(ids.astype(jnp.int32), weights, probs, logits, valid)


def thor_route(params, x: jax.Array, cfg: MoEConfig, *, rng=None, batch_shape=None, expert_mask=None,
               force_mask=None, rank_select=None, weight_override=None, override_mask=None, **_) -> Routing:
    """THOR stochastic experts: every token of the pass goes to one uniformly random
    expert with weight 1. ``cfg.thor_draw``: ``batch`` (one draw for the whole pass, as in
    training), ``token`` (one per token) or ``sequence`` (one per row of ``batch_shape``).
    Disabled experts are never drawn; if any expert is forced, the draw is among the
    forced ones. ``rng=None`` uses a fixed key (deterministic evaluation)."""
    _reject("thor", rank_select=rank_select, weight_override=weight_override)
    t = x.shape[0]
    n = cfg.num_experts
    rng = jax.random.PRNGKey(0) if rng is None else rng
    logits = jnp.zeros((n,), jnp.float32)
    if expert_mask is not None:
        logits = jnp.where(jnp.asarray(expert_mask, jnp.bool_), logits, -jnp.inf)
    if force_mask is not None:
        forced = jnp.asarray(force_mask, jnp.bool_)
        logits = jnp.where(forced.any(), jnp.where(forced, 0.0, -jnp.inf), logits)
    if cfg.thor_draw == "batch":
        ids = jnp.broadcast_to(jax.random.categorical(rng, logits), (t,))
    elif cfg.thor_draw == "token":
        ids = jax.random.categorical(rng, logits, shape=(t,))
    else:
        b = batch_shape[0] if batch_shape is not None else 1
        ids = jnp.repeat(jax.random.categorical(rng, logits, shape=(b,)), t // b)
    ids = ids.astype(jnp.int32)[:, None]
    uniform = jnp.full((t, n), 1.0 / n, jnp.float32)
    return Routing(ids, jnp.ones((t, 1), jnp.float32), uniform, jnp.zeros((t, n), jnp.float32))


def readme_route(params, x: jax.Array, cfg: MoEConfig, *, pregate_logits=None, **inputs) -> Routing:
    """Read-ME: top-k over the logits of the pre-gating router network (computed once
    from the token ids before the backbone, shared by every MoE layer)."""
    if pregate_logits is None:
        raise ValueError("the readme router needs pregate_logits from the pre-gating network; "
                         "run the model through jaxmoe.models.lm.forward.")
    return topk_route(params, x, cfg, logits=pregate_logits.astype(jnp.float32), **inputs)


def expected_active_fraction(gate: jax.Array, x: jax.Array) -> jax.Array:
    """MoE-X sparsity estimate: the expected fraction of positive ReLU pre-activations
    ``x @ gate[e]`` of each expert for each token, without computing them.

    Treat the entries of each hidden unit's weight column ``gate[e, :, j]`` as Gaussian
    with its own mean ``mu`` and std ``sigma``; then ``x . w ~ N(mu sum(x), sigma^2 |x|^2)``
    and ``P(x . w > 0) = Phi(mu sum(x) / (sigma |x|))``. Averaged over units: ``[T, E]``.
    Cost ``O(T E F)`` instead of the experts' ``O(T E D F)``.
    """
    g = gate.astype(jnp.float32)  # [E, D, F]
    mu = g.mean(1)  # [E, F]
    sigma = g.std(1) + 1e-6
    xf = x.astype(jnp.float32)
    s1 = xf.sum(-1)  # [T]
    s2 = jnp.sqrt(jnp.sum(xf * xf, -1)) + 1e-6  # [T]
    z = (s1 / s2)[:, None, None] * (mu / sigma)[None]  # [T, E, F]
    return jax.scipy.special.ndtr(z).mean(-1)


def moex_route(params, x: jax.Array, cfg: MoEConfig, *, experts=None, **inputs) -> Routing:
    """MoE-X sparsity-aware routing: top-k over ``x W_r - coef * rho(x)`` where ``rho``
    is :func:`expected_active_fraction` of each expert's ReLU gate units, so among
    otherwise equal experts the one expected to be sparsest on this token wins."""
    if experts is None:
        raise ValueError("the moex router needs the experts' params (pass experts=...).")
    logits = router_logits(params, x) - cfg.moex_sparsity_coef * expected_active_fraction(experts["gate"], x)
    return topk_route(params, x, cfg, logits=logits, **inputs)


ROUTERS = {"topk": topk_route, "topp": topp_route, "thor": thor_route, "readme": readme_route, "moex": moex_route}


def route(params, x: jax.Array, cfg: MoEConfig, **kwargs) -> Routing:
    """Dispatch on ``cfg.router``."""
    try:
        fn = ROUTERS[cfg.router]
    except KeyError:
        raise ValueError(f"router {cfg.router!r} is not available; choose one of {', '.join(ROUTERS)}.") from None
    return fn(params, x, cfg, **kwargs)
