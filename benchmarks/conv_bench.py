"""Forward and forward+backward of one convolution, XLA's weight gradient against the blocked one.

    python benchmarks/conv_bench.py            # the 256x512 layers of BENCHMARKS.md

Each row: NHWC input (batch, H, W, Cin), HWIO kernel, stride, padding; median of 3 after a
warm-up; the gradient is of sum(conv(x, w)) with respect to both x and w.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.xla_cpu.conv import conv2d

CASES = [  # batch, H, W, Cin, Cout, k, stride, pad
    (1, 256, 512, 128, 64, 3, 1, 1),
    (1, 256, 512, 64, 64, 3, 1, 1),
    (1, 256, 512, 36, 128, 3, 1, 1),
    (4, 33, 65, 256, 512, 4, 1, 2),
]


def bench(fn, *args, repeats=3):
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print("| input | kernel | forward ms | fwd+grads XLA ms | fwd+grads blocked ms |")
    print("|---|---|---|---|---|")
    for b, h, w, ci, co, k, s, pad in CASES:
        x = jax.random.normal(jax.random.key(0), (b, h, w, ci))
        kern = jax.random.normal(jax.random.key(1), (k, k, ci, co)) * 0.01
        row = [
            bench(
                lambda x, kern, s=s, pad=pad: conv2d(x, kern, stride=s, padding=pad, impl="xla"),
                x,
                kern,
                repeats=a.repeats,
            )
        ]
        for impl in ("xla", "blocked"):

            def loss(x, kern, impl=impl, s=s, pad=pad):
                return jnp.sum(conv2d(x, kern, stride=s, padding=pad, impl=impl))

            row.append(bench(jax.grad(loss, argnums=(0, 1)), x, kern, repeats=a.repeats))
        print(
            f"| {b}×{h}×{w}×{ci} | {k}×{k}/{s}, {ci}→{co} | "
            + " | ".join(f"{t * 1e3:.0f}" for t in row)
            + " |"
        )


if __name__ == "__main__":
    main()
