"""The jitted train and eval steps (model-agnostic: they take a task's ``loss_fn``)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmoe.train.optimizer import leaf_sumsq, safe_global_norm
from jaxmoe.train.state import TrainState


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable | None = None,
                    post_update: Callable | None = None):
    """``step(state, batch) -> (state, metrics)``.

    ``post_update(params_before, params_after, metrics) -> params`` (the task's, optional)
    runs after the optimizer update of a finite step: updates outside the optimizer, e.g.
    a router's load-balancing bias from the step's expert load (no gradient flows into it).

    A step whose loss or global gradient norm is not finite (a NaN/inf leaf, or a norm past
    float32's range) is skipped: params and optimizer state are kept, ``metrics["skipped"] =
    1`` and ``state.skipped`` counts consecutive skips. The norm is computed without overflow
    (:func:`~jaxmoe.train.optimizer.safe_global_norm`), so a finite but huge leaf is clipped
    correctly, never silently zeroed. Health metrics: ``grad_norm``, ``update_ratio`` (norm of
    the applied update / norm of the params), ``worst_leaf`` (flatten index of the gradient
    leaf with the largest norm, NaN/inf first) and ``worst_leaf_norm`` (that leaf's norm, inf when its sum of
    squares overflows float32).
    """

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        sumsq = leaf_sumsq(grads)  # one pass over the gradients serves the norm and the worst leaf
        grad_norm = safe_global_norm(grads, sumsq)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(args):
            params, opt_state, grads = args
            updates, new_opt = tx.update(grads, opt_state, params)
            ratio = jnp.sqrt(jnp.sum(leaf_sumsq(updates)) / jnp.maximum(jnp.sum(leaf_sumsq(params)), 1e-24))
            new_params = optax.apply_updates(params, updates)
            if post_update is not None:
                new_params = post_update(params, new_params, metrics)
            return new_params, new_opt, ratio

        # a branch instead of a select per leaf: the update fuses into one pass over params and
        # optimizer state, and a skipped step costs nothing (no read of new and old states)
        new_params, new_opt, ratio = jax.lax.cond(finite, apply, lambda args: (args[0], args[1], jnp.float32(0.0)),
                                                  (state.params, state.opt_state, grads))
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            opt_state=new_opt,
            skipped=jnp.where(finite, 0, state.skipped + 1).astype(jnp.int32),
        )
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = grad_norm
        metrics["update_ratio"] = ratio
        metrics["skipped"] = (~finite).astype(jnp.int32)
        badness = jnp.where(jnp.isnan(sumsq), jnp.inf, sumsq)  # NaN/inf leaves rank first
        metrics["worst_leaf"] = (jnp.argmax(badness) if badness.shape[0] else jnp.int32(-1)).astype(jnp.int32)
        metrics["worst_leaf_norm"] = jnp.sqrt(jnp.max(sumsq)) if sumsq.shape[0] else jnp.float32(0.0)
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return new_state, metrics

    return step


def make_eval_step(loss_fn: Callable):
    """``step(params, batch) -> (loss, metrics)``: the loss function with ``rng=None`` (a
    task may report another quantity in evaluation, e.g. a single stochastic pass)."""

    def step(params, batch):
        loss, metrics = loss_fn(params, batch, None)
        return loss, metrics

    return step
