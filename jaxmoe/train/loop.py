"""The training loop: data -> jitted step -> metrics, evaluation, checkpoints, resume.

``train(cfg)`` is the whole job behind ``jaxmoe train``. It never loses more than the work
since the last checkpoint: SIGTERM/SIGINT finish the current step, save, and return with
``summary["interrupted"] = True``; ``resume=True`` restores params, optimizer state, RNG,
step and the data iterator position, so a resumed run reproduces the uninterrupted losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe import checkpoint as ckpt_io
from jaxmoe.config import Config, to_dict
from jaxmoe.parallel import mesh as mesh_lib
from jaxmoe.parallel import sharding as shard_lib
from jaxmoe.train import checkpoint as ckpt
from jaxmoe.train.faults import FaultInjector
from jaxmoe.train.guards import HealthMonitor, SpikeDetector, check_series_sources, describe_nonfinite, load_entropy
from jaxmoe.train.metrics import JsonlWriter, plot_expert_load, plot_training, read_jsonl, truncate_after_step
from jaxmoe.train.optimizer import learning_rate_schedule, make_optimizer
from jaxmoe.train.state import TrainState, abstract_train_state
from jaxmoe.train.step import make_eval_step, make_train_step
from jaxmoe.train.tasks import make_task
from jaxmoe.train.tensorboard import EventWriter, TeeWriter

log = logging.getLogger("jaxmoe")


from jaxmoe.errors import TrainingError  # noqa: E402,F401  (re-exported)


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag checked between steps."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum

    @contextlib.contextmanager
    def installed(self):
        old = {}
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                old[s] = signal.signal(s, self)
        except ValueError:  # not in the main thread: no signal handling
            pass
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _progress(total: int, initial: int, enabled: bool):
    if enabled:
        from tqdm.auto import tqdm
    else:  # tqdm.auto would warn in a notebook without ipywidgets even for a bar it never shows
        from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step")


def evaluate(eval_step, params, pipeline, num_batches: int) -> float | None:
    if pipeline is None:
        return None
    losses = []
    it = pipeline.iterator()
    for _ in range(num_batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        loss, _ = eval_step(params, batch)
        losses.append(float(loss))
    return float(np.mean(losses)) if losses else None


@functools.lru_cache(maxsize=4)
def _leaf_names_cached(treedef) -> tuple:
    from jaxmoe.train.guards import leaf_names

    return tuple(leaf_names(jax.tree.unflatten(treedef, [0] * treedef.num_leaves)))


def _leaf_name(params, index: int) -> str:
    return _leaf_names_cached(jax.tree.structure(params))[index]


def _step_relevant(tcfg):
    """The train config with fields that do not affect the jitted step normalised away."""
    return dataclasses.replace(tcfg, output_dir="", seed=0, batch_size=1, log_every=1, eval_every=0,
                               eval_batches=1, checkpoint_every=0, keep_checkpoints=1, progress=False,
                               tensorboard=False, nonfinite_policy="skip", max_consecutive_skips=1,
                               spike_factor=0.0, plateau_window=0)


def _under_mesh(fn, mesh, mesh_cfg):
    """``fn`` whose tracing happens with ``mesh`` active (model code reads it at trace time)."""

    @functools.wraps(fn)
    def wrapped(*args):
        with shard_lib.use_mesh_config(mesh, mesh_cfg):
            return fn(*args)

    return wrapped


def train_state_shardings(cfg: Config, mesh, task=None):
    """``NamedSharding`` tree of the train state on ``mesh`` (params by the logical-axis rules,
    optimizer moments mirror params, counters replicated)."""
    task = task or make_task(cfg, with_data=False)
    return shard_lib.state_shardings(abstract_train_state(cfg, task), _param_axes(task), mesh,
                                     shard_lib.rules_from_config(cfg.mesh))


def _param_axes(task):
    from jaxmoe.nn.init import logical_axes

    return logical_axes(task.init_boxed, jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=8)
def _compiled_steps(model_cfg, train_cfg, mesh_cfg=None, mesh=None):
    """Jitted train/eval steps (and the state shardings), cached per (model, train, mesh)
    so repeated ``train`` calls in one process (tests, notebooks, sweeps) reuse the compiled
    executables. The steps trace under ``mesh`` and keep the state sharded."""
    cfg = Config(model=model_cfg, train=train_cfg, mesh=mesh_cfg or Config().mesh)
    task = make_task(cfg, with_data=False)
    tx = make_optimizer(train_cfg)
    if mesh is None:
        step = jax.jit(make_train_step(task.loss_fn, tx, learning_rate_schedule(train_cfg), task.post_update),
                       donate_argnums=0)
        return step, jax.jit(make_eval_step(task.loss_fn)), None
    state_sh = train_state_shardings(cfg, mesh, task)
    step = jax.jit(_under_mesh(make_train_step(task.loss_fn, tx, learning_rate_schedule(train_cfg), task.post_update),
                               mesh, mesh_cfg),
                   out_shardings=(state_sh, shard_lib.replicated(mesh)), donate_argnums=0)
    eval_jit = jax.jit(_under_mesh(make_eval_step(task.loss_fn), mesh, mesh_cfg))
    return step, eval_jit, state_sh


def _data_shape_change(meta: dict, saved: Config, cfg: Config) -> list[str]:
    """``train.batch_size`` / ``data.seq_len`` changes since the checkpoint (its meta, else the
    run's saved config), as ``"name (old -> new)"``."""
    old = {"train.batch_size": meta.get("batch_size", saved.train.batch_size),
           "data.seq_len": meta.get("seq_len", saved.data.seq_len)}
    new = {"train.batch_size": cfg.train.batch_size, "data.seq_len": cfg.data.seq_len}
    return [f"{k} ({old[k]} -> {new[k]})" for k in old if old[k] != new[k]]


def _rescaled_data_state(data_state, old_tokens_per_batch: int, new_tokens_per_batch: int):
    """A grain position (``{"next_index": batches}``) moved to the first batch of the new
    shape that starts after the tokens already seen (other states are kept)."""
    if isinstance(data_state, dict) and set(data_state) == {"next_index"} and isinstance(data_state["next_index"], int):
        seen = data_state["next_index"] * old_tokens_per_batch
        return {"next_index": -(-seen // max(new_tokens_per_batch, 1))}
    return data_state


def train(cfg: Config, *, resume: bool = False, batch_hook: Callable[[int, dict], dict] | None = None,
          force: bool = False, allow_data_change: bool = False) -> dict:
    """Train according to ``cfg``; returns a summary dict (also written to summary.json).

    ``train.output_dir`` must be new, empty or a jaxmoe run directory (``force=True``: any
    directory). ``resume=True`` continues from the newest intact checkpoint there (a damaged
    newer one is set aside as ``checkpoints/<step>.damaged``, never deleted); a changed
    ``train.batch_size`` or ``data.seq_len`` is refused unless ``allow_data_change`` (the
    running token count stays right either way); a run that already reached
    ``train.steps`` is left untouched (``summary["finished_already"]``).
    ``batch_hook(step, batch) -> batch`` lets tests inject faults (e.g. a NaN batch).
    """
    from jaxmoe import validate

    tcfg = cfg.train
    run_dir = Path(tcfg.output_dir)
    validate.train_steps(tcfg.steps)
    validate.data_path(cfg.data.path)
    validate.run_output_dir(run_dir, force=force)
    if cfg.model.family == "lm":
        validate.tokenizer_spec(cfg.data.tokenizer)
    faults = FaultInjector.from_env()  # testing aid (JAXMOE_FAULT); inert when unset
    # Validate all input before anything is written: user time series, then the data
    # pipelines, then the mesh. The run directory is created only once the state exists.
    if cfg.data.sources:
        check_series_sources(cfg.data.sources)
    task = make_task(cfg)
    mesh = mesh_lib.mesh_from_config(cfg)  # validates the mesh against devices and model
    rules = shard_lib.rules_from_config(cfg.mesh)
    step_fn, eval_jit, state_sh = _compiled_steps(cfg.model, _step_relevant(tcfg), cfg.mesh, mesh)
    tx = make_optimizer(tcfg)
    schedule = learning_rate_schedule(tcfg)
    manager = None
    if ckpt_io.checkpoint_dir(run_dir).exists():
        manager = ckpt.make_manager(run_dir, keep=tcfg.keep_checkpoints, create=False, cleanup=False)
    latest = manager.latest_step() if manager is not None else None
    train_iter = task.train_pipeline.iterator()
    if latest is not None and not resume:
        raise TrainingError(f"{run_dir} already holds checkpoints (latest step {latest}); pass --resume to continue "
                            "or choose another train.output_dir.")
    spikes = SpikeDetector(tcfg.spike_factor)
    tokens_start = 0  # tokens trained on before this run (running count kept in the checkpoint meta)
    if resume and latest is not None:
        saved = ckpt_io.load_run_config(run_dir)
        diffs = ckpt_io.config_differences(saved, cfg, sections=("model",))
        if diffs:
            raise ckpt_io.CheckpointError(f"the checkpoint in {run_dir} was made with another model config: "
                                          f"{'; '.join(diffs)}.")
        target = {"params": ckpt_io.abstract_params(cfg)}

        def read(step_no: int):
            diffs = ckpt_io.checkpoint_mismatch(manager, step_no, cfg, target)  # e.g. checkpoints copied from elsewhere
            if diffs:
                raise ckpt_io.CheckpointError(f"checkpoint {step_no} in {run_dir} was made with another model config: "
                                              f"{ckpt_io.mismatch_message(diffs)}.")
            # straight into this run's shardings (the checkpoint may come from another mesh)
            return ckpt.restore_train_state(manager, cfg, task, tx, state_sh, step_no)

        (state, data_state, meta), used, damaged = ckpt_io.restore_newest_intact(manager, read, announce=False)
        meta = meta if isinstance(meta, dict) else {}
        changed = _data_shape_change(meta, saved, cfg)
        if changed and not allow_data_change:
            raise TrainingError(f"the checkpoint in {run_dir} was trained with other batch shapes: {', '.join(changed)}; "
                                "the data position and token counts would no longer match. Keep the old values, or "
                                "pass --allow-data-change to continue with the new ones.")
        old_tokens_per_batch = (meta.get("batch_size", saved.train.batch_size)
                                * meta.get("seq_len", saved.data.seq_len))
        tokens_start = int(meta.get("tokens", int(state.step) * old_tokens_per_batch))
        if int(state.step) >= tcfg.steps:
            message = (f"run {run_dir} already reached step {int(state.step)} (train.steps={tcfg.steps}): nothing to "
                       f"train and nothing changed; pass train.steps=N with N > {int(state.step)} to train further.")
            if damaged:
                message = f"{ckpt_io.fallback_message(damaged, used)}; {message}"
            log.warning("%s", message)
            manager.close()
            return {"run_dir": str(run_dir.absolute()), "finished_already": True, "message": message,
                    "start_step": int(state.step), "steps": int(state.step), "tokens": tokens_start}
        if damaged:  # set aside before a later save reuses the step number; kept, never deleted
            kept = ckpt_io.set_aside_damaged(run_dir, [d.step for d in damaged])
            manager.reload()
            log.warning("%s", ckpt_io.fallback_message(damaged, used, kept))
        ckpt_io.remove_partial(run_dir)  # partial saves of a killed run go
        if changed:
            log.warning("continuing with changed batch shapes (%s): the data position is moved to the first batch "
                        "after the %d tokens already seen", ", ".join(changed), tokens_start)
            data_state = _rescaled_data_state(data_state, old_tokens_per_batch, task.tokens_per_batch)
        if data_state:
            train_iter.set_state(data_state)
        else:
            log.info("checkpoint %d holds no data-iterator position (an imported model): the data iterator "
                     "starts fresh", used)
        spikes = SpikeDetector(tcfg.spike_factor, history=meta.get("loss_window", ()))
        truncate_after_step(run_dir / "metrics.jsonl", int(state.step))
        log.info("resumed from step %d", int(state.step))
    else:
        if manager is not None:  # nothing complete here: partial saves of a killed run go
            ckpt_io.remove_partial(run_dir)
        if resume:
            log.warning("no checkpoint in %s: starting from scratch", run_dir)
        # created directly sharded: every device builds only its own shards
        state = jax.jit(lambda k: TrainState.create(task.init(k), tx, tcfg.seed),
                        out_shardings=state_sh)(jax.random.PRNGKey(tcfg.seed))
    ckpt_io.write_config(run_dir, cfg)
    if manager is None:
        manager = ckpt.make_manager(run_dir, keep=tcfg.keep_checkpoints)
    metrics_path = run_dir / ("metrics.jsonl" if jax.process_index() == 0
                              else f"metrics.process{jax.process_index()}.jsonl")
    if not (resume and latest is not None):
        truncate_after_step(metrics_path, 0)  # a fresh start: drop records of an earlier run that never saved

    eval_step = lambda params, batch: eval_jit(params, shard_lib.shard_batch(batch, mesh, rules))
    primary = jax.process_index() == 0
    writer = JsonlWriter(metrics_path)
    if tcfg.tensorboard and primary:
        writer = TeeWriter(writer, EventWriter(run_dir / "tensorboard"))
    start = int(state.step)
    summary: dict[str, Any] = {"run_dir": str(run_dir.absolute()), "start_step": start, "interrupted": False,
                               "skipped_steps": 0, "loss_spikes": 0, "max_grad_norm": None}
    health = HealthMonitor(tcfg.warmup_steps, tcfg.plateau_window)
    max_norm = -math.inf
    best_eval = math.inf
    last_saved = start if (resume and latest is not None) else -1
    stopper = _StopRequest()
    bar = _progress(tcfg.steps, start, tcfg.progress and primary)
    summary["mesh"] = mesh_lib.describe(mesh)
    if shard_lib.mesh_size(mesh) > 1:
        bar.set_description(f"mesh {summary['mesh']}", refresh=False)
        log.info("mesh: %s", summary["mesh"])
    t_last, tokens_since = time.perf_counter(), 0
    last_load = None
    t0 = time.perf_counter()

    def save(step_no: int):
        nonlocal last_saved
        if step_no == last_saved:
            return
        ckpt.save(manager, step_no, state, train_iter.get_state(),
                  {"step": step_no, "time": time.time(), "family": cfg.model.family,
                   "model": to_dict(cfg.model), "loss_window": spikes.state(),
                   "tokens": tokens_start + (step_no - start) * task.tokens_per_batch,
                   "batch_size": tcfg.batch_size, "seq_len": cfg.data.seq_len})
        last_saved = step_no

    try:
        with stopper.installed():
            for step in range(start, tcfg.steps):
                batch = next(train_iter)
                if faults:
                    batch = faults.before_step(step + 1, batch)
                if batch_hook is not None:
                    batch = batch_hook(step, batch)
                state, metrics = step_fn(state, shard_lib.shard_batch(batch, mesh, rules))
                done = step + 1
                tokens_since += task.tokens_per_batch
                skipped = int(metrics["skipped"])
                loss_now = float(metrics["loss"])
                norm_now = float(metrics["grad_norm"])
                if not (norm_now <= max_norm):  # NaN and inf count as the largest
                    max_norm = norm_now
                if skipped:
                    summary["skipped_steps"] += 1
                    what = describe_nonfinite(loss_now, int(metrics["worst_leaf"]), state.params, batch, norm_now,
                                              float(metrics["worst_leaf_norm"]))
                    if tcfg.nonfinite_policy == "stop":
                        latest_good = manager.latest_step()
                        raise TrainingError(
                            f"stopped at step {done}: {what}; the update was not applied and the last good "
                            f"checkpoint is {'none' if latest_good is None else latest_good} in "
                            f"{ckpt_io.checkpoint_dir(run_dir)} (train.nonfinite_policy=stop).")
                    log.warning("step %d: %s; update skipped (%d in a row)", done, what, int(state.skipped))
                    if int(state.skipped) >= tcfg.max_consecutive_skips:
                        raise TrainingError(f"{int(state.skipped)} consecutive steps had non-finite loss or gradients "
                                            f"(last at step {done}: {what}); stopping. Check the data and learning "
                                            "rate.")
                spike_mean = None if skipped else spikes.update(loss_now)
                for message in health.update(done, None if skipped else loss_now):
                    log.warning("%s", message)
                if spike_mean is not None:
                    summary["loss_spikes"] += 1
                    log.warning("step %d: loss spike: %.4g is more than %g x the running mean %.4g", done, loss_now,
                                tcfg.spike_factor, spike_mean)
                if spike_mean is not None or done % tcfg.log_every == 0 or done == tcfg.steps:
                    m = jax.device_get(metrics)
                    now = time.perf_counter()
                    record = {"step": done, "tokens_per_sec": tokens_since / max(now - t_last, 1e-9)}
                    worst = int(m.pop("worst_leaf", -1))
                    worst_norm = float(m.pop("worst_leaf_norm", 0.0))
                    if spike_mean is not None:
                        record["loss_spike"] = True
                    for k, v in m.items():
                        if k == "load":
                            last_load = np.asarray(v)
                            record["load_entropy"] = load_entropy(last_load)
                            for message in health.update(done, load=last_load):
                                log.warning("%s", message)
                        else:
                            record[k] = v
                    if worst >= 0:
                        record["worst_grad_leaf"] = _leaf_name(state.params, worst)
                        record["worst_grad_norm"] = worst_norm
                    writer.write(record)
                    bar.set_postfix(loss=f"{float(m['loss']):.4f}", tok_s=f"{record['tokens_per_sec']:.0f}",
                                    max_load=f"{float(m.get('max_load', 0.0)):.2f}", gnorm=f"{norm_now:.3g}",
                                    max_gnorm=f"{max_norm:.3g}", skipped=summary["skipped_steps"], refresh=False)
                    t_last, tokens_since = now, 0
                bar.update(1)
                if faults:
                    faults.after_step(done)
                if tcfg.eval_every and done % tcfg.eval_every == 0 and done != tcfg.steps:
                    ev = evaluate(eval_step, state.params, task.eval_pipeline, tcfg.eval_batches)
                    if ev is not None:
                        best_eval = min(best_eval, ev)
                        writer.write({"step": done, "eval_loss": ev})
                if tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0:
                    save(done)
                if stopper.signal is not None:
                    save(done)
                    summary["interrupted"] = True
                    summary["message"] = (f"stopped by signal {signal.Signals(stopper.signal).name} after step {done}; "
                                          f"checkpoint saved. Resume with: jaxmoe train --config "
                                          f"{run_dir / 'config.yaml'} --resume")
                    break
            else:
                final = int(state.step)
                ev = evaluate(eval_step, state.params, task.eval_pipeline, tcfg.eval_batches)
                if ev is not None:
                    best_eval = min(best_eval, ev)
                    writer.write({"step": final, "eval_loss": ev})
                save(final)
    finally:
        bar.close()
        writer.close()
        manager.close()

    final_step = int(state.step)
    records = read_jsonl(run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    summary.update({
        "steps": final_step,
        "tokens": tokens_start + (final_step - start) * task.tokens_per_batch,
        "time_sec": time.perf_counter() - t0,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "best_eval_loss": None if math.isinf(best_eval) else best_eval,
        "max_grad_norm": None if max_norm == -math.inf else (max_norm if math.isfinite(max_norm) else str(max_norm)),
        "checkpoint": str(ckpt_io.checkpoint_dir(run_dir) / str(last_saved)) if last_saved >= 0 else None,
    })
    try:
        if records:
            plot_training(records, run_dir / "loss.png", title=f"{cfg.model.family} training")
        if last_load is not None and last_load.size:
            from jaxmoe.models.lm import moe_layer_indices

            ids = moe_layer_indices(cfg.model) if cfg.model.family == "lm" else None
            plot_expert_load(last_load, run_dir / "expert_load.png", ids)
            summary["expert_load"] = last_load.tolist()
    except Exception as e:  # plotting must never fail a run
        log.warning("could not write plots: %s", e)
    ckpt_io.write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
