"""``jaxmoe train --config FILE [section.key=value ...] [--resume]``."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.moe.num_experts=16")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    g = p.add_argument_group("multi-host (one process per host; or env JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                             "JAX_PROCESS_ID; SLURM/Open MPI/TPU pods are detected)")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (hosts)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes-1")


def run(args) -> int:
    from jaxmoe.config import load_config
    from jaxmoe.parallel.mesh import initialize_distributed
    from jaxmoe.train import train

    cfg = load_config(args.config, args.overrides)
    initialize_distributed(getattr(args, "coordinator_address", None), getattr(args, "num_processes", None),
                           getattr(args, "process_id", None))  # no-op on a single host
    summary = train(cfg, resume=args.resume)
    if summary.get("interrupted"):
        print(summary["message"])
        return 0
    print(format_summary(summary))
    return 0


def _num(x, fmt=".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def format_summary(summary: dict) -> str:
    """The end-of-training report: steps, tokens, time, losses, best eval loss, checkpoint."""
    secs = float(summary.get("time_sec", 0.0))
    trained = summary.get("steps", 0) - summary.get("start_step", 0)
    tokens = summary.get("tokens", 0)
    lines = [
        f"training finished: {summary.get('steps', 0)} steps ({trained} in this run), {tokens:,} tokens, "
        f"{secs:.1f} s",
        f"  loss {_num(summary.get('first_loss'))} -> {_num(summary.get('final_loss'))}, best eval loss "
        f"{_num(summary.get('best_eval_loss'))}, skipped steps {summary.get('skipped_steps', 0)}, loss spikes "
        f"{summary.get('loss_spikes', 0)}",
        f"  checkpoint: {summary.get('checkpoint') or 'none'}" + (f", mesh: {summary['mesh']}" if summary.get("mesh")
                                                                  else ""),
        f"  metrics: {summary['run_dir']}/metrics.jsonl, plots: {summary['run_dir']}/loss.png, "
        f"summary: {summary['run_dir']}/summary.json",
    ]
    return "\n".join(lines)
