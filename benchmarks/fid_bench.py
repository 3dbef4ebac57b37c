"""Times FID feature extraction (InceptionV3 pool3, resize to 299) in images/s (issue 6).

    python benchmarks/fid_bench.py --batch 8 32 --size 256 --repeats 3

Random weights (`inception.init_inception`), random 256x256 float images in [-1, 1], batch
sharded over all local devices (one on a plain CPU). For each batch size: the compile time
(lower + compile) and the median over --repeats of a whole `extract_features` call on
--batches batches (host -> device transfer and the copy back included). Prints one JSON line
per batch size and a markdown table row.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np


def run(batch: int, size: int, batches: int, repeats: int) -> dict:
    from ecgan_jax.eval import fid, inception

    variables = inception.init_inception(0)
    mesh = fid.default_mesh()
    images = np.random.default_rng(0).uniform(-1, 1, (batch * batches, size, size, 3))
    images = images.astype(np.float32)
    fn = fid._feature_fn(mesh, True)
    t0 = time.perf_counter()
    fn.lower(variables, images[:batch]).compile()
    compile_s = time.perf_counter() - t0
    fid.extract_features(variables, images[:batch], batch_size=batch, mesh=mesh)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fid.extract_features(variables, images, batch_size=batch, mesh=mesh)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "batch": batch,
        "size": size,
        "images": batch * batches,
        "devices": mesh.devices.size,
        "backend": jax.default_backend(),
        "compile_s": round(compile_s, 2),
        "median_s": round(median, 3),
        "images_per_s": round(batch * batches / median, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.processor()}")
    rows = []
    for batch in args.batch:
        result = run(batch, args.size, args.batches, args.repeats)
        print(json.dumps(result), flush=True)
        rows.append(
            f"| {result['batch']} | {args.size}x{args.size} -> 299 | {result['devices']} | "
            f"{result['compile_s']} | {result['median_s']} | {result['images_per_s']} |"
        )
    print("| batch | input | devices | compile (s) | median per call (s) | images/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
