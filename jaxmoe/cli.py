"""``jaxmoe`` command line: ``jaxmoe <command> [options]``.

Each command lives in ``jaxmoe/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches. Errors the user can fix are printed as
one line (``error: ...``) with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from jaxmoe.errors import UserError  # noqa: F401  (re-exported: jaxmoe.cli.UserError)

COMMANDS = {
    "train": ("jaxmoe.commands.train", "train a model from a YAML config"),
    "generate": ("jaxmoe.commands.generate", "generate text from a trained language model"),
    "info": ("jaxmoe.commands.info", "show devices, mesh, parameter counts and memory for a config"),
    "forecast": ("jaxmoe.commands.forecast", "forecast a CSV/Parquet column with a time-series model"),
    "evaluate": ("jaxmoe.commands.evaluate", "evaluate a forecaster on real series beside baselines"),
    "export": ("jaxmoe.commands.export", "export a checkpoint to a Hugging Face directory"),
    "import": ("jaxmoe.commands.import_hf", "import a Hugging Face directory as a jaxmoe checkpoint"),
    "experts": ("jaxmoe.commands.experts", "profile expert activations (MoTE)"),
    "remix": ("jaxmoe.commands.remix", "C3PO test-time re-mixing of routing weights"),
    "eval-lm": ("jaxmoe.commands.eval_lm", "evaluate a language model: perplexity, multiple choice, exact match"),
    "data": ("jaxmoe.commands.data", "build datasets: `data build-ts-corpus OUT` (real time-series corpus)"),
}


def _user_errors() -> tuple:
    from jaxmoe.errors import JaxmoeError

    return (JaxmoeError, FileNotFoundError)


class _NotRetrieved(logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" reports (with their
    tracebacks) that orbax's abandoned reads of a damaged checkpoint leave at exit: the
    command has already said what is wrong in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


def _quiet_logs(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    # orbax reports a failed write (e.g. a full disk) as ERROR with a traceback from its
    # writer threads; the CLI says the same in one line, so library ERRORs show only with -v
    for name in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:  # orbax's other reads of a damaged checkpoint fail after the first one was reported
        logging.getLogger("asyncio").addFilter(_NotRetrieved())
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.FATAL)
    except ImportError:
        pass


def _abandoned_orbax_read(unraisable) -> bool:
    """An orbax read coroutine that failed after the restore had already given up (the
    first failure of a damaged checkpoint is raised, and reported, by the restore itself)."""
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_closed_loop_callbacks() -> None:
    """After orbax gave up reading a damaged checkpoint, its other reads still fail: their
    TensorStore futures call back into an event loop that is already closed, and their
    coroutines are finalised with the same error. Python would print each of these harmless
    leftovers as a traceback (hundreds of lines) after the one-line error; they are dropped
    (``-v`` shows them). Everything else still prints."""
    default = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        if _abandoned_orbax_read(unraisable):
            return
        default(unraisable)

    sys.unraisablehook = hook


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (``error: ...``, exit 2), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="jaxmoe", description="Sparse Mixture-of-Experts sequence models in JAX.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)  # a command that fails to import is a bug: let it show
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    _quiet_logs(args.verbose)
    if not args.verbose:
        _quiet_closed_loop_callbacks()
    errors = _user_errors()
    try:
        return int(args._run(args) or 0)
    except errors as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
