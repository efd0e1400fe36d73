"""Writes notebooks/01_quickstart.ipynb (kept as a script so the notebook stays reviewable).

Run ``python tools/make_notebook_01.py`` (from any directory), then execute the notebook to
store its outputs. Every notebook generator lives in tools/ as ``make_notebook_NN.py``;
tests/test_notebooks.py checks that each stored notebook holds its generator's cells.
"""

from pathlib import Path

import nbformat as nbf

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.ipynb"

cells = [
    nbf.v4.new_markdown_cell("""# jaxmoe quickstart

Build a tiny DeepSeekMoE-style language model, train it for a few steps on the Python
documentation text that ships with Python, plot the loss and the per-layer expert load,
and generate text from the checkpoint. Everything runs on CPU in a minute or two."""),
    nbf.v4.new_code_cell("""import os, tempfile
import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
import jaxmoe
from jaxmoe.models import lm

STEPS = int(os.environ.get("JAXMOE_NB_STEPS", "300"))
run_dir = tempfile.mkdtemp(prefix="jaxmoe_quickstart_")
cfg = jaxmoe.load_config("../configs/lm_tiny.yaml" if os.path.exists("../configs/lm_tiny.yaml") else "configs/lm_tiny.yaml", [
    "model.embed_dim=64", "model.num_layers=3", "model.moe.expert_ffn_dim=64",
    "data.seq_len=64", "train.batch_size=8", f"train.steps={STEPS}", "train.log_every=2",
    "train.eval_every=0", "train.progress=false", f"train.output_dir={run_dir}"])
print(cfg.model)"""),
    nbf.v4.new_markdown_cell("""## The model is a pure function of a parameter pytree
`lm.init` returns nested dicts of arrays; identical layers are stacked on a leading axis and
scanned; `lm.param_axes` gives the logical axes that drive sharding."""),
    nbf.v4.new_code_cell("""params = lm.init(jax.random.PRNGKey(0), cfg.model)
print(jax.tree.map(lambda a: a.shape, params["groups"][1][0]["ffn"]))
print(lm.param_axes(cfg.model)["groups"][1][0]["ffn"]["experts"])
tokens = jnp.zeros((2, 16), jnp.int32)
logits, aux = lm.apply(params, tokens, cfg.model)
print(logits.shape, aux["load"].shape)"""),
    nbf.v4.new_markdown_cell("## Train (progress, JSONL metrics and orbax checkpoints go to the run directory)"),
    nbf.v4.new_code_cell("""summary = jaxmoe.train.train(cfg)
print({k: summary[k] for k in ("steps", "first_loss", "final_loss", "checkpoint")})
assert summary["final_loss"] < summary["first_loss"]"""),
    nbf.v4.new_code_cell("""from jaxmoe.train.metrics import read_jsonl
recs = [r for r in read_jsonl(f"{run_dir}/metrics.jsonl") if "loss" in r]
load = np.array(summary["expert_load"])  # [moe layers, experts], fraction of assignments
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot([r["step"] for r in recs], [r["loss"] for r in recs]); axes[0].set_xlabel("step"); axes[0].set_ylabel("loss")
im = axes[1].imshow(load * load.shape[1], aspect="auto", cmap="viridis")
axes[1].set_xlabel("expert"); axes[1].set_ylabel("MoE layer"); axes[1].set_title("load x num_experts")
fig.colorbar(im, ax=axes[1]); plt.tight_layout(); plt.show()"""),
    nbf.v4.new_markdown_cell("""## Generate with the KV cache (prefill + `lax.scan` decode inside one jit)
A model this small and this briefly trained, decoded greedily, repeats its most likely words;
sampling (temperature 0.6 from the 20 most likely bytes) shows what it has learned."""),
    nbf.v4.new_code_cell("""from jaxmoe.checkpoint import load_params
from jaxmoe.data.tokenizers import load_tokenizer
from jaxmoe.decode.generate import generate_text
cfg2, trained = load_params(run_dir)
tok = load_tokenizer("byte")
print("greedy: ", repr(generate_text(trained, cfg2.model, tok, "The ", 48)))
print("sampled:", repr(generate_text(trained, cfg2.model, tok, "The ", 48, temperature=0.6, top_k=20, seed=0)))"""),
]


def write(path: Path = NOTEBOOK) -> None:
    """Write the notebook (without outputs; execute it to store them)."""
    nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
    nbf.write(nb, str(path))


if __name__ == "__main__":
    write()
