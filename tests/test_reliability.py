"""Training that survives (issue 10): real ``jaxmoe train`` subprocesses that are
preempted, killed mid-checkpoint, fed NaN batches and bad input.

Faults are injected with ``JAXMOE_FAULT`` (jaxmoe/train/faults.py). Every subprocess runs
on one CPU device and shares a persistent JAX compilation cache, so only the first run
and the first NaN run compile the train step.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe import checkpoint as ckpt
from jaxmoe.train.faults import FaultInjector, FaultSpecError, parse_faults
from jaxmoe.train.guards import SpikeDetector, describe_nonfinite
from jaxmoe.train.metrics import read_jsonl, truncate_after_step
from jaxmoe.train.tensorboard import (EventWriter, crc32c, encode_event, masked_crc32c, read_events,
                                      read_scalars)

REPO = Path(__file__).resolve().parents[1]
LM = str(REPO / "configs" / "lm_tiny.yaml")
TS = str(REPO / "configs" / "time_moe_tiny.yaml")
STEPS = 8
# identical model/train shapes in every run -> one compiled step shared through the cache
TINY = ["model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.moe.first_k_dense=0",
        "model.moe.num_shared_experts=0", "data.seq_len=32", "data.eval_fraction=0", "train.batch_size=4",
        "train.log_every=1", "train.warmup_steps=2", f"train.steps={STEPS}", "train.checkpoint_every=2",
        "train.progress=false"]
SIGTERM_STEP = random.Random(10).randint(1, STEPS - 1)  # preemption at a seeded random step
SIGKILL_STEP = random.Random(11).choice([4, 6])  # killed while writing this checkpoint (every 2 steps)


def jaxmoe(env, *args, fault: str | None = None) -> subprocess.CompletedProcess:
    e = dict(env, JAXMOE_FAULT=fault) if fault else env
    return subprocess.run([sys.executable, "-m", "jaxmoe.cli", *args], env=e, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def train_args(run, *extra, resume=False):
    return ["train", "--config", LM, *TINY, f"train.output_dir={run}", *extra, *(["--resume"] if resume else [])]


def losses(run) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(Path(run) / "metrics.jsonl") if "loss" in r]


def steps_of(run) -> list[int]:
    return sorted(int(p.name) for p in (Path(run) / "checkpoints").iterdir() if p.name.isdigit())


def tree_digest(root) -> dict[str, str]:
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def one_line_error(r: subprocess.CompletedProcess, only_line: bool = True) -> str:
    """The ``error: ...`` line of a failed command: exit code 1, one line, no traceback
    (``only_line``: nothing else on stderr; else warnings may precede it)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert lines and lines[-1].startswith("error:"), r.stderr[-2000:]
    assert not any(line.startswith("error:") or "Traceback" in line for line in lines[:-1]), r.stderr[-2000:]
    assert len(lines) == 1 or not only_line, r.stderr[-2000:]
    return lines[-1]


# ----------------------------------------------------------------------------- subprocess lanes
# The subprocess runs form three independent chains ("lanes") run two at a time in
# background threads (the suite budget is 2 cores); each lane records what the tests check,
# including the state between a killed run and its resume.


