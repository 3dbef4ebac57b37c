"""Weak scaling of the train step: per-device batch fixed, 1, 2, 4, 8 devices.

    python benchmarks/scaling_bench.py --devices=1,2,4 --per_device_batch=1
    python benchmarks/scaling_bench.py --config=configs/cityscapes.py --devices=1,2,4,8  # GPUs

For each device count N the global batch is N × per_device_batch, sharded on the `data` mesh
(as in training); reports compile time, median step time over --repeats steps, images/s and
the weak-scaling efficiency step_time(1) / step_time(N). On CPU the devices are fake
(`--xla_force_host_platform_device_count`, set here when XLA_FLAGS does not say): they share
the host's cores, so the efficiency is expected to fall like ~1/N; the figures show the
mechanics (partitioned step, global BatchNorm statistics, gradient all-reduce), not speed-up.
On real accelerators the same command measures real weak scaling. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/synthetic.py:smoke")
    p.add_argument("--devices", default="1,2,4,8", help="comma list of device counts")
    p.add_argument("--per_device_batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    counts = [int(x) for x in a.devices.split(",")]
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={max(counts)}"
        )
    import jax
    from step_timing import compile_step, median_step_seconds

    from ecgan_jax.config_lib import load_config
    from ecgan_jax.data.pseudo import pseudo_batch
    from ecgan_jax.sharding import global_batch, make_mesh
    from ecgan_jax.training.loop import build_trainer

    if max(counts) > jax.device_count():
        raise SystemExit(
            f"--devices={a.devices}: only {jax.device_count()} {jax.default_backend()} devices"
        )
    rows = []
    for n in counts:
        config = load_config(a.config)
        config.batch_size = n * a.per_device_batch
        trainer = build_trainer(config, make_mesh(jax.devices()[:n]), dataset_size=1000)
        mesh, state, step, vgg_params = (
            trainer.mesh,
            trainer.init_state(),
            trainer.step_fn,
            trainer.vgg_params,
        )
        batch = global_batch(pseudo_batch(config), mesh)
        compiled, compile_s = compile_step(step, state, batch, vgg_params)
        med, _ = median_step_seconds(compiled, state, batch, vgg_params, a.repeats)
        rows.append((n, int(config.batch_size), compile_s, med, config.batch_size / med))
        print(f"{n} devices: step {med:.3f}s", file=sys.stderr, flush=True)
    base = rows[0][3] if rows[0][0] == 1 else None
    print(f"\n{jax.default_backend()} / {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| devices | global batch | compile s | step s | images/s | weak-scaling eff. |")
    print("|---|---|---|---|---|---|")
    for n, b, c, s, ips in rows:
        eff = f"{base / s:.2f}" if base else "-"
        print(f"| {n} | {b} | {c:.1f} | {s:.3f} | {ips:.2f} | {eff} |")


if __name__ == "__main__":
    main()
