"""Metrics: JSONL always, plots with matplotlib, progress bar text."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_python(v: Any):
    a = np.asarray(v)
    if a.ndim == 0:
        x = a.item()
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)  # JSON has no NaN/inf literals
        return x
    return a.tolist()


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a killed run keeps its log."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps({k: to_python(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a half-written last line (a run killed mid-write) is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
            logging.getLogger("jaxmoe").warning("ignoring a half-written last line of %s", p)
    return out


def truncate_after_step(path: str | Path, step: int) -> None:
    """Drop records of steps > ``step`` (used when resuming from an earlier checkpoint)."""
    p = Path(path)
    if not p.exists():
        return
    keep = [r for r in read_jsonl(p) if r.get("step", 0) <= step]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, p)  # atomic: a run killed here keeps the old or the new file, whole


def plot_training(records: list[dict], path: str | Path, title: str = "training") -> None:
    """Loss (and eval loss) against step. Drawn on a standalone ``Figure``: pyplot's backend
    (a notebook's inline plots) is left as it is."""
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records if "loss" in r and isinstance(r["loss"], (int, float))]
    loss = [r["loss"] for r in records if "loss" in r and isinstance(r["loss"], (int, float))]
    ev = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, loss, label="train loss")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_expert_load(load: np.ndarray, path: str | Path, layer_ids=None, title: str = "expert load") -> None:
    """Heatmap of the fraction of assignments per (layer, expert); 1/E is perfect balance."""
    from matplotlib.figure import Figure

    load = np.asarray(load)
    fig = Figure(figsize=(max(4, load.shape[1] * 0.35 + 2), max(2.5, load.shape[0] * 0.35 + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(load * load.shape[1], aspect="auto", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    if layer_ids is not None:
        ax.set_yticks(range(len(layer_ids)), [str(i) for i in layer_ids])
    fig.colorbar(im, ax=ax, label="load x E (1 = even)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
