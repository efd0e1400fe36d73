"""The trainer's checkpoints: the :class:`~jaxmoe.train.state.TrainState` (params, optimizer
state, step, RNG, skip counter) plus the data-iterator state, over :mod:`jaxmoe.checkpoint`
(run directories, orbax, metadata: the layer that knows no optimizer).

What is specific to training lives here: the checkpoint manager gets the fault-injection
options of ``JAXMOE_FAULT`` (:mod:`jaxmoe.train.faults`), and resuming a params-only
checkpoint (``jaxmoe import``) builds a fresh optimizer state from the restored params.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp

from jaxmoe import checkpoint as ckpt_io
from jaxmoe.config import Config
from jaxmoe.parallel.sharding import with_shardings
from jaxmoe.train import faults
from jaxmoe.train.state import TrainState, abstract_train_state

log = logging.getLogger("jaxmoe")


def make_manager(run_dir: str | Path, keep: int = 3, create: bool = True,
                 cleanup: bool | None = None) -> ocp.CheckpointManager:
    """:func:`jaxmoe.checkpoint.make_manager` with the fault-injection options of
    ``JAXMOE_FAULT`` (none unless a ``sigkill_during_save`` fault is armed)."""
    return ckpt_io.make_manager(run_dir, keep=keep, create=create, cleanup=cleanup,
                                options=faults.manager_options())


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, data_state: dict, meta: dict) -> None:
    """Write the train state of ``step`` (atomically; refuses non-finite params)."""
    ckpt_io.save(manager, step, state, data_state, meta)


def restore_train_state(manager: ocp.CheckpointManager, cfg: Config, task, tx: optax.GradientTransformation,
                        shardings: Any = None, step: int | None = None):
    """``(state, data_state, meta)`` of checkpoint ``step`` (default: latest), restored
    straight into ``shardings`` (the checkpoint may come from another mesh).

    A training checkpoint restores everything. A params-only checkpoint (``jaxmoe import``)
    restores params and step; the optimizer state, RNG and skip counter are fresh
    (``TrainState.create`` from the restored params, built directly sharded)."""
    abstract = abstract_train_state(cfg, task, tx)
    if shardings is not None:
        abstract = with_shardings(abstract, shardings)
    if ckpt_io.holds_optimizer_state(manager, step):
        return ckpt_io.restore(manager, abstract, step)
    saved, data_state, meta = ckpt_io.restore(manager, {"step": abstract.step, "params": abstract.params}, step,
                                              partial=True)
    log.info("checkpoint %d holds params only (an imported model): the optimizer state starts fresh",
             int(saved["step"]))
    state = jax.jit(lambda p: TrainState.create(p, tx, cfg.train.seed), out_shardings=shardings)(saved["params"])
    return state.replace(step=saved["step"]), data_state, meta
