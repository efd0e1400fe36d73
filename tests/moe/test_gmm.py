"""Grouped-matmul backends (jaxmoe.moe.gmm): every backend that runs on this platform equals
the per-group reference in forward and gradient; the Pallas custom_vjp/padding wiring is
tested with portable kernels injected in place of the GPU kernels; backend selection."""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import ConfigError, load_config
from jaxmoe.moe import gmm as G

SIZES = [[3, 0, 5, 2], [0, 0, 10, 0], [4, 1, 0, 0]]  # uneven, empty groups, rows past the sum (M=13)
M, K, N, E = 13, 6, 5, 4


def _inputs(seed=0, m=M, k=K, n=N, e=E):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(ks[0], (m, k)), jax.random.normal(ks[1], (e, k, n)),
            jax.random.normal(ks[2], (m, n)))


def _reference(lhs, rhs, sizes):
    """Per-group numpy matmul; rows past sum(sizes) are zero."""
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    out = np.zeros((lhs.shape[0], rhs.shape[2]))
    start = 0
    for e, s in enumerate(sizes):
        out[start:start + s] = lhs[start:start + s] @ rhs[e]
        start += s
    return out


def _ref_grads(lhs, rhs, dy, sizes):
    lhs, rhs, dy = (np.asarray(a, np.float64) for a in (lhs, rhs, dy))
    dx, dw = np.zeros_like(lhs), np.zeros_like(rhs)
    start = 0
    for e, s in enumerate(sizes):
        dx[start:start + s] = dy[start:start + s] @ rhs[e].T
        dw[e] = lhs[start:start + s].T @ dy[start:start + s]
        start += s
    return dx, dw


def _check(fn, sizes, seed=0, atol=1e-4, shape=(M, K, N, E)):
    m, k, n, e = shape
    lhs, rhs, dy = _inputs(seed, m, k, n, e)
    gs = jnp.array(sizes, jnp.int32)
    np.testing.assert_allclose(fn(lhs, rhs, gs), _reference(lhs, rhs, sizes), atol=atol, rtol=atol)
    _, vjp = jax.vjp(lambda a, b: fn(a, b, gs), lhs, rhs)
    dx, dw = vjp(dy)
    rdx, rdw = _ref_grads(lhs, rhs, dy, sizes)
    np.testing.assert_allclose(dx, rdx, atol=atol, rtol=atol)
    np.testing.assert_allclose(dw, rdw, atol=atol, rtol=atol)


@pytest.mark.parametrize("backend", ["xla", "xla_vjp"])
@pytest.mark.parametrize("sizes", SIZES)
def test_portable_backends_match_reference(backend, sizes):
    _check(lambda a, b, g: G.gmm(a, b, g, backend=backend), sizes)


@pytest.mark.parametrize("sizes", SIZES)
def test_padded_vjp_wiring_with_portable_kernels(sizes):
    """The padded custom_vjp used by the Pallas backends, with XLA kernels plugged in that
    check the invariants the real kernels rely on (aligned shapes, rows fully covered)."""
    seen = []

    def checked(kernel, name):
        def run(a, b, gs):
            seen.append((name, a.shape, b.shape, gs.shape))
            assert a.shape[0] % 8 == 0 and b.shape[-1] % 4 == 0
            return kernel(a, b, gs)
        return run

    kernels = G.Kernels(checked(G.XLA_KERNELS.fwd, "fwd"), checked(G.XLA_KERNELS.dx, "dx"),
                        checked(G.XLA_KERNELS.dw, "dw"))
    fn = G.make_vjp_gmm(kernels)
    _check(lambda a, b, g: G.padded_gmm(fn, G.Align(rows=8, k=4, n=4), a, b, g), sizes)
    assert {s[0] for s in seen} == {"fwd", "dx", "dw"}
    fwd = [s for s in seen if s[0] == "fwd"][0]
    assert fwd[1] == (16, 8) and fwd[2] == (E + 1, 8, 8) and fwd[3] == (E + 1,)  # padded + one zero group


