"""``jaxmoe experts profile --checkpoint DIR --prompts-a A.txt --prompts-b B.txt [--plot P] [--out J]``.

MoTE functional expert imaging: how often each (layer, expert) is in a token's routed set
on two contrasting prompt sets (one prompt per line), ranked by the difference. The
printed ``--disable-experts`` strings plug straight into ``jaxmoe generate``.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="experts_command", metavar="ACTION")
    prof = sub.add_parser("profile", help="activation frequency per (layer, expert) on two prompt sets",
                          description="activation frequency per (layer, expert) on two prompt sets")
    prof.add_argument("--checkpoint", required=True, help="run directory written by `jaxmoe train`")
    prof.add_argument("--prompts-a", required=True, help="text file, one prompt per line")
    prof.add_argument("--prompts-b", required=True, help="text file, one prompt per line")
    prof.add_argument("--plot", default=None, help="write a heatmap PNG of the frequencies and their difference")
    prof.add_argument("--out", default=None, help="write the frequencies and the ranking as JSON")
    prof.add_argument("--top", type=int, default=5, help="experts to print per direction")
    prof.add_argument("--labels", default="A,B", help="names of the two sets for the plot, e.g. code,prose")
    prof.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def _read_prompts(path: str, flag: str = "prompt file") -> list[str]:
    from jaxmoe import validate

    p = validate.input_file(path, f"{flag} prompt file" if flag.startswith("--") else flag)
    prompts = [line.rstrip("\n") for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        from jaxmoe.errors import UserError

        raise UserError(f"prompt file '{path}' has no non-empty lines.")
    return prompts


def run(args) -> int:
    from jaxmoe.errors import UserError

    if getattr(args, "experts_command", None) != "profile":
        raise UserError("choose an action: `jaxmoe experts profile --checkpoint DIR --prompts-a A.txt "
                        "--prompts-b B.txt`.")
    from jaxmoe.data.tokenizers import load_tokenizer
    from jaxmoe.decode import steering
    from jaxmoe.checkpoint import load_params

    from jaxmoe import validate

    prompts_a, prompts_b = _read_prompts(args.prompts_a, "--prompts-a"), _read_prompts(args.prompts_b, "--prompts-b")
    labels = tuple(x.strip() for x in args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        raise UserError(f"--labels must name two sets separated by a comma, got {args.labels!r}.")
    for flag, path in (("--plot", args.plot), ("--out", args.out)):
        if path:
            validate.output_file(path, flag)
    validate.at_least(args.top, 1, "--top")
    _, run_cfg = validate.run_config(args.checkpoint)
    validate.language_model(run_cfg.model.family, "experts profile")
    cfg, params = load_params(args.checkpoint, args.step)
    if cfg.model.family != "lm":
        raise UserError(f"`experts profile` needs a language model; this checkpoint is a {cfg.model.family} model.")
    if not steering.lm.moe_layer_indices(cfg.model):
        raise UserError("this model has no MoE layers to profile.")
    tok = load_tokenizer(cfg.data.tokenizer)
    try:
        profile = steering.profile_experts(params, cfg.model, prompts_a, prompts_b, tok)
    except ValueError as e:
        raise UserError(str(e)) from None
    profile["labels"] = list(labels)
    print(f"{len(prompts_a)} prompts ({profile['tokens_a']} tokens) in {labels[0]}, "
          f"{len(prompts_b)} prompts ({profile['tokens_b']} tokens) in {labels[1]}")
    top = max(1, args.top)
    for name, rows in ((labels[0], profile["ranking"][:top]), (labels[1], profile["ranking"][::-1][:top])):
        print(f"experts most specific to {name}:")
        print(f"  {'layer':>5} {'expert':>6} {'freq ' + labels[0]:>12} {'freq ' + labels[1]:>12} {'diff':>8}")
        for r in rows:
            print(f"  {r['layer']:>5} {r['expert']:>6} {r['freq_a']:>12.3f} {r['freq_b']:>12.3f} {r['diff']:>+8.3f}")
    print(f"to switch the {labels[0]} experts off: --disable-experts {steering.top_experts(profile, top, 'a')}")
    if args.out:
        steering.save_profile(profile, args.out)
        print(f"wrote {args.out}")
    if args.plot:
        steering.plot_profile(profile, args.plot, labels)
        print(f"wrote {args.plot}")
    return 0
