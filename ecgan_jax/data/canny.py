"""Canny edge maps as the authors' MATLAB script computes them (docs/DESIGN.md §7, §D.6).

`canny(rgb)` maps an (H, W, 3) uint8 RGB image (or an (H, W) grey one) to an (H, W) uint8 map of
0 / 255, vectorised in numpy (no per-pixel Python loop):

1. grey = MATLAB `rgb2gray` weights on 0..255 doubles (no rounding to uint8);
2. 5x5 Gaussian, the standard /159 kernel (sigma ~ 1.4), MATLAB `conv2(..., 'same')` (zero pad);
3. Sobel with Gx = [-1 0 1; -2 0 2; -1 0 1], Gy = [1 2 1; 0 0 0; -1 -2 -1], also `conv2 'same'`;
4. direction atan2(Gy, Gx) quantised to 0 / 45 / 90 / 135 degrees (mod 180, bins of 45
   centred on them); directions (degrees) and magnitudes are rounded to 1e-9 first, so that
   exact ties of symmetric shapes do not hang on the float summation order;
5. non-maximum suppression on interior pixels only: a pixel survives when its magnitude is >=
   both neighbours along the quantised direction (0: left/right, 45: (i+1, j-1)/(i-1, j+1),
   90: up/down, 135: (i+1, j+1)/(i-1, j-1)); border pixels are 0;
6. magnitude x NMS mask;
7. thresholds T_low = 0.075 max, T_high = 0.175 max: > T_high is an edge; in [T_low, T_high] is
   an edge when any 8-neighbour is > T_high (one pass, no connectivity tracking);
8. uint8 0 / 255.

`python -m ecgan_jax.data.edges` (edges.py) writes the same maps into an edge tree.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# MATLAB rgb2gray: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
GAUSS_5x5 = (
    np.array(
        [
            [2, 4, 5, 4, 2],
            [4, 9, 12, 9, 4],
            [5, 12, 15, 12, 5],
            [4, 9, 12, 9, 4],
            [2, 4, 5, 4, 2],
        ],
        np.float64,
    )
    / 159.0
)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)
T_LOW, T_HIGH = 0.075, 0.175
ROUND_DECIMALS = 9  # gradients are <= ~3000: far above float64 noise, far below real detail


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) array of 0..255 values -> (H, W) float64 grey, MATLAB weights."""
    x = np.asarray(rgb, np.float64)
    if x.ndim == 2:
        return x
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"canny expects an (H, W, 3) RGB or (H, W) grey image, got {x.shape}")
    return x @ RGB2GRAY


def _conv_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # MATLAB conv2(x, k, 'same'): true convolution (kernel flipped), zeros outside.
    return ndimage.convolve(x, kernel, mode="constant", cval=0.0)


def gradients(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blurred Sobel gradients (gx, gy), each (H, W) float64 (steps 2-3)."""
    blurred = _conv_same(grey, GAUSS_5x5)
    return _conv_same(blurred, SOBEL_X), _conv_same(blurred, SOBEL_Y)


def quantised_direction(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Direction of (gx, gy) in degrees quantised to {0, 45, 90, 135} (step 4), int array."""
    # Rounded so that directions that are exactly on a bin boundary in exact arithmetic (the
    # diagonals of symmetric shapes) do not depend on the summation order's last ulp.
    angle = np.round(np.degrees(np.arctan2(gy, gx)), ROUND_DECIMALS) % 180.0
    q = np.zeros(angle.shape, np.int32)
    q[(angle >= 22.5) & (angle < 67.5)] = 45
    q[(angle >= 67.5) & (angle < 112.5)] = 90
    q[(angle >= 112.5) & (angle < 157.5)] = 135
    return q


def suppressed_magnitude(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Magnitude times the non-maximum-suppression mask (steps 4-6), (H, W) float64."""
    # Rounded so that exact ties (both sides of a symmetric step) stay ties whatever the
    # convolution's summation order; the survivors are then >= both neighbours.
    mag = np.round(np.hypot(gx, gy), ROUND_DECIMALS)
    h, w = mag.shape
    out = np.zeros_like(mag)
    if h < 3 or w < 3:
        return out
    q = quantised_direction(gx, gy)[1:-1, 1:-1]
    c = mag[1:-1, 1:-1]

    def at(di, dj):  # magnitude of neighbour (i + di, j + dj) for every interior pixel
        return mag[1 + di : h - 1 + di, 1 + dj : w - 1 + dj]

    # (neighbour a, neighbour b) per quantised direction.
    pairs = {0: ((0, 1), (0, -1)), 45: ((1, -1), (-1, 1)), 90: ((1, 0), (-1, 0))}
    pairs[135] = ((1, 1), (-1, -1))
    keep = np.zeros(c.shape, bool)
    for direction, (a, b) in pairs.items():
        keep |= (q == direction) & (c >= at(*a)) & (c >= at(*b))
    out[1:-1, 1:-1] = c * keep
    return out


def hysteresis(bw: np.ndarray, t_low: float = T_LOW, t_high: float = T_HIGH) -> np.ndarray:
    """One-pass 8-neighbour hysteresis of `bw` (step 7); bool (H, W)."""
    peak = bw.max() if bw.size else 0.0
    lo, hi = t_low * peak, t_high * peak
    strong = bw > hi
    padded = np.pad(strong, 1)
    h, w = bw.shape
    near_strong = np.zeros_like(strong)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                near_strong |= padded[1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
    return strong | ((bw >= lo) & near_strong)


def canny(image: np.ndarray, t_low: float = T_LOW, t_high: float = T_HIGH) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) grey, values 0..255 -> (H, W) uint8 edge map of 0 / 255."""
    gx, gy = gradients(rgb2gray(image))
    edges = hysteresis(suppressed_magnitude(gx, gy), t_low, t_high)
    return edges.astype(np.uint8) * np.uint8(255)
