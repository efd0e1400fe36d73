"""Tests for jaxmoe.data: tokenizers, document reading, packing and the grain pipeline."""

import json
import os

import numpy as np
import pytest

from jaxmoe.data import (
    BYTE_BOS_ID,
    BYTE_EOS_ID,
    BYTE_PAD_ID,
    ByteTokenizer,
    DataError,
    HFTokenizer,
    build_text_pipeline,
    default_corpus,
    default_documents,
    load_tokenizer,
    read_documents,
    tokenize_documents,
    train_bpe_tokenizer,
)

pytest.importorskip("grain")

SAMPLE = "Héllo wörld — naïve café, 日本語のテキスト, emoji 🙂, tabs\tand\nnewlines."


def take(it, n):
    return [next(it)["tokens"].copy() for _ in range(n)]


def row_index(pipe):
    """bytes of each packed sequence -> its index in the packed corpus."""
    index = {}
    for i, row in enumerate(pipe.sequences):
        index.setdefault(row.astype(np.int32).tobytes(), i)
    assert len(index) == len(pipe.sequences), "test corpus must have distinct sequences"
    return index


def write_numbered_corpus(path, num_lines=1000):
    # 6-byte numbered lines: every 16-token window holds a whole line, so all packed
    # sequences (seq_len >= 11) are distinct and can be identified by content.
    path.write_text("".join(f"{i:05d}\n" for i in range(num_lines)))
    return path


# ------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 256, 257, 258)
    assert (BYTE_PAD_ID, BYTE_BOS_ID, BYTE_EOS_ID) == (256, 257, 258)
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert len(ids) > len(SAMPLE)  # multi-byte characters
    assert tok.decode(ids) == SAMPLE
    np.testing.assert_array_equal(tok.encode_array(SAMPLE), np.asarray(ids, np.int32))
    assert tok.encode_array(SAMPLE).dtype == np.int32
    # Specials are skipped; numpy input works.
    with_specials = np.asarray([tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.pad_id])
    assert tok.decode(with_specials) == SAMPLE
    # A sequence cut inside a multi-byte character decodes with a replacement character.
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        tok.decode([65, 300])


def test_hf_tokenizer_trained_locally_round_trips(tmp_path):
    texts = default_documents()[:20] + [SAMPLE]
    out = tmp_path / "tok" / "bpe.json"
    tok = train_bpe_tokenizer(texts, vocab_size=400, out_path=out)
    assert out.is_file()
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 259 < tok.vocab_size <= 400
    for text in (SAMPLE, default_documents()[30][:2000], "unseen: Ωμέγα ∑ 🚀"):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text
    # BPE actually merges: English text needs fewer tokens than bytes.
    english = default_documents()[40]
    assert len(tok.encode(english)) < 0.8 * len(english.encode())

    loaded = load_tokenizer(str(out))
    assert isinstance(loaded, HFTokenizer)
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)

    pipe = build_text_pipeline(path=None, tokenizer=str(out), seq_len=32, batch_size=4)
    assert pipe.vocab_size == tok.vocab_size
    batch = next(pipe.iterator())["tokens"]
    assert batch.shape == (4, 33) and batch.dtype == np.int32
    assert batch.max() < tok.vocab_size


def test_load_tokenizer_and_training_errors(tmp_path):
    with pytest.raises(ValueError, match="valid choices are 'byte'"):
        load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="Could not load"):
        load_tokenizer(str(bad))
    with pytest.raises(ValueError, match="at least 259"):
        train_bpe_tokenizer(["abc"], vocab_size=100, out_path=tmp_path / "t.json")


# ------------------------------------------------------------------ corpus and reading


def test_default_corpus_is_nontrivial_english():
    text = default_corpus()
    assert len(text) > 100_000
    assert "lambda" in text and "The " in text
    assert text == default_corpus()  # deterministic order


def test_read_documents_directory_txt_and_jsonl(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("third: nested text file\n\nwith a blank line")
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "first", "id": 1}) + "\n\n" + json.dumps({"text": "second"}) + "\n"
    )
    (tmp_path / "c.txt").write_text("fourth")
    (tmp_path / "d.txt").write_text("   \n")  # whitespace-only: dropped
    (tmp_path / "notes.md").write_text("ignored: not .txt/.jsonl")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("ignored: hidden")
    docs = read_documents(tmp_path)
    assert docs == ["first", "second", "third: nested text file\n\nwith a blank line", "fourth"]

    alt = tmp_path / "alt.jsonl"
    alt.write_text(json.dumps({"body": "custom field"}) + "\n")
    assert read_documents(alt, text_field="body") == ["custom field"]

    pipe = build_text_pipeline(path=tmp_path / "b", seq_len=4, batch_size=2, eval_fraction=0.0)
    stream = tokenize_documents(read_documents(tmp_path / "b"), ByteTokenizer())
    assert stream[-1] == BYTE_EOS_ID
    assert pipe.num_sequences == len(stream) // 5


