"""``model.family`` -> the module implementing it (the module of its config class, named in
:data:`jaxmoe.config.MODEL_CONFIGS`)."""

from __future__ import annotations

import importlib

from jaxmoe.config import MODEL_CONFIGS

FAMILIES = {family: path.split(":")[0] for family, path in MODEL_CONFIGS.items()}


def get_model(family: str):
    """The model module of ``family`` (imported when first asked for)."""
    try:
        path = FAMILIES[family]
    except KeyError:
        raise ValueError(f"model family {family!r} is not available; choose one of {', '.join(FAMILIES)}.") from None
    return importlib.import_module(path)
