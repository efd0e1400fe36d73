"""Training throughput over mesh shapes: tokens/s, per-device efficiency, exchange share.

    PYTHONPATH=. python benchmarks/scaling.py --config configs/bench_moe_1b.yaml \\
        --meshes "1x1x1,2x1x1,1x2x1,1x1x2,4x1x1,2x2x1,1x4x1,8x1x1,2x4x1,1x8x1" [--steps 10] [--strong]

    # CPU check with fake devices and a tiny config:
    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/scaling.py --config configs/lm_tiny.yaml \\
        --meshes 1x1x1,2x1x1,1x2x1 --steps 3

Each mesh is ``data x expert x fsdp`` over the first data*expert*fsdp devices (tensor=1).
By default the batch per device is kept (weak scaling: ``train.batch_size`` is the batch
of the first mesh's devices, scaled with the device count); ``--strong`` keeps the global
batch. Efficiency = tokens/s per device / tokens/s per device of the first mesh. For
meshes with expert > 1 the step is timed again with the token exchange removed
(``all_to_all=none``: every device runs its own send buffer through its local experts,
the same compute without the collective; results are wrong, only the time is used), and
``exchange`` = 1 - time(no exchange) / time(step) estimates the share of the step spent in
the all-to-all exchanges (both directions, forward and backward).
"""

from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_name, table, write_jsonl  # noqa: E402
from expert_parallel import time_mesh  # noqa: E402

from jaxmoe.config import MeshConfig, load_config  # noqa: E402


def parse_meshes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"mesh {item!r} must look like DATAxEXPERTxFSDP, e.g. 2x4x1")
        out.append(tuple(int(p) for p in parts))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/bench_moe_1b.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides")
    ap.add_argument("--meshes", default="1x1x1,2x1x1,1x2x1,1x1x2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--strong", action="store_true", help="keep the global batch instead of the batch per device")
    ap.add_argument("--all-to-all", default="auto", choices=["auto", "padded", "ragged"])
    ap.add_argument("--no-exchange-estimate", action="store_true", help="skip the no-exchange timing")
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    meshes = parse_meshes(args.meshes)
    base_devices = meshes[0][0] * meshes[0][1] * meshes[0][2]
    print(f"{args.config}: {jax.device_count()} x {device_name()}, "
          f"{'strong' if args.strong else 'weak'} scaling", flush=True)
    rows = []
    for d, e, f in meshes:
        n = d * e * f
        if n > jax.device_count():
            print(f"{d}x{e}x{f}: needs {n} devices, only {jax.device_count()}: skipped", flush=True)
            continue
        batch = cfg.train.batch_size if args.strong else max(1, cfg.train.batch_size * n // base_devices)
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
        mesh_cfg = MeshConfig(data=d, expert=e, fsdp=f, num_devices=n, all_to_all=args.all_to_all)
        label = f"{d}x{e}x{f}"
        try:
            row = time_mesh(c, mesh_cfg, args.steps, label)
            if e > 1 and not args.no_exchange_estimate:
                quiet = time_mesh(c, dataclasses.replace(mesh_cfg, all_to_all="none"), args.steps, label + "/none")
                row["no_exchange_ms"] = quiet["step_ms"]
                row["exchange"] = max(0.0, 1.0 - quiet["step_ms"] / row["step_ms"])
            else:
                row["no_exchange_ms"], row["exchange"] = row["step_ms"], 0.0
        except Exception as ex:
            print(f"{label}: failed: {type(ex).__name__}: {str(ex).splitlines()[0][:300]}", flush=True)
            continue
        row.update(kind="scaling", mesh_dxexf=label, batch=batch)
        rows.append(row)
        print(table([row], ["mesh_dxexf", "devices", "batch", "step_ms", "tokens_per_s", "exchange"]), flush=True)
    if not rows:
        return rows
    ref = rows[0]["tokens_per_s_per_device"]
    for r in rows:
        r["efficiency"] = r["tokens_per_s_per_device"] / ref
    cols = ["devices", "mesh_dxexf", "mesh", "batch", "all_to_all", "step_ms", "tokens_per_s", "tokens_per_s_per_device",
            "efficiency", "exchange", "mfu", "peak_gb"]
    print(f"\nscaling, {args.config} (seq {cfg.data.seq_len}; mesh = data x expert x fsdp; efficiency vs "
          f"{rows[0]['mesh_dxexf']}; exchange = share of the step in all-to-all):")
    print(table(rows, cols))
    write_jsonl(args.jsonl, rows)
    return rows


if __name__ == "__main__":
    main()