# ------------------------------------------------------------------ packing


def test_packing_shapes_and_shifted_targets(tmp_path):
    docs = ["alpha beta gamma delta", "épsilon ζeta", "the third document is a little longer"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    seq_len, batch_size = 7, 3
    pipe = build_text_pipeline(
        path=tmp_path / "docs.jsonl", seq_len=seq_len, batch_size=batch_size,
        eval_fraction=0.0, shuffle=False, num_epochs=1,
    )
    expected_stream = []
    for d in docs:
        expected_stream += list(d.encode()) + [BYTE_EOS_ID]
    expected_stream = np.asarray(expected_stream)
    num = len(expected_stream) // (seq_len + 1)
    assert pipe.num_sequences == num and pipe.num_tokens == len(expected_stream)

    batches = [b["tokens"] for b in pipe.iterator()]
    assert len(batches) == num // batch_size
    for b in batches:
        assert b.shape == (batch_size, seq_len + 1) and b.dtype == np.int32
    rows = np.concatenate(batches)
    flat = expected_stream[: len(rows) * (seq_len + 1)]
    np.testing.assert_array_equal(rows.reshape(-1), flat)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    for r in range(len(rows)):
        start = r * (seq_len + 1)
        for t in range(seq_len):
            # The target at position t is the stream's next token after input t.
            assert inputs[r, t] == expected_stream[start + t]
            assert targets[r, t] == expected_stream[start + t + 1]
    # Documents are separated by eos.
    assert (rows == BYTE_EOS_ID).sum() >= 2


def test_default_corpus_pipeline_is_fast_and_covers_text():
    import time

    t0 = time.perf_counter()
    pipe = build_text_pipeline(path=None, seq_len=64, batch_size=8)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0  # generous; typical well under a second
    n_docs = len(default_documents())
    expected_tokens = len("".join(default_documents()).encode()) + n_docs
    assert pipe.num_tokens == expected_tokens
    assert pipe.vocab_size == 259
    text = pipe.tokenizer.decode(next(pipe.iterator())["tokens"][0])
    assert len(text) > 20


# ------------------------------------------------------------------ shuffling and determinism


def test_same_seed_same_batches_other_seed_differs():
    kw = dict(path=None, seq_len=32, batch_size=4)
    a = take(build_text_pipeline(seed=0, **kw).iterator(), 5)
    b = take(build_text_pipeline(seed=0, **kw).iterator(), 5)
    c = take(build_text_pipeline(seed=1, **kw).iterator(), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))
    unshuffled = take(build_text_pipeline(seed=0, shuffle=False, **kw).iterator(), 1)[0]
    pipe = build_text_pipeline(seed=0, **kw)
    np.testing.assert_array_equal(unshuffled, pipe.sequences[:4])
    assert not np.array_equal(a[0], unshuffled)


