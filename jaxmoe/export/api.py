"""Export jaxmoe checkpoints to Hugging Face directories and import them back.

* :func:`export_hf` ``(run_dir, family, out_dir, shard_size="2GB")``: config.json +
  (sharded) safetensors that ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads.
* :func:`import_hf` ``(hf_dir, out_run_dir)``: a jaxmoe run directory (config.yaml + a
  params-only orbax checkpoint at step 0, :func:`jaxmoe.checkpoint.save_params`) that
  ``jaxmoe generate --checkpoint`` and ``jaxmoe train --config RUN/config.yaml --resume`` use
  (resuming starts a fresh optimizer state and data iterator).
* :func:`load_hf` / :func:`save_hf`: the same conversions in memory (``(Config, params)``).
* :func:`detect_family`, :func:`hf_info`: what an HF directory holds (headers only).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxmoe.config import Config
from jaxmoe.export.families import FAMILIES, family_for_model_type, get_family
from jaxmoe.export.families.common import ExportError
from jaxmoe.export.safetensors_io import SafetensorsReader, ShardedWriter, parse_size

log = logging.getLogger("jaxmoe")

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def read_hf_config(hf_dir: str | Path) -> dict:
    p = Path(hf_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"Hugging Face directory '{hf_dir}' does not exist.")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ExportError(f"'{hf_dir}' has no config.json, so it is not a Hugging Face model directory.")
    try:
        hf = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ExportError(f"{cfg_file} is not a text file, so '{hf_dir}' is not a Hugging Face model directory.") \
            from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_file} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    if not isinstance(hf, dict):
        raise ExportError(f"{cfg_file} holds no JSON object, so '{hf_dir}' is not a Hugging Face model directory.")
    return hf


def detect_family(hf_dir: str | Path) -> str:
    """Family name (a key of ``FAMILIES``) of an HF directory, from config.json's model_type."""
    hf = read_hf_config(hf_dir)
    model_type = hf.get("model_type", "")
    name = family_for_model_type(model_type)
    if name is None:
        raise ExportError(f"model_type {model_type!r} in {Path(hf_dir) / 'config.json'} is not supported; supported "
                          f"families: {', '.join(FAMILIES)}.")
    return name


def save_hf(cfg: Config, params, family: str, out_dir: str | Path, shard_size: int | str = "2GB",
            dtype: str = "float32") -> dict:
    """Write ``params`` of ``cfg`` as a Hugging Face ``family`` directory. Returns a summary."""
    fam = get_family(family)
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"export dtype {dtype!r} is not valid; choose one of {', '.join(EXPORT_DTYPES)}.")
    parse_size(shard_size)
    hf = fam.config_to_hf(cfg)  # refuses unsupported configs before anything is written
    hf["dtype"] = dtype
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        import ml_dtypes

        np_dtype = ml_dtypes.bfloat16
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardedWriter(out, shard_size)
    for name, producer in fam.export_tensors(cfg, params, hf):
        writer.add(name, lambda p=producer: np.ascontiguousarray(np.asarray(p(), np.float32).astype(np_dtype)))
    files = writer.close()
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tok = cfg.data.tokenizer
    if tok != "byte" and Path(tok).is_file():
        shutil.copyfile(tok, out / "tokenizer.json")
    return {"family": fam.name, "out_dir": str(out), "files": [f.name for f in files], "num_params": writer.num_params,
            "total_size": writer.total_size, "peak_buffer_bytes": writer.peak_buffer_bytes}


