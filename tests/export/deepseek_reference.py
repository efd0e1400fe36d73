"""An independent DeepSeekMoE (``model_type: deepseek``) forward in numpy float64, written from
the published formulas and reading only config.json and the safetensors files by their
Hugging Face names (through the ``safetensors`` package, not jaxmoe's reader).

transformers has no class for this layout, so this is the parity reference of the
``deepseek`` family: llama-style attention (GQA, rotate-half RoPE, scale 1/sqrt(head_dim),
optional q/k/v/o biases), RMSNorm, dense SwiGLU layers and DeepSeekMoE layers (softmax
router, top-k, renormalised only when ``norm_topk_prob`` and k > 1, plus shared experts),
layer ``i`` MoE iff ``i >= first_k_dense_replace and i % moe_layer_freq == 0``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_dir(hf_dir) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    weights: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        weights.update({k: v.astype(np.float64) for k, v in load_file(str(f)).items()})
    return cfg, weights


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _swiglu(x, w, prefix):
    g = x @ w[prefix + "gate_proj.weight"].T
    u = x @ w[prefix + "up_proj.weight"].T
    return (_silu(g) * u) @ w[prefix + "down_proj.weight"].T


def _rotate(x, cos, sin):  # x [b, s, h, d]; rotate-half
    d = x.shape[-1]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos[None, :, None, :] + rot * sin[None, :, None, :]


def forward(hf_dir, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``tokens [batch, seq]`` -> ``(logits [batch, seq, vocab], [top-k expert ids [batch*seq, k]
    per MoE layer])``."""
    cfg, w = read_dir(hf_dir)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    hd = hidden // heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    b, s = tokens.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(s)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    causal = np.tril(np.ones((s, s), bool))
    x = w["model.embed_tokens.weight"][tokens]
    chosen = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)

        def proj(name, n):
            y = h @ w[p + f"self_attn.{name}.weight"].T
            if p + f"self_attn.{name}.bias" in w:
                y = y + w[p + f"self_attn.{name}.bias"]
            return y.reshape(b, s, n, hd)

        q = _rotate(proj("q_proj", heads), cos, sin)
        k = _rotate(proj("k_proj", kv_heads), cos, sin)
        v = proj("v_proj", kv_heads)
        rep = heads // kv_heads
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)  # head j uses kv head j // rep
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        att = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, heads * hd) @ w[p + "self_attn.o_proj.weight"].T
        if p + "self_attn.o_proj.bias" in w:
            att = att + w[p + "self_attn.o_proj.bias"]
        x = x + att
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps).reshape(b * s, hidden)
        is_moe = (cfg.get("n_routed_experts") is not None and i >= cfg.get("first_k_dense_replace", 0)
                  and i % cfg.get("moe_layer_freq", 1) == 0)
        if is_moe:
            logits = h @ w[p + "mlp.gate.weight"].T
            sc = np.exp(logits - logits.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            topk = cfg["num_experts_per_tok"]
            idx = np.argsort(-sc, axis=-1, kind="stable")[:, :topk]
            wt = np.take_along_axis(sc, idx, -1)
            if topk > 1 and cfg.get("norm_topk_prob", False):
                wt = wt / (wt.sum(-1, keepdims=True) + 1e-20)
            y = np.zeros_like(h)
            for t in range(b * s):
                for j in range(topk):
                    y[t] += wt[t, j] * _swiglu(h[t], w, p + f"mlp.experts.{idx[t, j]}.")
            if cfg.get("n_shared_experts"):
                y = y + _swiglu(h, w, p + "mlp.shared_experts.")
            chosen.append(idx)
        else:
            y = _swiglu(h, w, p + "mlp.")
        x = x + y.reshape(b, s, hidden)
    x = _rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T, chosen
