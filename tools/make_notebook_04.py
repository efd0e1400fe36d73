"""Writes notebooks/04_experts.ipynb (kept as a script so the notebook stays reviewable).

Run ``python tools/make_notebook_04.py`` (from any directory), then execute the notebook to
store its outputs. Every notebook generator lives in tools/ as ``make_notebook_NN.py``;
tests/test_notebooks.py checks that each stored notebook holds its generator's cells.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_experts.ipynb"

cells = [
    new_markdown_cell("""# Experts: profile, steer, contrast

MoTE-style *functional expert imaging*: record how often each (layer, expert) is chosen on
two contrasting prompt sets (Python code and English prose), rank experts by the
difference, draw the heatmap, then **switch the most code-specific experts off** (or force
one on) and compare generations. The interventions are router inputs (`expert_mask`,
`force_mask`), not a different layer. At the end, SCMoE self-contrast decoding on the same
model. A tiny model trains for a few steps first; everything runs on CPU in well under a
minute."""),
    new_code_cell("""import os, tempfile
import jax, jax.numpy as jnp, numpy as np, optax, pandas as pd
from IPython.display import Image, display
from pydoc_data.topics import topics  # ~465 KB of English documentation text that ships with Python
import jaxmoe
from jaxmoe.data.tokenizers import ByteTokenizer
from jaxmoe.decode import steering
from jaxmoe.decode.contrastive import SCMoEConfig, contrastive_text
from jaxmoe.decode.generate import generate_text
from jaxmoe.models import lm

STEPS = int(os.environ.get("JAXMOE_NB_STEPS", "60"))
config = "../configs/lm_tiny.yaml" if os.path.exists("../configs/lm_tiny.yaml") else "configs/lm_tiny.yaml"
cfg = jaxmoe.load_config(config, ["model.embed_dim=64", "model.num_layers=3", "model.moe.expert_ffn_dim=64",
                                  "model.moe.shared_ffn_dim=64", "model.max_seq_len=128"]).model
tok = ByteTokenizer()
print("MoE layers:", lm.moe_layer_indices(cfg), " experts per layer:", cfg.moe.num_experts,
      " experts per token:", cfg.moe.experts_per_token)"""),
    new_markdown_cell("""## Train a few steps
The model is a pure function of its parameter pytree, so a training loop is a jitted
`value_and_grad(lm.loss_fn)` and an optax update (`jaxmoe train` adds checkpoints,
metrics, schedules and sharding around the same loss)."""),
    new_code_cell("""data = np.frombuffer("\\n".join(topics.values()).encode(), np.uint8).astype(np.int32)
params = lm.init(jax.random.key(0, impl="rbg"), cfg)  # rbg keys: the init compiles faster on CPU
tx = optax.adamw(3e-3)
opt_state = tx.init(params)

@jax.jit
def train_step(params, opt_state, tokens):
    (loss, _), grads = jax.value_and_grad(lm.loss_fn, has_aux=True)(params, {"tokens": tokens}, cfg)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

rng = np.random.default_rng(0)
for step in range(STEPS):
    starts = rng.integers(0, len(data) - 65, size=8)
    params, opt_state, loss = train_step(params, opt_state, jnp.asarray(np.stack([data[s:s + 65] for s in starts])))
    if step % 20 == 0 or step == STEPS - 1:
        print(f"step {step:3d}  loss {float(loss):.3f}")"""),
    new_markdown_cell("""## Profile two prompt sets
Frequency = the fraction of prompt tokens whose routed top-k set contains the expert."""),
    new_code_cell("""code = ["def add(a, b):", "    return a + b", "import os, sys", "for i in range(10):",
        "class Point:", "    def __init__(self, x):", "if x is None:", "print(len(items))"]
prose = ["The weather was mild.", "She walked to the market.", "A quiet evening at home.",
         "The book was long but good.", "They met in the park.", "It rained all night.",
         "He opened the window.", "Birds sang in the trees."]
profile = steering.profile_experts(params, cfg, code, prose, tok)
ranking = pd.DataFrame(profile["ranking"])
print(f"{profile['tokens_a']} code tokens, {profile['tokens_b']} prose tokens")
pd.concat([ranking.head(4).assign(most_specific_to="code"),
           ranking.tail(4)[::-1].assign(most_specific_to="prose")])"""),
    new_code_cell("""heatmap = os.path.join(tempfile.mkdtemp(), "experts.png")
