"""``jaxmoe generate --checkpoint DIR --prompt TEXT [--max-new-tokens N] [--temperature T]``.

Expert steering (MoTE): ``--disable-experts 3:5,7:1`` / ``--force-experts 2:0`` (layer:expert
pairs). Self-contrast decoding (SCMoE): ``--contrastive scmoe --beta 0.5 --alpha 0.1
--weak-rank 2``.
"""

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
    p.add_argument("--disable-experts", default=None, metavar="L:E,...",
                   help="switch experts off (layer:expert pairs, e.g. 3:5,7:1); the next best experts fill in")
    p.add_argument("--force-experts", default=None, metavar="L:E,...",
                   help="force experts into every token's set (layer:expert pairs)")
    p.add_argument("--contrastive", choices=["scmoe"], default=None,
                   help="self-contrast decoding: strong top-k routing against a weak one-expert routing")
    p.add_argument("--beta", type=float, default=0.5, help="SCMoE contrast strength (0 = greedy)")
    p.add_argument("--alpha", type=float, default=0.1, help="SCMoE plausibility cutoff (fraction of the top prob)")
    p.add_argument("--weak-rank", type=int, default=2, help="SCMoE weak routing: the expert at this rank (0 = top-1)")


def run(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.data.tokenizers import load_tokenizer
    from jaxmoe.decode.generate import generate_text
    from jaxmoe.checkpoint import load_params

    from jaxmoe import validate

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1.")
    validate.sampling(args.temperature, args.top_k, args.top_p)
    if args.contrastive == "scmoe":
        validate.at_least(args.beta, 0, "--beta", " (0 = greedy)")
        if not 0 <= args.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1] (a fraction of the top probability), got {args.alpha}.")
        validate.at_least(args.weak_rank, 0, "--weak-rank", " (0 = the top-1 expert)")
    _, run_cfg = validate.run_config(args.checkpoint)
    validate.language_model(run_cfg.model.family, "generate")
    cfg, params = load_params(args.checkpoint, args.step)
    if cfg.model.family != "lm":
        raise UserError(f"`generate` needs a language model; this checkpoint is a {cfg.model.family} model.")
    tok = load_tokenizer(cfg.data.tokenizer)
    try:
        masks = {}
        if args.disable_experts or args.force_experts:
            from jaxmoe.decode.steering import router_masks

            masks = dict(zip(("expert_mask", "force_mask"),
                             router_masks(cfg.model, args.disable_experts, args.force_experts)))
        if args.contrastive == "scmoe":
            from jaxmoe.decode.contrastive import SCMoEConfig, contrastive_text

            sc = SCMoEConfig(beta=args.beta, alpha=args.alpha, weak_rank=args.weak_rank, temperature=args.temperature)
            text = contrastive_text(params, cfg.model, tok, args.prompt, args.max_new_tokens, sc=sc, seed=args.seed,
                                    **masks)
        else:
            text = generate_text(params, cfg.model, tok, args.prompt, args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                 **masks)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(args.prompt + text)
    return 0
