"""Text pretraining data: read documents, tokenise, pack into fixed-length sequences,
and serve shuffled, resumable batches through grain.

Packing
-------
Every document is tokenised, followed by the tokenizer's ``eos_id``, and all documents are
concatenated (in reading order) into one token stream. The stream is cut into
``num_total = len(stream) // (seq_len + 1)`` non-overlapping sequences of ``seq_len + 1``
tokens (the tail is dropped). A model trains on ``inputs = tokens[:, :-1]`` and
``targets = tokens[:, 1:]``.

Splits
------
The last ``ceil(eval_fraction * num_total)`` sequences are the eval split, the rest the
train split (deterministic, independent of the seed).

Batches
-------
``TextPipeline.iterator()`` yields ``{"tokens": np.ndarray int32 [batch_size, seq_len + 1]}``
and supports ``get_state()`` / ``set_state()`` for exact resumption (store the state in
the checkpoint). The train split is shuffled with a fresh permutation every epoch and
repeats forever by default; the eval split is read in order, once, by default.
Incomplete final batches are dropped, so every batch has the same shape (one jit).

``import grain`` happens only inside `build_text_pipeline`, so reading documents and
`default_corpus` work where grain is not installed.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxmoe.data.tokenizers import load_tokenizer

__all__ = [
    "TEXT_SUFFIXES",
    "DataError",
    "TextPipeline",
    "build_text_pipeline",
    "default_corpus",
    "default_documents",
    "pack_tokens",
    "read_documents",
    "tokenize_documents",
]

TEXT_SUFFIXES = (".txt", ".jsonl")


from jaxmoe.errors import DataError  # noqa: E402,F401  (re-exported)


# --------------------------------------------------------------------------- corpus


def default_documents() -> list[str]:
    """The English Python documentation topics shipped with every Python installation
    (``pydoc_data.topics.topics``), one document per topic, in sorted topic order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def default_corpus() -> str:
    """All of `default_documents` as one string (~465 KB of English text), joined by a
    blank line."""
    return "\n\n".join(default_documents())


def _decode_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"File {path} is not valid UTF-8 text (undecodable byte at offset {e.start}); "
            "convert it to UTF-8 or remove it from the data path."
        ) from None


def _read_txt(path: Path) -> list[str]:
    # One document per .txt file: paragraphs of one text stay in one document.
    return [_decode_file(path)]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(_decode_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {lineno}: not valid JSON ({e.msg}); each line must be one "
                "JSON object."
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {lineno}: expected a JSON object with a {text_field!r} field, "
                f"got {type(record).__name__}."
            )
        if text_field not in record:
            keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
            raise DataError(
                f"{path}, line {lineno}: no {text_field!r} field (fields present: {keys}); "
                "set text_field to the field that holds the text."
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(
                f"{path}, line {lineno}: field {text_field!r} must be a string, got "
                f"{type(text).__name__}."
            )
        docs.append(text)
    return docs


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _data_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not _is_hidden(p, path)
        )
        if not files:
            raise DataError(
                f"Directory {path} contains no .txt or .jsonl files; put text files there "
                "or pass a file path."
            )
        return files
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise DataError(
            f"Unsupported data file {path}: use a .txt file (one document), a .jsonl file "
            "(one JSON object per line) or a directory of them."
        )
    return [path]


