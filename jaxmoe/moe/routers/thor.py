"""THOR stochastic experts (``router: thor``): no router params, one random expert.

Every MoE layer sends the tokens of a forward pass to one uniformly random expert with
weight 1 (``draw``: one draw for the whole pass, per token, or per sequence). Training runs
two passes with independent draws and adds a consistency regulariser (:attr:`objective`)::

    loss = CE_1 + CE_2 + alpha * CR
    CR   = mean over non-pad tokens of 1/2 * sum_v (p1 - p2) (log p1 - log p2)

(the symmetric KL of the two output distributions). The paper writes CR as a *sum* over
tokens next to summed cross-entropies (fairseq's convention); here both CE and CR are token
means, which keeps their ratio. alpha is ``consistency_coef``.

Metrics: the training ``loss`` is this two-pass objective (also logged as
``loss_two_pass``); ``ce`` is the cross-entropy of *one* stochastic pass (the first), so it
is comparable with the ``ce`` of other routers; ``ce_1``/``ce_2``/``ce_two_pass_mean`` and
``consistency`` are the parts. Evaluation (``rng=None``: the trainer's ``eval_loss``) runs a
single pass with the inference draw and a fixed key and returns its cross-entropy (+ router
aux losses, if any) -- the single-pass CE, not the two-pass objective (about twice as large).

Decoding draws per token or per sequence (``inference``): :meth:`ThorRouter.decode_config`
switches the draw and :meth:`ThorRouter.decode_rng` gives the key of a step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

import jax
import jax.numpy as jnp

from jaxmoe.config import check
from jaxmoe.moe.routers.base import Router, RouterInputs, RouterOptions, Routing

if TYPE_CHECKING:
    from jaxmoe.moe.config import MoEConfig

DRAWS = ("batch", "token", "sequence")
INFERENCE_DRAWS = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class ThorOptions(RouterOptions):
    """``consistency_coef``: alpha of the two-pass consistency (symmetric KL) loss;
    ``draw``: one random expert per layer per batch (training), token or sequence;
    ``inference``: the draw the decoders use (token or sequence)."""

    consistency_coef: float = 1.0
    draw: Literal["batch", "token", "sequence"] = "batch"
    inference: Literal["token", "sequence"] = "token"

    def validate(self, moe: MoEConfig) -> None:
        check(self.draw in DRAWS, f"model.moe.router_options.draw={self.draw!r} is not valid; choose one of "
              f"{', '.join(DRAWS)}.")
        check(self.inference in INFERENCE_DRAWS, f"model.moe.router_options.inference={self.inference!r} is not "
              f"valid; choose one of {', '.join(INFERENCE_DRAWS)}.")


def route(params, x: jax.Array, cfg: MoEConfig, *, rng=None, expert_mask=None, force_mask=None,
          batch_shape: tuple[int, int] | None = None) -> Routing:
    """Every token of ``x [T, embed]`` goes to one uniformly random expert with weight 1,
    drawn per ``cfg.router_options.draw`` (``sequence``: one per row of ``batch_shape``).
    Disabled experts are never drawn; if any expert is forced, the draw is among the forced
    ones. ``rng=None`` uses a fixed key (deterministic evaluation)."""
    del params
    t = x.shape[0]
    n = cfg.num_experts
    draw = cfg.router_options.draw
    rng = jax.random.PRNGKey(0) if rng is None else rng
    logits = jnp.zeros((n,), jnp.float32)
    if expert_mask is not None:
        logits = jnp.where(jnp.asarray(expert_mask, jnp.bool_), logits, -jnp.inf)
    if force_mask is not None:
        forced = jnp.asarray(force_mask, jnp.bool_)
        logits = jnp.where(forced.any(), jnp.where(forced, 0.0, -jnp.inf), logits)
    if draw == "batch":
        ids = jnp.broadcast_to(jax.random.categorical(rng, logits), (t,))
    elif draw == "token":
        ids = jax.random.categorical(rng, logits, shape=(t,))
    else:
        b = batch_shape[0] if batch_shape is not None else 1
        ids = jnp.repeat(jax.random.categorical(rng, logits, shape=(b,)), t // b)
    ids = ids.astype(jnp.int32)[:, None]
    uniform = jnp.full((t, n), 1.0 / n, jnp.float32)
    return Routing(ids, jnp.ones((t, 1), jnp.float32), uniform, jnp.zeros((t, n), jnp.float32))


def consistency_loss(logits1: jax.Array, logits2: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Symmetric KL ``1/2 sum_v (p1 - p2)(log p1 - log p2)`` per token, averaged over the
    tokens where ``mask`` is 1. ``logits [..., vocab]``; ``mask [...]``."""
    lp1 = jax.nn.log_softmax(logits1.astype(jnp.float32), axis=-1)
    lp2 = jax.nn.log_softmax(logits2.astype(jnp.float32), axis=-1)
    per_token = 0.5 * jnp.sum((jnp.exp(lp1) - jnp.exp(lp2)) * (lp1 - lp2), axis=-1)
    if mask is None:
        return per_token.mean()
    mask = mask.astype(jnp.float32)
    return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def pass_rngs(rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The keys of the two training passes (independent draws)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    r1, r2 = jax.random.split(rng)
    return r1, r2


class ThorRouter(Router):
    name = "thor"
    Options = ThorOptions
    learned_kernel = False
    route = staticmethod(route)

    def route_layer(self, params, x, cfg, inputs, batch_shape):
        return route(params["router"], x, cfg, batch_shape=batch_shape, **self.check_inputs(inputs))

    def experts_used(self, cfg: MoEConfig) -> tuple[int, int]:
        return 1, 1

    def objective(self, run, ce, mask, cfg: MoEConfig, rng):
        """Training (``rng`` given): two stochastic passes, ``CE_1 + CE_2 + alpha * CR`` (+
        router aux losses, if any). Evaluation (``rng=None``): one pass with the inference
        draw, its CE (+ aux losses). ``run(RouterInputs, moe_cfg=None) -> (logits, aux)``,
        ``ce(logits) -> cross-entropy``."""
        if rng is None:  # evaluation: the single-pass cross-entropy, comparable with other routers
            logits, aux = run(RouterInputs(rng=jax.random.PRNGKey(0)), self.decode_config(cfg))
            ce1 = ce(logits)
            metrics = {"ce": ce1, "aux_loss": aux["aux_loss"], "dropped_frac": aux["dropped_frac"]}
            if aux["load"].shape[0]:
                metrics["load"] = aux["load"]
            return ce1 + aux["aux_loss"], metrics
        r1, r2 = pass_rngs(rng)
        logits1, aux1 = run(RouterInputs(rng=r1))
        logits2, aux2 = run(RouterInputs(rng=r2))
        ce1 = ce(logits1)
        ce2 = ce(logits2)
        cr = consistency_loss(logits1, logits2, mask)
        aux_loss = aux1["aux_loss"] + aux2["aux_loss"]
        loss = ce1 + ce2 + cfg.router_options.consistency_coef * cr + aux_loss
        metrics = {"ce": ce1, "ce_1": ce1, "ce_2": ce2, "ce_two_pass_mean": 0.5 * (ce1 + ce2), "consistency": cr,
                   "loss_two_pass": loss, "aux_loss": aux_loss, "dropped_frac": aux1["dropped_frac"]}
        if aux1["load"].shape[0]:
            metrics["load"] = aux1["load"]
        return loss, metrics

    def decode_config(self, cfg: MoEConfig) -> MoEConfig:
        """``cfg`` with the draw set to ``inference`` (per token or per sequence)."""
        opts = cfg.router_options
        if opts.draw == opts.inference:
            return cfg
        return dataclasses.replace(cfg, router_options=dataclasses.replace(opts, draw=opts.inference))

    def decode_rng(self, rng: jax.Array, step, cfg: MoEConfig) -> jax.Array:
        """Router key of decoding step ``step`` (``rng``: the decoder's key): per-sequence
        draws reuse one key (every step of a row meets the same experts); per-token draws
        fold the step in."""
        key = jax.random.fold_in(rng, 0x7402)
        if cfg.router_options.draw == "sequence":
            return key
        return jax.random.fold_in(key, step)


ROUTER = ThorRouter()
