"""Routers as plug-ins: one module per router, a registry from names to routers.

=============  ==================================================================================
``topk``       top-k over softmax/sigmoid scores (selection bias, group limit, routed scaling)
``topp``       dynamic top-p: the smallest expert set whose mass exceeds p (+ entropy loss)
``thor``       THOR stochastic experts: one random expert, two-pass consistency objective
``readme``     Read-ME: a pre-gating network over the token ids picks the experts before the stack
``moex``       MoE-X: top-k over logits minus each expert's expected ReLU activity
``centroid``   Moirai-MoE: fixed per-layer (k-means) centroids, top-k of the distances
=============  ==================================================================================

``get_router(name)`` returns the router object (see :class:`~jaxmoe.moe.routers.base.Router`
for its interface and hooks); ``model.moe.router`` names it and ``model.moe.router_options``
holds its options class. :func:`register` adds a router from outside the package.
"""

from __future__ import annotations

import importlib

from jaxmoe.errors import ConfigError
from jaxmoe.moe.routers.base import Router, RouterInputs, RouterOptions, Routing

__all__ = ["Router", "RouterInputs", "RouterOptions", "Routing", "DEFAULT_ROUTER", "get_router", "register",
           "resolve_options", "route", "router_names"]

DEFAULT_ROUTER = "topk"

# name -> the router ("module:attribute", imported on first use, or the object itself)
_REGISTRY: dict[str, str | Router] = {
    name: f"jaxmoe.moe.routers.{name}:ROUTER" for name in ("topk", "topp", "thor", "readme", "moex", "centroid")
}


def router_names() -> list[str]:
    return list(_REGISTRY)


def register(name: str, router: Router | str) -> None:
    """Make ``router`` (an object or ``"module:attribute"``) available as ``model.moe.router: name``."""
    _REGISTRY[name] = router


def get_router(name: str, where: str = "model.moe.router") -> Router:
    """The router registered as ``name``; ConfigError (one sentence, naming the valid
    routers) for an unknown name."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ConfigError(f"{where}={name!r} is not a router; choose one of {', '.join(_REGISTRY)}.")
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return entry


def resolve_options(name: str, given: RouterOptions | None) -> RouterOptions | None:
    """The options of router ``name``: ``given``, or its defaults when ``given`` is None or
    the (option-free) defaults of another router (``dataclasses.replace(moe, router=...)``).
    Options of another router that differ from their defaults are an error; an unknown
    router name is left to ``MoEConfig.validate``."""
    if not isinstance(name, str) or name not in _REGISTRY:
        return given
    cls = get_router(name).Options
    if given is None or (type(given) is not cls and given == type(given)()):
        return cls()
    if type(given) is not cls:
        raise ConfigError(f"model.moe.router_options are {type(given).__name__}, not the {cls.__name__} of "
                          f"model.moe.router={name!r}; give {cls.__name__} or leave them out.")
    return given


def route(params, x, cfg, **inputs) -> Routing:
    """Route ``x [T, embed]`` with the router of ``cfg.router`` (its ``route`` with these
    keyword inputs; a keyword it does not take is a TypeError)."""
    return get_router(cfg.router).route(params, x, cfg, **inputs)
