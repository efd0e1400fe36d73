import pytest

from jaxmoe.config import Config, ConfigError, MoEConfig, apply_overrides, dump_config, layer_kinds, load_config
from jaxmoe.config import from_dict


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