def lane_preemption(env, root: Path) -> dict:
    out = {}
    ref = root / "reference"  # uninterrupted, with TensorBoard events and the progress bar on
    out["reference"] = (ref, jaxmoe(env, *train_args(ref, "train.tensorboard=true", "train.progress=true")))
    run = root / "sigterm"
    first = jaxmoe(env, *train_args(run), fault=f"sigterm@{SIGTERM_STEP}")
    between = {"steps": steps_of(run) if (run / "checkpoints").exists() else [], "losses": losses(run),
               "meta": ckpt.read_meta(run, SIGTERM_STEP) if (run / "checkpoints").exists() else {}}
    out["sigterm"] = (run, first, between, jaxmoe(env, *train_args(run, resume=True)))
    run = root / "sigkill"
    first = jaxmoe(env, *train_args(run), fault=f"sigkill_during_save@{SIGKILL_STEP}")
    partial = sorted((run / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    between = {"steps": steps_of(run), "losses": losses(run), "partial": [p.name for p in partial],
               "partial_files": sorted(str(f.relative_to(run)) for p in partial for f in p.rglob("*") if f.is_file())}
    out["sigkill"] = (run, first, between, jaxmoe(env, *train_args(run, resume=True)))
    return out


def lane_nonfinite(env, root: Path) -> dict:
    out = {}
    run = root / "skip"
    out["skip"] = (run, jaxmoe(env, *train_args(run, "train.checkpoint_every=1", "train.keep_checkpoints=10"),
                               fault="nan@3"))
    run = root / "stop"
    out["stop"] = (run, jaxmoe(env, *train_args(run, "train.nonfinite_policy=stop"), fault="nan@3"))
    run = root / "consecutive"
    out["consecutive"] = (run, jaxmoe(env, *train_args(run, "train.max_consecutive_skips=2"), fault="nan@5,nan@6"))
    # checkpoints from another config: resume with another model, generate from an edited config.yaml
    run = root / "other_config"
    shutil.copytree(root / "stop", run)
    before = tree_digest(run)
    resumed = jaxmoe(env, *train_args(run, "model.moe.num_experts=8", resume=True))
    after = tree_digest(run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("embed_dim: 32", "embed_dim: 48"))
    generated = jaxmoe(env, "generate", "--checkpoint", str(run), "--prompt", "x", "--max-new-tokens", "2")
    out["other_config"] = (resumed, before == after, generated)
    return out


def bad_input_cases(d: Path) -> list[tuple[list[str], str]]:
    (d / "empty.txt").write_text(" \n\n")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    (d / "broken.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (d / "series.csv").write_text("nan_inf,constant,ok\n" + "".join(
        f"{['nan', 'inf', '-inf', ''][i % 4]},{2.5},{np.sin(i / 3):.4f}\n" for i in range(200)))
    ts = ["--config", TS, "model.embed_dim=32", "data.seq_len=32", "data.source_weights=[]"]
    return [
        (["train", "--config", LM, "model.moe.num_expert=3"], "unknown config key 'model.moe.num_expert'"),
        (["train", "--config", LM, "train.steps=many"], "train.steps must be an integer"),
        (["train", "--config", LM, "model.num_heads=5"], "model.num_heads=5 must divide model.embed_dim=128"),
        (["train", "--config", LM, "model.moe.experts_per_token=9"], "experts_per_token=9 must be between 1 and"),
        (["train", "--config", LM, *TINY, "mesh.data=3"], "uses 3 devices but 1 are available"),
        (["train", "--config", LM, f"data.path={d / 'missing.txt'}"], "does not exist"),
        (["train", "--config", LM, f"data.path={d / 'empty.txt'}"], "contains no text"),
        (["train", "--config", LM, f"data.path={d / 'binary.txt'}"], "is not valid UTF-8"),
        (["train", "--config", LM, f"data.path={d / 'broken.jsonl'}"], "line 2: not valid JSON"),
        (["train", *ts, f"data.sources=[csv:{d / 'series.csv'}:nan_inf]"], "has no finite values"),
        (["train", *ts, f"data.sources=[csv:{d / 'series.csv'}:constant]"], "is constant"),
        (["train", *ts, f"data.sources=[csv:{d / 'gone.csv'}:ok]"], "does not exist"),
    ]


def lane_bad_input(env, root: Path) -> list:
    out = []
    for i, (args, needle) in enumerate(bad_input_cases(root)):
        run = root / f"out{i}"
        out.append((needle, run, jaxmoe(env, *args, f"train.output_dir={run}")))
    return out


LANES = {  # lane -> (function, tests that need it)
    "preemption": (lane_preemption, ("test_sigterm_at_random_step_then_resume_is_exact",
                                     "test_sigkill_while_saving_resumes_from_previous_checkpoint",
                                     "test_tensorboard_events_progress_and_final_summary")),
    "nonfinite": (lane_nonfinite, ("test_nan_batch_is_skipped_and_checkpoints_stay_finite",
                                   "test_nan_batch_stops_under_stop_policy_naming_the_step",
                                   "test_consecutive_nan_batches_stop_the_run",
                                   "test_checkpoint_from_another_config_says_which_fields_differ")),
    "bad_input": (lane_bad_input, ("test_bad_input_gives_one_line_error_and_no_output",)),
}


@pytest.fixture(scope="module")
def lanes(request, tmp_path_factory):
    """Starts the lanes that the selected tests need; ``lanes[name].result()`` waits for one."""
    cache = tmp_path_factory.mktemp("jax_cache")
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
           "MPLBACKEND": "Agg", "TQDM_MININTERVAL": "0"}
    env.pop("JAXMOE_FAULT", None)
    selected = {item.originalname for item in request.session.items}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(fn, env, tmp_path_factory.mktemp(name))
               for name, (fn, tests) in LANES.items() if selected & set(tests)}
    yield futures
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- preemption


