"""Block-FP8 checkpoints (DeepSeek-V3/R1 layout): float8_e4m3fn weights with ``weight_scale_inv``
blocks are dequantised while the import streams, equal to dequantising by hand, with memory
bounded by one input shard beyond the output; quantization_config is validated."""

from __future__ import annotations

import json
import math
import re
import shutil
import tracemalloc

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxmoe.config import Config, DataConfig
from jaxmoe.export import ExportError, get_family, load_hf, save_hf
from jaxmoe.export.safetensors_io import (SafetensorsReader, ShardedWriter, dequantize_fp8_blocks, fp8_block_size)
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig

FP8 = ml_dtypes.float8_e4m3fn
QCONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}


def _model() -> LMConfig:
    # widths that are not multiples of 128, so edge blocks are partial
    moe = MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=144, num_shared_experts=1, score_func="sigmoid",
                    selection_bias=True, norm_topk=True, routed_scaling_factor=2.0, first_k_dense=1, dense_ffn_dim=272)
    return LMConfig(vocab_size=300, embed_dim=160, num_layers=3, num_heads=2, max_seq_len=64, attention_type="mla",
                    q_lora_rank=136, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe=moe)


def _quantize(w: np.ndarray, block) -> tuple[np.ndarray, np.ndarray]:
    """Per-block absmax scaling to float8_e4m3fn (max 448), as DeepSeek's checkpoints are made."""
    bm, bn = block
    m, n = w.shape
    scale = np.zeros((math.ceil(m / bm), math.ceil(n / bn)), np.float32)
    q = np.empty(w.shape, FP8)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            blk = w[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            s = np.float32(max(float(np.abs(blk).max()), 1e-12) / 448.0)
            scale[i, j] = s
            q[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn] = (blk / s).astype(FP8)
    return q, scale


def _by_hand(q: np.ndarray, scale: np.ndarray, block) -> np.ndarray:
    bm, bn = block
    full = np.kron(scale, np.ones((bm, bn), np.float32))[: q.shape[0], : q.shape[1]]
    return q.astype(np.float32) * full


def _quantized(name: str, shape) -> bool:
    """Which tensors DeepSeek-V3 stores in FP8: every linear weight but the router and the head."""
    return len(shape) == 2 and (name.endswith("proj.weight") or name.endswith("proj_with_mqa.weight"))


def _file_order(name: str):
    """Embeddings, then layer by layer, then the final norm and the head (as released)."""
    m = re.match(r"model\.layers\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if "embed" in name else 2 if name.startswith("model.") else 3, 0, name)


def _make_checkpoints(tmp_path, block=(128, 128), shard_size="300KB"):
    """``(fp8_dir, by_hand_dir)``: the same model stored as block-FP8 (+ bf16 embeddings and
    norms, fp32 router) and as its by-hand dequantisation in fp32."""
    model = _model()
    cfg = Config(model=model, data=DataConfig(seq_len=32))
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), model))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    save_hf(cfg, params, "deepseek_v3", tmp_path / "f32")
    src = SafetensorsReader(tmp_path / "f32")
    fp8_w = ShardedWriter(tmp_path / "fp8", shard_size)
    hand_w = ShardedWriter(tmp_path / "hand", "1GB")
    n_fp8 = 0
    for name in sorted(src.names(), key=_file_order):
        t = src.get(name)
        if _quantized(name, t.shape):
            q, s = _quantize(t, block)
            fp8_w.add(name, q)
            fp8_w.add(name + "_scale_inv", s)
            hand_w.add(name, _by_hand(q, s, block))
            n_fp8 += 1
        elif "norm" in name or "embed" in name or name == "lm_head.weight":
            b = t.astype(ml_dtypes.bfloat16)
            fp8_w.add(name, b)
            hand_w.add(name, b.astype(np.float32))
        else:
            fp8_w.add(name, t)
            hand_w.add(name, t)
    fp8_w.close()
    hand_w.close()
    conf = json.loads((tmp_path / "f32" / "config.json").read_text())
    (tmp_path / "hand" / "config.json").write_text(json.dumps(conf))
    qc = {**QCONFIG, "weight_block_size": list(block)}
    (tmp_path / "fp8" / "config.json").write_text(json.dumps({**conf, "quantization_config": qc}))
    assert n_fp8 > 20
    return tmp_path / "fp8", tmp_path / "hand"


@pytest.mark.parametrize("block", [(128, 128), (64, 48)])
def test_fp8_import_equals_dequantising_by_hand(block, tmp_path):
    fp8_dir, hand_dir = _make_checkpoints(tmp_path, block)
    shards = sorted(fp8_dir.glob("model-*.safetensors"))
    assert len(shards) > 3
    with SafetensorsReader(fp8_dir) as r:
        assert r.dtype("model.layers.1.mlp.experts.0.up_proj.weight") == "F8_E4M3"
        assert r.dtype("model.layers.1.mlp.experts.0.up_proj.weight_scale_inv") == "F32"
        assert r.dtype("model.embed_tokens.weight") == "BF16"
    cfg, params = load_hf(fp8_dir)
    cfg_hand, hand = load_hf(hand_dir)
    assert cfg.model == cfg_hand.model
    jax.tree.map(np.testing.assert_array_equal, params, hand)  # bit for bit
    # and the quantisation kept the model close to the fp32 original
    _, orig = load_hf(tmp_path / "f32")
    err = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
              for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(orig)))
    assert 0 < err < 0.07


