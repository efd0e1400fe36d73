"""Opt-in fault injection for reliability tests (a testing aid, off unless asked for).

Set ``JAXMOE_FAULT`` to a comma-separated list of ``kind@step`` items before starting
``jaxmoe train``; ``step`` is the 1-based training step as written in ``metrics.jsonl``::

    JAXMOE_FAULT="sigterm@3" jaxmoe train --config configs/lm_tiny.yaml ...

Kinds:

``sigterm@N`` / ``sigint@N``
    deliver a real SIGTERM / SIGINT to the process while step N runs: the trainer finishes
    step N, saves a checkpoint and exits 0 with a resume message.
``sigkill@N``
    SIGKILL right after step N has been logged (before a checkpoint of step N is written).
``sigkill_during_save@N``
    SIGKILL while the checkpoint of step N is being written: orbax has created the
    temporary directory ``checkpoints/N.orbax-checkpoint-tmp-*`` and written items into it,
    but not committed (renamed) it.
``fail_during_save@N``
    the checkpoint of step N fails part way through writing its arrays, as on a full disk:
    the first arrays reach ``checkpoints/N.orbax-checkpoint-tmp-*``, then the next array
    write raises ``OSError(ENOSPC)``. Nothing is committed; ``jaxmoe train`` stops with a
    one-line error naming the previous (intact) checkpoint, which ``--resume`` uses.
``nan@N``
    the batch of step N holds NaN in every floating-point array (for a token-only language
    model batch an all-ones ``mask`` is added to every batch while a ``nan`` fault is armed,
    and the NaN goes into the mask of step N).

Without ``JAXMOE_FAULT`` nothing here runs (``FaultInjector.from_env()`` is falsy and
the checkpoint manager gets its default options).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal

import numpy as np

from jaxmoe.config import ConfigError

ENV = "JAXMOE_FAULT"
KINDS = ("sigterm", "sigint", "sigkill", "sigkill_during_save", "fail_during_save", "nan")


from jaxmoe.errors import FaultSpecError  # noqa: E402,F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    step: int


def parse_faults(text: str | None) -> tuple[Fault, ...]:
    """``"sigterm@3,nan@5"`` -> ``(Fault("sigterm", 3), Fault("nan", 5))``."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, step = item.partition("@")
        if not sep or kind not in KINDS or not step.strip().isdigit() or int(step) < 1:
            raise FaultSpecError(f"{ENV} item {item!r} is not valid; use KIND@STEP with KIND one of "
                                 f"{', '.join(KINDS)} and STEP >= 1, e.g. {ENV}=sigterm@3.")
        out.append(Fault(kind, int(step)))
    return tuple(out)


def _steps(faults, kind: str) -> frozenset[int]:
    return frozenset(f.step for f in faults if f.kind == kind)


class FaultInjector:
    """The armed faults of this process; ``bool(injector)`` is False when none are."""

    def __init__(self, faults: tuple[Fault, ...] = ()):
        self.faults = tuple(faults)
        self._signal = {s: sig for kind, sig in (("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT))
                        for s in _steps(self.faults, kind)}
        self._kill = _steps(self.faults, "sigkill")
        self._nan = _steps(self.faults, "nan")

    @classmethod
    def from_env(cls) -> "FaultInjector":
        return cls(parse_faults(os.environ.get(ENV)))

    def __bool__(self) -> bool:
        return bool(self.faults)

    def before_step(self, step: int, batch: dict) -> dict:
        """Called with the batch of 1-based ``step`` before it is trained on."""
        if self._nan:
            batch = dict(batch)
            if "tokens" in batch and not any(_is_float(v) for v in batch.values()):
                batch["mask"] = np.ones(np.shape(batch["tokens"]), np.float32)
            if step in self._nan:
                batch = {k: np.full(np.shape(v), np.nan, np.asarray(v).dtype) if _is_float(v) else v
                         for k, v in batch.items()}
        if step in self._signal:
            os.kill(os.getpid(), self._signal[step])
        return batch

    def after_step(self, step: int) -> None:
        """Called once 1-based ``step`` is done and logged, before it is checkpointed."""
        if step in self._kill:
            os.kill(os.getpid(), signal.SIGKILL)


def _is_float(v) -> bool:
    return np.issubdtype(np.asarray(v).dtype, np.floating)


def fail_array_writes(steps, after: int = 2) -> None:
    """Make orbax's array writes into the temporary directory of a checkpoint of ``steps``
    fail like a full disk: ``after`` arrays are written, the next write raises
    ``OSError(ENOSPC)``. Patches orbax's ``async_serialize_from_host`` in this process (the
    ``fail_during_save`` fault; tests call it directly under ``monkeypatch``)."""
    from orbax.checkpoint._src.serialization import serialization

    pattern = re.compile(r"(^|/)(%s)\.orbax-checkpoint-tmp" % "|".join(str(s) for s in sorted(steps)))
    real = getattr(serialization.async_serialize_from_host, "_jaxmoe_real", serialization.async_serialize_from_host)
    written: dict[str, int] = {}

    async def failing(rslices_on_host, tensorstore_spec, *args, **kwargs):
        match = pattern.search(str(tensorstore_spec))
        if match:
            key = match.group(2)
            written[key] = written.get(key, 0) + 1
            if written[key] > after:
                raise OSError(errno.ENOSPC, "No space left on device (injected by JAXMOE_FAULT=fail_during_save)")
        return await real(rslices_on_host, tensorstore_spec, *args, **kwargs)

    failing._jaxmoe_real = real
    serialization.async_serialize_from_host = failing


def manager_options() -> dict:
    """Extra ``CheckpointManagerOptions`` for ``sigkill_during_save`` faults (else ``{}``);
    arms ``fail_during_save`` faults (a patch of orbax's array writes)."""
    faults = parse_faults(os.environ.get(ENV))
    if _steps(faults, "fail_during_save"):
        fail_array_writes(_steps(faults, "fail_during_save"))
    steps = _steps(faults, "sigkill_during_save")
    if not steps:
        return {}
    from orbax.checkpoint.path import atomicity

    pattern = re.compile(r"(^|/)(%s)\.orbax-checkpoint-tmp" % "|".join(str(s) for s in sorted(steps)))

    class KillBeforeCommit(atomicity.AtomicRenameTemporaryPath):
        """Orbax's atomic-rename temporary path that SIGKILLs the process instead of
        committing a checkpoint of an armed step (the items are written, the rename is not)."""

        async def finalize(self, *args, **kwargs):
            if pattern.search(str(self.get())):
                os.kill(os.getpid(), signal.SIGKILL)
            return await super().finalize(*args, **kwargs)

    return {"temporary_path_class": KillBeforeCommit}
