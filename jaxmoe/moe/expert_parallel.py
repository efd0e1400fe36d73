"""Expert parallelism: dispatch -> expert compute -> combine inside ``jax.shard_map``.

Everything around it (router, losses, shared experts) stays in global view; only the
routed-expert part runs per device. Layout inside the ``shard_map`` (all mesh axes manual):

- **tokens** are split over the mesh axes of the logical ``batch`` rule (default
  ``data x fsdp x expert``) and replicated over the others (``tensor``). A device holds
  ``T_l`` tokens and their routing (``expert_ids``, ``weights [T_l, K]``).
- **experts** are split over the ``expert`` rule's mesh axes (``E_l = E / ep`` per
  device, contiguous ranges), their FFN width over the ``expert_mlp`` rule's axes that do
  not split tokens (``tensor``: Megatron-style, a ``psum`` after the down projection).
  The ``embed`` dimension (FSDP-sharded in the params) is gathered at the ``shard_map``
  boundary (its transpose reduce-scatters the gradients), in the compute dtype.

Per device:

1. *keep mask*. ``dispatch=capacity`` drops exactly what the single-device capacity
   engine drops: expert capacity ``c = ceil(cf * T * K / E)`` over the global ``T``,
   slot-major priority (every token's first choice before any second choice, tokens in
   global order). The global queue position of each local assignment comes from the
   per-(shard, slot, expert) counts of all token shards (one small ``all_gather``), so
   ``dropped_frac`` and outputs equal the unsharded engine's. ``dropless`` keeps all.
2. *send buffer* ``[ep, B, D]``: the kept assignments sorted by expert (so grouped by
   destination device, then local expert), block ``d`` for device ``d``. ``B`` is the
   exact worst case ``T_l * min(K, E_l)`` (capped by ``E_l * c`` for capacity dispatch),
   so the exchange never drops; with ``exchange_capacity = x > 0`` it is
   ``ceil(x * T_l * K / ep)`` and assignments past it (slot-major priority) are dropped
   and counted in ``dropped_frac``.
3. *exchange*: ``all_to_all`` of the padded buffer, or ``ragged_all_to_all`` sending only
   the filled rows (into the same padded layout). ``ragged_all_to_all`` is not
   implemented on XLA:CPU, where ``ragged`` runs an ``all_gather`` emulation (tests).
   Per-(source, local expert) counts travel with a tiny ``all_to_all``.
4. *local experts*: received rows sorted by local expert, grouped matmul
   (:func:`jaxmoe.moe.dispatch.expert_swiglu_grouped`), unsorted; ``psum`` over tensor.
5. *return exchange* (the same collective, reversed) and *combine* with the routing
   weights of the kept assignments.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.dispatch import expert_capacity, expert_swiglu_grouped, permute_rows
from jaxmoe.moe.routers.base import Routing

EXCHANGES = ("padded", "ragged", "auto")


# ------------------------------------------------------------------ mesh helpers


def _axes_of(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _size(mesh, axes: tuple[str, ...]) -> int:
    return int(math.prod(int(mesh.shape[a]) for a in axes))


def platform_of(mesh) -> str:
    return mesh.devices.flat[0].platform


def resolve_exchange(requested: str, mesh) -> str:
    """``auto`` -> ``ragged`` on GPU/TPU, ``padded`` on CPU (no ragged_all_to_all there).

    ``none`` (benchmarks only, not a config choice) skips the token exchange: every device
    runs its own send buffer through its local experts. The results are wrong but the
    compute is the same, so timing it against a real exchange measures the exchange cost.
    """
    if requested == "none":
        return "none"
    if requested not in EXCHANGES:
        raise ValueError(f"mesh.all_to_all={requested!r} is not valid; choose one of {', '.join(EXCHANGES)}.")
    if requested == "auto":
        return "ragged" if platform_of(mesh) in ("gpu", "cuda", "rocm", "tpu") else "padded"
    return requested


class Plan:
    """Static layout of one expert-parallel call (mesh axes, local sizes, buffer rows)."""

    def __init__(self, mesh, rules, batch: int, seq: int, num_experts: int, k: int, ffn: int, cfg: MoEConfig,
                 dispatch: str, exchange: str, exchange_capacity: float):
        from jaxmoe.parallel.sharding import logical_to_spec, make_rules

        rules = make_rules() if rules is None else rules
        self.mesh = mesh
        tok_spec = logical_to_spec(("batch",), rules, mesh, (batch,))
        self.tok_axes = _axes_of(tok_spec[0] if len(tok_spec) else None)
        ep_spec = logical_to_spec(("expert",), rules, mesh, (num_experts,))
        self.ep_axes = _axes_of(ep_spec[0] if len(ep_spec) else None)
        sizes = dict(mesh.shape)
        used = set(self.tok_axes) | set(self.ep_axes)
        tp, prod = [], 1
        for a in rules.get("expert_mlp", ()):
            s = int(sizes.get(a, 1))
            if s > 1 and a not in used and ffn % (prod * s) == 0:
                tp.append(a)
                prod *= s
        self.tp_axes = tuple(tp)
        self.n_tok = _size(mesh, self.tok_axes)
        self.ep = _size(mesh, self.ep_axes)
        self.batch_local = batch // self.n_tok
        self.tokens_local = self.batch_local * seq
        self.tokens = batch * seq
        self.num_experts, self.k = num_experts, k
        self.experts_local = num_experts // self.ep
        self.dispatch = dispatch
        self.exchange = exchange
        self.capacity = expert_capacity(self.tokens, k, num_experts, cfg.capacity_factor) if dispatch == "capacity" else None
        worst = self.tokens_local * min(k, self.experts_local)
        if self.capacity is not None:
            worst = min(worst, self.experts_local * self.capacity)
        worst = max(worst, 1)
        rows = worst
        if exchange_capacity and exchange_capacity > 0:
            rows = min(worst, max(1, math.ceil(exchange_capacity * self.tokens_local * k / self.ep)))
        self.buffer_rows = rows
        self.may_overflow = rows < worst

    def describe(self) -> str:
        return (f"tokens over {self.tok_axes or '-'} ({self.tokens_local}/device), experts over "
                f"{self.ep_axes or '-'} ({self.experts_local}/device), ffn over {self.tp_axes or '-'}, "
                f"buffer {self.ep}x{self.buffer_rows} rows, exchange {self.exchange}")


# --------------------------------------------------------------------- exchanges


def _ragged_emulated(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name):
    """``jax.lax.ragged_all_to_all`` semantics built from ``all_gather`` (for XLA:CPU)."""
    del recv_sizes
    me = jax.lax.axis_index(axis_name)
    every = jax.lax.all_gather(operand, axis_name)  # [n, N, D]
    in_off = jax.lax.all_gather(input_offsets, axis_name)[:, me]  # what each source sends me
    size = jax.lax.all_gather(send_sizes, axis_name)[:, me]
    out_off = jax.lax.all_gather(output_offsets, axis_name)[:, me]
    rows = jnp.arange(output.shape[0])
    rel = rows[None, :] - out_off[:, None]  # [n, M]
    hit = (rel >= 0) & (rel < size[:, None])
    src = jnp.argmax(hit, axis=0)
    src_row = jnp.clip(jnp.take_along_axis(in_off[:, None] + rel, src[None], 0)[0], 0, operand.shape[0] - 1)
    vals = every[src, src_row]
    return jnp.where(hit.any(0)[:, None], vals, output)


def _ragged_call(x, send_sizes, recv_sizes, rows: int, axes: tuple[str, ...], native: bool):
    """Send block ``d`` of ``x [n*rows, D]`` (its first ``send_sizes[d]`` rows) to device
    ``d``; receive the blocks of every source ``s`` at ``s * rows`` (padding stays zero)."""
    n = send_sizes.shape[0]
    me = jax.lax.axis_index(axes)
    input_offsets = jnp.arange(n, dtype=jnp.int32) * rows
    output_offsets = jnp.full((n,), me * rows, jnp.int32)
    out = jnp.zeros_like(x)
    fn = jax.lax.ragged_all_to_all if native else _ragged_emulated
    return fn(x, out, input_offsets, send_sizes.astype(jnp.int32), output_offsets, recv_sizes.astype(jnp.int32),
              axis_name=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def ragged_exchange(x, send_sizes, recv_sizes, rows: int, axes: tuple[str, ...], native: bool):
    """Ragged all-to-all between fixed-size blocks; its transpose is the reverse exchange."""
    return _ragged_call(x, send_sizes, recv_sizes, rows, axes, native)


def _ragged_fwd(x, send_sizes, recv_sizes, rows, axes, native):
    return _ragged_call(x, send_sizes, recv_sizes, rows, axes, native), (send_sizes, recv_sizes)


def _ragged_bwd(rows, axes, native, res, g):
    send_sizes, recv_sizes = res
    return _ragged_call(g, recv_sizes, send_sizes, rows, axes, native), None, None


ragged_exchange.defvjp(_ragged_fwd, _ragged_bwd)


def _exchange(x, send_sizes, recv_sizes, plan: Plan):
    """Blocks of ``plan.buffer_rows`` rows: block ``d`` goes to expert-parallel rank ``d``."""
    if plan.ep == 1 or plan.exchange == "none":
        return x
    if plan.exchange == "ragged":
        native = platform_of(plan.mesh) != "cpu"
        return ragged_exchange(x, send_sizes, recv_sizes, plan.buffer_rows, plan.ep_axes, native)
    return jax.lax.all_to_all(x, plan.ep_axes, 0, 0, tiled=True)


# ------------------------------------------------------------------- per device


def _capacity_keep(ids, valid, plan: Plan):
    """Keep mask ``[T_l, K]`` equal to the single-device capacity engine's (global queue)."""
    e = plan.num_experts
    oh = jax.nn.one_hot(ids, e, dtype=jnp.int32) * valid[..., None].astype(jnp.int32)  # [T_l, K, E]
    cnt = oh.sum(0)  # [K, E]
    if plan.n_tok > 1:
        every = jax.lax.all_gather(cnt, plan.tok_axes)  # [n_tok, K, E], shard order = token order
        me = jax.lax.axis_index(plan.tok_axes)
        earlier_shards = (every * (jnp.arange(plan.n_tok) < me)[:, None, None]).sum(0)
        total = every.sum(0)
    else:
        earlier_shards, total = jnp.zeros_like(cnt), cnt
    earlier_slots = jnp.cumsum(total, axis=0) - total  # all tokens' earlier choices come first
    local = jnp.cumsum(oh, axis=0) - oh  # earlier local tokens, same slot
    pos = ((local + (earlier_slots + earlier_shards)[None]) * oh).sum(-1)  # [T_l, K]
    return valid & (pos < plan.capacity)


