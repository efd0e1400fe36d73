"""The serialized StableHLO decode step reloads and runs like the direct decode step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.export.stablehlo import export_decode_step, load_decode_step
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig

MOE = MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=8, num_shared_experts=1, first_k_dense=1,
                dense_ffn_dim=16)
CFGS = {
    "gqa": LMConfig(vocab_size=32, embed_dim=16, num_layers=3, num_heads=4, num_kv_heads=2, max_seq_len=16,
                    qk_norm=True, moe=MOE),
    "mla": LMConfig(vocab_size=32, embed_dim=16, num_layers=2, num_heads=2, max_seq_len=16, attention_type="mla",
                    q_lora_rank=8, kv_lora_rank=6, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, moe=MOE),
}


@pytest.mark.parametrize("name", list(CFGS))
def test_stablehlo_decode_step_reloads_and_matches_direct_decode(name, tmp_path):
    cfg = CFGS[name]
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), cfg))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), shapes)
    out = export_decode_step(cfg, params, tmp_path / "shlo", batch=2, max_len=8)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "cpu" in manifest["platforms"] and manifest["batch"] == 2 and manifest["max_len"] == 8
    text = (out / "decode_step.mlir").read_text()
    assert "stablehlo." in text and "func.func public @main" in text

    art = load_decode_step(out)  # only the artifact and its parameter file from here on
    toks = rng.randint(0, 32, (2, 6))
    cache = art.init_cache()
    direct_cache = lm.init_cache(cfg, 2, 8)
    step = jax.jit(lambda p, t, c: lm.decode_step(p, t, cfg, c))
    for t in range(toks.shape[1]):
        logits, cache = art.step(toks[:, t], cache)
        ref, direct_cache = step(params, jnp.asarray(toks[:, t]), direct_cache)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5, rtol=1e-5)
    gen = art.generate(toks[:, :3], 4)
    assert gen.shape == (2, 4) and gen.dtype == np.int32
    with pytest.raises(ValueError, match="cache length"):
        art.generate(toks, 5)
