"""Tokenizers for the text pipeline: a dependency-free byte tokenizer and a Hugging Face
`tokenizers` JSON wrapper, behind one small interface.

Both tokenizers expose::

    vocab_size: int                     # number of ids the model's embedding must cover
    pad_id, bos_id, eos_id: int         # special ids
    encode(text: str) -> list[int]      # no special tokens added
    encode_array(text: str) -> np.ndarray  # same ids as int32 [len]
    encode_many(texts) -> list[np.ndarray] # batch version of encode_array
    decode(ids) -> str                  # special ids are skipped

Byte tokenizer ids: 0..255 are the UTF-8 bytes, then ``PAD_ID = 256``, ``BOS_ID = 257``,
``EOS_ID = 258``; ``vocab_size = 259``.

This module imports neither grain nor jax; ``tokenizers`` is imported only when a JSON
tokenizer is loaded or trained.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "BYTE_BOS_ID",
    "BYTE_EOS_ID",
    "BYTE_PAD_ID",
    "BYTE_VOCAB_SIZE",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "check_token_ids",
    "check_tokenizer_fits",
    "tokenizer_file_vocab_size",
    "load_tokenizer",
    "train_bpe_tokenizer",
]

BYTE_PAD_ID = 256
BYTE_BOS_ID = 257
BYTE_EOS_ID = 258
BYTE_VOCAB_SIZE = 259

# Special tokens written by `train_bpe_tokenizer` (ids 0, 1, 2 in that order).
BPE_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")

# Names searched (in order) when wrapping a JSON tokenizer someone else trained.
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
_BOS_CANDIDATES = ("<bos>", "<s>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>")
_EOS_CANDIDATES = ("<eos>", "</s>", "[EOS]", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>")


class Tokenizer(Protocol):
    """What the data pipeline and decoding need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def check_token_ids(ids, vocab_size: int, what: str = "the prompt") -> None:
    """Raise :class:`~jaxmoe.errors.DataError` (one sentence) when a token id of ``what`` lies
    outside the model's vocabulary ``[0, vocab_size)`` (an embedding lookup there gives
    garbage: NaN logits, NUL bytes)."""
    from jaxmoe.errors import DataError

    arr = np.asarray(ids).reshape(-1)
    if arr.size == 0:
        return
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise DataError(
            f"{what} has token id {int(arr[bad][0])}, but the model's vocabulary has only {vocab_size} ids "
            f"(0..{vocab_size - 1}); use the tokenizer the model was trained with (set data.tokenizer to its "
            "tokenizer.json) or a model whose vocab_size covers this tokenizer."
        )


def check_tokenizer_fits(tokenizer_vocab_size: int, vocab_size: int, what: str = "the tokenizer") -> None:
    """Raise :class:`~jaxmoe.errors.DataError` when a tokenizer can produce ids the model has no
    embedding for (``tokenizer_vocab_size > vocab_size``)."""
    from jaxmoe.errors import DataError

    if tokenizer_vocab_size > vocab_size:
        raise DataError(
            f"{what} has {tokenizer_vocab_size} tokens but the model's vocab_size is {vocab_size}, so some token ids "
            "have no embedding; use the model's own tokenizer or a model with a vocabulary at least that large."
        )


def tokenizer_file_vocab_size(path: str | os.PathLike) -> int | None:
    """Number of ids (added tokens included) of a Hugging Face ``tokenizer.json``; None when
    the ``tokenizers`` package cannot read it."""
    try:
        import tokenizers

        return int(tokenizers.Tokenizer.from_file(os.fspath(path)).get_vocab_size(with_added_tokens=True))
    except Exception:  # not readable here: the caller skips the check
        return None


