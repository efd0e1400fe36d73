"""Checks of user-supplied paths and values, run before any work starts.

Every check raises a :class:`~jaxmoe.errors.JaxmoeError` whose message is one sentence that
says what is wrong and what to do (the command line prints it as one line), or returns the
checked value. Commands call them at the top of ``run()``; the trainer and the exporters
call the output-directory checks, so the library refuses the same things as the CLI.

Output directories are never taken over silently: ``train`` writes only into a new or
empty directory or a jaxmoe run directory, ``import`` only into a new or empty one, and
``export`` only into a new or empty one or an earlier export (whose files it lists in
:data:`EXPORT_MANIFEST` and is the only thing it deletes); ``force=True`` (``--force``)
writes into any other directory, deleting nothing that is not listed.

This module imports nothing heavy (no jax): the checks run before any model is built.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from jaxmoe.errors import ConfigError, DataError, UserError

EXPORT_MANIFEST = ".jaxmoe-export.json"  # what `jaxmoe export` wrote into its output directory

# families whose models forecast a time series (``jaxmoe forecast`` / ``jaxmoe evaluate``)
FORECASTING_FAMILIES = ("time_moe", "moirai_moe", "s_mamba", "spacetime")


# ------------------------------------------------------------------------ input files


def _first_non_text_byte(data: bytes) -> int | None:
    """Offset of the first byte that makes ``data`` not UTF-8 text (a NUL counts), or None."""
    nul = data.find(b"\x00")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start if nul < 0 else min(e.start, nul)
    return None if nul < 0 else nul


def input_file(path, what: str, *, text: bool = True) -> Path:
    """``path`` as an existing, readable file (UTF-8 text without NUL bytes if ``text``)."""
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{what} is empty; give a file path.")
    if not p.exists():
        raise UserError(f"{what} '{path}' does not exist.")
    if p.is_dir():
        raise UserError(f"{what} '{path}' is a directory; give a file.")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} '{path}' is not readable (check its permissions).")
    if text:
        bad = _first_non_text_byte(p.read_bytes())
        if bad is not None:
            raise UserError(f"{what} '{path}' is not a UTF-8 text file (byte {bad} is not text); give a text file.")
    return p


def input_dir(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} '{path}' does not exist.")
    if not p.is_dir():
        raise UserError(f"{what} '{path}' is a file; give a directory.")
    return p


def tokenizer_spec(spec: str, what: str = "data.tokenizer") -> None:
    """``"byte"`` or an existing Hugging Face tokenizer JSON file (checked without loading it)."""
    if spec == "byte":
        return
    if not str(spec).strip():
        raise DataError(f"{what} is empty; give 'byte' or the path to a Hugging Face tokenizer .json file.")
    p = Path(spec)
    if not p.exists():
        raise DataError(f"{what} '{spec}' does not exist; give 'byte' or the path to a Hugging Face tokenizer "
                        ".json file.")
    if p.is_dir():
        raise DataError(f"{what} '{spec}' is a directory; give 'byte' or the path of a tokenizer .json file in it.")
    data = p.read_bytes()
    if _first_non_text_byte(data) is not None:
        raise DataError(f"{what} '{spec}' is not a Hugging Face tokenizer JSON file (it is not text); give 'byte' "
                        "or a tokenizer.json.")
    try:
        obj = json.loads(data)
    except ValueError:
        raise DataError(f"{what} '{spec}' is not valid JSON, so it is not a Hugging Face tokenizer file; give "
                        "'byte' or a tokenizer.json.") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise DataError(f"{what} '{spec}' is JSON but not a Hugging Face tokenizer (no 'model' section); give "
                        "'byte' or a tokenizer.json.")


# ------------------------------------------------------------------------ output paths


def _check_ancestors(p: Path, what: str, path) -> None:
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} '{path}' cannot be created: '{parent}' is a file, not a directory.")
            return


def output_file(path, what: str) -> Path:
    """A file ``path`` that may be written: not a directory, under no file."""
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{what} is empty; give a file path.")
    if p.is_dir():
        raise UserError(f"{what} '{path}' is a directory; give a file path (e.g. {Path(path) / 'out'}).")
    _check_ancestors(p, what, path)
    return p


def output_dir(path, what: str) -> Path:
    """A directory ``path`` that may be created or written into: not a file, under no file."""
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{what} is empty; give a directory path.")
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} '{path}' is a file, not a directory; choose a directory path.")
    _check_ancestors(p, what, path)
    return p


def _listing(p: Path, limit: int = 3) -> str:
    names = sorted(x.name for x in p.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _non_empty(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def run_output_dir(path, *, force: bool = False, what: str = "train.output_dir") -> Path:
    """Where ``train`` may write: a new or empty directory or a jaxmoe run directory
    (``--force``: any directory)."""
    from jaxmoe.checkpoint import is_run_dir

    p = output_dir(path, what)
    if _non_empty(p) and not force and not is_run_dir(p):
        raise UserError(f"{what} '{path}' is not empty and is not a jaxmoe run directory (it holds {_listing(p)}); "
                        "choose a new or empty directory, or pass --force to write into it.")
    return p


def import_output_dir(path, *, force: bool = False) -> Path:
    """Where ``import`` may write: a new or empty directory (``--force``: any directory
    holding no checkpoints)."""
    p = output_dir(path, "--out")
    if _non_empty(p):
        if (p / "checkpoints").is_dir() and any((p / "checkpoints").iterdir()):
            raise UserError(f"--out '{path}' already holds checkpoints; choose a new or empty directory.")
        if not force:
            raise UserError(f"--out '{path}' is not empty (it holds {_listing(p)}); choose a new or empty directory, "
                            "or pass --force to write into it.")
    return p


def read_export_manifest(path) -> list[str] | None:
    """Files (relative paths) that an earlier ``jaxmoe export`` wrote into ``path``, or None
    when it holds no readable export manifest."""
    f = Path(path) / EXPORT_MANIFEST
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(x, str) for x in files):
        return None
    return files


def export_output_dir(path, *, force: bool = False) -> Path:
    """Where ``export`` may write: a new or empty directory or an earlier export
    (``--force``: any directory)."""
    p = output_dir(path, "--out")
    if _non_empty(p) and not force and read_export_manifest(p) is None:
        raise UserError(f"--out '{path}' is not empty and was not written by `jaxmoe export` (it holds {_listing(p)}); "
                        "choose a new or empty directory, or pass --force to write into it.")
    return p


# ------------------------------------------------------------------------ values


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def sampling(temperature: float, top_k: int, top_p: float) -> None:
    """``temperature >= 0`` (0 = greedy), ``top_k >= 0`` (0 = off), ``0 < top_p <= 1`` (1 = off)."""
    if not _finite(temperature) or temperature < 0:
        raise UserError(f"--temperature must be a number >= 0 (0 = greedy), got {temperature}.")
    if top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = no limit), got {top_k}.")
    if not _finite(top_p) or not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1] (1 = no nucleus filtering), got {top_p}.")


def at_least(value, minimum, flag: str, meaning: str = "") -> None:
    if value is not None and (not _finite(value) or value < minimum):
        raise UserError(f"{flag} must be at least {minimum}{meaning}, got {value}.")


def positive(value, flag: str) -> None:
    if value is not None and (not _finite(value) or value <= 0):
        raise UserError(f"{flag} must be a positive number, got {value}.")


def data_path(path) -> None:
    """``data.path``: None (the family's default data) or a non-empty path (what it holds is
    checked by the data pipeline, before the model is built)."""
    if path is not None and not str(path).strip():
        raise DataError("data.path is empty; give a data file or directory, or data.path=null for the default data.")


def train_steps(steps: int) -> None:
    if steps < 1:
        raise ConfigError(f"train.steps={steps} trains nothing; set train.steps to the number of steps to train "
                          "(1 or more).")


# ------------------------------------------------------------------------ checkpoints


def run_config(path, flag: str = "--checkpoint"):
    """``(run directory, config)`` of ``--checkpoint PATH`` without reading any array (so the
    family can be checked before anything heavy happens)."""
    from jaxmoe.checkpoint import load_run_config, resolve_run_dir

    if not str(path).strip():
        raise UserError(f"{flag} is empty; give a run directory written by `jaxmoe train` or `jaxmoe import`.")
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} '{path}' is a file; give a run directory written by `jaxmoe train` or "
                        "`jaxmoe import`.")
    run_dir = resolve_run_dir(path)
    return run_dir, load_run_config(run_dir)


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def language_model(family: str, command: str) -> None:
    if family != "lm":
        more = (f" (`jaxmoe forecast` and `jaxmoe evaluate` use {family} models)" if family in FORECASTING_FAMILIES
                else "")
        raise UserError(f"`{command}` needs a language model (model.family lm); this checkpoint is {_a(family)} "
                        f"model{more}.")


def forecasting_model(family: str, command: str) -> None:
    if family not in FORECASTING_FAMILIES:
        other = (" (`jaxmoe generate` runs language models)" if family == "lm" else
                 " (a sequence classifier: nothing to forecast)" if family == "lssl_classifier" else "")
        raise UserError(f"`{command}` needs a forecasting model (model.family {', '.join(FORECASTING_FAMILIES[:-1])} "
                        f"or {FORECASTING_FAMILIES[-1]}); this checkpoint is {_a(family)} model{other}.")
