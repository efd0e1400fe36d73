"""Run language-model evaluation tasks under one inference-time method.

- **perplexity** (token-weighted): every document is ``[prefix] + tokens``; its targets are
  scored in sliding windows of at most ``max_length`` tokens (the model's ``max_seq_len``
  by default), each window advancing by ``stride`` (default ``max_length``) and scoring only
  the targets no earlier window scored, with everything before them in the window as
  context. Reports the mean negative log-likelihood per token, ``perplexity = exp(nll)``
  and bits per UTF-8 byte (comparable across tokenizers).
- **choice**: each choice is scored by ``sum log p(delimiter + choice | [prefix] + context)``;
  ``accuracy`` takes the best sum, ``accuracy_norm`` the best sum divided by the choice's
  length in UTF-8 bytes (delimiter included), as lm-evaluation-harness normalises.
- **generation**: greedy decoding of ``prompt_template.format(question=...)`` (``[prefix]``
  first), cut at end-of-sequence and at the ``stop`` strings; ``exact_match`` compares the
  last number of the generation with the reference (:func:`~jaxmoe.eval.lm.tasks.answers_match`).

The prefix token is what a document starts after in training: ``eos`` for the byte
tokenizer (jaxmoe's packing puts eos between documents), the tokenizer's ``bos`` (eos
when it has none) for a Hugging Face tokenizer.

Rows are sorted by length, batched (``batch_size`` rows, short batches padded with dummy
rows) and right-padded to bucketed widths, so an evaluation compiles a few programs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmoe.data.tokenizers import ByteTokenizer, check_token_ids
from jaxmoe.errors import DataError, UserError
from jaxmoe.eval.lm import scoring
from jaxmoe.eval.lm.methods import REMIX_METHODS, Method, expert_masks, setup_config
from jaxmoe.eval.lm.tasks import (
    ChoiceExample,
    GenerationExample,
    Task,
    read_jsonl_rows,
    answers_match,
    extract_last_number,
    read_task,
)
from jaxmoe.models.lm import LMConfig


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 16
    max_length: int | None = None  # None -> the model's max_seq_len
    stride: int | None = None  # perplexity windows advance by this many targets (None -> max_length)
    max_new_tokens: int = 64
    prompt_template: str = "Question: {question}\nAnswer:"
    choice_delimiter: str = " "
    stop: tuple[str, ...] = ("\n\n", "Question:")
    prefix_token: bool = True
    limit: int | None = None  # first N items of each task
    progress: bool = True

    def validate(self, cfg: LMConfig) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size={self.batch_size} must be at least 1.")
        if self.max_length is not None and not 2 <= self.max_length <= cfg.max_seq_len:
            raise UserError(f"--max-length={self.max_length} must be between 2 and the model's max_seq_len="
                            f"{cfg.max_seq_len}.")
        if self.stride is not None and not 1 <= self.stride <= self.length(cfg):
            raise UserError(f"--stride={self.stride} must be between 1 and the window length {self.length(cfg)}.")
        if self.max_new_tokens < 1 or self.max_new_tokens >= self.length(cfg):
            raise UserError(f"--max-new-tokens={self.max_new_tokens} must be between 1 and the window length "
                            f"{self.length(cfg)} - 1.")
        if "{question}" not in self.prompt_template:
            raise UserError("--prompt-template must contain {question}.")

    def length(self, cfg: LMConfig) -> int:
        return self.max_length or cfg.max_seq_len


def prefix_id(tokenizer) -> int:
    return tokenizer.eos_id if isinstance(tokenizer, ByteTokenizer) else tokenizer.bos_id


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, unit="batch", leave=False)


def _batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices sorted by length, in batches (similar lengths together: few widths)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclasses.dataclass
class _Row:
    tokens: list[int]  # model input
    targets: list[int]  # next tokens (same length)
    first: int  # scored targets are targets[first:]
    pos: int = 0  # the re-mixed position (last context token)
    group: int = 0  # the example it belongs to


class Evaluator:
    """Evaluates tasks with one :class:`Method` on one model (params + config + tokenizer)."""

    def __init__(self, params, cfg: LMConfig, tokenizer, method: Method = Method(),
                 options: EvalOptions = EvalOptions(), *, num_inputs: int = 0):
        method.validate()
        options.validate(cfg)
        self.params, self.tok, self.method, self.opts = params, tokenizer, method, options
        self.model_cfg = cfg
        run_cfg = setup_config(cfg, method)
        try:
            run_cfg.moe.validate(run_cfg.num_layers)
        except ValueError as e:
            raise UserError(str(e)) from None
        expert_mask, force_mask = expert_masks(run_cfg, method)
        weak_rank, numbers = None, (0.0, 0.1, 1.0, 1.0)
        if method.contrastive == "scmoe":
            from jaxmoe.decode import contrastive

            sc = contrastive.SCMoEConfig(beta=method.beta, alpha=method.alpha, weak_rank=method.weak_rank)
            try:
                contrastive.check(run_cfg, sc)
            except ValueError as e:
                raise UserError(str(e)) from None
            weak_rank, numbers = method.weak_rank, (method.beta, method.alpha, 1.0, 1.0)
        self.setup = scoring.Setup(run_cfg, expert_mask, force_mask, weak_rank, numbers)
        self.length = options.length(cfg)
        self.prefix = [prefix_id(tokenizer)] if options.prefix_token else []
        self.num_inputs = num_inputs  # rows of --embeddings after the reference set's
        self._input_index = 0
        self._remix = None  # (reference set, remix config, input embeddings), built on first use

    # ------------------------------------------------------------------------ helpers

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text)
        check_token_ids(ids, self.model_cfg.vocab_size, "the task text")
        return ids

    def _score_rows(self, rows: list[_Row], desc: str, weights: np.ndarray | None = None) -> np.ndarray:
        """Sum of the scored targets' log-probs per row ``[len(rows)]``; ``weights [rows, Lc,
        N]`` re-mix each row's routing at its ``pos``."""
        out = np.zeros(len(rows))
        bs = self.opts.batch_size
        batches = _batches([len(r.tokens) for r in rows], bs)
        with _progress(len(batches), desc, self.opts.progress) as bar:
            for idx in batches:
                width = scoring.bucket(max(len(rows[i].tokens) for i in idx), self.length)
                tokens = np.zeros((bs, width), np.int32)
                targets = np.zeros((bs, width), np.int32)
                mask = np.zeros((bs, width), bool)
                pos = np.zeros((bs,), np.int32)
                for j, i in enumerate(idx):
                    r = rows[i]
                    n = len(r.tokens)
                    tokens[j, :n], targets[j, :n] = r.tokens, r.targets
                    mask[j, r.first:n] = True
                    pos[j] = r.pos
                w = None
                if weights is not None:
                    w = np.zeros((bs,) + weights.shape[1:], np.float32)
                    w[:len(idx)] = weights[idx]
                lp = scoring.token_logprobs(self.params, self.setup, tokens, targets, w, pos if w is not None else None)
                out[idx] = (lp * mask).sum(1)[:len(idx)]
                bar.update(1)
        return out

    # ---------------------------------------------------------------------- perplexity

    def perplexity(self, task: Task) -> dict:
        if self.method.remix:
            note = "C3PO re-mixes the last token of a question; perplexity is measured without it"
        else:
            note = None
        stride = self.opts.stride or self.length
        rows, nbytes, ntokens = [], 0, 0
        for doc in task.items:
            ids = self.prefix + self.encode(doc)
            nbytes += len(doc.encode("utf-8"))
            n = len(ids)
            a = 1  # target j predicts ids[j] from ids[:j]; ids[0] has no context
            while a < n:
                b = min(a + stride, n)
                s = max(0, b - 1 - self.length)
                rows.append(_Row(ids[s:b - 1], ids[s + 1:b], a - 1 - s))
                ntokens += b - a
                a = b
        if not rows:
            raise DataError(f"{task.path} has no token to score (each document needs at least two tokens"
                            f"{'' if self.prefix else ' without a prefix token'}).")
        total = float(self._score_rows(rows, task.name).sum())
        nll = -total / ntokens
        out = {"kind": "perplexity", "documents": len(task.items), "tokens": ntokens, "nll": nll,
               "perplexity": math.exp(min(nll, 700.0)), "bits_per_byte": -total / math.log(2) / max(nbytes, 1)}
        if note and not self.method.is_base():
            out["note"] = note
        return out

    # -------------------------------------------------------------------------- choice

    def _choice_rows(self, items: Sequence[ChoiceExample]):
        rows, nbytes, contexts = [], [], []
        delim = self.opts.choice_delimiter
        for e, ex in enumerate(items):
            ctx = self.prefix + self.encode(ex.context)
            if not ctx:
                raise DataError("a choice example has an empty context and no prefix token to condition on.")
            contexts.append(ctx[-(self.length - 1):])
            for choice in ex.choices:
                text = choice if (not ex.context or ex.context[-1:].isspace() or choice[:1].isspace()) \
                    else delim + choice
                cont = self.encode(text)
                if not cont:
                    raise DataError(f"the choice {choice!r} has no tokens.")
                seq = (ctx + cont)[-(self.length + 1):]
                ctx_len = len(seq) - len(cont)
                if ctx_len < 1:
                    raise DataError(f"a choice has {len(cont)} tokens, more than the window of {self.length}.")
                rows.append(_Row(seq[:-1], seq[1:], ctx_len - 1, pos=ctx_len - 1, group=e))
                nbytes.append(len(text.encode("utf-8")))
        return rows, np.asarray(nbytes, np.float64), contexts

    def choice_scores(self, items: Sequence[ChoiceExample], desc: str, remix: bool = True):
        """``(scores per choice [rows], bytes per choice [rows], group per row)``."""
        rows, nbytes, contexts = self._choice_rows(items)
        weights = None
        if remix and self.method.remix:
            per_example = self._remix_weights(contexts, desc)
            weights = per_example[[r.group for r in rows]]
        return self._score_rows(rows, desc, weights), nbytes, np.asarray([r.group for r in rows])

    def choice(self, task: Task) -> dict:
        scores, nbytes, group = self.choice_scores(task.items, task.name)
        pred, pred_norm, right, right_norm = [], [], 0, 0
        for e, ex in enumerate(task.items):
            s = scores[group == e]
            p, pn = int(np.argmax(s)), int(np.argmax(s / nbytes[group == e]))
            pred.append(p)
            pred_norm.append(pn)
            right += p == ex.label
            right_norm += pn == ex.label
        n = len(task.items)
        return {"kind": "choice", "examples": n, "accuracy": right / n, "accuracy_norm": right_norm / n,
                "predictions": pred, "predictions_norm": pred_norm}

    # ---------------------------------------------------------------------- generation

    def _prompt(self, question: str) -> list[int]:
        ids = self.prefix + self.encode(self.opts.prompt_template.format(question=question))
        return ids[-(self.length - self.opts.max_new_tokens):]

    def _finish(self, ids: list[int]) -> str:
        if self.tok.eos_id in ids:
            ids = ids[:ids.index(self.tok.eos_id)]
        text = self.tok.decode(ids)
        for s in self.opts.stop:
            if s and s in text:
                text = text[:text.index(s)]
        return text

    def generate(self, prompts: list[list[int]], desc: str, remix: bool = True) -> list[str]:
        weights = self._remix_weights(prompts, desc) if remix and self.method.remix else None
        bs = self.opts.batch_size
        out: list[str] = [""] * len(prompts)
        batches = _batches([len(p) for p in prompts], bs)
        with _progress(len(batches), desc, self.opts.progress) as bar:
            for idx in batches:
                batch = [prompts[i] for i in idx] + [prompts[idx[0]]] * (bs - len(idx))  # fixed batch shape
                w = None
                if weights is not None:
                    w = np.concatenate([weights[idx], np.repeat(weights[idx[:1]], bs - len(idx), 0)])
                gens = scoring.greedy_generate(self.params, self.setup, batch, self.opts.max_new_tokens, w)
                for i, g in zip(idx, gens):
                    out[i] = self._finish(g)
                bar.update(1)
        return out

    def generation(self, task: Task) -> dict:
        prompts = [self._prompt(ex.question) for ex in task.items]
        gens = self.generate(prompts, task.name)
        extracted = [extract_last_number(g) for g in gens]
        right = [answers_match(g, ex.answer) for g, ex in zip(gens, task.items)]
        return {"kind": "generation", "examples": len(task.items), "exact_match": float(np.mean(right)),
                "generations": gens, "extracted": extracted, "correct": right}

    # --------------------------------------------------------------------------- C3PO

    def _build_remix(self):
        from jaxmoe.decode import remix as c3po

        m = self.method
        rcfg = c3po.RemixConfig(method=REMIX_METHODS[m.remix_method], critical_layers=m.remix_critical_layers,
                                core_experts=m.remix_core_experts, neighbours=m.remix_neighbours,
                                steps=m.remix_steps, embedding=m.remix_embedding)
        examples, verdict = self._reference_examples(m.remix)
        ref_emb = in_emb = None
        if m.embeddings:
            try:
                ref_emb, in_emb = c3po.load_embeddings(m.embeddings, len(examples), self.num_inputs)
            except ValueError as e:
                raise UserError(str(e)) from None
        try:
            ref = c3po.build_reference(self.params, self.setup.cfg, examples, rcfg=rcfg, embeddings=ref_emb,
                                       solved=verdict, solved_only=not m.remix_all_references)
        except ValueError as e:
            hint = " (--remix-all-references)" if "solves none" in str(e) else ""
            raise UserError(f"{e}{hint}") from None
        self._remix = (ref, rcfg, in_emb)
        self.setup = dataclasses.replace(self.setup, crit=tuple(ref.critical_layers))
        self.reference_size = len(ref.losses)

    def _reference_examples(self, path: str):
        """``(examples [(prompt ids, answer ids)], verdict or None)`` of a reference file:
        prompt/answer rows (verdict: teacher-forced greedy decoding, computed with the set)
        or a choice/generation task file (verdict: the model's own answer is right)."""
        import json

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"reference file '{path}' does not exist.")
        first = next((line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()), "")
        try:
            head = json.loads(first) if first else {}
        except json.JSONDecodeError:
            raise DataError(f"{path} line 1 is not valid JSON.") from None
        if isinstance(head, dict) and {"prompt", "answer"} <= set(head):
            rows = _prompt_answer_rows(p)
            return [(self.prefix + self.encode(r["prompt"]), self.encode(r["answer"])) for r in rows], None
        task = read_task(path)
        delim = self.opts.choice_delimiter
        if task.kind == "choice":
            scores, nbytes, group = self.choice_scores(task.items, "c3po reference", remix=False)
            verdict = np.asarray([int(np.argmax(scores[group == e])) == ex.label for e, ex in enumerate(task.items)])
            examples = [((self.prefix + self.encode(ex.context))[-(self.length - 1):],
                         self.encode(delim + ex.choices[ex.label])) for ex in task.items]
            return examples, verdict
        if task.kind == "generation":
            prompts = [self._prompt(ex.question) for ex in task.items]
            gens = self.generate(prompts, "c3po reference", remix=False)
            verdict = np.asarray([answers_match(g, ex.answer) for g, ex in zip(gens, task.items)])
            return [(pr, self.encode(delim + ex.solution)) for pr, ex in zip(prompts, task.items)], verdict
        raise DataError(f"{path} is a perplexity file; a C3PO reference set needs solved examples "
                        f"(prompt/answer, choice or question/answer rows).")

    def _remix_weights(self, prompts: list[list[int]], desc: str) -> np.ndarray:
        """Re-mixed critical-layer weights ``[len(prompts), Lc, N]``, one per prompt (its
        last token), in input order (rows of --embeddings follow the evaluation order)."""
        from jaxmoe.decode import remix as c3po

        if self._remix is None:
            self._build_remix()
        ref, rcfg, in_emb = self._remix
        out = []
        with _progress(len(prompts), f"{desc} (c3po)", self.opts.progress) as bar:
            for prompt in prompts:
                emb = None
                if in_emb is not None:
                    if self._input_index >= len(in_emb):
                        raise UserError(f"--embeddings holds {len(in_emb)} input rows, fewer than the inputs.")
                    emb = in_emb[self._input_index]
                self._input_index += 1
                try:
                    res = c3po.remix(self.params, self.setup.cfg, ref, prompt, rcfg=rcfg, embedding=emb)
                except ValueError as e:
                    raise UserError(str(e)) from None
                out.append(res.weights)
                bar.update(1)
        return np.stack(out)

    # ---------------------------------------------------------------------------- run

    def run(self, task: Task) -> dict:
        return {"perplexity": self.perplexity, "choice": self.choice, "generation": self.generation}[task.kind](task)


