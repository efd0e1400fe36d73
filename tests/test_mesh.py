"""Device meshes from the config: sizes, validation errors, CLI errors, multi-host init."""

import dataclasses
from pathlib import Path

import jax
import pytest

from jaxmoe import cli
from jaxmoe.config import Config, ConfigError, MeshConfig, load_config
from jaxmoe.parallel import mesh as mesh_lib
from jaxmoe.parallel.mesh import MeshError, build_mesh, describe, initialize_distributed, resolve_axis_sizes

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "lm_tiny.yaml")

SHAPES = [
    (dict(data=8), (8, 1, 1, 1)),
    (dict(data=1, fsdp=8), (1, 8, 1, 1)),
    (dict(data=1, expert=8), (1, 1, 8, 1)),
    (dict(data=2, expert=4), (2, 1, 4, 1)),
    (dict(data=1, fsdp=2, expert=2, tensor=2), (1, 2, 2, 2)),
    (dict(expert=4), (2, 1, 4, 1)),  # data=-1 takes the rest
    (dict(data=2, fsdp=-1, tensor=2), (2, 2, 1, 2)),
]


@pytest.mark.parametrize("axes,shape", SHAPES)
def test_mesh_shapes(axes, shape):
    mesh = build_mesh(MeshConfig(**axes))
    assert mesh.axis_names == ("data", "fsdp", "expert", "tensor")
    assert tuple(mesh.shape.values()) == shape
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    # Auto axes: shard_map over unsharded inputs works on JAX 0.10 and 0.11
    assert all("Auto" in str(t) for t in getattr(mesh, "axis_types", ("Auto",) * 4))


def test_mesh_over_a_device_subset_and_describe():
    mesh = build_mesh(MeshConfig(data=1, expert=2, num_devices=2))
    assert [d.id for d in mesh.devices.flat] == [0, 1]
    assert describe(mesh) == "expert=2 (2 devices)"
    assert describe(build_mesh(MeshConfig(), devices=jax.devices()[:1])) == "single device"


@pytest.mark.parametrize("axes,devices,match", [
    (dict(data=3), 8, "uses 3 devices but 8 are available"),
    (dict(data=2, expert=2), 8, "uses 4 devices but 8 are available"),
    (dict(data=-1, expert=3), 8, "need a multiple of 3 devices"),
    (dict(data=-1, fsdp=-1), 8, "only one mesh axis may be -1"),
    (dict(data=0), 8, "mesh.data=0 is not valid"),
])
def test_mesh_that_does_not_fit_the_devices(axes, devices, match):
    with pytest.raises(MeshError, match=match) as e:
        resolve_axis_sizes(MeshConfig(**axes), devices)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,mesh,match", [
    (["model.moe.num_experts=12"], dict(data=1, expert=8), "mesh.expert=8 must divide model.moe.num_experts=12"),
    ([], dict(data=1, tensor=8), "mesh.tensor=8 must divide model.num_heads=4"),
    (["train.batch_size=4"], dict(data=8), "train.batch_size=4 must be divisible by data x fsdp x expert = 8"),
])
def test_mesh_that_does_not_fit_the_model(overrides, mesh, match):
    cfg = dataclasses.replace(load_config(TINY, overrides), mesh=MeshConfig(**mesh))
    with pytest.raises(MeshError, match=match) as e:
        build_mesh(config=cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv,match", [
    (["train", "--config", TINY, "mesh.data=3", "train.output_dir=OUT"],
     "error: the mesh data=3 x fsdp=1 x expert=1 x tensor=1 uses 3 devices but 8 are available"),
    (["train", "--config", TINY, "mesh.data=2", "mesh.expert=4", "model.moe.num_experts=6",
      "train.output_dir=OUT"], "error: mesh.expert=4 must divide model.moe.num_experts=6"),
    (["info", "--config", TINY, "mesh.data=-1", "mesh.tensor=3"],
     "error: the mesh axes data=-1 x fsdp=1 x expert=1 x tensor=3 need a multiple of 3 devices"),
])
def test_cli_reports_a_bad_mesh_in_one_line(argv, match, capsys, tmp_path):
    argv = [a.replace("OUT", str(tmp_path / "run")) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(match) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing started


def test_cli_info_prints_mesh_and_memory(capsys):
    assert cli.main(["info", "--config", TINY, "mesh.data=2", "mesh.expert=4"]) == 0
    out = capsys.readouterr().out
    assert "data=2 x fsdp=1 x expert=4 x tensor=1" in out and "2 of 8 experts per device" in out
    assert "active per token" in out and "AdamW state" in out


def test_param_report_counts_active_experts():
    from jaxmoe.models.sizes import param_report

    cfg = load_config(TINY)
    rep = param_report(cfg, build_mesh(MeshConfig(data=2, expert=4)))
    moe, m = cfg.model.moe, cfg.model
    moe_layers = m.num_layers - moe.first_k_dense
    routed = moe_layers * moe.num_experts * 3 * m.embed_dim * moe.expert_ffn_dim
    inactive = routed * (moe.num_experts - moe.experts_per_token) // moe.num_experts
    assert rep["params"] - rep["active_params"] == inactive
    assert rep["embedding_params"] == m.vocab_size * m.embed_dim
    # routed experts are split 4 ways, everything else replicated (fp32 params)
    assert rep["param_bytes_per_device"] == pytest.approx(4 * (rep["params"] - routed + routed / 4))


def test_initialize_distributed_from_env(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(mesh_lib, "_already_initialized", lambda: False)
    assert initialize_distributed(env={}) is False  # single host: nothing to do
    assert initialize_distributed(env={"JAX_NUM_PROCESSES": "1"}) is False
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert initialize_distributed(env=env) is True
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    # flags win over the environment
    initialize_distributed("h:1", 2, 1, env=env)
    assert calls[-1] == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    # cluster auto-detection (SLURM with several tasks)
    initialize_distributed(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"})
    assert calls[-1] == {}
    for env, match in [({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "coordinator address"),
                       ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "process's id"),
                       ({"JAX_NUM_PROCESSES": "two"}, "must be integers")]:
        with pytest.raises(MeshError, match=match):
            initialize_distributed(env=env)
    assert len(calls) == 3


def test_config_rejects_bad_mesh_options():
    with pytest.raises(ConfigError, match="mesh.all_to_all"):
        load_config(None, ["mesh.all_to_all=nccl"])
    with pytest.raises(ConfigError, match="names mesh axis 'model'"):
        load_config(None, ["mesh.rules=[[embed, model]]"])
    assert Config().mesh.exchange_capacity == 0.0
