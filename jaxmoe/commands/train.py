"""``jaxmoe train --config FILE [section.key=value ...] [--resume [RUN]] [--force] [--allow-data-change]``.

A run directory resumes where it lies: ``--resume RUN`` (its ``config.yaml``, written into
RUN) and ``--config RUN/config.yaml --resume`` both train RUN, not the ``train.output_dir``
stored in the config (which names the directory the run was first written to, e.g. before
it was copied). An explicit ``train.output_dir=...`` override still wins for the latter.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--config", default=None, help="YAML config file (see configs/); with --resume RUN: RUN/config.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.moe.num_experts=16")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue from the newest intact checkpoint of RUN (default: of train.output_dir, or of the "
                        "run directory holding --config)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty train.output_dir that is not a jaxmoe run directory")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: accept another train.batch_size or data.seq_len than the checkpoint's")
    g = p.add_argument_group("multi-host (one process per host; or env JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                             "JAX_PROCESS_ID; SLURM/Open MPI/TPU pods are detected)")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (hosts)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes-1")


def _run_location(args) -> tuple[str, list[str], bool]:
    """``(config file, overrides, resume)`` with the run directory that ``--resume RUN`` or
    ``--config RUN/config.yaml --resume`` names put into ``train.output_dir``."""
    from jaxmoe.errors import UserError

    overrides, resume = list(args.overrides), args.resume
    if isinstance(resume, str) and "=" in resume and not Path(resume).is_dir():
        overrides, resume = overrides + [resume], True  # `--resume train.steps=9`: an override, not a RUN
    explicit = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == "train.output_dir"]
    config, run_dir = args.config, None
    if isinstance(resume, str):
        p = Path(resume)
        if not p.exists():
            raise UserError(f"--resume '{resume}' does not exist; give a run directory written by `jaxmoe train`.")
        if not p.is_dir() or not (p / "config.yaml").is_file():
            raise UserError(f"--resume '{resume}' is not a jaxmoe run directory (no config.yaml in it).")
        run_dir, config = p, config or str(p / "config.yaml")
        if explicit and Path(explicit[-1]).absolute() != p.absolute():
            raise UserError(f"--resume '{resume}' and train.output_dir={explicit[-1]} name two run directories; "
                            "give one.")
    elif resume and config is not None and not explicit:
        p = Path(config)
        if p.name == "config.yaml" and (p.parent / "checkpoints").is_dir():
            run_dir = p.parent  # a run directory (perhaps a copy) resumes where it lies
    if config is None:
        raise UserError("--config is required (or --resume RUN to continue a run directory).")
    if not str(config).strip():
        raise UserError("--config is empty; give a YAML config file (e.g. configs/lm_tiny.yaml).")
    if run_dir is not None:
        overrides.append(f"train.output_dir={run_dir}")
    return config, overrides, bool(resume)


def run(args) -> int:
    from jaxmoe.config import load_config
    from jaxmoe.parallel.mesh import initialize_distributed
    from jaxmoe.train import train

    config, overrides, resume = _run_location(args)
    cfg = load_config(config, overrides)
    initialize_distributed(getattr(args, "coordinator_address", None), getattr(args, "num_processes", None),
                           getattr(args, "process_id", None))  # no-op on a single host
    summary = train(cfg, resume=resume, force=getattr(args, "force", False),
                    allow_data_change=getattr(args, "allow_data_change", False))
    if summary.get("finished_already"):
        return 0  # the trainer said so (one warning line); nothing was written
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
