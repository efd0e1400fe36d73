"""Data parallel vs expert parallel training throughput, and the two all-to-all variants.

    PYTHONPATH=. python benchmarks/expert_parallel.py --config configs/bench_moe_1b.yaml --devices 2
        [--variants single,dp,ep_padded,ep_ragged,ep_ragged@1.25,fsdp] [--steps 10] [--set k=v ...]
        [--jsonl out.jsonl]

    # CPU check with fake devices and a tiny config:
    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/expert_parallel.py --config configs/lm_tiny.yaml --steps 3

Times the trainer's own jitted step (``jaxmoe.train.loop._compiled_steps``: state created
directly sharded by the logical-axis rules, batches sharded over data x fsdp x expert, MoE
layers expert-parallel under ``shard_map``) on a mesh over the first ``--devices`` devices:

- ``single``: one device (reference for the speed-up column);
- ``dp``: ``mesh.data=N`` (every device holds all experts and routes its own tokens);
- ``ep_padded`` / ``ep_ragged``: ``mesh.expert=N`` with ``all_to_all=padded`` (fixed
  worst-case buffers exchanged with ``all_to_all``) or ``ragged`` (``ragged_all_to_all``
  sends only the filled rows; an all_gather emulation on CPU);
- ``fsdp``: ``mesh.fsdp=N`` (params and optimizer state sharded, tokens split);
- ``NAME@X`` (e.g. ``ep_padded@1.25``): the variant with ``mesh.exchange_capacity=X``:
  exchange buffers of X times the mean per-device load instead of the exact worst case
  (less memory, traffic and padded expert compute; overflow dropped, see ``dropped``).

The global batch is the config's (``train.batch_size x data.seq_len`` tokens per step,
split over the devices). MFU as in benchmarks/train_step.py.
"""

from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # fake CPU devices for the CPU check (harmless on GPU machines: only the CPU backend sees it)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (H200_PEAK, device_name, lm_flops_per_token, peak_memory_gb, stopwatch, table,  # noqa: E402
                     time_steps, write_jsonl)

from jaxmoe.config import MeshConfig, load_config  # noqa: E402
from jaxmoe.models import get_model  # noqa: E402
from jaxmoe.moe import expert_parallel as ep_lib  # noqa: E402
from jaxmoe.parallel import sharding as sh  # noqa: E402
from jaxmoe.parallel.mesh import axis_sizes, build_mesh, describe  # noqa: E402
from jaxmoe.train import loop  # noqa: E402
from jaxmoe.train.optimizer import make_optimizer  # noqa: E402
from jaxmoe.train.state import TrainState  # noqa: E402

VARIANTS = {
    "single": lambda n: MeshConfig(data=1, num_devices=1),
    "dp": lambda n: MeshConfig(data=n, num_devices=n),
    "ep_padded": lambda n: MeshConfig(data=1, expert=n, num_devices=n, all_to_all="padded"),
    "ep_ragged": lambda n: MeshConfig(data=1, expert=n, num_devices=n, all_to_all="ragged"),
    "fsdp": lambda n: MeshConfig(data=1, fsdp=n, num_devices=n),
}


def buffer_rows(cfg, mesh) -> str:
    """Rows per device of the exchange buffers (``ep x B``) for the MoE layers."""
    moe = cfg.model.moe
    try:
        plan = ep_lib.Plan(mesh, sh.rules_from_config(cfg.mesh), cfg.train.batch_size, cfg.data.seq_len,
                           moe.num_experts, moe.experts_per_token, moe.expert_ffn_dim, moe,
                           moe.dispatch if moe.dispatch in ("dropless", "capacity") else "dropless",
                           ep_lib.resolve_exchange(cfg.mesh.all_to_all, mesh), cfg.mesh.exchange_capacity)
    except Exception:
        return "-"
    return f"{plan.ep}x{plan.buffer_rows}"


