"""MoE-X sparsity-aware routing (``router: moex``; use with ``expert_activation: relu``).

Top-k over ``x W_r - sparsity_coef * rho(x)`` where ``rho`` is
:func:`expected_active_fraction` of each expert's ReLU gate units, so among otherwise equal
experts the one expected to be sparsest on this token wins.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxmoe.moe.routers import topk
from jaxmoe.moe.routers.base import Router, RouterOptions, Routing, router_logits

if TYPE_CHECKING:
    from jaxmoe.moe.config import MoEConfig


@dataclasses.dataclass(frozen=True)
class MoEXOptions(RouterOptions):
    """``sparsity_coef``: logits -= coef * expected active fraction of each expert."""

    sparsity_coef: float = 1.0


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


def route(params, x: jax.Array, cfg: MoEConfig, *, experts: dict, expert_mask=None, force_mask=None,
          rank_select: int | None = None, weight_override=None, override_mask=None) -> Routing:
    """MoE-X routing of ``x [T, embed]``; ``experts``: the layer's expert params (their
    ``gate [E, D, F]`` is what the sparsity estimate reads)."""
    logits = router_logits(params, x) - cfg.router_options.sparsity_coef * expected_active_fraction(experts["gate"], x)
    return topk.route(params, x, cfg, logits=logits, expert_mask=expert_mask, force_mask=force_mask,
                      rank_select=rank_select, weight_override=weight_override, override_mask=override_mask)


class MoEXRouter(Router):
    name = "moex"
    Options = MoEXOptions
    ranked = True
    route = staticmethod(route)

    def route_layer(self, params, x, cfg, inputs, batch_shape):
        return route(params["router"], x, cfg, experts=params["experts"], **self.check_inputs(inputs))


ROUTER = MoEXRouter()
