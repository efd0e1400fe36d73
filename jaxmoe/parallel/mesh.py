"""Device meshes from the config, their validation, and multi-host initialisation.

A mesh has four named axes, always in this order (slowest- to fastest-varying over the
device list, so the inner axes ``expert`` and ``tensor`` land on neighbouring devices,
i.e. on one host)::

    data    pure data parallelism (params replicated)
    fsdp    data parallelism with params/optimizer state sharded (ZeRO-3 style)
    expert  expert parallelism: experts split over devices, tokens exchanged by all-to-all
    tensor  tensor parallelism inside attention heads, MLP and expert FFN widths

``mesh.data=-1`` (the default) means "all devices not used by the other axes". Tokens
(the batch) are split over ``data x fsdp x expert``; ``tensor`` replicates tokens.

The mesh is a plain ``jax.sharding.Mesh`` (``Auto`` axis types), so the same code runs on
JAX 0.10 and 0.11 (``jax.make_mesh`` defaults to ``Explicit`` axes there, which breaks
``shard_map`` on unsharded inputs).

Multi-host: call :func:`initialize_distributed` (``jaxmoe train`` does) in every process
before JAX touches a device; then ``jax.devices()`` lists the devices of all hosts and the
mesh spans them.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Mapping, Sequence

import numpy as np

from jaxmoe.config import MESH_AXES, Config, MeshConfig

log = logging.getLogger("jaxmoe")

AXES = MESH_AXES  # ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")


from jaxmoe.errors import MeshError  # noqa: E402,F401  (re-exported)


def _fmt(sizes: Mapping[str, int]) -> str:
    return " x ".join(f"{a}={sizes[a]}" for a in AXES)


def resolve_axis_sizes(mesh_cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes with ``-1`` replaced by the devices left over; raises :class:`MeshError`."""
    sizes = {a: int(getattr(mesh_cfg, a)) for a in AXES}
    for a, s in sizes.items():
        if s == 0 or s < -1:
            raise MeshError(f"mesh.{a}={s} is not valid; use a positive size or -1 (all remaining devices).")
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {', '.join('mesh.' + a for a in free)}.")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(f"the mesh axes {_fmt({a: (s if s != -1 else '-1') for a, s in sizes.items()})} need a "
                            f"multiple of {fixed} devices, but {num_devices} are available.")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"the mesh {_fmt(sizes)} uses {fixed} devices but {num_devices} are available; "
                        "make the product of the axis sizes equal the device count (or set one axis to -1).")
    return sizes


def validate_for_model(sizes: Mapping[str, int], cfg: Config) -> None:
    """Check the axis sizes against the model and batch; raises :class:`MeshError`."""
    m = cfg.model
    ep, tp = sizes["expert"], sizes["tensor"]
    moe, heads = getattr(m, "moe", None), getattr(m, "num_heads", None)  # families without MoE / attention
    if moe is not None and moe.num_experts % ep:
        raise MeshError(f"mesh.expert={ep} must divide model.moe.num_experts={moe.num_experts}.")
    if heads is not None and heads % tp:
        raise MeshError(f"mesh.tensor={tp} must divide model.num_heads={heads}.")
    shards = sizes["data"] * sizes["fsdp"] * sizes["expert"]
    if cfg.train.batch_size % shards:
        raise MeshError(f"train.batch_size={cfg.train.batch_size} must be divisible by data x fsdp x expert = "
                        f"{shards} (the batch is split over these mesh axes).")


def device_grid(sizes: Mapping[str, int], devices: Sequence) -> np.ndarray:
    """Devices arranged as an array of shape ``[data, fsdp, expert, tensor]``."""
    shape = tuple(sizes[a] for a in AXES)
    devices = list(devices)
    try:
        from jax.experimental import mesh_utils

        return np.asarray(mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True))
    except Exception:  # unknown topology (fake CPU devices, subsets): keep the device order
        return np.asarray(devices, dtype=object).reshape(shape)


