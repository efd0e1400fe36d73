"""Time-MoE <-> Hugging Face ``TimeMoeForPrediction`` (``model_type: time_moe``).

A Hugging Face directory holds ``config.json`` and ``model.safetensors`` (or shards listed
in ``model.safetensors.index.json``) with these tensors (torch ``Linear`` weights are
``[out, in]``; ``E`` embed, ``F`` intermediate, ``f = F // k`` expert width, ``C`` input size)::

    model.embed_layer.emb_layer.weight                       [E, C]
    model.embed_layer.gate_layer.weight                      [E, C]
    model.layers.{i}.self_attn.q_proj.weight / .bias         [heads*hd, E] / [heads*hd]
    model.layers.{i}.self_attn.k_proj.weight / .bias         [kv*hd, E] / [kv*hd]
    model.layers.{i}.self_attn.v_proj.weight / .bias         [kv*hd, E] / [kv*hd]
    model.layers.{i}.self_attn.o_proj.weight                 [E, heads*hd]
    model.layers.{i}.ffn_layer.gate.weight                   [experts, E]
    model.layers.{i}.ffn_layer.experts.{j}.gate_proj.weight  [f, E]   (up_proj the same)
    model.layers.{i}.ffn_layer.experts.{j}.down_proj.weight  [E, f]
    model.layers.{i}.ffn_layer.shared_expert.gate_proj.weight [F, E]  (up_proj the same)
    model.layers.{i}.ffn_layer.shared_expert.down_proj.weight [E, F]
    model.layers.{i}.ffn_layer.shared_expert_gate.weight     [1, E]
    model.layers.{i}.input_layernorm.weight                  [E]
    model.layers.{i}.post_attention_layernorm.weight         [E]
    model.norm.weight                                        [E]
    lm_heads.{j}.out_layer.weight                            [C * horizon_j, E]

With ``use_dense`` the FFN is ``model.layers.{i}.ffn_layer.{gate,up,down}_proj.weight``.
Both RoPE implementations use the rotate-half layout, so q/k need no permutation.

Public API: :func:`to_hf_state_dict`, :func:`from_hf_state_dict`, :func:`hf_config`,
:func:`config_from_hf`, :func:`hf_layout`, :func:`save_hf`, :func:`load_hf`,
:func:`export_time_moe` (run dir -> HF dir), :func:`import_time_moe` (HF dir -> run dir),
:func:`write_safetensors` / :func:`read_safetensors` (over :mod:`jaxmoe.export.safetensors_io`).
The module-level ``model_types``, ``export_run``, ``import_run`` and ``hf_info`` make it the
``time_moe`` entry of :data:`jaxmoe.export.families.FAMILIES`, i.e. ``jaxmoe export --family
time_moe`` and ``jaxmoe import`` (family detected from ``model_type``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxmoe.config import Config, ConfigError, validate
from jaxmoe.models.time_moe import TimeMoEConfig

# ----------------------------------------------------------------------- safetensors


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``name -> array`` as one safetensors file."""
    from jaxmoe.export.safetensors_io import write_file

    write_file(path, tensors, metadata)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file or HF directory (single or sharded) as numpy."""
    from jaxmoe.export.safetensors_io import SafetensorsReader

    return dict(SafetensorsReader(path).items())


# ------------------------------------------------------------------------- layout


def _dims(m: TimeMoEConfig) -> dict[str, int]:
    from jaxmoe.models.time_moe import expert_width, ffn_width

    return dict(E=m.embed_dim, H=m.num_heads, KV=m.kv_heads, D=m.head_size, F=ffn_width(m), f=expert_width(m),
                N=m.moe.num_experts, C=m.input_size, L=m.num_layers)


def hf_layout(m: TimeMoEConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of a model with this config and its torch shape."""
    d = _dims(m)
    E, H, KV, D, F, f, N, C = (d[k] for k in ("E", "H", "KV", "D", "F", "f", "N", "C"))
    out = {"model.embed_layer.emb_layer.weight": (E, C), "model.embed_layer.gate_layer.weight": (E, C),
           "model.norm.weight": (E,)}
    for i in range(m.num_layers):
        pre = f"model.layers.{i}."
        out.update({
            pre + "self_attn.q_proj.weight": (H * D, E), pre + "self_attn.q_proj.bias": (H * D,),
            pre + "self_attn.k_proj.weight": (KV * D, E), pre + "self_attn.k_proj.bias": (KV * D,),
            pre + "self_attn.v_proj.weight": (KV * D, E), pre + "self_attn.v_proj.bias": (KV * D,),
            pre + "self_attn.o_proj.weight": (E, H * D),
            pre + "input_layernorm.weight": (E,), pre + "post_attention_layernorm.weight": (E,),
        })
        if m.use_dense:
            out.update({pre + "ffn_layer.gate_proj.weight": (F, E), pre + "ffn_layer.up_proj.weight": (F, E),
                        pre + "ffn_layer.down_proj.weight": (E, F)})
            continue
        out[pre + "ffn_layer.gate.weight"] = (N, E)
        for j in range(N):
            ex = pre + f"ffn_layer.experts.{j}."
            out.update({ex + "gate_proj.weight": (f, E), ex + "up_proj.weight": (f, E), ex + "down_proj.weight": (E, f)})
        sh = pre + "ffn_layer.shared_expert."
        out.update({sh + "gate_proj.weight": (F, E), sh + "up_proj.weight": (F, E), sh + "down_proj.weight": (E, F),
                    pre + "ffn_layer.shared_expert_gate.weight": (1, E)})
    for j, h in enumerate(m.horizons):
        out[f"lm_heads.{j}.out_layer.weight"] = (C * h, E)
    return out


