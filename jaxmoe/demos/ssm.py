"""Real-data demos of the state-space models (CPU friendly, no downloads).

* :func:`run_lssl_digits`: the LSSL classifier on scikit-learn digits read pixel by pixel
  (64-step sequences, fixed seeded 75/25 split); metric: test accuracy; baseline: the
  majority training class.
* :func:`run_forecaster` (``s_mamba`` / ``spacetime``) on statsmodels ``macrodata``
  (12 quarterly variates, z-normalised with training statistics, chronological 80/20 split):
  metric: test MSE over every test window, horizon step and variate (z units); baseline:
  the last observed value repeated.

Each takes a full :class:`jaxmoe.config.Config` (normally ``configs/*.yaml`` plus overrides)
and trains with the library's optimizer and train step (``train.steps`` steps) in one
process without checkpoints; ``jaxmoe train --config ...`` trains the same model with
checkpoints and metrics files.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from jaxmoe.config import Config
from jaxmoe.data import pipelines
from jaxmoe.models import get_model
from jaxmoe.train.optimizer import learning_rate_schedule, make_optimizer
from jaxmoe.train.state import TrainState
from jaxmoe.train.step import make_train_step

__all__ = ["fit", "evaluate_forecaster", "evaluate_classifier", "run_forecaster", "run_lssl_digits"]


def fit(cfg: Config, *, steps: int | None = None, params=None, pipeline=None,
        callback: Callable[[int, dict], None] | None = None) -> tuple[dict, list[float]]:
    """Train ``cfg.model`` for ``steps`` (default ``train.steps``) on ``pipeline`` (default: the
    family's training pipeline for ``cfg``), from ``params`` (default: a fresh init).

    Returns ``(params, losses)``; ``callback(step, metrics)`` sees every step's metrics.
    """
    module = get_model(cfg.model.family)
    steps = cfg.train.steps if steps is None else int(steps)
    train_pipe = pipeline if pipeline is not None else pipelines.build(cfg)[0]
    tx = make_optimizer(cfg.train)
    loss = lambda p, b, r: module.loss_fn(p, b, cfg.model, r)  # noqa: E731
    step_fn = jax.jit(make_train_step(loss, tx, learning_rate_schedule(cfg.train)))
    if params is None:
        params = module.init(jax.random.PRNGKey(cfg.train.seed), cfg.model)
    state = TrainState.create(params, tx, cfg.train.seed)
    it = train_pipe.iterator()
    losses = []
    for i in range(steps):
        state, metrics = step_fn(state, next(it))
        losses.append(float(metrics["loss"]))
        if callback is not None:
            callback(i + 1, metrics)
    return state.params, losses


def _predict_batches(fn, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)], axis=0)


def evaluate_forecaster(cfg: Config, params) -> dict:
    """Test MSE / MAE of the model and of the last-value baseline (z units, all test windows)."""
    module = get_model(cfg.model.family)
    data = pipelines.forecast_data(cfg)
    pred = _predict_batches(jax.jit(lambda x: module.apply(params, x, cfg.model)), data.test_x)
    last = np.repeat(data.test_x[:, -1:], data.test_y.shape[1], axis=1)
    err, err_last = pred - data.test_y, last - data.test_y
    return {"test_windows": int(len(data.test_x)), "train_windows": int(len(data.train_x)),
            "variates": int(data.test_x.shape[2]),
            "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
            "baseline_mse": float(np.mean(err_last ** 2)), "baseline_mae": float(np.mean(np.abs(err_last)))}


def evaluate_classifier(cfg: Config, params) -> dict:
    """Test accuracy of the classifier and of the majority training class."""
    module = get_model(cfg.model.family)
    data = pipelines.classification_data(cfg)
    logits = _predict_batches(jax.jit(lambda t: module.apply(params, t, cfg.model)), data["test"]["tokens"])
    labels = data["test"]["labels"]
    majority = int(np.bincount(data["train"]["labels"]).argmax())
    return {"test_examples": int(len(labels)), "train_examples": int(len(data["train"]["labels"])),
            "accuracy": float(np.mean(logits.argmax(-1) == labels)),
            "baseline_accuracy": float(np.mean(labels == majority))}


def run_forecaster(cfg: Config, *, steps: int | None = None) -> dict:
    """Train an ``s_mamba`` / ``spacetime`` config and evaluate it on the test windows."""
    t0 = time.perf_counter()
    params, losses = fit(cfg, steps=steps)
    out = evaluate_forecaster(cfg, params)
    out.update(model=cfg.model.family, steps=len(losses), first_loss=losses[0] if losses else None,
               final_loss=float(np.mean(losses[-10:])) if losses else None, seconds=time.perf_counter() - t0,
               params=int(sum(np.size(x) for x in jax.tree.leaves(params))))
    return out


def run_lssl_digits(cfg: Config, *, steps: int | None = None) -> dict:
    """Train an ``lssl_classifier`` config on the digits and evaluate test accuracy."""
    t0 = time.perf_counter()
    params, losses = fit(cfg, steps=steps)
    out = evaluate_classifier(cfg, params)
    out.update(model=cfg.model.family, steps=len(losses), first_loss=losses[0] if losses else None,
               final_loss=float(np.mean(losses[-10:])) if losses else None, seconds=time.perf_counter() - t0,
               params=int(sum(np.size(x) for x in jax.tree.leaves(params))))
    return out
