"""Random pseudo batches with the pipeline's keys, dtypes and shapes (tests and benchmarks).

`pseudo_batch(config, seed=0, batch=None)` gives blocky label maps (8×8 blocks, every label
value incl. dontcare), blocky instance maps, uniform images in [-1, 1] and sparse ±1 edges:
enough structure for every loss term (several classes per image, instance boundaries).
"""

from __future__ import annotations

import numpy as np


def pseudo_batch(config, seed: int = 0, batch: int | None = None) -> dict:
    """{label, instance: (B,H,W) int32; image, edge: (B,H,W,3) float32}; B = config.batch_size."""
    rng = np.random.default_rng(seed)
    b = batch or int(config.batch_size)
    h, w = config.dataset.image_size
    n_lab = int(config.dataset.label_nc) + int(config.dataset.contain_dontcare_label)
    coarse = rng.integers(0, n_lab, (b, h // 8, w // 8))
    label = np.repeat(np.repeat(coarse, 8, 1), 8, 2).astype(np.int32)
    inst = np.repeat(np.repeat(rng.integers(0, 4, (b, h // 16, w // 16)), 16, 1), 16, 2)
    image = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    edge = np.where(rng.random((b, h, w, 1)) < 0.1, 1.0, -1.0).repeat(3, -1)
    return {
        "label": label,
        "instance": inst.astype(np.int32),
        "image": image,
        "edge": edge.astype(np.float32),
    }
