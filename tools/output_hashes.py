"""Hashes of the outputs of every shipped config: loss, gradients, logits / forecasts.

A refactoring tool: run it before and after a change that must not alter behaviour and diff
the two outputs (``python tools/output_hashes.py > before.txt``). Large configs run with
their width and depth shrunk (same code paths). CPU, float32 where the config allows.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxmoe  # noqa: E402
from jaxmoe.train.tasks import make_task  # noqa: E402

SMALL_LM = ["model.embed_dim=64", "model.num_layers=3", "model.num_heads=4", "model.num_kv_heads=2",
            "model.moe.expert_ffn_dim=32", "model.moe.shared_ffn_dim=32", "model.moe.dense_ffn_dim=64",
            "model.vocab_size=300", "model.head_dim=0", "data.seq_len=32", "model.dtype=float32"]
SMALL_TS = ["model.embed_dim=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_dim=128",
            "data.seq_len=64", "model.dtype=float32"]
CONFIGS = {
    "lm_tiny": [], "lm_tiny_compressed": [], "lm_tiny_hybrid": [], "lm_tiny_moex": [],
    "lm_tiny_readme": [], "lm_tiny_thor": [], "lm_tiny_topp": [],
    "bench_moe_1b": SMALL_LM + ["model.moe.num_experts=8"],
    "deepseek_moe_16b": SMALL_LM + ["model.moe.num_experts=8", "model.moe.experts_per_token=2"],
    "mixtral_8x7b": SMALL_LM,
    "time_moe_tiny": [], "time_moe_50m": SMALL_TS, "time_moe_200m": SMALL_TS,
    "moirai_moe_small": ["model.embed_dim=64", "model.num_layers=2", "model.num_heads=4",
                         "model.moe.expert_ffn_dim=32", "data.seq_len=64", "model.dtype=float32"],
    "s_mamba_macro": [], "spacetime_macro": [], "lssl_digits": [],
}


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        for leaf in jax.tree.leaves(a):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def outputs(name: str, overrides: list[str]) -> dict:
    cfg = jaxmoe.load_config(ROOT / "configs" / f"{name}.yaml", overrides + ["train.batch_size=4"])
    task = make_task(cfg)
    batch = jax.tree.map(jnp.asarray, next(task.train_pipeline.iterator()))
    params = task.init(jax.random.PRNGKey(0))
    rng = jax.random.PRNGKey(1)
    (loss, _), grads = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))(params, batch, rng)
    out = {"loss": f"{float(loss):.9g}", "loss+grads": digest(loss, grads)}
    family = cfg.model.family
    if family == "lm":
        from jaxmoe.models import lm

        logits, _ = jax.jit(lambda p, t: lm.apply(p, t, cfg.model))(params, batch["tokens"])
        out["logits"] = digest(logits)
    elif family == "time_moe":
        from jaxmoe.decode.forecast import forecast

        ctx = np.asarray(batch["values"])[:, :48]
        out["forecast"] = digest(forecast(params, cfg, ctx, 20))
    elif family == "moirai_moe":
        from jaxmoe.decode.forecast import forecast_moirai

        ctx = np.asarray(batch["values"])[:, :48]
        out["forecast"] = digest(forecast_moirai(params, cfg, ctx, 20, num_samples=8, rng=jax.random.PRNGKey(3)))
    return out


def main() -> None:
    names = sys.argv[1:] or list(CONFIGS)
    for name in names:
        try:
            res = outputs(name, CONFIGS[name])
        except Exception as e:  # report and go on: the diff shows it
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        print(name, " ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