def time_mesh(cfg, mesh_cfg: MeshConfig, steps: int, label: str, warmup: int = 2) -> dict:
    """Tokens/s of the trainer's jitted step for ``cfg`` on the mesh ``mesh_cfg``."""
    cfg = dataclasses.replace(cfg, mesh=mesh_cfg)
    m, t = cfg.model, cfg.train
    mesh = build_mesh(config=cfg)
    rules = sh.rules_from_config(mesh_cfg)
    model = get_model(m.family)
    tx = make_optimizer(t)
    clock = stopwatch()
    step, _, state_sh = loop._compiled_steps(m, t, mesh_cfg, mesh)
    state = jax.jit(lambda k: TrainState.create(model.init(k, m), tx, t.seed), out_shardings=state_sh)(
        jax.random.PRNGKey(t.seed))
    key = jax.random.PRNGKey(1)
    batches = [sh.shard_batch({"tokens": jax.device_get(jax.random.randint(jax.random.fold_in(key, i),
                                                                           (t.batch_size, cfg.data.seq_len + 1), 0,
                                                                           m.vocab_size, jnp.int32))}, mesh, rules)
               for i in range(2)]
    flops_tok, _ = lm_flops_per_token(cfg, state.params) if m.family == "lm" else (0.0, 0.0)
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = clock()
    state, sec, _, (_, metrics) = time_steps(step, state, batches, warmup=warmup, steps=steps)
    n = mesh.devices.size
    tokens = t.batch_size * cfg.data.seq_len
    row = dict(kind="expert_parallel", variant=label, mesh=describe(mesh), devices=n,
               all_to_all=ep_lib.resolve_exchange(mesh_cfg.all_to_all, mesh) if axis_sizes(mesh)["expert"] > 1 else "-",
               buffer=buffer_rows(cfg, mesh) if n > 1 else "-", step_ms=sec * 1e3, tokens_per_s=tokens / sec,
               tokens_per_s_per_device=tokens / sec / n, mfu=flops_tok * tokens / sec / H200_PEAK / n,
               peak_gb=peak_memory_gb(), loss=float(metrics["loss"]), dropped=float(metrics.get("dropped_frac", 0.0)),
               compile_s=compile_s, device=device_name(), jax=jax.__version__)
    del state, batches, metrics, step
    loop._compiled_steps.cache_clear()
    gc.collect()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/bench_moe_1b.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.moe.dispatch=capacity")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--variants", default="single,dp,ep_padded,ep_ragged,ep_ragged@1.25")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    n = min(args.devices, jax.device_count())
    if n < 2:
        print(f"only {jax.device_count()} device(s): expert parallelism needs at least 2", file=sys.stderr)
    print(f"{args.config}: batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens, dtype {cfg.model.dtype}, "
          f"{cfg.model.moe.num_experts} experts top-{cfg.model.moe.experts_per_token}, dispatch "
          f"{cfg.model.moe.dispatch}; {jax.device_count()} x {device_name()}", flush=True)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        base_name, _, cap = name.partition("@")
        if base_name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)} (optionally NAME@X)")
        if base_name != "single" and n < 2:
            continue
        mesh_cfg = VARIANTS[base_name](n)
        if cap:
            mesh_cfg = dataclasses.replace(mesh_cfg, exchange_capacity=float(cap))
        try:
            row = time_mesh(cfg, mesh_cfg, args.steps, name)
        except Exception as e:  # keep going: one failing variant must not hide the others
            print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            continue
        rows.append(row)
        print(table([row], ["variant", "mesh", "step_ms", "tokens_per_s", "compile_s"]), flush=True)
    base = next((r for r in rows if r["variant"] == "single"), None)
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
    cols = ["variant", "mesh", "all_to_all", "buffer", "step_ms", "tokens_per_s", "tokens_per_s_per_device",
            "speedup", "mfu", "peak_gb", "loss", "dropped", "compile_s"]
    print(f"\ntraining step, {args.config}, global batch {cfg.train.batch_size} x {cfg.data.seq_len}:")
    print(table(rows, cols))
    write_jsonl(args.jsonl, rows)
    return rows


if __name__ == "__main__":
    main()
