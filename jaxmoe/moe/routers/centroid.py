"""Fixed-centroid gating (``router: centroid``, Moirai-MoE).

Each MoE layer holds fixed centroids ``[experts, embed]`` (the released Moirai-MoE stores
k-means centroids of a pretrained model's token representations, one set per layer). The
scores are the Euclidean distances of a token to the centroids (``-d`` with ``nearest``);
the top-k scores choose the experts and a softmax over those k scores gives their weights
(the released code's ``topk(cdist) -> softmax``). The centroids get no gradient.

Moirai-MoE keeps its centroids at ``ffn.centroids`` and calls :func:`centroid_routing`
directly; as a registered router the centroids live at ``ffn.router.centroids``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxmoe.moe.routers.base import Router, RouterOptions, Routing
from jaxmoe.nn.init import normal, param

if TYPE_CHECKING:
    from jaxmoe.moe.config import MoEConfig


@dataclasses.dataclass(frozen=True)
class CentroidOptions(RouterOptions):
    """``nearest``: choose the k nearest centroids instead of the k farthest (the released
    code's top-k of the distances)."""

    nearest: bool = False


def centroid_routing(x: jax.Array, centroids: jax.Array, k: int, nearest: bool = False) -> Routing:
    """Routing by Euclidean distance to fixed centroids.

    ``x [T, embed]``, ``centroids [experts, embed]`` (no gradient). Scores are the distances
    ``d [T, experts]`` (``-d`` when ``nearest``); the top-k scores choose the experts and
    ``softmax`` over those k scores gives their weights. ``probs = softmax(scores)`` only
    feeds statistics.
    """
    xf = x.astype(jnp.float32)
    c = jax.lax.stop_gradient(centroids.astype(jnp.float32))
    d2 = jnp.sum(xf * xf, -1, keepdims=True) - 2.0 * xf @ c.T + jnp.sum(c * c, -1)[None, :]
    d = jnp.sqrt(jnp.maximum(d2, 1e-12))
    scores = -d if nearest else d
    top, ids = jax.lax.top_k(scores, k)
    return Routing(ids.astype(jnp.int32), jax.nn.softmax(top, axis=-1), jax.nn.softmax(scores, axis=-1), scores)


def route(params, x: jax.Array, cfg: MoEConfig) -> Routing:
    """Centroid routing of ``x [T, embed]`` with ``params["centroids"]``."""
    return centroid_routing(x, params["centroids"], cfg.experts_per_token, nearest=cfg.router_options.nearest)


class CentroidRouter(Router):
    name = "centroid"
    Options = CentroidOptions
    route = staticmethod(route)

    def init(self, key, embed_dim: int, cfg: MoEConfig, std: float = 0.02) -> dict:
        """Centroids ``N(0, 1)`` (install k-means centroids over them)."""
        del std
        return {"centroids": param(key, (cfg.num_experts, embed_dim), ("expert", "embed"), normal(1.0))}


ROUTER = CentroidRouter()