def test_sigterm_at_random_step_then_resume_is_exact(lanes):
    out = lanes["preemption"].result()
    ref, r_ref = out["reference"]
    assert r_ref.returncode == 0, r_ref.stderr[-3000:]
    assert [s for s, _ in losses(ref)] == list(range(1, STEPS + 1))
    run, first, between, second = out["sigterm"]
    k = SIGTERM_STEP
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"stopped by signal SIGTERM after step {k}; checkpoint saved" in first.stdout
    assert f"jaxmoe train --config {run / 'config.yaml'} --resume" in first.stdout
    assert max(between["steps"]) == k  # finished step k, saved it, went no further
    assert [s for s, _ in between["losses"]] == list(range(1, k + 1))
    # the checkpoint also holds the loss-spike window, so spikes are flagged as if never interrupted
    assert between["meta"]["step"] == k and between["meta"]["model"]["embed_dim"] == 32
    assert between["meta"]["loss_window"] == [loss for _, loss in between["losses"]][-20:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["start_step"] == k
    assert losses(run) == losses(ref)  # same steps, same data order, bit-identical losses


def test_sigkill_while_saving_resumes_from_previous_checkpoint(lanes):
    out = lanes["preemption"].result()
    ref, _ = out["reference"]
    run, first, between, second = out["sigkill"]
    k = SIGKILL_STEP
    assert first.returncode == -signal.SIGKILL, (first.returncode, first.stderr[-3000:])
    # killed inside the save of step k: its items are written into the temporary directory, not committed
    assert [p.split(".")[0] for p in between["partial"]] == [str(k)] and between["partial_files"], between
    assert max(between["steps"]) == k - 2 and k not in between["steps"]
    assert [s for s, _ in between["losses"]] == list(range(1, k + 1))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ignoring incomplete checkpoint" in second.stderr and between["partial"][0] in second.stderr
    assert not list((run / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    assert json.loads((run / "summary.json").read_text())["start_step"] == k - 2
    assert losses(run) == losses(ref)


# ----------------------------------------------------------------------------- NaN


def test_nan_batch_is_skipped_and_checkpoints_stay_finite(lanes):
    run, r = lanes["nonfinite"].result()["skip"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 3: the loss is nan and the batch holds NaN/inf in 'mask'; update skipped" in r.stderr
    records = {rec["step"]: rec for rec in read_jsonl(run / "metrics.jsonl") if "loss" in rec}
    assert sorted(records) == list(range(1, STEPS + 1))
    assert records[3]["skipped"] == 1 and records[3]["loss"] == "nan"
    assert all(records[s]["skipped"] == 0 and np.isfinite(records[s]["loss"]) for s in records if s != 3)
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1
    assert steps_of(run) == list(range(1, STEPS + 1))
    params = {s: ckpt.load_params(run, s)[1] for s in (2, 3, 4)}
    for p in params.values():
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(p))
    # the update of step 3 was not applied; step 4 trained again
    jax.tree.map(np.testing.assert_array_equal, params[2], params[3])
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[3]), jax.tree.leaves(params[4])))


