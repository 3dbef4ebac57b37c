"""Decoding, label checks and geometric preprocessing of one example (ECGAN_SPEC.md §7, §D.6).

`ExampleTransform(spec, train=...)` turns a raw record (encoded file bytes or arrays, from any
source) into the arrays of one example:

    label    int32   (H, W)      class ids after the dataset's unknown mapping
    instance int32   (H, W)      raw instance ids (zeros when the dataset has none)
    image    float32 (H, W, 3)   [-1, 1]
    edge     float32 (H, W, 3)   [-1, 1], three identical channels
    stem     str

Geometry (the authors' `get_transform`): "fixed" resizes to image_size; "resize_and_crop"
resizes to load_size x load_size and takes a random image_size crop at training time, and
resizes straight to image_size at eval time. A horizontal flip (p = 0.5, training only) is
shared by all modalities. PIL BICUBIC for images and edges, NEAREST for labels and instances.
On-the-fly edges are the Canny map of the image resized to the pre-crop size (`edge_size`), then
cropped and flipped like everything else, so they equal edges precomputed at that size.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from ecgan_jax.data.canny import canny

INT_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What preprocessing needs from `config.dataset` (plain values, picklable)."""

    name: str
    image_size: tuple[int, int]
    preprocess: str = "fixed"
    load_size: int = 286
    flip: bool = True
    label_nc: int = 8
    contain_dontcare_label: bool = False
    no_instance: bool = False
    edges: str = "on_the_fly"

    @classmethod
    def from_config(cls, config) -> DataSpec:
        d = config.dataset
        return cls(
            name=str(d.name),
            image_size=tuple(int(v) for v in d.image_size),
            preprocess=str(d.preprocess),
            load_size=int(d.load_size),
            flip=bool(d.flip),
            label_nc=int(d.label_nc),
            contain_dontcare_label=bool(d.contain_dontcare_label),
            no_instance=bool(d.no_instance),
            edges=str(d.edges),
        )

    @property
    def num_label_values(self) -> int:
        """Labels must lie in [0, num_label_values): label_nc, +1 with a dontcare class."""
        return self.label_nc + int(self.contain_dontcare_label)


def edge_size(spec: DataSpec, *, train: bool) -> tuple[int, int]:
    """(H, W) that every modality is resized to before the crop; edges are made at this size."""
    if spec.preprocess == "resize_and_crop" and train:
        return (spec.load_size, spec.load_size)
    return tuple(spec.image_size)


def open_image(data, origin: str) -> Image.Image:
    """Decodes `data` (encoded bytes, a path or an array) fully; errors name `origin`."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    try:
        if isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
            img = Image.open(io.BytesIO(bytes(data)))
        else:
            img = Image.open(data)
        img.load()  # decode now, so a truncated file fails here with its name
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"cannot read image {origin}: {type(e).__name__}: {e}") from e
    return img


def int_map(img: Image.Image, kind: str, origin: str) -> np.ndarray:
    """Single-channel label / instance image -> int32 raw values.

    'L' (8-bit) gives the raw values, which is ToTensor() x 255 of the authors' loader; 16/32-bit
    modes (Cityscapes `_instanceIds`) keep their raw values too (ECGAN_SPEC.md §7).
    """
    if img.mode not in INT_MODES:
        raise ValueError(
            f"{kind} file {origin} has PIL mode {img.mode!r}; expected a single-channel "
            f"integer image ({', '.join(INT_MODES)})"
        )
    return np.asarray(img).astype(np.int32)


def map_and_check_labels(raw: np.ndarray, spec: DataSpec, origin: str) -> np.ndarray:
    """Applies the unknown mapping and checks the range; errors name the file and the values.

    255 becomes label_nc (the authors' rule, pix2pix_dataset.py l.64-68) when the dataset has a
    dontcare class (COCO-Stuff: 255 -> 182); ADE20K keeps 0 = unknown; Cityscapes labelIds stay.
    Allowed values afterwards: [0, label_nc + contain_dontcare_label).
    """
    label = raw
    if spec.contain_dontcare_label:
        label = np.where(raw == 255, spec.label_nc, raw).astype(np.int32)
    hi = spec.num_label_values
    if label.size and (label.min() < 0 or label.max() >= hi):
        bad = np.unique(label[(label < 0) | (label >= hi)])
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"label file {origin} has values {shown} outside the allowed range [0, {hi - 1}] "
            f"(dataset.label_nc = {spec.label_nc}, contain_dontcare_label = "
            f"{spec.contain_dontcare_label}; 255 maps to label_nc only with a dontcare class)"
        )
    return label


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """int32 (h, w) -> (H, W) with PIL NEAREST (as the authors' loader resizes labels)."""
    if x.shape == tuple(size):
        return x
    img = Image.fromarray(np.ascontiguousarray(x, np.int32))
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST), np.int32)


