"""Writes notebooks/03_state_space.ipynb (kept as a script so the notebook stays reviewable).

Run ``python tools/make_notebook_03.py`` (from any directory), then execute the notebook to
store its outputs. Every notebook generator lives in tools/ as ``make_notebook_NN.py``;
tests/test_notebooks.py checks that each stored notebook holds its generator's cells.
"""

from pathlib import Path

import nbformat as nbf

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_state_space.ipynb"

cells = [
    nbf.v4.new_markdown_cell("""# State-space layers and models

1. The LSSL layer's three computational views -- recurrence (`lax.scan`), convolution
   (Krylov kernel by repeated squaring + FFT) and parallel (`lax.associative_scan` over
   matrix-valued elements) -- compute the same function; so does step-by-step decoding.
2. The LSSL convolution kernel `K = (C B_bar, C A_bar B_bar, ...)` of a few channels.
3. An S-Mamba forecaster (variates as tokens, bidirectional Mamba) trained on the statsmodels
   macrodata series, with its forecast of one variate against the last-value baseline.

Everything runs on CPU in well under a minute (`JAXMOE_NB_STEPS` sets the training steps)."""),
    nbf.v4.new_code_cell("""import os
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
from jaxmoe.ssm.lssl import init_lssl, init_lssl_state, lssl, lssl_kernel, lssl_step
from jaxmoe.nn.init import unbox

jax.config.update("jax_default_matmul_precision", "highest")
params = unbox(init_lssl(jax.random.PRNGKey(0), 4, state_size=16, dt_min=1e-2, dt_max=2e-1))
u = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 4))
views = {mode: jax.jit(lssl, static_argnames="mode")(params, u, mode=mode)
         for mode in ("recurrent", "convolution", "parallel")}

@jax.jit
def decode(params, u):  # one lssl_step per token, carried through a lax.scan
    def body(state, u_t):
        y_t, state = lssl_step(params, u_t, state)
        return state, y_t
    _, ys = jax.lax.scan(body, init_lssl_state(u.shape[0], u.shape[2], state_size=16), jnp.swapaxes(u, 0, 1))
    return jnp.swapaxes(ys, 0, 1)

views["step-by-step"] = decode(params, u)
ref = views["recurrent"]
for name, y in views.items():
    print(f"{name:>12}: max |y - y_recurrent| = {float(jnp.max(jnp.abs(y - ref))):.2e}")
assert all(float(jnp.max(jnp.abs(y - ref))) < 1e-4 for y in views.values())"""),
    nbf.v4.new_markdown_cell("""## The LSSL kernel
Each channel has its own step size `dt` (trainable, log-uniform initialisation); a larger `dt`
gives a kernel that decays faster in steps, i.e. a shorter memory."""),
    nbf.v4.new_code_cell("""kernel = np.asarray(lssl_kernel(params, 64))  # [length, channels]
dts = np.exp(np.asarray(params["log_dt"]))
fig, ax = plt.subplots(figsize=(8, 3))
for h in range(kernel.shape[1]):
    ax.plot(kernel[:, h], label=f"channel {h}, dt={dts[h]:.3f}")
ax.set_xlabel("lag l"); ax.set_ylabel("K[l] = C A_bar^l B_bar"); ax.legend(fontsize=8); ax.set_title("HiPPO-LegS LSSL kernels")
plt.tight_layout(); plt.show()"""),
    nbf.v4.new_markdown_cell("""## S-Mamba on macrodata
12 quarterly US macro series (statsmodels, no download), z-normalised with training statistics,
chronological split: the last 20% of the quarters are forecast targets only. 16 quarters of
lookback, 4 quarters ahead. A smaller model than `configs/s_mamba_macro.yaml` keeps this quick."""),
    nbf.v4.new_code_cell("""from jaxmoe.config import load_config
from jaxmoe.data.pipelines import forecast_data
from jaxmoe.demos.ssm import evaluate_forecaster, fit
from jaxmoe.models import s_mamba

STEPS = int(os.environ.get("JAXMOE_NB_STEPS", "150"))
path = "../configs/s_mamba_macro.yaml" if os.path.exists("../configs/s_mamba_macro.yaml") else "configs/s_mamba_macro.yaml"
cfg = load_config(path, ["model.embed_dim=32", "model.ffn_dim=32", "train.learning_rate=0.001",
                         f"train.steps={STEPS}", "train.warmup_steps=5"])
trained, losses = fit(cfg)
scores = evaluate_forecaster(cfg, trained)
print(f"{STEPS} steps, train loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
print(f"test MSE (z units, {scores['test_windows']} windows x 4 steps x 12 variates): "
      f"S-Mamba {scores['mse']:.3f}, last value {scores['baseline_mse']:.3f}")"""),
    nbf.v4.new_code_cell("""data = forecast_data(cfg)
col = data.columns.index("infl")
i = len(data.test_x) - 1  # the last test window
pred = np.asarray(s_mamba.apply(trained, data.test_x[i:i + 1], cfg.model))[0]
L, H = cfg.model.lookback, cfg.model.horizon
t_in, t_out = np.arange(-L, 0), np.arange(H)
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(t_in, data.test_x[i, :, col], "k-", label="lookback")
ax.plot(t_out, data.test_y[i, :, col], "k--o", label="actual")
ax.plot(t_out, pred[:, col], "C1-o", label="S-Mamba")
ax.plot(t_out, np.repeat(data.test_x[i, -1, col], H), "C2:", label="last value")
ax.set_xlabel("quarter (0 = first forecast)"); ax.set_ylabel("inflation (z units)"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()"""),
]


def write(path: Path = NOTEBOOK) -> None:
    """Write the notebook (without outputs; execute it to store them)."""
    nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
    nbf.write(nb, str(path))


if __name__ == "__main__":
    write()
