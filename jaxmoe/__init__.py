"""jaxmoe: functional JAX Mixture-of-Experts sequence models.

Quick API::

    import jaxmoe
    cfg = jaxmoe.load_config("configs/lm_tiny.yaml", ["train.steps=50"])
    params = jaxmoe.models.lm.init(jax.random.PRNGKey(0), cfg.model)
    summary = jaxmoe.train.train(cfg)
"""

from jaxmoe.config import Config, ConfigError, load_config

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "models", "train", "__version__"]


def __getattr__(name):  # lazy subpackages: `jaxmoe.models`, `jaxmoe.train`, ...
    import importlib

    if name in ("models", "train", "decode", "data", "moe", "nn", "ssm", "parallel", "export", "eval", "checkpoint"):
        return importlib.import_module(f"jaxmoe.{name}")
    raise AttributeError(name)
