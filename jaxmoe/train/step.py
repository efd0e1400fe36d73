"""The jitted train and eval steps (model-agnostic: they take a task's ``loss_fn``)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmoe.train.guards import first_nonfinite_leaf
from jaxmoe.train.state import TrainState


def _tree_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable | None = None):
    """``step(state, batch) -> (state, metrics)``.

    A step whose loss or gradients are not finite is skipped: params and optimizer state
    are kept, ``metrics["skipped"] = 1`` and ``state.skipped`` counts consecutive skips.
    """

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        finite = jnp.isfinite(loss) & _tree_finite(grads)

        def apply(args):
            params, opt_state, grads = args
            updates, new_opt = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_opt

        # a branch instead of a select per leaf: the update fuses into one pass over params and
        # optimizer state, and a skipped step costs nothing (no read of new and old states)
        new_params, new_opt = jax.lax.cond(finite, apply, lambda args: (args[0], args[1]),
                                           (state.params, state.opt_state, grads))
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            opt_state=new_opt,
            skipped=jnp.where(finite, 0, state.skipped + 1).astype(jnp.int32),
        )
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["skipped"] = (~finite).astype(jnp.int32)
        metrics["nonfinite_leaf"] = first_nonfinite_leaf(grads)  # -1, or the first bad gradient (params order)
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return new_state, metrics

    return step


def make_eval_step(loss_fn: Callable):
    def step(params, batch):
        loss, metrics = loss_fn(params, batch, None)
        return loss, metrics

    return step
