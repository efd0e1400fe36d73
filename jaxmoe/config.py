"""Frozen, hashable configuration dataclasses, YAML loading and dotted overrides.

A run is described by one :class:`Config` with four sections::

    model:  a family's config class (a ModelConfig subclass, chosen by model.family)
    data:   DataConfig
    train:  TrainConfig
    mesh:   MeshConfig

``load_config("configs/lm_tiny.yaml", ["model.moe.num_experts=16", "train.steps=50"])``
reads the YAML file (after its ``base:`` file, if it names one), applies the overrides and
validates everything. Unknown keys and invalid values raise :class:`ConfigError` with one
sentence naming the valid choices. Configs are frozen dataclasses, so they are hashable and
can be passed to ``jax.jit`` as static arguments.

This module is the bottom of the package: it knows the common sections and nothing of the
models. Each family's model config lives beside its model (``jaxmoe.models.lm.LMConfig``,
...) and is found through :data:`MODEL_CONFIGS` (``"module:Class"`` strings imported on
first use), so nothing here imports ``models/`` or ``parallel/``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from jaxmoe.errors import ConfigError  # noqa: F401  (re-exported: jaxmoe.config.ConfigError)

DEFAULT_FAMILY = "lm"

# model.family -> its config class, "module:Class" (imported when first needed)
MODEL_CONFIGS: dict[str, str] = {
    "lm": "jaxmoe.models.lm:LMConfig",
    "time_moe": "jaxmoe.models.time_moe:TimeMoEConfig",
    "moirai_moe": "jaxmoe.models.moirai_moe:MoiraiMoEConfig",
    "s_mamba": "jaxmoe.models.s_mamba:SMambaConfig",
    "spacetime": "jaxmoe.models.spacetime:SpaceTimeConfig",
    "lssl_classifier": "jaxmoe.models.lssl_classifier:LSSLClassifierConfig",
}

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# where a bare config name (`--config lm_tiny`, `base: lm_tiny.yaml`) is looked up when no such file
# exists: the configs installed inside the package (the wheel ships them as jaxmoe/configs; in a
# checkout jaxmoe/configs links to configs/), then the checkout's configs/
SHIPPED_CONFIG_DIRS = (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] / "configs")


def shipped_config(name: str) -> Path | None:
    """The shipped config called ``name`` (``lm_tiny`` or ``lm_tiny.yaml``), or None when
    ``name`` is not a bare file name or no shipped config has it."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None
    for d in SHIPPED_CONFIG_DIRS:
        for n in (name, f"{name}.yaml"):
            if (d / n).is_file():
                return d / n
    return None


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every family's model config: the fields all families share.

    Subclasses (one per family, beside the model) add their fields, narrow ``family`` to
    their own name and extend :meth:`validate`. Use :func:`model_config_class` to get the
    class of a family.
    """

    family: str = DEFAULT_FAMILY
    embed_dim: int = 128
    num_layers: int = 2

    def __post_init__(self):
        if type(self) is ModelConfig:
            raise TypeError("ModelConfig is the base class of the model configs; build a family's class instead, "
                            "e.g. jaxmoe.models.lm.LMConfig (see jaxmoe.config.model_config_class).")

    def validate(self, cfg: "Config") -> None:
        """Cross-field checks of this model config within the run ``cfg``; raises ConfigError."""
        for name in ("embed_dim", "num_layers"):
            check(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}.")


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
    # leakage control for every time-series source: dataset/series names or globs to leave out,
    # and CSV/Parquet files or folders whose series are left out by content (a shared run of
    # 16 values), whatever name they ship under
    exclude: tuple[str, ...] = ()
    exclude_like: tuple[str, ...] = ()
    num_threads: int = 0  # grain read threads for time-series windows (0 = in the training thread)


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
    optimizer_state_dtype: Literal["float32", "bfloat16"] = "float32"  # AdamW moments (bfloat16: half the memory)


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


def _default_model() -> ModelConfig:
    return model_config_class(DEFAULT_FAMILY)()


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=_default_model)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()


# ---------------------------------------------------------------- model family registry


def model_config_class(family: str) -> type:
    """The config class of ``model.family`` (imported on first use); ConfigError if unknown."""
    if not isinstance(family, str) or family not in MODEL_CONFIGS:
        raise ConfigError(f"model.family={family!r} is not valid; choose one of {', '.join(map(repr, MODEL_CONFIGS))}.")
    module, name = MODEL_CONFIGS[family].split(":")
    return getattr(importlib.import_module(module), name)


def parse_mesh_rules(overrides) -> dict[str, tuple[str, ...]]:
    """``mesh.rules`` pairs ``(logical axis, mesh axes)`` as ``{logical: (mesh axes, ...)}``;
    raises ConfigError naming the bad entry (the table they override lives in
    ``jaxmoe.parallel.sharding``)."""
    items = overrides.items() if isinstance(overrides, typing.Mapping) else overrides
    out = {}
    for item in items or ():
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ConfigError(f"mesh.rules entries must be pairs [logical_axis, mesh_axes], got {item!r}.")
        name, value = item
        out[str(name)] = _mesh_axes(value, f"mesh.rules entry for {name!r}")
    return out


def _mesh_axes(value: Any, where: str) -> tuple[str, ...]:
    if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "null")):
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a mesh axis name, a list of them or null, got {value!r}.")
    for v in value:
        if v not in MESH_AXES:
            raise ConfigError(f"{where} names mesh axis {v!r}; choose from {', '.join(MESH_AXES)}.")
    return tuple(str(v) for v in value)


# ------------------------------------------------------------------ dict <-> dataclass


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return f"one of {', '.join(map(repr, typing.get_args(tp)))}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            what = "model fields" if tp is ModelConfig else f"{tp.__name__} fields"
            raise ConfigError(f"{where} must be a mapping of {what}, got {value!r}.")
        return _from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}={value!r} is not valid; choose {_describe(tp)}.")
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), where)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), where)
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    return value


def _coerce_union(value: Any, args: tuple, where: str) -> Any:
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    inner = [a for a in args if a is not type(None)]
    if len(inner) == 1:
        return _coerce(value, inner[0], where)
    for alternative in inner:  # e.g. float | Literal["zoh"]: the first that fits
        try:
            return _coerce(value, alternative, where)
        except ConfigError:
            pass
    raise ConfigError(f"{where}={value!r} is not valid; give {' or '.join(map(_describe, inner))}.")


def _coerce_tuple(value: Any, args: tuple, where: str) -> tuple:
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


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{where} must be true or false, got {value!r}.")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        f = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        f = None
    if f is None or not f.is_integer():
        raise ConfigError(f"{where} must be an integer, got {value!r}.")
    return int(f)


def _to_float(value: Any, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}.") from None


def _to_str(value: Any, where: str) -> str:
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where} must be a string, got {value!r}.")
    return str(value)


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_error(cls, key: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    prefix = f"{where}." if where else ""
    scope = ""
    if issubclass(cls, ModelConfig) and cls is not ModelConfig:
        family = cls.family if isinstance(cls.family, str) else ""
        owners = [f for f in MODEL_CONFIGS if f != family and key in _field_names(model_config_class(f))]
        scope = f" for model.family={family}" + (f" (it is a setting of {', '.join(owners)})" if owners else "")
    elif hasattr(cls, "unknown_key_hint"):  # e.g. router options: " (it is an option of router topp)"
        scope = cls.unknown_key_hint(key)
    valid = ", ".join(names) or "none"
    return ConfigError(f"unknown config key '{prefix}{key}'{scope}{hint}; valid keys are: {valid}.")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _section_of(tp) -> type | None:
    """The dataclass of a field that is a section (``X`` or ``Optional[X]``), else None."""
    if _is_dataclass_type(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and _is_dataclass_type(inner[0]):
            return inner[0]
    return None


def _from_dict(cls, data: dict, where: str = ""):
    """``cls`` from a mapping. Section classes may define two hooks: ``translate_legacy(data,
    where)`` (a classmethod rewriting old spellings of their keys, e.g. ``MoEConfig``'s flat
    router keys) and, on a field's declared class, ``section_class(parent, where)`` (the class
    to read that field with, chosen from the parent mapping: ``model.moe.router_options`` is
    read with the options class of ``model.moe.router``)."""
    if cls is ModelConfig:  # the model section: the class of its family
        return _model_from_dict(data, where)
    translate = getattr(cls, "translate_legacy", None)
    if translate is not None:
        data = translate(data, where)
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key_error(cls, key, where)
        sub = f"{where}.{key}" if where else key
        tp = types_[key]
        section = _section_of(tp)
        if section is not None and value is not None and hasattr(section, "section_class"):
            tp = section.section_class(data, where)
        kwargs[key] = _coerce(value, tp, sub)
    return cls(**kwargs)


def _model_from_dict(data: dict, where: str = "model"):
    """The model section as its family's config class. Fields of the old flat model config
    (:mod:`jaxmoe.config_legacy`) that the family lacks are dropped when they hold their old
    default (files written before the per-family classes); old ``extra`` options become the
    family's fields."""
    cls = model_config_class(data.get("family", DEFAULT_FAMILY))
    own = _field_names(cls)
    data = _lift_extra(data, where)
    data = {k: v for k, v in data.items() if k in own or not _legacy_default(k, v, where)}
    return _from_dict(cls, data, where)


