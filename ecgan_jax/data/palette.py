"""Label colourisation for image grids: the Cityscapes palette, the synthetic one, or a generic
PASCAL-style bit-interleaved palette."""

from __future__ import annotations

import numpy as np

from ecgan_jax.data.synthetic import PALETTE as SYNTHETIC_PALETTE

# Cityscapes colours by labelId 0..33 (cityscapesScripts' label table), plus 34 = license plate.
CITYSCAPES_PALETTE = np.array(
    [
        (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0),  # unlabeled .. static
        (111, 74, 0), (81, 0, 81), (128, 64, 128), (244, 35, 232), (250, 170, 160),
        (230, 150, 140), (70, 70, 70), (102, 102, 156), (190, 153, 153), (180, 165, 180),
        (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30),
        (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 0, 90),
        (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 142),
    ],
    np.uint8,
)  # fmt: skip


def generic_palette(n: int) -> np.ndarray:
    """(n, 3) uint8: class i gets the bits of i spread over the high bits of R, G, B."""
    i = np.arange(n)
    out = np.zeros((n, 3), np.int64)
    for j in range(8):
        for ch in range(3):
            out[:, ch] |= ((i >> (3 * j + ch)) & 1) << (7 - j)
    return out.astype(np.uint8)


def colorize_labels(label, num_classes: int, *, palette: str | None = None) -> np.ndarray:
    """(..., H, W) integer labels -> (..., H, W, 3) uint8 RGB.

    `palette`: "cityscapes", "synthetic" or "generic"; None picks "cityscapes" for
    num_classes 35/36 (label_nc or semantic_nc of Cityscapes), "synthetic" for 8/9 and
    "generic" otherwise. Negative labels (ignore) are black; labels past the chosen palette
    take generic colours.
    """
    label = np.asarray(label).astype(np.int64)
    if palette is None:
        palette = {35: "cityscapes", 36: "cityscapes", 8: "synthetic", 9: "synthetic"}.get(
            int(num_classes), "generic"
        )
    n = max(int(num_classes), int(label.max(initial=0)) + 1, 1)
    table = generic_palette(n)
    if palette == "cityscapes":
        k = min(n, len(CITYSCAPES_PALETTE))
        table[:k] = CITYSCAPES_PALETTE[:k]
    elif palette == "synthetic":
        k = min(n, len(SYNTHETIC_PALETTE))
        table[:k] = SYNTHETIC_PALETTE[:k]
    elif palette != "generic":
        raise ValueError(f"palette={palette!r}; allowed: cityscapes, synthetic, generic, None")
    out = table[np.clip(label, 0, n - 1)]
    out[label < 0] = 0
    return out