def test_fp8_files_are_standard_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    fp8_dir, _ = _make_checkpoints(tmp_path)
    name = "model.layers.2.self_attn.kv_b_proj.weight"
    index = json.loads((fp8_dir / "model.safetensors.index.json").read_text())
    ref = st.load_file(str(fp8_dir / index["weight_map"][name]))
    assert ref[name].dtype == torch.float8_e4m3fn
    with SafetensorsReader(fp8_dir) as r:
        ours = r.get(name)
        np.testing.assert_array_equal(ours.astype(np.float32), ref[name].float().numpy())
        scale = ref[name + "_scale_inv"].numpy()
        expected = ref[name].float().numpy() * np.kron(scale, np.ones((128, 128)))[: ours.shape[0], : ours.shape[1]]
        np.testing.assert_allclose(dequantize_fp8_blocks(r.view(name), r.get(name + "_scale_inv")), expected,
                                   rtol=1e-6)


class TrackedReader(SafetensorsReader):
    """Records how many files are memory-mapped at once and the order shards are read."""

    def __init__(self, path):
        super().__init__(path)
        self.max_maps = 0
        self.visits: list[str] = []

    def view(self, name):
        out = super().view(name)
        self.max_maps = max(self.max_maps, len(self._maps))
        fp = self._entries[name][0].name
        if not self.visits or self.visits[-1] != fp:
            self.visits.append(fp)
        return out


def test_fp8_import_memory_stays_within_one_input_shard(tmp_path, monkeypatch):
    fp8_dir, _ = _make_checkpoints(tmp_path, shard_size="300KB")
    shard_bytes = max(p.stat().st_size for p in fp8_dir.glob("model-*.safetensors"))
    hf = json.loads((fp8_dir / "config.json").read_text())
    fam = get_family("deepseek_v3")
    cfg = fam.config_from_hf(hf)
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), cfg.model))
    out_bytes = sum(int(np.prod(s.shape)) * 4 for s in jax.tree.leaves(shapes))
    total_fp8_bytes = sum(p.stat().st_size for p in fp8_dir.glob("model-*.safetensors"))
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: shapes)  # keep tracing out of the measurement
    reader = TrackedReader(fp8_dir)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        params = fam.import_params(cfg, reader, hf)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    transient = peak - out_bytes
    print(f"FP8 import: output {out_bytes:,} B, peak traced {peak:,} B, transient {transient:,} B; largest input "
          f"shard {shard_bytes:,} B ({len(reader.paths)} shards, {total_fp8_bytes:,} B); files mapped at once: "
          f"{reader.max_maps}, shard switches {len(reader.visits)}")
    assert np.isfinite(jax.tree.leaves(params)[0]).all()
    assert reader.max_maps == 1  # one shard mapped at a time
    assert transient <= shard_bytes  # never more than one input shard beyond the output being built
    assert transient < total_fp8_bytes / 3
    assert len(set(reader.visits)) == len(reader.paths)  # every shard read


def test_quantization_config_is_validated_in_one_sentence(tmp_path):
    assert fp8_block_size(None) is None and fp8_block_size(QCONFIG) == (128, 128)
    bad = [({"quant_method": "gptq"}, "quant_method='gptq'"), ({"fmt": "e5m2"}, "fmt='e5m2'"),
           ({"weight_block_size": [128]}, "weight_block_size=[128]"),
           ({"weight_block_size": None}, "weight_block_size=None"),
           ({"activation_scheme": "static"}, "activation_scheme='static'")]
    for change, msg in bad:
        with pytest.raises(ExportError) as e:
            fp8_block_size({**QCONFIG, **change})
        assert msg in str(e.value) and "\n" not in str(e.value)
    fp8_dir, _ = _make_checkpoints(tmp_path)
    conf = json.loads((fp8_dir / "config.json").read_text())
    (fp8_dir / "config.json").write_text(json.dumps({**conf, "quantization_config": {**QCONFIG, "fmt": "e5m2"}}))
    with pytest.raises(ExportError, match="fmt='e5m2'"):
        load_hf(fp8_dir)
    # scales without a quantization_config, a weight without scales, scales of the wrong shape
    (fp8_dir / "config.json").write_text(json.dumps({k: v for k, v in conf.items() if k != "quantization_config"}))
    with pytest.raises(ExportError, match="no quantization_config"):
        load_hf(fp8_dir)
    (fp8_dir / "config.json").write_text(json.dumps(conf))
    broken = tmp_path / "broken"
    shutil.copytree(fp8_dir, broken)
    with SafetensorsReader(fp8_dir) as r:
        tensors = {n: r.get(n) for n in r.names()}
    name = "model.layers.1.mlp.experts.2.down_proj.weight"
    for what, edit, msg in [("missing", lambda t: t.pop(name + "_scale_inv"), "has no"),
                            ("shape", lambda t: t.__setitem__(name + "_scale_inv", np.ones((1, 1), np.float32)),
                             "needs \\[2, 2\\]")]:
        t = dict(tensors)
        edit(t)
        for p in broken.glob("model*"):
            p.unlink()
        w = ShardedWriter(broken, "1GB")
        for n in sorted(t):
            w.add(n, t[n])
        w.close()
        with pytest.raises(ExportError, match=msg) as e:
            load_hf(broken)
        assert "\n" not in str(e.value), what
