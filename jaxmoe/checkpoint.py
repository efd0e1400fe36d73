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
it), so a run killed while saving, or a save that fails part way (disk full), leaves the
previous complete checkpoint as the latest one. A checkpoint whose params hold NaN/inf is
never written.

Integrity: every saved array gets a 64-bit checksum of its bytes (computed on the devices
by one jitted reduction, so sharded and multi-host states need no gathering), stored in
``meta["checksums"]`` with a digest of the data-iterator state; a restore recomputes them.
A checkpoint that cannot be read back (a truncated or missing file, unparsable metadata)
or whose bytes differ from their checksums raises :class:`DamagedCheckpointError` naming
the step and the file. :func:`restore_newest_intact` then falls back to the newest intact
step, saying which and why; damaged checkpoints are never deleted.

:func:`load_params` restores only the params of any checkpoint (orbax partial restore,
shaped by ``jax.eval_shape`` of the family's ``init``): the optimizer state of a training
checkpoint is neither built nor read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxmoe.config import Config, ConfigError, dump_config, load_config, to_dict
from jaxmoe.errors import CheckpointError, DamagedCheckpointError, JaxmoeError

log = logging.getLogger("jaxmoe")

__all__ = [
    "CheckpointError", "checkpoint_dir", "resolve_run_dir", "remove_partial", "write_text_atomic", "write_config",
    "load_run_config", "make_manager", "save", "save_params", "restore", "holds_optimizer_state", "read_meta",
    "config_differences", "checkpoint_mismatch", "mismatch_message", "abstract_params", "load_params",
    "leaf_names", "first_nonfinite_param", "DamagedCheckpointError", "checksums", "restore_newest_intact",
    "is_run_dir", "set_aside_damaged", "complete_steps", "fallback_message",
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


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a jaxmoe run directory: it holds a ``checkpoints/`` directory or a
    ``config.yaml`` that jaxmoe reads as a config (what ``train``/``import`` may write into)."""
    p = Path(path)
    if (p / "checkpoints").is_dir():
        return True
    if not (p / "config.yaml").is_file():
        return False
    try:
        load_config(p / "config.yaml")
    except (JaxmoeError, OSError):
        return False
    return True


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


# ------------------------------------------------------------------- integrity

CHECKSUM_ALGORITHM = "fingerprint64-v1"  # two position-weighted uint32 sums of every leaf's bytes


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (uint32 in, uint32 out; wraps)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_words(x) -> jax.Array:
    """The bytes of ``x`` as uint32 words (1- and 2-byte elements widened, 8-byte ones split)."""
    x = jnp.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size in (4, 8):
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
    raise TypeError(f"cannot checksum an array of dtype {x.dtype}")


def _linear_index(shape) -> jax.Array:
    """uint32 row-major position of every element (mod 2**32), built elementwise (no reshape,
    so a sharded array keeps its layout)."""
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for d in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
        stride *= shape[d]
    return idx


def _leaf_fingerprint(x) -> jax.Array:
    """uint32 [2]: ``sum(w_i * (2i + 1))`` and ``sum(fmix(w_i ^ fmix(i + c)))`` over the words
    ``w`` of ``x`` (mod 2**32; integer sums, so the result does not depend on the reduction
    order, the mesh or the device). Any change of one word changes the first sum; the second
    makes a collision of several changes a 2**-64 event."""
    w = _leaf_words(x)
    i = _linear_index(w.shape)
    h1 = jnp.sum(w * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    h2 = jnp.sum(_fmix32(w ^ _fmix32(i + jnp.uint32(0x9E3779B9))), dtype=jnp.uint32)
    return jnp.stack([h1, h2])


@jax.jit
def _fingerprints(leaves):
    return jnp.stack([_leaf_fingerprint(x) for x in leaves])


def checksums(tree) -> dict[str, str]:
    """``{dotted leaf name: 16 hex digits}``: a checksum of the bytes of every array of
    ``tree`` (computed where the arrays live: one jitted reduction, one small transfer)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return {}
    fps = np.asarray(jax.device_get(_fingerprints(leaves)))
    return {n: f"{int(a):08x}{int(b):08x}" for n, (a, b) in zip(leaf_names(tree), fps)}


def _json_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _step_dir(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(str(manager.directory)) / str(step)


_JSON_FILES = ("_CHECKPOINT_METADATA", "meta/metadata", "data/metadata", "state/_METADATA", "state/_sharding")


def _first_bad_json(step_dir: Path) -> tuple[Path, str] | None:
    """The first metadata file of a step that is missing-but-expected or not valid JSON."""
    candidates = [step_dir / f for f in _JSON_FILES]
    candidates += sorted((step_dir / "state" / "array_metadatas").glob("*"))
    for f in candidates:
        if not f.exists():
            if f.name in ("_METADATA", "metadata") and f.parent.is_dir():
                return f, "is missing"
            continue
        try:
            json.loads(f.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f, "is not valid JSON (truncated or overwritten)"
    return None


def ocdbt_entries(state_dir: str | Path) -> list[tuple[str, Path, int, int]]:
    """``(key, file, offset, length)`` of every value of the OCDBT database of an orbax item
    directory (``RUN/checkpoints/<step>/state``): which file holds which bytes of which array
    chunk (``"params.lm_head.kernel/0.0"``; small values live inline in a b-tree node file).
    Best effort: [] when the database cannot be read."""
    import tensorstore as ts

    state_dir = Path(state_dir)
    out: list[tuple[str, Path, int, int]] = []
    try:
        kv = ts.KvStore.open({"driver": "file", "path": str(state_dir) + "/"}).result()
        manifest = ts.ocdbt.dump(kv).result()
        roots = [v["root"]["location"] for v in manifest.get("versions", [])[-1:] if v.get("root", {}).get("location")]
    except Exception:
        return out

    def split(location: str) -> tuple[Path, int, int]:  # "<prefix>:<file>:<offset>:<length>"
        head, offset, length = location.rsplit(":", 2)
        return state_dir / head, int(offset), int(length)

    def walk(location: str, depth: int = 0):
        node_file, node_offset, node_length = split(location.split("::", 1)[1])
        try:
            node = ts.ocdbt.dump(kv, location).result()
        except Exception:
            out.append(("", node_file, node_offset, node_length))
            return
        for entry in node.get("entries", []):
            key = entry.get("key", "")
            key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            child = next((v for v in entry.values() if isinstance(v, str) and v.startswith("btreenode::")), None)
            if child and depth < 16:
                walk(child, depth + 1)
                continue
            ref = entry.get("indirect_value")
            if isinstance(ref, str) and ref.startswith("value:"):  # value:<db prefix>:<file>:<offset>:<length>
                _, prefix, rest = ref.split(":", 2)
                f, offset, length = split(rest)
                out.append((key, state_dir / prefix / f.relative_to(state_dir), offset, length))
            else:  # stored inline, in the node's own file
                out.append((key, node_file, node_offset, node_length))

    for root in roots:
        walk(root)
    return out


def _ocdbt_files(state_dir: Path, names: tuple[str, ...]) -> list[Path]:
    """The files holding the chunks of the arrays ``names`` (``"params.lm_head.kernel"``)."""
    files = [f for key, f, _, _ in ocdbt_entries(state_dir)
             if "/" in key and key.split("/", 1)[0] in names and not key.split("/", 1)[1].startswith(".")]
    return list(dict.fromkeys(files))


def _exception_chain(e: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _short(e: BaseException, limit: int = 160) -> str:
    """A one-line, bounded description of an exception (the innermost with a message)."""
    for x in reversed(_exception_chain(e)):
        if isinstance(x, OSError) and x.strerror:
            return f"{x.strerror}{f' ({x.filename})' if x.filename else ''}"
        text = " ".join(str(x).split())
        if text:
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return type(e).__name__


def _diagnose(step_dir: Path, e: BaseException) -> tuple[Path, str]:
    """``(file, reason)`` for an exception raised while reading checkpoint ``step_dir``."""
    chain = _exception_chain(e)
    text = " ".join(str(x) for x in chain)
    if any(isinstance(x, json.JSONDecodeError) for x in chain) or "JSON" in text:
        bad = _first_bad_json(step_dir)
        if bad is not None:
            return bad
    if "OUT_OF_RANGE" in text or "Requested byte range" in text or "Truncated" in text:
        reason = "is shorter than the checkpoint's index says (truncated)"
    elif "NOT_FOUND" in text or "No such file" in text:
        reason = "is missing"
    elif "DATA_LOSS" in text or "ZSTD" in text or "FAILED_PRECONDITION" in text or "decod" in text:
        reason = "holds bytes that do not decode (corrupted)"
    else:
        reason = f"cannot be read ({_short(e)})"
    files = [Path(f) for f in re.findall(r'local file "([^"]+)"', text) if not f.endswith("/")]
    if files:
        return files[-1], ("is missing" if not files[-1].exists() else reason)
    keys = re.findall(r'Error reading "([^"/]+)/[^"]*" in OCDBT database at local file "([^"]+)"', text)
    if keys:
        name, db = keys[-1]
        located = _ocdbt_files(Path(db.rstrip("/")), (name,))
        for f in located:
            if not f.exists() or f.stat().st_size == 0:
                return f, "is missing" if not f.exists() else "is empty (truncated)"
        if located:
            return located[0], f"{reason}; it holds {name}"
        return Path(db.rstrip("/")), f"{reason}; reading {name}"
    bad = _first_bad_json(step_dir)
    if bad is not None:
        return bad
    return step_dir, reason


class _AbandonedReads(logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports of orbax's other reads of a
    damaged checkpoint, which fail after the restore has already raised (and been reported
    as one DamagedCheckpointError); every other asyncio record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("exception was never retrieved" in msg
                    and any(m in msg for m in ("Encountered error while reading array", "_read_array_index",
                                               "in OCDBT database")))


_ABANDONED_READS = _AbandonedReads()


def _damaged(manager: ocp.CheckpointManager, step: int, e: BaseException) -> DamagedCheckpointError:
    logging.getLogger("asyncio").addFilter(_ABANDONED_READS)  # idempotent: one filter object
    file, reason = _diagnose(_step_dir(manager, step), e)
    return DamagedCheckpointError(step, Path(str(manager.directory)), file, reason)


def _guarded(manager: ocp.CheckpointManager, step: int, fn: Callable[[], Any]):
    """``fn()``; an exception while reading checkpoint ``step`` becomes a DamagedCheckpointError
    naming the file (errors the user can act on otherwise, e.g. a config mismatch, pass through)."""
    try:
        return fn()
    except (JaxmoeError, MemoryError):
        raise
    except Exception as e:
        raise _damaged(manager, step, e) from e


def _verify(manager: ocp.CheckpointManager, step: int, tree, meta: dict, data_state: Any = None) -> None:
    """Compare the restored ``tree`` (and data-iterator state) with the checksums saved in
    ``meta``; a mismatch is a DamagedCheckpointError naming the array and its file.
    Checkpoints written before checksums existed are not checked."""
    sums = meta.get("checksums") if isinstance(meta, dict) else None
    if isinstance(sums, dict) and sums and meta.get("checksum_algorithm") == CHECKSUM_ALGORITHM:
        got = checksums(tree)
        bad = [n for n, v in got.items() if n in sums and sums[n] != v]
        if bad:
            state_dir = _step_dir(manager, step) / "state"
            files = _ocdbt_files(state_dir, tuple(bad[:1]))
            more = f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else ""
            raise DamagedCheckpointError(step, Path(str(manager.directory)), files[0] if files else state_dir,
                                         f"holds bytes of {bad[0]}{more} that do not match the checksum saved with "
                                         "the checkpoint (corrupted)")
    digest = meta.get("data_checksum") if isinstance(meta, dict) else None
    if data_state is not None and digest is not None and _json_digest(data_state) != digest:
        raise DamagedCheckpointError(step, Path(str(manager.directory)), _step_dir(manager, step) / "data" / "metadata",
                                     "does not match the checksum saved with the checkpoint (corrupted)")


def fallback_message(damaged: list[DamagedCheckpointError], used: int, kept: list | None = None) -> str:
    """One line: which checkpoints are damaged (file and reason), which one is used instead,
    and where the damaged ones are (``kept``: their new paths, when they were set aside)."""
    one = len(damaged) == 1
    what = "; ".join(("" if one else f"checkpoint {d.step}: ") + f"{d.file} {d.reason}" for d in damaged)
    where = (f"kept as {', '.join(map(str, kept))}" if kept else
             f"the damaged one{'' if one else 's'} stay{'s' if one else ''} on disk")
    return (f"checkpoint{'' if one else 's'} {', '.join(str(d.step) for d in damaged)} in {damaged[0].directory} "
            f"{'is' if one else 'are'} damaged ({what}); using checkpoint {used}, the newest intact one ({where})")


def restore_newest_intact(manager: ocp.CheckpointManager, restore_step: Callable[[int], Any],
                          step: int | None = None, *,
                          announce: bool = True) -> tuple[Any, int, list[DamagedCheckpointError]]:
    """``(restore_step(s), s, damaged)`` for the newest step ``s`` whose restore raises no
    :class:`DamagedCheckpointError` (``damaged``: those passed over, newest first; a warning
    names them unless ``announce=False``: the caller says it). With an explicit ``step`` there is no fall-back: a damaged one is a
    one-line error. None intact: a CheckpointError naming every damaged step and file."""
    if step is not None:
        step = _check_step(manager, step)
        try:
            return restore_step(step), step, []
        except DamagedCheckpointError as d:
            others = [s for s in sorted(manager.all_steps()) if s != step]
            hint = (f"; choose another --step ({', '.join(map(str, others))}) or omit --step to use the newest "
                    "intact checkpoint" if others else "")
            raise DamagedCheckpointError(d.step, d.directory, d.file, d.reason, hint) from None
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {manager.directory}.")
    damaged: list[DamagedCheckpointError] = []
    for s in steps:
        try:
            out = restore_step(s)
        except DamagedCheckpointError as d:
            damaged.append(d)
            continue
        if damaged and announce:
            log.warning("%s", fallback_message(damaged, s))
        return out, s, damaged
    raise CheckpointError(f"no intact checkpoint in {manager.directory}: "
                          + "; ".join(f"checkpoint {d.step}: {d.file} {d.reason}" for d in damaged)
                          + " (the files are left as they are).")


def set_aside_damaged(run_dir: str | Path, steps) -> list[Path]:
    """Rename the damaged checkpoints ``steps`` of a run to ``checkpoints/<step>.damaged``
    (orbax no longer lists them; nothing is deleted). Returns the new paths."""
    out = []
    for s in steps:
        src = checkpoint_dir(run_dir) / str(s)
        if not src.is_dir():
            continue
        dst, n = src.with_name(f"{s}.damaged"), 1
        while dst.exists():
            n += 1
            dst = src.with_name(f"{s}.damaged{n}")
        os.replace(src, dst)
        out.append(dst)
    return out


def complete_steps(run_dir: str | Path) -> list[int]:
    """Committed checkpoint steps of a run, read from the directory listing."""
    d = checkpoint_dir(run_dir)
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


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
    meta = {**meta, "checksum_algorithm": CHECKSUM_ALGORITHM, "checksums": checksums(state),
            "data_checksum": _json_digest(data_state)}
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(data_state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()
    except (JaxmoeError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # e.g. disk full: nothing was committed, the previous checkpoint stands
        done = [s for s in complete_steps(Path(str(manager.directory)).parent) if s != step]
        raise CheckpointError(f"could not write checkpoint {step} in {manager.directory} ({_short(e)}); nothing of "
                              f"it was committed and the newest complete checkpoint is "
                              f"{done[-1] if done else 'none'}: free the space or fix the cause, then resume with "
                              "--resume.") from e


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


def _read_json_item(manager: ocp.CheckpointManager, step: int, item: str) -> Any:
    """JSON item ``item`` of checkpoint ``step`` ({} when the step has no such item, as in
    older checkpoints); an unreadable one is a DamagedCheckpointError."""
    if not (_step_dir(manager, step) / item).exists():
        return {}
    out = _guarded(manager, step, lambda: manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.JsonRestore()}))[item])
    return {} if out is None else out


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None, *,
            partial: bool = False):
    """Restore ``(state, data_state, meta)`` of ``step`` (default: latest complete one) into
    ``abstract_state`` (``ShapeDtypeStruct`` leaves, with shardings for a sharded restore).
    ``partial=True``: ``abstract_state`` is a dict naming a subset of the stored state
    (e.g. ``{"step", "params"}``) and only that subset is read. The restored arrays and
    data state are checked against the checksums saved with them; a checkpoint that cannot
    be read or does not match raises :class:`DamagedCheckpointError` (see
    :func:`restore_newest_intact` for the fall-back)."""
    step = _check_step(manager, step)
    meta = _read_json_item(manager, step, "meta")
    data = _read_json_item(manager, step, "data")
    if partial:
        state = _guarded(manager, step, lambda: _restore_subtree(manager, step, abstract_state))
    else:
        state = _guarded(manager, step, lambda: manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"])
    _verify(manager, step, state, meta, data)
    return state, data, meta


def _stored_tree(manager: ocp.CheckpointManager, step: int):
    """The stored state's tree of array metadata (shapes, dtypes), without reading arrays."""
    return ocp.StandardCheckpointHandler().metadata(_state_dir(manager, step))


def holds_optimizer_state(manager: ocp.CheckpointManager, step: int | None = None) -> bool:
    """Whether checkpoint ``step`` (default: latest) holds an optimizer state (a training
    checkpoint) rather than params only (an imported model). Unreadable array metadata is a
    DamagedCheckpointError."""
    step = _check_step(manager, step)
    stored = _guarded(manager, step, lambda: _stored_tree(manager, step))
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
    """Load ``(config, params)`` of a run (the newest intact checkpoint unless ``step``),
    training or params-only. Reads only the params (onto one local device, whatever mesh
    saved them), builds no optimizer and checks them against the checksums saved with them:
    a damaged newest checkpoint is passed over with a warning that names it and its file
    (an explicit damaged ``step`` is a one-line error)."""
    run_dir = resolve_run_dir(path)
    cfg = load_run_config(run_dir)
    manager = make_manager(run_dir, create=False)
    try:
        if manager.latest_step() is None:
            raise CheckpointError(f"no complete checkpoint in {checkpoint_dir(run_dir)}.")
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {"params": abstract_params(cfg, one)}

        def read(s: int):
            diffs = checkpoint_mismatch(manager, s, cfg, target)
            if diffs:
                raise CheckpointError(f"checkpoint {s} in {run_dir} was made with another model config than "
                                      f"{run_dir / 'config.yaml'}: {mismatch_message(diffs)}.")
            meta = _read_json_item(manager, s, "meta")
            tree = _guarded(manager, s, lambda: _restore_subtree(manager, s, target))
            _verify(manager, s, tree, meta)
            return tree["params"]

        params, _, _ = restore_newest_intact(manager, read, step)
    finally:
        manager.close()
    return cfg, jax.device_get(params)