def to_hf_state_dict(params, m: TimeMoEConfig) -> dict[str, np.ndarray]:
    """jaxmoe Time-MoE params -> HF tensor dict (numpy, same dtype as the params)."""
    m = m.model if isinstance(m, Config) else m
    p = _to_numpy(params)
    d = _dims(m)
    E = d["E"]
    T = lambda a: np.ascontiguousarray(np.asarray(a).T)
    out = {"model.embed_layer.emb_layer.weight": T(p["embed"]["emb"]),
           "model.embed_layer.gate_layer.weight": T(p["embed"]["gate"]),
           "model.norm.weight": np.asarray(p["final_norm"]["scale"])}
    lay = p["layers"]
    for i in range(m.num_layers):
        pre = f"model.layers.{i}."
        att = jax_tree_index(lay["mixer"], i)
        for name in ("q", "k", "v"):
            kern = att[name]["kernel"]  # [E, heads, hd]
            out[pre + f"self_attn.{name}_proj.weight"] = T(kern.reshape(E, -1))
            out[pre + f"self_attn.{name}_proj.bias"] = np.ascontiguousarray(att[name]["bias"].reshape(-1))
        out[pre + "self_attn.o_proj.weight"] = T(att["o"]["kernel"].reshape(-1, E))
        out[pre + "input_layernorm.weight"] = np.asarray(lay["mixer_norm"]["scale"][i])
        out[pre + "post_attention_layernorm.weight"] = np.asarray(lay["ffn_norm"]["scale"][i])
        ffn = jax_tree_index(lay["ffn"], i)
        if m.use_dense:
            for name in ("gate", "up", "down"):
                out[pre + f"ffn_layer.{name}_proj.weight"] = T(ffn[name])
            continue
        out[pre + "ffn_layer.gate.weight"] = T(ffn["router"]["kernel"])
        for j in range(d["N"]):
            for name in ("gate", "up", "down"):
                out[pre + f"ffn_layer.experts.{j}.{name}_proj.weight"] = T(ffn["experts"][name][j])
        for name in ("gate", "up", "down"):
            out[pre + f"ffn_layer.shared_expert.{name}_proj.weight"] = T(ffn["shared"][name])
        out[pre + "ffn_layer.shared_expert_gate.weight"] = T(ffn["shared_gate"]["kernel"])
    for j in range(len(m.horizons)):
        out[f"lm_heads.{j}.out_layer.weight"] = T(p["heads"][j]["kernel"])
    return out


