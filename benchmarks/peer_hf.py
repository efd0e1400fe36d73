"""The peer: Hugging Face transformers ``Qwen2MoeForCausalLM`` on the bench_moe_1b configuration.

    python benchmarks/peer_hf.py [--experts grouped_mm] [--steps 10] [--jsonl out.jsonl]

Built from a config (no download): vocab 32000, hidden 1024, 12 layers, 16 heads (16 KV),
64 routed experts top-8 of width 512, one shared expert of width 1024 with its sigmoid gate,
untied head; bf16 weights, sdpa attention, the chosen experts implementation
(``grouped_mm`` = torch grouped GEMM), AdamW (fused), grad-norm clip 1.0, the router
aux loss (coef 0.001) -- the same batch (8 x 2048 random tokens). Timed with CUDA events
after warmup. Needs no JAX.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

H200_PEAK = 989e12
H200_MATMUL = 800e12


def build(experts: str, layers: int = 12):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512,
        shared_expert_intermediate_size=1024, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
        num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
        tie_word_embeddings=False, decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=True,
        router_aux_loss_coef=0.001, use_sliding_window=False, rope_theta=10000.0,
    )
    try:
        model = Qwen2MoeForCausalLM._from_config(cfg, attn_implementation="sdpa", experts_implementation=experts)
        how = "_from_config(experts_implementation=...)"
    except (TypeError, ValueError) as e:
        print(f"_from_config(experts_implementation=) failed: {e}", file=sys.stderr)
        model = Qwen2MoeForCausalLM._from_config(cfg, attn_implementation="sdpa")
        how = "set_experts_implementation"
    got = getattr(model.config, "_experts_implementation", None)
    if got != experts and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(experts)
        how = "set_experts_implementation"
        got = getattr(model.config, "_experts_implementation", None)
    attn = getattr(model.config, "_attn_implementation", None)
    return model.cuda().to(torch.bfloat16), f"{got} (via {how})", attn


def flops_per_token(model, seq: int, layers: int = 12, embed: int = 1024, e: int = 64, k: int = 8) -> tuple[float, float]:
    active = 0.0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        n = p.numel()
        if ".experts." in name or name.endswith(".experts.gate_up_proj") or name.endswith(".experts.down_proj"):
            n = n * k / e
        active += n
    return 6 * active + 6 * layers * seq * embed, active


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", default="grouped_mm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU (a 1.36B CPU init is slow)
        model, experts, attn = build(args.experts)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    tokens = torch.randint(0, 32000, (2, args.batch, args.seq + 1), device="cuda")
    flops_tok, active = flops_per_token(model, args.seq)

    def step(i):
        t = tokens[i % 2]
        out = model(input_ids=t[:, :-1], labels=t[:, :-1].contiguous())  # HF shifts labels internally
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    for i in range(args.warmup):
        loss = step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(args.steps):
        loss = step(i)
    end.record()
    torch.cuda.synchronize()
    sec = start.elapsed_time(end) / 1e3 / args.steps
    tokens_step = args.batch * args.seq
    row = dict(impl=f"transformers ({args.experts})", step_ms=sec * 1e3, tokens_per_s=tokens_step / sec,
               mfu=flops_tok * tokens_step / sec / H200_PEAK, mfu_vs_matmul=flops_tok * tokens_step / sec / H200_MATMUL,
               peak_gb=torch.cuda.max_memory_allocated() / 2 ** 30, loss=float(loss.detach()), experts=experts, attention=attn,
               active_params=active, torch=torch.__version__)
    import transformers

    row["transformers"] = transformers.__version__
    print(json.dumps(row))
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(dict(row, kind="peer")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
