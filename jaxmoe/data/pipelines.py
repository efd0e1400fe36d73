"""Training and evaluation pipelines of a run: ``build(cfg) -> (train, eval or None)``.

The pipeline is chosen by the data kind the family's model config declares
(``data_kind``, a class attribute of e.g. :class:`jaxmoe.models.time_moe.TimeMoEConfig`),
never by the family's name, and this module imports no model:

==========================  ==================================================================
``text``                    packed token sequences ``{"tokens": [batch, seq_len + 1]}``
                            (:mod:`jaxmoe.data.text`; language models)
``timeseries_points``       windows of ``seq_len + 1`` points ``{"values", "mask"}`` from
                            ``data.sources`` (:mod:`jaxmoe.data.timeseries`; Time-MoE)
``timeseries_patches``      windows of ``seq_len + patch_size`` points: ``seq_len / P`` input
                            patches and one more patch of targets (Moirai-MoE)
``windows``                 lookback/horizon windows ``{"x": [batch, lookback, C], "y":
                            [batch, horizon, C]}`` of one multivariate series, chronological
                            train/test split (:mod:`jaxmoe.data.datasets`; S-Mamba, SpaceTime)
``classification``          ``{"tokens": [batch, seq], "labels": [batch]}`` (sklearn digits
                            read pixel by pixel; the LSSL classifier)
==========================  ==================================================================
"""

from __future__ import annotations

from typing import Any, Callable

from jaxmoe.errors import ConfigError

DATA_KINDS = ("text", "timeseries_points", "timeseries_patches", "windows", "classification")


def data_kind(cfg) -> str:
    """The data kind ``cfg.model``'s config class declares (``data_kind``)."""
    kind = getattr(type(cfg.model), "data_kind", None)
    if kind not in DATA_KINDS:
        raise ConfigError(f"model.family={cfg.model.family} declares no data kind its pipelines could be built for "
                          f"(data_kind={kind!r}; one of {', '.join(DATA_KINDS)}).")
    return kind


def build(cfg) -> tuple[Any, Any | None]:
    """``(train pipeline, evaluation pipeline or None)`` of the run ``cfg``; each has
    ``.iterator()`` (with ``get_state`` / ``set_state``)."""
    return BUILDERS[data_kind(cfg)](cfg)


# --------------------------------------------------------------------------------- text


def text_pipelines(cfg):
    """Packed text from ``data.path`` (default: the embedded corpus), tokenised by
    ``data.tokenizer``; the evaluation split is the last ``data.eval_fraction`` (none when
    0 or too little text for one batch)."""
    from jaxmoe.data.text import build_text_pipeline

    common = dict(path=cfg.data.path, tokenizer=cfg.data.tokenizer, seq_len=cfg.data.seq_len,
                  batch_size=cfg.train.batch_size, seed=cfg.train.seed, eval_fraction=cfg.data.eval_fraction,
                  text_field=cfg.data.text_field)
    train = build_text_pipeline(split="train", shuffle=cfg.data.shuffle, **common)
    if train.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"the tokenizer has {train.vocab_size} tokens but model.vocab_size is "
                          f"{cfg.model.vocab_size}; set model.vocab_size>={train.vocab_size}.")
    evalp = None
    if cfg.data.eval_fraction > 0:
        try:
            evalp = build_text_pipeline(split="eval", shuffle=False, **common)
        except ValueError:
            evalp = None  # too little text for an eval batch: train without evaluation
    return train, evalp


# -------------------------------------------------------------------------- time series


def timeseries_pipelines(cfg, context_length: int):
    """Windows of ``context_length + 1`` points from ``data.sources`` (default: synthetic).

    Stride ``data.stride`` (0 -> seq_len), weights ``data.source_weights`` (empty -> equal);
    the evaluation pipeline draws from the same sources with seed ``train.seed + 1`` (none
    when ``data.eval_fraction`` is 0).
    """
    from jaxmoe.data.timeseries import build_timeseries_pipeline

    d = cfg.data
    specs = tuple(d.sources) or ("synthetic",)
    weights = tuple(d.source_weights) or (1.0,) * len(specs)
    if len(weights) != len(specs):
        raise ConfigError(f"data.source_weights has {len(weights)} entries for {len(specs)} sources.")
    common = dict(sources=list(zip(specs, weights)), context_length=context_length, stride=d.stride or d.seq_len,
                  batch_size=cfg.train.batch_size, shuffle=d.shuffle, exclude=tuple(d.exclude),
                  exclude_like=tuple(d.exclude_like), num_threads=d.num_threads)
    train = build_timeseries_pipeline(seed=cfg.train.seed % (2 ** 32), **common)
    evalp = None
    if d.eval_fraction > 0:
        evalp = build_timeseries_pipeline(seed=(cfg.train.seed + 1) % (2 ** 32), **common)
    return train, evalp


