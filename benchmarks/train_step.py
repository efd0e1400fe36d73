"""Training-step throughput of the real jaxmoe train step on the config's own text.

    PYTHONPATH=. python benchmarks/train_step.py --config configs/bench_moe_1b.yaml [--set k=v ...]
        [--modes full,grad,fwd] [--steps 10] [--data text|repeat] [--jsonl out.jsonl]

Builds the model, AdamW (jaxmoe.train.optimizer.make_optimizer) and the jitted, donated
train step (jaxmoe.train.step.make_train_step with the family's loss_fn), and times the
step itself (no data loader, no host sync per step). The batches are distinct sequences of
the config's text corpus (``--data text``, default; built without grain and put on the
device before timing) or one such batch repeated (``--data repeat``).

Learning guard: the loss and grad norm of every timed step stay on the device until the
timing ends; then the first and last are printed beside the throughput. A ``full`` row
whose loss did not fall from the first to the last timed step, or any row with a
non-finite loss or grad norm, is NOT REPORTED (no throughput; ``"learned": false`` in the
JSONL) and the script exits 1. A config whose warmup would keep the learning rate near
zero for all benchmark steps gets a short warmup (printed; it does not change the cost).

Reports tokens/s, step time, MFU (6 x active params excluding the input embedding x tokens
+ 6 x layers x seq x embed x tokens, against the 989 TFLOP/s H200 peak and the ~800 TFLOP/s
measured matmul rate) and peak device memory. ``grad`` times loss+gradients only and ``fwd`` the loss only (for a
breakdown of the step).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (H200_MATMUL, H200_PEAK, as_float, device_name, header, learning_guard,  # noqa: E402
                     lm_flops_per_token, peak_memory_gb, short_warmup, stopwatch, table, text_batches,
                     time_steps, write_jsonl)

from jaxmoe.config import load_config  # noqa: E402
from jaxmoe.models import lm  # noqa: E402
from jaxmoe.moe.gmm import resolve_backend  # noqa: E402
from jaxmoe.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from jaxmoe.train.state import TrainState  # noqa: E402
from jaxmoe.train.step import make_train_step  # noqa: E402


def attention_kind(hlo: str) -> str:
    return "cudnn" if ("cudnn$fmha" in hlo or "__cudnn$fmha" in hlo or "cudnn_fmha" in hlo) else "xla"


CATEGORIES = [("attention (cuDNN)", ("fmha", "cudnn", "flash")), ("grouped gemm (Pallas)", ("mosaic", "ragged", "pallas")),
              ("dense gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "dot")),
              ("sort", ("sort",)), ("gather/scatter", ("gather", "scatter", "dynamic")),
              ("reduce", ("reduce", "reduction")), ("copy/transpose", ("copy", "transpose", "concatenate")),
              ("elementwise fusion", ("fusion",))]


def profile_summary(trace_dir: str, steps: int, top: int = 30) -> str:
    """Sum GPU kernel time by kernel name over the captured steps (jax.profiler trace)."""
    import glob

    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        return "no trace written"
    pd = ProfileData.from_file(files[-1])
    per_line: dict[str, dict[str, float]] = {}
    for plane in pd.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            d = per_line.setdefault(line.name, {})
            for ev in line.events:
                d[ev.name] = d.get(ev.name, 0.0) + ev.duration_ns / 1e6 / steps
    header = "GPU trace lines: " + ", ".join(f"{k} ({sum(v.values()):.1f} ms)" for k, v in per_line.items())
    streams = [k for k in per_line if k.startswith("Stream")] or [k for k in per_line if "Ops" in k]
    by_name: dict[str, float] = {}
    for k in streams:
        for name, ms in per_line[k].items():
            by_name[name] = by_name.get(name, 0.0) + ms
    total = sum(by_name.values())
    cats: dict[str, float] = {}
    for name, ms in by_name.items():
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + ms
    lines = [header, f"GPU kernel time per step: {total:.2f} ms (lines: {', '.join(streams)})", "by category:"]
    lines += [f"  {c:24s} {ms:8.2f} ms {100 * ms / max(total, 1e-9):5.1f}%" for c, ms in sorted(cats.items(), key=lambda t: -t[1])]
    lines.append(f"top {top} kernels:")
    for name, ms in sorted(by_name.items(), key=lambda t: -t[1])[:top]:
        lines.append(f"  {ms:8.3f} ms {100 * ms / max(total, 1e-9):5.1f}%  {name[:110]}")
    return "\n".join(lines)


WARMUP = 3  # untimed steps before the timed ones


def run(cfg, modes, steps: int, label: str = "jaxmoe", profile: str | None = None, data: str = "text"):
    m = cfg.model
    b, s = cfg.train.batch_size, cfg.data.seq_len
    loss_fn = lambda p, batch, rng: lm.loss_fn(p, batch, m, rng)
    params = jax.jit(lambda k: lm.init(k, m))(jax.random.PRNGKey(cfg.train.seed))
    flops_tok, active = lm_flops_per_token(cfg, params)
    tx = make_optimizer(cfg.train)
    extra = 2 if profile else 0
    host = text_batches(cfg, WARMUP + steps + extra, repeat=data == "repeat", seed=cfg.train.seed)
    batches = [jax.device_put(x) for x in host]  # on the device before any timing
    jax.block_until_ready(batches)
    rows = []
    for mode in modes:
        if mode == "full":
            state = jax.jit(lambda p: TrainState.create(p, tx, cfg.train.seed))(params)
            fn = jax.jit(make_train_step(loss_fn, tx, learning_rate_schedule(cfg.train)), donate_argnums=(0,))
            carry = state
            nxt = lambda out: out[0]
            watch = lambda out: (out[1]["loss"], out[1]["grad_norm"])
        elif mode == "grad":
            def grad_fn(p, batch):
                loss, grads = jax.value_and_grad(lambda q: loss_fn(q, batch, None)[0])(p)
                return loss, grads, optax.tree.norm(grads)

            fn = jax.jit(grad_fn)
            carry = params
            nxt = lambda out: carry
            watch = lambda out: (out[0], out[2])
        else:
            fn = jax.jit(lambda p, batch: loss_fn(p, batch, None)[0])
            carry = params
            nxt = lambda out: carry
            watch = lambda out: (out, None)
        clock = stopwatch()
        lowered = fn.lower(carry, batches[0])
        compiled = lowered.compile()
        hlo = compiled.as_text()
        compile_s = clock()
        call = lambda c, batch: compiled(c, batch)
        carry, sec, watched, out = time_steps(call, carry, batches, warmup=WARMUP, steps=steps, advance=nxt,
                                              watch=watch)
        losses = [as_float(w[0]) for w in watched]
        norms = [as_float(w[1]) for w in watched] if watched[0][1] is not None else []
        if profile and mode == modes[0]:
            try:
                jax.profiler.start_trace(profile)
                for i in range(2):
                    out = call(carry, batches[WARMUP + steps + i])
                    carry = nxt(out)
                jax.block_until_ready(out)
                jax.profiler.stop_trace()
                print(profile_summary(profile, 2), flush=True)
            except Exception as ex:  # the profile is optional
                print(f"profile failed: {type(ex).__name__}: {ex}", flush=True)
        # only the full step updates params: grad/fwd are checked for finite values only
        ok, message = learning_guard(losses, norms, expect_fall=mode == "full")
        tokens = b * s
        row = dict(impl=label, mode=mode, step_ms=sec * 1e3, tokens_per_s=tokens / sec,
                   mfu=flops_tok * tokens / sec / H200_PEAK, mfu_vs_matmul=flops_tok * tokens / sec / H200_MATMUL,
                   peak_gb=peak_memory_gb(), loss_first=losses[0], loss_last=losses[-1],
                   gnorm_first=norms[0] if norms else None, gnorm_last=norms[-1] if norms else None,
                   compile_s=compile_s, gmm=resolve_backend(m.moe.gmm_backend), attention=attention_kind(hlo),
                   remat=m.remat, data=data, learned=ok if mode == "full" else (None if ok else False),
                   check=message)
        if not ok:
            for k in ("step_ms", "tokens_per_s", "mfu", "mfu_vs_matmul"):
                row[k] = None
        print(table([row], COLS), flush=True)
        print(f"{mode}: {message}" + ("" if mode == "full" else " (no update in this mode: finite values checked only)"),
              flush=True)
        rows.append(row)
        del fn, compiled, lowered
    return rows, flops_tok, active


COLS = ["impl", "mode", "step_ms", "tokens_per_s", "mfu", "mfu_vs_matmul", "peak_gb", "loss_first", "loss_last",
        "gnorm_first", "gnorm_last", "compile_s", "gmm", "attention", "remat", "learned"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/bench_moe_1b.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--modes", default="full")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", choices=["text", "repeat"], default="text",
                    help="text: distinct batches of the config's corpus; repeat: one batch every step")
    ap.add_argument("--label", default="jaxmoe")
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--profile", default=None, help="trace directory: print GPU kernel time by kernel")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the loss of the first and last timed step are compared).")
    cfg = load_config(args.config, args.set)
    cfg, note = short_warmup(cfg, WARMUP, args.steps)
    print(header(), flush=True)
    what = ("one batch of the config's text repeated every step" if args.data == "repeat" else
            f"{WARMUP + args.steps} distinct batches of the config's text ({cfg.data.path or 'built-in corpus'})")
    print(f"batches: {what}" + (f"; {note}" if note else ""), flush=True)
    rows, flops_tok, active = run(cfg, args.modes.split(","), args.steps, args.label, args.profile, args.data)
    print(f"\n{args.config} {' '.join(args.set)}: batch {cfg.train.batch_size} x {cfg.data.seq_len}, "
          f"active params excl. input embedding {active / 1e9:.4f}B, {flops_tok / 1e9:.3f} GFLOP/token, "
          f"{args.steps} timed steps on {'a repeated batch' if args.data == 'repeat' else 'varying text batches'}")
    print(table(rows, COLS))
    for r in rows:
        if r["learned"] is False:
            print(f"{r['impl']} {r['mode']}: {r['check']}")
    write_jsonl(args.jsonl, [dict(r, kind="train_step", config=args.config, overrides=" ".join(args.set),
                                  device=device_name(), jax=jax.__version__) for r in rows])
    return 1 if any(r["learned"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
