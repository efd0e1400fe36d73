"""Write the demo tasks of the README's eval-lm table from the Python documentation text
that `configs/lm_tiny.yaml` trains on (`pydoc_data.topics`, one document per topic in
sorted order; the last 5% of the packed stream is the run's eval split).

    python tests/eval/make_pydoc_tasks.py OUT_DIR

- ``prose.jsonl`` / ``code.jsonl``: held-out documents (the last topics) split into prose
  paragraphs and code lines (``>>>`` examples and indented lines): perplexity;
- ``cloze.jsonl``: held-out sentences cut in two; the right second half among three
  taken from other sentences (multiple choice);
- ``cloze_ref.jsonl``: the same from training topics (a C3PO reference set);
- ``profile_code.txt`` / ``profile_prose.txt``: training lines for `jaxmoe experts profile`.

Deterministic (fixed seed); the topics text depends on the Python version.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HELD_OUT = 5  # the last topics (all inside the eval split of lm_tiny)


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _split(doc: str) -> tuple[list[str], list[str]]:
    """``(prose paragraphs, code blocks)`` of one topic: a code block is an indented
    paragraph with code punctuation; prose is an unindented paragraph (joined to one line)."""
    prose, code = [], []
    for para in re.split(r"\n\s*\n", doc):
        lines = [line for line in para.splitlines() if line.strip()]
        if not lines:
            continue
        if all(line.startswith("   ") for line in lines) and any(c in para for c in "=()[]:"):
            code.append("\n".join(line[3:] for line in lines))
        elif not any(line.startswith(" ") for line in lines):
            prose.append(" ".join(line.strip() for line in lines))
    return [p for p in prose if len(p) > 40], [c for c in code if len(c) > 8]


def _sentences(paragraphs: list[str]) -> list[str]:
    out = []
    for p in paragraphs:
        for s in re.split(r"(?<=[.!?])\s+", p):
            words = s.split()
            if 6 <= len(words) <= 40 and s.endswith("."):
                out.append(s)
    return out


def _cloze(sentences: list[str], n: int, rng: random.Random) -> list[dict]:
    rng.shuffle(sentences)
    cut = [(" ".join(s.split()[:len(s.split()) // 2]), " ".join(s.split()[len(s.split()) // 2:]))
           for s in sentences]
    rows = []
    for i, (context, ending) in enumerate(cut[:n]):
        others = list(dict.fromkeys(e for j, (_, e) in enumerate(cut) if j != i and e != ending))  # no repeats
        choices = rng.sample(others, 3)
        label = rng.randrange(4)
        choices.insert(label, ending)
        rows.append({"context": context, "choices": choices, "label": label})
    return rows


def main(out: str) -> None:
    docs = _topics()
    train, held = docs[:-HELD_OUT - 1], docs[-HELD_OUT:]  # the topic before them straddles the split
    rng = random.Random(0)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_jsonl(name, rows):
        (out_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    held_prose, held_code = [], []
    for d in held:
        p, c = _split(d)
        held_prose += p
        held_code += c
    write_jsonl("prose.jsonl", [{"text": p} for p in held_prose])
    write_jsonl("code.jsonl", [{"text": c} for c in held_code])
    write_jsonl("cloze.jsonl", _cloze(_sentences(held_prose), 40, rng))
    train_prose, train_code = [], []
    for d in train:
        p, c = _split(d)
        train_prose += p
        train_code += c
    write_jsonl("cloze_ref.jsonl", _cloze(_sentences(train_prose), 64, rng))
    code_lines = [c.replace("\n", " ")[:200] for c in rng.sample(train_code, 64)]
    (out_dir / "profile_code.txt").write_text("\n".join(code_lines) + "\n")
    (out_dir / "profile_prose.txt").write_text("\n".join(p[:200] for p in rng.sample(train_prose, 64)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pydoc_tasks")