def jax_tree_index(tree, i: int):
    """Row ``i`` of every leaf of a stacked (leading "layers" axis) tree."""
    if isinstance(tree, dict):
        return {k: jax_tree_index(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_to_numpy(v) for v in tree]
    return np.asarray(tree)


def from_hf_state_dict(tensors: dict[str, np.ndarray], m: TimeMoEConfig, dtype=None) -> dict:
    """HF tensor dict -> jaxmoe Time-MoE params (numpy arrays; cast to ``dtype`` if given).

    Raises ValueError naming the first missing, unexpected or mis-shaped tensor.
    """
    m = m.model if isinstance(m, Config) else m
    layout = hf_layout(m)
    missing = [k for k in layout if k not in tensors]
    if missing:
        raise ValueError(f"the checkpoint lacks tensor {missing[0]!r} ({len(missing)} missing); "
                         "is config.json from the same model?")
    extra = [k for k in tensors if k not in layout and "rotary_emb" not in k]
    if extra:
        raise ValueError(f"the checkpoint has unexpected tensor {extra[0]!r} ({len(extra)} unexpected).")
    for k, shape in layout.items():
        if tuple(tensors[k].shape) != tuple(shape):
            raise ValueError(f"tensor {k!r} has shape {tuple(tensors[k].shape)}, expected {tuple(shape)} from config.json.")
    d = _dims(m)
    E, H, KV, D, N = d["E"], d["H"], d["KV"], d["D"], d["N"]
    cast = (lambda a: np.asarray(a, dtype=dtype)) if dtype is not None else np.asarray
    T = lambda name: cast(np.ascontiguousarray(tensors[name].T))
    stack = lambda rows: np.stack(rows)
    L = m.num_layers
    pre = lambda i: f"model.layers.{i}."
    mixer = {
        "q": {"kernel": stack([T(pre(i) + "self_attn.q_proj.weight").reshape(E, H, D) for i in range(L)]),
              "bias": stack([cast(tensors[pre(i) + "self_attn.q_proj.bias"]).reshape(H, D) for i in range(L)])},
        "k": {"kernel": stack([T(pre(i) + "self_attn.k_proj.weight").reshape(E, KV, D) for i in range(L)]),
              "bias": stack([cast(tensors[pre(i) + "self_attn.k_proj.bias"]).reshape(KV, D) for i in range(L)])},
        "v": {"kernel": stack([T(pre(i) + "self_attn.v_proj.weight").reshape(E, KV, D) for i in range(L)]),
              "bias": stack([cast(tensors[pre(i) + "self_attn.v_proj.bias"]).reshape(KV, D) for i in range(L)])},
        "o": {"kernel": stack([T(pre(i) + "self_attn.o_proj.weight").reshape(H, D, E) for i in range(L)])},
    }
    if m.use_dense:
        ffn = {name: stack([T(pre(i) + f"ffn_layer.{name}_proj.weight") for i in range(L)])
               for name in ("gate", "up", "down")}
    else:
        ffn = {
            "router": {"kernel": stack([T(pre(i) + "ffn_layer.gate.weight") for i in range(L)])},
            "experts": {name: stack([stack([T(pre(i) + f"ffn_layer.experts.{j}.{name}_proj.weight") for j in range(N)])
                                     for i in range(L)]) for name in ("gate", "up", "down")},
            "shared": {name: stack([T(pre(i) + f"ffn_layer.shared_expert.{name}_proj.weight") for i in range(L)])
                       for name in ("gate", "up", "down")},
            "shared_gate": {"kernel": stack([T(pre(i) + "ffn_layer.shared_expert_gate.weight") for i in range(L)])},
        }
    return {
        "embed": {"gate": T("model.embed_layer.gate_layer.weight"), "emb": T("model.embed_layer.emb_layer.weight")},
        "layers": {
            "mixer_norm": {"scale": stack([cast(tensors[pre(i) + "input_layernorm.weight"]) for i in range(L)])},
            "mixer": mixer,
            "ffn_norm": {"scale": stack([cast(tensors[pre(i) + "post_attention_layernorm.weight"]) for i in range(L)])},
            "ffn": ffn,
        },
        "final_norm": {"scale": cast(tensors["model.norm.weight"])},
        "heads": [{"kernel": T(f"lm_heads.{j}.out_layer.weight")} for j in range(len(m.horizons))],
    }


# ------------------------------------------------------------------------- config


def hf_config(m: TimeMoEConfig) -> dict[str, Any]:
    """``config.json`` contents of a ``TimeMoeForPrediction`` model."""
    m = m.model if isinstance(m, Config) else m
    from jaxmoe.models.time_moe import ffn_width

    return {
        "architectures": ["TimeMoeForPrediction"],
        "model_type": "time_moe",
        "hidden_size": m.embed_dim,
        "intermediate_size": ffn_width(m),
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.kv_heads,
        "num_experts": m.moe.num_experts,
        "num_experts_per_tok": m.moe.experts_per_token,
        "horizon_lengths": list(m.horizons),
        "input_size": m.input_size,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "router_aux_loss_factor": m.aux_loss_coef,
        "apply_aux_loss": bool(m.aux_loss_coef > 0),
        "use_dense": bool(m.use_dense),
        "hidden_act": "silu",
        "initializer_range": m.init_std,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "bfloat16" if m.param_dtype == "bfloat16" else "float32",
    }


def config_from_hf(hf: dict[str, Any], base: Config | None = None, output_dir: str | None = None) -> Config:
    """A jaxmoe Config (family time_moe) from a Time-MoE ``config.json`` dict."""
    if hf.get("model_type", "time_moe") != "time_moe":
        raise ConfigError(f"config.json has model_type {hf.get('model_type')!r}; expected 'time_moe'.")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"config.json has hidden_act {act!r}; only silu Time-MoE models are supported.")
    try:
        embed = int(hf["hidden_size"])
        heads = int(hf["num_attention_heads"])
        kv = int(hf.get("num_key_value_heads") or heads)
        given = base is not None
        base = base or Config(model=TimeMoEConfig())
        start = base.model
        if not isinstance(start, TimeMoEConfig):  # keep what another family's config shares with Time-MoE
            shared = {f.name for f in dataclasses.fields(TimeMoEConfig)} - {"family"}
            start = TimeMoEConfig(**{f.name: getattr(start, f.name) for f in dataclasses.fields(start)
                                     if f.name in shared})
        moe = dataclasses.replace(start.moe, num_experts=int(hf.get("num_experts", 8)),
                                  experts_per_token=int(hf.get("num_experts_per_tok", 2)))
        aux = float(hf.get("router_aux_loss_factor", 0.02)) if hf.get("apply_aux_loss", True) else 0.0
        model = dataclasses.replace(
            start, embed_dim=embed, num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=0 if kv == heads else kv, head_dim=0,
            ffn_dim=int(hf.get("intermediate_size", 4 * embed)), horizons=tuple(int(h) for h in hf.get("horizon_lengths", (1,))),
            input_size=int(hf.get("input_size", 1)), max_seq_len=int(hf.get("max_position_embeddings", 4096)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=float(hf.get("rope_theta", 10000.0)),
            aux_loss_coef=aux, use_dense=bool(hf.get("use_dense", False)),
            init_std=float(hf.get("initializer_range", 0.02)), moe=moe)
    except KeyError as e:
        raise ConfigError(f"config.json lacks the key {e.args[0]!r} of a Time-MoE model.") from None
    data = dataclasses.replace(base.data, sources=base.data.sources or ("synthetic",),
                               seq_len=min(base.data.seq_len if given else 512, model.max_seq_len))
    train = base.train if output_dir is None else dataclasses.replace(base.train, output_dir=str(output_dir))
    cfg = dataclasses.replace(base, model=model, data=data, train=train)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------- I/O


def save_hf(params, cfg, out_dir: str | Path, shard_size: int | str = "2GB", dtype: str = "float32") -> dict:
    """Write ``config.json`` + ``model.safetensors`` (sharded with an index above
    ``shard_size``) in the HF layout, tensors cast to ``dtype``. Returns a summary."""
    from jaxmoe.export.safetensors_io import ShardedWriter

    m = cfg.model if isinstance(cfg, Config) else cfg
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": None}.get(dtype, "bad")
    if isinstance(np_dtype, str):
        raise ConfigError(f"export dtype {dtype!r} is not valid; choose one of float32, bfloat16, float16.")
    if np_dtype is None:
        import ml_dtypes

        np_dtype = ml_dtypes.bfloat16
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = hf_config(m)
    hf["torch_dtype"] = dtype
    writer = ShardedWriter(out, shard_size)
    for name, tensor in to_hf_state_dict(params, m).items():
        writer.add(name, np.ascontiguousarray(tensor.astype(np_dtype)))
    files = writer.close()
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return {"family": "time_moe", "out_dir": str(out), "files": [f.name for f in files],
            "num_params": writer.num_params, "total_size": writer.total_size}


def read_hf_tensors(hf_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory (single file or sharded with an index)."""
    hf_dir = Path(hf_dir)
    if not any(hf_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"no model.safetensors (or sharded safetensors) in {hf_dir}.")
    return read_safetensors(hf_dir)


def load_hf(hf_dir: str | Path, base: Config | None = None, output_dir: str | None = None):
    """``(Config, params)`` from a Hugging Face Time-MoE directory (params as float32 numpy
    unless the config asks for bf16 params)."""
    hf_dir = Path(hf_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"no config.json in {hf_dir}; point --hf at a Hugging Face model directory.")
    try:
        hf = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path} is not valid JSON ({e.msg}).") from None
    cfg = config_from_hf(hf, base, output_dir)
    tensors = read_hf_tensors(hf_dir)
    try:
        params = from_hf_state_dict(tensors, cfg.model, np.float32 if cfg.model.param_dtype == "float32" else None)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg, params


def export_time_moe(run_dir: str | Path, out_dir: str | Path, step: int | None = None, *,
                    shard_size: int | str = "2GB", dtype: str = "float32") -> dict:
    """Export a trained jaxmoe Time-MoE run (latest checkpoint unless ``step``) to an HF directory."""
    from jaxmoe.checkpoint import load_params

    cfg, params = load_params(run_dir, step)
    if cfg.model.family != "time_moe":
        raise ConfigError(f"the run in {run_dir} is a {cfg.model.family} model; --family time_moe needs a time_moe run.")
    return save_hf(params, cfg, out_dir, shard_size, dtype)


def write_run(cfg: Config, params, run_dir: str | Path, step: int = 0, meta: dict | None = None) -> Path:
    """Write ``params`` as a jaxmoe run directory (config.yaml + a params-only orbax
    checkpoint at ``step``, :func:`jaxmoe.checkpoint.save_params`), loadable with
    ``load_params``/``--checkpoint``; ``jaxmoe train --resume`` continues it with a fresh
    optimizer state."""
    from jaxmoe.checkpoint import save_params

    run_dir = Path(run_dir)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(run_dir)))
    return save_params(run_dir, cfg, params, step=step, meta=meta)


def import_time_moe(hf_dir: str | Path, out_run_dir: str | Path, base: Config | None = None) -> Path:
    """Import an HF Time-MoE directory as a jaxmoe run directory (checkpoint at step 0)."""
    cfg, params = load_hf(hf_dir, base, str(out_run_dir))
    return write_run(cfg, params, out_run_dir, 0, {"imported_from": str(Path(hf_dir).absolute())})


# ------------------------------------------- hooks for jaxmoe.export.families (CLI)

name = "time_moe"
model_types = ("time_moe",)
architecture = "TimeMoeForPrediction"


def export_run(run_dir, out_dir, *, shard_size="2GB", step=None, dtype="float32") -> dict:
    """``jaxmoe export --family time_moe`` entry point."""
    return export_time_moe(run_dir, out_dir, step, shard_size=shard_size, dtype=dtype)


def import_run(hf_dir, out_run_dir) -> Path:
    """``jaxmoe import`` entry point (model_type ``time_moe``)."""
    return import_time_moe(hf_dir, out_run_dir)


def hf_info(hf_dir) -> dict[str, Any]:
    """Sizes and parameter counts of an HF Time-MoE directory."""
    from jaxmoe.export.safetensors_io import SafetensorsReader
    from jaxmoe.models import param_counts

    hf_dir = Path(hf_dir)
    cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    reader = SafetensorsReader(hf_dir)
    counts = param_counts(cfg.model)
    m = cfg.model
    return {"family": "time_moe", "model_type": "time_moe", "architecture": architecture, "embed_dim": m.embed_dim,
            "ffn_dim": m.ffn_dim, "num_layers": m.num_layers, "num_heads": m.num_heads,
            "num_experts": m.moe.num_experts, "experts_per_token": m.moe.experts_per_token,
            "horizons": list(m.horizons), "use_dense": m.use_dense, "max_seq_len": m.max_seq_len,
            "stored_params": sum(int(np.prod(reader.shape(n))) for n in reader.names()),
            "params": counts["total"], "active_params": counts["active"], "files": len(reader.paths)}
