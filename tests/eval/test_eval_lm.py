"""Language-model evaluation (`jaxmoe eval-lm`): numbers checked by hand on a tiny model,
answer extraction, batched generation equal to one-at-a-time decoding, the CLI on the
sample task files, and method options that change the numbers (or must not)."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import Config, DataConfig
from jaxmoe.data.tokenizers import ByteTokenizer
from jaxmoe.decode.contrastive import SCMoEConfig, contrastive_generate
from jaxmoe.decode.generate import generate_tokens
from jaxmoe.errors import DataError, UserError
from jaxmoe.eval.lm import (EvalOptions, Evaluator, Method, answers_match, evaluate, extract_last_number, read_task,
                            read_tasks, reference_answer)
from jaxmoe.eval.lm import scoring
from jaxmoe.eval.lm.tasks import normalize_number
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.routers import RouterInputs
from routing_helpers import fast_init, make_run

DATA = Path(__file__).parent / "data"
TOK = ByteTokenizer()
EOS = TOK.eos_id
CFG = LMConfig(vocab_size=259, embed_dim=16, num_layers=2, num_heads=2, max_seq_len=64,
               moe=MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=16))
OPTS = EvalOptions(batch_size=4, max_new_tokens=6, progress=False)
apply = jax.jit(lm.apply, static_argnames="cfg")


@pytest.fixture(scope="module")
def params():
    return fast_init(CFG, std=0.3)


def _logprobs(params, ids, cfg=CFG, inputs=None):
    """log p(ids[j] | ids[:j]) for j >= 1, by one direct forward pass (right-padded to the
    model's length: the model is causal, and one shape compiles once)."""
    x = np.zeros((1, cfg.max_seq_len), np.int32)
    x[0, :len(ids) - 1] = ids[:-1]
    logits, _ = apply(params, jnp.asarray(x), cfg, inputs=inputs)
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    return logp[np.arange(len(ids) - 1), ids[1:]].astype(np.float64)


# ------------------------------------------------------------------------------ tasks


def test_number_extraction_and_exact_match():
    assert reference_answer("2 + 3 = 5\n#### 5") == "5"
    assert reference_answer("#### 1,250 ") == "1,250" and reference_answer("42") == "42"
    assert normalize_number("$1,234.50") == "1234.5" and normalize_number("72.") == "72"
    assert normalize_number("-3.0") == "-3" and normalize_number("no") is None
    assert extract_last_number("so 3 + 4 = 7, then 7 * 2 = 14.") == "14"
    assert extract_last_number("the answer is $1,250.") == "1250"
    assert extract_last_number("nothing here") is None
    assert answers_match("... which makes 1250 apples", "1,250")
    assert not answers_match("12 and then 125", "1,250")
    assert answers_match(" yes", "yes")  # no number in the reference: text comparison


def test_sample_files_and_formats(tmp_path):
    kinds = {t.name: t.kind for t in read_tasks(sorted(DATA.iterdir()))}
    assert kinds == {"arith": "generation", "choices": "choice", "held_out": "perplexity"}
    ch = read_task(DATA / "choices.jsonl")
    assert [ex.label for ex in ch.items] == [0, 1, 2]  # "C" is index 2
    gen = read_task(DATA / "arith.jsonl")
    assert [ex.answer for ex in gen.items] == ["5", "6", "1,250"]
    (tmp_path / "docs.jsonl").write_text('{"text": "a b"}\n{"text": "c"}\n')
    assert read_task(tmp_path / "docs.jsonl").items == ("a b", "c")
    (tmp_path / "bad.jsonl").write_text('{"context": "x", "choices": ["a", "b"], "label": 5}\n')
    with pytest.raises(DataError, match="line 1.*not one of the 2 choices"):
        read_task(tmp_path / "bad.jsonl")
    (tmp_path / "odd.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match="none of the task formats"):
        read_task(tmp_path / "odd.jsonl")


# ------------------------------------------------------------------- numbers by hand


def test_perplexity_by_hand_one_window_and_sliding_windows(params):
    text = "The for statement iterates over a sequence."  # one window (max_seq_len 64)
    ids = [EOS] + TOK.encode(text)  # the prefix token: eos, as between documents in training
    lp = _logprobs(params, ids)
    from jaxmoe.eval.lm import Task

    task = Task("t", "perplexity", "t.txt", (text,))
    res = Evaluator(params, CFG, TOK, Method(), OPTS).perplexity(task)
    assert res["tokens"] == len(ids) - 1
    np.testing.assert_allclose(res["nll"], -lp.mean(), rtol=1e-5)
    np.testing.assert_allclose(res["perplexity"], math.exp(-lp.mean()), rtol=1e-5)
    np.testing.assert_allclose(res["bits_per_byte"], -lp.sum() / math.log(2) / len(text.encode()), rtol=1e-5)
    # windows of 16 tokens advancing by 8: every target once, with up to 16 tokens of context
    win, stride = 16, 8
    res = Evaluator(params, CFG, TOK, Method(), dataclasses.replace(OPTS, max_length=win, stride=stride)
                    ).perplexity(task)
    want, a = [], 1
    while a < len(ids):
        b = min(a + stride, len(ids))
        s = max(0, b - 1 - win)
        want.extend(_logprobs(params, ids[s:b])[a - 1 - s:])
        a = b
    assert len(want) == len(ids) - 1 and res["tokens"] == len(want)
    np.testing.assert_allclose(res["nll"], -np.mean(want), rtol=1e-5)
    assert abs(res["nll"] + lp.mean()) > 1e-4  # less context than one window: a different number


def test_choice_scores_by_hand(params):
    task = read_task(DATA / "choices.jsonl")
    res = Evaluator(params, CFG, TOK, Method(), OPTS).choice(task)
    right = right_norm = 0
    for ex, pred, pred_norm in zip(task.items, res["predictions"], res["predictions_norm"]):
        ctx = [EOS] + TOK.encode(ex.context)
        sums, lens = [], []
        for choice in ex.choices:
            cont = TOK.encode(" " + choice)
            seq = (ctx + cont)[-(CFG.max_seq_len + 1):]  # a long context loses its start to the window
            sums.append(_logprobs(params, seq)[-len(cont):].sum())
            lens.append(len((" " + choice).encode()))
        assert pred == int(np.argmax(sums)) and pred_norm == int(np.argmax(np.array(sums) / lens))
        right += pred == ex.label
        right_norm += pred_norm == ex.label
    assert res["accuracy"] == right / 3 and res["accuracy_norm"] == right_norm / 3


def test_batched_generation_equals_one_prompt_at_a_time(params):
    """Prompts of different lengths in one batch (prefill to the shortest, then lockstep):
    each continuation is the one plain greedy decoding gives that prompt alone."""
    ev = Evaluator(params, CFG, TOK, Method(), OPTS)
    prompts = [ev._prompt(q) for q in ("What is 2 + 3?", "Hi?", "What is the sum of 10 and 32 and 7?")]
    gens = scoring.greedy_generate(params, ev.setup, prompts + [prompts[0]], 6)
    for p, g in zip(prompts, gens):
        want = generate_tokens(params, jnp.asarray([p], jnp.int32), CFG, 6, jax.random.PRNGKey(0))
        assert g == np.asarray(want[0]).tolist()


def test_scmoe_generation_equals_contrastive_decoding(params):
    ev = Evaluator(params, CFG, TOK, Method(contrastive="scmoe", beta=1.0, alpha=0.1, weak_rank=1), OPTS)
    prompts = [ev._prompt(q) for q in ("What is 2 + 3?", "Name it?")]
    gens = scoring.greedy_generate(params, ev.setup, prompts + prompts, 6)
    for p, g in zip(prompts, gens):
        want = contrastive_generate(params, jnp.asarray([p], jnp.int32), CFG, 6, jax.random.PRNGKey(0),
                                    SCMoEConfig(beta=1.0, alpha=0.1, weak_rank=1))
        assert g == np.asarray(want[0]).tolist()


# ------------------------------------------------------------------- method options


def _headline(res):
    return {(t, k): m[k] for t, m in res["tasks"].items() for k in ("nll", "accuracy", "exact_match") if k in m}


def test_methods_change_the_numbers_and_neutral_settings_do_not(params):
    tasks = read_tasks([DATA / "held_out.txt", DATA / "choices.jsonl"])
    base = evaluate(params, CFG, TOK, tasks, Method(), OPTS)
    same = [Method(contrastive="scmoe", beta=0.0, weak_rank=1), Method(experts_per_token=2)]
    for m in same:
        np.testing.assert_allclose(evaluate(params, CFG, TOK, tasks, m, OPTS)["tasks"]["held_out"]["nll"],
                                   base["tasks"]["held_out"]["nll"], rtol=1e-5, err_msg=m.label())
    for m in (Method(contrastive="scmoe", beta=0.5, weak_rank=1), Method(disable_experts="1:0,1:1"),
              Method(experts_per_token=1), Method(top_p_threshold=0.3)):
        got = evaluate(params, CFG, TOK, tasks, m, OPTS)
        assert abs(got["tasks"]["held_out"]["nll"] - base["tasks"]["held_out"]["nll"]) > 1e-4, m.label()
    # disabling experts by hand equals the masks through the router inputs
    ids = [EOS] + TOK.encode(tasks[0].items[0])[:40]
    mask = np.ones((2, 4), bool)
    mask[1, :2] = False
    lp = _logprobs(params, ids, inputs=RouterInputs(expert_mask=jnp.asarray(mask)))
    short = dataclasses.replace(tasks[0], items=(TOK.decode(ids[1:]),))
    res = Evaluator(params, CFG, TOK, Method(disable_experts="1:0,1:1"), OPTS).perplexity(short)
    np.testing.assert_allclose(res["nll"], -lp.mean(), rtol=1e-5)


def test_profile_masks_and_errors(params, tmp_path):
    profile = {"ranking": [{"layer": 1, "expert": 3, "diff": 0.5}, {"layer": 0, "expert": 2, "diff": 0.1},
                           {"layer": 1, "expert": 0, "diff": -0.4}]}
    (tmp_path / "rank.json").write_text(json.dumps(profile))
    ev = Evaluator(params, CFG, TOK, Method(expert_profile=str(tmp_path / "rank.json"), disable_top=2), OPTS)
    assert list(zip(*np.nonzero(~ev.setup.expert_mask))) == [(0, 2), (1, 3)]
    ev = Evaluator(params, CFG, TOK, Method(expert_profile=str(tmp_path / "rank.json"), disable_top=1,
                                            profile_set="b"), OPTS)
    assert list(zip(*np.nonzero(~ev.setup.expert_mask))) == [(1, 0)]
    with pytest.raises(UserError, match="--disable-top"):
        Method(expert_profile="x.json").validate()
    with pytest.raises(UserError, match="more than the model's 4 experts"):
        Evaluator(params, CFG, TOK, Method(experts_per_token=9), OPTS)
    thor = dataclasses.replace(CFG, moe=MoEConfig(num_experts=4, experts_per_token=1, expert_ffn_dim=16,
                                                  router="thor", balance_loss="none"))
    with pytest.raises(UserError, match="ranked router"):
        Evaluator(params, thor, TOK, Method(contrastive="scmoe"), OPTS)


def test_remix_on_choices_and_solved_references(params, tmp_path):
    """C3PO re-mixes each question's last context token from its neighbours in a reference
    file of choice rows; by default only the rows the model solves are references."""
    task = read_task(DATA / "choices.jsonl")
    ev = Evaluator(params, CFG, TOK, Method(remix=str(DATA / "choices.jsonl"), remix_method="kr",
                                            remix_all_references=True, remix_core_experts=4), OPTS)
    remixed = ev.choice(task)
    assert ev.reference_size == 3
    scores, _, _ = ev.choice_scores(task.items, "x")
    base_scores, _, _ = Evaluator(params, CFG, TOK, Method(), OPTS).choice_scores(task.items, "x")
    assert np.abs(scores - base_scores).max() > 1e-6
    assert set(remixed) >= {"accuracy", "accuracy_norm"}
    # only solved reference rows by default: an all-wrong reference file is refused
    wrong = [json.loads(line) for line in (DATA / "choices.jsonl").read_text().splitlines()]
    preds = Evaluator(params, CFG, TOK, Method(), OPTS).choice(task)["predictions"]
    for row, p in zip(wrong, preds):
        row["label"] = (p + 1) % len(row["choices"])
    (tmp_path / "wrong.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wrong))
    with pytest.raises(UserError, match="solves none.*remix-all-references"):
        Evaluator(params, CFG, TOK, Method(remix=str(tmp_path / "wrong.jsonl")), OPTS).choice(task)


# ------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_on_the_sample_files(params, tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, Config(model=CFG, data=DataConfig(seq_len=16)), params=params)
    files = [str(DATA / f) for f in ("held_out.txt", "choices.jsonl", "arith.jsonl")]
    rc = main(["eval-lm", "--checkpoint", str(run), *files, "--batch-size", "4", "--max-new-tokens", "6",
               "--no-progress", "--disable-experts", "1:0", "--compare", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "perplexity" in out and "accuracy_norm" in out and "exact_match" in out and "delta" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    base, method = saved["results"]
    assert base["method"] == "base" and method["method"] == "disable(1:0)"
    assert set(saved["delta"]) == {"held_out", "choices", "arith"}
    np.testing.assert_allclose(saved["delta"]["held_out"]["nll"],
                               method["tasks"]["held_out"]["nll"] - base["tasks"]["held_out"]["nll"])
    assert len(method["tasks"]["arith"]["generations"]) == 3
    direct = evaluate(params, CFG, TOK, read_tasks(files), Method(),
                      dataclasses.replace(OPTS, max_new_tokens=6))
    np.testing.assert_allclose(base["tasks"]["held_out"]["nll"], direct["tasks"]["held_out"]["nll"], rtol=1e-6)
    # errors are one line
    rc = main(["eval-lm", "--checkpoint", str(run), files[0], "--compare"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: --compare needs a method option") and len(err.splitlines()) == 1
    rc = main(["eval-lm", "--checkpoint", str(run), str(tmp_path / "missing.jsonl")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_remixed_generation_equals_one_prompt_at_a_time(params):
    """Re-mixed weights at each row's own last prompt token, in a batch of prompts of
    different lengths: the same continuations as re-mixed greedy decoding of each alone."""
    from types import SimpleNamespace

    from jaxmoe.decode import remix as c3po

    ev = Evaluator(params, CFG, TOK, Method(remix=str(DATA / "arith.jsonl"), remix_all_references=True,
                                            remix_method="kr", remix_core_experts=4), OPTS)
    prompts = [ev._prompt(q) for q in ("What is 2 + 3?", "Hi?", "What is the sum of 10 and 32 and 7?", "7+1?")]
    weights = ev._remix_weights(prompts, "x")
    gens = scoring.greedy_generate(params, ev.setup, prompts, 6, weights)
    plain = scoring.greedy_generate(params, dataclasses.replace(ev.setup), prompts, 6)
    for p, w, g in zip(prompts, weights, gens):
        want = c3po.generate_remixed(params, ev.setup.cfg, p, 6,
                                     SimpleNamespace(weights=w, critical_layers=ev.setup.crit))
        assert g == want
    assert gens != plain or np.abs(weights).sum() > 0


def test_demo_task_generator_writes_valid_tasks(tmp_path):
    """The README's demo tasks (cut from the Python documentation topics) read as tasks of
    the right kinds, with four choices per cloze question and the right ending among them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_pydoc_tasks",
                                                  Path(__file__).parent / "make_pydoc_tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(str(tmp_path))
    tasks = {t.name: t for t in read_tasks([str(tmp_path / f) for f in ("prose.jsonl", "code.jsonl", "cloze.jsonl",
                                                                         "cloze_ref.jsonl")])}
    assert [tasks[n].kind for n in ("prose", "code", "cloze", "cloze_ref")] == \
        ["perplexity", "perplexity", "choice", "choice"]
    assert len(tasks["cloze"].items) >= 20 and len(tasks["cloze_ref"].items) == 64
    for ex in tasks["cloze"].items + tasks["cloze_ref"].items:
        assert len(ex.choices) == 4 and len(set(ex.choices)) == 4 and 0 <= ex.label < 4
    held = " ".join(tasks["prose"].items)
    assert all(ex.context in held for ex in tasks["cloze"].items)  # held-out questions come from held-out text
    assert not any(ex.context in held for ex in tasks["cloze_ref"].items)
    assert len((tmp_path / "profile_code.txt").read_text().splitlines()) == 64
