"""``jaxmoe.data.pipelines.build``: one pipeline builder per data kind, chosen by the kind the
family's config class declares (never by the family's name)."""

import dataclasses
from typing import ClassVar, Literal

import numpy as np
import pytest

from jaxmoe.config import ConfigError, ModelConfig, load_config
from jaxmoe.data import pipelines

SMALL = ["train.batch_size=4"]
CASES = [
    ("configs/lm_tiny.yaml", ["data.seq_len=32"], "text", {"tokens": (4, 33)}),
    ("configs/time_moe_tiny.yaml", ["data.seq_len=32", "data.sources=[synthetic]", "data.source_weights=[]"],
     "timeseries_points", {"values": (4, 33), "mask": (4, 33)}),
    ("configs/moirai_moe_small.yaml", ["data.seq_len=32", "model.patch_size=8", "data.sources=[synthetic]",
                                       "data.source_weights=[]"],
     "timeseries_patches", {"values": (4, 40), "mask": (4, 40)}),
    ("configs/s_mamba_macro.yaml", ["model.lookback=12", "model.horizon=3"], "windows",
     {"x": (4, 12, 12), "y": (4, 3, 12)}),
    ("configs/spacetime_macro.yaml", ["model.lookback=12", "model.horizon=3"], "windows",
     {"x": (4, 12, 12), "y": (4, 3, 12)}),
    ("configs/lssl_digits.yaml", [], "classification", {"tokens": (4, 64), "labels": (4,)}),
]


@pytest.mark.parametrize("path,overrides,kind,shapes", CASES, ids=[c[0].split("/")[1][:-5] for c in CASES])
def test_build_by_data_kind(path, overrides, kind, shapes):
    cfg = load_config(path, overrides + SMALL)
    assert pipelines.data_kind(cfg) == kind == type(cfg.model).data_kind
    train, _ = pipelines.build(cfg)
    batch = next(train.iterator())
    assert {k: tuple(np.shape(v)) for k, v in batch.items()} == shapes


def test_a_family_without_a_data_kind_is_refused():
    @dataclasses.dataclass(frozen=True)
    class NoKind(ModelConfig):
        family: Literal["nokind"] = "nokind"

    @dataclasses.dataclass(frozen=True)
    class BadKind(ModelConfig):
        data_kind: ClassVar[str] = "pictures"
        family: Literal["badkind"] = "badkind"

    cfg = load_config("configs/lm_tiny.yaml")
    for model in (NoKind(), BadKind()):
        with pytest.raises(ConfigError, match="declares no data kind"):
            pipelines.build(dataclasses.replace(cfg, model=model))


def test_window_and_classification_data_checks():
    with pytest.raises(ConfigError, match="one multivariate source"):
        pipelines.forecast_data(load_config("configs/s_mamba_macro.yaml", ["data.sources=[macrodata, macrodata]"]))
    with pytest.raises(ConfigError, match="digits"):
        pipelines.classification_data(load_config("configs/lssl_digits.yaml", ["data.sources=[macrodata]"]))
