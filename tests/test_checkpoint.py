"""jaxmoe.checkpoint: params-only restore (no optimizer built, only params read), params-only
run directories (``jaxmoe import``) that resume training, checkpoints in the layout the
trainer wrote before the params-only restore existed, and the import direction (checkpoint
knows nothing of train)."""

import ast
import logging
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxmoe import checkpoint as ckpt
from jaxmoe.config import load_config
from jaxmoe.train import checkpoint as train_ckpt
from jaxmoe.train import optimizer as optimizer_lib
from jaxmoe.train import train
from jaxmoe.train.metrics import read_jsonl
from jaxmoe.train.optimizer import make_optimizer
from jaxmoe.train.state import TrainState
from jaxmoe.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.moe.dense_ffn_dim=32",
        "model.moe.shared_ffn_dim=16", "data.seq_len=32", "train.batch_size=8", "train.log_every=1",
        "train.warmup_steps=1", "train.progress=false", "train.eval_batches=1", "data.eval_fraction=0"]


def cfg_for(run, *extra):
    return load_config(ROOT / "configs" / "lm_tiny.yaml", TINY + [f"train.output_dir={run}", *extra])


def losses(run):
    return [(r["step"], r["loss"]) for r in read_jsonl(Path(run) / "metrics.jsonl") if "loss" in r]


def full_restore(run, cfg, step=None):
    """The whole train state of a checkpoint, restored the way ``--resume`` does."""
    manager = train_ckpt.make_manager(run, create=False)
    try:
        return train_ckpt.restore_train_state(manager, cfg, make_task(cfg, with_data=False),
                                              make_optimizer(cfg.train), step=step)[0]
    finally:
        manager.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for 2 steps (checkpoints 1 and 2) and its train state at step 2."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = cfg_for(run, "train.steps=2", "train.checkpoint_every=1")
    train(cfg)
    return run, cfg, full_restore(run, cfg)


