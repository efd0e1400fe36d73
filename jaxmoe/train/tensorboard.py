"""TensorBoard scalar event files without TensorFlow (``train.tensorboard: true``).

An event file is a sequence of TFRecords, each holding one serialised ``Event`` protobuf::

    record := uint64 length (little endian) | uint32 masked_crc32c(length bytes)
              | data[length] | uint32 masked_crc32c(data)
    masked_crc32c(x) := ((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32   (CRC-32C, Castagnoli)

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

The first event of a file carries ``file_version = "brain.Event:2"``; every later one a
summary of scalar values. :class:`EventWriter` writes them by hand (varints, little-endian
fixed-width fields), :func:`read_events` parses them back (checking both CRCs), so the
format is tested without TensorFlow or TensorBoard installed. ``tensorboard --logdir RUN``
shows the curves.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["crc32c", "masked_crc32c", "encode_event", "EventWriter", "read_events", "read_scalars", "TeeWriter"]

FILE_VERSION = "brain.Event:2"


# ----------------------------------------------------------------------------- CRC-32C


def _make_table() -> list[int]:
    poly = 0x82F63B78  # reversed Castagnoli polynomial
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- protobuf


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _scalar_value(tag: str, value: float) -> bytes:
    return _len_delimited(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def encode_event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """Serialised ``Event`` with either ``file_version`` or a summary of scalar values."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _len_delimited(3, file_version.encode("utf-8"))
    if scalars:
        summary = b"".join(_len_delimited(1, _scalar_value(tag, v)) for tag, v in scalars.items())
        out += _len_delimited(5, summary)
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


# ----------------------------------------------------------------------------- writer


def _scalar_fields(record: dict) -> dict[str, float]:
    """The finite real scalars of a metrics record (``step`` and flags excluded)."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, (bool, np.bool_, str, dict, list, tuple)):
            continue
        a = np.asarray(v)
        if a.ndim != 0 or not np.issubdtype(a.dtype, np.number):
            continue
        x = float(a)
        if math.isfinite(x):
            out[k] = x
    return out


class EventWriter:
    """Appends scalar summaries to ``logdir/events.out.tfevents.<time>.<host>.<pid>``.

    ``write(record)`` takes a metrics record (``{"step": n, "loss": ..., ...}``) and writes
    every finite scalar field as a ``train/<name>`` (or ``eval/<name>``) tag. Each record is
    flushed, so a killed run keeps what it logged.
    """

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._f = open(self.path, "ab")
        self._emit(encode_event(time.time(), 0, file_version=FILE_VERSION))

    def _emit(self, data: bytes) -> None:
        self._f.write(_record(data))
        self._f.flush()

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
        if scalars:
            self._emit(encode_event(time.time() if wall_time is None else wall_time, step, scalars=scalars))

    def write(self, record: dict) -> None:
        scalars = _scalar_fields(record)
        tagged = {f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}": v for k, v in scalars.items()}
        self.add_scalars(int(record.get("step", 0)), tagged)

    def close(self) -> None:
        self._f.close()


class TeeWriter:
    """Writes every record to several writers (JSONL + TensorBoard)."""

    def __init__(self, *writers):
        self.writers = [w for w in writers if w is not None]

    def write(self, record: dict) -> None:
        for w in self.writers:
            w.write(record)

    def close(self) -> None:
        for w in self.writers:
            w.close()


# ----------------------------------------------------------------------------- reader


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field, wire_type, value)`` of a serialised protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _read_varint(buf, pos)
        elif wt == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield field, wt, value


def decode_event(data: bytes) -> dict:
    """``{"wall_time", "step", "file_version"?, "scalars": {tag: value}}`` of one Event."""
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0, "scalars": {}}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode("utf-8")
        elif field == 5:
            for f_val, _, val in _fields(value):
                if f_val != 1:
                    continue
                tag, simple = None, None
                for f, _, v in _fields(val):
                    if f == 1:
                        tag = v.decode("utf-8")
                    elif f == 2:
                        simple = struct.unpack("<f", v)[0]
                if tag is not None and simple is not None:
                    event["scalars"][tag] = simple
    return event


def read_events(path: str | Path) -> list[dict]:
    """Every event of one event file, checking the framing and both CRCs of each record."""
    data = Path(path).read_bytes()
    pos, out = 0, []
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if crc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12:pos + 12 + length]
        if len(body) != length or pos + 16 + length > len(data):
            raise ValueError(f"{path}: truncated record at byte {pos}")
        (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if crc != masked_crc32c(body):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        out.append(decode_event(body))
        pos += 16 + length
    return out


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` over all event files of ``logdir`` (in file order)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for ev in read_events(f):
            for tag, v in ev["scalars"].items():
                out.setdefault(tag, []).append((ev["step"], v))
    return out
