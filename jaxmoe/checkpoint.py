"""Run directories and orbax checkpoints: layout, config.yaml, atomic writes, save/restore,
metadata, config comparison and a params-only restore. Knows no optimizer and nothing of
:mod:`jaxmoe.train` (the trainer builds on this module, never the other way round).

Layout of a run directory::

    RUN/config.yaml              the full config of the run
    RUN/metrics.jsonl            one JSON object per logged step (written by the trainer)
    RUN/checkpoints/<step>/      orbax items: state, data, meta

``state`` is one pytree: ``{step, params, opt_state, rng, skipped}`` for a training
checkpoint, ``{step, params}`` for a params-only checkpoint (``jaxmoe import``, marked
``"params_only": true`` in ``meta``). ``data`` is the data-iterator state (JSON, ``{}`` for
params-only checkpoints), ``meta`` the step, time, family, model config and loss-spike window.

Orbax commits a step atomically (it writes to ``<step>.orbax-checkpoint-tmp*`` and renames
it), so a run killed while saving leaves the previous complete checkpoint as the latest one.
A checkpoint whose params hold NaN/inf is never written.

:func:`load_params` restores only the params of any checkpoint (orbax partial restore,
shaped by ``jax.eval_shape`` of the family's ``init``): the optimizer state of a training
checkpoint is neither built nor read.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxmoe.config import Config, ConfigError, dump_config, load_config, to_dict
from jaxmoe.errors import CheckpointError

log = logging.getLogger("jaxmoe")

__all__ = [
    "CheckpointError", "checkpoint_dir", "resolve_run_dir", "remove_partial", "write_text_atomic", "write_config",
    "load_run_config", "make_manager", "save", "save_params", "restore", "holds_optimizer_state", "read_meta",
    "config_differences", "checkpoint_mismatch", "mismatch_message", "abstract_params", "load_params",
    "leaf_names", "first_nonfinite_param",
]

ITEMS = ("state", "data", "meta")


# ------------------------------------------------------------------- run directories


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).absolute() / "checkpoints"


def _remove_partial(ckpt_dir: Path) -> None:
    """Delete temporary directories left by a run killed while it was saving."""
    if not ckpt_dir.exists():
        return
    for child in ckpt_dir.iterdir():
        if child.is_dir() and (".orbax-checkpoint-tmp" in child.name or child.name.endswith(".tmp")):
            log.warning("ignoring incomplete checkpoint %s (the run stopped while writing it)", child)
            shutil.rmtree(child, ignore_errors=True)


def remove_partial(run_dir: str | Path) -> None:
    """Delete (with a warning) the partial checkpoint directories of a run killed while saving."""
    _remove_partial(checkpoint_dir(run_dir))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(run_dir: str | Path, cfg: Config) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / "config.yaml", dump_config(cfg))


def load_run_config(run_dir: str | Path) -> Config:
    try:
        return load_config(Path(run_dir) / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"the config saved in {run_dir} cannot be read: {e}") from None


def resolve_run_dir(path: str | Path) -> Path:
    """Accept a run directory or its ``checkpoints`` subdirectory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint directory '{path}' does not exist.")
    if p.name == "checkpoints" and (p.parent / "config.yaml").exists():
        p = p.parent
    if not (p / "config.yaml").exists():
        raise CheckpointError(f"'{path}' is not a jaxmoe run directory (no config.yaml in it).")
    if not checkpoint_dir(p).exists():
        raise CheckpointError(f"'{path}' has no checkpoints/ directory; train first or point at a run directory.")
    return p


# ------------------------------------------------------------------- pytree helpers


