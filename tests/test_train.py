import json
import os
import signal

import numpy as np
import pytest

from jaxmoe.checkpoint import CheckpointError, load_params
from jaxmoe.config import load_config
from jaxmoe.train import TrainingError, train
from jaxmoe.train.metrics import read_jsonl

TINY = ["model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.moe.dense_ffn_dim=32",
        "model.moe.shared_ffn_dim=16", "data.seq_len=32", "train.batch_size=8", "train.log_every=1",
        "train.warmup_steps=2", "train.progress=false", "train.eval_batches=1"]


def cfg_for(tmp, *extra):
    return load_config("configs/lm_tiny.yaml", TINY + [f"train.output_dir={tmp}", *extra])


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def test_train_checkpoint_resume_matches_uninterrupted(tmp_path):
    full = tmp_path / "full"
    train(cfg_for(full, "train.steps=6", "train.checkpoint_every=3"))
    part = tmp_path / "part"

    def preempt(step, batch):  # SIGTERM arrives during step 3: it finishes, saves, stops
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    s1 = train(cfg_for(part, "train.steps=6", "train.checkpoint_every=100"), batch_hook=preempt)
    assert s1["steps"] == 3 and s1["interrupted"] and "--resume" in s1["message"]
    s2 = train(cfg_for(part, "train.steps=6", "train.checkpoint_every=3"), resume=True)
    assert s2["start_step"] == 3 and s2["steps"] == 6
    a, b = losses(full), losses(part)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=1e-6)
    summary = json.loads((part / "summary.json").read_text())
    assert summary["checkpoint"].endswith("checkpoints/6")
    assert (part / "loss.png").exists() and (part / "expert_load.png").exists()
    cfg, params = load_params(part)
    assert cfg.model.embed_dim == 32 and params["embed"]["embedding"].shape == (259, 32)


def test_refuses_to_overwrite_and_checks_config_on_resume(tmp_path):
    run = tmp_path / "r"
    train(cfg_for(run, "train.steps=2"))
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        train(cfg_for(run, "train.steps=4"))
    with pytest.raises(CheckpointError, match="model.embed_dim"):
        train(load_config("configs/lm_tiny.yaml", TINY + [f"train.output_dir={run}", "model.embed_dim=64",
                                                          "train.steps=4"]), resume=True)


def test_nan_batch_skip_and_stop(tmp_path):
    def poison(step, batch):
        if step == 2:
            batch = dict(batch)
            batch["mask"] = np.full(batch["tokens"].shape, np.nan, np.float32)
        else:
            batch = dict(batch, mask=np.ones(batch["tokens"].shape, np.float32))
        return batch

    s = train(cfg_for(tmp_path / "skip", "train.steps=4"), batch_hook=poison)
    assert s["skipped_steps"] == 1 and s["steps"] == 4
    with pytest.raises(TrainingError, match="at step 3"):
        train(cfg_for(tmp_path / "stop", "train.steps=4", "train.nonfinite_policy=stop",
                      "train.checkpoint_every=2"), batch_hook=poison)
    _, params = load_params(tmp_path / "stop")  # last good checkpoint (step 2) is intact
    assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(params))