def read_documents(path: str | os.PathLike, *, text_field: str = "text") -> list[str]:
    """Read text documents from ``path``.

    - ``.txt`` file: the whole file is one document.
    - ``.jsonl`` file: one JSON object per line, its ``text_field`` is one document
      (blank lines are skipped).
    - directory: every ``.txt`` / ``.jsonl`` file below it (recursively, hidden files and
      folders skipped), in sorted path order.

    Whitespace-only documents are dropped. Raises `DataError` if the path is missing,
    a directory has no usable files, a file is not UTF-8, a JSON line is malformed or
    lacks ``text_field``, or no document has any non-whitespace text.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"Data path {p} does not exist; pass an existing .txt/.jsonl file or directory, "
            "or path=None for the built-in Python documentation corpus."
        )
    docs: list[str] = []
    for f in _data_files(p):
        docs.extend(_read_jsonl(f, text_field) if f.suffix.lower() == ".jsonl" else _read_txt(f))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"Data path {p} contains no text (every document is empty or whitespace).")
    return docs


# --------------------------------------------------------------------------- packing


def tokenize_documents(docs: Sequence[str], tokenizer) -> np.ndarray:
    """Tokenise documents, append ``eos_id`` after each, concatenate -> token stream [n].

    Stored as uint16 when the vocabulary fits, else int32 (batches are always int32)."""
    eos = np.asarray([tokenizer.eos_id], dtype=np.int32)
    pieces = []
    for ids in tokenizer.encode_many(list(docs)):
        pieces.append(ids)
        pieces.append(eos)
    stream = np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    return stream.astype(dtype)


def pack_tokens(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Token stream [n] -> non-overlapping sequences [n // (seq_len + 1), seq_len + 1]
    (a view; the incomplete tail is dropped)."""
    width = seq_len + 1
    num = len(stream) // width
    return stream[: num * width].reshape(num, width)


def _file_fingerprint(path: str | None) -> tuple:
    """Key that changes when any file at or under ``path`` changes (size or mtime)."""
    if path is None:
        return ("<default>",)
    p = Path(path).resolve()
    if not p.exists():
        return (str(p), "missing")
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@functools.lru_cache(maxsize=8)
def _cached_stream(path: str | None, tokenizer_spec: str, text_field: str, fingerprint: tuple):
    del fingerprint  # part of the cache key only
    tokenizer = load_tokenizer(tokenizer_spec)
    docs = default_documents() if path is None else read_documents(path, text_field=text_field)
    stream = tokenize_documents(docs, tokenizer)
    stream.setflags(write=False)
    return stream


def _load_stream(path, tokenizer_spec: str, text_field: str) -> np.ndarray:
    path = None if path is None else os.fspath(path)
    tok_key = None if tokenizer_spec == "byte" else _file_fingerprint(tokenizer_spec)
    key = (_file_fingerprint(path), tok_key)
    return _cached_stream(path, tokenizer_spec, text_field, key)


def _split_sizes(num_total: int, eval_fraction: float) -> tuple[int, int]:
    num_eval = math.ceil(num_total * eval_fraction) if eval_fraction > 0 else 0
    num_eval = min(num_eval, num_total)
    return num_total - num_eval, num_eval


# --------------------------------------------------------------------------- pipeline


class _PackedSequences:
    """grain random-access source: item i is sequence ``start + i`` of the packed corpus."""

    def __init__(self, sequences: np.ndarray, start: int, count: int):
        self._sequences = sequences
        self._start = start
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"tokens": self._sequences[self._start + index].astype(np.int32)}

    def __repr__(self) -> str:
        return f"_PackedSequences(start={self._start}, count={self._count})"


@dataclass(frozen=True)
class TextPipeline:
    """A packed text split plus the settings to iterate it.

    ``sequence_indices`` are the positions of this split's sequences in the packed corpus
    (train: ``range(0, num_train)``, eval: ``range(num_train, num_total)``);
    ``sequences`` is the full packed corpus ``[num_total, seq_len + 1]`` (read-only).
    """

    tokenizer: Any
    sequences: np.ndarray = field(repr=False)
    sequence_indices: range
    seq_len: int
    batch_size: int
    split: str
    seed: int
    shuffle: bool
    num_epochs: int | None
    num_tokens: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def num_sequences(self) -> int:
        """Sequences in this split."""
        return len(self.sequence_indices)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_sequences // self.batch_size

    def dataset(self):
        """The grain ``MapDataset`` of batches (random access: ``ds[i]`` is batch i)."""
        import grain

        source = _PackedSequences(self.sequences, self.sequence_indices.start, self.num_sequences)
        ds = grain.MapDataset.source(source)
        if self.shuffle:
            # Grain reseeds each epoch with (seed + epoch); mixing the user seed first keeps
            # seed s, epoch e from reusing the order of seed s + 1, epoch e - 1.
            mixed = int(np.random.SeedSequence([self.seed, 0x7E47]).generate_state(1)[0])
            ds = ds.shuffle(seed=mixed)
        ds = ds.repeat(self.num_epochs)
        return ds.batch(self.batch_size, drop_remainder=True)

    def iterator(self):
        """A fresh grain iterator over ``{"tokens": int32 [batch, seq_len + 1]}`` batches,
        with ``get_state()`` / ``set_state(state)`` for exact resumption."""
        import grain

        # Slicing a numpy array is cheap: read synchronously (no threads, no prefetch buffer).
        options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        return iter(self.dataset().to_iter_dataset(read_options=options))


