"""Cheap training-time figures: per-class colour error and image grids (numpy, host side).

`class_colour_error` is the demo's measured quality figure: for every image and every class
present in it, the mean RGB of I″ over the class's pixels is compared with the mean RGB of the
real image over the same pixels (mean absolute difference, in [-1, 1] units, averaged over
the (image, class) pairs). A generator that has learned the label-to-appearance mapping drives
it towards 0; an untrained one sits near the colour spread of the dataset.
"""

from __future__ import annotations

import numpy as np


def class_colour_error(fake, real, label, *, num_classes: int) -> float:
    """Mean |mean colour of fake - mean colour of real| over (image, class) pairs.

    fake, real: (B,H,W,3) float in [-1, 1]; label: (B,H,W) int; classes >= num_classes or < 0
    are ignored.
    """
    fake, real, label = (
        np.asarray(fake, np.float64),
        np.asarray(real, np.float64),
        np.asarray(label),
    )
    b = label.shape[0]
    valid = (label >= 0) & (label < num_classes)
    onehot = np.zeros((b, label.shape[1] * label.shape[2], num_classes))
    flat = np.where(valid, label, 0).reshape(b, -1)
    np.put_along_axis(onehot, flat[..., None], valid.reshape(b, -1, 1).astype(float), axis=2)
    counts = onehot.sum(1)  # (B, K)
    sum_fake = np.einsum("bpk,bpc->bkc", onehot, fake.reshape(b, -1, 3))
    sum_real = np.einsum("bpk,bpc->bkc", onehot, real.reshape(b, -1, 3))
    present = counts > 0
    if not present.any():
        return 0.0
    denom = np.maximum(counts, 1)[..., None]
    diff = np.abs(sum_fake / denom - sum_real / denom).mean(-1)
    return float(diff[present].mean())


def to_uint8(x) -> np.ndarray:
    """[-1, 1] float (values outside are clipped for display only) -> uint8."""
    return np.clip((np.asarray(x, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def image_grid(batch, first, edge, final, *, num_classes: int, max_rows: int = 8) -> np.ndarray:
    """Rows of [colourised label | real | real edge | I′ | I′_e | I″] as one uint8 image."""
    from ecgan_jax.data import colorize_labels

    n = min(int(np.asarray(batch["label"]).shape[0]), max_rows)
    rows = []
    for i in range(n):
        cols = [
            np.asarray(colorize_labels(np.asarray(batch["label"][i]), num_classes), np.uint8),
            to_uint8(batch["image"][i]),
            to_uint8(batch["edge"][i]),
            to_uint8(first[i]),
            to_uint8(edge[i]),
            to_uint8(final[i]),
        ]
        rows.append(np.concatenate(cols, axis=1))
    return np.concatenate(rows, axis=0)
