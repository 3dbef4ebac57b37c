"""Canny edges (ecgan_jax/data/canny.py) and the edge-tree CLI (ecgan_jax/data/edges.py)."""

import os

import numpy as np
import pytest
from PIL import Image
from scipy.signal import convolve2d

from ecgan_jax.config_lib import base_config
from ecgan_jax.data import canny, make_eval_iterator, make_train_iterator
from ecgan_jax.data.canny import hysteresis
from ecgan_jax.data.edges import main as edges_main
from ecgan_jax.data.fake_trees import write_split
from ecgan_jax.data.transforms import DataSpec, ExampleTransform


def loop_reference(rgb):
    """The MATLAB script transcribed pixel by pixel (slow; tiny images only)."""
    x = np.asarray(rgb, np.float64)
    grey = 0.298936021293775 * x[..., 0] + 0.587043074451121 * x[..., 1]
    grey = grey + 0.114020904255103 * x[..., 2]
    b = np.array([[2, 4, 5, 4, 2], [4, 9, 12, 9, 4], [5, 12, 15, 12, 5], [4, 9, 12, 9, 4],
                  [2, 4, 5, 4, 2]]) / 159.0  # fmt: skip
    f = convolve2d(grey, b, mode="same")
    fx = convolve2d(f, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), mode="same")
    fy = convolve2d(f, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), mode="same")
    h, w = grey.shape
    mag = np.round(np.sqrt(fx**2 + fy**2), 9)  # the documented tie rule
    bw = np.zeros((h, w))
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            a = round(float(np.degrees(np.arctan2(fy[i, j], fx[i, j]))), 9)
            a = a + 360 if a < 0 else a
            if a < 22.5 or 157.5 <= a < 202.5 or a >= 337.5:
                nb = (mag[i, j + 1], mag[i, j - 1])
            elif 22.5 <= a < 67.5 or 202.5 <= a < 247.5:
                nb = (mag[i + 1, j - 1], mag[i - 1, j + 1])
            elif 67.5 <= a < 112.5 or 247.5 <= a < 292.5:
                nb = (mag[i + 1, j], mag[i - 1, j])
            else:
                nb = (mag[i + 1, j + 1], mag[i - 1, j - 1])
            bw[i, j] = mag[i, j] * (mag[i, j] == max(mag[i, j], *nb))
    lo, hi = 0.075 * bw.max(), 0.175 * bw.max()
    out = np.zeros((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            if bw[i, j] < lo:
                continue
            if bw[i, j] > hi:
                out[i, j] = 255
                continue
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ii, jj = i + di, j + dj
                    if (di or dj) and 0 <= ii < h and 0 <= jj < w and bw[ii, jj] > hi:
                        out[i, j] = 255
    return out


def _square(n=20, lo=6, hi=14, value=255):
    img = np.zeros((n, n, 3), np.uint8)
    img[lo:hi, lo:hi] = value
    return img


def test_matches_pixel_loop_reference():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (4, 5, 3))
    img = np.kron(cells, np.ones((4, 4, 1))) + rng.normal(0, 10, (16, 20, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for x in (img, _square(), rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)):
        np.testing.assert_array_equal(canny(x), loop_reference(x))


def test_step_edge_is_at_the_step():
    img = np.zeros((10, 24, 3), np.uint8)
    img[:, 10:14] = 200  # a bright bar: steps between columns 9|10 and 13|14
    e = canny(img)
    assert e.dtype == np.uint8 and set(np.unique(e)) <= {0, 255}
    for row in range(3, 7):  # rows away from the zero-padded top/bottom
        cols = set(np.flatnonzero(e[row]))
        # A symmetric blurred step has equal magnitude on both sides: both survive NMS (>=).
        assert cols == {9, 10, 13, 14}, (row, cols)
    assert not e[:, :7].any() and not e[:, 17:].any()


def test_square_edges_trace_its_boundary():
    e = canny(_square()) > 0
    yy, xx = np.mgrid[0:20, 0:20]
    # distance (Chebyshev) to the square's boundary band {5, 6} x ... {13, 14}
    inside = (yy >= 6) & (yy < 14) & (xx >= 6) & (xx < 14)
    ring = (yy >= 5) & (yy <= 14) & (xx >= 5) & (xx <= 14) & ~((yy >= 7) & (yy < 13) & (xx >= 7)
                                                              & (xx < 13))  # fmt: skip
    assert e[ring].sum() > 0 and not e[~ring].any()
    for k in range(7, 13):  # every side is traced along its length
        assert e[5:7, k].any() and e[13:15, k].any() and e[k, 5:7].any() and e[k, 13:15].any()
    assert not e[inside & ~ring].any()


def test_uniform_image_has_no_edges_and_contrast_invariance():
    assert not canny(np.full((8, 8, 3), 77, np.uint8)).any()
    # Thresholds are relative to the maximum: scaling the contrast changes nothing.
    np.testing.assert_array_equal(canny(_square(value=40)), canny(_square(value=240)))


def test_hysteresis_thresholds():
    bw = np.zeros((7, 9))
    bw[1, 1] = 100.0  # max: T_high = 17.5, T_low = 7.5
    bw[1, 2] = 10.0  # weak next to strong -> edge
    bw[5, 5] = 10.0  # weak, isolated -> no edge
    bw[2, 2] = 7.5  # exactly T_low, next to strong -> edge (>= T_low)
    bw[2, 0] = 7.4  # below T_low next to strong -> no edge
    bw[5, 7] = 17.5  # exactly T_high is not strong; isolated -> no edge
    bw[3, 3] = 17.6  # strong, alone -> edge
    bw[4, 4] = 8.0  # weak next to the strong 17.6 (diagonal) -> edge
    got = hysteresis(bw)
    want = {(1, 1), (1, 2), (2, 2), (3, 3), (4, 4)}
    assert set(zip(*np.nonzero(got), strict=True)) == want


@pytest.mark.parametrize("preprocess", ["fixed", "resize_and_crop"])
def test_cli_edge_tree_equals_on_the_fly_edges(tmp_path, preprocess):
    write_split("custom", tmp_path, "train", ["a", "b"], size=(12, 20), label_nc=5)
    write_split("custom", tmp_path, "val", ["c"], size=(12, 20), label_nc=5, seed=1)
    argv = ["--dataset=custom", f"--root={tmp_path}", "--image_size=8,16",
            f"--preprocess={preprocess}", "--load_size=18"]  # fmt: skip
    assert edges_main(argv) == 0
    for split, stem, train in (("train", "a", True), ("train", "b", True), ("val", "c", False)):
        stored = np.asarray(Image.open(tmp_path / split / "edges" / f"{stem}.png"))
        size = (18, 18) if train and preprocess == "resize_and_crop" else (8, 16)
        assert stored.shape == size
        # The pipeline's on-the-fly edge at the same pre-crop size (no crop, no flip).
        rec = {
            "stem": stem,
            "image": os.path.join(tmp_path, split, "images", f"{stem}.png"),
            "label": os.path.join(tmp_path, split, "labels", f"{stem}.png"),
        }
        ex = ExampleTransform(DataSpec("custom", size, label_nc=5), train=False)(rec)
        np.testing.assert_array_equal(ex["edge"][..., 0], stored / 127.5 - 1.0)

    # Whole pipeline, crops and flips included: precomputed == on the fly, batch for batch.
    def batches(edges, train):
        c = base_config()
        c.dataset.update(name="custom", root=str(tmp_path), image_size=(8, 16), label_nc=5,
                         preprocess=preprocess, load_size=18, edges=edges,
                         no_instance=True)  # fmt: skip
        c.batch_size = 1
        if train:
            it = make_train_iterator(c, process_index=0, process_count=1)
            return [next(it) for _ in range(4)]
        return list(make_eval_iterator(c, process_index=0, process_count=1))

    for train in (True, False):
        for a, b in zip(batches("on_the_fly", train), batches("precomputed", train), strict=True):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
