"""Dispatch engines: (tokens, routing, expert weights) -> combined expert outputs.

All engines compute the same function (up to dropped tokens):
``y[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t])`` over valid slots j.

- :func:`dropless`: sort the T*K assignments by expert, grouped matmul, unsort. The
  permutations have their own backward (gather by the inverse permutation), so neither
  direction needs a scatter-add.
- :func:`capacity`: GShard-style fixed capacity per expert with einsum dispatch/combine;
  assignments past an expert's capacity are dropped (slot-major priority: every token's
  first choice before any second choice) and counted.
- :func:`dense`: every expert on every token (a reference for tests).

Expert params: ``gate, up [E, embed, ffn]``, ``down [E, ffn, embed]`` (SwiGLU experts).

Every engine also takes ``activation`` ("silu" = SwiGLU, "relu" = ReGLU, MoE-X's sparse
ReLU experts) and ``ia3=(v_gate [T, embed], v_up [T, embed], v_down [T, ffn])``: per-token
IA3 vectors (compressed experts) applied to every computed expert as
``down((act((x*v_gate) @ G) * ((x*v_up) @ U)) * v_down)``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxmoe.moe.gmm import gmm
from jaxmoe.moe.routers.base import Routing


# ------------------------------------------------------------- permutation primitives


@jax.custom_vjp
def permute_rows(x: jax.Array, perm: jax.Array, inv_perm: jax.Array) -> jax.Array:
    """``x[perm]`` for a permutation ``perm``; backward is ``g[inv_perm]`` (no scatter)."""
    return jnp.take(x, perm, axis=0)


def _permute_fwd(x, perm, inv_perm):
    return jnp.take(x, perm, axis=0), (perm, inv_perm)


def _permute_bwd(res, g):
    perm, inv_perm = res
    return jnp.take(g, inv_perm, axis=0), None, None


permute_rows.defvjp(_permute_fwd, _permute_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def expand_sorted(x: jax.Array, order: jax.Array, inv_order: jax.Array, k: int) -> jax.Array:
    """Rows of ``x [T, D]`` repeated K times, in expert order: ``x[order // k]`` -> ``[T*K, D]``.

    Backward: gather the cotangent back into slot order and sum each token's K slots
    (a gather and a reduction instead of a scatter-add).
    """
    return jnp.take(x, order // k, axis=0)


def _expand_fwd(x, order, inv_order, k):
    return jnp.take(x, order // k, axis=0), inv_order


def _expand_bwd(k, inv_order, g):
    gs = jnp.take(g, inv_order, axis=0)  # slot order [T*K, D]
    return gs.reshape(-1, k, g.shape[-1]).sum(1), None, None


expand_sorted.defvjp(_expand_fwd, _expand_bwd)


def sort_assignments(routing: Routing, num_experts: int):
    """Expert-major order of the T*K assignment slots.

    Returns ``order [T*K]`` (slot index per sorted position), ``inv_order`` (its inverse)
    and ``group_sizes [E]`` (valid assignments per expert; invalid slots sort last).
    """
    ids = routing.expert_ids.reshape(-1)
    if routing.valid is not None:
        ids = jnp.where(routing.valid.reshape(-1), ids, num_experts)
    order = jnp.argsort(ids, stable=True).astype(jnp.int32)
    inv_order = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=jnp.int32))
    # compare-and-count (one fused reduction) instead of bincount's contended scatter-add
    group_sizes = jnp.sum(ids[:, None] == jnp.arange(num_experts, dtype=ids.dtype)[None], axis=0, dtype=jnp.int32)
    return order, inv_order, group_sizes


ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu}


def expert_swiglu_grouped(xs: jax.Array, experts: dict, group_sizes: jax.Array, backend: str = "xla",
                          activation: str = "silu", xs_up: jax.Array | None = None,
                          h_scale: jax.Array | None = None) -> jax.Array:
    """SwiGLU experts on expert-sorted rows ``xs [M, D]`` -> ``[M, D]``.

    ``xs_up`` (rows fed to ``up`` instead of ``xs``) and ``h_scale [M, ffn]`` (multiplies
    the hidden activations) implement IA3-modified experts."""
    dt = xs.dtype
    if xs_up is None:  # one grouped matmul for gate and up (weights concatenated in the compute dtype)
        gate_up = jnp.concatenate([experts["gate"].astype(dt), experts["up"].astype(dt)], axis=-1)
        g, u = jnp.split(gmm(xs, gate_up, group_sizes, backend=backend), 2, axis=-1)
    else:
        g = gmm(xs, experts["gate"].astype(dt), group_sizes, backend=backend)
        u = gmm(xs_up, experts["up"].astype(dt), group_sizes, backend=backend)
    h = ACTIVATIONS[activation](g) * u
    if h_scale is not None:
        h = h * h_scale.astype(dt)
    return gmm(h, experts["down"].astype(dt), group_sizes, backend=backend)


def _combine_slots(y_slots: jax.Array, routing: Routing, dtype) -> jax.Array:
    """``y_slots [T, K, D]`` weighted by routing weights (invalid slots masked) -> ``[T, D]``."""
    w = routing.weights
    if routing.valid is not None:
        w = jnp.where(routing.valid, w, 0.0)
        y_slots = jnp.where(routing.valid[..., None], y_slots, 0)
    return jnp.einsum("tkd,tk->td", y_slots.astype(jnp.float32), w.astype(jnp.float32)).astype(dtype)


# ---------------------------------------------------------------------------- engines


def chunk_group_sizes(group_sizes: jax.Array, start: int, stop: int) -> jax.Array:
    """Group sizes ``[E]`` of the sorted rows ``[start, stop)``: each group's rows clipped
    to the chunk (groups are contiguous, in expert order)."""
    ends = jnp.cumsum(group_sizes)
    starts = ends - group_sizes
    return (jnp.clip(ends, start, stop) - jnp.clip(starts, start, stop)).astype(group_sizes.dtype)


def grouped_in_chunks(fn, rows: tuple, group_sizes: jax.Array, chunk_rows: int | None):
    """``fn(*rows, group_sizes)`` on expert-sorted rows (each ``[M, ...]``) whose valid rows
    come first (``sum(group_sizes)`` of them; the rest belong to no group).

    With ``chunk_rows``, the rows are processed in chunks of that many; a chunk that starts
    past the valid rows is skipped (``lax.cond``: not computed, its output is zeros), so
    invalid slots cost nothing beyond the chunk that holds the last valid row. Returns
    ``(out [M, ...], rows computed)``."""
    m = rows[0].shape[0]
    if not chunk_rows or chunk_rows >= m:
        return fn(*rows, group_sizes), jnp.int32(m)
    total = group_sizes.sum()
    outs, computed = [], jnp.int32(0)
    for start in range(0, m, chunk_rows):
        stop = min(start + chunk_rows, m)
        part = tuple(r[start:stop] for r in rows)
        gs = chunk_group_sizes(group_sizes, start, stop)
        run = start < total
        shape = jax.eval_shape(fn, *part, gs)
        outs.append(jax.lax.cond(run, lambda p, g: fn(*p, g), lambda p, g: jnp.zeros(shape.shape, shape.dtype),
                                 part, gs))
        computed = computed + jnp.where(run, stop - start, 0).astype(jnp.int32)
    return jnp.concatenate(outs, axis=0), computed


def dropless(x: jax.Array, routing: Routing, experts: dict, *, backend: str = "xla", activation: str = "silu",
             ia3=None, chunk_rows: int | None = None, **_) -> tuple[jax.Array, dict]:
    """Sort by expert -> grouped matmul -> unsort -> weighted sum. ``x [T, D]``.

    Invalid slots (``routing.valid`` False: top-p routing's unused experts) sort last and
    belong to no group, so the grouped matmuls see only the valid (token, expert) pairs;
    with ``chunk_rows`` the sorted rows run in chunks and chunks past the valid rows are
    skipped (:func:`grouped_in_chunks`). ``stats["computed_rows"]`` counts the rows the
    grouped matmuls computed (``stats["buffer_rows"]`` the rows the buffer holds)."""
    t, d = x.shape
    k = routing.expert_ids.shape[1]
    num_experts = experts["gate"].shape[0]
    order, inv_order, group_sizes = sort_assignments(routing, num_experts)
    if ia3 is None:
        xs = expand_sorted(x, order, inv_order, k)
        ys, computed = grouped_in_chunks(
            lambda a, gs: expert_swiglu_grouped(a, experts, gs, backend, activation), (xs,), group_sizes, chunk_rows)
    else:
        v_gate, v_up, v_down = ia3
        xs = expand_sorted(x * v_gate.astype(x.dtype), order, inv_order, k)
        xs_up = expand_sorted(x * v_up.astype(x.dtype), order, inv_order, k)
        h_scale = expand_sorted(v_down.astype(x.dtype), order, inv_order, k)
        ys, computed = grouped_in_chunks(
            lambda a, u, h, gs: expert_swiglu_grouped(a, experts, gs, backend, activation, u, h),
            (xs, xs_up, h_scale), group_sizes, chunk_rows)
    y_slots = permute_rows(ys, inv_order, order).reshape(t, k, d)
    stats = {"dropped_frac": jnp.float32(0.0)}
    if routing.valid is not None:
        stats.update(computed_rows=computed, buffer_rows=jnp.int32(t * k))
    return _combine_slots(y_slots, routing, x.dtype), stats


def expert_capacity(num_tokens: int, k: int, num_experts: int, capacity_factor: float) -> int:
    return max(1, int(math.ceil(capacity_factor * num_tokens * k / num_experts)))


def capacity(x: jax.Array, routing: Routing, experts: dict, *, capacity_factor: float = 1.25, activation: str = "silu",
             ia3=None, **_) -> tuple[jax.Array, dict]:
    """GShard capacity dispatch. ``x [T, D]``; returns ``(y, {"dropped_frac"})``."""
    t, d = x.shape
    k = routing.expert_ids.shape[1]
    e = experts["gate"].shape[0]
    c = expert_capacity(t, k, e, capacity_factor)
    valid = routing.valid if routing.valid is not None else jnp.ones((t, k), jnp.bool_)
    oh = jax.nn.one_hot(routing.expert_ids, e, dtype=jnp.int32) * valid[..., None]  # [T, K, E]
    slot_major = oh.transpose(1, 0, 2).reshape(k * t, e)
    pos = (jnp.cumsum(slot_major, axis=0) - 1) * slot_major  # position within the expert
    pos = pos.sum(-1).reshape(k, t).T  # [T, K]
    keep = valid & (pos < c)
    disp = (oh * keep[..., None]).astype(x.dtype)[..., None] * jax.nn.one_hot(pos, c, dtype=x.dtype)[:, :, None, :]
    dispatch_mask = disp.sum(1)  # [T, E, C]
    w = jnp.where(keep, routing.weights, 0.0).astype(jnp.float32)
    combine = (disp.astype(jnp.float32) * w[:, :, None, None]).sum(1)  # [T, E, C]
    xin = jnp.einsum("tec,td->ecd", dispatch_mask, x)
    dt = x.dtype
    act = ACTIVATIONS[activation]
    if ia3 is None:
        h = act(jnp.einsum("ecd,edf->ecf", xin, experts["gate"].astype(dt))) * jnp.einsum(
            "ecd,edf->ecf", xin, experts["up"].astype(dt))
    else:
        v_gate, v_up, v_down = (v.astype(dt) for v in ia3)
        xg = jnp.einsum("tec,td->ecd", dispatch_mask, x * v_gate)
        xu = jnp.einsum("tec,td->ecd", dispatch_mask, x * v_up)
        h = act(jnp.einsum("ecd,edf->ecf", xg, experts["gate"].astype(dt))) * jnp.einsum(
            "ecd,edf->ecf", xu, experts["up"].astype(dt))
        h = h * jnp.einsum("tec,tf->ecf", dispatch_mask, v_down)
    yout = jnp.einsum("ecf,efd->ecd", h, experts["down"].astype(dt))
    y = jnp.einsum("tec,ecd->td", combine, yout.astype(jnp.float32)).astype(dt)
    dropped = 1.0 - keep.sum() / jnp.maximum(valid.sum(), 1)
    return y, {"dropped_frac": dropped.astype(jnp.float32)}


def dense(x: jax.Array, routing: Routing, experts: dict, *, activation: str = "silu", ia3=None,
          **_) -> tuple[jax.Array, dict]:
    """Every expert on every token, weighted by the routing (reference; O(E) compute)."""
    e = experts["gate"].shape[0]
    dt = x.dtype
    xg = xu = x
    if ia3 is not None:
        xg, xu = x * ia3[0].astype(dt), x * ia3[1].astype(dt)
    h = ACTIVATIONS[activation](jnp.einsum("td,edf->etf", xg, experts["gate"].astype(dt))) * jnp.einsum(
        "td,edf->etf", xu, experts["up"].astype(dt))
    if ia3 is not None:
        h = h * ia3[2].astype(dt)[None]
    y_all = jnp.einsum("etf,efd->etd", h, experts["down"].astype(dt))
    w = routing.weights
    if routing.valid is not None:
        w = jnp.where(routing.valid, w, 0.0)
    dense_w = jnp.einsum("tk,tke->te", w.astype(jnp.float32), jax.nn.one_hot(routing.expert_ids, e, dtype=jnp.float32))
    y = jnp.einsum("te,etd->td", dense_w, y_all.astype(jnp.float32)).astype(dt)
    return y, {"dropped_frac": jnp.float32(0.0)}


ENGINES = {"dropless": dropless, "capacity": capacity, "dense": dense}
