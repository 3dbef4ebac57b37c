"""PyTorch-exact resampling and pooling for the ported segmenters (UperNet, DeepLab-v2), §D.5.

All functions take NHWC float arrays and have static output sizes (they run under `jit`):

* `resize_bilinear(x, size, scale_factor=None)`: `F.interpolate(mode="bilinear",
  align_corners=False)`, no antialiasing. With `scale_factor` the source coordinates use
  1 / scale_factor, as PyTorch does when `F.interpolate` is given a scale factor (its output
  size is floor(n * scale_factor), `resized_size`), not n_in / n_out.
* `resize_antialiased(x, size)`: PIL's `Image.resize(BILINEAR)` (a triangle filter widened by
  the scale when downsampling), i.e. `F.interpolate(..., antialias=True)`; equal to
  `resize_bilinear` when upsampling. CSAILVision resizes its test images this way.
* `adaptive_avg_pool(x, size)`: `nn.AdaptiveAvgPool2d`: bin i of n covers
  [floor(i n_in / n), ceil((i + 1) n_in / n)).
* `max_pool(x, window, stride, padding, ceil_mode=False)`: `nn.MaxPool2d` with -inf padding,
  including `ceil_mode`'s rule that the last window must start inside the padded input.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def resized_size(n: int, scale_factor: float) -> int:
    """Output length of `F.interpolate(scale_factor=s)` on an input of length n."""
    return int(math.floor(n * scale_factor))


def bilinear_matrix(n_in: int, n_out: int, scale_factor: float | None = None) -> np.ndarray:
    """(n_out, n_in) float32 weights of PyTorch's bilinear rule, align_corners=False.

    src = (dst + 0.5) * scale - 0.5 with scale = n_in / n_out (or 1 / scale_factor), clamped
    below at 0; the neighbours are floor(src) and min(floor(src) + 1, n_in - 1). The
    coordinates are rounded to float32 as PyTorch computes them for float32 inputs (the same
    rule as `inception.bilinear_matrix`, which has no scale factor).
    """
    f32 = np.float32
    scale = f32(n_in) / f32(n_out) if scale_factor is None else f32(1.0 / scale_factor)
    dst = np.arange(n_out, dtype=np.float64)
    # One float32 rounding of scale * (dst + 0.5) - 0.5 (PyTorch contracts it to an FMA).
    src = np.maximum((np.float64(scale) * (dst + 0.5) - 0.5).astype(f32), f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), f32(1.0) - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def _apply_separable(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(mh, x.dtype), x, precision=HIGHEST)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(mw, x.dtype), x, precision=HIGHEST)


def resize_bilinear(
    x: jax.Array, size: tuple[int, int] | None = None, scale_factor: float | None = None
) -> jax.Array:
    """(B, H, W, C) -> (B, h, w, C) as `F.interpolate(bilinear, align_corners=False)`.

    Give `size` = (h, w), or `scale_factor` (then h = floor(H s), w = floor(W s) and the
    kernel uses 1 / s, PyTorch's rule for a scale factor).
    """
    h, w = x.shape[1], x.shape[2]
    if (size is None) == (scale_factor is None):
        raise ValueError("resize_bilinear: give exactly one of size and scale_factor")
    if scale_factor is not None:
        size = (resized_size(h, scale_factor), resized_size(w, scale_factor))
    elif (h, w) == tuple(size):
        return x
    if min(size) < 1:
        raise ValueError(f"resize_bilinear: output size {tuple(size)} of input {(h, w)} is empty")
    mh = bilinear_matrix(h, size[0], scale_factor)
    mw = bilinear_matrix(w, size[1], scale_factor)
    return _apply_separable(x, mh, mw)


def resize_antialiased(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, H, W, C) -> (B, h, w, C) like PIL's bilinear `Image.resize` (antialiased)."""
    if (x.shape[1], x.shape[2]) == tuple(size):
        return x
    shape = (x.shape[0], *size, x.shape[3])
    return jax.image.resize(x, shape, "linear", antialias=True, precision=HIGHEST)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging weights of `nn.AdaptiveAvgPool2d` along one axis."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """(B, H, W, C) -> (B, s, s, C) (or (B, sh, sw, C)) as `nn.AdaptiveAvgPool2d(size)`."""
    sh, sw = (size, size) if isinstance(size, int) else size
    mh = adaptive_pool_matrix(x.shape[1], sh)
    mw = adaptive_pool_matrix(x.shape[2], sw)
    return _apply_separable(x, mh, mw)


def pool_output_size(n: int, window: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of `nn.MaxPool2d(window, stride, padding, ceil_mode=...)`."""
    span = n + 2 * padding - window
    if span < 0:
        raise ValueError(f"max_pool: input length {n} is shorter than the window {window}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1  # the last window would start in the right padding
    return out


def max_pool(
    x: jax.Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> jax.Array:
    """(B, H, W, C) max pool with -inf padding, as `nn.MaxPool2d`."""
    pads = [(0, 0)]
    for n in x.shape[1:3]:
        out = pool_output_size(n, window, stride, padding, ceil_mode)
        # Right padding that makes reduce_window produce exactly `out` windows.
        pads.append((padding, (out - 1) * stride + window - n - padding))
    pads.append((0, 0))
    if any(hi < 0 for _, hi in pads):  # floor mode may drop trailing rows: crop them
        x = x[:, : x.shape[1] + min(pads[1][1], 0), : x.shape[2] + min(pads[2][1], 0)]
        pads = [(lo, max(hi, 0)) for lo, hi in pads]
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pads
    )
