"""Writes notebooks/04_experts.ipynb (run: python notebooks/build_04_experts.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

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
import jax, jax.numpy as jnp, numpy as np, pandas as pd
from IPython.display import Image, display
import jaxmoe
from jaxmoe.data.tokenizers import ByteTokenizer
from jaxmoe.decode import steering
from jaxmoe.decode.contrastive import SCMoEConfig, contrastive_text
from jaxmoe.decode.generate import generate_text
from jaxmoe.train.checkpoint import load_params

STEPS = int(os.environ.get("JAXMOE_NB_STEPS", "40"))
run_dir = tempfile.mkdtemp(prefix="jaxmoe_experts_")
config = "../configs/lm_tiny.yaml" if os.path.exists("../configs/lm_tiny.yaml") else "configs/lm_tiny.yaml"
cfg = jaxmoe.load_config(config, [
    "model.embed_dim=64", "model.num_layers=3", "model.moe.expert_ffn_dim=64", "model.moe.shared_ffn_dim=64",
    "model.max_seq_len=128", "data.seq_len=64", "train.batch_size=8", f"train.steps={STEPS}",
    "train.log_every=5", "train.eval_every=0", "train.eval_batches=1", "train.progress=false",
    f"train.output_dir={run_dir}"])
summary = jaxmoe.train.train(cfg)
cfg, params = load_params(run_dir)
tok = ByteTokenizer()
print({k: summary[k] for k in ("steps", "first_loss", "final_loss")})
print("MoE layers:", steering.lm.moe_layer_indices(cfg.model), "experts per layer:", cfg.model.moe.num_experts)"""),
    new_markdown_cell("""## Profile two prompt sets
Frequency = the fraction of prompt tokens whose routed top-k set contains the expert."""),
    new_code_cell("""code = ["def add(a, b):", "    return a + b", "import os, sys", "for i in range(10):",
        "class Point:", "    def __init__(self, x):", "if x is None:", "print(len(items))"]
prose = ["The weather was mild.", "She walked to the market.", "A quiet evening at home.",
         "The book was long but good.", "They met in the park.", "It rained all night.",
         "He opened the window.", "Birds sang in the trees."]
profile = steering.profile_experts(params, cfg.model, code, prose, tok)
ranking = pd.DataFrame(profile["ranking"])
print(f"{profile['tokens_a']} code tokens, {profile['tokens_b']} prose tokens")
pd.concat([ranking.head(4).assign(most_specific_to="code"), ranking.tail(4)[::-1].assign(most_specific_to="prose")])"""),
    new_code_cell("""steering.plot_profile(profile, os.path.join(run_dir, "experts.png"), labels=("code", "prose"))
display(Image(os.path.join(run_dir, "experts.png")))"""),
    new_markdown_cell("""## Switch the code experts off
`router_masks` turns `"layer:expert"` pairs into `[num_layers, num_experts]` masks (the same
strings `jaxmoe generate --disable-experts` takes). A disabled expert receives exactly zero
tokens; the next best experts fill in."""),
    new_code_cell("""off_code = steering.top_experts(profile, 3, toward="a")
off_prose = steering.top_experts(profile, 3, toward="b")
print("code experts:", off_code, "  prose experts:", off_prose)
mask_code, _ = steering.router_masks(cfg.model, off_code)
freq, _ = steering.expert_frequencies(params, cfg.model, [tok.encode(p) for p in code], expert_mask=mask_code)
for pair in off_code.split(","):
    layer, expert = map(int, pair.split(":"))
    assert freq[profile["layers"].index(layer), expert] == 0.0  # exactly zero tokens
print("frequency of the disabled experts on the code prompts: 0.0")

prompt = "def main(args):\\n    "
show = lambda text: repr(text[:48])
print("normal              ", show(generate_text(params, cfg.model, tok, prompt, 48)))
print("code experts off    ", show(generate_text(params, cfg.model, tok, prompt, 48, expert_mask=mask_code)))
mask_prose, _ = steering.router_masks(cfg.model, off_prose)
print("prose experts off   ", show(generate_text(params, cfg.model, tok, prompt, 48, expert_mask=mask_prose)))"""),
    new_markdown_cell("""## Force an expert on
A forced expert is in every token's set (here the most prose-specific one, on code)."""),
    new_code_cell("""force = steering.top_experts(profile, 1, toward="b")
_, force_mask = steering.router_masks(cfg.model, None, force)
freq, _ = steering.expert_frequencies(params, cfg.model, [tok.encode(p) for p in code], force_mask=force_mask)
layer, expert = map(int, force.split(":"))
print(f"expert {force}: frequency on code {profile['freq_a'][profile['layers'].index(layer)][expert]:.2f} -> "
      f"{freq[profile['layers'].index(layer), expert]:.2f}")
print("forced              ", show(generate_text(params, cfg.model, tok, prompt, 48, force_mask=force_mask)))"""),
    new_markdown_cell("""## SCMoE: contrast the strong routing with a weak one
Strong = the normal top-k routing; weak = only the expert ranked `weak_rank`. The score
`(1 + beta) z_s - beta z_w` (with the plausibility cutoff `log(alpha) + max z_s`) pushes
decoding towards what the full routing knows and the weak routing does not; `beta = 0` is
greedy decoding."""),
    new_code_cell("""for beta in (0.0, 0.5, 1.0):
    sc = SCMoEConfig(beta=beta, alpha=0.1, weak_rank=2)
    print(f"beta={beta:<4}", show(contrastive_text(params, cfg.model, tok, prompt, 48, sc=sc)))"""),
    new_markdown_cell("""## The same from the command line
```bash
jaxmoe experts profile --checkpoint RUN --prompts-a code.txt --prompts-b prose.txt \\
    --plot heat.png --out ranking.json --labels code,prose
jaxmoe generate --checkpoint RUN --prompt "def main(args):" --disable-experts 1:3,2:0
jaxmoe generate --checkpoint RUN --prompt "def main(args):" --contrastive scmoe --beta 0.5 --alpha 0.1 --weak-rank 2
```"""),
]

nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
Path(__file__).with_name("04_experts.ipynb").write_text(nbformat.writes(nb))