def test_each_epoch_is_a_new_permutation_of_train(tmp_path):
    path = write_numbered_corpus(tmp_path / "c.txt")
    pipe = build_text_pipeline(path=path, seq_len=15, batch_size=4, eval_fraction=0.1)
    index = row_index(pipe)
    n = pipe.num_sequences
    it = pipe.iterator()
    order = [index[r.tobytes()] for b in take(it, 2 * (n // 4) + 2) for r in b]
    # Batches run across epoch boundaries (drop_remainder only at the very end).
    epoch0, epoch1 = order[:n], order[n : 2 * n]
    assert sorted(epoch0) == list(pipe.sequence_indices)
    assert sorted(epoch1) == list(pipe.sequence_indices)
    assert epoch0 != epoch1


def test_finite_epochs_for_train(tmp_path):
    path = write_numbered_corpus(tmp_path / "c.txt")
    pipe = build_text_pipeline(path=path, seq_len=15, batch_size=4, num_epochs=2)
    batches = list(pipe.iterator())
    assert len(batches) == (2 * pipe.num_sequences) // 4


# ------------------------------------------------------------------ resumption


@pytest.mark.parametrize("consumed", [3, 0, "before_epoch_end"])
def test_get_state_set_state_resumes_exactly(tmp_path, consumed):
    path = write_numbered_corpus(tmp_path / "c.txt")
    pipe = build_text_pipeline(path=path, seq_len=15, batch_size=4, seed=7)
    per_epoch = pipe.batches_per_epoch
    assert per_epoch >= 5
    if consumed == "before_epoch_end":
        consumed = per_epoch - 2  # the next batches cross into the second epoch
    horizon = 6

    reference = take(pipe.iterator(), consumed + horizon)

    it = pipe.iterator()
    take(it, consumed)
    state = it.get_state()
    # Keep consuming the original: state must be a snapshot, not a live view.
    continued = take(it, horizon)

    resumed_it = build_text_pipeline(path=path, seq_len=15, batch_size=4, seed=7).iterator()
    resumed_it.set_state(state)
    resumed = take(resumed_it, horizon)
    for ref, a, b in zip(reference[consumed:], continued, resumed):
        np.testing.assert_array_equal(ref, a)
        np.testing.assert_array_equal(ref, b)
    # The state really is a position: a fresh iterator (no set_state) differs.
    if consumed:
        fresh = take(pipe.iterator(), horizon)
        assert any(not np.array_equal(f, r) for f, r in zip(fresh, resumed))


# ------------------------------------------------------------------ splits


def test_eval_split_is_disjoint_ordered_and_finite(tmp_path):
    path = write_numbered_corpus(tmp_path / "c.txt")
    kw = dict(path=path, seq_len=15, batch_size=2, eval_fraction=0.2)
    train = build_text_pipeline(split="train", **kw)
    ev = build_text_pipeline(split="eval", **kw)
    total = len(train.sequences)
    assert train.num_sequences + ev.num_sequences == total
    assert ev.num_sequences == int(np.ceil(0.2 * total))
    assert set(train.sequence_indices).isdisjoint(ev.sequence_indices)
    assert list(ev.sequence_indices) == list(range(train.num_sequences, total))

    index = row_index(train)
    train_batches = take(train.iterator(), 3 * train.batches_per_epoch)
    train_seen = {index[r.tobytes()] for b in train_batches for r in b}
    eval_rows = [index[r.tobytes()] for b in ev.iterator() for r in b["tokens"]]
    assert train_seen == set(train.sequence_indices)
    assert train_seen.isdisjoint(eval_rows)
    # Eval: in order, one pass, incomplete last batch dropped.
    assert eval_rows == list(ev.sequence_indices)[: (ev.num_sequences // 2) * 2]
    assert len(list(ev.iterator())) == ev.num_sequences // 2


def test_cache_follows_file_changes(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a" * 200)
    first = build_text_pipeline(path=path, seq_len=9, batch_size=2, eval_fraction=0.0)
    assert set(first.sequences.reshape(-1).tolist()) == {ord("a")}
    path.write_text("b" * 300)
    second = build_text_pipeline(path=path, seq_len=9, batch_size=2, eval_fraction=0.0)
    assert ord("b") in set(second.sequences.reshape(-1).tolist())
    assert second.num_tokens == 301


# ------------------------------------------------------------------ errors


def test_errors_are_data_errors_with_clear_messages(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=r"nope\.txt does not exist"):
        build_text_pipeline(path=missing, seq_len=8, batch_size=2)

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "readme.md").write_text("not a data file")
    with pytest.raises(DataError, match="contains no .txt or .jsonl files"):
        read_documents(empty_dir)

    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text(" \n\t\n")
    (blank / "b.jsonl").write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(DataError, match="contains no text"):
        read_documents(blank)

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not valid UTF-8"):
        read_documents(latin)

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps({"text": "ok"}) + "\n" + '{"text": "unterminated\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        read_documents(bad_json)

    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text(json.dumps({"text": "ok"}) + "\n\n" + json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataError, match=r"nofield\.jsonl, line 3: no 'text' field.*'content'"):
        read_documents(no_field)
    with pytest.raises(DataError, match="no 'body' field"):
        read_documents(no_field, text_field="body")

    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        read_documents(not_obj)

    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="Unsupported data file"):
        read_documents(csv)

    assert issubclass(DataError, ValueError)


def test_too_small_corpus_says_tokens_needed(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("x" * 99)  # 100 tokens with eos
    with pytest.raises(DataError, match=r"has 100 tokens.*at least 330 tokens") as info:
        build_text_pipeline(path=small, seq_len=32, batch_size=10, eval_fraction=0.0)
    assert "batch_size=10" in str(info.value)
    # Exactly enough tokens works.
    small.write_text("x" * 329)
    pipe = build_text_pipeline(path=small, seq_len=32, batch_size=10, eval_fraction=0.0)
    assert pipe.num_sequences == 10
    # The eval split needs its own batch.
    with pytest.raises(DataError, match="eval sequences"):
        build_text_pipeline(path=small, seq_len=32, batch_size=10, split="eval")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seq_len=0), "seq_len must be a positive integer"),
        (dict(batch_size=-1), "batch_size must be a positive integer"),
        (dict(split="test"), "split must be 'train' or 'eval'"),
        (dict(eval_fraction=1.0), r"eval_fraction must be in \[0, 1\)"),
        (dict(num_epochs=0), "num_epochs must be None or a positive integer"),
    ],
)
def test_invalid_settings(kwargs, message):
    args = dict(path=None, seq_len=8, batch_size=2) | kwargs
    with pytest.raises(DataError, match=message):
        build_text_pipeline(**args)


def test_imports_without_grain():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['grain'] = None\n"
        "from jaxmoe.data import default_corpus, ByteTokenizer, read_documents\n"
        "assert len(default_corpus()) > 100000\n"
        "assert ByteTokenizer().decode(ByteTokenizer().encode('ok')) == 'ok'\n"
    )
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
