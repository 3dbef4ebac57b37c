"""Times the full jitted train step (G step + D step, all losses) on random batches.

    python benchmarks/train_bench.py --config=configs/cityscapes.py --batch=1
    python benchmarks/train_bench.py --config=configs/cityscapes.py:smoke --batch=2
    python benchmarks/train_bench.py --config=configs/cityscapes.py --batch=2 \
        --set model.ngf=16 model.ndf=16 dataset.image_size=128,256
    python benchmarks/train_bench.py --config=configs/cityscapes.py --dtype=bfloat16   # GPU

Runs in a subprocess so peak RSS (ru_maxrss) belongs to this case. Reports compile time,
median step time over --repeats steps, images/s, peak host RSS, the RSS after the state is
made and the step compiled (what the step's own buffers come on top of), XLA's FLOP count of
the step and, on a GPU, device peak memory and model FLOPs utilisation (against --peak_tflops).
Perceptual loss uses random VGG19 weights (same cost as real ones).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _current_rss_gb():
    """Resident set size now (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9, 2)
    except OSError:
        return None


def run(args) -> dict:
    from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas, release_host_memory

    limit_malloc_arenas()  # as `python -m ecgan_jax.main` does, before JAX starts its threads
    import jax
    from step_timing import compile_step, median_step_seconds

    from ecgan_jax.config_lib import apply_override, load_config, validate_config
    from ecgan_jax.data.pseudo import pseudo_batch
    from ecgan_jax.sharding import global_batch, make_mesh
    from ecgan_jax.training.loop import build_trainer

    config = load_config(args.config)
    config.batch_size = args.batch
    config.model.dtype = args.dtype
    config.perceptual.random_weights = True
    for a in args.set:
        apply_override(config, a)
    validate_config(config)
    n_dev = min(jax.device_count(), args.batch)
    trainer = build_trainer(config, make_mesh(jax.devices()[:n_dev]), dataset_size=1000)
    mesh, state, step, vgg_params = (
        trainer.mesh,
        trainer.init_state(),
        trainer.step_fn,
        trainer.vgg_params,
    )
    batch = global_batch(pseudo_batch(config, batch=args.batch), mesh)
    compiled, compile_s = compile_step(step, state, batch, vgg_params)
    rss_after_compile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    release_host_memory()  # as the training loop does after compiling
    rss_before_step = _current_rss_gb()
    temp_gb = None
    try:
        temp_gb = compiled.memory_analysis().temp_size_in_bytes / 1e9
    except Exception:  # noqa: BLE001 - memory analysis is optional per backend
        pass
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 - optional per backend
        pass
    if args.compile_only:
        return {
            "config": args.config,
            "compile_s": round(compile_s, 1),
            "peak_rss_after_compile_gb": round(rss_after_compile, 2),
            "xla_temp_gb": None if temp_gb is None else round(temp_gb, 2),
            "xla_tflop_per_step": None if flops is None else round(flops / 1e12, 3),
        }
    med, _ = median_step_seconds(compiled, state, batch, vgg_params, args.repeats)
    out = {
        "config": args.config,
        "set": args.set,
        "batch": args.batch,
        "dtype": args.dtype,
        "image_size": list(config.dataset.image_size),
        "compile_s": round(compile_s, 1),
        "step_s": round(med, 3),
        "images_per_s": round(args.batch / med, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "peak_rss_after_compile_gb": round(rss_after_compile, 2),
        "rss_before_first_step_gb": rss_before_step,
        "xla_temp_gb": None if temp_gb is None else round(temp_gb, 2),
        "xla_tflop_per_step": None if flops is None else round(flops / 1e12, 3),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }
    if jax.default_backend() == "gpu":
        stats = jax.devices()[0].memory_stats() or {}
        out["device_peak_gb"] = round(stats.get("peak_bytes_in_use", 0) / 1e9, 2)
        if flops:
            out["mfu"] = round(flops / med / (args.peak_tflops * 1e12), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/cityscapes.py:smoke")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=989.0,
        help="device peak for MFU (H100 SXM dense bf16: 989; fp32 via TF32 likewise)",
    )
    p.add_argument(
        "--xla_default_scheduler",
        action="store_true",
        help="keep XLA:CPU's concurrency-optimised scheduler (the training CLI turns it off)",
    )
    p.add_argument("--compile_only", action="store_true", help="report compile figures only")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        print(json.dumps(run(a)))
        return
    cmd = [sys.executable, __file__, "--_child", *sys.argv[1:]]
    env = dict(os.environ)
    if not a.xla_default_scheduler:
        from ecgan_jax.xla_cpu.flags import set_cpu_scheduler_flag

        set_cpu_scheduler_flag(env)  # as `python -m ecgan_jax.main` does
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr[-4000:], file=sys.stderr)
        raise SystemExit(out.returncode)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(r))
    if a.compile_only:
        return
    print(
        f"| {r['config']} {' '.join(r['set'])} | {r['image_size'][0]}x{r['image_size'][1]} | "
        f"{r['batch']} | {r['dtype']} | {r['compile_s']} | {r['step_s']} | "
        f"{r['images_per_s']} | {r['peak_rss_gb']} | {r['xla_tflop_per_step']} |"
    )


if __name__ == "__main__":
    main()