def test_nan_batch_stops_under_stop_policy_naming_the_step(lanes):
    run, r = lanes["nonfinite"].result()["stop"]
    err = one_line_error(r, only_line=False)
    assert "stopped at step 3: the loss is nan and the batch holds NaN/inf in 'mask'" in err
    assert f"last good checkpoint is 2 in {run / 'checkpoints'}" in err
    assert steps_of(run) == [2] and not list((run / "checkpoints").glob("*tmp*"))
    _, params = ckpt.load_params(run)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_consecutive_nan_batches_stop_the_run(lanes):
    run, r = lanes["nonfinite"].result()["consecutive"]
    err = one_line_error(r, only_line=False)
    assert r.stderr.count("update skipped") == 2
    assert "2 consecutive steps had non-finite loss or gradients (last at step 6" in err
    assert steps_of(run) == [2, 4]


def test_checkpoint_refuses_nonfinite_params(tmp_path):
    manager = ckpt.make_manager(tmp_path / "run", keep=3)
    good = {"params": {"dense": {"kernel": jnp.ones((2, 2))}, "norm": {"scale": jnp.ones(2)}}}
    ckpt.save(manager, 1, good, {}, {"step": 1})
    bad = {"params": {"dense": {"kernel": jnp.ones((2, 2))}, "norm": {"scale": jnp.array([1.0, jnp.inf])}}}
    with pytest.raises(ckpt.CheckpointError, match=r"refusing to save checkpoint 2: parameter params.norm.scale "
                                                    r"holds NaN or inf; the last good checkpoint is 1"):
        ckpt.save(manager, 2, bad, {}, {"step": 2})
    assert manager.all_steps() == [1] and not list((tmp_path / "run" / "checkpoints").glob("2*"))
    manager.close()
    assert ckpt.first_nonfinite_param(good) is None and ckpt.first_nonfinite_param(bad) == "params.norm.scale"


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_one_line_error_and_no_output(lanes):
    results = lanes["bad_input"].result()
    assert len(results) == 12
    for needle, run, r in results:
        assert needle in one_line_error(r), (needle, r.stderr)
        assert not run.exists(), run  # nothing written for a run that could not start


def test_checkpoint_from_another_config_says_which_fields_differ(lanes):
    resumed, untouched, generated = lanes["nonfinite"].result()["other_config"]
    assert "another model config: model.moe.num_experts (4 vs 8)" in one_line_error(resumed)
    assert untouched  # the run directory is byte-for-byte unchanged
    assert "another model config than" in one_line_error(generated)
    assert "model.embed_dim (32 vs 48)" in generated.stderr


# ----------------------------------------------------------------------------- metrics


def test_tensorboard_events_progress_and_final_summary(lanes):
    run, r = lanes["preemption"].result()["reference"]
    scalars = read_scalars(run / "tensorboard")
    loss = losses(run)
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in loss]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [v for _, v in loss], rtol=1e-6)
    assert {"train/lr", "train/grad_norm", "train/aux_loss"} <= set(scalars)
    assert "8/8" in r.stderr  # the progress bar
    summary = json.loads((run / "summary.json").read_text())
    assert f"training finished: {STEPS} steps ({STEPS} in this run), {STEPS * 4 * 32:,} tokens" in r.stdout
    assert "best eval loss n/a" in r.stdout and f"checkpoint: {run.absolute() / 'checkpoints' / str(STEPS)}" in r.stdout
    assert summary["checkpoint"] == str(run.absolute() / "checkpoints" / str(STEPS))


