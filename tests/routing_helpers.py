"""Shared helpers of the routing-variant tests (issue 7).

``fast_init`` gives params with exactly the structure of ``lm.init`` without running it:
``lm.init`` on CPU compiles dozens of small vmapped random programs (seconds of CPU), while
tracing it with ``jax.eval_shape`` and filling the leaves with numpy costs nothing. Norm
scales and IA3 vectors are ones (as in ``lm.init``); everything else is N(0, std^2).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig

ONES = ("scale", "e_gate", "e_up", "e_down")


def fast_init(cfg: LMConfig, seed: int = 0, std: float | None = None):
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), cfg))
    rng = np.random.default_rng(seed)
    std = cfg.init_std if std is None else std

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if any(f"'{k}'" in name for k in ONES):
            return np.ones(s.shape, s.dtype)
        return (std * rng.standard_normal(s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_cfg(**moe) -> LMConfig:
    """2 MoE layers, 4 experts, embed 16, vocab 32."""
    base = dict(num_experts=4, experts_per_token=2, expert_ffn_dim=16)
    base.update(moe)
    return LMConfig(vocab_size=32, embed_dim=16, num_layers=2, num_heads=2, max_seq_len=32,
                    moe=MoEConfig(**base))


def make_run(run_dir, config, overrides: list[str] = (), std: float | None = None, seed: int = 0, params=None):
    """A run directory (config.yaml + one params-only orbax checkpoint at step 0) as
    `jaxmoe import` would leave it, without training (no compile). ``config`` is a YAML
    path or a ``Config``; ``params`` default to ``fast_init``."""
    from jaxmoe.checkpoint import save_params
    from jaxmoe.config import Config, apply_overrides, from_dict, load_config, to_dict

    extra = list(overrides) + [f"train.output_dir={run_dir}"]
    if isinstance(config, Config):
        cfg = from_dict(apply_overrides(to_dict(config), extra))
    else:
        cfg = load_config(config, extra)
    params = fast_init(cfg.model, seed, std) if params is None else params
    save_params(run_dir, cfg, params)
    return cfg, params
