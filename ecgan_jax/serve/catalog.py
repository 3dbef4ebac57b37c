"""What the page offers to paint with: the dataset's classes and its validation label maps.

`class_table(config)` gives one name and one RGB colour per label value the generator accepts
(`dataset.label_nc`, plus the dontcare class), coloured as the training grids colour them
(`data.palette.colorize_labels`). Names: the synthetic dataset's `CLASS_NAMES`, Cityscapes'
labelIds (cityscapesScripts' label table, 34 = license plate as in the palette), the
dataset's unknown class, and "class N" elsewhere (ADE20K and COCO-Stuff ship no name list in
this project; give one with `names_file`, one name per line in id order).

`ValidationMaps(config, limit)` reads the first `limit` examples of the config's eval split
through the eval transform (`data.transforms.ExampleTransform`, so labels are mapped and
resized exactly as for evaluation): the embedded synthetic scenes need no files; a file
dataset whose `dataset.root` is missing gives an empty list and a `note` saying why.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading

import numpy as np

# cityscapesScripts' labelIds 0..33 and the palette's 34 (license plate, id -1 there).
CITYSCAPES_LABEL_NAMES = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic",
    "ground", "road", "sidewalk", "parking", "rail track", "building", "wall", "fence",
    "guard rail", "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan",
    "trailer", "train", "motorcycle", "bicycle", "license plate",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """`names[i]` and `colors[i]` (uint8 RGB, (n, 3)) of label value i, for i in [0, n)."""

    names: tuple[str, ...]
    colors: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def as_json(self) -> list[dict]:
        return [
            {"id": i, "name": name, "color": [int(v) for v in self.colors[i]]}
            for i, name in enumerate(self.names)
        ]


def num_label_values(config) -> int:
    """Label values the generator takes: label_nc, plus one with a dontcare class."""
    d = config.dataset
    return int(d.label_nc) + int(bool(d.contain_dontcare_label))


def _read_names_file(path: str, n: int) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ValueError(f"--class_names file {path}: cannot read it ({e})") from e
    if len(names) != n:
        raise ValueError(
            f"--class_names file {path} has {len(names)} names; this config takes {n} label "
            "values (dataset.label_nc plus the dontcare class): give one name per line, in id "
            "order"
        )
    return names


def class_table(config, names_file: str | None = None) -> ClassTable:
    """The `ClassTable` of `config.dataset` (see the module docstring for the names)."""
    from ecgan_jax.data import colorize_labels, synthetic

    d = config.dataset
    n = num_label_values(config)
    colors = colorize_labels(np.arange(n)[None, :], int(d.label_nc))[0]
    if names_file:
        names = _read_names_file(names_file, n)
    else:
        known = {"synthetic": synthetic.CLASS_NAMES, "cityscapes": CITYSCAPES_LABEL_NAMES}
        base = known.get(str(d.name), ())
        names = [base[i] if i < len(base) else f"class {i}" for i in range(n)]
        unknown = int(d.get("unknown_label", -1))
        if 0 <= unknown < n:
            names[unknown] = "unknown"
        if d.contain_dontcare_label and unknown != int(d.label_nc):
            names[int(d.label_nc)] = "dontcare"
    return ClassTable(tuple(names), np.ascontiguousarray(colors, np.uint8))


class ValidationMaps:
    """The first `limit` examples of the eval split, read lazily and kept (at most 64).

    `stems` lists them; `label(i)` is int32 (H, W) class ids at `dataset.image_size`,
    `image(i)` the real uint8 (H, W, 3) image. `note` says why the list is empty, if it is.
    """

    def __init__(self, config, limit: int = 16):
        from ecgan_jax.data import sources, transforms

        self.note = ""
        self._source = None
        self._transform = transforms.ExampleTransform(
            transforms.DataSpec.from_config(config), train=False
        )
        self._cache: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._lock = threading.Lock()
        count = 0
        if limit > 0:
            try:
                self._source = sources.make_source(config, train=False)
                count = min(int(limit), len(self._source))
            except (OSError, ValueError) as e:
                self.note = f"no validation label maps: {e}"
                logging.warning("%s", self.note)
        self._count = count
        self._stems: list[str] | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def stems(self) -> list[str]:
        if self._stems is None:
            self._stems = [str(self._source[i]["stem"]) for i in range(self._count)]
        return self._stems

    def _example(self, index: int) -> dict:
        if not 0 <= index < self._count:
            raise IndexError(
                f"validation map {index} does not exist; allowed: 0..{self._count - 1}"
            )
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        example = self._transform(self._source[index])
        with self._lock:
            self._cache[index] = example
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return example

    def label(self, index: int) -> np.ndarray:
        return np.asarray(self._example(index)["label"], np.int32)

    def image(self, index: int) -> np.ndarray:
        from ecgan_jax.inference import image_to_uint8

        return image_to_uint8(self._example(index)["image"])
