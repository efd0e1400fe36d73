"""``jaxmoe import --hf HF_DIR --out CKPT_DIR [--family NAME]``.

Turns a Hugging Face directory (config.json + safetensors) into a jaxmoe run directory:
``config.yaml`` plus a params-only orbax checkpoint at step 0, usable by
``jaxmoe generate --checkpoint CKPT_DIR`` and ``jaxmoe train --config CKPT_DIR/config.yaml
--resume`` (which starts a fresh optimizer state and data iterator).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    from jaxmoe.export.families import FAMILIES

    p.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="jaxmoe run directory to create")
    p.add_argument("--family", default=None, choices=sorted(FAMILIES),
                   help="family (default: from config.json's model_type)")
    p.add_argument("--seed", type=int, default=0, help="train.seed of the new run")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out (one holding no checkpoints)")


def run(args) -> int:
    from jaxmoe import validate
    from jaxmoe.export import import_hf

    validate.input_dir(args.hf, "--hf")
    validate.import_output_dir(args.out, force=args.force)
    run_dir = import_hf(args.hf, args.out, family=args.family, seed=args.seed, force=args.force)
    print(f"imported {args.hf} -> {run_dir}")
    print(f"generate: jaxmoe generate --checkpoint {run_dir} --prompt TEXT")
    print(f"train:    jaxmoe train --config {run_dir}/config.yaml train.steps=N --resume")
    return 0
