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
(tests check both directions).
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
        self._maps: dict[Path, np.memmap] = {}

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

    def get(self, name: str) -> np.ndarray:
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
            mm = self._maps[fp] = np.memmap(fp, dtype=np.uint8, mode="r")
        raw = mm[start + a:start + b]
        return np.array(raw.view(DTYPES[code]).reshape(info["shape"]))

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
