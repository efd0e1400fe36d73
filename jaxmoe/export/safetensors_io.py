"""Streaming safetensors reading and writing, with Hugging Face style sharding.

A model directory holds either ``model.safetensors`` or, above the shard size, shards
``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``), exactly as
``transformers`` writes and reads them.

Memory stays near one shard: :class:`ShardedWriter` buffers tensors until the next one
would push the shard over ``shard_size``, writes that shard and drops it (tensor producers
may be callables, so nothing is materialised before its shard is written).
:class:`SafetensorsReader` parses only the file headers and memory-maps the files;
``get(name)`` reads one tensor. The file format (8-byte little-endian header length, JSON
header with dtype/shape/data_offsets, raw little-endian data) is implemented here directly
so bfloat16 and float8 work without torch; files are interchangeable with ``safetensors``
(tests check both directions). The reader keeps at most one file memory-mapped: reading a
tensor of another shard drops the previous map, so its pages can be released.

FP8 block-quantised checkpoints (DeepSeek-V3/R1: ``quantization_config = {"quant_method":
"fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}``) store a weight ``W [M, N]`` as
float8_e4m3fn with ``W_scale_inv [ceil(M/128), ceil(N/128)]`` (float32); the real weight is
``W * scale_inv`` broadcast over each 128 x 128 block (edge blocks are partial).
:class:`Fp8BlockReader` wraps a reader and dequantises while streaming: ``get(name)``
returns the float32 weight, computed block-row by block-row straight from the memory map,
so an import holds the output being built plus one tensor (never a whole checkpoint).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import ml_dtypes
import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}

TensorLike = Union[np.ndarray, Callable[[], np.ndarray]]


def parse_size(size: int | str) -> int:
    """``"2GB"``, ``"500MB"``, ``"10KiB"``, ``"123"`` or an int -> bytes (GB = 10^9, GiB = 2^30)."""
    if isinstance(size, (int, np.integer)):
        return int(size)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*", str(size).lower())
    if not m:
        raise ValueError(f"shard size {size!r} is not valid; write it like 2GB, 500MB or 1048576.")
    num, unit = float(m.group(1)), m.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    out = int(num * base ** power)
    if out <= 0:
        raise ValueError(f"shard size {size!r} must be positive.")
    return out


def dtype_code(dtype) -> str:
    try:
        return _CODES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors.") from None


def write_file(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """Write one safetensors file; returns the number of data bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name in sorted(tensors):  # safetensors orders tensors by name too
        a = np.ascontiguousarray(tensors[name])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        header[name] = {"dtype": dtype_code(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
    os.replace(tmp, path)
    return offset


class ShardedWriter:
    """Write tensors one shard at a time into ``out_dir`` (Hugging Face file names).

    ``add(name, tensor_or_callable)``; ``close()`` renames the shards once their count is
    known and writes the index (only when there is more than one shard). A tensor larger than
    ``shard_size`` gets a shard of its own.
    """

    def __init__(self, out_dir: str | Path, shard_size: int | str = "2GB", metadata: dict | None = None,
                 prefix: str = "model"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = parse_size(shard_size)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.prefix = prefix
        self._buffer: dict[str, np.ndarray] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0
        self.num_params = 0
        self.peak_buffer_bytes = 0
        self._names: set[str] = set()

    def add(self, name: str, tensor: TensorLike) -> None:
        if name in self._names:
            raise ValueError(f"tensor {name!r} written twice.")
        self._names.add(name)
        a = np.asarray(tensor() if callable(tensor) else tensor)
        if self._buffer and self._buffer_bytes + a.nbytes > self.shard_size:
            self._flush()
        self._buffer[name] = a
        self._buffer_bytes += a.nbytes
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, self._buffer_bytes)
        self.total_size += a.nbytes
        self.num_params += int(a.size)

    def _flush(self) -> None:
        if not self._buffer:
            return
        path = self.out_dir / f".{self.prefix}-part{len(self._shards):05d}.safetensors"
        write_file(path, self._buffer, self.metadata)
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> list[Path]:
        """Finish writing; returns the final file paths (index last, if any)."""
        self._flush()
        n = len(self._shards)
        for stale in list(self.out_dir.glob(f"{self.prefix}-*-of-*.safetensors")) + [
                self.out_dir / f"{self.prefix}.safetensors", self.out_dir / f"{self.prefix}.safetensors.index.json"]:
            if stale.exists() and stale not in [p for p, _ in self._shards]:
                stale.unlink()  # leftovers of an earlier export into the same directory
        if n <= 1:
            final = self.out_dir / f"{self.prefix}.safetensors"
            if n == 1:
                os.replace(self._shards[0][0], final)
            else:
                write_file(final, {}, self.metadata)
            return [final]
        files, weight_map = [], {}
        for i, (path, names) in enumerate(self._shards):
            final = self.out_dir / f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(path, final)
            files.append(final)
            for name in names:
                weight_map[name] = final.name
        index = self.out_dir / f"{self.prefix}.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": self.total_size},
                                     "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        return files + [index]


def save_sharded(out_dir: str | Path, tensors: Iterable[tuple[str, TensorLike]], shard_size: int | str = "2GB",
                 metadata: dict | None = None) -> dict:
    """Write ``(name, tensor or callable)`` pairs; returns ``{"files", "total_size", "num_params",
    "peak_buffer_bytes"}``."""
    w = ShardedWriter(out_dir, shard_size, metadata)
    for name, t in tensors:
        w.add(name, t)
    files = w.close()
    return {"files": [str(f) for f in files], "total_size": w.total_size, "num_params": w.num_params,
            "peak_buffer_bytes": w.peak_buffer_bytes}


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header of {n} bytes).")
        header = json.loads(f.read(n))
    return header, 8 + n


