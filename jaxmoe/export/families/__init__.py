"""Hugging Face family registry: ``--family NAME`` -> module path.

A family module exposes ``FAMILY``, an object with:

* ``name``, ``model_types`` (config.json ``model_type`` values it reads), ``architecture``;
* ``config_to_hf(cfg: Config) -> dict`` (config.json; raises ExportError with one sentence
  when the jaxmoe config has no equivalent) and ``config_from_hf(hf: dict) -> Config``;
* ``export_tensors(cfg, params, hf) -> iterator of (name, producer)`` (producer() returns
  one numpy tensor) and ``import_params(cfg, reader, hf) -> params`` (reader: a lazy
  :class:`~jaxmoe.export.safetensors_io.SafetensorsReader`).

Parameter counts come from :func:`jaxmoe.models.param_counts` for every family.

The decoder-LM families derive from :class:`~jaxmoe.export.families.common.LMFamily`.

A family that converts whole run directories itself (e.g. Time-MoE) may instead expose,
at module level (or on ``FAMILY``): ``model_types``, ``export_run(run_dir, out_dir, *,
shard_size, step, dtype) -> dict | path`` and ``import_run(hf_dir, out_run_dir) -> path``
(optionally ``hf_info(hf_dir) -> dict``); :mod:`jaxmoe.export.api` then delegates to them.
Adding a family is one line in ``FAMILIES`` plus its module.
"""

from __future__ import annotations

import importlib

FAMILIES = {
    "mixtral": "jaxmoe.export.families.mixtral",
    "qwen2_moe": "jaxmoe.export.families.qwen2_moe",
    "qwen3_moe": "jaxmoe.export.families.qwen3_moe",
    "olmoe": "jaxmoe.export.families.olmoe",
    "deepseek": "jaxmoe.export.families.deepseek",
    "deepseek_v2": "jaxmoe.export.families.deepseek_v2",
    "deepseek_v3": "jaxmoe.export.families.deepseek_v3",
    "time_moe": "jaxmoe.export.time_moe",
}


def get_family(name: str):
    from jaxmoe.export.families.common import ExportError

    try:
        path = FAMILIES[name]
    except KeyError:
        raise ExportError(f"family {name!r} is not supported; choose one of {', '.join(FAMILIES)}.") from None
    module = importlib.import_module(path)
    return getattr(module, "FAMILY", module)


def family_for_model_type(model_type: str) -> str | None:
    """Name of the registered family whose ``model_types`` contains ``model_type`` (or None)."""
    for name in FAMILIES:
        if model_type == name or model_type in getattr(get_family(name), "model_types", ()):
            return name
    return None
