"""``jaxmoe.models.param_counts`` (one counter, driven by the params' logical axes) equals the
counters it replaced on every shipped config: ``jaxmoe info``'s fractional count, the
Time-MoE and Moirai-MoE model counters and the Hugging Face exporters' count."""

import glob
import math
import os

import jax
import numpy as np
import pytest

from jaxmoe.config import load_config
from jaxmoe.models import get_model, param_counts
from jaxmoe.nn.init import AxisNames, logical_axes

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.yaml")))


def _shapes(m):
    return jax.eval_shape(lambda: get_model(m.family).init(jax.random.PRNGKey(0), m))


def info_counter(m):
    """The count ``jaxmoe info`` printed: params with an "expert" axis times k / E."""
    model = get_model(m.family)
    axes = logical_axes(model.init_boxed, jax.random.PRNGKey(0), m)
    moe = getattr(m, "moe", None)
    frac = moe.experts_per_token / moe.num_experts if moe is not None else 1.0
    total = active = embedding = 0
    for a, s in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, AxisNames)), jax.tree.leaves(_shapes(m))):
        n = math.prod(s.shape)
        total += n
        active += n * frac if "expert" in a else n
        embedding += n if tuple(a) == ("vocab", "embed") else 0
    return total, int(round(active)), embedding


def family_counter(m):
    """The Time-MoE / Moirai-MoE model counters: the routed experts' params, less k of them."""
    shapes = _shapes(m)
    total = sum(int(x.size) for x in jax.tree.leaves(shapes))
    if getattr(m, "use_dense", False):
        return total, total
    per_expert = sum(int(x.size) for x in jax.tree.leaves(shapes["layers"]["ffn"]["experts"])) // m.moe.num_experts
    return total, total - per_expert * (m.moe.num_experts - m.moe.experts_per_token)


def export_counter(m):
    """The Hugging Face exporters' count of a language model: 3 * embed * expert_ffn_dim per
    idle expert of every MoE layer."""
    from jaxmoe.models.lm import layer_kinds

    total = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(_shapes(m)))
    moe_layers = sum(1 for _, f in layer_kinds(m) if f == "moe")
    per_expert = 3 * m.embed_dim * m.moe.expert_ffn_dim
    return total, total - moe_layers * (m.moe.num_experts - m.moe.experts_per_token) * per_expert


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p)[:-5] for p in CONFIGS])
def test_param_counts_equal_the_old_counters(path):
    cfg = load_config(path)
    m = cfg.model
    counts = param_counts(cfg)
    assert counts == param_counts(m)  # a run's config or its model config
    assert (counts["total"], counts["active"], counts["embedding"]) == info_counter(m)
    if m.family in ("time_moe", "moirai_moe"):
        assert (counts["total"], counts["active"]) == family_counter(m)
    if m.family == "lm" and not m.moe.num_compressed_experts:  # the exporters had no compressed experts
        assert (counts["total"], counts["active"]) == export_counter(m)
    if getattr(m, "moe", None) is None:
        assert counts["active"] == counts["total"]
    else:
        assert counts["active"] < counts["total"] or m.moe.experts_per_token == m.moe.num_experts or \
            getattr(m, "use_dense", False)


def test_gate_tables_count_in_full():
    """Moirai's fixed centroids (axes "expert", "embed") are read in full by every token."""
    cfg = load_config(None, ["model.family=moirai_moe", "model.embed_dim=16", "model.num_layers=2",
                             "model.num_heads=2", "model.moe.num_experts=4", "model.moe.experts_per_token=2",
                             "model.moe.expert_ffn_dim=16", "model.patch_size=4", "data.seq_len=16",
                             "model.moirai_gating=centroid"])
    counts = param_counts(cfg)
    assert counts["total"] - counts["active"] == 2 * 2 * 3 * 16 * 16  # 2 idle experts x 2 layers, centroids all used
    assert (counts["total"], counts["active"]) == family_counter(cfg.model)