def leaf_names(tree) -> list[str]:
    """Dotted names of the leaves of ``tree`` in flatten order (``groups.0.0.ffn.router.kernel``)."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        names.append(".".join(parts))
    return names


def leaf_finite_flags(tree) -> jax.Array:
    """bool ``[num_leaves]``: whether each floating leaf of ``tree`` is entirely finite
    (integer leaves count as finite)."""
    leaves = jax.tree.leaves(tree)
    return jnp.stack([jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
                      for x in leaves]) if leaves else jnp.zeros((0,), bool)


def first_nonfinite_leaf(tree) -> jax.Array:
    """int32 scalar: flatten index of the first leaf with a non-finite value, -1 if none."""
    flags = leaf_finite_flags(tree)
    if flags.shape[0] == 0:
        return jnp.int32(-1)
    return jnp.where(jnp.all(flags), -1, jnp.argmin(flags)).astype(jnp.int32)


_first_nonfinite_jit = jax.jit(first_nonfinite_leaf)


def first_nonfinite_param(params) -> str | None:
    """Name of the first parameter holding NaN/inf (one jitted reduction), or None."""
    if not jax.tree.leaves(params):
        return None
    i = int(_first_nonfinite_jit(params))
    return None if i < 0 else leaf_names(params)[i]


def _params_of(state):
    if isinstance(state, dict):
        return {"params": state["params"]} if "params" in state else state
    return getattr(state, "params", state)


# ------------------------------------------------------------------- orbax


def make_manager(run_dir: str | Path, keep: int = 3, create: bool = True, cleanup: bool | None = None,
                 options: dict | None = None) -> ocp.CheckpointManager:
    """Orbax manager of ``RUN/checkpoints``. ``cleanup`` (default: ``create``, i.e. for a
    writer) deletes partial directories of a killed save with a warning; readers leave them
    (a live run may be writing one) and orbax ignores them. ``options``: extra
    ``CheckpointManagerOptions`` keyword arguments (the trainer's fault injection passes a
    temporary-path class here)."""
    ckpt_dir = checkpoint_dir(run_dir)
    if create if cleanup is None else cleanup:
        _remove_partial(ckpt_dir)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False,
                                        **(options or {}))
    return ocp.CheckpointManager(ckpt_dir, options=opts, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Write checkpoint ``step`` (atomically): ``state`` is any pytree holding ``params``
    (a dict or a dataclass such as the trainer's ``TrainState``). Refuses, with a
    CheckpointError, to write parameters holding NaN/inf: a checkpoint is always safe to
    resume from."""
    bad = first_nonfinite_param(_params_of(state))
    if bad is not None:
        latest = manager.latest_step()
        raise CheckpointError(f"refusing to save checkpoint {step}: parameter {bad} holds NaN or inf; "
                              f"the last good checkpoint is {'none' if latest is None else latest} in "
                              f"{manager.directory}.")
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def save_params(run_dir: str | Path, cfg: Config, params: Any, *, step: int = 0, meta: dict | None = None,
                keep: int | None = None) -> Path:
    """Write a params-only run directory: ``config.yaml`` (``cfg``) and checkpoint ``step``
    whose state is ``{step, params}`` (no optimizer state, no data-iterator position;
    ``meta["params_only"]`` is true). ``jaxmoe generate --checkpoint RUN`` loads it and
    ``jaxmoe train --resume`` continues from it with a fresh optimizer state. Refuses a
    directory that already holds checkpoints."""
    run_dir = Path(run_dir)
    if checkpoint_dir(run_dir).exists() and any(checkpoint_dir(run_dir).iterdir()):
        raise CheckpointError(f"{run_dir} already holds checkpoints; choose an empty output directory.")
    write_config(run_dir, cfg)
    state = {"step": jnp.asarray(step, jnp.int32), "params": jax.tree.map(jnp.asarray, params)}
    manager = make_manager(run_dir, keep=cfg.train.keep_checkpoints if keep is None else keep)
    try:
        save(manager, step, state, {}, {"step": step, "time": time.time(), "family": cfg.model.family,
                                        "model": to_dict(cfg.model), **(meta or {}), "params_only": True})
    finally:
        manager.close()
    return run_dir


def _check_step(manager: ocp.CheckpointManager, step: int | None) -> int:
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {manager.directory}.")
    if step not in manager.all_steps():
        raise CheckpointError(f"there is no checkpoint {step} in {manager.directory}; complete checkpoints: "
                              f"{', '.join(map(str, sorted(manager.all_steps()))) or 'none'}.")
    return step


def _state_dir(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(str(manager.directory)) / str(step) / "state"


def _restore_subtree(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """Only the leaves of ``target`` (a dict whose keys are a subset of the stored state's)
    from checkpoint ``step``: orbax partial restore reads nothing else (e.g. no optimizer
    moments). A checkpointer of its own, so ``manager`` keeps its StandardSave handler."""
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        return checkpointer.restore(_state_dir(manager, step), args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    finally:
        checkpointer.close()


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None, *,
            partial: bool = False):
    """Restore ``(state, data_state, meta)`` of ``step`` (default: latest complete one) into
    ``abstract_state`` (``ShapeDtypeStruct`` leaves, with shardings for a sharded restore).
    ``partial=True``: ``abstract_state`` is a dict naming a subset of the stored state
    (e.g. ``{"step", "params"}``) and only that subset is read."""
    step = _check_step(manager, step)
    if not partial:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                            data=ocp.args.JsonRestore(),
                                                            meta=ocp.args.JsonRestore()))
        return out["state"], out["data"], out["meta"]
    state = _restore_subtree(manager, step, abstract_state)
    out = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return state, out["data"], out["meta"]


def _stored_tree(manager: ocp.CheckpointManager, step: int):
    """The stored state's tree of array metadata (shapes, dtypes), without reading arrays."""
    return ocp.StandardCheckpointHandler().metadata(_state_dir(manager, step))


def holds_optimizer_state(manager: ocp.CheckpointManager, step: int | None = None) -> bool:
    """Whether checkpoint ``step`` (default: latest) holds an optimizer state (a training
    checkpoint) rather than params only (an imported model)."""
    step = _check_step(manager, step)
    stored = _stored_tree(manager, step)
    return "opt_state" in getattr(stored, "tree", stored)


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # an older or foreign checkpoint without readable metadata
        return {}
    return meta if isinstance(meta, dict) else {}


