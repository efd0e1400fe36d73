"""Model registry: ``model.family`` -> the module implementing it.

Every model module provides its config class (a :class:`jaxmoe.config.ModelConfig` subclass
named in :data:`jaxmoe.config.MODEL_CONFIGS`), ``init(key, model_cfg)``,
``init_boxed(key, model_cfg)`` (params with logical axes) and
``loss_fn(params, batch, model_cfg, rng) -> (loss, metrics)``; the config class declares
its ``data_kind`` (how :mod:`jaxmoe.data.pipelines` builds its batches). Model files hold
model math only: pipelines live in :mod:`jaxmoe.data`, forecasters in
:mod:`jaxmoe.decode.forecast`. :func:`param_counts` counts any family's params.
"""

from __future__ import annotations

import importlib

from jaxmoe.models.registry import FAMILIES, get_model


def param_counts(cfg) -> dict[str, int]:
    """``{"total", "active", "embedding"}`` parameter counts of a run's (or a model) config,
    from the params' logical axes (:func:`jaxmoe.models.sizes.param_counts`)."""
    from jaxmoe.models.sizes import param_counts as counts

    return counts(cfg)


__all__ = ["FAMILIES", "get_model", "param_counts"]


def __getattr__(name):  # `jaxmoe.models.lm` etc. without an explicit import
    if name in {p.rsplit(".", 1)[1] for p in FAMILIES.values()} | {"stack", "base", "blocks", "sizes", "registry"}:
        return importlib.import_module(f"jaxmoe.models.{name}")
    raise AttributeError(name)
