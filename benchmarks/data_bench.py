"""Input-pipeline throughput: images/s, and images per CPU-second, of the training iterator.

    python benchmarks/data_bench.py [--source=synthetic|cityscapes|preprocessed]
        [--workers=0,1,2] [--batch=8] [--batches=12] [--size=256,512] [--images=16]
        [--file_size=1024,2048] [--tfds_images=resized|original]

Sources:

* `synthetic`: scenes generated in code at `--size`, on-the-fly Canny edges.
* `cityscapes` (the PNG path): a fake Cityscapes tree (PNG images, 8-bit labelIds, 16-bit
  instanceIds at `--file_size`, 1024x2048 as the real files are) in a temp dir, read with
  `dataset.source="files"`: PNG decode, BICUBIC/NEAREST resize to `--size`, Canny on the fly.
* `preprocessed`: the same fake tree, prepared once (timed separately, as "build") into the
  project's TFDS builder (`data/tfds_builder.py`, array_record) and read with
  `dataset.source="tfds"`, `dataset.edges="precomputed"`. `--tfds_images=resized` (the
  default) builds with `stored="resized"`: the builder stores every modality at `--size`
  (BICUBIC images, NEAREST labels and instances: what the pipeline would do to them), so
  training decodes small PNGs, resizes nothing and runs no Canny, and its batches equal the PNG
  path's. `--tfds_images=original` builds with `stored="original"`, the full-size file bytes
  (only Canny is saved).

Per worker count, after a warm-up of one batch per worker plus one (worker start-up, first
decodes; reported as "start-up"), `--batches` batches are timed. Columns: images/s (wall
clock); cores busy (CPU seconds of this process and every descendant, grain workers included,
per wall second); images per CPU-second, the per-core figure, which does not depend on what
else the machine runs. CPU time is `resource.getrusage` of self and reaped children plus, for
live descendants (grain workers are alive while timed, so RUSAGE_CHILDREN does not see them
yet), their `/proc/<pid>/stat` times; without /proc the live workers are missing and the
script says so. RSS: resident memory of the main process and of the largest child process
at the end of the timed batches.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ecgan_jax.config_lib import base_config  # noqa: E402
from ecgan_jax.data import make_train_iterator  # noqa: E402
from ecgan_jax.data.fake_trees import write_split  # noqa: E402

HAVE_PROC = os.path.isdir("/proc/self")


def _descendants() -> dict[int, list[str]]:
    """{pid: /proc/<pid>/stat fields after the command name} of this process's live
    descendants; {} without /proc."""
    if not HAVE_PROC:
        return {}
    parent, stat = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                # the command name is in parentheses and may hold spaces: split after it.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while listing
            continue
        parent[int(name)], stat[int(name)] = int(fields[1]), fields
    out, frontier = {}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid:
                out[child] = stat[child]
                frontier.append(child)
    return out


def _live_descendant_seconds() -> float:
    """user + system CPU seconds of the live descendants (and of their reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum(sum(int(v) for v in f[11:15]) for f in _descendants().values()) / tick


def resident_mb() -> tuple[float, list[float]]:
    """Resident memory (MB) of this process and of each live descendant."""
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, kB on Linux
    if HAVE_PROC:
        with open("/proc/self/statm") as f:
            own = int(f.read().split()[1]) * page
    return own, [int(f[21]) * page for f in _descendants().values()]  # field 24: rss pages


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its reaped children and its live descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    return used + _live_descendant_seconds()


def run(config, batches: int) -> dict:
    """Times `batches` training batches after the warm-up; see the module docstring."""
    t0 = time.perf_counter()
    it = make_train_iterator(config, process_index=0, process_count=1)
    for _ in range(it.num_workers + 1):  # every worker started and delivered once
        next(it)
    t1, c1 = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - t1, cpu_seconds() - c1
    own_mb, child_mb = resident_mb()
    it.close()
    images = batches * int(config.batch_size)
    return {
        "images_per_s": images / wall,
        "cores_busy": cpu / wall,
        "images_per_cpu_s": images / cpu,
        "startup_s": t1 - t0,
        "workers": it.num_workers,
        "main_mb": own_mb,
        "worker_mb": max(child_mb, default=0.0),
    }


def build_preprocessed(root: str, work: str, size, *, resized: bool = True) -> dict:
    """Prepares the Cityscapes tree `root` with the TFDS builder under `work`; returns the
    config.dataset fields that read it and the build times (seconds)."""
    import tensorflow_datasets as tfds

    from ecgan_jax.data.tfds_builder import EcganBuilderConfig, prepare

    tfds.disable_progress_bar()
    t0 = time.perf_counter()
    h, w = (int(v) for v in size)
    stored = "resized" if resized else "original"
    name = f"bench_{stored}_{h}x{w}"
    cfg = EcganBuilderConfig(name=name, dataset="cityscapes", splits=("train",), image_size=(h, w),
                             stored=stored)  # fmt: skip
    data_dir = os.path.join(work, "tfds")
    prepare(cfg, root, data_dir)
    fields = dict(
        source="tfds", root=data_dir, tfds_name=f"ecgan_dataset/{name}", edges="precomputed"
    )
    return {"fields": fields, "tfds_s": time.perf_counter() - t0}


def cityscapes_config(root: str, batch: int, size):
    """The PNG path's config: the Cityscapes tree `root` as files, edges on the fly."""
    c = base_config()
    c.batch_size = batch
    c.dataset.update(name="cityscapes", root=root, label_nc=35, preprocess="fixed",
                     image_size=tuple(size), edges="on_the_fly")  # fmt: skip
    return c


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default="synthetic",
                   choices=("synthetic", "cityscapes", "preprocessed"))  # fmt: skip
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--size", default="256,512")
    p.add_argument("--images", type=int, default=0, help="fake tree size (default 2 batches)")
    p.add_argument("--file_size", default="1024,2048", help="fake Cityscapes file size")
    p.add_argument("--tfds_images", default="resized", choices=("resized", "original"))
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split(","))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")  # fmt: skip
    if not HAVE_PROC:
        print("no /proc: CPU time leaves out live grain workers (per-core figures too high)")
    tmp = tempfile.TemporaryDirectory()
    if a.source == "synthetic":
        c = base_config()
        c.batch_size = a.batch
        c.dataset.update(name="synthetic", image_size=size, edges="on_the_fly",
                         synthetic_num_images=a.batch * (a.batches + 2))  # fmt: skip
    else:
        n = a.images or a.batch * 2
        fs = tuple(int(v) for v in a.file_size.split(","))
        root = os.path.join(tmp.name, "cityscapes")
        stems = [f"aachen_000000_{i:06d}" for i in range(n)]
        write_split("cityscapes", root, "train", stems, size=fs, label_nc=34)
        c = cityscapes_config(root, a.batch, size)
        if a.source == "preprocessed":
            built = build_preprocessed(root, tmp.name, size, resized=a.tfds_images == "resized")
            c.dataset.update(**built["fields"])
            ms = built["tfds_s"] / n * 1000
            print(f"build ({n} images of {fs[0]}x{fs[1]}, tfds_images={a.tfds_images}): TFDS "
                  f"prepare {built['tfds_s']:.1f} s ({ms:.0f} ms/image)")  # fmt: skip
    print(f"source={a.source} image_size={size} batch={a.batch} timed batches={a.batches}")
    for w in a.workers.split(","):
        c.dataset.num_workers = int(w)
        r = run(c, a.batches)
        print(f"num_workers={r['workers']}: {r['images_per_s']:7.1f} images/s, "
              f"{r['cores_busy']:.2f} cores busy, {r['images_per_cpu_s']:6.1f} images/CPU-s "
              f"(start-up {r['startup_s']:.1f} s; RSS main {r['main_mb']:.0f} MB, "
              f"largest child {r['worker_mb']:.0f} MB)")  # fmt: skip
    tmp.cleanup()


if __name__ == "__main__":
    main()