def resize_bicubic(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == (size[1], size[0]):
        return img
    return img.resize((size[1], size[0]), Image.BICUBIC)


def edge_map(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Canny edges (uint8 0/255, (H, W)) of an image resized BICUBIC to `size` = (H, W).

    The one function behind on-the-fly edges and the precomputed edge tree (`edges.py`).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    return canny(np.asarray(resize_bicubic(image, size), np.uint8))


def to_unit_range(x: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    return np.asarray(x, np.float32) / np.float32(127.5) - np.float32(1.0)


@dataclasses.dataclass(frozen=True)
class ExampleTransform:
    """Raw record -> example arrays; call with `(record, rng)` (rng None at eval time).

    A raw record is a dict with `stem`, `origin` ({modality: description for errors}), `image`,
    `label`, and optional `instance`, `edge` (each encoded bytes, a path, or an array).
    """

    spec: DataSpec
    train: bool

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        spec = self.spec
        origin = record.get("origin", {})
        stem = str(record["stem"])

        def where(kind):
            return origin.get(kind, f"{kind} of {stem!r}")

        image = open_image(record["image"], where("image"))
        if image.mode != "RGB":
            image = image.convert("RGB")
        label = map_and_check_labels(
            int_map(open_image(record["label"], where("label")), "label", where("label")),
            spec,
            where("label"),
        )
        inst = record.get("instance")
        if inst is not None and not (isinstance(inst, (bytes, np.bytes_)) and not len(inst)):
            instance = int_map(open_image(inst, where("instance")), "instance", where("instance"))
        else:
            instance = None

        size = edge_size(spec, train=self.train)
        image = resize_bicubic(image, size)
        image_u8 = np.asarray(image, np.uint8)
        if spec.edges == "precomputed":
            if record.get("edge") is None:
                raise ValueError(f"dataset.edges='precomputed' but {stem!r} has no edge map")
            edge_img = open_image(record["edge"], where("edge")).convert("L")
            edge_u8 = np.asarray(resize_bicubic(edge_img, size), np.uint8)
        else:
            edge_u8 = canny(image_u8)  # == edge_map(original image, size)
        label = resize_nearest(label, size)
        instance = np.zeros(size, np.int32) if instance is None else resize_nearest(instance, size)

        h, w = spec.image_size
        y0 = x0 = 0
        flip = False
        if self.train:
            if rng is None:
                raise ValueError("the training transform needs an rng")
            if (size[0], size[1]) != (h, w):
                if size[0] < h or size[1] < w:
                    raise ValueError(
                        f"dataset.load_size = {spec.load_size} is smaller than "
                        f"dataset.image_size = {tuple(spec.image_size)}"
                    )
                y0 = int(rng.integers(0, size[0] - h + 1))
                x0 = int(rng.integers(0, size[1] - w + 1))
            flip = bool(spec.flip) and bool(rng.random() < 0.5)

        def geo(x):
            x = x[y0 : y0 + h, x0 : x0 + w]
            return np.ascontiguousarray(x[:, ::-1] if flip else x)

        edge = to_unit_range(geo(edge_u8))
        return {
            "label": geo(label),
            "instance": geo(instance),
            "image": to_unit_range(geo(image_u8)),
            "edge": np.repeat(edge[..., None], 3, axis=-1),
            "stem": stem,
        }
