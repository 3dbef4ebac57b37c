"""Precomputes the Canny edge tree of a dataset (docs/DESIGN.md §7, §D.6).

    python -m ecgan_jax.data.edges --dataset=cityscapes --root=/data/cityscapes
    python -m ecgan_jax.data.edges --dataset=ade20k --root=/data/ADEChallengeData2016
    python -m ecgan_jax.data.edges --dataset=coco_stuff --root=/data/cocostuff
    python -m ecgan_jax.data.edges --dataset=custom --root=/data/mine --splits=train,val \
        --image_size=256,256 --preprocess=fixed

Edges are made at the size the pipeline resizes to before cropping (`transforms.edge_size`):
image_size for "fixed" and for eval splits, load_size x load_size for the training split of
"resize_and_crop" datasets, so they are identical to the pipeline's on-the-fly edges (same
`transforms.edge_map`). Use the same image_size / load_size / preprocess as the training config
(the defaults are those of configs/<dataset>.py; `--config=configs/x.py` reads them from a
config file). Files go to the edge tree of the layout (`layouts.edge_path`, data/README.md), as
uint8 0/255 grey PNGs named by stem.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

from ecgan_jax.data import layouts, transforms

# (splits, train split, image_size, preprocess, load_size) as in configs/<dataset>.py.
DEFAULTS = {
    "cityscapes": (("train", "val"), "train", (256, 512), "fixed", 286),
    "ade20k": (("training", "validation"), "training", (256, 256), "resize_and_crop", 286),
    "coco_stuff": (("train", "val"), "train", (256, 256), "resize_and_crop", 286),
    "custom": (("train", "val"), "train", (256, 256), "fixed", 286),
}


def _one(job) -> str:
    image_path, out_path, size, overwrite = job
    if not overwrite and os.path.exists(out_path):
        return out_path
    edge = transforms.edge_map(transforms.open_image(image_path, image_path), size)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = out_path + ".tmp.png"
    Image.fromarray(edge).save(tmp)
    os.replace(tmp, out_path)  # a killed run never leaves a truncated edge file
    return out_path


def write_edge_tree(
    dataset: str,
    root: str,
    *,
    splits=None,
    train_split=None,
    image_size=None,
    preprocess=None,
    load_size=None,
    overwrite: bool = False,
    jobs: int = 1,
) -> list[str]:
    """Writes the edge maps of `splits` of `dataset` under `root`; returns the paths written."""
    if dataset not in DEFAULTS:
        raise ValueError(
            f"--dataset={dataset!r} has no directory layout; allowed: " + ", ".join(DEFAULTS)
        )
    d_splits, d_train, d_size, d_pre, d_load = DEFAULTS[dataset]
    splits = tuple(splits or d_splits)
    train_split = train_split or d_train
    spec = transforms.DataSpec(
        name=dataset,
        image_size=tuple(int(v) for v in (image_size or d_size)),
        preprocess=preprocess or d_pre,
        load_size=int(load_size or d_load),
    )
    jobs_list = []
    for split in splits:
        size = transforms.edge_size(spec, train=split == train_split)
        for ex in layouts.list_examples(dataset, root, split):
            out = layouts.edge_path(dataset, root, split, ex)
            jobs_list.append((ex.image, out, size, overwrite))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(_one, jobs_list, chunksize=16))
    return [_one(j) for j in jobs_list]


def _pair(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split(","))
    return h, w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecgan_jax.data.edges",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--config", default="", help="config file whose dataset fields to use")
    p.add_argument("--splits", default="", help="comma-separated splits (default: both)")
    p.add_argument("--train_split", default="", help="the split that is cropped in training")
    p.add_argument("--image_size", type=_pair, default=None, help="H,W")
    p.add_argument("--preprocess", choices=("fixed", "resize_and_crop"), default=None)
    p.add_argument("--load_size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    a = p.parse_args(argv)
    kw = {}
    if a.config:
        from ecgan_jax.config_lib import load_config

        d = load_config(a.config).dataset
        kw = dict(
            splits=(d.train_split, d.eval_split),
            train_split=d.train_split,
            image_size=tuple(d.image_size),
            preprocess=d.preprocess,
            load_size=d.load_size,
        )
    for key in ("train_split", "image_size", "preprocess", "load_size"):
        if getattr(a, key):
            kw[key] = getattr(a, key)
    if a.splits:
        kw["splits"] = tuple(a.splits.split(","))
    paths = write_edge_tree(a.dataset, a.root, overwrite=a.overwrite, jobs=a.jobs, **kw)
    print(f"{len(paths)} edge maps under {a.root}")
    return 0


def run() -> int:
    """The program: bad input (a missing root, unreadable files, an existing edge tree
    without --overwrite) ends in one line with exit status 2."""
    try:
        return main()
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
