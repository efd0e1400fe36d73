"""Frozen, hashable configuration dataclasses, YAML loading and dotted overrides.

A run is described by one :class:`Config` with five sections::

    model:  ModelConfig   (architecture; model.moe: MoEConfig)
    data:   DataConfig
    train:  TrainConfig
    mesh:   MeshConfig

``load_config("configs/lm_tiny.yaml", ["model.moe.num_experts=16", "train.steps=50"])``
reads the YAML file, applies the overrides and validates everything. Unknown keys and
invalid values raise :class:`ConfigError` with one sentence naming the valid choices.
Configs are frozen dataclasses, so they are hashable and can be passed to ``jax.jit``
as static arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


from jaxmoe.errors import ConfigError  # noqa: F401  (re-exported: jaxmoe.config.ConfigError)


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-Experts feed-forward layers (DeepSeekMoE / Mixtral / Qwen-MoE family)."""

    num_experts: int = 8
    experts_per_token: int = 2
    expert_ffn_dim: int = 256
    num_shared_experts: int = 0
    shared_ffn_dim: int = 0  # per shared expert; 0 -> expert_ffn_dim
    shared_expert_gate: bool = False  # Qwen2-MoE: scale shared output by sigmoid(x @ w)
    router: Literal["topk", "topp", "thor", "readme", "moex"] = "topk"
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk: bool = False  # renormalise the top-k weights to sum to 1
    selection_bias: bool = False  # DeepSeek-V3: per-expert bias used for selection only
    bias_update_rate: float = 0.0  # aux-loss-free balancing: bias += rate * sign(mean - load)
    routed_scaling_factor: float = 1.0
    num_groups: int = 1  # group-limited routing (DeepSeek-V3)
    topk_groups: int = 1
    top_p: float = 0.4  # dynamic top-p routing threshold
    first_k_dense: int = 0
    moe_every: int = 1
    dense_ffn_dim: int = 0  # FFN width of dense layers; 0 -> 4 * embed_dim
    dispatch: Literal["dropless", "capacity", "dense"] = "dropless"
    capacity_factor: float = 1.25
    gmm_backend: Literal["auto", "xla", "xla_vjp", "pallas_mgpu", "megablox"] = "auto"
    balance_loss: Literal["expert", "switch", "none"] = "expert"
    balance_coef: float = 0.01
    seq_aux: bool = False  # DeepSeekMoE sequence-wise balance loss
    device_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    dynamic_loss_coef: float = 1e-4  # top-p entropy loss
    router_jitter: float = 0.0
    # routing variants (specs/routing.md)
    max_experts_per_token: int = 0  # top-p: most experts a token may use (0 -> num_experts)
    thor_consistency_coef: float = 1.0  # THOR: alpha of the two-pass consistency (symmetric KL) loss
    thor_draw: Literal["batch", "token", "sequence"] = "batch"  # THOR: one random expert per layer per ...
    thor_inference: Literal["token", "sequence"] = "token"  # THOR: draw used by the decoders
    readme_dim: int = 64  # Read-ME pre-gating router network width
    readme_layers: int = 2
    readme_heads: int = 4
    num_compressed_experts: int = 0  # of the top-k, the last n are IA3 "compressed" experts
    expert_activation: Literal["silu", "relu"] = "silu"  # GLU nonlinearity of the experts (relu: MoE-X)
    moex_sparsity_coef: float = 1.0  # MoE-X: logits -= coef * expected active fraction of each expert


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder language model (and, through ``family``, the other model families)."""

    family: Literal["lm", "time_moe", "moirai_moe", "s_mamba", "spacetime", "lssl_classifier"] = "lm"
    vocab_size: int = 259
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 0  # 0 -> num_heads
    head_dim: int = 0  # 0 -> embed_dim // num_heads
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    qk_norm: bool = False
    qk_norm_scope: Literal["head", "full"] = "head"  # RMSNorm per head (Qwen3) or over the whole q/k projection (OLMoE)
    attention_type: Literal["mha", "mla"] = "mha"  # mla: Multi-head Latent Attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0  # MLA: low-rank query compression (0 -> plain query projection)
    kv_lora_rank: int = 64  # MLA: width of the cached key/value latent
    qk_nope_head_dim: int = 32  # MLA: per-head query/key dims without RoPE
    qk_rope_head_dim: int = 16  # MLA: per-head query dims (and shared key dims) with RoPE
    v_head_dim: int = 32  # MLA: per-head value dim
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    init_std: float = 0.02
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention_impl: Literal["auto", "xla", "cudnn"] = "auto"
    layer_pattern: tuple[str, ...] = ()  # hybrid stacks, e.g. ("mamba", "attn"); empty -> all "attn"
    ssm_state_dim: int = 16
    ssm_conv_dim: int = 4
    ssm_expand: int = 2
    moe: MoEConfig = MoEConfig()
    # Time-MoE (family time_moe): FFN width (0 -> 4 * embed_dim; routed experts get ffn_dim // k),
    # forecast heads, point dimension, dense FFNs instead of MoE, router aux-loss weight
    ffn_dim: int = 0
    horizons: tuple[int, ...] = (1, 8, 32, 64)
    input_size: int = 1
    use_dense: bool = False
    aux_loss_coef: float = 0.02
    # Moirai-MoE style (family moirai_moe): points per patch token, components of the mixture
    # distribution head, and the MoE gating: a learned top-k router, or fixed per-layer centroids
    # ("centroid": top-k of the distances as in the released code; "centroid_nearest": the k nearest)
    patch_size: int = 16
    mixture_components: tuple[str, ...] = ("student_t", "normal_fixed", "negative_binomial", "log_normal")
    moirai_gating: Literal["learned", "centroid", "centroid_nearest"] = "learned"
    # state-space families (specs/ssm.md). s_mamba / spacetime: lookback window and forecast horizon
    # (state size ssm_state_dim, FFN width ffn_dim, per-window instance normalisation);
    # lssl_classifier: classes and pooling (inputs are ids < vocab_size); dropout of all three;
    # spacetime: fixed preprocessing kernels and loss weights (horizon, lag, next input)
    lookback: int = 96
    horizon: int = 24
    instance_norm: bool = True
    num_classes: int = 10
    pooling: Literal["mean", "last"] = "mean"
    dropout_rate: float = 0.0
    preprocess_diff_orders: tuple[int, ...] = (0, 1, 2)
    preprocess_ma_windows: tuple[int, ...] = ()
    loss_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    extra: tuple[tuple[str, Any], ...] = ()  # family-specific options as (key, value) pairs

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: Optional[str] = None  # None -> the embedded default corpus
    tokenizer: str = "byte"  # "byte" or a path to a Hugging Face tokenizers JSON file
    seq_len: int = 128
    eval_fraction: float = 0.05
    text_field: str = "text"
    shuffle: bool = True
    # time-series families: window sources ("synthetic", "synthetic:N", "real", "real:NAME",
    # "csv:PATH:COLUMN", "parquet:PATH:COLUMN"), their mixing weights (empty -> equal) and the
    # window stride (0 -> seq_len); seq_len is the context length
    sources: tuple[str, ...] = ()
    source_weights: tuple[float, ...] = ()
    stride: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    output_dir: str = "runs/default"
    log_every: int = 10
    eval_every: int = 0  # 0 -> only at the end
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_consecutive_skips: int = 5
    progress: bool = True
    tensorboard: bool = False
    spike_factor: float = 3.0  # log a loss spike when loss > spike_factor x running mean (0 = off)
    plateau_window: int = 100  # after warmup, warn when loss or router load did not move over this many steps (0 = off)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axes; -1 means "all remaining devices" (at most one axis)."""

    data: int = -1
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1
    all_to_all: Literal["padded", "ragged", "auto"] = "auto"
    rules: tuple[tuple[str, Any], ...] = ()  # overrides of the logical-axis rules
    num_devices: int = 0  # use the first N devices (0 = all); single-host experiments
    exchange_capacity: float = 0.0  # expert-parallel buffers: 0 = exact worst case (no drops), x = x * mean load


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()