def _as_id_array(ids, vocab_size: int) -> np.ndarray:
    """ids (list, numpy or jax array) -> 1-D int64 numpy array, range-checked."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(
            f"decode expects a 1-D sequence of token ids, got an array of shape {arr.shape}; "
            "decode each row separately."
        )
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"decode expects integer token ids, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(
            f"token id {int(arr[bad][0])} is outside this tokenizer's vocabulary "
            f"[0, {vocab_size}); mask logits beyond vocab_size before sampling."
        )
    return arr


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255 are bytes, 256 = pad, 257 = bos, 258 = eos.

    `decode` drops the special ids and decodes the remaining bytes with
    ``errors="replace"`` (a sequence cut mid-character yields U+FFFD, never an error).
    """

    vocab_size: int = BYTE_VOCAB_SIZE
    pad_id: int = BYTE_PAD_ID
    bos_id: int = BYTE_BOS_ID
    eos_id: int = BYTE_EOS_ID

    def encode_array(self, text: str) -> np.ndarray:
        """text -> int32 ids [num_bytes] (no special tokens)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        arr = _as_id_array(ids, self.vocab_size)
        return arr[arr < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259, pad_id=256, bos_id=257, eos_id=258)"


class HFTokenizer:
    """A Hugging Face `tokenizers` JSON file (``tokenizer.json``) behind the same interface.

    Special ids are looked up by token name. ``eos`` must exist (the pipeline separates
    documents with it); a missing ``bos`` or ``pad`` falls back to ``eos_id`` (GPT-2
    style). Pass ``pad_token`` / ``bos_token`` / ``eos_token`` to name them explicitly.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ):
        import tokenizers  # local: only needed for JSON tokenizers

        self.path = os.fspath(path)
        try:
            self._tok = tokenizers.Tokenizer.from_file(self.path)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(
                f"Could not load Hugging Face tokenizer file {self.path}: {e}"
            ) from None
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.eos_id = self._find(eos_token, _EOS_CANDIDATES, "eos")
        if self.eos_id is None:
            raise ValueError(
                f"Tokenizer {self.path} has none of the end-of-sequence tokens "
                f"{list(_EOS_CANDIDATES)}; pass eos_token=... naming the token that "
                "separates documents."
            )
        bos = self._find(bos_token, _BOS_CANDIDATES, "bos")
        pad = self._find(pad_token, _PAD_CANDIDATES, "pad")
        self.bos_id = self.eos_id if bos is None else bos
        self.pad_id = self.eos_id if pad is None else pad
        self._special_ids = {self.eos_id, self.bos_id, self.pad_id}

    def _find(self, explicit: str | None, candidates: Sequence[str], what: str) -> int | None:
        if explicit is not None:
            tid = self._tok.token_to_id(explicit)
            if tid is None:
                raise ValueError(f"Tokenizer {self.path} has no token {explicit!r} ({what}_token).")
            return int(tid)
        for name in candidates:
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return int(tid)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        arr = _as_id_array(ids, self.vocab_size)
        keep = [int(i) for i in arr if int(i) not in self._special_ids]
        return self._tok.decode(keep, skip_special_tokens=True)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})"
        )


def load_tokenizer(spec: str | os.PathLike) -> ByteTokenizer | HFTokenizer:
    """``"byte"`` -> `ByteTokenizer`; a path to an existing ``.json`` file -> `HFTokenizer`."""
    from jaxmoe.errors import DataError  # a ValueError: one line on the command line

    spec_str = os.fspath(spec)
    if spec_str == "byte":
        return ByteTokenizer()
    if spec_str.lower().endswith(".json") and os.path.isfile(spec_str):
        try:
            return HFTokenizer(spec_str)
        except ValueError as e:
            raise DataError(" ".join(str(e).split())[:300]) from None
    if spec_str.lower().endswith(".json"):
        raise DataError(
            f"Tokenizer file {spec_str!r} does not exist; pass 'byte' or the path to an "
            "existing Hugging Face tokenizer .json file."
        )
    raise DataError(
        f"Unknown tokenizer {spec_str!r}; valid choices are 'byte' or the path to a "
        "Hugging Face tokenizer .json file (make one with train_bpe_tokenizer)."
    )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike, *, min_frequency: int = 2
) -> HFTokenizer:
    """Train a byte-level BPE tokenizer locally and save it as a JSON file.

    Ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>``; then the 256 byte symbols, then merges,
    so any text (any language) round-trips through encode/decode. ``vocab_size`` must be
    at least 259; the result may be smaller if the texts support fewer merges.
    Returns the saved tokenizer wrapped as an `HFTokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    minimum = len(BPE_SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE tokenizer; use at "
            f"least {minimum} (3 special tokens + 256 bytes)."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BPE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out_path = os.fspath(out_path)
    parent = os.path.dirname(out_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tok.save(out_path)
    return HFTokenizer(out_path)
