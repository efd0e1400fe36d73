"""``jaxmoe generate --checkpoint DIR --prompt TEXT [--max-new-tokens N] [--temperature T]``."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory written by `jaxmoe train`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def run(args) -> int:
    from jaxmoe.cli import UserError
    from jaxmoe.data.tokenizers import load_tokenizer
    from jaxmoe.decode.generate import generate_text
    from jaxmoe.train.checkpoint import load_params

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1.")
    cfg, params = load_params(args.checkpoint, args.step)
    if cfg.model.family != "lm":
        raise UserError(f"`generate` needs a language model; this checkpoint is a {cfg.model.family} model.")
    tok = load_tokenizer(cfg.data.tokenizer)
    try:
        text = generate_text(params, cfg.model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(args.prompt + text)
    return 0
