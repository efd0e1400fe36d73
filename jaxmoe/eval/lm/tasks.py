"""Language-model evaluation tasks read from files, and answer extraction.

One file is one task; its kind follows from its contents:

- ``perplexity``: a ``.txt`` file (the whole file is one document) or a JSONL file whose
  rows hold ``text`` (one document per row);
- ``choice``: JSONL rows with ``context``, ``choices`` (a list of strings) and ``label``
  (the index of the right choice, or its letter A, B, ...): the format of HellaSwag, ARC
  and MMLU exports;
- ``generation``: JSONL rows with ``question`` and ``answer``; the reference answer is the
  number after ``####`` in ``answer`` (GSM8K), or the whole ``answer`` when it has no
  ``####``; a generation is right when the last number in it equals that number
  (:func:`extract_last_number`, :func:`answers_match`).

Rows may carry other fields; they are ignored. A malformed file is a :class:`DataError`
naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Sequence

from jaxmoe.errors import DataError

KINDS = ("perplexity", "choice", "generation")


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
    context: str
    choices: tuple[str, ...]
    label: int


@dataclasses.dataclass(frozen=True)
class GenerationExample:
    question: str
    answer: str  # the reference answer (the number after ####, or the whole answer)
    solution: str  # the full ``answer`` field (e.g. worked reasoning ending in #### 72)


@dataclasses.dataclass(frozen=True)
class Task:
    """``name`` (the file's stem), ``kind`` (perplexity/choice/generation), ``path`` and its
    items: documents (str), :class:`ChoiceExample` or :class:`GenerationExample`."""

    name: str
    kind: str
    path: str
    items: tuple

    def limit(self, n: int | None) -> "Task":
        """The first ``n`` items (all when ``n`` is None or 0)."""
        return self if not n else dataclasses.replace(self, items=self.items[:n])


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; ``"72."`` -> ``"72"``; None when ``text`` holds no number."""
    m = _NUMBER.search(text.strip())
    if m is None:
        return None
    s = m.group(0).replace("$", "").replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s


def extract_last_number(text: str) -> str | None:
    """The last number in ``text``, normalised (:func:`normalize_number`); None if none."""
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def reference_answer(answer: str) -> str:
    """The reference of a GSM8K-style answer: the text after the last ``####`` (stripped),
    or the whole answer when it has none."""
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()


def answers_match(generation: str, reference: str) -> bool:
    """Exact match: the last number of ``generation`` equals the number of ``reference``;
    when the reference holds no number, the stripped texts are compared."""
    ref = normalize_number(reference)
    if ref is None:
        return generation.strip() == reference.strip()
    return extract_last_number(generation) == ref


def _label(value, n: int, where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: \"label\" must be a choice index or letter, got {value!r}.")
    if isinstance(value, str):
        v = value.strip()
        if len(v) == 1 and v.isalpha():
            value = ord(v.upper()) - ord("A")
        elif v.lstrip("-").isdigit():
            value = int(v)
        else:
            raise DataError(f"{where}: \"label\" must be a choice index or letter, got {value!r}.")
    if not isinstance(value, int) or not 0 <= value < n:
        raise DataError(f"{where}: \"label\"={value!r} is not one of the {n} choices (0..{n - 1} or A..).")
    return value


def read_jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path} line {i} is not valid JSON.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {i} must be a JSON object.")
        rows.append((i, row))
    return rows


def kind_of(row: dict) -> str | None:
    if {"context", "choices", "label"} <= set(row):
        return "choice"
    if {"question", "answer"} <= set(row):
        return "generation"
    if "text" in row:
        return "perplexity"
    return None


def read_task(path: str | Path) -> Task:
    """The task in ``path`` (see the module docstring for the formats)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task file '{path}' does not exist.")
    name = p.stem
    try:
        if p.suffix.lower() != ".jsonl":
            text = p.read_text(encoding="utf-8")
            if not text.strip():
                raise DataError(f"{path} is empty.")
            return Task(name, "perplexity", str(p), (text,))
        rows = read_jsonl_rows(p)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text.") from None
    if not rows:
        raise DataError(f"{path} has no rows.")
    kind = kind_of(rows[0][1])
    if kind is None:
        raise DataError(f"{path} line {rows[0][0]} has none of the task formats: \"context\"+\"choices\"+\"label\" "
                        f"(multiple choice), \"question\"+\"answer\" (generation) or \"text\" (perplexity).")
    items = []
    for i, row in rows:
        where = f"{path} line {i}"
        if kind_of(row) != kind:
            raise DataError(f"{where} is not a {kind} row like line {rows[0][0]}.")
        if kind == "perplexity":
            if not isinstance(row["text"], str):
                raise DataError(f"{where}: \"text\" must be a string.")
            if row["text"]:
                items.append(row["text"])
        elif kind == "choice":
            choices = row["choices"]
            if not isinstance(row["context"], str) or not isinstance(choices, list) or len(choices) < 2 or \
                    not all(isinstance(c, str) and c for c in choices):
                raise DataError(f"{where}: \"context\" must be a string and \"choices\" a list of at least two "
                                f"non-empty strings.")
            items.append(ChoiceExample(row["context"], tuple(choices), _label(row["label"], len(choices), where)))
        else:
            if not isinstance(row["question"], str) or not row["question"] or not isinstance(row["answer"], (str, int,
                                                                                                              float)):
                raise DataError(f"{where}: \"question\" must be a non-empty string and \"answer\" a string or number.")
            answer = str(row["answer"])
            items.append(GenerationExample(row["question"], reference_answer(answer), answer))
    if not items:
        raise DataError(f"{path} has no non-empty documents.")
    return Task(name, kind, str(p), tuple(items))


def read_tasks(paths: Sequence[str | Path]) -> list[Task]:
    """The tasks of ``paths``; two files with one stem get their parent folder in the name."""
    tasks = [read_task(p) for p in paths]
    names = [t.name for t in tasks]
    return [dataclasses.replace(t, name=f"{Path(t.path).parent.name}/{t.name}") if names.count(t.name) > 1 else t
            for t in tasks]