steering.plot_profile(profile, heatmap, labels=("code", "prose"))
display(Image(heatmap))"""),
    new_markdown_cell("""## Switch the code experts off
`router_masks` turns `"layer:expert"` pairs into `[num_layers, num_experts]` masks (the same
strings `jaxmoe generate --disable-experts` takes). A disabled expert receives exactly zero
tokens; the next best experts fill in."""),
    new_code_cell("""off_code = steering.top_experts(profile, 3, toward="a")
off_prose = steering.top_experts(profile, 3, toward="b")
print("code experts:", off_code, "  prose experts:", off_prose)
mask_code, no_force = steering.router_masks(cfg, off_code, fill=True)  # fill: neutral masks, one compiled program
freq, _ = steering.expert_frequencies(params, cfg, [tok.encode(p) for p in code], expert_mask=mask_code)
for pair in off_code.split(","):
    layer, expert = map(int, pair.split(":"))
    assert freq[profile["layers"].index(layer), expert] == 0.0  # exactly zero tokens
print("frequency of the disabled experts on the code prompts: 0.0")

prompt = "def main(args):\\n    "
def sample(expert_mask, force_mask):  # the same random seed for every variant
    text = generate_text(params, cfg, tok, prompt, 40, temperature=0.8, seed=0, expert_mask=expert_mask,
                         force_mask=force_mask)
    return repr(text)

no_mask, _ = steering.router_masks(cfg, None, fill=True)
mask_prose, _ = steering.router_masks(cfg, off_prose, fill=True)
print("all experts         ", sample(no_mask, no_force))
print("code experts off    ", sample(mask_code, no_force))
print("prose experts off   ", sample(mask_prose, no_force))"""),
    new_markdown_cell("""## Force an expert on
A forced expert is in every token's set (here the most prose-specific one, on code)."""),
    new_code_cell("""force = steering.top_experts(profile, 1, toward="b")
_, force_mask = steering.router_masks(cfg, None, force, fill=True)
freq, _ = steering.expert_frequencies(params, cfg, [tok.encode(p) for p in code], force_mask=force_mask)
layer, expert = map(int, force.split(":"))
print(f"expert {force}: frequency on code {profile['freq_a'][profile['layers'].index(layer)][expert]:.2f} -> "
      f"{freq[profile['layers'].index(layer), expert]:.2f}")
print("forced              ", sample(no_mask, force_mask))"""),
    new_markdown_cell("""## SCMoE: contrast the strong routing with a weak one
Strong = the normal top-k routing; weak = only the expert ranked `weak_rank`. The score
`(1 + beta) z_s - beta z_w` (with the plausibility cutoff `log(alpha) + max z_s`) pushes
decoding towards what the full routing knows and the weak routing does not; with greedy
picking, `beta = 0` is plain greedy decoding (here we sample from the scores)."""),
    new_code_cell("""for beta in (0.0, 0.5, 1.0, 2.0):  # beta, alpha and temperatures are traced: one compiled program
    sc = SCMoEConfig(beta=beta, alpha=0.1, weak_rank=2, temperature=0.8)  # sampled from the scores, same seed
    print(f"beta={beta:<4}", repr(contrastive_text(params, cfg, tok, prompt, 40, sc=sc, seed=0)))"""),
    new_markdown_cell("""## The same from the command line
```bash
jaxmoe experts profile --checkpoint RUN --prompts-a code.txt --prompts-b prose.txt \\
    --plot heat.png --out ranking.json --labels code,prose
jaxmoe generate --checkpoint RUN --prompt "def main(args):" --disable-experts 1:3,2:0
jaxmoe generate --checkpoint RUN --prompt "def main(args):" --contrastive scmoe --beta 0.5 --alpha 0.1 --weak-rank 2
```"""),
]


def write(path: Path = NOTEBOOK) -> None:
    """Write the notebook (without outputs; execute it to store them)."""
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
    nbformat.write(nb, str(path))


if __name__ == "__main__":
    write()