def read_meta(run_dir: str | Path, step: int | None = None) -> dict:
    """The metadata saved with checkpoint ``step`` (default: latest) of a run: step, time,
    family, model config, loss-spike window ({} if unreadable)."""
    manager = make_manager(run_dir, create=False)
    try:
        step = manager.latest_step() if step is None else step
        return {} if step is None else _restore_meta(manager, step)
    finally:
        manager.close()


# ------------------------------------------------------------------- config comparison


def config_differences(a: Config, b: Config, sections=("model",)) -> list[str]:
    """Dotted names of fields that differ between two configs (within ``sections``)."""
    out = []

    def walk(x, y, prefix):
        for key in sorted(set(x) | set(y)):
            vx, vy = x.get(key), y.get(key)
            if isinstance(vx, dict) and isinstance(vy, dict):
                walk(vx, vy, f"{prefix}{key}.")
            elif vx != vy:
                out.append(f"{prefix}{key} ({vx!r} vs {vy!r})")

    da, db = to_dict(a), to_dict(b)
    for s in sections:
        walk(da[s], db[s], f"{s}.")
    return out


def _flat_shapes(tree) -> dict[str, tuple]:
    return {n: tuple(getattr(x, "shape", ())) for n, x in zip(leaf_names(tree), jax.tree.leaves(tree))}


def checkpoint_mismatch(manager: ocp.CheckpointManager, step: int, cfg: Config, abstract_state: Any) -> list[str]:
    """How checkpoint ``step`` differs from what ``cfg`` builds: the model config fields
    that differ (from the config stored with the checkpoint), else the parameters whose
    shapes differ. ``abstract_state`` is any tree holding the params under ``params``
    (a train state, or ``{"params": abstract_params(cfg)}``). Empty when they match."""
    from jaxmoe.config import ModelConfig, _from_dict

    saved = _restore_meta(manager, step).get("model")
    if isinstance(saved, dict):
        try:
            saved_cfg = Config(model=_from_dict(ModelConfig, saved, "model"))
        except (ConfigError, TypeError):
            saved_cfg = None
        if saved_cfg is not None:
            diffs = config_differences(saved_cfg, Config(model=cfg.model), sections=("model",))
            if diffs:
                return diffs
    try:
        stored = _flat_shapes(_stored_tree(manager, step))
    except Exception:
        return []
    target = {k: v for k, v in _flat_shapes(abstract_state).items() if k.startswith("params.")}
    stored = {k: v for k, v in stored.items() if k.startswith("params.")}
    out = [f"{k} has shape {stored[k]} in the checkpoint but {target[k]} from the config"
           for k in sorted(set(stored) & set(target)) if stored[k] != target[k]]
    out += [f"{k} is missing from the checkpoint" for k in sorted(set(target) - set(stored))]
    out += [f"{k} is in the checkpoint but not in the model" for k in sorted(set(stored) - set(target))]
    return out


def mismatch_message(diffs: list[str], limit: int = 4) -> str:
    """``diffs`` of :func:`checkpoint_mismatch` as one clause (the first ``limit`` of them)."""
    return f"{'; '.join(diffs[:limit])}{f' (and {len(diffs) - limit} more)' if len(diffs) > limit else ''}"


# ------------------------------------------------------------------- params-only restore


def abstract_params(cfg: Config, sharding: jax.sharding.Sharding | None = None):
    """Shapes/dtypes of the params of ``cfg``'s model (``jax.eval_shape`` of the family's
    ``init``, nothing allocated), optionally all carrying ``sharding``."""
    from jaxmoe.models import get_model

    model = get_model(cfg.model.family)
    shapes = jax.eval_shape(lambda key: model.init(key, cfg.model), jax.random.PRNGKey(cfg.train.seed))
    if sharding is None:
        return shapes
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def load_params(path: str | Path, step: int | None = None):
    """Load ``(config, params)`` of a run (latest checkpoint unless ``step``), training or
    params-only. Reads only the params (onto one local device, whatever mesh saved them)
    and builds no optimizer."""
    run_dir = resolve_run_dir(path)
    cfg = load_run_config(run_dir)
    manager = make_manager(run_dir, create=False)
    try:
        if manager.latest_step() is None:
            raise CheckpointError(f"no complete checkpoint in {checkpoint_dir(run_dir)}.")
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {"params": abstract_params(cfg, one)}
        step = manager.latest_step() if step is None else step
        diffs = checkpoint_mismatch(manager, step, cfg, target) if step in manager.all_steps() else []
        if diffs:
            raise CheckpointError(f"checkpoint {step} in {run_dir} was made with another model config than "
                                  f"{run_dir / 'config.yaml'}: {mismatch_message(diffs)}.")
        step = _check_step(manager, step)
        params = _restore_subtree(manager, step, target)["params"]
    finally:
        manager.close()
    return cfg, jax.device_get(params)