def _prompt_answer_rows(path: Path) -> list[dict]:
    rows = []
    for i, row in read_jsonl_rows(path):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise DataError(f"{path} line {i} needs a string \"prompt\" and a string \"answer\".")
        rows.append(row)
    return rows


def num_inputs(tasks: Sequence[Task]) -> int:
    """Examples that C3PO re-mixes (choice and generation items): the input rows of --embeddings."""
    return sum(len(t.items) for t in tasks if t.kind != "perplexity")


def evaluate(params, cfg: LMConfig, tokenizer, tasks: Sequence[Task], method: Method = Method(),
             options: EvalOptions = EvalOptions()) -> dict:
    """Every task under ``method``: ``{"method": label, "options": {...}, "tasks": {name:
    metrics}}`` (metrics per kind: see the module docstring)."""
    tasks = [t.limit(options.limit) for t in tasks]
    ev = Evaluator(params, cfg, tokenizer, method, options, num_inputs=num_inputs(tasks))
    out = {"method": method.label(), "options": method.describe(), "tasks": {t.name: ev.run(t) for t in tasks}}
    if getattr(ev, "reference_size", None) is not None:
        out["reference_examples"] = ev.reference_size
    return out


# ---------------------------------------------------------------------------- reports

HEADLINE = {"perplexity": ("perplexity", "nll", "bits_per_byte"), "choice": ("accuracy", "accuracy_norm"),
            "generation": ("exact_match",)}


def headline(result: dict) -> list[tuple[str, str, float]]:
    """``[(task, metric, value)]`` of the numbers a table shows."""
    return [(name, key, float(m[key])) for name, m in result["tasks"].items() for key in HEADLINE[m["kind"]]]


def compare(base: dict, other: dict) -> dict:
    """``{task: {metric: other - base}}`` over the headline metrics."""
    b = {(t, k): v for t, k, v in headline(base)}
    out: dict = {}
    for t, k, v in headline(other):
        out.setdefault(t, {})[k] = v - b[(t, k)]
    return out


def format_table(results: Sequence[dict]) -> str:
    """A text table: one row per (task, metric), one column per result; with two results a
    ``delta`` column (second minus first)."""
    rows = [[t, k] + [f"{v:.4f}"] for t, k, v in headline(results[0])]
    for res in results[1:]:
        vals = {(t, k): v for t, k, v in headline(res)}
        for row in rows:
            row.append(f"{vals[(row[0], row[1])]:.4f}")
    head = ["task", "metric"] + [r["method"] for r in results]
    if len(results) == 2:
        head.append("delta")
        for row in rows:
            row.append(f"{float(row[3]) - float(row[2]):+.4f}")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])
