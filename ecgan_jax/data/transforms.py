"""Decoding, label checks and geometric preprocessing of one example (docs/DESIGN.md §7, §D.6).

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

Nothing is resized before it is checked (`decode_record`): a label or instance map whose (H, W)
is not its image's, a label value outside the allowed range, an unreadable file or a precomputed
edge map of another shape is a `DatasetError` naming the files, what they hold and what is
allowed. `data/scan.py` runs the same checks over a whole split before training.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from ecgan_jax.data.canny import canny
from ecgan_jax.data.layouts import DatasetError, Problem

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


def _decode(data) -> Image.Image:
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    if isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
        img = Image.open(io.BytesIO(bytes(data)))
    else:
        img = Image.open(data)
    img.load()  # decode now, so a truncated file fails here with its name
    return img


def open_image(data, origin: str) -> Image.Image:
    """Decodes `data` (encoded bytes, a path or an array) fully; errors name `origin`."""
    try:
        return _decode(data)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"cannot read image {origin}: {type(e).__name__}: {e}") from e


def mode_problem(img: Image.Image, kind: str, origin: str) -> Problem | None:
    """A label / instance image that is not single-channel integer, as a `Problem`."""
    if img.mode in INT_MODES:
        return None
    return Problem(
        origin,
        f"{kind} image of PIL mode {img.mode!r}",
        f"a single-channel integer image ({', '.join(INT_MODES)})",
    )


def int_map(img: Image.Image, kind: str, origin: str) -> np.ndarray:
    """Single-channel label / instance image -> int32 raw values.

    'L' (8-bit) gives the raw values, which is ToTensor() x 255 of the authors' loader; 16/32-bit
    modes (Cityscapes `_instanceIds`) keep their raw values too (docs/DESIGN.md §7).
    """
    problem = mode_problem(img, kind, origin)
    if problem is not None:
        raise DatasetError(str(problem), [problem])
    return np.asarray(img).astype(np.int32)


def map_labels(raw: np.ndarray, spec: DataSpec) -> np.ndarray:
    """The dataset's unknown mapping: 255 -> label_nc where it has a dontcare class."""
    if spec.contain_dontcare_label:
        return np.where(raw == 255, spec.label_nc, raw).astype(np.int32)
    return raw


def label_problem(label: np.ndarray, spec: DataSpec, origin: str) -> Problem | None:
    """Mapped label values outside [0, label_nc + contain_dontcare_label), as a `Problem`."""
    hi = spec.num_label_values
    if not label.size or (label.min() >= 0 and label.max() < hi):
        return None
    bad = np.unique(label[(label < 0) | (label >= hi)])
    shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
    mapped = " (255 mapped to label_nc)" if spec.contain_dontcare_label else ""
    return Problem(
        origin,
        f"label values {shown}{mapped}",
        f"[0, {hi - 1}] (dataset.label_nc = {spec.label_nc}, dataset.contain_dontcare_label = "
        f"{spec.contain_dontcare_label}; 255 maps to label_nc only with a dontcare class)",
    )


def map_and_check_labels(raw: np.ndarray, spec: DataSpec, origin: str) -> np.ndarray:
    """Applies the unknown mapping and checks the range; errors name the file and the values.

    255 becomes label_nc (the authors' rule, pix2pix_dataset.py l.64-68) when the dataset has a
    dontcare class (COCO-Stuff: 255 -> 182); ADE20K keeps 0 = unknown; Cityscapes labelIds stay.
    Allowed values afterwards: [0, label_nc + contain_dontcare_label).
    """
    label = map_labels(raw, spec)
    problem = label_problem(label, spec, origin)
    if problem is not None:
        raise DatasetError(str(problem), [problem])
    return label


def _hw(img: Image.Image) -> tuple[int, int]:
    return (img.size[1], img.size[0])


def _same_aspect(hw: tuple[int, int], target: tuple[int, int]) -> bool:
    """True when `hw` is `target` resized, within one pixel of rounding in either side."""
    return abs(hw[0] * target[1] - hw[1] * target[0]) <= max(target)


@dataclasses.dataclass
class DecodedRecord:
    """The files of one raw record, decoded and checked, before any resize.

    image RGB PIL image; label int32 (h, w) after the unknown mapping; instance int32 (h, w) raw
    ids or None; edge 'L' PIL image or None (on-the-fly edges). A member that could not be
    decoded is None and `problems` says why; with no problems every member is consistent.
    """

    image: Image.Image | None
    label: np.ndarray | None
    instance: np.ndarray | None
    edge: Image.Image | None
    problems: list[Problem]


def decode_record(record: dict, spec: DataSpec, *, train: bool) -> DecodedRecord:
    """Decodes every file of a raw record and lists what is wrong with each (never raises).

    Checks: every file decodes; label and instance are single-channel integer images; labels
    lie in the allowed range after the mapping; label and instance have the image's (H, W)
    exactly; a precomputed edge map has the image's aspect ratio or that of the pre-crop size
    `edge_size(spec, train)` (edge trees are made at that size; any resize of either is read).
    """
    problems: list[Problem] = []
    image = _open_or_note(record, "image", problems)
    if image is not None and image.mode != "RGB":
        image = image.convert("RGB")
    label = _decode_label(record, spec, problems)
    instance = _decode_instance(record, problems)
    edge = _decode_edge(record, spec, problems)
    if image is not None:
        problems += _shape_problems(
            record, spec, train=train, image=image, label=label, instance=instance, edge=edge
        )
    return DecodedRecord(image, label, instance, edge, problems)


