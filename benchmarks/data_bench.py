"""Input-pipeline throughput: images/s at 256x512 with on-the-fly Canny edges.

    python benchmarks/data_bench.py [--source=synthetic|cityscapes] [--workers=0,2]
        [--batch=8] [--batches=12] [--size=256,512]

`synthetic` generates scenes in code; `cityscapes` writes a fake Cityscapes tree (PNG images,
8-bit labelIds, 16-bit instanceIds at 1024x2048, as the real files are) into a temp dir, so
decoding and the BICUBIC/NEAREST resizes are measured too. Reports images/s after one warm-up
batch (the worker start-up is excluded), per worker count.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ecgan_jax.config_lib import base_config  # noqa: E402
from ecgan_jax.data import make_train_iterator  # noqa: E402
from ecgan_jax.data.fake_trees import write_split  # noqa: E402


def run(config, batches: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    it = make_train_iterator(config, process_index=0, process_count=1)
    next(it)  # warm-up: worker start-up, first decode
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t1
    it.close()
    return batches * int(config.batch_size) / dt, t1 - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default="synthetic", choices=("synthetic", "cityscapes"))
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--size", default="256,512")
    p.add_argument("--file_size", default="1024,2048", help="fake Cityscapes file size")
    a = p.parse_args()
    size = tuple(int(v) for v in a.size.split(","))
    c = base_config()
    c.batch_size = a.batch
    c.dataset.image_size = size
    c.dataset.edges = "on_the_fly"
    tmp = None
    if a.source == "synthetic":
        c.dataset.name = "synthetic"
        c.dataset.synthetic_num_images = a.batch * (a.batches + 2)
    else:
        tmp = tempfile.TemporaryDirectory()
        n = a.batch * 2
        fs = tuple(int(v) for v in a.file_size.split(","))
        stems = [f"aachen_000000_{i:06d}" for i in range(n)]
        write_split("cityscapes", tmp.name, "train", stems, size=fs, label_nc=34)
        c.dataset.update(name="cityscapes", root=tmp.name, label_nc=35, preprocess="fixed")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")  # fmt: skip
    print(f"source={a.source} image_size={size} batch={a.batch} timed batches={a.batches}")
    for w in (int(v) for v in a.workers.split(",")):
        c.dataset.num_workers = w
        ips, startup = run(c, a.batches)
        print(f"num_workers={w}: {ips:7.1f} images/s  (start-up + first batch {startup:.1f} s)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
