"""Small fake dataset trees in the real layouts, for tests and benchmarks (no download).

`write_split(name, root, split, stems, size=(h, w), label_nc=..., seed=...)` writes real image
files of the right modes (JPEG/PNG RGB images, 'L' labels, Cityscapes 16-bit `_instanceIds`,
COCO 'L' instances) and returns {stem: {"image": uint8 (h, w, 3) as decoded from the written
file, "label": raw int32 (h, w), "instance": raw int32 (h, w) or None}} so that callers can
check what the pipeline reads value by value. `snapshot(root)` hashes a tree, so that a test
can show that nothing outside the intended output changed.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

from ecgan_jax.data import layouts


def _paths(name: str, root: str, split: str, stem: str, city: str) -> dict[str, str]:
    j = os.path.join
    if name == "cityscapes":
        return {
            "image": j(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"),
            "label": j(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png"),
            "instance": j(root, "gtFine", split, city, f"{stem}_gtFine_instanceIds.png"),
        }
    mods = layouts.modalities(name, root, split)
    ext = ".png" if name == "custom" else ".jpg"
    out = {
        "image": j(mods["image"].directory, stem + ext),
        "label": j(mods["label"].directory, stem + ".png"),
    }
    if "instance" in mods and name != "custom":
        out["instance"] = j(mods["instance"].directory, stem + ".png")
    return out


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # Blocky colours with some noise: gives Canny real edges and survives JPEG roughly.
    cells = rng.integers(0, 256, (max(1, h // 4 + 1), max(1, w // 4 + 1), 3))
    img = np.kron(cells, np.ones((4, 4, 1)))[:h, :w] + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_split(
    name: str,
    root: str,
    split: str,
    stems,
    *,
    size=(8, 16),
    label_nc: int = 35,
    seed: int = 0,
    with_instances: bool = False,
    unknown_fraction: float = 0.0,
) -> dict[str, dict]:
    """Writes one split of dataset `name` under `root`; see the module docstring.

    Raw labels are in [0, label_nc) (ADE20K: 0..label_nc, 0 = unknown); with
    `unknown_fraction` > 0, that fraction of pixels is unknown: 0 for ADE20K, 255 otherwise.
    Custom instances only with `with_instances`.
    """
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    out = {}
    for k, stem in enumerate(stems):
        city = ("aachen", "bremen")[k % 2]
        paths = _paths(name, root, split, stem, city)
        if name == "custom" and with_instances:
            paths["instance"] = os.path.join(root, split, "instances", stem + ".png")
        for p in paths.values():
            os.makedirs(os.path.dirname(p), exist_ok=True)
        image = _smooth_image(rng, h, w)
        Image.fromarray(image).save(paths["image"], quality=95)
        decoded = np.asarray(Image.open(paths["image"]).convert("RGB"))
        hi = label_nc + 1 if name == "ade20k" else label_nc
        label = rng.integers(0, hi, (h, w)).astype(np.int32)
        if unknown_fraction > 0:
            unknown = 0 if name == "ade20k" else 255
            label[rng.random((h, w)) < unknown_fraction] = unknown
        Image.fromarray(label.astype(np.uint8)).save(paths["label"])
        instance = None
        if "instance" in paths:
            if name == "cityscapes":
                # 16-bit PNG as Cityscapes ships them: class * 1000 + k for things.
                instance = (label * 1000 + rng.integers(0, 3, (h, w))).astype(np.int32)
                Image.fromarray(instance.astype(np.uint16)).save(paths["instance"])
            else:
                instance = rng.integers(0, 256, (h, w)).astype(np.int32)
                Image.fromarray(instance.astype(np.uint8)).save(paths["instance"])
        out[stem] = {"image": decoded, "label": label, "instance": instance, "paths": paths}
    return out


def snapshot(root) -> dict[str, str]:
    """{path relative to root: sha256 of the file, or "dir" / "link -> target"} of a tree."""
    root = os.fspath(root)
    out = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = f"link -> {os.readlink(path)}"
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out
