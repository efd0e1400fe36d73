"""``jaxmoe export --checkpoint DIR --family mixtral --out HF_DIR [--shard-size 2GB] [--stablehlo]``.

Writes a Hugging Face directory (config.json + safetensors, sharded with an index above
``--shard-size``) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads. Families
come from :data:`jaxmoe.export.families.FAMILIES`. A config the family cannot express is
refused with one line before anything is written. ``--out`` must be new, empty or an earlier
export (``--force``: any directory); a re-export removes only the files the earlier one
listed in ``OUT/.jaxmoe-export.json``.
"""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    from jaxmoe.export.families import FAMILIES

    p.add_argument("--checkpoint", required=True, help="run directory written by `jaxmoe train` (or `jaxmoe import`)")
    p.add_argument("--family", required=True, choices=sorted(FAMILIES), help="Hugging Face model family")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard-size", default="2GB", help="largest safetensors shard, e.g. 2GB, 500MB (default 2GB)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written tensors (default float32)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--stablehlo", action="store_true",
                   help="also write the jitted decode step as serialized StableHLO under OUT/stablehlo/")
    p.add_argument("--stablehlo-batch", type=int, default=1, help="batch size of the StableHLO decode step")
    p.add_argument("--stablehlo-max-len", type=int, default=None,
                   help="cache length of the StableHLO decode step (default: model.max_seq_len)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that an earlier export did not write (nothing of it is deleted)")


def run(args) -> int:
    from jaxmoe.errors import UserError
    from jaxmoe.export import export_hf
    from jaxmoe.export.safetensors_io import parse_size

    from jaxmoe import validate

    try:
        parse_size(args.shard_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    validate.at_least(args.stablehlo_batch, 1, "--stablehlo-batch")
    validate.at_least(args.stablehlo_max_len, 1, "--stablehlo-max-len")
    validate.export_output_dir(args.out, force=args.force)
    validate.run_config(args.checkpoint)
    summary = export_hf(args.checkpoint, args.family, args.out, args.shard_size, step=args.step, dtype=args.dtype,
                        stablehlo=args.stablehlo, stablehlo_batch=args.stablehlo_batch,
                        stablehlo_max_len=args.stablehlo_max_len, force=args.force)
    print("exported: " + json.dumps(summary))
    return 0