class SafetensorsReader:
    """Lazy reader over a model directory (single file or sharded with an index) or one file.

    ``names()``, ``shape(name)``, ``dtype(name)`` read only headers; ``get(name)`` returns
    one tensor as a numpy array (a copy, read through a memory map).
    """

    def __init__(self, path: str | Path):
        p = Path(path)
        if p.is_dir():
            if (p / INDEX_NAME).exists():
                index = json.loads((p / INDEX_NAME).read_text())
                files = sorted(set(index["weight_map"].values()))
                paths = [p / f for f in files]
            elif (p / SINGLE_NAME).exists():
                paths = [p / SINGLE_NAME]
            else:
                paths = sorted(p.glob("*.safetensors"))
            if not paths:
                raise FileNotFoundError(f"no safetensors files in {p}.")
        elif p.exists():
            paths = [p]
        else:
            raise FileNotFoundError(f"{p} does not exist.")
        self.paths = paths
        self._entries: dict[str, tuple[Path, int, dict]] = {}
        self.metadata: dict[str, str] = {}
        for fp in paths:
            if not fp.exists():
                raise FileNotFoundError(f"shard {fp.name} listed in the index of {p} is missing.")
            header, data_start = _read_header(fp)
            self.metadata.update(header.pop("__metadata__", {}) or {})
            for name, info in header.items():
                self._entries[name] = (fp, data_start, info)
        self._maps: dict[Path, np.memmap] = {}  # at most one: the file read last

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][2]["shape"])

    def dtype(self, name: str) -> str:
        return self._entries[name][2]["dtype"]

    def nbytes(self, name: str) -> int:
        a, b = self._entries[name][2]["data_offsets"]
        return b - a

    def view(self, name: str) -> np.ndarray:
        """One tensor as a read-only view of the memory map (no copy; valid until a tensor
        of another file is read)."""
        try:
            fp, start, info = self._entries[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in {self.paths[0].parent}.") from None
        code = info["dtype"]
        if code not in DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {code}, which is not supported.")
        a, b = info["data_offsets"]
        mm = self._maps.get(fp)
        if mm is None:
            self._maps.clear()  # one file mapped at a time: memory stays near one shard
            mm = self._maps[fp] = np.memmap(fp, dtype=np.uint8, mode="r")
        raw = mm[start + a:start + b]
        return raw.view(DTYPES[code]).reshape(info["shape"])

    def get(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (a copy)."""
        return np.array(self.view(name))

    def get_float32(self, name: str) -> np.ndarray:
        """One tensor as float32, converted straight from the memory map (at most one
        allocation; a float32 tensor comes back as a read-only view of the map)."""
        return np.asarray(self.view(name), np.float32)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._entries:
            yield name, self.get(name)

    def num_params(self) -> int:
        return int(sum(int(np.prod(info["shape"], dtype=np.int64)) for _, _, info in self._entries.values()))

    def total_size(self) -> int:
        return int(sum(self.nbytes(n) for n in self._entries))

    def close(self) -> None:
        self._maps.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- FP8 blocks

SCALE_SUFFIX = "_scale_inv"


def fp8_block_size(quantization_config: dict | None, where: str = "config.json") -> tuple[int, int] | None:
    """``(block_rows, block_cols)`` of a block-FP8 ``quantization_config`` (None when there is
    none); raises :class:`~jaxmoe.errors.ExportError` (one sentence) for anything else."""
    from jaxmoe.errors import ExportError

    qc = quantization_config
    if not qc:
        return None
    if not isinstance(qc, dict):
        raise ExportError(f"quantization_config in {where} must be a mapping, got {qc!r}.")
    method = qc.get("quant_method")
    if method != "fp8":
        raise ExportError(f"quantization_config.quant_method={method!r} in {where} is not supported; jaxmoe reads "
                          "only block-wise FP8 checkpoints (quant_method 'fp8', as DeepSeek-V3 stores them); "
                          "dequantise it to bf16/fp32 first.")
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ExportError(f"quantization_config.fmt={fmt!r} in {where} is not supported; only 'e4m3' "
                          "(float8_e4m3fn) weights are.")
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise ExportError(f"quantization_config.activation_scheme={scheme!r} in {where} is not supported; only "
                          "'dynamic' (weights-only scales) is.")
    block = qc.get("weight_block_size")
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise ExportError(f"quantization_config.weight_block_size={block!r} in {where} is not supported; give two "
                          "positive integers such as [128, 128] (per-tensor or per-channel FP8 is not read).")
    return int(block[0]), int(block[1])


def dequantize_fp8_blocks(weight: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int] = (128, 128),
                          dtype=np.float32, name: str = "weight") -> np.ndarray:
    """``weight [M, N]`` (float8) times ``scale_inv [ceil(M/bm), ceil(N/bn)]`` broadcast over
    each ``bm x bn`` block -> ``dtype`` ``[M, N]``. Converts and scales in place, block-row by
    block-row, so the output is the only full-size allocation and ``weight`` may be a
    memory-map view."""
    bm, bn = block
    if weight.ndim != 2:
        raise ValueError(f"FP8 tensor {name!r} has shape {list(weight.shape)}; block scales need a 2-D weight.")
    m, n = weight.shape
    expected = (-(-m // bm), -(-n // bn))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(f"the scales of FP8 tensor {name!r} have shape {list(scale_inv.shape)}, but a "
                         f"{list(weight.shape)} weight in {bm}x{bn} blocks needs {list(expected)}.")
    scale = np.asarray(scale_inv, np.float32)
    out = np.empty((m, n), dtype)
    for i in range(expected[0]):
        rows = slice(i * bm, min((i + 1) * bm, m))
        per_col = np.repeat(scale[i], bn)[:n].astype(dtype)  # [N]
        out[rows] = weight[rows]  # float8 -> dtype, converted in numpy's small buffers
        out[rows] *= per_col
    return out


class Fp8BlockReader:
    """A reader that hides ``*_scale_inv`` tensors and returns their weights dequantised.

    Same interface as :class:`SafetensorsReader` (``names``, ``in``, ``shape``, ``dtype``,
    ``get``, ``paths``); ``get`` of a float8 weight returns ``float32`` (or ``dtype``) values
    ``W * scale_inv`` per block. A float8 tensor without its scales is refused."""

    def __init__(self, reader: SafetensorsReader, block: tuple[int, int] = (128, 128), dtype=np.float32):
        self.reader, self.block, self.out_dtype = reader, tuple(block), dtype
        self.paths = reader.paths
        names = reader.names()
        present = set(names)
        self._scaled = {n[: -len(SCALE_SUFFIX)] for n in names
                        if n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in present}
        self._names = [n for n in names if not (n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in self._scaled)]

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self.reader and not (name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in self._scaled)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def dtype(self, name: str) -> str:
        return "F32" if name in self._scaled else self.reader.dtype(name)

    def quantized(self, name: str) -> bool:
        return name in self._scaled

    def get(self, name: str) -> np.ndarray:
        code = self.reader.dtype(name)
        if name not in self._scaled:
            if code.startswith("F8"):
                raise ValueError(f"FP8 tensor {name!r} has no '{name}{SCALE_SUFFIX}' block scales.")
            return self.reader.get(name)
        if not code.startswith("F8"):
            raise ValueError(f"tensor {name!r} has block scales but is stored as {code}, not FP8.")
        scale = self.reader.get(name + SCALE_SUFFIX)  # small; read before the weight's view
        return dequantize_fp8_blocks(self.reader.view(name), scale, self.block, self.out_dtype, name)

    def get_float32(self, name: str) -> np.ndarray:
        if name in self._scaled or self.reader.dtype(name).startswith("F8"):
            return np.asarray(self.get(name), np.float32)
        return self.reader.get_float32(name)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
