"""``configs/lm_tiny_hybrid.yaml`` (Mamba + attention LM) trains through ``jaxmoe train``.
(Cached decode == full forward of hybrid stacks is in tests/models/test_lm.py.)"""

from jaxmoe.cli import main
from jaxmoe.config import load_config
from jaxmoe.models.lm import layer_kinds


def test_hybrid_lm_config_trains_two_steps(tmp_path):
    cfg = load_config("configs/lm_tiny_hybrid.yaml")
    assert cfg.model.layer_pattern == ("mamba", "attn")
    assert [k for k, _ in layer_kinds(cfg.model)] == ["mamba", "attn", "mamba", "attn"]
    run = tmp_path / "hybrid"
    rc = main(["train", "--config", "configs/lm_tiny_hybrid.yaml", "model.embed_dim=16", "model.num_layers=2",
               "model.num_heads=2", "model.num_kv_heads=1", "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16",
               "model.moe.dense_ffn_dim=16", "model.moe.shared_ffn_dim=16", "model.ssm_state_dim=4", "data.seq_len=16",
               "data.eval_fraction=0", "train.batch_size=8", "train.steps=2", "train.progress=false",
               "train.log_every=1", f"train.output_dir={run}"])
    assert rc == 0 and (run / "checkpoints" / "2").is_dir()
