"""Sharded, streaming safetensors IO (no torch needed) and a sharded HF export round trip."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxmoe.config import Config, DataConfig
from jaxmoe.export import load_hf, save_hf
from jaxmoe.export.safetensors_io import SafetensorsReader, ShardedWriter, parse_size, save_sharded, write_file
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size("10kb") == 10_000
    assert parse_size(123) == 123 == parse_size("123")
    with pytest.raises(ValueError, match="not valid"):
        parse_size("two gigs")


def test_sharded_writer_streams_and_round_trips(tmp_path):
    rng = np.random.RandomState(0)
    tensors = {f"layer.{i}.w": rng.standard_normal((16, 8 + i)).astype(np.float32) for i in range(10)}
    tensors["bf16"] = rng.standard_normal((5, 3)).astype(ml_dtypes.bfloat16)
    tensors["ids"] = np.arange(7, dtype=np.int64)
    tensors["half"] = rng.standard_normal(4).astype(np.float16)
    produced = []

    def lazy(name):  # producers are called only when their tensor is written
        def make():
            produced.append(name)
            return tensors[name]
        return make

    shard = 1200
    summary = save_sharded(tmp_path, [(n, lazy(n)) for n in tensors], shard_size=shard)
    assert produced == list(tensors)
    assert summary["peak_buffer_bytes"] <= shard  # memory near one shard
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    n = len(summary["files"]) - 1
    assert n > 3 and set(index["weight_map"]) == set(tensors)
    assert sorted(set(index["weight_map"].values())) == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    with SafetensorsReader(tmp_path) as r:
        assert set(r.names()) == set(tensors)
        for name, t in tensors.items():
            got = r.get(name)
            assert got.dtype == t.dtype and got.shape == t.shape
            np.testing.assert_array_equal(got.astype(np.float64), t.astype(np.float64))
        assert r.num_params() == sum(t.size for t in tensors.values())
    # the files are standard safetensors: the reference library reads them (non-bf16 via numpy)
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(tmp_path / index["weight_map"]["layer.3.w"], framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        np.testing.assert_array_equal(f.get_tensor("layer.3.w"), tensors["layer.3.w"])


def test_reader_reads_reference_files_and_single_file(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    a = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.ones(2, np.int32)}
    safetensors_numpy.save_file(a, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with SafetensorsReader(tmp_path) as r:
        np.testing.assert_array_equal(r.get("x"), a["x"])
        assert r.shape("y") == (2,) and r.dtype("y") == "I32"
    # small enough for one shard -> a single model.safetensors, no index
    out = tmp_path / "single"
    w = ShardedWriter(out, "1MB")
    w.add("x", a["x"])
    files = w.close()
    assert [f.name for f in files] == ["model.safetensors"] and not (out / "model.safetensors.index.json").exists()
    write_file(tmp_path / "one.safetensors", {"z": np.zeros((2, 2), np.float32)})
    assert SafetensorsReader(tmp_path / "one.safetensors").get("z").shape == (2, 2)


def test_sharded_hf_export_of_a_model_above_the_shard_size_round_trips(tmp_path):
    moe = MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=16, norm_topk=True, balance_loss="switch")
    model = LMConfig(vocab_size=64, embed_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, max_seq_len=64,
                     moe=moe)
    cfg = Config(model=model, data=DataConfig(seq_len=32))
    from jaxmoe.models import lm

    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), model))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    total = sum(int(np.prod(s.shape)) * 4 for s in jax.tree.leaves(shapes))
    summary = save_hf(cfg, params, "mixtral", tmp_path / "hf", shard_size=total // 5)
    assert summary["total_size"] == total
    shards = sorted((tmp_path / "hf").glob("model-*-of-*.safetensors"))
    assert len(shards) >= 5 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    assert summary["peak_buffer_bytes"] <= total // 5
    cfg2, back = load_hf(tmp_path / "hf")
    assert cfg2.model == model
    jax.tree.map(np.testing.assert_array_equal, back, params)
    # re-export into the same directory unsharded: stale shards and index are removed
    save_hf(cfg, params, "mixtral", tmp_path / "hf", shard_size="1GB")
    assert [p.name for p in (tmp_path / "hf").glob("*.safetensors")] == ["model.safetensors"]
    assert not (tmp_path / "hf" / "model.safetensors.index.json").exists()
    jax.tree.map(np.testing.assert_array_equal, load_hf(tmp_path / "hf")[1], params)
