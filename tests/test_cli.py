import subprocess
import sys

from jaxmoe.cli import main

TINY = ["model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.moe.dense_ffn_dim=32",
        "model.moe.shared_ffn_dim=16", "data.seq_len=32", "train.batch_size=8", "train.progress=false",
        "train.eval_batches=1", "train.log_every=1"]


def test_train_then_generate(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--config", "configs/lm_tiny.yaml", *TINY, "train.steps=3", f"train.output_dir={run}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "training finished" in out
    assert (run / "metrics.jsonl").read_text().count('"loss"') == 3
    assert (run / "checkpoints" / "3").is_dir()
    rc = main(["generate", "--checkpoint", str(run), "--prompt", "def ", "--max-new-tokens", "8"])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text) > 4
    rc = main(["generate", "--checkpoint", str(run), "--prompt", "x", "--max-new-tokens", "5",
               "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9"])
    assert rc == 0


def _one_line_error(capsys, argv, needle):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1, err


def test_errors_are_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--config", "configs/lm_tiny.yaml", "model.moe.num_expert=3"],
                    "unknown config key")
    _one_line_error(capsys, ["generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x"],
                    "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    _one_line_error(capsys, ["train", "--config", "configs/lm_tiny.yaml", f"data.path={empty}",
                             f"train.output_dir={tmp_path / 'r'}"], "empty")
    assert not (tmp_path / "r").exists()  # nothing written for a run that could not start


def test_console_script_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jaxmoe.cli", "train", "--config", "configs/lm_tiny.yaml",
                        "train.steps=-1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip() == "error: train.steps must be >= 0."
