"""Stacked-and-scanned layer groups shared by the decoder models (and the dtype helpers
every family uses: :func:`compute_dtype`, :func:`unbox_params`).

A heterogeneous stack (first-k dense layers, MoE every n-th layer, SSM/attention hybrids)
is a short list of homogeneous groups. Each group repeats a *unit* of one or more layer
kinds ``r`` times; the params of unit position ``j`` carry a leading ``layers`` axis of
size ``r`` and the group runs ``lax.scan`` over it, so compile time does not grow with
depth.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

LayerKind = tuple[str, str]  # (mixer, ffn), e.g. ("attn", "moe")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(cfg):
    """The compute dtype of a model config (``model.dtype``: float32, bfloat16, float16)."""
    return DTYPES[cfg.dtype]


def unbox_params(boxed: Any, param_dtype: str = "float32") -> Any:
    """Plain param arrays from a boxed init, cast to ``param_dtype`` (the models' ``init``)."""
    from jaxmoe.nn.init import unbox

    params = unbox(boxed)
    if param_dtype != "float32":
        params = jax.tree.map(lambda a: a.astype(DTYPES[param_dtype]), params)
    return params


@dataclasses.dataclass(frozen=True)
class Group:
    unit: tuple[LayerKind, ...]
    repeats: int
    start: int  # index of the first layer of this group in the full stack

    def layer_index(self, repeat: int, pos: int) -> int:
        return self.start + repeat * len(self.unit) + pos

    def layer_indices(self, pos: int) -> list[int]:
        return [self.layer_index(r, pos) for r in range(self.repeats)]


def _periodic(kinds: Sequence[LayerKind], period: int, start: int) -> list[Group]:
    groups = []
    n = len(kinds)
    period = max(1, min(period, n)) if n else 1
    reps = n // period
    if reps:
        unit = tuple(kinds[:period])
        for r in range(reps):
            if tuple(kinds[r * period:(r + 1) * period]) != unit:
                raise ValueError("layer kinds are not periodic; cannot group them for scanning.")
        groups.append(Group(unit, reps, start))
    tail = tuple(kinds[reps * period:])
    if tail:
        groups.append(Group(tail, 1, start + reps * period))
    return groups


def make_groups(kinds: Sequence[LayerKind], prefix: int, pattern_len: int, moe_every: int) -> list[Group]:
    """Split per-layer kinds into scan groups: the first ``prefix`` (dense) layers, then
    periodic units of ``lcm(pattern_len, moe_every)`` layers, then any remainder."""
    kinds = list(kinds)
    groups = _periodic(kinds[:prefix], pattern_len, 0) if prefix else []
    groups += _periodic(kinds[prefix:], math.lcm(pattern_len, moe_every), prefix)
    return groups


def remat_policy(name: str):
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots
    if name == "dots_no_batch":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    raise ValueError(f"remat policy {name!r} is not valid; choose one of none, full, dots, dots_no_batch.")


def scan_group(body: Callable, carry: Any, xs: Any, remat: str = "none"):
    """``lax.scan`` over a group's stacked params (and per-layer inputs) with optional remat."""
    if remat != "none":
        body = jax.checkpoint(body, policy=remat_policy(remat), prevent_cse=False)
    return jax.lax.scan(body, carry, xs)


def take_layers(arr: jax.Array | None, indices: Sequence[int]):
    """Rows ``indices`` of a per-layer array ``[num_layers, ...]`` (None passes through)."""
    if arr is None:
        return None
    return jnp.asarray(arr)[jnp.asarray(indices, jnp.int32)]
