import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from jaxmoe.config import (MODEL_CONFIGS, Config, ConfigError, ModelConfig, dump_config, from_dict, load_config,
                           model_config_class, to_dict)
from jaxmoe.config_legacy import LegacyModelConfig
from jaxmoe.models.lm import LMConfig, layer_kinds
from jaxmoe.moe.config import MoEConfig


def test_load_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  embed_dim: 64\n  moe:\n    num_experts: 4\ntrain:\n  steps: 3\n")
    cfg = load_config(p, ["model.moe.num_experts=16", "train.output_dir=/x", "model.moe.norm_topk=true",
                          "model.layer_pattern=[attn]"])
    assert cfg.model.embed_dim == 64 and cfg.model.moe.num_experts == 16 and cfg.train.steps == 3
    assert cfg.train.output_dir == "/x" and cfg.model.moe.norm_topk is True
    assert cfg.model.layer_pattern == ("attn",)
    hash(cfg)  # static argument for jit


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("configs/lm_tiny.yaml")
    p = tmp_path / "again.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("override, needle", [
    ("model.moe.num_expert=3", "did you mean 'num_experts'"),
    ("trian.steps=3", "unknown config key 'trian'"),
    ("model.moe.dispatch=fast", "choose one of 'dropless', 'capacity', 'dense'"),
    ("train.steps=abc", "must be an integer"),
    ("model.moe.experts_per_token=9", "must be between 1 and model.moe.num_experts=8"),
    ("model.num_heads=5", "must divide model.embed_dim"),
    ("model.num_kv_heads=3", "must divide model.num_heads"),
    ("mesh.expert=3", "must divide model.moe.num_experts"),
    ("train.steps", "must look like section.key=value"),
    ("model.embed_dim.x=3", "is a value, not a section"),
])
def test_errors_are_one_sentence(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("configs/lm_tiny.yaml", [override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_layer_kinds_first_k_dense_and_moe_every():
    cfg = from_dict({"model": {"num_layers": 6, "moe": {"first_k_dense": 1, "moe_every": 2}}})
    assert [f for _, f in layer_kinds(cfg.model)] == ["dense", "dense", "moe", "dense", "moe", "dense"]
    cfg = from_dict({"model": {"num_layers": 4, "layer_pattern": ["mamba", "attn"]}})
    assert [m for m, _ in layer_kinds(cfg.model)] == ["mamba", "attn", "mamba", "attn"]


def test_shipped_configs_load():
    import glob

    for path in sorted(glob.glob("configs/*.yaml")):
        load_config(path)


# ------------------------------------------------------------------ one config class per family

SHIPPED = {"lm": "lm_tiny", "time_moe": "time_moe_tiny", "moirai_moe": "moirai_moe_small",
           "s_mamba": "s_mamba_macro", "spacetime": "spacetime_macro", "lssl_classifier": "lssl_digits"}


def test_each_family_has_its_own_frozen_config_class():
    assert set(SHIPPED) == set(MODEL_CONFIGS)
    for family, name in SHIPPED.items():
        cfg = load_config(f"configs/{name}.yaml")
        cls = model_config_class(family)
        assert type(cfg.model) is cls and issubclass(cls, ModelConfig) and cfg.model.family == family
        assert cls.__module__ == f"jaxmoe.models.{family}"  # beside its model
        hash(cfg)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.model.embed_dim = 3
    assert type(Config().model) is LMConfig and isinstance(Config().model.moe, MoEConfig)  # default family: lm
    with pytest.raises(TypeError, match="base class"):
        ModelConfig()
    assert not hasattr(model_config_class("s_mamba")(), "moe")  # only the fields a family uses
    assert not hasattr(LMConfig(), "horizons") and not hasattr(LMConfig(), "lookback")


def test_extra_and_option_are_gone():
    for cls in map(model_config_class, MODEL_CONFIGS):
        assert "extra" not in {f.name for f in dataclasses.fields(cls)} and not hasattr(cls, "option")
    with pytest.raises(ConfigError, match="unknown config key 'model.extra'"):
        load_config("configs/lssl_digits.yaml", ["model.extra={lssl_mode: recurrent}"])
    # the former extra options are typed fields
    m = load_config("configs/lssl_digits.yaml", ["model.lssl_mode=recurrent", "model.discretization=zoh"]).model
    assert (m.lssl_mode, m.discretization, m.dt_min, m.dt_max) == ("recurrent", "zoh", 0.01, 1.0)
    assert load_config("configs/lssl_digits.yaml").model.discretization == 0.5
    with pytest.raises(ConfigError, match="model.discretization='bogus' is not valid; give a number or one of 'zoh'"):
        load_config("configs/lssl_digits.yaml", ["model.discretization=bogus"])
    with pytest.raises(ConfigError, match="choose one of 'convolution', 'recurrent', 'parallel'"):
        load_config("configs/lssl_digits.yaml", ["model.lssl_mode=fft"])
    assert load_config("configs/spacetime_macro.yaml", ["model.normalize_a=true"]).model.normalize_a is True


@pytest.mark.parametrize("family, override, needle", [
    ("lm", "model.horizons=[1, 2]", "unknown config key 'model.horizons' for model.family=lm (it is a setting of "
                                    "time_moe)"),
    ("lm", "model.vocab_sise=3", "did you mean 'vocab_size'"),
    ("time_moe", "model.vocab_size=300", "for model.family=time_moe"),
    ("moirai_moe", "model.layer_pattern=[attn]", "for model.family=moirai_moe (it is a setting of lm)"),
    ("s_mamba", "model.moe.num_experts=4", "unknown config key 'model.moe' for model.family=s_mamba"),
    ("spacetime", "model.dropout_rate=0.1", "for model.family=spacetime"),
    ("lssl_classifier", "model.lookback=8", "for model.family=lssl_classifier"),
    ("lm", "model.family=nope", "model.family='nope' is not valid; choose one of 'lm', 'time_moe'"),
])
def test_unknown_keys_per_family(family, override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(f"configs/{SHIPPED[family]}.yaml", [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_family_override_goes_first():
    # model.family is applied before the keys checked against it, whatever the order given
    cfg = load_config(None, ["model.horizons=[1, 4]", "model.family=time_moe"])
    assert cfg.model.family == "time_moe" and cfg.model.horizons == (1, 4)


def test_another_familys_key_in_a_file_is_an_error_naming_the_family(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  family: lm\n  horizons: [1, 2]\n")
    with pytest.raises(ConfigError, match="'model.horizons' for model.family=lm"):
        load_config(p)


def _legacy_dump(cfg: Config) -> dict:
    """What the flat-ModelConfig code wrote to RUN/config.yaml: every old field (defaults
    included, extra: []) with the run's values."""
    data = to_dict(cfg)
    legacy = to_dict(LegacyModelConfig())
    newer = {"rope_scaling"}  # fields added after the flat config: never in old run directories
    options = [[k, v] for k, v in data["model"].items() if k not in legacy and k not in newer]  # read via option()
    data["model"] = {**legacy, **{k: v for k, v in data["model"].items() if k in legacy}, "extra": options}
    return data


@pytest.mark.parametrize("family", sorted(SHIPPED))
def test_legacy_run_dir_config_with_every_old_field_loads(tmp_path, family):
    cfg = load_config(f"configs/{SHIPPED[family]}.yaml")
    old = _legacy_dump(cfg)
    assert len(old["model"]) == 48 and (old["model"]["extra"] == []) == (family not in ("lssl_classifier", "spacetime"))
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(old, sort_keys=False))
    assert load_config(p) == cfg
    from jaxmoe.config import _from_dict  # what checkpoint metadata ("model": the old dict) goes through

    assert _from_dict(ModelConfig, old["model"], "model") == cfg.model
    # an old field that the family lacks but that holds a non-default value is an error naming the family
    other = "horizons" if family != "time_moe" else "vocab_size"
    old["model"][other] = [1, 2] if other == "horizons" else 300
    p.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError, match=f"'model.{other}' for model.family={family}"):
        load_config(p)


OLD_LSSL_DIGITS_MODEL = """model:
  family: lssl_classifier
  vocab_size: 17
  num_classes: 10
  embed_dim: 64
  num_layers: 2
  ssm_state_dim: 16
  pooling: mean
  dropout_rate: 0.1
  extra:
    lssl_mode: convolution
    a_mode: fixed
    discretization: 0.5
    dt_min: 0.01
    dt_max: 1.0
  dtype: float32
"""


def test_legacy_extra_options_become_fields(tmp_path):
    # configs/lssl_digits.yaml as it was shipped, with its options under extra
    new = load_config("configs/lssl_digits.yaml")
    legacy = tmp_path / "old.yaml"
    legacy.write_text(OLD_LSSL_DIGITS_MODEL + yaml.safe_dump({k: v for k, v in to_dict(new).items() if k != "model"}))
    assert load_config(legacy) == new
    legacy.write_text("model:\n  family: lssl_classifier\n  dtype: float32\n  extra:\n    lssl_mode: recurrent\n"
                      "    discretization: zoh\n    dt_min: 0.01\n")
    m = load_config(legacy).model
    assert (m.lssl_mode, m.discretization, m.dt_min, m.a_mode) == ("recurrent", "zoh", 0.01, "fixed")
    # a saved run dir wrote extra as a list of pairs
    legacy.write_text("model:\n  family: lssl_classifier\n  extra:\n  - [a_mode, shared]\n  - [dt_max, 0.5]\n")
    m = load_config(legacy).model
    assert (m.a_mode, m.dt_max) == ("shared", 0.5)
    legacy.write_text("model:\n  family: spacetime\n  extra: {normalize_a: true}\n")
    assert load_config(legacy).model.normalize_a is True
    legacy.write_text("model:\n  family: lm\n  extra: {normalize_a: true}\n")
    with pytest.raises(ConfigError, match="'model.normalize_a' for model.family=lm \\(it is a setting of spacetime\\)"):
        load_config(legacy)


def test_base_inheritance_chain_override_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  embed_dim: 64\n  moe:\n    num_experts: 4\n    z_loss_coef: 0.5\n"
                                     "train:\n  steps: 7\n  output_dir: runs/a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nmodel:\n  moe:\n    num_experts: 8\n")
    (tmp_path / "sub" / "c.yaml").write_text("base: b.yaml\ntrain:\n  output_dir: runs/c\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml", ["train.steps=9"])
    m = cfg.model
    assert (m.embed_dim, m.moe.num_experts, m.moe.z_loss_coef) == (64, 8, 0.5)  # deep merge, the child wins
    assert (cfg.train.output_dir, cfg.train.steps) == ("runs/c", 9)
    assert "base" not in dump_config(cfg)
    # a bare name is also looked up among the shipped configs
    (tmp_path / "d.yaml").write_text("base: lm_tiny.yaml\nmodel:\n  num_layers: 2\n")
    assert load_config(tmp_path / "d.yaml") == load_config("configs/lm_tiny.yaml", ["model.num_layers=2"])
    (tmp_path / "e.yaml").write_text("base: lm_tiny\n")
    assert load_config(tmp_path / "e.yaml") == load_config("configs/lm_tiny.yaml")
    # cycles and missing bases are one sentence
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "x.yaml")
    assert "x.yaml -> y.yaml -> x.yaml" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "z.yaml").write_text("base: z.yaml\n")
    with pytest.raises(ConfigError, match="through 'base'"):
        load_config(tmp_path / "z.yaml")
    (tmp_path / "w.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="base config 'missing.yaml' named in .* does not exist"):
        load_config(tmp_path / "w.yaml")


def test_shipped_configs_use_only_their_familys_keys():
    import glob

    from jaxmoe.config import _read_yaml

    for path in sorted(glob.glob("configs/*.yaml")):
        model = _read_yaml(Path(path))["model"]
        names = {f.name for f in dataclasses.fields(model_config_class(model.get("family", "lm")))}
        assert set(model) <= names, (path, set(model) - names)  # nothing left for the legacy path to drop


def test_shipped_variants_name_their_base():
    import glob

    for path in sorted(glob.glob("configs/lm_tiny_*.yaml")):
        data = yaml.safe_load(Path(path).read_text())
        assert data["base"] == "lm_tiny.yaml"
        assert "data" not in data  # only their differences
        cfg = load_config(path)
        assert cfg.train.output_dir == f"runs/{Path(path).stem}"


def test_config_core_imports_no_model_or_parallel_code():
    tree = ast.parse(Path("jaxmoe/config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.startswith(("jaxmoe.models", "jaxmoe.parallel", "jaxmoe.moe"))]
    sharding = ast.parse(Path("jaxmoe/parallel/sharding.py").read_text())
    assert "jaxmoe.config" in {n.module for n in ast.walk(sharding) if isinstance(n, ast.ImportFrom)}