def _where(record: dict, kind: str) -> str:
    """The name of a record's `kind` file in messages: its path, else `<kind> of '<stem>'`."""
    return record.get("origin", {}).get(kind, f"{kind} of {str(record['stem'])!r}")


def _open_or_note(record: dict, kind: str, problems: list[Problem]) -> Image.Image | None:
    """The decoded PIL image of `record[kind]`, or None with the reason appended to
    `problems`."""
    try:
        return _decode(record[kind])
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        problems.append(
            Problem(
                _where(record, kind),
                f"cannot read image ({type(e).__name__}: {e})",
                "a complete image file that PIL decodes",
            )  # fmt: skip
        )
        return None


def _int_or_note(record: dict, kind: str, problems: list[Problem]) -> np.ndarray | None:
    """`record[kind]` as an int32 (h, w) map, or None when it does not decode or is not a
    single-channel integer image (the reason appended to `problems`)."""
    img = _open_or_note(record, kind, problems)
    if img is None:
        return None
    problem = mode_problem(img, kind, _where(record, kind))
    if problem is not None:
        problems.append(problem)
        return None
    return np.asarray(img).astype(np.int32)


def _decode_label(record: dict, spec: DataSpec, problems: list[Problem]) -> np.ndarray | None:
    """The int32 (h, w) label map after the unknown mapping (None if it does not decode); a
    label outside the allowed range is noted in `problems` but the map is kept."""
    label = _int_or_note(record, "label", problems)
    if label is not None:
        label = map_labels(label, spec)
        problem = label_problem(label, spec, _where(record, "label"))
        if problem is not None:
            problems.append(problem)
    return label


def _decode_instance(record: dict, problems: list[Problem]) -> np.ndarray | None:
    """The raw int32 (h, w) instance ids, or None when the record has none (missing or empty
    bytes) or they do not decode."""
    inst = record.get("instance")
    if inst is None or (isinstance(inst, (bytes, np.bytes_)) and not len(inst)):
        return None
    return _int_or_note(record, "instance", problems)


def _decode_edge(record: dict, spec: DataSpec, problems: list[Problem]) -> Image.Image | None:
    """The precomputed 'L' edge map with dataset.edges='precomputed' (a missing or unreadable
    one noted in `problems`), else None (edges made on the fly)."""
    if spec.edges != "precomputed":
        return None
    if record.get("edge") is None:
        problems.append(
            Problem(
                _where(record, "edge"),
                "no edge map",
                "one edge map per example with dataset.edges='precomputed'",
            )  # fmt: skip
        )
        return None
    edge = _open_or_note(record, "edge", problems)
    return None if edge is None else edge.convert("L")


def _shape_problems(
    record: dict,
    spec: DataSpec,
    *,
    train: bool,
    image: Image.Image,
    label: np.ndarray | None,
    instance: np.ndarray | None,
    edge: Image.Image | None,
) -> list[Problem]:
    """Label and instance maps must have the image's (H, W) exactly; an edge map the image's
    aspect ratio or that of the pre-crop size `edge_size(spec, train)`."""
    problems = []
    hw = _hw(image)
    where_image = _where(record, "image")
    for kind, value in (("label", label), ("instance", instance)):
        if value is not None and value.shape != hw:
            problems.append(
                Problem(
                    _where(record, kind),
                    f"{kind} map of (H, W) = {value.shape}",
                    f"the (H, W) of its image {where_image}: {hw}",
                )  # fmt: skip
            )
    pre_crop = tuple(edge_size(spec, train=train))
    if edge is not None and not (_same_aspect(_hw(edge), hw)
                                 or _same_aspect(_hw(edge), pre_crop)):  # fmt: skip
        problems.append(
            Problem(
                _where(record, "edge"),
                f"edge map of (H, W) = {_hw(edge)}",
                f"the shape of its image {where_image} {hw} or of the pipeline's "
                f"pre-crop size {pre_crop}, or a resize of either; remake the edge tree "
                "with python -m ecgan_jax.data.edges --config=<this config> "
                "--overwrite",
            )  # fmt: skip
        )
    return problems


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
        stem = str(record["stem"])
        decoded = decode_record(record, spec, train=self.train)
        if decoded.problems:
            raise DatasetError("; ".join(str(p) for p in decoded.problems), decoded.problems)

        size = edge_size(spec, train=self.train)
        image_u8 = np.asarray(resize_bicubic(decoded.image, size), np.uint8)
        if spec.edges == "precomputed":
            edge_u8 = np.asarray(resize_bicubic(decoded.edge, size), np.uint8)
        else:
            edge_u8 = canny(image_u8)  # == edge_map(original image, size)
        label = resize_nearest(decoded.label, size)
        instance = decoded.instance
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
