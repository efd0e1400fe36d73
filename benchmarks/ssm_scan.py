"""Throughput of the SSM views: lax.scan vs associative scan vs FFT convolution.

Prints one table row per (layer, mode, sequence length):

* ``recurrence``: the bare element-wise ``linear_recurrence`` on ``[batch, seq, channels]``;
* ``diagonal``: the S4D/S5 layer (``jaxmoe.ssm.diagonal``), modes scan / assoc / conv;
* ``lssl``: the LSSL layer (dense HiPPO state), modes recurrent / parallel / convolution;
* ``mamba``: the selective scan core, modes scan / assoc / assoc with chunks.

``elem/s`` counts ``batch * seq * channels`` output elements per second. ``GB/s`` is an
*effective* bandwidth: the bytes the layer must at least read and write (its inputs and
outputs, not its intermediates) divided by the time. Times are medians over ``--repeats``
runs after ``--warmup`` runs (the first includes compilation), with ``jax.block_until_ready``.

    python benchmarks/ssm_scan.py                       # small CPU sizes, < 1 minute
    python benchmarks/ssm_scan.py --gpu-sizes --jsonl out.jsonl
    python benchmarks/ssm_scan.py --lengths 512,2048 --channels 64 --layers diagonal,lssl --grad
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import time_call  # noqa: E402

from jaxmoe.nn.init import unbox  # noqa: E402
from jaxmoe.ssm.diagonal import diagonal_ssm, init_diagonal_ssm  # noqa: E402
from jaxmoe.ssm.lssl import init_lssl, lssl  # noqa: E402
from jaxmoe.ssm.mamba import selective_scan  # noqa: E402
from jaxmoe.ssm.scan import linear_recurrence  # noqa: E402

LAYERS = ("recurrence", "diagonal", "lssl", "mamba")
CPU_DEFAULTS = dict(batch=2, channels=16, state=16, lengths="256,1024,4096", max_matrix_gb=0.02)
GPU_DEFAULTS = dict(batch=8, channels=512, state=64, lengths="1024,4096,16384", max_matrix_gb=16.0)


def _with_grad(fn):
    """Forward + backward: the gradient of ``sum(fn(*args))`` w.r.t. every argument."""
    return lambda *args: jax.grad(lambda a: jnp.sum(fn(*a).astype(jnp.float32)))(args)


def _cases(layer: str, batch: int, length: int, channels: int, state: int, dtype, key, max_matrix_bytes: float,
           chunk_size: int):
    """Yield ``(mode, fn, args, bytes_moved, skip_reason)`` for one layer and length."""
    itemsize = jnp.dtype(dtype).itemsize
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (batch, length, channels), dtype)
    io_bytes = 2 * x.size * itemsize
    if layer == "recurrence":
        a = jax.random.uniform(k2, x.shape, dtype, 0.5, 1.0)
        b = jax.random.normal(k3, x.shape, dtype)
        chunk = min(chunk_size, length)
        for mode, kw in [("scan", dict(mode="scan")), ("assoc", dict(mode="assoc")),
                         (f"assoc/chunk{chunk}", dict(mode="assoc", chunk_size=chunk))]:
            yield mode, functools.partial(linear_recurrence, axis=1, **kw), (a, b), 3 * x.size * itemsize, None
    elif layer == "diagonal":
        params = unbox(init_diagonal_ssm(k2, channels, d_state=state))
        for mode in ("scan", "assoc", "conv"):
            yield mode, functools.partial(diagonal_ssm, mode=mode), (params, x), io_bytes, None
    elif layer == "lssl":
        params = unbox(init_lssl(k2, channels, state_size=state))
        matrix_bytes = length * channels * state * state * 4  # the [seq, H, N, N] scan elements
        for mode in ("recurrent", "parallel", "convolution"):
            skip = None
            if mode == "parallel" and matrix_bytes > max_matrix_bytes:
                skip = f"skipped: [seq, H, N, N] = {matrix_bytes / 1e9:.1f} GB > --max-matrix-gb"
            yield mode, functools.partial(lssl, mode=mode), (params, x), io_bytes, skip
    elif layer == "mamba":
        n = max(1, state // 4)  # Mamba's state per channel is small (16 by default)
        dt = jax.nn.softplus(jax.random.normal(k2, x.shape, dtype) - 4.0)
        bc = jax.random.normal(k3, (2, batch, length, n), dtype)
        a = -jnp.tile(jnp.arange(1, n + 1, dtype=jnp.float32), (channels, 1))  # A_log = log(1..N)
        d = jnp.ones((channels,), jnp.float32)
        args = (x, dt, a, bc[0], bc[1], d)
        moved = (3 * x.size + 2 * bc[0].size) * itemsize
        chunk = min(chunk_size, length)
        for mode, kw in [("scan", dict(mode="scan")), ("assoc", dict(mode="assoc")),
                         (f"assoc/chunk{chunk}", dict(mode="assoc", chunk_size=chunk))]:
            fn = functools.partial(selective_scan, **kw)
            yield mode, (lambda *a, fn=fn: fn(*a)[0]), args, moved, None
    else:
        raise ValueError(f"unknown layer {layer!r}; expected one of {LAYERS}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-sizes", action="store_true", help="bigger sweep for an accelerator")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--channels", type=int, help="feature channels H (embed)")
    parser.add_argument("--state", type=int, help="state size: LSSL N, diagonal modes P, Mamba N = state/4")
    parser.add_argument("--lengths", type=str, help="comma-separated sequence lengths")
    parser.add_argument("--layers", type=str, default=",".join(LAYERS), help=f"subset of {','.join(LAYERS)}")
    parser.add_argument("--chunk-size", type=int, default=256, help="chunk of the chunked associative scans")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--grad", action="store_true", help="time forward + backward instead of forward")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs, the first compiles (>= 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-matrix-gb", type=float, help="skip LSSL parallel mode above this [seq,H,N,N] size")
    parser.add_argument("--jsonl", type=str, help="also write one JSON object per row to this file")
    args = parser.parse_args(argv)

    defaults = GPU_DEFAULTS if args.gpu_sizes else CPU_DEFAULTS
    batch = args.batch or defaults["batch"]
    channels = args.channels or defaults["channels"]
    state = args.state or defaults["state"]
    lengths = [int(v) for v in (args.lengths or defaults["lengths"]).split(",")]
    max_matrix_bytes = 1e9 * (args.max_matrix_gb if args.max_matrix_gb is not None else defaults["max_matrix_gb"])
    layers = [v.strip() for v in args.layers.split(",") if v.strip()]
    for layer in layers:
        if layer not in LAYERS:
            parser.error(f"unknown layer {layer!r}; choose from {', '.join(LAYERS)}")
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    print(f"# jax {jax.__version__} on {device.platform} ({device.device_kind}), {len(jax.devices())} device(s); "
          f"batch={batch} channels={channels} state={state} dtype={dtype.name} "
          f"{'forward+backward' if args.grad else 'forward'}; median of {args.repeats} after {args.warmup} warmup")
    header = f"{'layer':<11} {'mode':<16} {'seq':>7} {'time ms':>10} {'Melem/s':>10} {'GB/s':>9}"
    print(header)
    print("-" * len(header))
    sink = open(args.jsonl, "w") if args.jsonl else None
    key = jax.random.PRNGKey(0)
    for layer in layers:
        for length in lengths:
            for mode, fn, fn_args, moved, skip in _cases(layer, batch, length, channels, state, dtype, key,
                                                             max_matrix_bytes, args.chunk_size):
                row = dict(layer=layer, mode=mode, batch=batch, seq=length, channels=channels, state=state,
                           dtype=dtype.name, grad=args.grad, platform=device.platform, jax=jax.__version__)
                if skip:
                    print(f"{layer:<11} {mode:<16} {length:>7} {skip}")
                    row.update(skipped=skip)
                else:
                    run = jax.jit(_with_grad(fn) if args.grad else fn)
                    seconds, first = time_call(run, *fn_args, warmup=max(args.warmup, 1), repeats=args.repeats)
                    elems = batch * length * channels
                    row.update(seconds=seconds, first_call_s=first, elements_per_s=elems / seconds, gb_per_s=moved / seconds / 1e9,
                               bytes_moved=moved)
                    print(f"{layer:<11} {mode:<16} {length:>7} {seconds * 1e3:>10.3f} "
                          f"{elems / seconds / 1e6:>10.2f} {moved / seconds / 1e9:>9.3f}")
                sys.stdout.flush()
                if sink:
                    sink.write(json.dumps(row) + "\n")
    if sink:
        sink.close()
        print(f"# wrote {args.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