@pytest.fixture
def no_optimizer(monkeypatch):
    """Building an optimizer or a train state fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("an optimizer was built")

    monkeypatch.setattr(optax, "adamw", refuse)
    monkeypatch.setattr(optimizer_lib, "make_optimizer", refuse)
    monkeypatch.setattr(TrainState, "create", classmethod(refuse))


@pytest.fixture
def arrays_read(monkeypatch):
    """Names of the arrays orbax deserializes while the test runs."""
    names = []
    real = ocp.type_handlers.ArrayHandler.deserialize

    async def spy(self, infos, args=None):
        names.extend(info.name for info in infos)
        return await real(self, infos, args)

    monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", spy)
    return names


def test_load_params_reads_only_params_and_builds_no_optimizer(trained, no_optimizer, arrays_read):
    run, cfg, state = trained
    assert int(state.step) == 2 and jax.tree.leaves(state.opt_state)
    loaded_cfg, params = ckpt.load_params(run)
    assert loaded_cfg == cfg
    chex.assert_trees_all_equal(params, jax.device_get(state.params))
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    # orbax read the params and nothing else (no optimizer moments, rng, step)
    assert arrays_read and all(n.startswith("params.") for n in arrays_read), arrays_read
    assert len(arrays_read) == len(jax.tree.leaves(params))
    # an earlier step, too
    _, first = ckpt.load_params(run / "checkpoints", step=1)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(params)))
    with pytest.raises(ckpt.CheckpointError, match="there is no checkpoint 7 .* complete checkpoints: 1, 2"):
        ckpt.load_params(run, step=7)


def test_abstract_params_come_from_the_model_registry(trained, no_optimizer):
    _, cfg, state = trained
    shapes = ckpt.abstract_params(cfg)
    assert jax.tree.structure(shapes) == jax.tree.structure(state.params)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(state.params)))


def test_checkpoint_metadata(trained):
    run, cfg, _ = trained
    manager = ckpt.make_manager(run, create=False)
    try:
        assert ckpt.holds_optimizer_state(manager) and ckpt.holds_optimizer_state(manager, 1)
    finally:
        manager.close()
    meta = ckpt.read_meta(run)
    assert meta["step"] == 2 and meta["family"] == "lm" and meta["model"]["embed_dim"] == 32
    assert "params_only" not in meta


def test_checkpoint_in_the_trainers_earlier_layout_still_restores(tmp_path):
    """Before params-only checkpoints existed, every checkpoint (trained or imported) was a
    whole ``TrainState`` saved as orbax item ``state``: written here exactly that way."""
    run = tmp_path / "old"
    cfg = cfg_for(run, "train.steps=2")
    task = make_task(cfg, with_data=False)
    tx = make_optimizer(cfg.train)
    params = task.init(jax.random.PRNGKey(3))
    old = TrainState.create(params, tx, cfg.train.seed).replace(step=jnp.asarray(5, jnp.int32))
    ckpt.write_config(run, cfg)
    manager = ocp.CheckpointManager(ckpt.checkpoint_dir(run), item_names=("state", "data", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=True,
                                                                         enable_async_checkpointing=False))
    manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(old), data=ocp.args.JsonSave({}),
                                            meta=ocp.args.JsonSave({"step": 5, "family": "lm"})))
    manager.wait_until_finished()
    manager.close()

    _, loaded = ckpt.load_params(run)
    chex.assert_trees_all_equal(loaded, jax.device_get(params))
    restored = full_restore(run, cfg)
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(old))
    summary = train(cfg_for(run, "train.steps=6"), resume=True)  # and training continues from it
    assert summary["start_step"] == 5 and summary["steps"] == 6


def test_params_only_run_needs_no_optimizer(tmp_path, no_optimizer):
    run = tmp_path / "imported"
    cfg = cfg_for(run)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), ckpt.abstract_params(cfg))
    assert ckpt.save_params(run, cfg, params, meta={"imported_from": "somewhere"}) == run
    meta = ckpt.read_meta(run)
    assert meta["params_only"] is True and meta["imported_from"] == "somewhere" and meta["step"] == 0
    manager = ckpt.make_manager(run, create=False)
    try:
        assert not ckpt.holds_optimizer_state(manager)
        state, data, _ = ckpt.restore(manager, {"step": jax.ShapeDtypeStruct((), jnp.int32)}, partial=True)
        assert int(state["step"]) == 0 and data == {}
    finally:
        manager.close()
    loaded_cfg, loaded = ckpt.load_params(run)
    assert loaded_cfg == cfg
    chex.assert_trees_all_equal(loaded, params)
    with pytest.raises(ckpt.CheckpointError, match="already holds checkpoints"):
        ckpt.save_params(run, cfg, params)
    bad = jax.tree.map(np.copy, params)
    bad["final_norm"]["scale"][0] = np.nan
    with pytest.raises(ckpt.CheckpointError, match="parameter params.final_norm.scale holds NaN or inf"):
        ckpt.save_params(tmp_path / "bad", cfg, bad)


def test_imported_run_resumes_like_training_from_the_same_params(tmp_path, caplog):
    """An imported (params-only) run resumes with a fresh optimizer state and data iterator:
    exactly like a fresh run that starts from the same params."""
    fresh = tmp_path / "fresh"
    cfg = cfg_for(fresh, "train.steps=2")
    train(cfg)
    init = jax.jit(make_task(cfg, with_data=False).init)(jax.random.PRNGKey(cfg.train.seed))  # what train starts from

    run = tmp_path / "imported"
    ckpt.save_params(run, cfg_for(run, "train.steps=2"), jax.device_get(init))
    with caplog.at_level(logging.INFO, logger="jaxmoe"):
        summary = train(cfg_for(run, "train.steps=2"), resume=True)
    assert summary["start_step"] == 0 and summary["steps"] == 2
    assert "holds params only (an imported model): the optimizer state starts fresh" in caplog.text
    assert "holds no data-iterator position (an imported model): the data iterator starts fresh" in caplog.text
    assert losses(run) == losses(fresh)
    chex.assert_trees_all_equal(ckpt.load_params(run)[1], ckpt.load_params(fresh)[1])
    manager = ckpt.make_manager(run, create=False)
    try:
        assert ckpt.holds_optimizer_state(manager, 2)  # the resumed run writes full training checkpoints
    finally:
        manager.close()


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_checkpoint_imports_nothing_from_train_or_optax():
    imported = _imports(ROOT / "jaxmoe" / "checkpoint.py")
    bad = {m for m in imported if m == "optax" or m.startswith(("jaxmoe.train", "optax."))}
    assert not bad, bad


def test_export_and_decode_do_not_import_train():
    for pkg in ("export", "decode"):
        for path in sorted((ROOT / "jaxmoe" / pkg).rglob("*.py")):
            bad = {m for m in _imports(path) if m.startswith("jaxmoe.train")}
            assert not bad, (path, bad)


def test_train_checkpoint_does_not_import_the_loop():
    imported = _imports(ROOT / "jaxmoe" / "train" / "checkpoint.py")
    assert not {m for m in imported if m.startswith("jaxmoe.train.loop")}, imported
