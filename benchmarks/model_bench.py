"""Times the generator forward and one G+D forward/backward (issue 2's model benchmark).

    python benchmarks/model_bench.py --config=configs/cityscapes.py --batch=1 [--case=all]
    python benchmarks/model_bench.py --config=configs/cityscapes.py:smoke --batch=1

Each case runs in its own subprocess so that peak RSS (ru_maxrss) belongs to that case alone.
Reports compile time (lower + compile) separately from the steady-state median of --repeats
runs. Prints one JSON line per case and a markdown table row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("generator_forward", "gd_forward_backward")


def run_case(config_spec: str, case: str, batch: int, repeats: int, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ecgan_jax.config_lib import load_config, semantic_nc
    from ecgan_jax.models import build_discriminator, build_generator

    config = load_config(config_spec)
    config.model.dtype = dtype
    h, w = config.dataset.image_size
    s = semantic_nc(config)
    G, D = build_generator(config), build_discriminator(config)
    rng = np.random.default_rng(0)
    label = rng.integers(0, config.dataset.label_nc, (batch, h, w))
    seg = jax.nn.one_hot(jnp.asarray(label), s, dtype=jnp.float32)
    img = jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32)
    gv = jax.jit(lambda: G.init(jax.random.key(0), seg, train=False))()
    dv = jax.jit(lambda: D.init(jax.random.key(1), seg, img, train=False))()

    from ecgan_jax.xla_cpu import runtime_for

    wrap = runtime_for(config).wrap  # the backend's hooks, as training and inference use them
    if case == "generator_forward":
        fn = jax.jit(wrap(lambda v, x: G.apply(v, x, train=False)))
        args = (gv, seg)
    else:

        def loss(gp, dp, gs, ds, x, real):
            (first, final, edge), _ = G.apply(
                {"params": gp, **gs}, x, train=True, mutable=["batch_stats", "spectral"]
            )
            fake = jnp.concatenate([first, edge, final])
            outs = D.apply({"params": dp, **ds}, jnp.concatenate([x] * 3), fake, train=False)
            routs = D.apply({"params": dp, **ds}, x, real, train=False)
            return sum(o[-1].mean() for o in outs) - sum(o[-1].mean() for o in routs)

        fn = jax.jit(wrap(jax.grad(loss, argnums=(0, 1))))
        gs = {k: v for k, v in gv.items() if k != "params"}
        ds = {k: v for k, v in dv.items() if k != "params"}
        args = (gv["params"], dv["params"], gs, ds, seg, img)

    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 - cost analysis is optional per backend
        pass
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {
        "config": config_spec,
        "case": case,
        "batch": batch,
        "dtype": dtype,
        "compile_s": round(compile_s, 2),
        "median_s": round(float(np.median(times)), 3),
        "images_per_s": round(batch / float(np.median(times)), 3),
        "peak_rss_gb": round(peak_gb, 2),
        "xla_gflop": None if flops is None else round(flops / 1e9, 1),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/cityscapes.py")
    p.add_argument("--case", default="all", choices=("all",) + CASES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        print(json.dumps(run_case(a.config, a.case, a.batch, a.repeats, a.dtype)))
        return
    for case in CASES if a.case == "all" else (a.case,):
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            f"--config={a.config}",
            f"--case={case}",
            f"--batch={a.batch}",
            f"--repeats={a.repeats}",
            f"--dtype={a.dtype}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(r))
        print(
            f"| {r['config']} | {r['case']} | {r['batch']} | {r['dtype']} | {r['compile_s']} | "
            f"{r['median_s']} | {r['images_per_s']} | {r['peak_rss_gb']} | {r['xla_gflop']} |"
        )


if __name__ == "__main__":
    main()
