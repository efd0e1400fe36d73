"""Model registry: ``model.family`` -> the module implementing it.

Every model module provides ``init(key, model_cfg)``, ``init_boxed(key, model_cfg)`` (params
with logical axes) and ``loss_fn(params, batch, model_cfg, rng) -> (loss, metrics)``.
"""

from __future__ import annotations

import importlib

FAMILIES = {
    "lm": "jaxmoe.models.lm",
    "time_moe": "jaxmoe.models.time_moe",
    "moirai_moe": "jaxmoe.models.moirai_moe",
    "s_mamba": "jaxmoe.models.s_mamba",
    "spacetime": "jaxmoe.models.spacetime",
    "lssl_classifier": "jaxmoe.models.lssl_classifier",
}


def get_model(family: str):
    try:
        path = FAMILIES[family]
    except KeyError:
        raise ValueError(f"model family {family!r} is not available; choose one of {', '.join(FAMILIES)}.") from None
    return importlib.import_module(path)


def __getattr__(name):  # `jaxmoe.models.lm` etc. without an explicit import
    if name in {p.rsplit(".", 1)[1] for p in FAMILIES.values()} | {"stack"}:
        return importlib.import_module(f"jaxmoe.models.{name}")
    raise AttributeError(name)