def test_event_file_format(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    w = EventWriter(tmp_path)
    w.write({"step": 3, "loss": 2.5, "eval_loss": 1.25, "skipped": 0, "flag": True, "note": "x", "vec": [1, 2],
             "bad": float("nan")})
    w.add_scalars(2**40, {"big": -1.5}, wall_time=123.25)
    w.close()
    events = read_events(w.path)
    assert events[0]["file_version"] == "brain.Event:2"
    assert events[1]["step"] == 3 and events[1]["scalars"] == {"train/loss": 2.5, "eval/loss": 1.25,
                                                               "train/skipped": 0.0}
    assert events[2] == {"wall_time": 123.25, "step": 2**40, "scalars": {"big": -1.5}}
    data = w.path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert struct.unpack("<I", data[8:12])[0] == masked_crc32c(data[:8])
    assert data[12:12 + length] == encode_event(events[0]["wall_time"], 0, file_version="brain.Event:2")
    corrupt = bytearray(data)
    corrupt[20] ^= 1
    (tmp_path / "events.out.tfevents.bad").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="CRC"):
        read_events(tmp_path / "events.out.tfevents.bad")
    # an independent protobuf parser agrees with the hand-written encoding
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="ev.proto", package="t")
    value = f.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=9, label=1)
    value.field.add(name="simple_value", number=2, type=2, label=1)
    summ = f.message_type.add(name="Summary")
    summ.field.add(name="value", number=1, type=11, label=3, type_name=".t.Value")
    ev = f.message_type.add(name="Event")
    ev.field.add(name="wall_time", number=1, type=1, label=1)
    ev.field.add(name="step", number=2, type=3, label=1)
    ev.field.add(name="file_version", number=3, type=9, label=1)
    ev.field.add(name="summary", number=5, type=11, label=1, type_name=".t.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))
    msg = Event.FromString(encode_event(7.5, -3, scalars={"a/b": 0.5, "c": 3.0}))
    assert msg.wall_time == 7.5 and msg.step == -3
    assert [(v.tag, v.simple_value) for v in msg.summary.value] == [("a/b", 0.5), ("c", 3.0)]


def test_spike_detector():
    d = SpikeDetector(3.0, window=4, min_history=3)
    flags = [d.update(x) for x in [2.0, 2.2, 9.0, 2.0, 1.9, 7.0, 6.0, float("nan"), 30.0]]
    # 9.0 comes before 3 losses are known; 7.0 < 3 x mean(2.2, 9, 2, 1.9); 30 > 3 x mean(2, 1.9, 7, 6)
    assert flags == [None, None, None, None, None, None, None, None, pytest.approx(4.225)]
    d2 = SpikeDetector(3.0, window=4, min_history=3, history=[1.0, 1.0, 1.0])
    assert d2.update(3.5) == pytest.approx(1.0) and d2.update(1.0) is None
    assert SpikeDetector(0.0, min_history=1, history=[1.0]).update(100.0) is None  # off
    neg = SpikeDetector(2.0, min_history=2, history=[-2.0, -2.0])
    assert neg.update(-1.0) is None and neg.update(0.5) == pytest.approx(-5 / 3)


def test_faults_and_messages(tmp_path, monkeypatch):
    assert parse_faults("sigterm@3, nan@5") == parse_faults("sigterm@3,nan@5")
    monkeypatch.delenv("JAXMOE_FAULT", raising=False)
    assert not FaultInjector.from_env()
    for bad in ("sigterm", "boom@2", "nan@0", "nan@x"):
        with pytest.raises(FaultSpecError, match="JAXMOE_FAULT item"):
            parse_faults(bad)
    inj = FaultInjector(parse_faults("nan@2"))
    tokens = np.zeros((2, 5), np.int32)
    b1, b2 = inj.before_step(1, {"tokens": tokens}), inj.before_step(2, {"tokens": tokens})
    assert (b1["mask"] == 1).all() and np.isnan(b2["mask"]).all() and (b2["tokens"] == 0).all()
    ts = inj.before_step(2, {"values": np.ones((2, 3), np.float32), "mask": np.ones((2, 3), np.float32)})
    assert np.isnan(ts["values"]).all() and set(ts) == {"values", "mask"}
    params = {"a": np.ones(2), "b": {"c": np.ones(3)}}
    assert describe_nonfinite(1.5, 1, params, {"tokens": tokens}) == "the gradient of b.c is not finite (loss 1.5)"
    # a run killed while appending leaves a half-written last line: it is ignored, and dropped on resume
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(m)] == [1, 2]
    truncate_after_step(m, 1)
    assert m.read_text() == '{"step": 1, "loss": 2.0}\n'
