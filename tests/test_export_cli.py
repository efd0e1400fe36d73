"""`jaxmoe import / info --hf / export` end to end (no torch needed): an imported checkpoint
holds the HF weights, generates and resumes training; an unsupported export fails in one line."""

import json

import jax
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import Config, DataConfig
from jaxmoe.export import load_hf, save_hf
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small Qwen2-MoE directory written by jaxmoe itself (byte-tokenizer sized vocab)."""
    moe = MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=16, num_shared_experts=1, shared_ffn_dim=24,
                    shared_expert_gate=True, first_k_dense=1, dense_ffn_dim=32, balance_loss="switch")
    model = LMConfig(vocab_size=260, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64,
                     qkv_bias=True, moe=moe)
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), model))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    out = tmp_path_factory.mktemp("hf") / "qwen2"
    save_hf(Config(model=model, data=DataConfig(seq_len=32)), params, "qwen2_moe", out)
    return out


def test_info_import_generate_export_and_resume(hf_dir, tmp_path, capsys):
    assert main(["info", "--hf", str(hf_dir)]) == 0
    out = capsys.readouterr().out
    assert "qwen2_moe" in out and "active_params" in out
    _, params = load_hf(hf_dir)
    n = sum(a.size for a in jax.tree.leaves(params))
    assert f"{n:,}" in out

    run = tmp_path / "run"
    assert main(["import", "--hf", str(hf_dir), "--out", str(run)]) == 0
    capsys.readouterr()
    from jaxmoe.checkpoint import load_params

    cfg, restored = load_params(run)
    assert cfg.model.moe.shared_expert_gate and cfg.train.output_dir == str(run.absolute())
    jax.tree.map(np.testing.assert_array_equal, restored, params)

    assert main(["generate", "--checkpoint", str(run), "--prompt", "ab", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("ab")

    # unsupported combination: one line on stderr, non-zero exit, nothing written
    bad = tmp_path / "as_mixtral"
    assert main(["export", "--checkpoint", str(run), "--family", "mixtral", "--out", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "mixtral" in err and len(err.splitlines()) == 1
    assert not bad.exists()

    # supported: round trip back to the same tensors, plus the StableHLO decode step
    back = tmp_path / "back"
    assert main(["export", "--checkpoint", str(run), "--family", "qwen2_moe", "--out", str(back),
                 "--shard-size", "50KB", "--stablehlo", "--stablehlo-max-len", "16"]) == 0
    summary = json.loads(capsys.readouterr().out.split("exported: ", 1)[1])
    assert len(summary["files"]) > 2 and (back / "stablehlo" / "decode_step.jax_export").exists()
    jax.tree.map(np.testing.assert_array_equal, load_hf(back)[1], params)

    # the imported checkpoint resumes training (step 0 -> 1) with its fresh optimizer/data state
    assert main(["train", "--config", str(run / "config.yaml"), "train.steps=1", "train.batch_size=8",
                 "train.warmup_steps=0", "train.progress=false", "--resume"]) == 0
    cfg1, trained = load_params(run)
    assert (run / "checkpoints" / "1").is_dir()
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params))) > 0


def test_import_errors_are_one_line(tmp_path, capsys):
    assert main(["import", "--hf", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["info", "--hf", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert "model_type 'llama'" in err and len(err.splitlines()) == 1


def _digest(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_export_and_import_never_overwrite_what_is_not_theirs(hf_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["import", "--hf", str(hf_dir), "--out", str(run)]) == 0
    run_files = _digest(run)

    # import refuses a run directory (even with --force) and a non-empty one (without --force)
    assert main(["import", "--hf", str(hf_dir), "--out", str(run), "--force"]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("my notes\n")
    assert main(["import", "--hf", str(hf_dir), "--out", str(theirs)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty" in err[0] and "--force" in err[0]
    assert (theirs / "config.yaml").read_text() == "my notes\n"

    # export refuses a directory it did not write (and a run directory) unless --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "NOTES.md").write_text("keep me\n")
    for out in (mine, run):
        assert main(["export", "--checkpoint", str(run), "--family", "qwen2_moe", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was not written by `jaxmoe export`" in err[0]
    assert _digest(run) == run_files and _digest(mine) == {"NOTES.md": _digest(mine)["NOTES.md"]}

    # with --force it writes beside the user's files and lists only its own
    assert main(["export", "--checkpoint", str(run), "--family", "qwen2_moe", "--out", str(mine), "--force"]) == 0
    capsys.readouterr()
    listed = json.loads((mine / ".jaxmoe-export.json").read_text())["files"]
    assert "NOTES.md" not in listed and "config.json" in listed

    # a re-export into an earlier export: what that one wrote goes (a stale stablehlo/ too),
    # nothing else does
    ex = tmp_path / "ex"
    assert main(["export", "--checkpoint", str(run), "--family", "qwen2_moe", "--out", str(ex), "--stablehlo",
                 "--stablehlo-max-len", "16"]) == 0
    capsys.readouterr()
    assert (ex / "stablehlo" / "decode_step.jax_export").exists()
    (ex / "NOTES.md").write_text("keep me\n")
    (ex / "stablehlo" / "mine.txt").write_text("mine\n")
    assert main(["export", "--checkpoint", str(run), "--family", "qwen2_moe", "--out", str(ex)]) == 0
    capsys.readouterr()
    assert sorted(_digest(ex)) == [".jaxmoe-export.json", "NOTES.md", "config.json", "generation_config.json",
                                   "model.safetensors", "stablehlo/mine.txt"]
    assert (ex / "NOTES.md").read_text() == "keep me\n" and (ex / "stablehlo" / "mine.txt").read_text() == "mine\n"
    assert json.loads((ex / ".jaxmoe-export.json").read_text())["files"] == [
        "config.json", "generation_config.json", "model.safetensors"]
    jax.tree.map(np.testing.assert_array_equal, load_hf(ex)[1], load_hf(hf_dir)[1])
