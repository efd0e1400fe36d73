"""``jaxmoe remix --checkpoint DIR --reference ref.jsonl --inputs test.jsonl [--method ngd|kernel|mode] [--out out.jsonl]``.

C3PO test-time re-mixing. ``ref.jsonl`` holds examples, one JSON object per line with
``prompt`` and ``answer``; by default only those the model solves (teacher-forced greedy
decoding gets the answer) are kept, so the reference pathways are the model's own routing
weights on examples it answers correctly (``--all-references`` keeps every example).
``test.jsonl`` holds prompts (an ``answer`` is optional and, when given, its loss is
reported before and after re-mixing). For each input the routing weights of its last
prompt token in the critical layers are re-mixed from its nearest reference examples
(neighbours by the model's pooled hidden states, mean token embeddings, or ``--embeddings
FILE.npy``: one row per reference example, then one per input), and a greedy continuation
is generated with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory written by `jaxmoe train`")
    p.add_argument("--reference", required=True, help="JSONL of solved examples: {\"prompt\": ..., \"answer\": ...}")
    p.add_argument("--inputs", required=True, help="JSONL of test prompts: {\"prompt\": ...[, \"answer\": ...]}")
    p.add_argument("--method", choices=["ngd", "kernel", "mode"], default="ngd",
                   help="neighbourhood gradient descent (default), kernel regression or mode finding")
    p.add_argument("--critical-layers", default=None, metavar="L,L",
                   help="layer indices to re-mix (default: the last 5/16 of the MoE layers)")
    p.add_argument("--core-experts", type=int, default=None, help="experts per layer that may change "
                   "(default: 20/64 of the experts)")
    p.add_argument("--neighbours", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="gradient steps (ngd)")
    p.add_argument("--lr", type=float, default=0.05, help="step length (ngd)")
    p.add_argument("--embedding", choices=["hidden", "tokens"], default="hidden",
                   help="neighbour search on the prompt's mean final hidden state or mean token embedding")
    p.add_argument("--embeddings", default=None, metavar="FILE.npy",
                   help="neighbour search on these embeddings: rows of the reference examples, then of the inputs "
                        "(or an .npz with arrays 'reference' and 'inputs')")
    p.add_argument("--all-references", action="store_true",
                   help="keep every reference example, not only those the model solves (the default)")
    p.add_argument("--only-solved", action="store_true", help=argparse_suppress())
    p.add_argument("--max-new-tokens", type=int, default=16, help="continuation length (0 = none)")
    p.add_argument("--out", default=None, help="write one JSON object per input")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS  # --only-solved: the default now (kept so old command lines run)


def _read_jsonl(path: str, need_answer: bool) -> list[dict]:
    from jaxmoe.errors import UserError

    from jaxmoe import validate

    p = validate.input_file(path, f"{'--reference' if need_answer else '--inputs'} file")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {i} is not valid JSON.") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise UserError(f"{path} line {i} needs a non-empty string \"prompt\".")
        if need_answer and not isinstance(row.get("answer"), str):
            raise UserError(f"{path} line {i} needs a string \"answer\" (reference examples are solved examples).")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} has no examples.")
    return rows


def run(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.data.tokenizers import load_tokenizer
    from jaxmoe.decode import remix as c3po
    from jaxmoe.checkpoint import load_params

    from jaxmoe import validate

    ref_rows = _read_jsonl(args.reference, True)
    rows = _read_jsonl(args.inputs, False)
    if args.out:
        validate.output_file(args.out, "--out")
    validate.at_least(args.neighbours, 1, "--neighbours")
    validate.at_least(args.steps, 0, "--steps")
    validate.positive(args.lr, "--lr")
    validate.at_least(args.max_new_tokens, 0, "--max-new-tokens", " (0 = no continuation)")
    validate.at_least(args.core_experts, 1, "--core-experts")
    _, run_cfg = validate.run_config(args.checkpoint)
    validate.language_model(run_cfg.model.family, "remix")
    crit = None
    if args.critical_layers:
        try:
            crit = tuple(int(x) for x in args.critical_layers.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--critical-layers must be comma-separated layer indices, got {args.critical_layers!r}.") \
                from None
    cfg, params = load_params(args.checkpoint, args.step)
    if cfg.model.family != "lm":
        raise UserError(f"`remix` needs a language model; this checkpoint is a {cfg.model.family} model.")
    tok = load_tokenizer(cfg.data.tokenizer)
    rcfg = c3po.RemixConfig(method=args.method, critical_layers=crit, core_experts=args.core_experts,
                            neighbours=args.neighbours, steps=args.steps, lr=args.lr, embedding=args.embedding)
    enc = lambda text: tok.encode(text) or [tok.bos_id]
    ref_emb = in_emb = None
    if args.embeddings:
        try:
            ref_emb, in_emb = c3po.load_embeddings(args.embeddings, len(ref_rows), len(rows))
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        try:
            ref = c3po.build_reference(params, cfg.model, [(enc(r["prompt"]), tok.encode(r["answer"]))
                                                           for r in ref_rows], rcfg=rcfg, embeddings=ref_emb,
                                       solved_only=not args.all_references)
        except ValueError as e:
            if "solves none" in str(e):
                raise UserError(f"{e} (--all-references)") from None
            raise
        kind = "every example" if args.all_references else "the examples the model solves"
        print(f"reference set: {len(ref.losses)} examples ({kind}), critical layers {list(ref.critical_layers)}")
        prompts = [enc(row["prompt"]) for row in rows]
        results = [c3po.remix(params, cfg.model, ref, prompt, rcfg=rcfg,
                              embedding=None if in_emb is None else in_emb[i]) for i, prompt in enumerate(prompts)]
        out_rows = []
        for row, res in zip(rows, results):
            rec = {"prompt": row["prompt"], "neighbours": [int(i) for i in res.neighbours],
                   "neighbour_loss_before": res.neighbour_loss_before, "neighbour_loss_after": res.neighbour_loss_after}
            if res.alpha is not None:
                rec["alpha"] = res.alpha
            out_rows.append(rec)
        scored = [i for i, row in enumerate(rows) if isinstance(row.get("answer"), str) and row["answer"]]
        if scored:  # answer losses of all inputs in one batch, before and after
            ex = [(prompts[i], tok.encode(rows[i]["answer"])) for i in scored]
            before = c3po.answer_losses(params, cfg.model, ex)
            after = c3po.answer_losses(params, cfg.model, ex, [results[i] for i in scored])
            for j, i in enumerate(scored):
                out_rows[i].update(answer=rows[i]["answer"], loss_before=float(before[j]), loss_after=float(after[j]))
        for prompt, res, rec in zip(prompts, results, out_rows):
            if args.max_new_tokens > 0:
                for key, r in (("generation_before", None), ("generation_after", res)):
                    ids = c3po.generate_remixed(params, cfg.model, prompt, args.max_new_tokens, r)
                    if tok.eos_id in ids:
                        ids = ids[: ids.index(tok.eos_id)]
                    rec[key] = tok.decode(ids)
            loss = (f"  answer loss {rec['loss_before']:.4f} -> {rec['loss_after']:.4f}" if "loss_after" in rec else "")
            print(f"{rec['prompt']!r}: neighbours' loss {rec['neighbour_loss_before']:.4f} -> "
                  f"{rec['neighbour_loss_after']:.4f}{loss}")
            if "generation_after" in rec:
                print(f"  before: {rec['generation_before']!r}\n  after:  {rec['generation_after']!r}")
        if scored:
            print(f"mean answer loss over {len(scored)} inputs: {np.mean(before):.4f} -> {np.mean(after):.4f}")
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in out_rows))
        print(f"wrote {args.out}")
    return 0
