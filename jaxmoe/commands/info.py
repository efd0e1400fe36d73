"""``jaxmoe info --hf HF_DIR``: family, sizes and parameter counts of a Hugging Face directory
(:func:`run_hf`, reads only safetensors headers); ``jaxmoe info --config FILE``: devices, mesh,
parameter counts and memory per device for a config (:func:`run_config`; the counts and the
memory model are :mod:`jaxmoe.models.sizes`, this module only prints).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--hf", default=None, help="Hugging Face model directory: show family, sizes, parameter count")
    p.add_argument("--config", default=None, help="YAML config: show devices, mesh, parameter counts, memory/device")
    p.add_argument("overrides", nargs="*", help="dotted overrides for --config, e.g. mesh.expert=4 mesh.data=2")


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
    from jaxmoe.errors import UserError

    if getattr(args, "hf", None):
        from jaxmoe import validate

        validate.input_dir(args.hf, "--hf")
        return run_hf(args.hf)
    if getattr(args, "config", None):
        return run_config(args.config, args.overrides)
    raise UserError("nothing to show: pass --config FILE or --hf HF_DIR.")


# ------------------------------------------------------------ --config: devices, mesh, memory
# (the counts and the memory model: jaxmoe.models.sizes)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB"


def run_config(path: str, overrides) -> int:
    import jax

    from jaxmoe.config import load_config
    from jaxmoe.models.sizes import memory_per_device
    from jaxmoe.parallel.mesh import axis_sizes, build_mesh, describe

    cfg = load_config(path, overrides)
    mesh = build_mesh(config=cfg)  # a mesh that does not fit: one-line error, exit 1
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    print(f"devices     {len(devices)} x {', '.join(kinds)} ({jax.default_backend()}), {jax.process_count()} "
          f"process(es), {jax.local_device_count()} local")
    sizes = axis_sizes(mesh)
    print(f"mesh        {' x '.join(f'{a}={n}' for a, n in sizes.items())}  ({describe(mesh)})")
    moe = getattr(cfg.model, "moe", None)
    tok_shards = sizes["data"] * sizes["fsdp"] * sizes["expert"]
    experts = f"{moe.num_experts // sizes['expert']} of {moe.num_experts} experts per device; " if moe else ""
    print(f"layout      {cfg.train.batch_size // tok_shards} sequences x {cfg.data.seq_len} tokens per device; "
          f"{experts}all_to_all={cfg.mesh.all_to_all}")
    mem = memory_per_device(cfg, mesh)
    rep = mem["report"]
    print(f"params      {rep['params']:,} ({_human(rep['params'])}) total, {rep['active_params']:,} "
          f"({_human(rep['active_params'])}) active per token, {rep['active_non_embedding']:,} "
          f"({_human(rep['active_non_embedding'])}) active without the input embedding")
    print(f"memory/dev  params {_gib(mem['params'])} + AdamW state {_gib(mem['optimizer'])} + gradients "
          f"{_gib(mem['gradients'])} + activations ~{_gib(mem['activations'])} "
          f"(rough, remat={getattr(cfg.model, 'remat', 'none')}) = ~{_gib(mem['total'])}")
    try:
        stats = devices[0].memory_stats() or {}
    except Exception:
        stats = {}
    if stats.get("bytes_limit"):
        print(f"device mem  {_gib(stats['bytes_limit'])} available on {devices[0].device_kind}")
    return 0