def _buffer_keep(dest, keep, plan: Plan):
    """Drop assignments past the per-destination buffer (slot-major priority)."""
    t, k = dest.shape
    ohd = jax.nn.one_hot(dest, plan.ep, dtype=jnp.int32) * keep[..., None].astype(jnp.int32)
    sm = ohd.transpose(1, 0, 2).reshape(k * t, plan.ep)
    rank = ((jnp.cumsum(sm, axis=0) - 1) * sm).sum(-1).reshape(k, t).T
    return keep & (rank < plan.buffer_rows)


def _local(x, ids, weights, valid, gate, up, down, *, plan: Plan, backend: str, activation: str = "silu"):
    """One device: ``x [b_l, s, D]``, routing ``[b_l, s, K]``, local experts."""
    b, s, d = x.shape
    k, n_e, e_l, rows, ep = plan.k, plan.num_experts, plan.experts_local, plan.buffer_rows, plan.ep
    t = b * s
    xf = x.reshape(t, d)
    ids = ids.reshape(t, k)
    weights = weights.reshape(t, k)
    valid = valid.reshape(t, k)
    keep = _capacity_keep(ids, valid, plan) if plan.capacity is not None else valid
    dest = ids // e_l
    if plan.may_overflow:
        keep = _buffer_keep(dest, keep, plan)
    # sort kept assignments by expert (= by destination, then local expert)
    flat = jnp.where(keep, ids, n_e).reshape(-1)  # slot order a = t * K + j
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    inv_order = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=jnp.int32))
    counts = jnp.bincount(flat, length=n_e + 1)[:n_e].astype(jnp.int32).reshape(ep, e_l)  # [ep, E_l]
    dest_counts = counts.sum(1)
    dest_start = jnp.cumsum(dest_counts) - dest_counts
    q = jnp.arange(ep * rows, dtype=jnp.int32)
    qd, qr = q // rows, q % rows
    q_valid = qr < dest_counts[qd]
    src_slot = jnp.take(order, jnp.clip(dest_start[qd] + qr, 0, t * k - 1))
    send = jnp.where(q_valid[:, None], jnp.take(xf, src_slot // k, axis=0), 0).astype(x.dtype)
    # counts per (source, local expert) for my experts
    recv_counts = jax.lax.all_to_all(counts, plan.ep_axes, 0, 0, tiled=True) if ep > 1 else counts
    recv_sizes = recv_counts.sum(1)
    recv = _exchange(send, dest_counts, recv_sizes, plan)  # [ep * rows, D], block s from source s
    # local expert of each received row; padding rows get e_l (sorted last)
    cum = jnp.cumsum(recv_counts, axis=1)  # [ep, E_l]
    local_e = jax.vmap(lambda c: jnp.searchsorted(c, jnp.arange(rows, dtype=c.dtype), side="right"))(cum)
    local_e = local_e.reshape(-1).astype(jnp.int32)
    r_order = jnp.argsort(local_e, stable=True).astype(jnp.int32)
    r_inv = jnp.zeros_like(r_order).at[r_order].set(jnp.arange(r_order.shape[0], dtype=jnp.int32))
    xs = permute_rows(recv, r_order, r_inv)
    ys = expert_swiglu_grouped(xs, {"gate": gate, "up": up, "down": down}, recv_counts.sum(0), backend,
                               activation)
    out = permute_rows(ys, r_inv, r_order)
    out = jnp.where((local_e < e_l)[:, None], out, 0).astype(x.dtype)
    if plan.tp_axes:
        out = jax.lax.psum(out, plan.tp_axes)
    back = _exchange(out, recv_sizes, dest_counts, plan)  # my assignments' results, same layout as send
    # combine: slot a sits at block dest(a), row (sorted position - dest_start)
    a_dest = jnp.clip(flat // e_l, 0, ep - 1)
    a_q = a_dest * rows + jnp.clip(inv_order - dest_start[a_dest], 0, rows - 1)
    y_slots = jnp.take(back, a_q, axis=0).reshape(t, k, d)
    w = jnp.where(keep, weights, 0.0).astype(jnp.float32)
    y_slots = jnp.where(keep[..., None], y_slots, 0)
    y = jnp.einsum("tkd,tk->td", y_slots.astype(jnp.float32), w).astype(x.dtype)
    n_valid = valid.sum().astype(jnp.float32)
    n_kept = keep.sum().astype(jnp.float32)
    if plan.n_tok > 1:
        n_valid = jax.lax.psum(n_valid, plan.tok_axes)
        n_kept = jax.lax.psum(n_kept, plan.tok_axes)
    dropped = (1.0 - n_kept / jnp.maximum(n_valid, 1.0)).astype(jnp.float32)
    return y.reshape(b, s, d), dropped


# ---------------------------------------------------------------------- public


def make_plan(mesh, rules, x_shape, routing: Routing, experts: dict, cfg: MoEConfig, *, dispatch: str,
              exchange: str = "auto", exchange_capacity: float = 0.0) -> Plan:
    b, s, _ = x_shape
    e, _, f = experts["gate"].shape
    return Plan(mesh, rules, b, s, e, routing.expert_ids.shape[-1], f, cfg, dispatch,
                resolve_exchange(exchange, mesh), exchange_capacity)


def expert_parallel_ffn(x: jax.Array, routing: Routing, experts: dict, cfg: MoEConfig, mesh, rules=None, *,
                        dispatch: str = "dropless", exchange: str = "auto", exchange_capacity: float = 0.0,
                        backend: str = "xla", activation: str = "silu") -> tuple[jax.Array, dict[str, Any]]:
    """Routed experts of ``x [batch, seq, embed]`` (global view) on ``mesh``.

    ``routing`` holds ``[batch*seq, K]`` arrays (global view). ``dispatch`` is
    ``dropless`` or ``capacity`` (drops identical to :func:`jaxmoe.moe.dispatch.capacity`).
    Returns ``(y [batch*seq, embed], {"dropped_frac"})``, the same function as the
    single-device engines.
    """
    if dispatch not in ("dropless", "capacity"):
        raise ValueError(f"expert parallelism supports dispatch dropless or capacity, not {dispatch!r}.")
    b, s, d = x.shape
    k = routing.expert_ids.shape[-1]
    plan = make_plan(mesh, rules, x.shape, routing, experts, cfg, dispatch=dispatch, exchange=exchange,
                     exchange_capacity=exchange_capacity)
    tok, ep, tp = _entry(plan.tok_axes), _entry(plan.ep_axes), _entry(plan.tp_axes)
    valid = routing.valid if routing.valid is not None else jnp.ones(routing.expert_ids.shape, jnp.bool_)
    dt = x.dtype
    args = (x, routing.expert_ids.reshape(b, s, k), routing.weights.reshape(b, s, k), valid.reshape(b, s, k),
            experts["gate"].astype(dt), experts["up"].astype(dt), experts["down"].astype(dt))
    tok_spec = P(tok, None, None)
    in_specs = (tok_spec, tok_spec, tok_spec, tok_spec, P(ep, None, tp), P(ep, None, tp), P(ep, tp, None))
    body = functools.partial(_local, plan=plan, backend=backend, activation=activation)
    fn = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(tok_spec, P()), check_vma=False)
    y, dropped = fn(*args)
    return y.reshape(b * s, d), {"dropped_frac": dropped}


def active_mesh():
    """The active mesh (``jaxmoe.parallel.sharding.use_mesh``) if it has more than one device."""
    from jaxmoe.parallel.sharding import current_mesh, mesh_size

    mesh = current_mesh()
    return mesh if mesh is not None and mesh_size(mesh) > 1 else None


def expert_groups() -> int:
    """Number of expert-parallel device groups of the active mesh (1 without one)."""
    mesh = active_mesh()
    if mesh is None:
        return 1
    from jaxmoe.parallel.sharding import current_rules

    return _size(mesh, tuple(a for a in current_rules().get("expert", ()) if a in mesh.shape))


def maybe_expert_parallel(x: jax.Array, routing: Routing, experts: dict, cfg: MoEConfig, dispatch: str, *,
                          backend: str = "xla", activation: str = "silu"):
    """The MoE layer's hook: ``(y [batch*seq, embed], stats)`` through :func:`expert_parallel_ffn`
    when a multi-device mesh is active and the dispatch is dropless/capacity; else None
    (the caller runs the single-device engine in global view)."""
    mesh = active_mesh()
    if mesh is None or dispatch not in ("dropless", "capacity"):
        return None
    from jaxmoe.parallel.sharding import current_options, current_rules

    opts = current_options()
    return expert_parallel_ffn(x, routing, experts, cfg, mesh, current_rules(), dispatch=dispatch,
                               exchange=opts["all_to_all"], exchange_capacity=opts["exchange_capacity"],
                               backend=backend, activation=activation)
