"""Dynamic top-p routing (``router: topp``, "Harder Tasks Need More Experts").

``P = softmax(x W)``; sort descending; keep the smallest prefix whose cumulative mass
exceeds ``top_p``. A token uses a variable number of experts: the router returns the
top-``max_k`` ids with ``valid [T, max_k]`` marking the kept ones. ``max_k`` is
``max_experts_per_token`` (default ``2 * experts_per_token``, so the dispatch buffers hold
``T * max_k`` rows, not ``T * num_experts``). The dropless path gives the grouped matmuls
only the valid (token, expert) pairs and skips the chunks of sorted rows past them, so an
unused slot costs no expert compute. Combine weights are the raw P (not renormalised). Its loss is the
routing entropy ``L_dyn = mean_t -sum_i P_i log P_i`` (``dynamic_loss``), weighted by
``dynamic_loss_coef``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

from jaxmoe.config import check
from jaxmoe.moe import losses as losses_lib
from jaxmoe.moe.routers.base import (Router, RouterOptions, Routing, apply_interventions, override_scores,
                                     router_logits)

if TYPE_CHECKING:
    from jaxmoe.moe.config import MoEConfig


@dataclasses.dataclass(frozen=True)
class TopPOptions(RouterOptions):
    """``top_p``: the mass threshold; ``max_experts_per_token``: most experts a token may
    use (null -> ``2 * experts_per_token``, at most num_experts; 0 -> num_experts, no cap);
    ``dynamic_loss_coef``: weight of the entropy loss."""

    top_p: float = 0.4
    max_experts_per_token: Optional[int] = None
    dynamic_loss_coef: float = 1e-4

    def validate(self, moe: MoEConfig) -> None:
        check(0.0 < self.top_p <= 1.0, f"model.moe.router_options.top_p={self.top_p} must be in (0, 1].")
        cap = self.max_experts_per_token
        check(cap is None or 0 <= cap <= moe.num_experts,
              f"model.moe.router_options.max_experts_per_token={cap} must be null (2 x experts_per_token), 0 (all) "
              f"or at most model.moe.num_experts={moe.num_experts}.")


def max_experts(cfg: MoEConfig) -> int:
    """Most experts a token may use under top-p routing with ``cfg`` (the slots per token)."""
    cap = cfg.router_options.max_experts_per_token
    if cap is None:
        return min(cfg.num_experts, 2 * cfg.experts_per_token)
    return cap or cfg.num_experts


def route(params, x: jax.Array, cfg: MoEConfig, *, expert_mask=None, force_mask=None, weight_override=None,
          override_mask=None) -> Routing:
    """Top-p routing of ``x [T, embed]``: position j of the sorted experts is kept iff the
    mass *before* it is <= p (so p = 1 keeps every expert and the first expert is always
    kept). Disabled experts carry no mass and are never valid; forced experts are always
    valid. ``weight_override`` replaces P for the overridden tokens."""
    opts: TopPOptions = cfg.router_options
    max_k = max_experts(cfg)
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
    valid = (before <= opts.top_p) & enabled
    if force_mask is not None:
        valid = valid | jnp.take(jnp.asarray(force_mask, jnp.bool_), ids)
    return Routing(ids.astype(jnp.int32), weights, probs, logits, valid)


class TopPRouter(Router):
    name = "topp"
    Options = TopPOptions
    variable_experts = True
    loss_names = ("dynamic_loss",)
    route = staticmethod(route)

    def losses(self, routing: Routing, cfg: MoEConfig) -> dict[str, tuple[jax.Array, float]]:
        return {"dynamic_loss": (losses_lib.routing_entropy(routing.probs), cfg.router_options.dynamic_loss_coef)}

    def experts_used(self, cfg: MoEConfig) -> tuple[int, int]:
        return cfg.experts_per_token, max_experts(cfg)


ROUTER = TopPRouter()
