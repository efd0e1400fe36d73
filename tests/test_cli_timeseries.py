"""CLI end to end for Time-MoE: train a tiny model, forecast a CSV column (NaNs masked),
one-line errors, evaluate beside the baselines, export/import through HF files."""

import json
from pathlib import Path

import numpy as np
import pytest

from jaxmoe.cli import main

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "time_moe_tiny.yaml")
TINY = ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=32", "model.horizons=[1,4]",
        "data.seq_len=32", "data.stride=32", "data.sources=[synthetic]", "data.source_weights=[]",
        "data.eval_fraction=0", "train.batch_size=8", "train.steps=4", "train.warmup_steps=1", "train.log_every=1",
        "train.eval_every=0", "train.checkpoint_every=0", "train.progress=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tm") / "run"
    assert main(["train", "--config", CONFIG, *TINY, f"train.output_dir={out}"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss" in r]) == 4
    return out


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    t = np.arange(80)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.05 * t
    full = np.concatenate([[np.nan] * 5, y])
    full[40] = np.nan  # a gap inside the context
    path = d / "series.csv"
    lines = ["date,y,short"] + [f"{i},{'' if np.isnan(v) else v},{i if i < 5 else ''}" for i, v in enumerate(full)]
    path.write_text("\n".join(lines) + "\n")
    trimmed = d / "trimmed.csv"  # the same series without its leading empty cells
    trimmed.write_text("\n".join(["date,y"] + [f"{i},{'' if np.isnan(v) else v}" for i, v in enumerate(full[5:])]) + "\n")
    return path, trimmed


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_forecast_csv_with_nans(run_dir, csv_file, tmp_path, capsys):
    path, trimmed = csv_file
    out_json, out_csv, plot = tmp_path / "f.json", tmp_path / "f.csv", tmp_path / "f.png"
    assert main(["forecast", "--checkpoint", str(run_dir), "--csv", str(path), "--column", "y", "--horizon", "6",
                 "--context", "100", "--json", str(out_json), "--out-csv", str(out_csv), "--plot", str(plot)]) == 0
    assert "forecast of 'y'" in capsys.readouterr().out
    result = json.loads(out_json.read_text())
    forecast = np.asarray(result["forecast"])
    assert forecast.shape == (6,) and np.isfinite(forecast).all()  # NaN cells are masked, not propagated
    assert result["observed_context"] == 79 and result["first_step"] == 85
    assert out_csv.read_text().splitlines()[0] == "step,forecast" and len(out_csv.read_text().splitlines()) == 7
    assert plot.stat().st_size > 1000
    # leading empty cells change nothing: the model starts at the first observation
    out2 = tmp_path / "g.json"
    assert main(["forecast", "--checkpoint", str(run_dir), "--csv", str(trimmed), "--column", "y", "--horizon", "6",
                 "--context", "100", "--json", str(out2)]) == 0
    np.testing.assert_allclose(json.loads(out2.read_text())["forecast"], forecast, rtol=1e-5)


def test_forecast_errors_are_one_line(run_dir, csv_file, capsys):
    path, _ = csv_file
    base = ["forecast", "--checkpoint", str(run_dir), "--csv", str(path)]
    assert "--horizon" in _one_line_error(capsys, base + ["--column", "y", "--horizon", "0"])
    assert "--horizon" in _one_line_error(capsys, base + ["--column", "y", "--horizon", "-3"])
    assert "'nope'" in _one_line_error(capsys, base + ["--column", "nope", "--horizon", "4"])
    assert "at least" in _one_line_error(capsys, base + ["--column", "short", "--horizon", "4"])
    assert "does not exist" in _one_line_error(capsys, ["forecast", "--checkpoint", str(run_dir), "--csv", "/no/such.csv",
                                                        "--column", "y", "--horizon", "4"])


def test_evaluate_prints_model_and_baselines(run_dir, capsys):
    assert main(["evaluate", "--checkpoint", str(run_dir), "--suite", "nile"]) == 0
    out = capsys.readouterr().out
    for word in ("time_moe", "seasonal naive", "ETS", "nile", "average", "MASE"):
        assert word in out
    row = next(line for line in out.splitlines() if line.startswith("nile"))
    assert len([c for c in row.split() if c != "|"]) == 4 + 9 and "nan" not in row


def test_export_import_then_forecast_identically(run_dir, csv_file, tmp_path):
    assert main(["export", "--checkpoint", str(run_dir), "--family", "time_moe", "--out", str(tmp_path / "hf")]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "time_moe" and (tmp_path / "hf" / "model.safetensors").exists()
    assert main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0  # family from model_type
    path, _ = csv_file
    outs = []
    for i, ckpt in enumerate((run_dir, tmp_path / "imported")):
        out = tmp_path / f"{i}.json"
        assert main(["forecast", "--checkpoint", str(ckpt), "--csv", str(path), "--column", "y", "--horizon", "5",
                     "--context", "32", "--json", str(out)]) == 0
        outs.append(json.loads(out.read_text())["forecast"])
    np.testing.assert_array_equal(outs[0], outs[1])
