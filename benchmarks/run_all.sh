#!/usr/bin/env bash
# jaxmoe vs the PyTorch/transformers peer on bench_moe_1b, one after the other on the same GPU,
# then one table. Usage: bash benchmarks/run_all.sh [results.jsonl] [extra train_step.py args...]
# (set JAXMOE_SKIP_PEER=1 to reuse peer rows already in the JSONL file)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RES=${1:-/tmp/jaxmoe_bench.jsonl}
shift || true
if ! timeout ${TRAIN_TIMEOUT:-300} $PY benchmarks/train_step.py --config configs/bench_moe_1b.yaml --jsonl "$RES" "$@"; then
  echo "train_step.py failed; fallback: capacity dispatch (einsum experts, capacity factor 1.25)"
  timeout ${TRAIN_TIMEOUT:-300} $PY benchmarks/train_step.py --config configs/bench_moe_1b.yaml --jsonl "$RES" \
    --label "jaxmoe-capacity" --set model.moe.dispatch=capacity || echo "fallback failed"
fi
if [ -z "${JAXMOE_SKIP_PEER:-}" ]; then
  timeout ${PEER_TIMEOUT:-200} $PY benchmarks/peer_hf.py --jsonl "$RES" || echo "peer_hf.py failed (exit $?)"
fi
$PY - "$RES" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
refused = [r for r in rows if r.get("kind") == "train_step" and r.get("learned") is False]
for r in refused:
    print("run_all: a jaxmoe row was NOT REPORTED (the run did not learn):", r.get("label") or r.get("impl"), r.get("reason", ""))
ours = [r for r in rows if r.get("kind") == "train_step" and r.get("mode") == "full" and r.get("learned") is not False
        and r.get("tokens_per_s")]
peer = [r for r in rows if r.get("kind") == "peer"]
if not ours or not peer:
    print("run_all: missing rows (jaxmoe: %d, peer: %d)" % (len(ours), len(peer))); sys.exit(0)
p = peer[-1]
out = []
for r in [p] + ours:
    out.append([r["impl"] + (" " + r.get("overrides", "") if r.get("overrides") else ""), f'{r["tokens_per_s"]:,.0f}', f'{r["step_ms"]:.1f}',
                f'{100 * r["mfu"]:.1f}%', f'{100 * r["mfu_vs_matmul"]:.1f}%', f'{r["peak_gb"]:.1f}',
                f'{r["tokens_per_s"] / p["tokens_per_s"]:.2f}x'])
head = ["implementation", "tokens/s", "step ms", "MFU (989T)", "MFU (800T)", "peak GiB", "vs peer"]
w = [max(len(h), *(len(o[i]) for o in out)) for i, h in enumerate(head)]
line = lambda v: "| " + " | ".join(x.rjust(n) for x, n in zip(v, w)) + " |"
print("\nbench_moe_1b (batch 8 x 2048, bf16, AdamW), same GPU, one run:")
print(line(head)); print("|" + "|".join("-" * (n + 2) for n in w) + "|")
for o in out: print(line(o))
print(f'peer: {p["impl"]}, experts={p.get("experts")}, attention={p.get("attention")}, torch {p.get("torch")}, transformers {p.get("transformers")}')
print(f'jaxmoe: gmm={ours[-1].get("gmm")}, attention={ours[-1].get("attention")}, jax {ours[-1].get("jax")}, {ours[-1].get("device")}')
PYEOF
