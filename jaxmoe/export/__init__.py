"""Checkpoint export/import with the Hugging Face ecosystem, and StableHLO export.

``export_hf(run_dir, family, out_dir, shard_size="2GB")``, ``import_hf(hf_dir, out_run_dir)``,
``load_hf`` / ``save_hf`` (in memory), ``detect_family``, ``hf_info``; families are listed in
:data:`jaxmoe.export.families.FAMILIES`. Unsupported combinations raise :class:`ExportError`
(a ``ConfigError``: the CLI prints it as one line).
"""

from jaxmoe.export.api import detect_family, export_hf, hf_info, import_hf, load_hf, read_hf_config, save_hf
from jaxmoe.export.families import FAMILIES, get_family
from jaxmoe.export.families.common import ExportError

__all__ = ["FAMILIES", "ExportError", "detect_family", "export_hf", "get_family", "hf_info", "import_hf", "load_hf",
           "read_hf_config", "save_hf"]
