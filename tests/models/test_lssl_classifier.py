"""LSSL sequence classifier: shapes, equal LSSL views, the resumable array pipeline, a real
training run on the sklearn digits that beats the majority class, and ``jaxmoe train``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import ConfigError, load_config
from jaxmoe.data.text import DataError
from jaxmoe.data import pipelines
from jaxmoe.data.arrays import ArrayPipeline
from jaxmoe.data.datasets import digits_sequences
from jaxmoe.demos.ssm import evaluate_classifier, fit
from jaxmoe.models import get_model, lssl_classifier as lc

CONFIG = "configs/lssl_digits.yaml"
TINY = ["model.embed_dim=16", "model.num_layers=1", "model.ssm_state_dim=16", "model.dropout_rate=0.0"]


def _cfg(*extra):
    return load_config(CONFIG, [*TINY, *extra])


def test_registered_and_shapes():
    cfg = _cfg()
    last_cfg = load_config(CONFIG, [*TINY, "model.pooling=last"]).model
    assert get_model("lssl_classifier") is lc
    params = lc.init(jax.random.PRNGKey(0), cfg.model)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 20), 0, 17)
    labels = jnp.array([0, 3, 9])

    @jax.jit
    def run(params, tokens, labels):
        logits = lc.apply(params, tokens, cfg.model)
        loss, metrics = lc.loss_fn(params, {"tokens": tokens, "labels": labels}, cfg.model, None)
        return logits, lc.apply(params, tokens, last_cfg), loss, metrics["accuracy"]

    logits, last, loss, acc = run(params, tokens, labels)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    chex.assert_tree_all_finite(logits)
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert float(acc) == float(jnp.mean(jnp.argmax(logits, -1) == labels))
    # mean and last pooling read different features of the same sequence
    assert float(jnp.max(jnp.abs(last - logits))) > 1e-4
    axes = lc.param_axes(cfg.model)
    assert axes["head"]["kernel"] == ("embed", None) and axes["layers"]["norm"]["scale"][0] == "layers"


def test_lssl_views_give_the_same_classifier_and_dropout_needs_rng():
    cfg = _cfg("model.dropout_rate=0.5")
    params = lc.init(jax.random.PRNGKey(2), cfg.model)
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 24), 0, 17)
    others = [load_config(CONFIG, [*TINY, "model.dropout_rate=0.5",
                                   f"model.lssl_mode={mode}", "model.a_mode=fixed"]).model
              for mode in ("recurrent", "parallel")]

    @jax.jit
    def run(params, tokens):
        ref = lc.apply(params, tokens, cfg.model)
        return ref, [lc.apply(params, tokens, o) for o in others], lc.apply(params, tokens, cfg.model,
                                                                             jax.random.PRNGKey(5))

    ref, views, dropped = run(params, tokens)
    for view in views:
        chex.assert_trees_all_close(view, ref, atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(dropped - ref))) > 1e-4  # dropout acts only when an rng is given


def test_digits_split_is_fixed_and_disjoint():
    a, b = digits_sequences(0.25), digits_sequences(0.25)
    np.testing.assert_array_equal(a["test"]["labels"], b["test"]["labels"])
    assert a["train"]["tokens"].shape == (1348, 64) and a["test"]["tokens"].shape == (449, 64)
    assert a["train"]["tokens"].max() == 16 and a["train"]["tokens"].min() == 0
    train_rows = {r.tobytes() for r in a["train"]["tokens"]}
    overlap = sum(r.tobytes() in train_rows for r in a["test"]["tokens"])
    assert overlap <= 5  # only exact duplicate images in the dataset itself


def test_array_pipeline_resumes_exactly_and_covers_each_epoch():
    data = {"a": np.arange(23), "b": np.arange(23) * 10}
    pipe = ArrayPipeline(data, 5, seed=7)
    assert pipe.batches_per_epoch == 4
    it = pipe.iterator()
    first_epoch = [next(it) for _ in range(4)]
    seen = np.concatenate([b["a"] for b in first_epoch])
    assert len(set(seen.tolist())) == 20 and all((b["b"] == b["a"] * 10).all() for b in first_epoch)
    for _ in range(2):
        next(it)
    state = it.get_state()
    assert state == {"epoch": 1, "position": 2}
    rest = [next(it)["a"] for _ in range(7)]
    it2 = pipe.iterator()
    it2.set_state(state)
    np.testing.assert_array_equal(np.stack(rest), np.stack([next(it2)["a"] for _ in range(7)]))
    assert not np.array_equal(pipe.order(0), pipe.order(1))  # reshuffled every epoch
    finite = ArrayPipeline(data, 5, shuffle=False, num_epochs=1).iterator()
    assert len(list(finite)) == 4
    with pytest.raises(DataError, match="fewer than one batch"):
        ArrayPipeline(data, 30)


def test_digits_classifier_beats_majority_class():
    # ~5 s of training; the 1500-step config run reaches ~97% (benchmarks/ssm_demos.py)
    cfg = load_config(CONFIG, ["model.embed_dim=32", "model.num_layers=1", "model.ssm_state_dim=16",
                               "model.dropout_rate=0.0", "train.steps=200", "train.warmup_steps=10", "train.seed=0"])
    params, losses = fit(cfg)
    scores = evaluate_classifier(cfg, params)
    assert np.mean(losses[-20:]) < 0.8 * losses[0]
    assert scores["baseline_accuracy"] < 0.1 and scores["test_examples"] == 449
    assert scores["accuracy"] > 0.3, scores  # 200 steps, seeds 0 and 1: 0.44; majority class: 0.08


def test_config_validation():
    with pytest.raises(ConfigError, match="num_classes"):
        load_config(CONFIG, ["model.num_classes=1"])
    with pytest.raises(ConfigError, match="vocab_size"):
        pipelines.build(load_config(CONFIG, ["model.vocab_size=10"]))


def test_jaxmoe_train_two_steps(tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--config", CONFIG, *TINY, "train.steps=2", "train.batch_size=8", "data.eval_fraction=0",
               "train.progress=false", "train.log_every=1", f"train.output_dir={run}"])
    assert rc == 0
    assert (run / "metrics.jsonl").read_text().count('"accuracy"') == 2
    assert (run / "checkpoints" / "2").is_dir()
