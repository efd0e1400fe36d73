"""Writes notebooks/02_forecasting.ipynb (kept as a script so the notebook stays reviewable).

Run ``python tools/make_notebook_02.py`` (from any directory), then execute the notebook to
store its outputs. Every notebook generator lives in tools/ as ``make_notebook_NN.py``;
tests/test_notebooks.py checks that each stored notebook holds its generator's cells.
"""

from pathlib import Path

import nbformat as nbf

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_forecasting.ipynb"

cells = [
    nbf.v4.new_markdown_cell("""# Forecasting with a tiny Time-MoE

This notebook pretrains a (very) small Time-MoE model for a few steps on the embedded
synthetic series generator, then forecasts the held-out tail of a real series that ships
with statsmodels and compares it with the seasonal-naive baseline.

Time-MoE tokens are single time steps: each point is embedded by a point-wise SwiGLU, a
causal MoE transformer runs over the context, and several linear heads predict the next
1, 8, 32, ... points at once. Forecasting any horizon chains the largest fitting head with
a KV cache (`jaxmoe.decode.forecast`). The same steps from the command line:

```
jaxmoe train --config configs/time_moe_tiny.yaml
jaxmoe forecast --checkpoint runs/time_moe_tiny --csv FILE --column NAME --horizon 96 --plot out.png
jaxmoe evaluate --checkpoint runs/time_moe_tiny --suite real
```"""),
    nbf.v4.new_code_cell("""%matplotlib inline
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from jaxmoe.config import load_config
from jaxmoe.train import train
from jaxmoe.checkpoint import load_params

# find configs/ whether the notebook runs from the repository root or from notebooks/
root = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "configs" / "time_moe_tiny.yaml").exists())
run_dir = Path(tempfile.mkdtemp()) / "time_moe_nb"
steps = int(os.environ.get("JAXMOE_NB_STEPS", "150"))  # the test runner asks for fewer
cfg = load_config(root / "configs" / "time_moe_tiny.yaml", [
    # even smaller than time_moe_tiny so that the notebook runs in well under a minute
    "model.embed_dim=32", "model.num_layers=1", "model.ffn_dim=64", "model.horizons=[1,8,32]",
    "data.sources=[synthetic]", "data.source_weights=[]", "data.seq_len=64", "data.eval_fraction=0",
    f"train.steps={steps}", "train.batch_size=16", "train.warmup_steps=10", "train.learning_rate=0.003",
    "train.eval_every=0", "train.checkpoint_every=0", "train.progress=false", f"train.output_dir={run_dir}",
])
print(cfg.model.family, "embed", cfg.model.embed_dim, "experts", cfg.model.moe.num_experts, "heads", cfg.model.horizons)"""),
    nbf.v4.new_markdown_cell("""## Pretrain on synthetic series (a few steps)"""),
    nbf.v4.new_code_cell("""summary = train(cfg)
print(f"{summary['steps']} steps in {summary['time_sec']:.1f} s: loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")"""),
    nbf.v4.new_markdown_cell("""## Forecast a real series

`elec_equip` (monthly orders of electrical equipment, statsmodels) with its last 24
months held out. `forecast` z-normalises each context, masks missing values and
de-normalises the result."""),
    nbf.v4.new_code_cell("""from jaxmoe.data.real_series import REAL_SERIES, load_real_series
from jaxmoe.decode.forecast import forecast, horizon_schedule
from jaxmoe.eval.timeseries import mase, seasonal_naive

cfg, params = load_params(run_dir)
name = "elec_equip"
info = REAL_SERIES[name]
series = load_real_series(name).astype(np.float64)
train_part, test = series[:-info.horizon], series[-info.horizon:]
context = train_part[-cfg.data.seq_len:]
print("horizon", info.horizon, "=", " + ".join(map(str, horizon_schedule(info.horizon, cfg.model.horizons))))

model_fc = forecast(params, cfg, context, info.horizon)
naive_fc = seasonal_naive(context, info.horizon, info.season_length)
print(f"MASE  time_moe {mase(test, model_fc, train_part, info.season_length):.3f}   "
      f"seasonal naive {mase(test, naive_fc, train_part, info.season_length):.3f}")"""),
    nbf.v4.new_code_cell("""%matplotlib inline
n = len(context)
fig, ax = plt.subplots(figsize=(9, 3.5))
ax.plot(np.arange(n), context, color="black", lw=1, label="context")
future = np.arange(n, n + info.horizon)
ax.plot(future, test, color="grey", lw=1, ls="--", label="held-out truth")
ax.plot(future, model_fc, color="tab:blue", lw=1.5, label=f"Time-MoE (tiny, {steps} steps)")
ax.plot(future, naive_fc, color="tab:orange", lw=1, label="seasonal naive")
ax.set_title(f"{name}: {info.horizon}-step forecast")
ax.legend(loc="upper left", fontsize=8)
plt.show()"""),
    nbf.v4.new_markdown_cell("""150 steps of pretraining on synthetic data is only enough to check that everything
fits together; `configs/time_moe_tiny.yaml` (a few hundred steps on synthetic + the training
part of the real series) and `jaxmoe evaluate --suite real` give the full comparison with
seasonal naive and ETS."""),
]


def write(path: Path = NOTEBOOK) -> None:
    """Write the notebook (without outputs; execute it to store them)."""
    nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                    "language": "python"}})
    nbf.write(nb, str(path))


if __name__ == "__main__":
    write()
