#!/usr/bin/env bash
# One device-machine session: runs the requested stages in order, logging to $OUT.
#   OUT=/tmp/out bash benchmarks/gpu_session.sh info check tune runall moe decode timemoe ssm
# Results: $OUT/session.log (everything), $OUT/results.jsonl, $OUT/gmm_table.json (tuned blocks).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jaxmoe_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG=$OUT/session.log
RES=$OUT/results.jsonl
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
run() { local t=$1; shift; timeout "$t" "$@" 2>&1 | grep -v "^WARNING: All log messages" | tee -a "$LOG"; echo "(exit ${PIPESTATUS[0]})" | tee -a "$LOG"; }
if [ -f "$OUT/gmm_table.json" ]; then export JAXMOE_GMM_TABLE=$OUT/gmm_table.json; fi
for stage in "$@"; do
  stamp "$stage"
  case $stage in
    info)
      run 60 nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
      run 120 $PY -c "
import inspect, jax
d = jax.devices()[0]
print(jax.__version__, d.device_kind, getattr(d, 'compute_capability', None), getattr(d, 'core_count', None))
from jaxmoe.moe import gmm as G
print('auto backend:', G.resolve_backend('auto'))
mods = G._mgpu_modules()
print('ragged_dot', inspect.signature(mods[0].ragged_dot)); print('transposed', inspect.signature(mods[1].transposed_ragged_dot))
" ;;
    check) run ${CHECK_T:-150} $PY benchmarks/moe_layer.py --check --no-bench --jsonl "$RES" ;;
    tune)
      run ${TUNE_T:-200} $PY benchmarks/moe_layer.py --tune --no-bench --table-out "$OUT/gmm_table.json" --jsonl "$RES"
      if [ -f "$OUT/gmm_table.json" ]; then export JAXMOE_GMM_TABLE=$OUT/gmm_table.json; cat "$OUT/gmm_table.json" | tee -a "$LOG"; fi ;;
    runall) TRAIN_TIMEOUT=${TRAIN_T:-300} run ${RUNALL_T:-480} bash benchmarks/run_all.sh "$RES" ${TRAIN_ARGS:---modes full} ;;
    train) run ${TRAIN_T:-300} $PY benchmarks/train_step.py --config configs/bench_moe_1b.yaml --jsonl "$RES" ${TRAIN_ARGS:-} ;;
    moe) run ${MOE_T:-200} $PY benchmarks/moe_layer.py --jsonl "$RES" ${MOE_ARGS:-} ;;
    decode) run ${DECODE_T:-150} $PY benchmarks/decode.py --jsonl "$RES" ${DECODE_ARGS:-} ;;
    timemoe) run ${TIMEMOE_T:-200} $PY benchmarks/time_moe.py --jsonl "$RES" ${TIMEMOE_ARGS:-} ;;
    ssm) if [ -f benchmarks/ssm_scan.py ]; then run ${SSM_T:-150} $PY benchmarks/ssm_scan.py --gpu-sizes; else echo "no benchmarks/ssm_scan.py" | tee -a "$LOG"; fi ;;
    *) echo "unknown stage $stage" | tee -a "$LOG" ;;
  esac
done
stamp done
