"""Does training learn? Every GPU config trained N steps through the real trainer, with a verdict.

    PYTHONPATH=. python benchmarks/learning.py [--steps 150] [--only NAME[,NAME]] [--min-drop 0.05]
        [--jsonl out.jsonl] [--set k=v ...] [--grad-check] [--skip-train] [--cpu-smoke]

For each config meant for GPUs (bench_moe_1b, a Mamba/attention hybrid of it, time_moe_50m,
time_moe_200m, moirai_moe_small, and deepseek_moe_16b / mixtral_8x7b cut to a few layers of
their real width so they fit one H200) it runs ``jaxmoe.train.train(cfg)`` for ``--steps``
steps on the config's own data pipeline (log every step, no evaluation, warmup 10% of the
steps, one device), reads ``RUN/metrics.jsonl`` and ``RUN/summary.json`` and gives a verdict
(:func:`learning_verdict`): PASS only if every step has a finite grad norm, no step was
skipped, and the mean loss of the last 10 steps is at least ``--min-drop`` (default 5%)
below the mean loss of steps 6-15. One table, optional JSONL rows, exit 1 if any config fails.

The final checkpoint (the trainer always writes one; tens of GB for the big configs) is not
written: ``jaxmoe.train.checkpoint.save`` is replaced by a no-op during the runs
(``--save-checkpoints`` keeps it). Each run's directory is a fresh temporary directory,
deleted afterwards (``--keep-runs`` keeps it).

``--cpu-smoke`` runs tiny versions of the same configs (2 layers, width 32-64, sequence 64,
batch 8-16, float32, higher learning rates; default 30 steps) so the script can be exercised
on a CPU in about a minute and a half (all seven) or 15 s (one).

``--grad-check`` (NVIDIA Hopper only; otherwise one line says it was skipped) compares the
full-model gradients of one batch with ``model.moe.gmm_backend=pallas_mgpu`` and ``xla``
(for bench_moe_1b cut to 2 layers at batch 2 x 1024, since ``lax.ragged_dot`` lowers to a
dense masked product on GPU, and time_moe_50m at batch 16): relative error of the global
gradient norm of the difference (<= ``--grad-tol``, default 2e-2) and the worst leaf.
``--grad-backends A,B`` compares two other backends (e.g. ``xla_vjp,xla`` runs on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import traceback

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import as_float, device_name, header, stopwatch, table, write_jsonl  # noqa: E402

# The trainer (and with it grain, for the data pipelines) is imported only when a run starts.

EARLY = (6, 15)  # steps whose mean loss is the "loss at step 10"
LAST = 10  # the last steps whose mean loss is the "loss at the end"


# ------------------------------------------------------------------------------ verdict


def learning_verdict(records: list[dict], summary: dict | None = None, *, min_drop: float = 0.05,
                     early: tuple[int, int] = EARLY, last: int = LAST, expected_steps: int | None = None) -> dict:
    """The verdict on one training run from its metric records.

    ``records``: the rows of ``RUN/metrics.jsonl`` (those without ``"loss"``, e.g. eval
    rows, are ignored); non-finite floats may be strings (``"inf"``, ``"nan"``).
    ``summary``: ``RUN/summary.json`` (only ``skipped_steps`` and ``interrupted`` are read).

    PASS only if every logged step has a finite ``grad_norm``, no step was skipped, and the
    mean loss of the last ``last`` steps is at least ``min_drop`` (relative to its magnitude)
    below the mean loss of the steps ``early[0]..early[1]``. Returns a dict with ``verdict``
    ("PASS"/"FAIL"), ``reasons`` (one short sentence each), ``loss_at_10``, ``loss_end``,
    ``drop_pct``, ``max_grad_norm``, ``skipped`` and ``steps``.
    """
    rows = sorted((r for r in records if "loss" in r), key=lambda r: as_float(r.get("step")))
    reasons = []
    steps = [int(as_float(r.get("step"))) if math.isfinite(as_float(r.get("step"))) else -1 for r in rows]
    losses = [as_float(r.get("loss")) for r in rows]
    norms = [as_float(r.get("grad_norm")) for r in rows]
    skipped_steps = [s for s, r in zip(steps, rows) if as_float(r.get("skipped", 0)) != 0]
    skipped = max(len(skipped_steps), int(as_float((summary or {}).get("skipped_steps", 0)) or 0))
    out = dict(verdict="FAIL", reasons=reasons, loss_at_10=float("nan"), loss_end=float("nan"),
               drop_pct=float("nan"), max_grad_norm=float("nan"), skipped=skipped, steps=len(rows))
    if not rows:
        reasons.append("no training step was logged")
        return out
    if (summary or {}).get("interrupted"):
        reasons.append("the run was interrupted (signal)")
    if expected_steps is not None and len(rows) < expected_steps:
        reasons.append(f"only {len(rows)} of {expected_steps} steps were logged")
    missing = [s for s, r in zip(steps, rows) if "grad_norm" not in r]
    if missing:
        reasons.append(f"no grad_norm logged at step {_steps_text(missing)}")
    bad = [s for s, g, r in zip(steps, norms, rows) if "grad_norm" in r and not math.isfinite(g)]
    if bad:
        reasons.append(f"grad norm not finite at step {_steps_text(bad)}")
    out["max_grad_norm"] = float("inf") if bad else max((g for g in norms if math.isfinite(g)), default=float("nan"))
    if skipped:
        where = f" (step {_steps_text(skipped_steps)})" if skipped_steps else ""
        reasons.append(f"{skipped} step(s) skipped{where}")
    bad = [s for s, x in zip(steps, losses) if not math.isfinite(x)]
    if bad:
        reasons.append(f"loss not finite at step {_steps_text(bad)}")
    head = [x for s, x in zip(steps, losses) if early[0] <= s <= early[1]]
    tail_steps = steps[-last:]
    if not head:
        reasons.append(f"no step in {early[0]}-{early[1]} was logged")
    elif len(rows) < last or tail_steps[0] <= early[1]:
        reasons.append(f"too few steps: the last {last} overlap steps {early[0]}-{early[1]} (run >= {early[1] + last})")
    else:
        l10, lend = float(np.mean(head)), float(np.mean(losses[-last:]))
        out["loss_at_10"], out["loss_end"] = l10, lend
        if math.isfinite(l10) and math.isfinite(lend):
            drop = (l10 - lend) / max(abs(l10), 1e-12)
            out["drop_pct"] = 100 * drop
            if not drop >= min_drop:
                reasons.append(f"loss fell {100 * drop:.1f}% ({l10:.4g} -> {lend:.4g}), less than {100 * min_drop:g}%")
    out["verdict"] = "FAIL" if reasons else "PASS"
    return out


def _steps_text(steps: list[int], most: int = 5) -> str:
    text = ", ".join(str(s) for s in steps[:most])
    return text + (f" and {len(steps) - most} more" if len(steps) > most else "")


def read_run(run_dir: str) -> tuple[list[dict], dict]:
    """``(metrics.jsonl records, summary.json)`` of a run directory (missing -> empty)."""
    records = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:  # a half-written last line
                        pass
    summary = {}
    path = os.path.join(run_dir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
    return records, summary


# ------------------------------------------------------------------------------ configs


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    path: str
    gpu: tuple[str, ...] = ()  # overrides of the GPU run
    smoke: tuple[str, ...] = ()  # overrides of --cpu-smoke (tiny)


_LM_TINY = ("model.num_layers=2", "model.embed_dim=64", "model.num_heads=4", "model.num_kv_heads=4",
            "model.moe.num_experts=8", "model.moe.experts_per_token=2", "model.moe.expert_ffn_dim=64",
            "model.vocab_size=512", "model.dtype=float32", "model.remat=none", "data.seq_len=64",
            "train.batch_size=8", "train.learning_rate=3e-3")
# init_std 0.2: at the shipped 0.02 the point-wise SwiGLU embedding is nearly even in its input
# at first (silu(g x) * e x ~ g e x^2 / 2), so a tiny Time-MoE sits on a predict-the-mean plateau
# for ~70 steps before it learns; 0.2 lets the smoke run learn within its 30 steps.
_TS_TINY = ("model.num_layers=2", "model.embed_dim=64", "model.ffn_dim=256", "model.num_heads=4",
            "model.init_std=0.2", "model.moe.num_experts=4", "model.dtype=float32", "model.remat=none", "data.seq_len=64",
            "data.stride=64", "train.batch_size=8", "train.learning_rate=3e-3")

CASES = [
    Case("bench_moe_1b", "configs/bench_moe_1b.yaml", (),
         _LM_TINY + ("model.moe.shared_ffn_dim=64",)),
    # the hybrid: the same model with Mamba mixers in every other layer (as lm_tiny_hybrid.yaml);
    # sequence 1024 because the unchunked Mamba scan over [batch, seq, 2 x embed, 16] is the cost
    Case("hybrid_moe_1b", "configs/bench_moe_1b.yaml", ("model.layer_pattern=[mamba, attn]", "data.seq_len=1024"),
         _LM_TINY + ("model.moe.shared_ffn_dim=64", "model.layer_pattern=[mamba, attn]")),
    # batch 64: the size where a time_moe_50m training bug showed (batch >= 64)
    Case("time_moe_50m", "configs/time_moe_50m.yaml", ("train.batch_size=64",), _TS_TINY),
    Case("time_moe_200m", "configs/time_moe_200m.yaml", ("train.batch_size=64",), _TS_TINY),
    Case("moirai_moe_small", "configs/moirai_moe_small.yaml", (),
         ("model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.moe.num_experts=4",
          "model.moe.expert_ffn_dim=32", "model.dtype=float32", "data.seq_len=64", "train.batch_size=16",
          "train.learning_rate=3e-3")),
    # the real widths (2048 wide, 64 experts k6 of 1408, 2 shared, first layer dense, vocab
    # 102400) cut to 4 layers (~2.3B params) for one H200
    Case("deepseek_moe_16b", "configs/deepseek_moe_16b.yaml",
         ("model.num_layers=4", "mesh.expert=1", "data.seq_len=2048", "train.batch_size=4"),
         _LM_TINY + ("model.moe.shared_ffn_dim=64", "model.moe.dense_ffn_dim=128", "mesh.expert=1")),
    # the real widths (4096 wide, GQA 32/8, 8 experts top-2 of 14336) cut to 2 layers (~3.1B params)
    Case("mixtral_8x7b", "configs/mixtral_8x7b.yaml",
         ("model.num_layers=2", "mesh.expert=1", "data.seq_len=2048", "train.batch_size=4"),
         _LM_TINY + ("model.num_kv_heads=2", "mesh.expert=1")),
]


def run_overrides(case: Case, steps: int, out_dir: str, smoke: bool, devices: int, extra=()) -> list[str]:
    """The overrides of one learning run: the case's, then the run's own, then the user's."""
    return list(case.smoke if smoke else case.gpu) + [
        f"train.steps={steps}", f"train.output_dir={out_dir}", "train.log_every=1", "train.checkpoint_every=0",
        "train.eval_every=0", "train.progress=false", "train.tensorboard=false",
        f"train.warmup_steps={max(1, round(0.1 * steps))}", "data.eval_fraction=0", f"mesh.num_devices={devices}",
    ] + list(extra)


