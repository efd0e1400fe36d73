"""Logical-axis rules, directly sharded train state, and checkpoints across meshes."""

import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxmoe import checkpoint as ckpt
from jaxmoe.config import Config, ConfigError, DataConfig, MeshConfig, TrainConfig
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.nn.init import logical_axes
from jaxmoe.parallel import sharding as sh
from jaxmoe.parallel.mesh import build_mesh
from jaxmoe.train import loop
from jaxmoe.train.metrics import read_jsonl
from jaxmoe.train.optimizer import make_optimizer
from jaxmoe.train.state import TrainState

MODEL = LMConfig(vocab_size=64, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_seq_len=32,
                 moe=MoEConfig(num_experts=8, experts_per_token=2, expert_ffn_dim=16, num_shared_experts=1,
                               shared_ffn_dim=16))


@pytest.fixture(scope="module")
def mesh222():
    return build_mesh(MeshConfig(data=1, fsdp=2, expert=2, tensor=2))


def test_logical_to_spec_rules(mesh222):
    rules = sh.make_rules()
    assert sh.logical_to_spec(("expert", "embed", "expert_mlp"), rules, mesh222) == P("expert", "fsdp", "tensor")
    assert sh.logical_to_spec(("layers", "vocab", "embed"), rules, mesh222) == P(None, "tensor", "fsdp")
    # batch takes fsdp and expert (data has size 1); embed cannot reuse fsdp in the same array
    assert sh.logical_to_spec(("batch", "seq", "embed"), rules, mesh222) == P(("fsdp", "expert"))
    # axes that do not divide a dimension are dropped
    assert sh.logical_to_spec(("embed", "mlp"), rules, mesh222, (3, 4)) == P(None, "tensor")
    assert sh.logical_to_spec(("batch",), rules, mesh222, (2,)) == P("fsdp")
    assert sh.logical_to_spec(("unknown", None), rules, mesh222) == P()
    over = sh.make_rules([("vocab", None), ("embed", ["fsdp", "tensor"])])
    assert sh.logical_to_spec(("vocab", "embed"), over, mesh222) == P(None, ("fsdp", "tensor"))
    with pytest.raises(ConfigError, match="mesh axis 'model'"):
        sh.make_rules([("embed", "model")])


def test_state_is_created_sharded_as_the_rules_say(mesh222):
    tx = make_optimizer(TrainConfig())
    make_state = lambda k: TrainState.create(lm.init(k, MODEL), tx, 0)
    axes = logical_axes(lm.init_boxed, jax.random.PRNGKey(0), MODEL)
    rules = sh.make_rules()
    state, shardings = sh.create_sharded_state(make_state, jax.random.PRNGKey(0), axes, mesh222, rules)
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda a: isinstance(a, tuple))
    params = jax.tree.leaves(state.params)
    assert len(flat_axes) == len(params)
    for a, leaf in zip(flat_axes, params):
        assert leaf.sharding.spec == sh.logical_to_spec(a, rules, mesh222, leaf.shape), a
    experts = state.params["groups"][0][0]["ffn"]["experts"]
    assert experts["gate"].sharding.spec == P(None, "expert", "fsdp", "tensor")
    assert experts["gate"].addressable_shards[0].data.shape == (1, 4, 16, 8)  # [layers, E/2, D/2, F/2]
    assert state.params["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert state.params["final_norm"]["scale"].sharding.spec == P("fsdp")
    # optimizer moments mirror their params; counters are replicated
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")][0]
    for moment in (adam.mu, adam.nu):
        for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(moment)):
            assert m.sharding == p.sharding
    assert adam.count.sharding.spec == P() and state.step.sharding.spec == P()


def test_constrain_and_batch_sharding(mesh222):
    x = jnp.ones((4, 8, 32))
    assert sh.constrain(x, ("batch", "seq", "embed")) is x  # no active mesh: identity
    batch = sh.shard_batch({"tokens": np.arange(4 * 9).reshape(4, 9)}, mesh222)
    assert batch["tokens"].sharding.spec == P(("fsdp", "expert"))
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), np.arange(36).reshape(4, 9))
    with sh.use_mesh(mesh222):
        y = jax.jit(lambda v: sh.constrain(v * 2, ("batch", "seq", "embed")))(x)
    assert y.sharding.spec == P(("fsdp", "expert"))


def _cfg(tmp_path, out, mesh, steps=4):
    text = tmp_path / "corpus.txt"
    if not text.exists():
        text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300)))
    model = LMConfig(vocab_size=259, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_seq_len=32,
                     moe=MODEL.moe)
    return Config(model=model, data=DataConfig(path=str(text), seq_len=16, eval_fraction=0.0),
                  train=TrainConfig(steps=steps, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2,
                                    keep_checkpoints=5, progress=False, output_dir=str(tmp_path / out)),
                  mesh=mesh)


def test_checkpoint_from_8_devices_restores_on_2_and_training_continues(tmp_path):
    full = _cfg(tmp_path, "full", MeshConfig(data=2, expert=4))
    summary = loop.train(full)
    assert summary["mesh"] == "data=2 expert=4 (8 devices)"
    losses = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in r}
    # a copy of the run stopped after step 2, resumed on 2 devices
    shutil.copytree(tmp_path / "full", tmp_path / "half")
    shutil.rmtree(tmp_path / "half" / "checkpoints" / "4")
    half = _cfg(tmp_path, "half", MeshConfig(data=1, expert=2, num_devices=2))

    abstract = loop.abstract_train_state(full)
    mesh8, mesh2 = build_mesh(config=full), build_mesh(config=half)
    restored = {}
    for name, cfg, mesh in (("8", full, mesh8), ("2", half, mesh2)):
        target = sh.with_shardings(abstract, loop.train_state_shardings(cfg, mesh))
        manager = ckpt.make_manager(tmp_path / "full", create=False)
        restored[name], _, _ = ckpt.restore(manager, target, step=2)
        manager.close()
    gate = restored["2"].params["groups"][0][0]["ffn"]["experts"]["gate"]
    assert {d.id for d in gate.sharding.device_set} == {0, 1} and gate.sharding.spec == P(None, "expert")
    chex.assert_trees_all_equal(jax.device_get(restored["2"]), jax.device_get(restored["8"]))

    summary = loop.train(half, resume=True)
    assert summary["start_step"] == 2 and summary["steps"] == 4 and summary["mesh"] == "expert=2 (2 devices)"
    resumed = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "half" / "metrics.jsonl") if "loss" in r}
    for step in (3, 4):
        np.testing.assert_allclose(resumed[step], losses[step], rtol=1e-5)