def _lift_extra(data: dict, where: str = "model") -> dict:
    """``data`` with the old ``extra`` options (pairs or a mapping) as keys of their own."""
    if not isinstance(data, dict) or "extra" not in data:
        return data
    from jaxmoe.config_legacy import LegacyModelConfig

    data = dict(data)
    pairs = _coerce(data.pop("extra"), _field_types(LegacyModelConfig)["extra"], f"{where}.extra")
    for key, value in pairs:
        if key in data and data[key] != value:
            raise ConfigError(f"{where}.{key} is given twice, as {data[key]!r} and as {where}.extra.{key}={value!r}; "
                              "keep one.")
        data[key] = value
    return data


def _legacy_default(key: str, value: Any, where: str) -> bool:
    """True when ``key`` is a field of the old flat model config and ``value`` its old default."""
    from jaxmoe.config_legacy import LegacyModelConfig

    legacy = _field_types(LegacyModelConfig)
    if key not in legacy:
        return False
    try:
        return _coerce(value, legacy[key], f"{where}.{key}") == getattr(LegacyModelConfig(), key)
    except ConfigError:
        return False


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
            if i == len(parts) - 1 and part in getattr(cls, "LEGACY_KEYS", ()):  # translated when the config is built
                node[part] = value
                return
            raise _unknown_key_error(cls, part, where)
        if i == len(parts) - 1:
            node[part] = value
            return
        section = _section_of(types_[part])
        if section is None:
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set '{dotted}'.")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' must be a mapping in the YAML file.")
        if hasattr(section, "section_class"):  # its class follows a sibling key that a later override may set:
            for sub in parts[i + 1:-1]:  # its keys are checked when the config is built
                node = node.setdefault(sub, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"'{dotted}' goes through '{sub}', which is not a mapping.")
            node[parts[-1]] = value
            return
        cls = model_config_class(node.get("family", DEFAULT_FAMILY)) if section is ModelConfig else section


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars/lists).
    ``model.family=...`` goes first: the other ``model.*`` keys are checked against it."""
    family_first = sorted(overrides or [], key=lambda item: item.split("=", 1)[0].strip() != "model.family")
    for item in family_first:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.steps=100).")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


# --------------------------------------------------------------------------- files


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve_base(name: Any, including: Path) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"'base' in config file '{including}' must name a YAML file, got {name!r}.")
    if (including.parent / name).is_file():
        return including.parent / name
    shipped = shipped_config(name)  # a bare name: also a shipped config, with or without .yaml
    if shipped is not None:
        return shipped
    raise ConfigError(f"base config '{name}' named in '{including}' does not exist (looked next to it"
                      f"{' and among the shipped configs' if Path(name).name == name else ''}).")


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The mapping of ``path`` merged over its ``base:`` chain (the base first, then this file)."""
    key = path.resolve()
    if key in chain:
        raise ConfigError(f"config files include each other through 'base': "
                          f"{' -> '.join(p.name for p in chain + (key,))}.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not a YAML text file (byte {e.start} is not UTF-8); pass a YAML "
                          "config such as configs/lm_tiny.yaml.") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}' cannot be read ({e.strerror}).") from None
    if "\x00" in text:
        raise ConfigError(f"config file '{path}' is not a YAML text file (it holds NUL bytes); pass a YAML config "
                          "such as configs/lm_tiny.yaml.")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must contain a mapping of sections.")
    if data.get("base") is None:
        data.pop("base", None)
        return data
    base = _resolve_base(data.pop("base"), path)
    return _deep_merge(_read_yaml(base, chain + (key,)), data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or defaults when ``path`` is None), apply overrides, validate.

    ``path`` may also name a shipped config (``lm_tiny`` or ``lm_tiny.yaml``, found among
    the configs installed with the package) when no such file exists.

    A file may start from another: ``base: lm_tiny.yaml`` (relative to the file's directory,
    or a shipped config's name) is read first and the file's own keys are merged over it
    (mappings key by key, anything else replaced); bases may have bases.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and shipped_config(str(path)) is not None:
            p = shipped_config(str(path))
        if p.is_dir():
            inside = p / "config.yaml"
            raise ConfigError(f"config file '{path}' is a directory; pass the YAML file"
                              + (f": --config {inside}" if inside.is_file() else " itself") + ".")
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist.")
        data = _read_yaml(p)
        if isinstance(data.get("model"), dict):  # before the overrides, which may set the same options
            data["model"] = _lift_extra(data["model"])
    data = apply_overrides(data, overrides or [])
    return from_dict(data)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------- validation


def check(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless ``cond`` (the one-sentence checks of ``validate``)."""
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Cross-field checks of the common sections, then the model's own
    (``cfg.model.validate(cfg)``); raises ConfigError with one sentence."""
    t, d, mesh = cfg.train, cfg.data, cfg.mesh
    check(d.seq_len > 0, "data.seq_len must be positive.")
    check(0.0 <= d.eval_fraction < 1.0, "data.eval_fraction must be in [0, 1).")
    check(d.stride >= 0, "data.stride must be >= 0 (0 = data.seq_len).")
    check(d.num_threads >= 0, "data.num_threads must be >= 0 (0 = read windows in the training thread).")
    check(not d.source_weights or len(d.source_weights) == len(d.sources),
           f"data.source_weights has {len(d.source_weights)} entries but data.sources has {len(d.sources)}; "
           "give one weight per source or none.")
    check(all(w > 0 for w in d.source_weights), "data.source_weights must all be positive.")
    check(t.steps >= 0, "train.steps must be >= 0.")
    check(t.batch_size > 0, "train.batch_size must be positive.")
    check(t.learning_rate > 0 and math.isfinite(t.learning_rate), "train.learning_rate must be a positive number.")
    check(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1].")
    check(t.warmup_steps >= 0, "train.warmup_steps must be >= 0.")
    check(t.log_every >= 1, "train.log_every must be >= 1.")
    check(t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0 = only at the end).")
    check(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1.")
    check(t.max_consecutive_skips >= 1, "train.max_consecutive_skips must be >= 1.")
    check(t.plateau_window >= 0, f"train.plateau_window={t.plateau_window} must be >= 0 (0 = off).")
    check(t.spike_factor == 0 or t.spike_factor > 1,
           f"train.spike_factor={t.spike_factor} must be 0 (off) or greater than 1.")
    sizes = [mesh.data, mesh.fsdp, mesh.expert, mesh.tensor]
    check(all(s == -1 or s >= 1 for s in sizes), "mesh axis sizes must be >= 1 or -1 (the rest).")
    check(sum(s == -1 for s in sizes) <= 1, "at most one mesh axis may be -1.")
    check(mesh.num_devices >= 0, "mesh.num_devices must be >= 0 (0 = all devices).")
    check(mesh.exchange_capacity >= 0, "mesh.exchange_capacity must be >= 0 (0 = exact worst-case buffers).")
    parse_mesh_rules(mesh.rules)  # raises ConfigError naming the bad entry
    cfg.model.validate(cfg)


def __getattr__(name: str):
    """``jaxmoe.config.MoEConfig``: the MoE layer's config now lives in :mod:`jaxmoe.moe.config`."""
    if name == "MoEConfig":
        return importlib.import_module("jaxmoe.moe.config").MoEConfig
    raise AttributeError(f"module 'jaxmoe.config' has no attribute {name!r}")
