"""Grouped matrix multiplication: ``out[rows of group e] = lhs[rows of group e] @ rhs[e]``.

One function, :func:`gmm`, with several backends:

- ``xla``: ``jax.lax.ragged_dot`` with JAX's own autodiff (portable, any platform). On GPU
  XLA lowers it to a dense masked matmul over every group (E times the work).
- ``xla_vjp``: the same forward kernel behind the explicit ``custom_vjp`` that every
  accelerator kernel plugs into (:func:`make_vjp_gmm`): ``dx = dy @ rhs^T`` per group and
  ``dW = per-group lhs^T dy``. Tested with the portable kernels.
- ``pallas_mgpu`` (NVIDIA Hopper, compute capability 9.x): the Pallas Mosaic-GPU kernels
  shipped with JAX -- ``ragged_dot_mgpu.ragged_dot`` forward, the same kernel with
  ``transpose_rhs=True`` for dx, ``transposed_ragged_dot_mgpu`` for dW -- with block
  sizes chosen per shape (:data:`PALLAS_BLOCKS`, tuned on an H200). Few rows (decode)
  take a gather path that reads only the used groups' weights.
- ``megablox`` (TPU): ``jax.experimental.pallas.ops.tpu.megablox`` ``gmm``/``tgmm``
  (elsewhere it runs in Pallas interpret mode: slow, for tests only).

The Pallas kernels need K and N padded to their block sizes and lhs/rhs of one dtype; the
padded backends (:func:`padded_gmm`) pad rows/K/N with zeros and append one all-zero
group that owns every row past ``sum(group_sizes)`` (padded rows belong to no real
group), so the kernels always see fully covered rows and rows past the groups come out 0.

On a GPU, ``xla`` is refused in one line where its dense lowering would not fit
(:func:`check_xla_fits`); ``pallas_mgpu`` shrinks its blocks to fit shared memory for 4-byte
types and falls back to ``xla`` (one warning) if the kernels still do not build.

``auto`` picks by platform and chip (:func:`auto_backend`); the config's
``model.moe.gmm_backend`` chooses explicitly and the environment variable
``JAXMOE_GMM_BACKEND`` overrides both. Rows past ``sum(group_sizes)`` produce zeros.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

BACKENDS = ("xla", "xla_vjp", "pallas_mgpu", "megablox")


# ------------------------------------------------------------------ platform probing


def _platform() -> str:
    return jax.default_backend()


def _compute_capability() -> str:
    """``"9.0"`` on an H100/H200; ``""`` when unknown or not an NVIDIA GPU."""
    try:
        return str(getattr(jax.devices()[0], "compute_capability", "") or "")
    except Exception:  # pragma: no cover - no devices
        return ""


@functools.lru_cache(maxsize=None)
def _import(name: str):
    """Import a (Pallas) module lazily; None when it is missing or fails to import."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _mgpu_modules():
    fwd = _import("jax.experimental.pallas.ops.gpu.ragged_dot_mgpu")
    tr = _import("jax.experimental.pallas.ops.gpu.transposed_ragged_dot_mgpu")
    return (fwd, tr) if fwd is not None and tr is not None else None


def _megablox_module():
    return _import("jax.experimental.pallas.ops.tpu.megablox.gmm")


def pallas_mgpu_available() -> bool:
    return _mgpu_modules() is not None


def megablox_available() -> bool:
    return _megablox_module() is not None


def auto_backend() -> str:
    """GPU with compute capability 9.x -> ``pallas_mgpu``; TPU -> ``megablox``; else ``xla``."""
    platform = _platform()
    if platform == "gpu" and _compute_capability().startswith("9.") and pallas_mgpu_available():
        return "pallas_mgpu"
    if platform == "tpu" and megablox_available():
        return "megablox"
    return "xla"