def _fake_mgpu(calls):
    """Portable stand-ins with the signatures and shape requirements of JAX's
    ragged_dot_mgpu / transposed_ragged_dot_mgpu kernels."""

    def ragged_dot(lhs, rhs, *, group_sizes, block_m, block_n, block_k, max_concurrent_steps, grid_block_n,
                   transpose_rhs=False):
        assert lhs.dtype == rhs.dtype
        contract = rhs.shape[2] if transpose_rhs else rhs.shape[1]
        out_n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
        assert lhs.shape[1] == contract and contract % block_k == 0 and out_n % block_n == 0
        calls.append(("dx" if transpose_rhs else "fwd", lhs.shape, rhs.shape))
        r = jnp.swapaxes(rhs, 1, 2) if transpose_rhs else rhs
        return G._ragged(lhs, r, group_sizes)

    def transposed_ragged_dot(lhs, rhs, *, group_sizes, block_m, block_n, block_k, max_concurrent_steps,
                              grid_block_n):
        assert lhs.dtype == rhs.dtype and lhs.shape[1] % block_m == 0 and rhs.shape[1] % block_n == 0
        calls.append(("dw", lhs.shape, rhs.shape))
        return G.transposed_gmm(lhs, rhs, group_sizes).astype(lhs.dtype)

    return (types.SimpleNamespace(ragged_dot=ragged_dot),
            types.SimpleNamespace(transposed_ragged_dot=transposed_ragged_dot))


@pytest.mark.parametrize("sizes", SIZES)
def test_pallas_mgpu_path_with_injected_kernels(monkeypatch, sizes):
    calls = []
    monkeypatch.setattr(G, "_mgpu_modules", lambda: _fake_mgpu(calls))
    monkeypatch.setattr(G, "PALLAS_MIN_ROWS", 0)  # test-sized problems through the kernels
    cfg = dict(block_m=8, block_n=4, block_k=2, max_concurrent_steps=2, grid_block_n=1)
    dw = dict(cfg, block_k=8)
    fn = lambda a, b, g: G.pallas_mgpu_gmm(a, b, g, fwd_cfg=cfg, dx_cfg=cfg, dw_cfg=dw)
    _check(fn, sizes)
    _check(jax.jit(fn), sizes, seed=1)
    assert {c[0] for c in calls} == {"fwd", "dx", "dw"}
    assert ("fwd", (16, 8), (E + 1, 8, 8)) in calls  # rows to dw's block_k (>= block_m), K/N to lcm(8, 4, 2)


def test_pallas_mgpu_default_blocks_with_injected_kernels(monkeypatch):
    """The default (tuned-table) block sizes on a shape that needs K/N padding."""
    calls = []
    monkeypatch.setattr(G, "_mgpu_modules", lambda: _fake_mgpu(calls))
    monkeypatch.setattr(G, "PALLAS_MIN_ROWS", 0)
    _check(G.pallas_mgpu_gmm, [40, 0, 30, 20], shape=(100, 24, 20, 4), atol=1e-3)
    assert calls


def test_pallas_mgpu_sends_few_rows_to_xla(monkeypatch):
    """Below PALLAS_MIN_ROWS rows (short prefills) the Pallas kernels are not used."""
    calls = []
    monkeypatch.setattr(G, "_mgpu_modules", lambda: _fake_mgpu(calls))
    _check(G.pallas_mgpu_gmm, [40, 0, 30, 20], shape=(100, 24, 20, 4), atol=1e-3)
    assert calls == [] and 100 < G.PALLAS_MIN_ROWS


@pytest.mark.parametrize("sizes", [[1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0], [0] * 12])
def test_gather_path_for_few_rows(sizes):
    """Decode-sized inputs (3 * M <= E) take the gather path; rows past the groups are 0."""
    assert G._small(4, 12)
    _check(G.gather_gmm, sizes, shape=(4, K, N, 12))
    _check(lambda a, b, g: G.pallas_mgpu_gmm(a, b, g), sizes, shape=(4, K, N, 12), seed=2)


def test_megablox_interpret_matches_reference():
    if not G.megablox_available():
        pytest.skip("jax.experimental.pallas.ops.tpu.megablox is not importable in this JAX")
    sizes = [5, 0, 7, 4]
    try:
        _check(lambda a, b, g: G.megablox_gmm(a, b, g, tiling=(8, 128, 128)), sizes, shape=(16, 8, 8, 4),
               atol=1e-3)
    except NotImplementedError as e:  # pragma: no cover - depends on the JAX version
        pytest.skip(f"megablox cannot run in interpret mode here: {e}")


