"""Errors a user can act on. Every one carries a one-sentence message; the command line
prints it as one line (``error: ...``) and exits non-zero, never with a traceback.

All derive from :class:`JaxmoeError`, which is all the CLI catches. The value-like ones
also derive from ``ValueError`` (the runtime-like ones from ``RuntimeError``), so code that
catches the builtin bases keeps working.
"""

from __future__ import annotations


class JaxmoeError(Exception):
    """Base class: a problem the user can fix, described in one sentence."""


class UserError(JaxmoeError):
    """A bad command-line argument or input file."""


class ConfigError(JaxmoeError, ValueError):
    """A configuration problem (unknown key, bad value, inconsistent fields)."""


class MeshError(ConfigError):
    """A device mesh that does not fit the devices or the model."""


class FaultSpecError(ConfigError):
    """A malformed ``JAXMOE_FAULT`` fault-injection spec (testing aid)."""


class ExportError(ConfigError):
    """A model that an export/import target family cannot express."""


class DataError(JaxmoeError, ValueError):
    """Unusable training data (missing, empty, not UTF-8, malformed)."""


class SeriesError(DataError):
    """A time series nothing can be learned from, or a file that holds none."""


class CheckpointError(JaxmoeError, RuntimeError):
    """A missing, partial, damaged or mismatching checkpoint."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read back or whose bytes do not match the checksums
    saved with it. Names the step and the file; ``restore_newest_intact`` falls back past it."""

    def __init__(self, step: int, directory, file, reason: str, hint: str = ""):
        self.step, self.directory, self.file, self.reason = int(step), directory, file, reason
        super().__init__(f"checkpoint {step} in {directory} is damaged: {file} {reason}{hint}")


class TrainingError(JaxmoeError, RuntimeError):
    """Training stopped for a reason the user must act on."""
