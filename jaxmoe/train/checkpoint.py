"""Orbax checkpoints of the training state, data-iterator state and run metadata.

Layout of a run directory::

    RUN/config.yaml              the full config of the run
    RUN/metrics.jsonl            one JSON object per logged step
    RUN/checkpoints/<step>/      orbax: state (params, opt_state, step, rng), data, meta

Orbax commits a step atomically (it writes to a temporary directory and renames it), so
a run killed while saving leaves the previous complete checkpoint as the latest one.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxmoe.config import Config, ConfigError, dump_config, load_config, to_dict

log = logging.getLogger("jaxmoe")


from jaxmoe.errors import CheckpointError  # noqa: E402,F401  (re-exported)


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


def make_manager(run_dir: str | Path, keep: int = 3, create: bool = True,
                 cleanup: bool | None = None) -> ocp.CheckpointManager:
    """Orbax manager of ``RUN/checkpoints``. ``cleanup`` (default: ``create``, i.e. for a
    writer) deletes partial directories of a killed save with a warning; readers leave them
    (a live run may be writing one) and orbax ignores them."""
    from jaxmoe.train import faults

    ckpt_dir = checkpoint_dir(run_dir)
    if create if cleanup is None else cleanup:
        _remove_partial(ckpt_dir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False,
                                           **faults.manager_options())
    return ocp.CheckpointManager(ckpt_dir, options=options, item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Write checkpoint ``step`` (atomically). Refuses, with a CheckpointError, to write
    parameters holding NaN/inf: a checkpoint is always safe to resume from."""
    from jaxmoe.train.guards import first_nonfinite_param

    bad = first_nonfinite_param(getattr(state, "params", state))
    if bad is not None:
        latest = manager.latest_step()
        raise CheckpointError(f"refusing to save checkpoint {step}: parameter {bad} holds NaN or inf; "
                              f"the last good checkpoint is {'none' if latest is None else latest} in "
                              f"{manager.directory}.")
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
    """Restore ``(state, data_state, meta)`` of ``step`` (default: latest complete one)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {manager.directory}.")
    if step not in manager.all_steps():
        raise CheckpointError(f"there is no checkpoint {step} in {manager.directory}; complete checkpoints: "
                              f"{', '.join(map(str, sorted(manager.all_steps()))) or 'none'}.")
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                        data=ocp.args.JsonRestore(),
                                                        meta=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["meta"]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(run_dir: str | Path, cfg: Config) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / "config.yaml", dump_config(cfg))


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


def _flat_shapes(tree) -> dict[str, tuple]:
    from jaxmoe.train.guards import leaf_names

    return {n: tuple(getattr(x, "shape", ())) for n, x in zip(leaf_names(tree), jax.tree.leaves(tree))}


def checkpoint_mismatch(manager: ocp.CheckpointManager, step: int, cfg: Config, abstract_state: Any) -> list[str]:
    """How checkpoint ``step`` differs from what ``cfg`` builds: the model config fields
    that differ (from the config stored with the checkpoint), else the parameters whose
    shapes differ. Empty when they match."""
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
        stored = _flat_shapes(ocp.StandardCheckpointHandler().metadata(
            Path(str(manager.directory)) / str(step) / "state"))
    except Exception:
        return []
    target = {k: v for k, v in _flat_shapes(abstract_state).items() if k.startswith("params.")}
    stored = {k: v for k, v in stored.items() if k.startswith("params.")}
    out = [f"{k} has shape {stored[k]} in the checkpoint but {target[k]} from the config"
           for k in sorted(set(stored) & set(target)) if stored[k] != target[k]]
    out += [f"{k} is missing from the checkpoint" for k in sorted(set(target) - set(stored))]
    out += [f"{k} is in the checkpoint but not in the model" for k in sorted(set(stored) - set(target))]
    return out


def load_run_config(run_dir: str | Path) -> Config:
    try:
        return load_config(Path(run_dir) / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"the config saved in {run_dir} cannot be read: {e}") from None


def load_params(path: str | Path, step: int | None = None):
    """Load ``(config, params)`` of a trained run (latest checkpoint unless ``step``)."""
    from jaxmoe.train.loop import abstract_train_state

    run_dir = resolve_run_dir(path)
    cfg = load_run_config(run_dir)
    manager = make_manager(run_dir, create=False)
    if manager.latest_step() is None:
        raise CheckpointError(f"no complete checkpoint in {checkpoint_dir(run_dir)}.")
    # onto one local device, whatever mesh saved it (a sharded checkpoint restores anywhere)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), abstract_train_state(cfg))
    step = manager.latest_step() if step is None else step
    diffs = checkpoint_mismatch(manager, step, cfg, target) if step in manager.all_steps() else []
    if diffs:
        raise CheckpointError(f"checkpoint {step} in {run_dir} was made with another model config than "
                              f"{run_dir / 'config.yaml'}: {'; '.join(diffs[:4])}"
                              f"{f' (and {len(diffs) - 4} more)' if len(diffs) > 4 else ''}.")
    state, _, _ = restore(manager, target, step)
    return cfg, jax.device_get(state.params)
