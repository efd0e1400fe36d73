"""Tasks: what the trainer needs from a model family (params, loss, data)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from jaxmoe.config import Config, ConfigError
from jaxmoe.models import get_model


@dataclasses.dataclass
class Task:
    init: Callable  # key -> params
    init_boxed: Callable  # key -> boxed params (logical axes)
    loss_fn: Callable  # (params, batch, rng) -> (loss, metrics)
    train_pipeline: Any  # object with .iterator()
    eval_pipeline: Any | None
    tokens_per_batch: int


def _text_pipelines(cfg: Config):
    from jaxmoe.data.text import build_text_pipeline

    common = dict(path=cfg.data.path, tokenizer=cfg.data.tokenizer, seq_len=cfg.data.seq_len,
                  batch_size=cfg.train.batch_size, seed=cfg.train.seed, eval_fraction=cfg.data.eval_fraction,
                  text_field=cfg.data.text_field)
    train = build_text_pipeline(split="train", shuffle=cfg.data.shuffle, **common)
    if train.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"the tokenizer has {train.vocab_size} tokens but model.vocab_size is "
                          f"{cfg.model.vocab_size}; set model.vocab_size>={train.vocab_size}.")
    evalp = None
    if cfg.data.eval_fraction > 0:
        try:
            evalp = build_text_pipeline(split="eval", shuffle=False, **common)
        except ValueError:
            evalp = None  # too little text for an eval batch: train without evaluation
    return train, evalp


def make_task(cfg: Config, with_data: bool = True) -> Task:
    model = get_model(cfg.model.family)
    mcfg = cfg.model
    train = evalp = None
    if with_data:
        builder = getattr(model, "build_pipelines", None)
        train, evalp = builder(cfg) if builder is not None else _text_pipelines(cfg)
    return Task(
        init=functools.partial(_init, model, mcfg),
        init_boxed=functools.partial(_init_boxed, model, mcfg),
        loss_fn=functools.partial(_loss, model, mcfg),
        train_pipeline=train,
        eval_pipeline=evalp,
        tokens_per_batch=cfg.train.batch_size * cfg.data.seq_len,
    )


def _init(model, mcfg, key):
    return model.init(key, mcfg)


def _init_boxed(model, mcfg, key):
    return model.init_boxed(key, mcfg)


def _loss(model, mcfg, params, batch, rng):
    return model.loss_fn(params, batch, mcfg, rng)
