"""One train step on a device mesh equals the single-device step (8 fake CPU devices).

For each mesh shape the language model's loss and gradients are computed with params
sharded by the logical-axis rules, batches split over data x fsdp x expert and the MoE
layers running expert-parallel under ``shard_map``; dropless dispatch and capacity
dispatch (tokens dropped, accounted identically) are checked in the same compiled function.
"""

import dataclasses

import chex
import jax
import numpy as np
import optax
import pytest

from jaxmoe.config import Config, DataConfig, MeshConfig, TrainConfig
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.parallel import sharding as sh
from jaxmoe.parallel.mesh import build_mesh
from jaxmoe.train import loop
from jaxmoe.train.optimizer import make_optimizer
from jaxmoe.train.state import TrainState

MOE = MoEConfig(num_experts=8, experts_per_token=2, expert_ffn_dim=16, num_shared_experts=1, shared_ffn_dim=16,
                z_loss_coef=1e-3)
DROPLESS = LMConfig(vocab_size=64, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2, max_seq_len=16,
                    moe=MOE)
CAPACITY = dataclasses.replace(DROPLESS, moe=dataclasses.replace(MOE, dispatch="capacity", capacity_factor=0.5))
BATCH, SEQ = 8, 8

MESHES = {
    "data8": dict(data=8),
    "fsdp8": dict(data=1, fsdp=8),
    "expert8": dict(data=1, expert=8),
    "data2_expert4": dict(data=2, expert=4),
    "fsdp2_expert2_tensor2": dict(data=1, fsdp=2, expert=2, tensor=2),
}


def _loss_and_grads(mcfg):
    def fn(params, batch):
        (loss, metrics), grads = jax.value_and_grad(lm.loss_fn, has_aux=True)(params, batch, mcfg)
        return {"loss": loss, "dropped": metrics["dropped_frac"], "grads": grads}

    return fn


@pytest.fixture(scope="module")
def setup():
    params = jax.jit(lm.init, static_argnums=1)(jax.random.PRNGKey(0), DROPLESS)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (BATCH, SEQ + 1), 0, DROPLESS.vocab_size)
    batch = {"tokens": np.asarray(tokens)}
    ref = {"dropless": jax.jit(_loss_and_grads(DROPLESS))(params, batch),
           "capacity": jax.jit(_loss_and_grads(CAPACITY))(params, batch)}
    assert float(ref["dropless"]["dropped"]) == 0.0 and float(ref["capacity"]["dropped"]) > 0.1
    return params, batch, ref


# every mesh shape with dropless dispatch (fsdp2_expert2_tensor2 through the trainer's own
# step below); the capacity engine (dropped tokens) on the shape that combines fsdp, expert
# and tensor (tests/moe/test_expert_parallel.py checks the MoE layer with drops on every shape)
CASES = [(m, "dropless") for m in MESHES if m != "fsdp2_expert2_tensor2"] + [("fsdp2_expert2_tensor2", "capacity")]


@pytest.mark.parametrize("name,case", CASES)
def test_loss_and_grads_equal_single_device(setup, name, case):
    params, batch, ref = setup
    mesh = build_mesh(MeshConfig(**MESHES[name]))
    rules = sh.make_rules()
    psh = sh.param_shardings(lm.param_axes(DROPLESS), mesh, rules, params)
    sharded = jax.device_put(params, psh)
    mcfg = DROPLESS if case == "dropless" else CAPACITY
    with sh.use_mesh(mesh, rules, all_to_all="padded"):
        got = jax.jit(_loss_and_grads(mcfg))(sharded, sh.shard_batch(batch, mesh, rules))
    want = ref[case]
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    assert float(got["dropped"]) == pytest.approx(float(want["dropped"]), abs=1e-7)
    chex.assert_trees_all_close(got["grads"], want["grads"], atol=2e-5, rtol=1e-4)


def test_trainer_step_on_mesh_equals_single_device_and_keeps_shardings(setup):
    """The trainer's own jitted step on fsdp=2 x expert=2 x tensor=2 (state sharded by the
    rules, batch sharded) vs the single-device gradients of the fixture pushed through the
    same optimizer. AdamW's first moment after one step is (1 - b1) * clipped gradient, so
    comparing the optimizer state compares the gradients."""
    params, batch, ref = setup
    tcfg = TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2)
    mcfg = MeshConfig(data=1, fsdp=2, expert=2, tensor=2)
    cfg = Config(model=DROPLESS, data=DataConfig(seq_len=SEQ), train=tcfg, mesh=mcfg)
    mesh = build_mesh(config=cfg)
    step, _, state_sh = loop._compiled_steps(DROPLESS, tcfg, mcfg, mesh)
    tx = make_optimizer(tcfg)
    state = TrainState.create(jax.tree.map(np.array, params), tx, 0)
    sharded = jax.device_put(jax.tree.map(np.array, state), state_sh)  # fresh buffers: the step donates them
    new, metrics = step(sharded, sh.shard_batch(batch, mesh, sh.rules_from_config(mcfg)))
    assert all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(jax.tree.leaves(new), jax.tree.leaves(state_sh)))
    grads = ref["dropless"]["grads"]
    np.testing.assert_allclose(metrics["loss"], ref["dropless"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    chex.assert_trees_all_close(new.params, optax.apply_updates(state.params, updates), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(new.opt_state, opt_state, atol=1e-6, rtol=1e-4)
