"""Does the bf16 cross-device gradient sum cost accuracy? The discriminator's weight gradients
under `model.dtype=bfloat16`, on 1 and on N batch-sharded (fake CPU) devices, against float32.

    python benchmarks/bf16_allreduce.py [--devices=8] [--batch=32] [--size=64,128] [--ndf=64]

Under bf16 XLA sums the per-device partial weight gradients in bf16 (the dtype of the
transposed convolution's output) and converts to float32 after the all-reduce, which halves
the gradient traffic (BENCHMARKS.md, "The planner table"). This script measures what that sum
adds to bf16's own error: for each gradient leaf, ||g - g_fp32|| / ||g_fp32|| for bf16 on one
device and bf16 sharded over N devices, and the dtypes of the all-reduces XLA compiled. The
XLA:CPU machinery is off (`runtime.cpu_kernels=off`), so the program is the one a GPU or TPU
would partition; the devices are `--xla_force_host_platform_device_count` fakes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--batch", type=int, default=32, help="global batch (a multiple of --devices)")
    p.add_argument("--size", default="64,128", help="image height,width")
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--label_nc", type=int, default=35)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    if a.devices < 2 or a.batch % a.devices:
        p.error(f"--batch={a.batch} must be a multiple of --devices={a.devices} (>= 2)")
    a.size = tuple(int(v) for v in a.size.split(","))
    if len(a.size) != 2 or min(a.size) < 16:
        p.error(f"--size: height,width of at least 16 each, got {a.size}")
    return a


def ring_mean(shards, dtype):
    """The mean over the leading (device) axis of every leaf, summed in a ring's order with
    every partial sum rounded to `dtype`, as an all-reduce in that dtype would; float32 out."""
    import jax
    import jax.numpy as jnp

    def one(g):
        acc = g[0].astype(dtype)
        for k in range(1, g.shape[0]):
            acc = (acc + g[k].astype(dtype)).astype(dtype)
        return acc.astype(jnp.float32) / g.shape[0]

    return jax.tree_util.tree_map(one, shards)


def main(argv=None) -> dict:
    a = parse_args(argv)
    if "jax" not in sys.modules:  # run as a script: fake the devices before JAX starts
        flag = f"--xla_force_host_platform_device_count={a.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ecgan_jax.models.discriminator import MultiscaleDiscriminator

    if len(jax.devices()) < a.devices:
        sys.exit(f"--devices={a.devices}: JAX has {len(jax.devices())} devices (started before "
                 "this script could set XLA_FLAGS)")  # fmt: skip
    h, w = a.size
    rng = np.random.default_rng(a.seed)
    labels = rng.integers(0, a.label_nc, size=(a.batch, h, w))
    seg = jnp.asarray(np.eye(a.label_nc, dtype=np.float32)[labels])
    image = jnp.asarray(rng.uniform(-1, 1, size=(a.batch, h, w, 3)).astype(np.float32))

    def model(dtype):
        return MultiscaleDiscriminator(input_nc=a.label_nc + 3, ndf=a.ndf, dtype=dtype)

    params = model(jnp.float32).init(jax.random.PRNGKey(a.seed), seg[:1], image[:1])

    def grads_fn(dtype):
        d = model(dtype)

        def loss(p, seg, image):  # the hinge loss on "real" images, in float32
            outs = d.apply(p, seg, image, train=False)
            return sum(jnp.mean(jax.nn.relu(1.0 - o[-1].astype(jnp.float32))) for o in outs)

        return jax.grad(loss)

    reference = jax.jit(grads_fn(jnp.float32))(params, seg, image)
    single = jax.jit(grads_fn(jnp.bfloat16))(params, seg, image)
    # Each device's partial gradient: the bf16 program on its shard of the batch (the global
    # loss is the mean over shards, so the global gradient is the shards' mean).
    n = a.devices
    shards = jax.jit(jax.vmap(grads_fn(jnp.bfloat16), in_axes=(None, 0, 0)))(
        params, seg.reshape(n, -1, *seg.shape[1:]), image.reshape(n, -1, *image.shape[1:])
    )

    sharded = {dt: jax.jit(functools.partial(ring_mean, dtype=dt))(shards)
               for dt in ("float32", "bfloat16")}  # fmt: skip

    def rel(g, ref):
        g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
        return float(np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-30))

    names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in
             jax.tree_util.tree_flatten_with_path(reference)[0]]  # fmt: skip
    leaves = [jax.tree_util.tree_leaves(t) for t in
              (reference, single, sharded["float32"], sharded["bfloat16"])]  # fmt: skip
    cols = ("one_program", "shards_sum_float32", "shards_sum_bfloat16")
    rows = []
    for name, r, *others in zip(names, *leaves, strict=True):
        if r.ndim == 4:  # the convolution kernels
            rows.append({"leaf": name, **{c: rel(g, r) for c, g in zip(cols, others, strict=True)}})
    errors = {c: np.array([r[c] for r in rows]) for c in cols}
    out = {
        "devices": n, "batch": a.batch, "size": a.size, "ndf": a.ndf, "kernels": rows,
        "median_rel_error": {c: float(np.median(e)) for c, e in errors.items()},
        "max_rel_error": {c: float(e.max()) for c, e in errors.items()},
    }  # fmt: skip
    print(f"relative L2 error of each kernel's bf16 gradient against float32; batch {a.batch}, "
          f"{h}x{w}, ndf {a.ndf}, {n} shards")  # fmt: skip
    print(f"{'kernel':40s} {'1 program':>10s} {'shards, f32 sum':>16s} {'shards, bf16 sum':>17s}")
    for r in rows:
        vals = " ".join(f"{r[c]:{w}.2e}" for c, w in zip(cols, (10, 16, 17), strict=True))
        print(f"{r['leaf'][-40:]:40s} {vals}")
    print("median: " + ", ".join(f"{c} {np.median(e):.2e}" for c, e in errors.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
