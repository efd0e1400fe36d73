"""Model registry: ``model.family`` -> the module implementing it.

Every model module provides its config class (a :class:`jaxmoe.config.ModelConfig` subclass
named in :data:`jaxmoe.config.MODEL_CONFIGS`), ``init(key, model_cfg)``,
``init_boxed(key, model_cfg)`` (params with logical axes) and
``loss_fn(params, batch, model_cfg, rng) -> (loss, metrics)``.
"""

from __future__ import annotations

import importlib

from jaxmoe.config import MODEL_CONFIGS

# model.family -> the module implementing it (the module of its config class)
FAMILIES = {family: path.split(":")[0] for family, path in MODEL_CONFIGS.items()}


def get_model(family: str):
    try:
        path = FAMILIES[family]
    except KeyError:
        raise ValueError(f"model family {family!r} is not available; choose one of {', '.join(FAMILIES)}.") from None
    return importlib.import_module(path)


def __getattr__(name):  # `jaxmoe.models.lm` etc. without an explicit import
    if name in {p.rsplit(".", 1)[1] for p in FAMILIES.values()} | {"stack", "base"}:
        return importlib.import_module(f"jaxmoe.models.{name}")
    raise AttributeError(name)
