"""What each `runtime.remat` policy trades on a TPU chip, compiled on this host (libtpu).

    python benchmarks/remat_plan.py [--ngf=16] [--size=64,128] [--batch=2] [--topology=v4:2x2x1]

Compiles the gradient of the generator's training-mode loss (a sum over I′, I″ and I′_e) for
one chip of the topology under each policy (`training/remat.py`) and prints XLA's temporary
bytes and FLOPs per policy as a markdown table: the trade the planner shows for the whole step
(`python -m ecgan_jax.plan --config.runtime.remat=...`), at a size that compiles in minutes.
Needs libtpu (`pip install -e ".[tpu]"`); nothing runs on a TPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--size", default="64,128", help="H,W of the label map")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--topology", default="v4:2x2x1")
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split(","))

    import jax
    import jax.numpy as jnp
    import numpy as np

    from ecgan_jax.cli import plan as plan_lib
    from ecgan_jax.models.generator import Generator
    from ecgan_jax.training import remat

    device = plan_lib.tpu_devices(plan_lib.resolve_topology(args.topology))[0]
    rng = np.random.default_rng(0)
    seg = jax.nn.one_hot(jnp.asarray(rng.integers(0, 6, (args.batch, height, width))), 6)
    gen = Generator(label_nc=5, semantic_nc=6, ngf=args.ngf, spade_hidden=args.ngf * 2)
    variables = jax.eval_shape(lambda: gen.init(jax.random.key(0), seg, train=False))
    stats = {k: v for k, v in variables.items() if k != "params"}
    sharding = jax.sharding.SingleDeviceSharding(device)

    def on_chip(tree):
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
        )

    def loss(params, stats, seg):
        (first, final, edge), new = gen.apply(
            {"params": params, **stats}, seg, train=True, mutable=list(stats)
        )
        return jnp.sum(final) + jnp.sum(first * edge), new

    print(
        f"| policy | temp MiB | GFLOP | compile s |  (ngf {args.ngf}, {height}x{width}, "
        f"batch {args.batch}, one chip of {args.topology})"
    )
    print("|---|---|---|---|")
    for policy in remat.POLICIES:
        grad = jax.jit(jax.grad(remat.wrap(policy, loss), has_aux=True))
        t0 = time.perf_counter()
        compiled = grad.lower(
            on_chip(variables["params"]),
            on_chip(stats),
            on_chip(jax.ShapeDtypeStruct(seg.shape, seg.dtype)),
        ).compile()
        seconds = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        temp = compiled.memory_analysis().temp_size_in_bytes
        print(
            f"| {policy} | {temp / 2**20:.1f} | {cost['flops'] / 1e9:.2f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
