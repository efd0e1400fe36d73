"""C3PO test-time re-mixing on a synthetic task whose right routing weights are known.

The model is built by hand: attention contributes nothing, layer 0's experts output zero,
and expert ``e`` of layer 1 (the critical layer) writes a large value into residual dim
``1 + e``, which the head maps to answer token ``1 + e``. Prompts of cluster ``g`` are
made of tokens whose embeddings share a cluster direction, and the answer of cluster ``g``
is token ``1 + g``: the right routing weights of the last prompt token in layer 1 put most
mass on expert ``g``; the (random) router does not know that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import ModelConfig, MoEConfig
from jaxmoe.decode import remix as c3po
from jaxmoe.models import lm
from routing_helpers import fast_init

N, V, D, F = 4, 24, 16, 8
CRIT = (1,)


def _task():
    cfg = ModelConfig(vocab_size=V, embed_dim=D, num_layers=2, num_heads=2, max_seq_len=32,
                      moe=MoEConfig(num_experts=N, experts_per_token=2, expert_ffn_dim=F, balance_loss="none"))
    params = fast_init(cfg)
    rng = np.random.default_rng(0)
    emb = np.zeros((V, D), np.float32)
    emb[:, 0] = 3.0  # a shared direction keeps the expert inputs positive
    centers = rng.normal(size=(N, D - 5))
    centers = 2.0 * centers / np.linalg.norm(centers, axis=1, keepdims=True)
    for t in range(8, V):
        emb[t, 5:] = centers[(t - 8) // 4] + 0.3 * rng.normal(size=D - 5)
    params["embed"]["embedding"] = jnp.asarray(emb)
    grp = params["groups"][0][0]
    grp["mixer"]["o"]["kernel"] = jnp.zeros_like(grp["mixer"]["o"]["kernel"])
    gate = np.zeros((2, N, D, F), np.float32)
    gate[:, :, 0, :] = 1.0
    down = np.zeros((2, N, F, D), np.float32)
    for e in range(N):
        down[1, e, :, 1 + e] = 1.0 / F
    grp["ffn"]["experts"] = {"gate": jnp.asarray(gate), "up": jnp.asarray(gate), "down": jnp.asarray(down)}
    head = np.zeros((D, V), np.float32)
    for e in range(N):
        head[1 + e, 1 + e] = 8.0
    params["lm_head"]["kernel"] = jnp.asarray(head)

    def examples(n_per, seed):
        r = np.random.default_rng(seed)
        out, groups = [], []
        for g in range(N):
            for _ in range(n_per):
                out.append((list(8 + 4 * g + r.integers(0, 4, size=6)), [1 + g]))
                groups.append(g)
        return out, np.asarray(groups)

    right = np.full((N, N), 0.4 / (N - 1), np.float32)
    np.fill_diagonal(right, 0.6)
    return cfg, params, examples, right


@pytest.fixture(scope="module")
def task():
    cfg, params, examples, right = _task()
    ref_ex, ref_g = examples(6, 1)
    test_ex, test_g = examples(2, 2)
    rcfg = c3po.RemixConfig(critical_layers=CRIT, embedding="tokens", neighbours=3, core_experts=N)
    ref = c3po.build_reference(params, cfg, ref_ex, rcfg=rcfg, weights=right[ref_g][:, None, :])
    return cfg, params, ref, test_ex, rcfg


def test_reference_holds_the_known_weights_and_low_losses(task):
    cfg, params, ref, _, _ = task
    assert ref.weights.shape == (4 * N * 6 // 4, 1, N)
    assert ref.critical_layers == CRIT
    assert ref.losses.max() < 0.1  # the right routing answers every reference example


@pytest.mark.parametrize("method", ["kernel", "ngd"])
def test_remix_lowers_held_out_loss(task, method):
    cfg, params, ref, test_ex, rcfg = task
    rcfg = c3po.RemixConfig(**{**rcfg.__dict__, "method": method})
    results = []
    for prompt, answer in test_ex:
        res = c3po.remix(params, cfg, ref, prompt, rcfg=rcfg)
        # the neighbours are reference examples of the same cluster (same answer)
        assert all(ref.tokens[i, ref.pos[i] + 1] == answer[0] for i in res.neighbours)
        assert res.neighbour_loss_after <= res.neighbour_loss_before
        results.append(res)
    before = c3po.answer_losses(params, cfg, test_ex).mean()
    after = c3po.answer_losses(params, cfg, test_ex, results).mean()
    assert before > 1.0  # the router alone does not solve the task
    assert after < 0.5 * before, (before, after)
    if method == "kernel":
        assert after < 0.1


def test_only_critical_layers_and_core_experts_change(task):
    cfg, params, ref, test_ex, rcfg = task
    prompt, _ = test_ex[0]
    res = c3po.remix(params, cfg, ref, prompt, rcfg=c3po.RemixConfig(**{**rcfg.__dict__, "core_experts": 2}))
    changed = ~np.isclose(res.weights, res.original)
    core = c3po._core_mask(res.original, 2)
    assert changed.any() and not (changed & ~core).any()  # only core experts move
    toks = jnp.asarray([prompt])
    _, base = lm.apply(params, toks, cfg)
    ov, mask = c3po._override(cfg, CRIT, jnp.asarray(res.weights[None]), jnp.asarray([len(prompt) - 1]), len(prompt))
    _, new = lm.apply(params, toks, cfg, weight_override=ov, override_mask=mask)
    # layer 0 (not critical): identical routing everywhere
    np.testing.assert_array_equal(new["expert_ids"][0], base["expert_ids"][0])
    np.testing.assert_array_equal(new["expert_weights"][0], base["expert_weights"][0])
    # layer 1: only the last prompt token's routing changed
    np.testing.assert_array_equal(new["expert_weights"][1][:-1], base["expert_weights"][1][:-1])
    top = np.argsort(-res.weights[0])[:2]
    assert set(np.asarray(new["expert_ids"][1][-1]).tolist()) == set(top.tolist())


def test_override_with_own_weights_reproduces_the_model(task):
    cfg, params, ref, test_ex, _ = task
    ex = [(list(p), [int(a) for a in t[pos + 1:pos + 2]]) for t, pos in zip(ref.tokens, ref.pos) for p in [t[:pos + 1]]]
    tokens, target, pos = c3po.pack(ex)
    w, _, _ = c3po.routing_and_embedding(params, cfg, jnp.asarray(tokens), jnp.asarray(pos), CRIT)
    plain = c3po.example_losses(params, cfg, jnp.asarray(tokens), jnp.asarray(target), jnp.asarray(pos))
    same = c3po.example_losses(params, cfg, jnp.asarray(tokens), jnp.asarray(target), jnp.asarray(pos), w, CRIT)
    np.testing.assert_allclose(np.asarray(same), np.asarray(plain), rtol=1e-6)


def test_reference_round_trip_and_errors(task, tmp_path):
    cfg, params, ref, test_ex, rcfg = task
    ref.save(tmp_path / "ref.npz")
    back = c3po.ReferenceSet.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.weights, ref.weights)
    assert back.critical_layers == ref.critical_layers
    with pytest.raises(ValueError, match="has no MoE|critical layer"):
        c3po.remix(params, cfg, ref, test_ex[0][0], rcfg=c3po.RemixConfig(critical_layers=(5,)))
    with pytest.raises(ValueError, match="method"):
        c3po.remix(params, cfg, ref, test_ex[0][0], rcfg=c3po.RemixConfig(method="nope"))
