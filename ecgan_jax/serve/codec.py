"""Label-map PNGs in and out of the server, checked as the data pipeline checks label files.

A request's label map is a PNG with one integer channel (PIL modes of
`data.transforms.INT_MODES`: 8-bit grey "L", palette "P" whose indices are the ids, 16/32-bit
grey) holding the dataset's class ids; with a dontcare class 255 maps to `label_nc` as in the
label files (`transforms.map_and_check_labels`). Every way a body can be wrong raises
`BadInput` with one line naming what is wrong and what is allowed; the server answers it with
HTTP 400.

Instance maps: the generator sees instances only through their boundary map (a pixel is 1
where its id differs from a 4-neighbour, docs/DESIGN.md §2.1). A painted or uploaded label map
has no instances, so `instances_from_labels` uses the label map itself: the boundary channel
is then the class boundary map. (Instance ids per connected component of a class would give
the same boundaries, since two components of one class never touch; what a label map cannot
say is where two touching objects of one class meet, e.g. two cars painted as one blob.)
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from ecgan_jax.data.transforms import INT_MODES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Uploads that are resized to the generator's size (`read_label_png(..., size=None)`): no side
# longer than this, which also bounds what a small compressed body can expand to.
MAX_IMPORT_SIDE = 8192


class BadInput(ValueError):
    """A request the server refuses with HTTP 400; the message is one line."""


def _open_png(body: bytes) -> Image.Image:
    if not body:
        raise BadInput("empty request body: send a label map PNG (Content-Type: image/png)")
    if not body.startswith(PNG_SIGNATURE):
        raise BadInput(
            f"request body is not a PNG (it starts with {body[:8]!r}); send a single-channel "
            "PNG of class ids"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(body))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise BadInput(f"cannot read the PNG header: {type(e).__name__}: {e}") from e


def read_label_png(
    body: bytes, num_values: int, *, size: tuple[int, int] | None, dontcare: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG bytes -> (int32 (H, W) class ids in [0, num_values), the file's (H, W)).

    `size` (H, W): the label map must have exactly this size (the generator's input). None:
    any size up to MAX_IMPORT_SIDE per side, returned as it is (the caller resizes).
    `dontcare`: the id that raw value 255 becomes (the dataset's dontcare class), or None.
    """
    img = _open_png(body)
    allowed_modes = ", ".join(INT_MODES)
    if img.mode not in INT_MODES:
        bands = len(img.getbands())
        raise BadInput(
            f"label map PNG has mode {img.mode!r} ({bands} channel{'s' * (bands != 1)}); "
            f"allowed: a single-channel integer PNG (PIL modes {allowed_modes}) whose pixel "
            f"values are class ids 0..{num_values - 1}"
        )
    w, h = img.size
    if size is not None and (h, w) != tuple(size):
        raise BadInput(
            f"label map is {w}x{h} (width x height); this generator takes {size[1]}x{size[0]} "
            "(dataset.image_size): resize it by nearest neighbour, or upload it on the page"
        )
    if size is None and max(h, w) > MAX_IMPORT_SIDE:
        raise BadInput(
            f"label map is {w}x{h} (width x height); allowed: at most {MAX_IMPORT_SIDE} pixels "
            "per side"
        )
    try:
        img.load()
        raw = np.asarray(img).astype(np.int64)
    except Exception as e:
        raise BadInput(f"cannot decode the PNG: {type(e).__name__}: {e}") from e
    if raw.ndim != 2:
        raise BadInput(f"label map decodes to shape {raw.shape}; allowed: one channel (H, W)")
    if dontcare is not None:
        raw = np.where(raw == 255, dontcare, raw)
    bad = np.unique(raw[(raw < 0) | (raw >= num_values)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        extra = " (255 = dontcare)" if dontcare is not None else ""
        raise BadInput(
            f"label map has ids {shown} outside the allowed class ids 0..{num_values - 1}"
            f"{extra}; the classes are listed by GET /api/classes"
        )
    return raw.astype(np.int32), (h, w)


def instances_from_labels(label: np.ndarray) -> np.ndarray:
    """int32 (..., H, W) instance ids for a label map without instances: the labels themselves
    (see the module docstring for why that gives the right boundary channel)."""
    return np.asarray(label, np.int32).copy()


def encode_rgb_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (zlib level 1: the server answers on every brush stroke)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def encode_label_png(label: np.ndarray, colors: np.ndarray) -> bytes:
    """int (H, W) ids -> PNG bytes that `read_label_png` reads back to the same ids.

    Up to 256 classes: a palette PNG (indices = ids, palette = the class colours, so viewers
    show the colours); more: 16-bit grey.
    """
    label = np.asarray(label)
    buf = io.BytesIO()
    if len(colors) <= 256:
        h, w = label.shape
        img = Image.frombytes("P", (w, h), np.ascontiguousarray(label, np.uint8).tobytes())
        img.putpalette(np.asarray(colors, np.uint8).reshape(-1).tolist())
    else:
        img = Image.fromarray(np.ascontiguousarray(label, np.uint16))  # mode I;16
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
