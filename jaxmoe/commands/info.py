"""``jaxmoe info --hf HF_DIR``: family, sizes and parameter counts of a Hugging Face directory.

NOTE: this file currently implements only the ``--hf`` part (issue 8, export/import). The
device/mesh/parameter/memory report for a config (``jaxmoe info --config FILE``) belongs to
another work item, which extends ``add_arguments``/``run`` here; keep ``--hf`` handled by
:func:`run_hf`.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--hf", default=None, help="Hugging Face model directory: show family, sizes, parameter count")


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def run_hf(hf_dir: str) -> int:
    from jaxmoe.export import hf_info

    info = hf_info(hf_dir)
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key in ("stored_params", "params", "active_params", "bytes") and isinstance(value, int):
            value = f"{value:,} ({_human(value)}{'B' if key == 'bytes' else ''})"
        print(f"{key.ljust(width)}  {value}")
    return 0


def run(args) -> int:
    from jaxmoe.cli import UserError

    if getattr(args, "hf", None):
        return run_hf(args.hf)
    raise UserError("nothing to show: pass --hf HF_DIR.")