def build_mesh(mesh_cfg: MeshConfig | None = None, devices: Sequence | None = None, *,
               config: Config | None = None):
    """A ``jax.sharding.Mesh`` with axes ``(data, fsdp, expert, tensor)``.

    ``devices`` defaults to ``jax.devices()`` (or its first ``mesh.num_devices``).
    With ``config`` the sizes are also checked against the model and batch.
    """
    import jax
    from jax.sharding import Mesh

    if mesh_cfg is None:
        mesh_cfg = config.mesh if config is not None else MeshConfig()
    if devices is None:
        devices = jax.devices()
        n = int(getattr(mesh_cfg, "num_devices", 0) or 0)
        if n:
            if n > len(devices):
                raise MeshError(f"mesh.num_devices={n} but only {len(devices)} devices are available.")
            devices = devices[:n]
    sizes = resolve_axis_sizes(mesh_cfg, len(devices))
    if config is not None:
        validate_for_model(sizes, config)
    return Mesh(device_grid(sizes, devices), AXES)


def mesh_from_config(cfg: Config):
    """The mesh a training run of ``cfg`` uses (validated against the model)."""
    return build_mesh(cfg.mesh, config=cfg)


def axis_sizes(mesh) -> dict[str, int]:
    return {a: int(mesh.shape.get(a, 1)) for a in AXES}


def describe(mesh) -> str:
    """Short text such as ``data=2 expert=4 (8 devices)``; axes of size 1 are left out."""
    sizes = axis_sizes(mesh)
    parts = [f"{a}={s}" for a, s in sizes.items() if s > 1]
    n = int(np.prod(list(sizes.values())))
    return f"{' '.join(parts) or 'single device'}" + (f" ({n} devices)" if n > 1 else "")


# ------------------------------------------------------------------- multi-host


_CLUSTER_HINTS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")


def _cluster_detected(env: Mapping[str, str]) -> bool:
    if env.get("JAXMOE_DISTRIBUTED", "").lower() in ("1", "auto", "true", "yes"):
        return True
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return any(k in env for k in _CLUSTER_HINTS[2:])


def _already_initialized() -> bool:
    import jax

    fn = getattr(jax.distributed, "is_initialized", None)
    if fn is not None:
        return bool(fn())
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:
        return False


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None, *,
                           env: Mapping[str, str] | None = None) -> bool:
    """Start JAX's distributed runtime for a multi-host run; returns True if it did.

    Sources, in order: the arguments (``jaxmoe train --coordinator-address ...``), the
    environment variables ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (and optionally ``JAX_LOCAL_DEVICE_IDS``,
    comma-separated), then cluster auto-detection by ``jax.distributed.initialize()``
    (SLURM with more than one task, Open MPI, Cloud TPU pods; force it with
    ``JAXMOE_DISTRIBUTED=auto``). With none of these, or one process, nothing happens.
    Must run before JAX touches a device.
    """
    import jax

    env = os.environ if env is None else env
    addr = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    nproc = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if local_device_ids is None and env.get("JAX_LOCAL_DEVICE_IDS"):
        local_device_ids = [int(v) for v in env["JAX_LOCAL_DEVICE_IDS"].split(",") if v.strip()]
    try:
        nproc = None if nproc in (None, "") else int(nproc)
        pid = None if pid in (None, "") else int(pid)
    except ValueError:
        raise MeshError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers.") from None
    if _already_initialized():
        return False
    if addr is not None or (nproc is not None and nproc > 1):
        if nproc is None or nproc < 1:
            raise MeshError("a multi-host run needs the number of processes (JAX_NUM_PROCESSES or --num-processes).")
        if nproc == 1 and pid in (None, 0):
            return False
        if addr is None:
            raise MeshError("a multi-host run needs the coordinator address host:port of process 0 "
                            "(JAX_COORDINATOR_ADDRESS or --coordinator-address).")
        if pid is None or not 0 <= pid < nproc:
            raise MeshError(f"a multi-host run needs this process's id in [0, {nproc}) "
                            "(JAX_PROCESS_ID or --process-id).")
        kwargs = dict(coordinator_address=addr, num_processes=nproc, process_id=pid)
        if local_device_ids is not None:
            kwargs["local_device_ids"] = list(local_device_ids)
        jax.distributed.initialize(**kwargs)
    elif _cluster_detected(env):
        jax.distributed.initialize()
    else:
        return False
    log.info("distributed runtime: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