@contextlib.contextmanager
def no_checkpoint_writes(enabled: bool = True):
    """Replace ``jaxmoe.train.checkpoint.save`` by a no-op (the learning runs need no checkpoint)."""
    from jaxmoe.train import checkpoint as ckpt

    if not enabled or not hasattr(ckpt, "save"):
        yield
        return
    real = ckpt.save
    ckpt.save = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ckpt.save = real


def count_params(cfg) -> int:
    from jaxmoe.models import param_counts

    return param_counts(cfg)["total"]


def _fmt_count(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _short(overrides) -> str:
    return " ".join(o.split(".")[-1] for o in overrides) or "-"


def _free_memory():
    gc.collect()
    try:
        from jaxmoe.train import loop

        cache = getattr(loop, "_compiled_steps", None)
        if cache is not None and hasattr(cache, "cache_clear"):
            cache.cache_clear()
    except Exception:
        pass
    jax.clear_caches()
    gc.collect()


def run_case(case: Case, args) -> dict:
    from jaxmoe.config import load_config

    out_dir = tempfile.mkdtemp(prefix=f"jaxmoe_learning_{case.name}_")
    overrides = run_overrides(case, args.steps, out_dir, args.cpu_smoke, args.devices, args.set)
    shown = list(case.smoke if args.cpu_smoke else case.gpu) + list(args.set)
    label = " ".join(["tiny (--cpu-smoke)"] + [_short(args.set)] * bool(args.set)) if args.cpu_smoke else _short(shown)
    row = dict(config=case.name, overrides=label, params="?",
               steps=0, batch_x_seq="?", loss_at_10=float("nan"), loss_end=float("nan"), drop_pct=float("nan"),
               max_grad_norm=float("nan"), skipped=0, seconds=0.0, verdict="FAIL")
    extra = dict(reasons=[], path=case.path, all_overrides=list(overrides))
    clock = stopwatch()
    try:
        cfg = load_config(case.path, overrides)
        row["batch_x_seq"] = f"{cfg.train.batch_size}x{cfg.data.seq_len}"
        n = count_params(cfg)
        row["params"] = _fmt_count(n)
        extra["num_params"] = n
        print(f"--- {case.name}: {row['params']} params, batch {row['batch_x_seq']}, {args.steps} steps "
              f"({' '.join(shown) or 'config as shipped'})", flush=True)
        from jaxmoe.train import train

        with no_checkpoint_writes(not args.save_checkpoints):
            train(cfg)
        row["seconds"] = clock()
        records, summary = read_run(out_dir)
        v = learning_verdict(records, summary, min_drop=args.min_drop, expected_steps=args.steps)
        row.update({k: v[k] for k in ("loss_at_10", "loss_end", "drop_pct", "max_grad_norm", "skipped", "steps",
                                      "verdict")})
        extra["reasons"] = v["reasons"]
    except Exception as e:  # a crash (OOM, compile error, TrainingError) is a FAIL, not the end of the table
        row["seconds"] = clock()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        extra["reasons"] = [f"{type(e).__name__}: {first}"]
        records, summary = read_run(out_dir)
        if any("loss" in r for r in records):  # what the steps before the crash show
            v = learning_verdict(records, summary, min_drop=args.min_drop)
            row.update({k: v[k] for k in ("loss_at_10", "loss_end", "drop_pct", "max_grad_norm", "skipped", "steps")})
            extra["reasons"] += [r for r in v["reasons"] if not r.startswith(("too few steps", "no step in"))]
        if args.verbose:
            traceback.print_exc()
    finally:
        if args.keep_runs:
            extra["run_dir"] = out_dir
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
        _free_memory()
    line = f"    {row['verdict']}: {row['config']} in {row['seconds']:.0f} s"
    if extra["reasons"]:
        line += " - " + "; ".join(extra["reasons"])
    else:
        line += f" - loss {row['loss_at_10']:.4g} -> {row['loss_end']:.4g} ({row['drop_pct']:.1f}% lower)"
    print(line, flush=True)
    row["_extra"] = extra
    return row


# --------------------------------------------------------------------------- grad check


GRAD_CASES = [
    ("bench_moe_1b (2 layers)", "configs/bench_moe_1b.yaml",
     ("model.num_layers=2", "train.batch_size=2", "data.seq_len=1024")),
    ("time_moe_50m", "configs/time_moe_50m.yaml", ("train.batch_size=16",)),
]


def hopper_note() -> str | None:
    """None on an NVIDIA Hopper GPU with the Pallas Mosaic-GPU kernels, else why not."""
    d = jax.devices()[0]
    if d.platform != "gpu":
        return f"the device is {device_name()}, not an NVIDIA GPU"
    cc = str(getattr(d, "compute_capability", ""))
    if cc and not cc.startswith("9"):
        return f"the GPU has compute capability {cc}, not Hopper (9.x)"
    try:
        from jaxmoe.moe.gmm import pallas_mgpu_available

        if not pallas_mgpu_available():
            return "JAX's Pallas Mosaic-GPU kernels are not available"
    except ImportError:
        pass
    return None


def grad_check(args) -> list[dict]:
    backends = [b.strip() for b in args.grad_backends.split(",") if b.strip()]
    if len(backends) != 2:
        raise SystemExit(f"--grad-backends needs two backends, got {args.grad_backends!r}.")
    why = hopper_note() if "pallas_mgpu" in backends else None
    if why is not None:
        print(f"grad check skipped: needs an NVIDIA Hopper GPU for gmm_backend=pallas_mgpu ({why}).", flush=True)
        return []
    test, ref = backends
    from jaxmoe.config import load_config
    from jaxmoe.train.tasks import make_task

    env = os.environ.pop("JAXMOE_GMM_BACKEND", None)  # it would override both configs' choice
    if env:
        print(f"grad check: ignoring JAXMOE_GMM_BACKEND={env}", flush=True)
    rows = []
    try:
        for name, path, overrides in GRAD_CASES:
            clock = stopwatch()
            common = list(overrides) + ["data.eval_fraction=0", "mesh.num_devices=1"] + list(args.set)
            row = dict(case=name, backends=f"{test} vs {ref}", batch_x_seq="?", loss_test=float("nan"),
                       loss_ref=float("nan"), global_rel_err=float("nan"), worst_leaf="-",
                       worst_leaf_rel_err=float("nan"), seconds=0.0, verdict="FAIL")
            try:
                cfgs = {b: load_config(path, common + [f"model.moe.gmm_backend={b}"]) for b in (test, ref)}
                row["batch_x_seq"] = f"{cfgs[ref].train.batch_size}x{cfgs[ref].data.seq_len}"
                task = make_task(cfgs[test])
                batch = jax.device_put(next(task.train_pipeline.iterator()))
                params = jax.jit(task.init)(jax.random.PRNGKey(cfgs[ref].train.seed))
                rng = jax.random.PRNGKey(0)
                out = {}
                for b, cfg in cfgs.items():
                    t = make_task(cfg, with_data=False)
                    fn = jax.jit(jax.value_and_grad(lambda p, x, t=t: t.loss_fn(p, x, rng)[0]))
                    compiled = fn.lower(params, batch).compile()
                    if b == "pallas_mgpu" and "mosaic" not in compiled.as_text().lower():
                        raise RuntimeError("the pallas_mgpu gradient has no Mosaic GPU kernel in its HLO "
                                           "(did gmm fall back to another backend?)")
                    loss, grads = compiled(params, batch)
                    out[b] = (float(loss), jax.device_get(grads))
                    del fn, compiled
                    _free_memory()
                (lp, gp), (lx, gx) = out[test], out[ref]
                diffs = grad_differences(gp, gx)
                row.update(loss_test=lp, loss_ref=lx, global_rel_err=diffs["global_rel_err"],
                           worst_leaf=diffs["worst"][0][0] if diffs["worst"] else "-",
                           worst_leaf_rel_err=diffs["worst"][0][1] if diffs["worst"] else float("nan"))
                ok = (math.isfinite(lp) and math.isfinite(lx) and diffs["global_rel_err"] <= args.grad_tol
                      and diffs["finite"])
                row["verdict"] = "PASS" if ok else "FAIL"
                print(f"--- grad check {name}: worst leaves (relative error of the leaf's gradient):", flush=True)
                for leaf, err in diffs["worst"][:5]:
                    print(f"    {err:.3e}  {leaf}", flush=True)
            except Exception as e:
                row["reason"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                print(f"--- grad check {name}: {row['reason']}", flush=True)
                if args.verbose:
                    traceback.print_exc()
            row["seconds"] = clock()
            rows.append(row)
            _free_memory()
    finally:
        if env:
            os.environ["JAXMOE_GMM_BACKEND"] = env
    return rows


def grad_differences(a, b) -> dict:
    """Per-leaf and global relative differences of two gradient pytrees (``b`` the reference):
    ``global_rel_err = ||a - b|| / ||b||`` over all leaves, ``worst``: [(leaf path,
    ||a_i - b_i|| / ||b_i||)] sorted worst first, ``finite``: both are finite."""
    la = jax.tree_util.tree_flatten_with_path(a)[0]
    lb = jax.tree.leaves(b)
    num = den = 0.0
    per = []
    finite = True
    for (path, x), y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        finite = finite and bool(np.isfinite(x).all() and np.isfinite(y).all())
        d2, r2 = float(np.sum((x - y) ** 2)), float(np.sum(y ** 2))
        num, den = num + d2, den + r2
        per.append((jax.tree_util.keystr(path), math.sqrt(d2) / max(math.sqrt(r2), 1e-30)))
    per.sort(key=lambda t: -t[1] if math.isfinite(t[1]) else -math.inf)
    return dict(global_rel_err=math.sqrt(num) / max(math.sqrt(den), 1e-30), worst=per, finite=finite)


# ---------------------------------------------------------------------------------- main


COLS = ["config", "overrides", "params", "steps", "batch_x_seq", "loss_at_10", "loss_end", "drop_pct",
        "max_grad_norm", "skipped", "seconds", "verdict"]
GRAD_COLS = ["case", "backends", "batch_x_seq", "loss_test", "loss_ref", "global_rel_err", "worst_leaf",
             "worst_leaf_rel_err", "seconds", "verdict"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps per config (150; 30 with --cpu-smoke)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(c.name for c in CASES)}")
    ap.add_argument("--min-drop", type=float, default=0.05,
                    help="PASS needs mean loss of the last 10 steps this fraction below that of steps 6-15")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides key=value for every config")
    ap.add_argument("--devices", type=int, default=1, help="devices per run (mesh.num_devices; 0 = all)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny versions of every config (CPU, about a minute)")
    ap.add_argument("--grad-check", action="store_true", help="also compare pallas_mgpu and xla gradients (Hopper)")
    ap.add_argument("--grad-tol", type=float, default=2e-2, help="largest relative error of the gradient difference")
    ap.add_argument("--grad-backends", default="pallas_mgpu,xla", help="TEST,REFERENCE grouped-matmul backends")
    ap.add_argument("--skip-train", action="store_true", help="no training runs (e.g. with --grad-check)")
    ap.add_argument("--save-checkpoints", action="store_true", help="let the trainer write its final checkpoint")
    ap.add_argument("--keep-runs", action="store_true", help="keep the run directories (paths in the JSONL)")
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failed runs")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 30 if args.cpu_smoke else 150
    if args.steps < EARLY[1] + LAST:
        ap.error(f"--steps must be >= {EARLY[1] + LAST} (steps {EARLY[0]}-{EARLY[1]} are compared with the "
                 f"last {LAST}).")
    names = [c.name for c in CASES]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in names]
    if unknown:
        ap.error(f"unknown config {', '.join(unknown)}; choose from {', '.join(names)}.")
    cases = [c for c in CASES if not only or c.name in only]

    print(header(), flush=True)
    try:
        from jaxmoe.moe.gmm import resolve_backend

        gmm = resolve_backend("auto")
    except Exception as e:
        gmm = f"? ({type(e).__name__})"
    if not args.skip_train:
        print(f"learning check: {args.steps} steps per config, PASS needs every grad norm finite, no skipped step and "
              f"loss(last {LAST}) <= (1 - {args.min_drop:g}) x loss(steps {EARLY[0]}-{EARLY[1]}); gmm auto -> {gmm}"
              + ("; --cpu-smoke: tiny sizes" if args.cpu_smoke else ""), flush=True)

    rows = [] if args.skip_train else [run_case(c, args) for c in cases]
    grad_rows = grad_check(args) if args.grad_check else []

    date = header().split()[0]
    if rows:
        print(f"\nlearning ({args.steps} steps, {device_name()}, jax {jax.__version__}):")
        print(table(rows, COLS))
        for r in rows:
            if r["verdict"] != "PASS":
                print(f"{r['config']}: FAIL - {'; '.join(r['_extra']['reasons'])}")
    if grad_rows:
        print(f"\ngradients, {args.grad_backends.replace(',', ' vs ')} (PASS: ||g_test - g_ref|| / ||g_ref|| "
              f"<= {args.grad_tol:g}, all finite):")
        print(table(grad_rows, GRAD_COLS))
    common = dict(device=device_name(), jax=jax.__version__, date=date, cpu_smoke=args.cpu_smoke)
    out = []
    for r in rows:
        extra = r.pop("_extra")
        out.append(dict(r, kind="learning", **extra, min_drop=args.min_drop, **common))
    out += [dict(r, kind="grad_check", tol=args.grad_tol, **common) for r in grad_rows]
    write_jsonl(args.jsonl, out)
    failed = [r for r in rows + grad_rows if r["verdict"] != "PASS"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
