"""``jaxmoe eval-lm --checkpoint RUN TASKFILE... [method options] [--compare] [--out results.json]``.

Evaluates a language model on task files (perplexity on ``.txt``/``{"text"}`` JSONL,
multiple choice on ``{"context", "choices", "label"}`` JSONL, exact match on
``{"question", "answer"}`` JSONL) and prints a table. Every inference-time method is an
option, so a paper's delta is one command with and without it; ``--compare`` runs both in
one go and prints the delta:

    jaxmoe eval-lm --checkpoint runs/lm_tiny held_out.txt choices.jsonl --contrastive scmoe --compare
    jaxmoe eval-lm --checkpoint RUN qa.jsonl --remix ref.jsonl --remix-method kr --compare
    jaxmoe eval-lm --checkpoint RUN choices.jsonl --expert-profile ranking.json --disable-top 3 --compare
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory (`jaxmoe train` or `jaxmoe import`)")
    p.add_argument("tasks", nargs="+", metavar="TASKFILE",
                   help=".txt or JSONL: {text} (perplexity), {context, choices, label} (multiple choice), "
                        "{question, answer} (exact match of the last number; GSM8K's '#### N')")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="write the results (and the per-example details) as JSON")
    p.add_argument("--compare", action="store_true",
                   help="also run without the method options and print the delta")
    g = p.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-length", type=int, default=None, help="window length (default: the model's max_seq_len)")
    g.add_argument("--stride", type=int, default=None,
                   help="perplexity windows advance by this many tokens (default: the window length)")
    g.add_argument("--limit", type=int, default=None, help="evaluate the first N items of each task")
    g.add_argument("--max-new-tokens", type=int, default=64, help="generation length (exact-match tasks)")
    g.add_argument("--prompt-template", default="Question: {question}\nAnswer:",
                   help="generation prompt ({question} is replaced)")
    g.add_argument("--stop", action="append", default=None,
                   help="cut generations at this string (repeatable; default: a blank line and 'Question:')")
    g.add_argument("--choice-delimiter", default=" ", help="put between a context and each choice")
    g.add_argument("--no-prefix-token", action="store_true",
                   help="do not start documents/contexts/prompts with the tokenizer's bos (eos for bytes)")
    g.add_argument("--no-progress", action="store_true")
    m = p.add_argument_group("inference-time methods")
    m.add_argument("--contrastive", choices=["scmoe"], default=None, help="SCMoE self-contrast")
    m.add_argument("--beta", type=float, default=0.5, help="SCMoE contrast strength")
    m.add_argument("--alpha", type=float, default=0.1, help="SCMoE plausibility cutoff (generation)")
    m.add_argument("--weak-rank", type=int, default=2, help="SCMoE weak routing: the expert at this rank")
    m.add_argument("--disable-experts", default=None, metavar="L:E,...", help="MoTE: switch experts off")
    m.add_argument("--force-experts", default=None, metavar="L:E,...", help="MoTE: force experts on")
    m.add_argument("--expert-profile", default=None, metavar="RANKING.json",
                   help="MoTE: a profile written by `jaxmoe experts profile --out`")
    m.add_argument("--disable-top", type=int, default=0, metavar="N",
                   help="MoTE: switch off the N experts of the profile most specific to --profile-set")
    m.add_argument("--profile-set", choices=["a", "b"], default="a")
    m.add_argument("--remix", default=None, metavar="REFERENCE.jsonl",
                   help="C3PO: re-mix routing from the neighbours in this reference file (prompt/answer, choice or "
                        "question/answer rows; by default only those the model solves)")
    m.add_argument("--remix-method", choices=["kr", "mode", "ngd"], default="ngd",
                   help="kernel regression, mode finding or neighbourhood gradient descent")
    m.add_argument("--remix-embedding", choices=["hidden", "tokens"], default="hidden",
                   help="neighbours by the pooled final hidden states or mean token embeddings")
    m.add_argument("--embeddings", default=None, metavar="FILE.npy",
                   help="neighbours by these embeddings: the reference rows, then the evaluated examples' rows")
    m.add_argument("--remix-neighbours", type=int, default=3)
    m.add_argument("--remix-steps", type=int, default=10)
    m.add_argument("--remix-critical-layers", default=None, metavar="L,L")
    m.add_argument("--remix-core-experts", type=int, default=None)
    m.add_argument("--remix-all-references", action="store_true",
                   help="keep every reference example, not only those the model solves")
    m.add_argument("--top-p-threshold", type=float, default=None,
                   help="dynamic top-p routing at inference (a topp model's threshold, or top-p for a top-k model)")
    m.add_argument("--experts-per-token", type=int, default=None, help="experts per token at inference")


def method_from_args(args):
    from jaxmoe.errors import UserError
    from jaxmoe.eval.lm import Method

    crit = None
    if args.remix_critical_layers:
        try:
            crit = tuple(int(x) for x in args.remix_critical_layers.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--remix-critical-layers must be comma-separated layer indices, got "
                            f"{args.remix_critical_layers!r}.") from None
    return Method(contrastive=args.contrastive, beta=args.beta, alpha=args.alpha, weak_rank=args.weak_rank,
                  disable_experts=args.disable_experts, force_experts=args.force_experts,
                  expert_profile=args.expert_profile, disable_top=args.disable_top, profile_set=args.profile_set,
                  remix=args.remix, remix_method=args.remix_method, remix_embedding=args.remix_embedding,
                  remix_neighbours=args.remix_neighbours, remix_steps=args.remix_steps, remix_critical_layers=crit,
                  remix_core_experts=args.remix_core_experts, remix_all_references=args.remix_all_references,
                  embeddings=args.embeddings, top_p_threshold=args.top_p_threshold,
                  experts_per_token=args.experts_per_token)


def run(args) -> int:
    from jaxmoe.checkpoint import load_params
    from jaxmoe.data.tokenizers import load_tokenizer
    from jaxmoe.errors import UserError
    from jaxmoe.eval.lm import EvalOptions, Method, compare, evaluate, format_table, read_tasks

    method = method_from_args(args)
    method.validate()
    if args.compare and method.is_base():
        raise UserError("--compare needs a method option (e.g. --contrastive scmoe) to compare against.")
    tasks = read_tasks(args.tasks)
    cfg, params = load_params(args.checkpoint, args.step)
    if cfg.model.family != "lm":
        raise UserError(f"`eval-lm` needs a language model; this checkpoint is a {cfg.model.family} model.")
    tok = load_tokenizer(cfg.data.tokenizer)
    opts = EvalOptions(batch_size=args.batch_size, max_length=args.max_length, stride=args.stride,
                       max_new_tokens=args.max_new_tokens, prompt_template=args.prompt_template,
                       choice_delimiter=args.choice_delimiter,
                       stop=tuple(args.stop) if args.stop is not None else EvalOptions.stop,
                       prefix_token=not args.no_prefix_token, limit=args.limit, progress=not args.no_progress)
    if opts.limit is not None and opts.limit < 1:
        raise UserError(f"--limit={opts.limit} must be at least 1.")
    try:
        runs = [evaluate(params, cfg.model, tok, tasks, Method(), opts)] if args.compare else []
        runs.append(evaluate(params, cfg.model, tok, tasks, method, opts))
    except ValueError as e:
        raise UserError(str(e)) from None
    for name, m in runs[-1]["tasks"].items():
        if "note" in m:
            print(f"note: {name}: {m['note']}")
    if "reference_examples" in runs[-1]:
        print(f"C3PO reference set: {runs[-1]['reference_examples']} examples")
    print(format_table(runs))
    if args.out:
        out = {"checkpoint": str(args.checkpoint), "tasks": [t.path for t in tasks], "results": runs}
        if args.compare:
            out["delta"] = compare(runs[0], runs[1])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return 0