def point_pipelines(cfg):
    """Point-wise tokens: windows of ``data.seq_len + 1`` points (inputs and next points)."""
    return timeseries_pipelines(cfg, cfg.data.seq_len)


def patch_pipelines(cfg):
    """Patch tokens: windows of ``data.seq_len + patch_size`` points, ``seq_len / P`` input
    patches and one more patch of targets."""
    return timeseries_pipelines(cfg, cfg.data.seq_len + cfg.model.patch_size - 1)


# ------------------------------------------------------------- lookback/horizon windows


def forecast_data(cfg):
    """The chronological :class:`jaxmoe.data.datasets.ForecastSplit` of ``cfg``: source
    ``data.sources[0]`` (default ``macrodata``), windows of ``model.lookback`` /
    ``model.horizon``, test fraction ``data.eval_fraction``, training-window stride
    ``data.stride`` (0 -> 1)."""
    from jaxmoe.data.datasets import cached_forecast_split

    d, m = cfg.data, cfg.model
    if len(d.sources) > 1:
        raise ConfigError(f"model.family={m.family} reads one multivariate source, got data.sources={list(d.sources)}.")
    source = d.sources[0] if d.sources else "macrodata"
    return cached_forecast_split(source, m.lookback, m.horizon, float(d.eval_fraction), d.stride or 1)


def window_pipelines(cfg):
    """Training pipeline over the training windows (shuffled with ``train.seed``) and an
    evaluation pipeline over the test windows in time order (None when there are fewer
    test windows than one batch)."""
    from jaxmoe.data.arrays import ArrayPipeline

    data = forecast_data(cfg)
    bs = cfg.train.batch_size
    train = ArrayPipeline({"x": data.train_x, "y": data.train_y}, bs, seed=cfg.train.seed, shuffle=cfg.data.shuffle)
    evalp = None
    if len(data.test_x) >= bs:
        evalp = ArrayPipeline({"x": data.test_x, "y": data.test_y}, bs, shuffle=False)
    return train, evalp


# ----------------------------------------------------------------------- classification


def classification_data(cfg) -> dict:
    """The digits split of ``cfg`` (``data.sources`` empty or ``[digits]``; test fraction
    ``data.eval_fraction``; 0 keeps the default 0.25 split and only turns evaluation off)."""
    from jaxmoe.data.datasets import cached_digits

    d, m = cfg.data, cfg.model
    if tuple(d.sources) not in ((), ("digits",)):
        raise ConfigError(f"model.family={m.family} reads data.sources=[digits] (sklearn digits), "
                          f"got {list(d.sources)}.")
    data = cached_digits(float(d.eval_fraction) or 0.25, 0)
    if m.vocab_size < data["vocab_size"] or m.num_classes < data["num_classes"]:
        raise ConfigError(f"the digits need model.vocab_size >= {data['vocab_size']} and model.num_classes >= "
                          f"{data['num_classes']}, got {m.vocab_size} and {m.num_classes}.")
    return data


def classification_pipelines(cfg):
    """Training pipeline over the training digits (shuffled with ``train.seed``) and an
    evaluation pipeline over the test digits in a fixed order (None when
    ``data.eval_fraction`` is 0)."""
    from jaxmoe.data.arrays import ArrayPipeline

    data = classification_data(cfg)
    bs = cfg.train.batch_size
    train = ArrayPipeline(data["train"], bs, seed=cfg.train.seed, shuffle=cfg.data.shuffle)
    evalp = None
    if cfg.data.eval_fraction > 0 and len(data["test"]["labels"]) >= bs:
        evalp = ArrayPipeline(data["test"], bs, shuffle=False)
    return train, evalp


BUILDERS: dict[str, Callable] = {
    "text": text_pipelines,
    "timeseries_points": point_pipelines,
    "timeseries_patches": patch_pipelines,
    "windows": window_pipelines,
    "classification": classification_pipelines,
}