def _is_positive_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1


def _validate(seq_len, batch_size, split, eval_fraction, num_epochs) -> None:
    if not _is_positive_int(seq_len):
        raise DataError(f"seq_len must be a positive integer, got {seq_len!r}.")
    if not _is_positive_int(batch_size):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}.")
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}.")
    if num_epochs is not None and not _is_positive_int(num_epochs):
        raise DataError(f"num_epochs must be None or a positive integer, got {num_epochs!r}.")


def _tokens_needed(batch_size: int, seq_len: int, split: str, eval_fraction: float) -> int:
    """Smallest token-stream length whose ``split`` holds at least one batch."""
    n = batch_size
    while True:
        num_train, num_eval = _split_sizes(n, eval_fraction)
        if (num_train if split == "train" else num_eval) >= batch_size:
            return n * (seq_len + 1)
        n += 1


def build_text_pipeline(
    *,
    path: str | os.PathLike | None,
    tokenizer: str = "byte",
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    eval_fraction: float = 0.05,
    text_field: str = "text",
    shuffle: bool | None = None,
    num_epochs: int | None = None,
) -> TextPipeline:
    """Build a packed, batched text pipeline.

    Args:
      path: a .txt / .jsonl file or a directory of them (see `read_documents`); ``None``
        uses the built-in Python documentation corpus (`default_documents`).
      tokenizer: ``"byte"`` or the path of a Hugging Face tokenizer ``.json`` file.
      seq_len: model sequence length; batches carry ``seq_len + 1`` tokens.
      batch_size: sequences per batch (incomplete batches are dropped).
      seed: shuffle seed (train split); same seed -> same batches.
      split: ``"train"`` (first sequences) or ``"eval"`` (last ``eval_fraction``).
      eval_fraction: share of packed sequences held out for eval, in [0, 1).
      text_field: JSON field holding the text in .jsonl files.
      shuffle: reshuffle every epoch; default (None) True for train, False for eval.
      num_epochs: passes over the split; default (None) forever for train, 1 for eval.

    The tokenised corpus is cached in memory (keyed by path, file sizes/mtimes, tokenizer
    and text_field), so building the train and eval pipelines tokenises once.
    """
    _validate(seq_len, batch_size, split, eval_fraction, num_epochs)
    seq_len, batch_size = int(seq_len), int(batch_size)
    num_epochs = None if num_epochs is None else int(num_epochs)
    tokenizer_spec = os.fspath(tokenizer)
    tok = load_tokenizer(tokenizer_spec)
    stream = _load_stream(path, tokenizer_spec, text_field)
    sequences = pack_tokens(stream, seq_len)
    num_total = len(sequences)
    num_train, num_eval = _split_sizes(num_total, eval_fraction)
    indices = range(0, num_train) if split == "train" else range(num_train, num_total)
    if len(indices) < batch_size:
        needed = _tokens_needed(batch_size, seq_len, split, eval_fraction)
        where = "the built-in corpus" if path is None else f"{os.fspath(path)}"
        raise DataError(
            f"{where} has {len(stream)} tokens, giving {len(indices)} {split} sequences of "
            f"{seq_len + 1} tokens, fewer than batch_size={batch_size}; this needs at least "
            f"{needed} tokens (eval_fraction={eval_fraction}), so add text or lower seq_len "
            "or batch_size."
        )
    if shuffle is None:
        shuffle = split == "train"
    if num_epochs is None and split == "eval":
        num_epochs = 1
    return TextPipeline(
        tokenizer=tok,
        sequences=sequences,
        sequence_indices=indices,
        seq_len=seq_len,
        batch_size=batch_size,
        split=split,
        seed=seed,
        shuffle=bool(shuffle),
        num_epochs=num_epochs,
        num_tokens=int(len(stream)),
    )