def test_auto_backend_selection(monkeypatch):
    monkeypatch.delenv("JAXMOE_GMM_BACKEND", raising=False)
    monkeypatch.setattr(G, "pallas_mgpu_available", lambda: True)
    monkeypatch.setattr(G, "megablox_available", lambda: True)
    cases = [("gpu", "9.0", "pallas_mgpu"), ("gpu", "9.0a", "pallas_mgpu"), ("gpu", "8.0", "xla"),
             ("gpu", "10.0", "xla"), ("tpu", "", "megablox"), ("cpu", "", "xla")]
    for platform, cc, want in cases:
        monkeypatch.setattr(G, "_platform", lambda p=platform: p)
        monkeypatch.setattr(G, "_compute_capability", lambda c=cc: c)
        assert G.resolve_backend("auto") == want, (platform, cc)
    monkeypatch.setattr(G, "_platform", lambda: "gpu")
    monkeypatch.setattr(G, "_compute_capability", lambda: "9.0")
    monkeypatch.setattr(G, "pallas_mgpu_available", lambda: False)  # Pallas missing: portable fallback
    assert G.resolve_backend("auto") == "xla"


def test_explicit_and_env_backend_selection(monkeypatch):
    monkeypatch.delenv("JAXMOE_GMM_BACKEND", raising=False)
    monkeypatch.setattr(G, "_platform", lambda: "cpu")
    assert G.resolve_backend("xla_vjp") == "xla_vjp"
    with pytest.raises(ValueError, match="Hopper"):
        G.resolve_backend("pallas_mgpu")
    monkeypatch.setattr(G, "_platform", lambda: "gpu")
    monkeypatch.setattr(G, "pallas_mgpu_available", lambda: True)
    assert G.resolve_backend("pallas_mgpu") == "pallas_mgpu"
    monkeypatch.setenv("JAXMOE_GMM_BACKEND", "xla")
    assert G.resolve_backend("pallas_mgpu") == "xla"  # env beats config
    monkeypatch.setenv("JAXMOE_GMM_BACKEND", "cutlass")
    with pytest.raises(ValueError, match="choose one of"):
        G.resolve_backend("auto")


def test_config_accepts_backends(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  moe:\n    gmm_backend: pallas_mgpu\n")
    assert load_config(str(path)).model.moe.gmm_backend == "pallas_mgpu"
    with pytest.raises(ConfigError, match="megablox"):
        load_config(str(path), ["model.moe.gmm_backend=cutlass"])


def test_block_table_env_override(monkeypatch):
    monkeypatch.setenv("JAXMOE_GMM_BLOCKS", "dx:64,128,64,3,4")
    assert G.pallas_blocks("dx", 512, 1024) == dict(block_m=64, block_n=128, block_k=64, max_concurrent_steps=3,
                                                    grid_block_n=4)
    assert G.pallas_blocks("fwd", 512, 1024)["block_m"] in (64, 128, 192)


# --- GPU guards that run anywhere -------------------------------------------------------


def test_fit_smem_shrinks_fp32_blocks_and_keeps_bf16():
    from jaxmoe.moe.gmm import DEFAULT_FWD, HOPPER_SMEM_BYTES, PALLAS_BLOCKS, fit_smem, smem_bytes

    assert smem_bytes(DEFAULT_FWD, 4) == 262144  # the H200 refused 262,176 bytes (tiles + barriers)
    for cfg in [DEFAULT_FWD, *PALLAS_BLOCKS.values()]:
        assert fit_smem(cfg, 2) == cfg  # the tuned bf16 blocks already fit: unchanged
        small = fit_smem(cfg, 4)
        assert smem_bytes(small, 4) <= HOPPER_SMEM_BYTES - 1024
        assert small["block_m"] == cfg["block_m"] and small["block_n"] == cfg["block_n"]


def test_xla_backend_refused_on_gpu_when_dense_lowering_does_not_fit(monkeypatch):
    from jaxmoe.config import ConfigError
    from jaxmoe.moe import gmm as G

    monkeypatch.setattr(G, "_platform", lambda: "gpu")
    monkeypatch.setattr(G, "_device_memory_bytes", lambda: 139 * 2 ** 30)
    # bench_moe_1b: 8 x 2048 tokens x top-8 rows, 64 experts, embed 1024 -> expert ffn 512, bf16
    with pytest.raises(ConfigError, match=r"about 24\.0 GiB .*gmm_backend=auto"):
        G.check_xla_fits(131072, 1024, 512, 64, 2)
    G.check_xla_fits(131072, 384, 768, 8, 4)  # Time-MoE-50M at batch 64, fp32: 4.5 GiB, fine
    monkeypatch.setattr(G, "_platform", lambda: "cpu")
    G.check_xla_fits(131072, 1024, 512, 64, 2)  # CPU lowers ragged_dot sparsely: never refused
