"""Parameter counts and memory per device of a model config (no params are allocated).

:func:`param_counts` is the one parameter counter (``jaxmoe info``, the exporters' counts,
the benchmarks' MFU). It reads the params' logical axes (:mod:`jaxmoe.nn.init`): a param
whose axes include ``"expert"`` holds one slice per expert and counts once per *active*
expert (``experts_per_token`` of ``num_experts`` per token), every other param counts in
full. The gate's own tables (``router`` params, Moirai's ``centroids``) are read in full by
every token, so they count in full although some carry an ``"expert"`` axis.

:func:`param_report` adds the bytes of params each device holds under the sharding rules of
a mesh; :func:`activation_bytes_per_device` is a rough model of a training step's saved
activations; :func:`memory_per_device` sums params, AdamW state, gradients and activations.
"""

from __future__ import annotations

import math

import jax

from jaxmoe.config import Config
from jaxmoe.models.registry import get_model
from jaxmoe.nn.init import is_boxed

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GATE_TABLES = ("router", "centroids")  # read in full by every token


def _model_cfg(cfg):
    return cfg.model if isinstance(cfg, Config) else cfg


def param_leaves(cfg) -> list[tuple[tuple, tuple, jax.ShapeDtypeStruct]]:
    """``(path keys, logical axes, shape)`` of every param of ``cfg``'s model (through
    ``jax.eval_shape``, no memory)."""
    m = _model_cfg(cfg)
    model = get_model(m.family)
    boxed = jax.eval_shape(lambda: model.init_boxed(jax.random.PRNGKey(0), m))
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_boxed)[0]:
        keys = tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path)
        out.append((keys, tuple(leaf.axes), leaf.value))
    return out


def param_counts(cfg) -> dict[str, int]:
    """``{"total", "active", "embedding"}`` parameter counts of a run's (or a model) config:
    all params, those one token uses (see the module doc), and the input token embedding
    table (logical axes ``("vocab", "embed")``)."""
    m = _model_cfg(cfg)
    moe = getattr(m, "moe", None)
    k = moe.experts_per_token if moe is not None else 1
    total = active = embedding = 0
    for keys, axes, shape in param_leaves(m):
        n = math.prod(shape.shape)
        total += n
        if "expert" in axes and not any(key in GATE_TABLES for key in keys):
            active += n // shape.shape[axes.index("expert")] * k
        else:
            active += n
        if axes == ("vocab", "embed"):
            embedding += n
    return {"total": total, "active": active, "embedding": embedding}


def param_report(cfg: Config, mesh=None) -> dict:
    """:func:`param_counts` as ``params``, ``active_params``, ``embedding_params``,
    ``active_non_embedding`` and, with a mesh, ``param_bytes_per_device``: the bytes of
    params each device holds under the logical-axis sharding rules of ``cfg.mesh``."""
    from jaxmoe.parallel import sharding as sh

    counts = param_counts(cfg)
    out = {"params": counts["total"], "active_params": counts["active"], "embedding_params": counts["embedding"],
           "param_bytes_per_device": 0}
    if mesh is not None:
        rules = sh.rules_from_config(cfg.mesh)
        m = cfg.model
        for _, axes, s in param_leaves(m):
            n = math.prod(s.shape)
            spec = sh.logical_to_spec(axes, rules, mesh, s.shape)
            split = math.prod(math.prod(mesh.shape[x] for x in ((e,) if isinstance(e, str) else e))
                              for e in spec if e is not None)
            itemsize = _DTYPE_BYTES.get(getattr(m, "param_dtype", "float32"), 4)
            out["param_bytes_per_device"] += n * itemsize / split
    out["active_non_embedding"] = out["active_params"] - out["embedding_params"]
    return out


def activation_bytes_per_device(cfg: Config, mesh) -> float:
    """Rough activation memory of one training step per device (saved for the backward):
    per token and layer about 12*embed values + the attention probabilities + the routed
    experts' hidden states, split over the tensor axis where it applies; plus fp32 logits."""
    from jaxmoe.parallel.mesh import axis_sizes

    m, sizes = cfg.model, axis_sizes(mesh)
    moe, remat = getattr(m, "moe", None), getattr(m, "remat", "none")  # not every family has them
    tokens = cfg.train.batch_size * cfg.data.seq_len / (sizes["data"] * sizes["fsdp"] * sizes["expert"])
    tp = sizes["tensor"]
    b = _DTYPE_BYTES[getattr(m, "dtype", "float32")]
    if moe is not None:
        ffn = max(moe.experts_per_token * (3 * moe.expert_ffn_dim + 2 * m.embed_dim)
                  + 3 * moe.num_shared_experts * (moe.shared_ffn_dim or moe.expert_ffn_dim),
                  3 * (moe.dense_ffn_dim or 4 * m.embed_dim))
    else:
        ffn = 3 * (getattr(m, "ffn_dim", 0) or 4 * m.embed_dim)
    per_layer = tokens * b * (12 * m.embed_dim + (getattr(m, "num_heads", 0) * cfg.data.seq_len + ffn) / tp)
    layers = m.num_layers if remat == "none" else 1
    saved = per_layer * layers + (tokens * m.embed_dim * b * m.num_layers if remat != "none" else 0)
    logits = tokens * getattr(m, "vocab_size", 0) * 4 * 2 / tp
    return saved + logits


def memory_per_device(cfg: Config, mesh) -> dict:
    """Rough training memory per device in bytes: ``params``, ``optimizer`` (AdamW mu and nu
    in fp32), ``gradients`` (as the params), ``activations`` and their ``total``; plus the
    :func:`param_report` of ``cfg`` on ``mesh`` (``report``)."""
    rep = param_report(cfg, mesh)
    p = rep["param_bytes_per_device"]
    opt = 2 * p * 4 / _DTYPE_BYTES.get(getattr(cfg.model, "param_dtype", "float32"), 4)
    act = activation_bytes_per_device(cfg, mesh)
    return {"params": p, "optimizer": opt, "gradients": p, "activations": act, "total": p + opt + p + act,
            "report": rep}
