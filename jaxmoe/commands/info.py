"""``jaxmoe info --hf HF_DIR``: family, sizes and parameter counts of a Hugging Face directory
(:func:`run_hf`, reads only safetensors headers); ``jaxmoe info --config FILE``: devices, mesh,
parameter counts and memory per device for a config (:func:`run_config`).
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
        return run_hf(args.hf)
    if getattr(args, "config", None):
        return run_config(args.config, args.overrides)
    raise UserError("nothing to show: pass --config FILE or --hf HF_DIR.")


# ------------------------------------------------------------ --config: devices, mesh, memory

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def param_report(cfg, mesh=None) -> dict:
    """Parameter counts (total, active per token, active without the input embedding) and,
    with a mesh, the bytes of params each device holds under the sharding rules."""
    import math

    import jax

    from jaxmoe.models import get_model
    from jaxmoe.nn.init import AxisNames, logical_axes
    from jaxmoe.parallel import sharding as sh

    model = get_model(cfg.model.family)
    key = jax.random.PRNGKey(0)
    shapes = jax.eval_shape(lambda: model.init(key, cfg.model))
    axes = logical_axes(model.init_boxed, key, cfg.model)
    rules = sh.rules_from_config(cfg.mesh)
    moe = getattr(cfg.model, "moe", None)  # families without MoE layers: every param is active
    active_frac = moe.experts_per_token / moe.num_experts if moe is not None else 1.0
    out = {"params": 0, "active_params": 0, "embedding_params": 0, "param_bytes_per_device": 0}
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda a: isinstance(a, AxisNames))
    flat_shapes = jax.tree.leaves(shapes)
    for a, s in zip(flat_axes, flat_shapes):
        n = math.prod(s.shape)
        out["params"] += n
        out["active_params"] += n * active_frac if "expert" in a else n
        if tuple(a) == ("vocab", "embed"):
            out["embedding_params"] += n
        if mesh is not None:
            spec = sh.logical_to_spec(a, rules, mesh, s.shape)
            split = math.prod(math.prod(mesh.shape[x] for x in ((e,) if isinstance(e, str) else e))
                              for e in spec if e is not None)
            out["param_bytes_per_device"] += n * s.dtype.itemsize / split
    out["active_params"] = int(round(out["active_params"]))
    out["active_non_embedding"] = out["active_params"] - out["embedding_params"]
    return out


def activation_bytes_per_device(cfg, mesh) -> float:
    """Rough activation memory of one training step per device (saved for the backward):
    per token and layer about 12*embed values + the attention probabilities + the routed
    experts' hidden states, split over the tensor axis where it applies; plus fp32 logits."""
    from jaxmoe.parallel.mesh import axis_sizes

    m, sizes = cfg.model, axis_sizes(mesh)
    moe, remat = getattr(m, "moe", None), getattr(m, "remat", "none")  # not every family has them
    tokens = cfg.train.batch_size * cfg.data.seq_len / (sizes["data"] * sizes["fsdp"] * sizes["expert"])
    tp = sizes["tensor"]
    b = _DTYPE_BYTES[getattr(m, "dtype", "float32")]
    if moe is not None:
        ffn = max(moe.experts_per_token * (3 * moe.expert_ffn_dim + 2 * m.embed_dim)
                  + 3 * moe.num_shared_experts * (moe.shared_ffn_dim or moe.expert_ffn_dim),
                  3 * (moe.dense_ffn_dim or 4 * m.embed_dim))
    else:
        ffn = 3 * (getattr(m, "ffn_dim", 0) or 4 * m.embed_dim)
    per_layer = tokens * b * (12 * m.embed_dim + (getattr(m, "num_heads", 0) * cfg.data.seq_len + ffn) / tp)
    layers = m.num_layers if remat == "none" else 1
    saved = per_layer * layers + (tokens * m.embed_dim * b * m.num_layers if remat != "none" else 0)
    logits = tokens * getattr(m, "vocab_size", 0) * 4 * 2 / tp
    return saved + logits


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB"


def run_config(path: str, overrides) -> int:
    import jax

    from jaxmoe.config import load_config
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
    rep = param_report(cfg, mesh)
    print(f"params      {rep['params']:,} ({_human(rep['params'])}) total, {rep['active_params']:,} "
          f"({_human(rep['active_params'])}) active per token, {rep['active_non_embedding']:,} "
          f"({_human(rep['active_non_embedding'])}) active without the input embedding")
    p = rep["param_bytes_per_device"]
    opt = 2 * p * 4 / _DTYPE_BYTES.get(getattr(cfg.model, "param_dtype", "float32"), 4)  # AdamW mu, nu in fp32
    act = activation_bytes_per_device(cfg, mesh)
    total = p + opt + p + act  # params + AdamW state + gradients + activations
    print(f"memory/dev  params {_gib(p)} + AdamW state {_gib(opt)} + gradients {_gib(p)} + activations ~{_gib(act)} "
          f"(rough, remat={getattr(cfg.model, 'remat', 'none')}) = ~{_gib(total)}")
    try:
        stats = devices[0].memory_stats() or {}
    except Exception:
        stats = {}
    if stats.get("bytes_limit"):
        print(f"device mem  {_gib(stats['bytes_limit'])} available on {devices[0].device_kind}")
    return 0