def resolve_backend(requested: str = "auto") -> str:
    """The backend to use: env ``JAXMOE_GMM_BACKEND`` > config > platform default."""
    env = os.environ.get("JAXMOE_GMM_BACKEND")
    choice = env or requested
    if choice == "auto":
        return auto_backend()
    if choice not in BACKENDS:
        raise ValueError(f"grouped-matmul backend {choice!r} is not available; choose one of auto, {', '.join(BACKENDS)}.")
    if choice == "pallas_mgpu" and not (_platform() == "gpu" and pallas_mgpu_available()):
        raise ValueError("grouped-matmul backend 'pallas_mgpu' needs an NVIDIA Hopper GPU and JAX's Pallas Mosaic-GPU "
                         "kernels; choose one of auto, xla, xla_vjp.")
    if choice == "megablox" and not megablox_available():
        raise ValueError("grouped-matmul backend 'megablox' needs JAX's Pallas TPU megablox kernels; "
                         "choose one of auto, xla, xla_vjp.")
    return choice


# ------------------------------------------------------------------- portable kernels


def _ragged(lhs, rhs, group_sizes):
    return jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=jnp.float32).astype(lhs.dtype)


def transposed_gmm(lhs: jax.Array, dy: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Per-group ``lhs_g^T @ dy_g``: ``lhs [M, K]``, ``dy [M, N]`` -> ``[E, K, N]`` (fp32)."""
    dn = jax.lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([0], [0]), ([], [])),
        lhs_ragged_dimensions=[0],
        rhs_group_dimensions=[],
    )
    return jax.lax.ragged_dot_general(lhs, dy, group_sizes, dn, preferred_element_type=jnp.float32)


class Kernels(NamedTuple):
    """The three kernels of a grouped matmul and its gradient (all on sorted rows).

    ``fwd(lhs [M, K], rhs [E, K, N], gs) -> [M, N]``; ``dx(dy [M, N], rhs [E, K, N], gs) ->
    [M, K]`` (contracting rhs's N); ``dw(lhs [M, K], dy [M, N], gs) -> [E, K, N]``.
    """

    fwd: Callable
    dx: Callable
    dw: Callable


XLA_KERNELS = Kernels(
    fwd=_ragged,
    dx=lambda dy, rhs, gs: _ragged(dy, jnp.swapaxes(rhs, 1, 2), gs),
    dw=lambda lhs, dy, gs: transposed_gmm(lhs, dy, gs),
)


def make_vjp_gmm(kernels: Kernels) -> Callable:
    """``f(lhs, rhs, group_sizes)`` with ``kernels.fwd`` forward and a ``custom_vjp`` whose
    backward is ``dx = kernels.dx(dy, rhs)``, ``dW = kernels.dw(lhs, dy)``."""

    @jax.custom_vjp
    def f(lhs, rhs, group_sizes):
        return kernels.fwd(lhs, rhs, group_sizes).astype(lhs.dtype)

    def f_fwd(lhs, rhs, group_sizes):
        return f(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)

    def f_bwd(res, dy):
        lhs, rhs, group_sizes = res
        dy = dy.astype(lhs.dtype)
        dx = kernels.dx(dy, rhs.astype(lhs.dtype), group_sizes).astype(lhs.dtype)
        dw = kernels.dw(lhs, dy, group_sizes).astype(rhs.dtype)
        return dx, dw, None

    f.defvjp(f_fwd, f_bwd)
    return f


_gmm_vjp = make_vjp_gmm(XLA_KERNELS)


# --------------------------------------------------------------------------- padding


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Align(NamedTuple):
    rows: int = 1  # pad rows to a multiple of this ...
    k: int = 1
    n: int = 1
    min_rows: int = 1  # ... and to at least this many


def padded_gmm(vjp_fn: Callable, align: Align, lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Run ``vjp_fn`` (built by :func:`make_vjp_gmm`) on inputs padded to ``align``.

    Rows, K and N are zero-padded to multiples of ``align``; one zero group is appended that
    owns every row past ``sum(group_sizes)`` (and the padded rows), so kernels that require
    the groups to cover all rows compute zeros there. Gradients flow through the pads
    (JAX's pad/slice transposes), so the result is differentiable like :func:`gmm`.
    """
    m, k = lhs.shape
    e, _, n = rhs.shape
    mp, kp, np_ = _round_up(max(m, align.min_rows, 1), align.rows), _round_up(k, align.k), _round_up(n, align.n)
    lhs_p = jnp.pad(lhs, ((0, mp - m), (0, kp - k))) if (mp, kp) != (m, k) else lhs
    rhs_p = jnp.pad(rhs.astype(lhs.dtype), ((0, 1), (0, kp - k), (0, np_ - n)))
    gs = group_sizes.astype(jnp.int32)
    gs_p = jnp.concatenate([gs, (mp - gs.sum())[None]])
    out = vjp_fn(lhs_p, rhs_p, gs_p)
    return out[:m, :n] if (mp, np_) != (m, n) else out


def _row_groups(group_sizes: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """Group id of each of ``m`` sorted rows (clipped) and whether the row is in a group."""
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    gid = jnp.searchsorted(ends, jnp.arange(m, dtype=jnp.int32), side="right")
    return jnp.minimum(gid, group_sizes.shape[0] - 1), jnp.arange(m) < ends[-1]


def gather_gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Few-row path: gather each row's group matrix and contract (reads only used groups)."""
    gid, inside = _row_groups(group_sizes, lhs.shape[0])
    w = jnp.take(rhs.astype(lhs.dtype), gid, axis=0)  # [M, K, N]
    out = jnp.einsum("mk,mkn->mn", lhs, w, preferred_element_type=jnp.float32)
    return jnp.where(inside[:, None], out, 0).astype(lhs.dtype)


def _small(m: int, e: int) -> bool:
    """Rows few enough that gathering M weight matrices beats streaming all E groups."""
    return 3 * m <= e


# ------------------------------------------------------------------- Pallas Mosaic GPU

DEFAULT_FWD = dict(block_m=128, block_n=128, block_k=64, max_concurrent_steps=4, grid_block_n=8)
DEFAULT_DW = dict(block_m=128, block_n=128, block_k=64, max_concurrent_steps=4, grid_block_n=8)

# Block sizes per (kernel, K, N): fwd contracts K and writes N, dx contracts K(=the forward's
# N) and writes N(=the forward's K), dw is keyed by the forward's (K, N). Tuned on one H200
# (JAX 0.11.2, 131072 rows in 64 balanced groups) with benchmarks/moe_layer.py --tune; the
# measured TFLOP/s of the winner (and of the default 128/128/64/4/8) in the comment.
_B = lambda bm, bn, bk, st, gb: dict(block_m=bm, block_n=bn, block_k=bk, max_concurrent_steps=st, grid_block_n=gb)
PALLAS_BLOCKS: dict[tuple[str, int, int], dict] = {
    ("fwd", 1024, 1024): _B(192, 128, 64, 4, 8),  # 465 (default 391)
    ("fwd", 512, 1024): _B(192, 128, 64, 4, 8),  # 336 (321)
    ("dx", 1024, 1024): _B(128, 128, 64, 4, 8),  # 451
    ("dx", 1024, 512): _B(128, 128, 64, 6, 16),  # 454 (384)
    ("dw", 1024, 1024): _B(128, 128, 64, 4, 8),  # 579
    ("dw", 512, 1024): _B(128, 128, 64, 4, 8),  # 490
}


def pallas_blocks(kind: str, k: int, n: int) -> dict:
    """Block config for ``kind`` in (fwd, dx, dw): the tuned entry or the default. ``JAXMOE_GMM_BLOCKS``
    (``kind:bm,bn,bk,steps,gbn;...``) overrides for tuning."""
    env = os.environ.get("JAXMOE_GMM_BLOCKS", "")
    for item in filter(None, env.split(";")):
        name, vals = item.split(":")
        if name == kind:
            bm, bn, bk, st, gb = (int(v) for v in vals.split(","))
            return dict(block_m=bm, block_n=bn, block_k=bk, max_concurrent_steps=st, grid_block_n=gb)
    table = _env_table()
    if (kind, k, n) in table:
        return dict(table[(kind, k, n)])
    return dict(PALLAS_BLOCKS.get((kind, k, n), DEFAULT_DW if kind == "dw" else DEFAULT_FWD))


def _env_table() -> dict:
    """A tuned table from ``JAXMOE_GMM_TABLE`` (JSON ``{"kind,k,n": {block config}}``), if set."""
    path = os.environ.get("JAXMOE_GMM_TABLE")
    if not path or not os.path.exists(path):
        return {}
    import json

    with open(path) as f:
        raw = json.load(f)
    out = {}
    for key, cfg in raw.items():
        kind, k, n = key.split(",")
        out[(kind, int(k), int(n))] = cfg
    return out


def _accepts(fn, kwargs: dict) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _mgpu_fwd(cfg: dict):
    def fwd(lhs, rhs, gs):
        mod = _mgpu_modules()[0]
        return mod.ragged_dot(lhs, rhs, group_sizes=gs, **_accepts(mod.ragged_dot, cfg))
    return fwd


def _mgpu_dx(cfg: dict):
    def dx(dy, rhs, gs):
        mod = _mgpu_modules()[0]
        return mod.ragged_dot(dy, rhs, group_sizes=gs, transpose_rhs=True, **_accepts(mod.ragged_dot, cfg))
    return dx


def _mgpu_dw(cfg: dict):
    def dw(lhs, dy, gs):
        mod = _mgpu_modules()[1]
        return mod.transposed_ragged_dot(lhs, dy, group_sizes=gs, **_accepts(mod.transposed_ragged_dot, cfg))
    return dw


@functools.lru_cache(maxsize=None)
def _mgpu_vjp(fwd_cfg: tuple, dx_cfg: tuple, dw_cfg: tuple) -> Callable:
    return make_vjp_gmm(Kernels(_mgpu_fwd(dict(fwd_cfg)), _mgpu_dx(dict(dx_cfg)), _mgpu_dw(dict(dw_cfg))))


# Fewer rows than this go to XLA's ragged dot: the Pallas kernels' padding to whole row blocks
# and launch costs dominate there, and on 2026-11-30 (JAX 0.11.2, H200) compiling one such small
# Mosaic-GPU instance (the prefill of a ~100-point series in a Time-MoE forecast) crashed inside
# LLVM, killing the process; XLA's dense lowering of a few thousand rows is small.
PALLAS_MIN_ROWS = 4096

# Shared memory per thread block on Hopper (H100/H200: 227 KiB usable), less a margin for
# the kernels' barriers.
HOPPER_SMEM_BYTES = 232448
_SMEM_MARGIN = 1024


def smem_bytes(cfg: dict, itemsize: int) -> int:
    """Shared memory of one Mosaic-GPU ragged-dot block: ``max_concurrent_steps`` pipelined
    pairs of lhs ``[block_m, block_k]`` and rhs ``[block_k, block_n]`` tiles (the H200
    reported 262,176 bytes for fp32 with 128/128/64/4: 262,144 of tiles + barriers)."""
    return cfg["max_concurrent_steps"] * (cfg["block_m"] * cfg["block_k"] + cfg["block_k"] * cfg["block_n"]) * itemsize


def fit_smem(cfg: dict, itemsize: int, budget: int = HOPPER_SMEM_BYTES - _SMEM_MARGIN) -> dict:
    """``cfg`` with fewer pipelined steps (then a smaller ``block_k``) until its tiles fit
    ``budget`` bytes of shared memory: the bf16-tuned blocks overflow it for 4-byte types."""
    cfg = dict(cfg)
    while smem_bytes(cfg, itemsize) > budget:
        if cfg["max_concurrent_steps"] > 2:
            cfg["max_concurrent_steps"] -= 1
        elif cfg["block_k"] > 32:
            cfg["block_k"] //= 2
        else:
            break
    return cfg


@functools.lru_cache(maxsize=None)
def _mgpu_compiles(dtype_name: str, fwd_cfg: tuple, dx_cfg: tuple, dw_cfg: tuple) -> str | None:
    """Compile the three kernels once on a small problem with these blocks and dtype; None
    when they build, else the reason (one line)."""
    fwd, dx, dw = dict(fwd_cfg), dict(dx_cfg), dict(dw_cfg)
    k = math.lcm(fwd["block_k"], dx["block_n"], dw["block_m"])
    n = math.lcm(fwd["block_n"], dx["block_k"], dw["block_n"])
    m = _round_up(max(fwd["block_m"], dx["block_m"], dw["block_k"]), dw["block_k"]) * 2
    fn = _mgpu_vjp(fwd_cfg, dx_cfg, dw_cfg)
    dt = jnp.dtype(dtype_name)

    def loss(lhs, rhs, gs):
        return fn(lhs, rhs, gs).astype(jnp.float32).sum()

    try:
        jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
            jax.ShapeDtypeStruct((m, k), dt), jax.ShapeDtypeStruct((2, k, n), dt),
            jax.ShapeDtypeStruct((2,), jnp.int32)).compile()
    except Exception as e:  # a Mosaic lowering error: the kernel cannot run this dtype/blocks here
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None


def pallas_mgpu_gmm(lhs, rhs, group_sizes, fwd_cfg: dict | None = None, dx_cfg: dict | None = None,
                    dw_cfg: dict | None = None):
    """Hopper grouped matmul (see module docstring); explicit block configs for tuning.

    Block configs are shrunk to fit shared memory for the operand dtype (:func:`fit_smem`);
    if the kernels still do not build for it (checked once per dtype and blocks), the call
    falls back to ``xla`` with a one-line warning."""
    m, k = lhs.shape
    e, _, n = rhs.shape
    if _small(m, e):
        return gather_gmm(lhs, rhs, group_sizes)
    if m < PALLAS_MIN_ROWS:  # prefill of a short sequence: XLA's product is cheap there (see the constant)
        return gmm_xla_checked(lhs, rhs, group_sizes)
    size = jnp.dtype(lhs.dtype).itemsize
    fwd_cfg = fit_smem(fwd_cfg or pallas_blocks("fwd", k, n), size)
    dx_cfg = fit_smem(dx_cfg or pallas_blocks("dx", n, k), size)
    dw_cfg = fit_smem(dw_cfg or pallas_blocks("dw", k, n), size)
    if size != 2 and _platform() == "gpu":
        keys = tuple(tuple(sorted(c.items())) for c in (fwd_cfg, dx_cfg, dw_cfg))
        reason = _mgpu_compiles(jnp.dtype(lhs.dtype).name, *keys)
        if reason is not None:
            _warn_once(f"grouped matmul: pallas_mgpu does not build for {jnp.dtype(lhs.dtype).name} operands here "
                       f"({reason}); using xla for them.")
            return gmm_xla_checked(lhs, rhs, group_sizes)
    # fwd contracts K (block_k) and writes N (block_n); dx contracts N and writes K; dw
    # tiles K with block_m, N with block_n and the rows with block_k. fwd/dx store partial
    # row blocks, so rows only need dw's alignment and at least one row block.
    align = Align(rows=dw_cfg["block_k"],
                  k=math.lcm(fwd_cfg["block_k"], dx_cfg["block_n"], dw_cfg["block_m"]),
                  n=math.lcm(fwd_cfg["block_n"], dx_cfg["block_k"], dw_cfg["block_n"]),
                  min_rows=max(fwd_cfg["block_m"], dx_cfg["block_m"], dw_cfg["block_k"]))
    fn = _mgpu_vjp(tuple(sorted(fwd_cfg.items())), tuple(sorted(dx_cfg.items())), tuple(sorted(dw_cfg.items())))
    return padded_gmm(fn, align, lhs, rhs.astype(lhs.dtype), group_sizes)


# ----------------------------------------------------------------------- megablox (TPU)

MEGABLOX_TILING = (128, 128, 128)


def _megablox_interpret() -> bool:
    return _platform() != "tpu"


def _megablox_kernels(tiling=MEGABLOX_TILING) -> Kernels:
    def fwd(lhs, rhs, gs):
        mod = _megablox_module()
        return mod.gmm(lhs, rhs, gs, lhs.dtype, tiling, interpret=_megablox_interpret())

    def dx(dy, rhs, gs):
        mod = _megablox_module()
        return mod.gmm(dy, rhs, gs, dy.dtype, tiling, transpose_rhs=True, interpret=_megablox_interpret())

    def dw(lhs, dy, gs):
        mod = _megablox_module()
        return mod.tgmm(lhs.T, dy, gs, jnp.float32, tiling, interpret=_megablox_interpret())

    return Kernels(fwd, dx, dw)


@functools.lru_cache(maxsize=None)
def _megablox_vjp(tiling: tuple) -> Callable:
    return make_vjp_gmm(_megablox_kernels(tiling))


def megablox_gmm(lhs, rhs, group_sizes, tiling: tuple = MEGABLOX_TILING):
    tm, tk, tn = tiling
    kn = math.lcm(tk, tn)  # dx contracts N (tk) and writes K (tn)
    return padded_gmm(_megablox_vjp(tuple(tiling)), Align(rows=tm, k=kn, n=kn), lhs, rhs.astype(lhs.dtype),
                      group_sizes)


# ----------------------------------------------------------------------------- entry


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    import logging

    logging.getLogger("jaxmoe").warning("%s", message)


def _device_memory_bytes() -> int | None:
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # no stats on this platform
        return None
    return stats.get("bytes_limit") or None


def xla_dense_bytes(m: int, k: int, n: int, e: int, itemsize: int) -> int:
    """Temporaries of XLA's GPU lowering of one ``ragged_dot``: a dense masked product over
    all ``e`` groups, ``[m, e*k]`` inputs and ``[m, e*n]`` partial outputs."""
    return m * e * (k + n) * itemsize


def check_xla_fits(m: int, k: int, n: int, e: int, itemsize: int, fraction: float = 0.125) -> None:
    """On a GPU, refuse in one line (with the estimate) a ``xla`` grouped matmul whose dense
    lowering needs more than ``fraction`` of the device's memory, instead of an allocator
    crash deep inside the step (several such products are alive at once in a train step)."""
    if _platform() != "gpu":
        return
    limit = _device_memory_bytes()
    need = xla_dense_bytes(m, k, n, e, itemsize)
    if limit and need > fraction * limit:
        from jaxmoe.config import ConfigError

        raise ConfigError(
            f"grouped-matmul backend 'xla' on GPU lowers each grouped matmul to a dense product over all {e} "
            f"experts: about {need / 2 ** 30:.1f} GiB of temporaries per call here ({m} rows, K={k}, N={n}) on a device "
            f"with {limit / 2 ** 30:.0f} GiB; use model.moe.gmm_backend=auto (pallas_mgpu on Hopper), "
            "model.moe.dispatch=capacity, or a smaller batch.")


def gmm_xla_checked(lhs, rhs, group_sizes):
    m, k = lhs.shape
    e, _, n = rhs.shape
    check_xla_fits(m, k, n, e, jnp.dtype(lhs.dtype).itemsize)
    return _ragged(lhs, rhs, group_sizes)


@functools.partial(jax.jit, static_argnames=("backend",))
def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, backend: str = "xla") -> jax.Array:
    """Grouped matmul ``lhs [M, K]`` x ``rhs [E, K, N]`` with ``group_sizes [E]`` -> ``[M, N]``.

    Rows of ``lhs`` are sorted by group; accumulation in fp32, result in lhs's dtype.
    """
    if backend == "xla":
        return gmm_xla_checked(lhs, rhs, group_sizes)
    if backend == "xla_vjp":
        m, k = lhs.shape
        check_xla_fits(m, k, rhs.shape[2], rhs.shape[0], jnp.dtype(lhs.dtype).itemsize)
        return _gmm_vjp(lhs, rhs, group_sizes)
    if backend == "pallas_mgpu":
        return pallas_mgpu_gmm(lhs, rhs, group_sizes)
    if backend == "megablox":
        return megablox_gmm(lhs, rhs, group_sizes)
    raise ValueError(f"grouped-matmul backend {backend!r} is not available; choose one of {', '.join(BACKENDS)}.")