def _file_states(out: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the files under ``out`` (the manifest left out)."""
    from jaxmoe.validate import EXPORT_MANIFEST

    if not out.is_dir():
        return {}
    return {str(f.relative_to(out)): (f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(out.rglob("*"))
            if f.is_file() and f.name != EXPORT_MANIFEST}


def _clear_previous_export(out: Path) -> None:
    """Delete what an earlier ``export`` listed in its manifest (and directories it leaves
    empty); nothing else in ``out`` is touched."""
    from jaxmoe.validate import EXPORT_MANIFEST, read_export_manifest

    for rel in read_export_manifest(out) or []:
        target = (out / rel).resolve()
        if out.resolve() not in target.parents:  # only inside the export directory
            continue
        if target.is_file() or target.is_symlink():
            target.unlink()
        for parent in target.parents:
            if parent == out.resolve() or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    (out / EXPORT_MANIFEST).unlink(missing_ok=True)


def _write_export_manifest(out: Path, before: dict, info: dict) -> None:
    from jaxmoe.validate import EXPORT_MANIFEST

    after = _file_states(out)
    written = sorted(k for k, v in after.items() if before.get(k) != v)
    (out / EXPORT_MANIFEST).write_text(json.dumps({**info, "files": written}, indent=2) + "\n")


def export_hf(run_dir: str | Path, family: str, out_dir: str | Path, shard_size: int | str = "2GB", *,
              step: int | None = None, dtype: str = "float32", stablehlo: bool = False,
              stablehlo_batch: int = 1, stablehlo_max_len: int | None = None, force: bool = False) -> dict:
    """Export the newest intact (or ``step``) checkpoint of ``run_dir`` as an HF ``family``
    directory. ``out_dir`` must be new, empty or an earlier export (``force``: any
    directory); the files an earlier export wrote (listed in its ``.jaxmoe-export.json``)
    are removed first, nothing else, and the new manifest lists what this one wrote."""
    from jaxmoe import validate
    from jaxmoe.checkpoint import load_params

    out = validate.export_output_dir(out_dir, force=force)
    fam = get_family(family)
    info = {"checkpoint": str(Path(run_dir).absolute()), "family": family}
    if hasattr(fam, "export_run"):  # families that convert whole run directories themselves
        _clear_previous_export(out)
        before = _file_states(out)
        result = fam.export_run(run_dir, out_dir, shard_size=shard_size, step=step, dtype=dtype)
        _write_export_manifest(out, before, info)
        return result if isinstance(result, dict) else {"family": family, "out_dir": str(result)}
    cfg, params = load_params(run_dir, step)
    fam.config_to_hf(cfg)  # refuses a config the family cannot express before anything is removed or written
    _clear_previous_export(out)
    before = _file_states(out)
    summary = save_hf(cfg, params, family, out_dir, shard_size, dtype)
    if stablehlo:
        from jaxmoe.export.stablehlo import export_decode_step

        art = export_decode_step(cfg.model, params, Path(out_dir) / "stablehlo", batch=stablehlo_batch,
                                 max_len=stablehlo_max_len)
        summary["stablehlo"] = str(art)
    _write_export_manifest(out, before, info)
    return summary


def load_hf(hf_dir: str | Path, family: str | None = None) -> tuple[Config, dict]:
    """Read an HF directory into ``(Config, params)`` (fp32 numpy arrays in jaxmoe's layout)."""
    hf = read_hf_config(hf_dir)
    fam = get_family(family or detect_family(hf_dir))
    if not hasattr(fam, "import_params"):
        raise ExportError(f"family {family or detect_family(hf_dir)!r} converts whole run directories; use import_hf.")
    cfg = fam.config_from_hf(hf)
    with SafetensorsReader(hf_dir) as reader:
        params = fam.import_params(cfg, reader, hf)
    return cfg, params


def import_hf(hf_dir: str | Path, out_run_dir: str | Path, *, family: str | None = None, seed: int = 0,
              force: bool = False) -> Path:
    """Convert an HF directory into a jaxmoe run directory (config.yaml + a params-only
    orbax checkpoint at step 0: no optimizer state, no data-iterator position).
    ``out_run_dir`` must be new or empty (``force``: any directory without checkpoints)."""
    import dataclasses

    from jaxmoe import checkpoint as ckpt
    from jaxmoe import validate

    validate.import_output_dir(out_run_dir, force=force)

    family = family or detect_family(hf_dir)
    fam = get_family(family)
    if hasattr(fam, "import_run"):  # families that convert whole run directories themselves
        return Path(fam.import_run(hf_dir, out_run_dir))
    cfg, params = load_hf(hf_dir, family)
    run = Path(out_run_dir).absolute()
    if ckpt.checkpoint_dir(run).exists() and any(ckpt.checkpoint_dir(run).iterdir()):
        raise ExportError(f"{run} already holds checkpoints; choose an empty output directory.")
    tok = Path(hf_dir) / "tokenizer.json"
    data = cfg.data
    if tok.is_file():
        from jaxmoe.data.tokenizers import check_tokenizer_fits, tokenizer_file_vocab_size

        check_tokenizer_fits(tokenizer_file_vocab_size(tok) or 0, cfg.model.vocab_size, str(tok))
        run.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tok, run / "tokenizer.json")
        data = dataclasses.replace(data, tokenizer=str(run / "tokenizer.json"))
    cfg = dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, output_dir=str(run), seed=seed))
    return ckpt.save_params(run, cfg, params, step=0, meta={"imported_from": str(Path(hf_dir).absolute())})


def hf_info(hf_dir: str | Path) -> dict[str, Any]:
    """Family, sizes and parameter counts of an HF directory (reads only headers)."""
    hf = read_hf_config(hf_dir)
    name = detect_family(hf_dir)
    fam = get_family(name)
    if hasattr(fam, "hf_info"):
        return fam.hf_info(hf_dir)
    cfg = fam.config_from_hf(hf)
    m = cfg.model
    with SafetensorsReader(hf_dir) as reader:
        stored = reader.num_params()
        size = reader.total_size()
        files = len(reader.paths)
        dtypes = sorted({reader.dtype(n) for n in reader.names()})
    info: dict[str, Any] = {
        "family": name, "model_type": hf.get("model_type"), "architecture": (hf.get("architectures") or ["?"])[0],
        "vocab_size": m.vocab_size, "embed_dim": m.embed_dim, "num_layers": m.num_layers, "num_heads": m.num_heads,
        "num_kv_heads": m.kv_heads, "attention": m.attention_type,
        "num_experts": m.moe.num_experts, "experts_per_token": m.moe.experts_per_token,
        "expert_ffn_dim": m.moe.expert_ffn_dim, "num_shared_experts": m.moe.num_shared_experts,
        "first_k_dense": m.moe.first_k_dense, "moe_every": m.moe.moe_every, "max_seq_len": m.max_seq_len,
        "stored_params": stored, "bytes": size, "files": files, "dtypes": dtypes,
    }
    from jaxmoe.models import param_counts

    counts = param_counts(m)
    info["params"], info["active_params"] = counts["total"], counts["active"]
    return info
