"""The jitted LM decode step as a serialized StableHLO artifact (``jax.export``).

:func:`export_decode_step` writes, into ``out_dir``::

    decode_step.jax_export   jax.export serialization (StableHLO + calling convention)
    decode_step.mlir         the StableHLO module as text (for inspection / other runtimes)
    params/                  the parameters as safetensors (sharded like an HF export)
    manifest.json            parameter names (argument order), cache leaf shapes/dtypes, sizes

The exported function has flat arguments so it does not depend on Python pytree types::

    step(params: list[array], token: int32[batch], cache: list[array]) -> (logits fp32[batch, vocab], cache)

:func:`load_decode_step` deserializes it into a :class:`DecodeArtifact` whose ``step`` runs
it (no jaxmoe model code involved) and whose ``init_cache`` builds the zero cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.export.safetensors_io import SafetensorsReader, save_sharded
from jaxmoe.models.lm import LMConfig

ARTIFACT = "decode_step.jax_export"
DEFAULT_PLATFORMS = ("cpu", "cuda")
log = logging.getLogger("jaxmoe")


def _names(tree) -> list[str]:
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for k in path:
            parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
        out.append("/".join(parts))
    return out


def export_decode_step(cfg: LMConfig, params, out_dir: str | Path, *, batch: int = 1, max_len: int | None = None,
                       platforms: tuple[str, ...] | None = None, shard_size: int | str = "2GB") -> Path:
    """Serialize ``lm.decode_step`` for ``[batch]`` tokens and a cache of ``max_len`` positions.

    ``platforms`` defaults to CPU and CUDA (falling back to this host's platform when a
    lowering is unavailable); the manifest records which were lowered."""
    from jaxmoe.models import lm

    from jaxmoe.export.families.common import ExportError

    if cfg.family != "lm":
        raise ExportError(f"StableHLO export covers the language model decode step; got model.family={cfg.family!r}.")
    try:
        import flatbuffers  # noqa: F401  (jax.export serialization needs it)
    except ImportError:
        raise ExportError("StableHLO serialization needs the 'flatbuffers' package (pip install flatbuffers).") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_len = int(max_len or cfg.max_seq_len)
    leaves, pdef = jax.tree.flatten(params)
    cache = jax.eval_shape(lambda: lm.init_cache(cfg, batch, max_len))
    cache_leaves, cdef = jax.tree.flatten(cache)

    def step(param_leaves, token, cache_leaves):
        p = jax.tree.unflatten(pdef, param_leaves)
        c = jax.tree.unflatten(cdef, cache_leaves)
        logits, c = lm.decode_step(p, token, cfg, c)
        return logits, jax.tree.leaves(c)

    specs = [jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype)
             for a in leaves]
    args = (specs, jax.ShapeDtypeStruct((batch,), jnp.int32), list(cache_leaves))
    if platforms is None:  # portable by default: one artifact for CPU and CUDA hosts
        try:
            exported = jax.export.export(jax.jit(step), platforms=DEFAULT_PLATFORMS)(*args)
        except Exception as e:  # some lowering is missing for a platform: fall back to this host's
            log.warning("multi-platform StableHLO export failed (%s); exporting for %s only", e, jax.default_backend())
            exported = jax.export.export(jax.jit(step))(*args)
    else:
        exported = jax.export.export(jax.jit(step), platforms=tuple(platforms))(*args)
    (out / ARTIFACT).write_bytes(exported.serialize())
    (out / "decode_step.mlir").write_text(exported.mlir_module())
    names = _names(params)
    save_sharded(out / "params", [(n, (lambda a=a: np.asarray(a))) for n, a in zip(names, leaves)], shard_size)
    manifest = {
        "format": "jax.export", "jax_version": jax.__version__, "platforms": list(exported.platforms),
        "function": "step(params, token[batch], cache) -> (logits[batch, vocab], cache)",
        "batch": batch, "max_len": max_len, "vocab_size": cfg.vocab_size, "param_names": names,
        "cache": [{"shape": list(c.shape), "dtype": str(c.dtype)} for c in cache_leaves],
        "cache_index_leaf": _names(cache).index("index"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


class DecodeArtifact:
    """A deserialized decode step with its parameters."""

    def __init__(self, path: str | Path):
        p = Path(path)
        if not (p / ARTIFACT).is_file():
            raise FileNotFoundError(f"{p} holds no {ARTIFACT} (write one with `jaxmoe export --stablehlo`).")
        self.manifest = json.loads((p / "manifest.json").read_text())
        self.exported = jax.export.deserialize(bytearray((p / ARTIFACT).read_bytes()))
        self.device = jax.devices()[0]  # every input committed to it: one compilation for all steps
        with SafetensorsReader(p / "params") as reader:
            self.params = [jax.device_put(reader.get(n), self.device) for n in self.manifest["param_names"]]
        self._call = jax.jit(self.exported.call)  # compiled once, reused by every step
        self.batch = self.manifest["batch"]
        self.max_len = self.manifest["max_len"]

    def init_cache(self) -> list[jax.Array]:
        return [jax.device_put(jnp.zeros(c["shape"], jnp.dtype(c["dtype"])), self.device)
                for c in self.manifest["cache"]]

    def step(self, token, cache: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
        """``token int32[batch]`` -> ``(logits [batch, vocab], new cache)``."""
        token = jax.device_put(jnp.asarray(token, jnp.int32), self.device)
        logits, cache = self._call(self.params, token, cache)
        return logits, list(cache)

    def generate(self, prompt: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """Greedy decoding: ``prompt int[batch, plen]`` -> new tokens ``[batch, max_new_tokens]``."""
        prompt = np.asarray(prompt, np.int32)
        if prompt.shape[1] + max_new_tokens > self.max_len:
            raise ValueError(f"prompt + new tokens exceed the artifact's cache length {self.max_len}.")
        cache = self.init_cache()
        logits = None
        for t in range(prompt.shape[1]):
            logits, cache = self.step(prompt[:, t], cache)
        out = []
        for _ in range(max_new_tokens):
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            out.append(np.asarray(tok))
            logits, cache = self.step(tok, cache)
        return np.stack(out, axis=1)


def load_decode_step(path: str | Path) -> DecodeArtifact:
    return DecodeArtifact(path)
