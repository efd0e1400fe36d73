"""Tasks: what the trainer needs from a model family (params, loss, data).

The family's module gives init and loss; the data pipelines come from
:func:`jaxmoe.data.pipelines.build` by the data kind the family's config declares."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from jaxmoe.config import Config
from jaxmoe.data.pipelines import build as build_pipelines
from jaxmoe.models import get_model


@dataclasses.dataclass
class Task:
    init: Callable  # key -> params
    init_boxed: Callable  # key -> boxed params (logical axes)
    loss_fn: Callable  # (params, batch, rng) -> (loss, metrics)
    train_pipeline: Any  # object with .iterator()
    eval_pipeline: Any | None
    tokens_per_batch: int
    # (params_before, params_after, metrics) -> params after each train step (updates outside
    # the optimizer, e.g. a router's balancing bias); None: nothing to do
    post_update: Callable | None = None


def make_task(cfg: Config, with_data: bool = True) -> Task:
    model = get_model(cfg.model.family)
    mcfg = cfg.model
    train = evalp = None
    if with_data:  # chosen by the family's declared data kind
        train, evalp = build_pipelines(cfg)
    return Task(
        init=functools.partial(_init, model, mcfg),
        init_boxed=functools.partial(_init_boxed, model, mcfg),
        loss_fn=functools.partial(_loss, model, mcfg),
        train_pipeline=train,
        eval_pipeline=evalp,
        tokens_per_batch=cfg.train.batch_size * cfg.data.seq_len,
        post_update=functools.partial(_post_update, model, mcfg) if hasattr(model, "post_update") else None,
    )


def _init(model, mcfg, key):
    return model.init(key, mcfg)


def _init_boxed(model, mcfg, key):
    return model.init_boxed(key, mcfg)


def _loss(model, mcfg, params, batch, rng):
    return model.loss_fn(params, batch, mcfg, rng)


def _post_update(model, mcfg, params_before, params_after, metrics):
    return model.post_update(params_before, params_after, metrics, mcfg)
