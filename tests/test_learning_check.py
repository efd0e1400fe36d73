"""The learning verdict of benchmarks/learning.py and the throughput benchmarks' learning guard
(synthetic metric records), and one tiny end-to-end run of the learning benchmark on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import learning_guard  # noqa: E402
from learning import learning_verdict, read_run  # noqa: E402


def records(n=40, start=5.0, end=3.0, changes=None):
    """``n`` logged steps whose loss falls linearly from ``start`` to ``end``; ``changes``
    maps a step to the fields that replace its values."""
    out = []
    for i in range(1, n + 1):
        r = {"step": i, "loss": start + (end - start) * (i - 1) / (n - 1), "grad_norm": 1.0, "skipped": 0,
             "tokens_per_sec": 1000.0}
        r.update((changes or {}).get(i, {}))
        out.append(r)
    return out


def test_finite_falling_loss_passes():
    v = learning_verdict(records(), {"skipped_steps": 0})
    assert v["verdict"] == "PASS", v["reasons"]
    assert v["reasons"] == [] and v["steps"] == 40 and v["skipped"] == 0
    assert v["loss_end"] < v["loss_at_10"] and v["drop_pct"] > 5
    assert v["max_grad_norm"] == 1.0


def test_eval_records_are_ignored():
    recs = records() + [{"step": 40, "eval_loss": 9.0}]
    assert learning_verdict(recs)["verdict"] == "PASS"


@pytest.mark.parametrize("bad", ["inf", "nan", float("inf")])
def test_one_non_finite_grad_norm_fails(bad):
    v = learning_verdict(records(changes={17: {"grad_norm": bad}}))
    assert v["verdict"] == "FAIL"
    assert any("grad norm not finite at step 17" in r for r in v["reasons"]), v["reasons"]
    assert v["max_grad_norm"] == float("inf")


def test_missing_grad_norm_fails():
    recs = records()
    del recs[20]["grad_norm"]
    v = learning_verdict(recs)
    assert v["verdict"] == "FAIL" and any("no grad_norm" in r for r in v["reasons"])


def test_a_skipped_step_fails():
    v = learning_verdict(records(changes={12: {"skipped": 1, "loss": "nan"}}))
    assert v["verdict"] == "FAIL" and v["skipped"] == 1
    assert any("skipped" in r for r in v["reasons"]), v["reasons"]
    # skipped steps counted only in summary.json also fail the run
    v = learning_verdict(records(), {"skipped_steps": 2})
    assert v["verdict"] == "FAIL" and v["skipped"] == 2


def test_flat_loss_fails():
    v = learning_verdict(records(start=4.0, end=4.0))
    assert v["verdict"] == "FAIL"
    assert any("less than 5%" in r for r in v["reasons"]), v["reasons"]
    assert abs(v["drop_pct"]) < 1e-9


def test_threshold_is_a_parameter():
    recs = records(start=4.0, end=3.8)  # falls ~3.5% between the windows
    assert learning_verdict(recs)["verdict"] == "FAIL"
    assert learning_verdict(recs, min_drop=0.02)["verdict"] == "PASS"


def test_negative_losses_use_the_magnitude():
    # a negative log-likelihood falling from -1 to -2 is learning
    assert learning_verdict(records(start=-1.0, end=-2.0))["verdict"] == "PASS"
    assert learning_verdict(records(start=-2.0, end=-1.0))["verdict"] == "FAIL"


def test_short_or_incomplete_runs_fail():
    v = learning_verdict(records(n=20))
    assert v["verdict"] == "FAIL" and any("too few steps" in r for r in v["reasons"])
    v = learning_verdict(records(n=30), expected_steps=40)
    assert v["verdict"] == "FAIL" and any("only 30 of 40" in r for r in v["reasons"])
    assert learning_verdict([])["verdict"] == "FAIL"


def test_read_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()) + '{"step": 41, "lo')
    (tmp_path / "summary.json").write_text(json.dumps({"skipped_steps": 0}))
    recs, summary = read_run(str(tmp_path))
    assert len(recs) == 40 and summary == {"skipped_steps": 0}  # the half-written last line is dropped


def test_throughput_guard():
    assert learning_guard([3.0, 2.5], [1.0, 0.5])[0]
    ok, msg = learning_guard([3.0, 3.1], [1.0, 1.0])
    assert not ok and msg == "NOT REPORTED: loss did not fall (3->3.1)"
    ok, msg = learning_guard([3.0, 2.0], [1.0, "inf"])
    assert not ok and msg.startswith("NOT REPORTED: grad norm not finite")
    ok, msg = learning_guard([3.0, float("nan")])
    assert not ok and "loss not finite" in msg
    assert learning_guard([3.0, 3.0], expect_fall=False)[0]  # modes without an update: finite values only


def test_cpu_smoke_run_passes(tmp_path):
    """The real trainer, a tiny time_moe_50m, 30 steps on CPU: exits 0 and prints the table."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = tmp_path / "learning.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--cpu-smoke", "--only",
                           "time_moe_50m", "--steps", "30", "--jsonl", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| ") and "verdict" in line)
    assert "loss_at_10" in lines[head] and "max_grad_norm" in lines[head]
    assert "time_moe_50m" in lines[head + 2] and lines[head + 2].rstrip().endswith("PASS |")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["kind"] == "learning" and rows[0]["verdict"] == "PASS"
    assert rows[0]["steps"] == 30 and rows[0]["skipped"] == 0 and rows[0]["reasons"] == []