# ------------------------------------------------------------------ dict <-> dataclass


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}.")
        return _from_dict(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} is not valid; choose one of {', '.join(map(repr, args))}.")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
        if value is None:
            value = []
        if isinstance(value, dict):
            value = list(value.items())
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}.") from None
        if not f.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}.") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return str(value)
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_error(cls, key: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    prefix = f"{where}." if where else ""
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}; valid keys are: {', '.join(names)}.")


def _from_dict(cls, data: dict, where: str = ""):
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key_error(cls, key, where)
        sub = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, types_[key], sub)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain nested dict (YAML/JSON friendly) of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = [list(x) if isinstance(x, tuple) else x for x in v]
        out[f.name] = v
    return out


def from_dict(data: dict) -> Config:
    cfg = _from_dict(Config, data or {})
    validate(cfg)
    return cfg


def replace(cfg, **changes):
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------ overrides


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cls = Config
    node = data
    for i, part in enumerate(parts):
        types_ = _field_types(cls)
        where = ".".join(parts[:i])
        if part not in types_:
            raise _unknown_key_error(cls, part, where)
        if i == len(parts) - 1:
            node[part] = value
            return
        tp = types_[part]
        if not _is_dataclass_type(tp):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set '{dotted}'.")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' must be a mapping in the YAML file.")
        cls = tp


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars/lists)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.steps=100).")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or defaults when ``path`` is None), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist.")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must contain a mapping of sections.")
    data = apply_overrides(data, overrides or [])
    return from_dict(data)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------- validation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Cross-field checks; raises ConfigError with one sentence."""
    m, moe, t, d = cfg.model, cfg.model.moe, cfg.train, cfg.data
    for name in ("vocab_size", "embed_dim", "num_layers", "num_heads", "max_seq_len"):
        _check(getattr(m, name) > 0, f"model.{name} must be positive, got {getattr(m, name)}.")
    _check(m.num_kv_heads >= 0 and m.head_dim >= 0, "model.num_kv_heads and model.head_dim must be >= 0 (0 = default).")
    if not m.head_dim:
        _check(m.embed_dim % m.num_heads == 0,
               f"model.num_heads={m.num_heads} must divide model.embed_dim={m.embed_dim} (or set model.head_dim).")
    _check(m.num_heads % m.kv_heads == 0,
           f"model.num_kv_heads={m.kv_heads} must divide model.num_heads={m.num_heads}.")
    _check(m.head_size % 2 == 0, f"the head dimension ({m.head_size}) must be even for RoPE.")
    if m.attention_type == "mla":
        _check(m.kv_lora_rank > 0 and m.v_head_dim > 0 and m.qk_nope_head_dim >= 0 and m.q_lora_rank >= 0,
               "model.kv_lora_rank and model.v_head_dim must be positive, model.qk_nope_head_dim and "
               "model.q_lora_rank >= 0 (0 = plain query projection) for attention_type=mla.")
        _check(m.qk_rope_head_dim > 0 and m.qk_rope_head_dim % 2 == 0,
               f"model.qk_rope_head_dim={m.qk_rope_head_dim} must be positive and even for attention_type=mla.")
    valid_kinds = ("attn", "mamba", "diag_ssm")
    for kind in m.layer_pattern:
        _check(kind in valid_kinds,
               f"model.layer_pattern entry {kind!r} is not valid; choose from {', '.join(valid_kinds)}.")
    _check(moe.num_experts >= 1, f"model.moe.num_experts must be >= 1, got {moe.num_experts}.")
    _check(1 <= moe.experts_per_token <= moe.num_experts,
           f"model.moe.experts_per_token={moe.experts_per_token} must be between 1 and "
           f"model.moe.num_experts={moe.num_experts}.")
    _check(moe.expert_ffn_dim > 0, "model.moe.expert_ffn_dim must be positive.")
    _check(moe.num_shared_experts >= 0, "model.moe.num_shared_experts must be >= 0.")
    _check(moe.moe_every >= 1, "model.moe.moe_every must be >= 1.")
    _check(0 <= moe.first_k_dense <= m.num_layers,
           f"model.moe.first_k_dense={moe.first_k_dense} must be between 0 and model.num_layers={m.num_layers}.")
    _check(moe.capacity_factor > 0, "model.moe.capacity_factor must be positive.")
    _check(0.0 < moe.top_p <= 1.0, f"model.moe.top_p={moe.top_p} must be in (0, 1].")
    _check(0 <= moe.max_experts_per_token <= moe.num_experts,
           f"model.moe.max_experts_per_token={moe.max_experts_per_token} must be between 0 (all) and "
           f"model.moe.num_experts={moe.num_experts}.")
    _check(0 <= moe.num_compressed_experts < moe.experts_per_token,
           f"model.moe.num_compressed_experts={moe.num_compressed_experts} must be between 0 and "
           f"model.moe.experts_per_token-1={moe.experts_per_token - 1}.")
    if moe.num_compressed_experts:
        _check(moe.router in ("topk", "moex", "readme"),
               "model.moe.num_compressed_experts needs router topk, moex or readme.")
    if moe.router == "readme":
        _check(moe.readme_dim > 0 and moe.readme_layers >= 1 and moe.readme_heads >= 1
               and moe.readme_dim % moe.readme_heads == 0 and (moe.readme_dim // moe.readme_heads) % 2 == 0,
               f"model.moe.readme_heads={moe.readme_heads} must divide model.moe.readme_dim={moe.readme_dim} "
               "into an even head size, with readme_layers >= 1.")
        _check(not moe.selection_bias and moe.num_groups == 1,
               "model.moe.router=readme shares one expert choice across layers; it cannot use selection_bias or "
               "num_groups > 1.")
    _check(moe.num_groups >= 1 and moe.num_experts % moe.num_groups == 0,
           f"model.moe.num_groups={moe.num_groups} must divide model.moe.num_experts={moe.num_experts}.")
    _check(1 <= moe.topk_groups <= moe.num_groups,
           f"model.moe.topk_groups={moe.topk_groups} must be between 1 and model.moe.num_groups={moe.num_groups}.")
    if moe.num_groups > 1:
        per_group = moe.num_experts // moe.num_groups
        _check(moe.topk_groups * per_group >= moe.experts_per_token,
               "model.moe.topk_groups groups do not hold experts_per_token experts.")
    _check(d.seq_len > 0, "data.seq_len must be positive.")
    _check(d.seq_len <= m.max_seq_len,
           f"data.seq_len={d.seq_len} exceeds model.max_seq_len={m.max_seq_len}.")
    _check(0.0 <= d.eval_fraction < 1.0, "data.eval_fraction must be in [0, 1).")
    _check(t.steps >= 0, "train.steps must be >= 0.")
    _check(t.batch_size > 0, "train.batch_size must be positive.")
    _check(t.learning_rate > 0 and math.isfinite(t.learning_rate), "train.learning_rate must be a positive number.")
    _check(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1].")
    _check(t.warmup_steps >= 0, "train.warmup_steps must be >= 0.")
    _check(t.log_every >= 1, "train.log_every must be >= 1.")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0 = only at the end).")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1.")
    _check(t.max_consecutive_skips >= 1, "train.max_consecutive_skips must be >= 1.")
    _check(t.plateau_window >= 0, f"train.plateau_window={t.plateau_window} must be >= 0 (0 = off).")
    _check(t.spike_factor == 0 or t.spike_factor > 1,
           f"train.spike_factor={t.spike_factor} must be 0 (off) or greater than 1.")
    if m.family == "time_moe":
        _check(len(m.horizons) > 0 and all(h >= 1 for h in m.horizons) and len(set(m.horizons)) == len(m.horizons),
               f"model.horizons={list(m.horizons)} must be distinct positive integers, e.g. [1, 8, 32, 64].")
        _check(m.input_size >= 1 and m.ffn_dim >= 0 and m.aux_loss_coef >= 0,
               "model.input_size must be >= 1, model.ffn_dim >= 0 (0 = 4 * embed_dim), model.aux_loss_coef >= 0.")
    if m.family == "moirai_moe":
        comps = ("student_t", "normal", "normal_fixed", "negative_binomial", "log_normal")
        _check(m.patch_size >= 1 and d.seq_len % m.patch_size == 0,
               f"data.seq_len={d.seq_len} must be a positive multiple of model.patch_size={m.patch_size}.")
        _check(len(m.mixture_components) > 0 and len(set(m.mixture_components)) == len(m.mixture_components)
               and all(c in comps for c in m.mixture_components)
               and any(c in comps[:3] for c in m.mixture_components),
               f"model.mixture_components={list(m.mixture_components)} must be distinct names from {', '.join(comps)}, "
               "including one of student_t, normal, normal_fixed (negative values need a real-valued component).")
    if m.family in ("s_mamba", "spacetime", "lssl_classifier"):
        _check(m.lookback >= 1 and m.horizon >= 1 and m.num_classes >= 2 and 0.0 <= m.dropout_rate < 1.0,
               "model.lookback and model.horizon must be >= 1, model.num_classes >= 2 and model.dropout_rate in [0, 1).")
    if m.family == "spacetime":
        taps = [o + 1 for o in m.preprocess_diff_orders] + list(m.preprocess_ma_windows)
        _check(len(m.loss_weights) == 3 and all(w >= 0 for w in m.loss_weights),
               f"model.loss_weights={list(m.loss_weights)} must be 3 numbers >= 0 (horizon, lag, next input).")
        _check(bool(taps) and all(o >= 0 for o in m.preprocess_diff_orders)
               and all(w >= 1 for w in m.preprocess_ma_windows) and max(taps) <= m.ssm_state_dim,
               "model.preprocess_diff_orders (>= 0) and model.preprocess_ma_windows (>= 1) must name at least one "
               f"kernel, each no longer than model.ssm_state_dim={m.ssm_state_dim} taps.")
    _check(d.stride >= 0, "data.stride must be >= 0 (0 = data.seq_len).")
    _check(not d.source_weights or len(d.source_weights) == len(d.sources),
           f"data.source_weights has {len(d.source_weights)} entries but data.sources has {len(d.sources)}; "
           "give one weight per source or none.")
    _check(all(w > 0 for w in d.source_weights), "data.source_weights must all be positive.")
    mesh = cfg.mesh
    sizes = [mesh.data, mesh.fsdp, mesh.expert, mesh.tensor]
    _check(all(s == -1 or s >= 1 for s in sizes), "mesh axis sizes must be >= 1 or -1 (the rest).")
    _check(sum(s == -1 for s in sizes) <= 1, "at most one mesh axis may be -1.")
    if mesh.expert > 1:
        _check(moe.num_experts % mesh.expert == 0,
               f"mesh.expert={mesh.expert} must divide model.moe.num_experts={moe.num_experts}.")
    _check(mesh.num_devices >= 0, "mesh.num_devices must be >= 0 (0 = all devices).")
    _check(mesh.exchange_capacity >= 0, "mesh.exchange_capacity must be >= 0 (0 = exact worst-case buffers).")
    if mesh.rules:
        from jaxmoe.parallel.sharding import make_rules

        make_rules(mesh.rules)  # raises ConfigError naming the bad entry


def layer_kinds(m: ModelConfig) -> list[tuple[str, str]]:
    """Per layer ``(mixer, ffn)``: mixer in {attn, mamba, diag_ssm}; ffn in {moe, dense}."""
    pattern = m.layer_pattern or ("attn",)
    out = []
    for i in range(m.num_layers):
        mixer = pattern[i % len(pattern)]
        is_moe = i >= m.moe.first_k_dense and (i + 1 - m.moe.first_k_dense) % m.moe.moe_every == 0
        out.append((mixer, "moe" if is_moe else "dense"))
    return out
