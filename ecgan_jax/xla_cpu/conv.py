"""2-D convolution with a faster weight gradient on XLA:CPU (docs/PERFORMANCE_NOTES.md).

XLA:CPU lowers the weight gradient of a convolution to a convolution whose "kernel" is the
whole activation map, which runs about 10× slower than the forward pass at 256×512, and
pathologically slowly for some shapes (the discriminator's 4×4 stride-1 256→512 layer on a
33×65 map: 83 s against 0.4 s here, batch 4, 2 cores). Here the
weight gradient is computed instead as a sum over blocks of output rows of
`cols(x)ᵀ · dy`: the (k·k·Cin, N) matrix of shifted input windows, built channel-major so
the product is a plain (K, N)·(N, Cout) matmul, block by block so that memory stays small
(about `block_pixels` pixels per block). The input gradient and the forward pass are XLA's own.
For stride-1 layers with fewer output than input channels (SPADE's γ/β convs, the
generator's up-path convs) the windows are taken of dy instead (`_weight_grad_dy_windows`):
a smaller matrix, and x is read in place (BENCHMARKS.md, "Seventh session"). The result
equals `jax.vjp` of `lax.conv_general_dilated` to float32 rounding.

`conv2d(x, kernel, stride, padding, impl)` with impl "blocked" (this custom VJP, the default;
1×1 stride-1 convs become a plain matmul, faster on XLA:CPU in both passes) or "xla" (plain
lax, for comparison). GPU/TPU never use it: there XLA uses the accelerator's convolution units.
NHWC inputs, HWIO kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
BLOCK_ELEMENTS = 1 << 23  # at most 32 MB of float32 window matrix per weight-gradient block


def _conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=DIMENSION_NUMBERS,
    )


def _windows(t, offsets, rows, cols, stride):
    """Channel-major (C, B, R, W) -> (len(offsets)·C, B·rows·cols): for each (r0, c0) of
    `offsets` the rows×cols window starting there, every `stride`-th pixel."""
    c, b = t.shape[:2]
    taps = [
        jax.lax.slice(
            t,
            (0, 0, r0, c0),
            (c, b, r0 + (rows - 1) * stride + 1, c0 + (cols - 1) * stride + 1),
            (1, 1, stride, stride),
        )
        for r0, c0 in offsets
    ]
    return jnp.stack(taps, axis=0).reshape(len(offsets) * c, -1)


def _sum_of_block_products(nblocks, operands, shape):
    """Σ_i lhs_i · rhs_i over `nblocks` blocks (a scan), with (lhs_i, rhs_i) = operands(i)."""

    def block(acc, i):
        lhs, rhs = operands(i)
        return acc + jnp.matmul(lhs, rhs, preferred_element_type=jnp.float32), None

    acc, _ = jax.lax.scan(block, jnp.zeros(shape, jnp.float32), jnp.arange(nblocks))
    return acc


def _block_rows(window_rows, shape, block_pixels):
    """(rows per block, blocks) over the height of the (B, H, W, C) map the blocks walk.

    A block's window matrix holds window_rows × pixels values: bound that, not just pixels, so
    wide layers (1024 channels: 9216 window rows) do not build 300 MB blocks.
    """
    b, h, w, _ = shape
    pixels = min(block_pixels, max(1, BLOCK_ELEMENTS // window_rows))
    rows = max(1, min(h, pixels // max(b * w, 1)))
    return rows, -(-h // rows)


def _weight_grad(x, dy, kernel_shape, stride, padding, block_pixels):
    """dL/dW (HWIO) = Σ_{b,p} window(x)[b,p,(i,j,c)] · dy[b,p,o], blocked over output rows."""
    kh, kw, cin, cout = kernel_shape
    b, ho, wo, _ = dy.shape
    rows, nblocks = _block_rows(kh * kw * cin, dy.shape, block_pixels)
    # Pad so every block reads a full window: zero rows of dy contribute nothing.
    dy = jnp.pad(dy, ((0, 0), (0, nblocks * rows - ho), (0, 0), (0, 0)))
    in_rows = (nblocks * rows - 1) * stride + kh
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    xp = jnp.pad(xp, ((0, 0), (0, max(0, in_rows - xp.shape[1])), (0, 0), (0, 0)))
    xt = jnp.transpose(xp, (3, 0, 1, 2))  # (Cin, B, Hp, Wp): channel-major windows
    span_r = (rows - 1) * stride + kh
    offsets = [(a, c) for a in range(kh) for c in range(kw)]

    def operands(i):
        xs = jax.lax.dynamic_slice_in_dim(xt, i * rows * stride, span_r, axis=2)
        ds = jax.lax.dynamic_slice_in_dim(dy, i * rows, rows, axis=1)
        return _windows(xs, offsets, rows, wo, stride), ds.reshape(-1, cout)

    acc = _sum_of_block_products(nblocks, operands, (kh * kw * cin, cout))
    return acc.reshape(kh, kw, cin, cout)


def _weight_grad_dy_windows(x, dy, kernel_shape, padding, block_pixels):
    """Stride-1 dL/dW from windows of dy instead of x: for layers with fewer outputs than inputs.

    With stride 1, dW[a,c] = Σ_{b,u,v} x[b,u,v]ᵀ · dy[b, u+p-a, v+p-c] (dy zero outside its
    range), so the window matrix can be built from dy, padded by k-1-p on each side, against
    the unpadded input: (kh·kw·Cout, N)·(N, Cin). It holds kh·kw·Cout instead of kh·kw·Cin
    values per pixel (SPADE's γ/β convs: 128 → 32 channels at ngf 16, 4× fewer), x needs
    neither padding nor a channel-major copy, and the product has the same FLOPs.
    """
    kh, kw, cin, cout = kernel_shape
    b, h, w, _ = x.shape
    rows, nblocks = _block_rows(kh * kw * cout, x.shape, block_pixels)
    # Zero rows of x past its end contribute nothing; dy gets k-1-p zero rows/columns around it
    # (so every tap's window stays in range) and as many more at the bottom as x got.
    x = jnp.pad(x, ((0, 0), (0, nblocks * rows - h), (0, 0), (0, 0)))
    ph, pw = kh - 1 - padding, kw - 1 - padding
    dyp = jnp.pad(dy, ((0, 0), (ph, ph + nblocks * rows - h), (pw, pw), (0, 0)))
    dyt = jnp.transpose(dyp, (3, 0, 1, 2))  # (Cout, B, H + kh - 1, W + kw - 1)
    offsets = [(kh - 1 - a, kw - 1 - c) for a in range(kh) for c in range(kw)]

    def operands(i):
        ds = jax.lax.dynamic_slice_in_dim(dyt, i * rows, rows + kh - 1, axis=2)
        xs = jax.lax.dynamic_slice_in_dim(x, i * rows, rows, axis=1)
        return _windows(ds, offsets, rows, w, 1), xs.reshape(-1, cin)

    acc = _sum_of_block_products(nblocks, operands, (kh * kw * cout, cin))
    return jnp.transpose(acc.reshape(kh, kw, cout, cin), (0, 1, 3, 2))


def _use_dy_windows(kernel_shape, stride, padding) -> bool:
    """Whether `_weight_grad_dy_windows` applies and builds the smaller window matrix."""
    kh, kw, cin, cout = kernel_shape
    return stride == 1 and padding <= min(kh, kw) - 1 and cout < cin


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_blocked(x, kernel, stride, padding, block_pixels):
    return _conv(x, kernel, stride, padding)


def _fwd(x, kernel, stride, padding, block_pixels):
    return _conv(x, kernel, stride, padding), (x, kernel)


def _bwd(stride, padding, block_pixels, res, dy):
    x, kernel = res
    _, input_vjp = jax.vjp(lambda t: _conv(t, kernel, stride, padding), x)
    (dx,) = input_vjp(dy)
    if _use_dy_windows(kernel.shape, stride, padding):
        dw = _weight_grad_dy_windows(x, dy, kernel.shape, padding, block_pixels)
    else:
        dw = _weight_grad(x, dy, kernel.shape, stride, padding, block_pixels)
    # dx is released only with dw: the backward pass then finishes each layer (and frees its
    # input and output cotangent) before moving on to the previous one, instead of running
    # the whole dx chain first and keeping every layer's x and dy for the weight gradients
    # (BENCHMARKS.md, "Train step").
    dx, dw = jax.lax.optimization_barrier((dx, dw))
    return dx, dw.astype(kernel.dtype)


_conv_blocked.defvjp(_fwd, _bwd)


def conv2d(
    x,
    kernel,
    *,
    stride: int = 1,
    padding: int = 0,
    impl: str = "blocked",
    block_pixels: int = 8192,
):
    """NHWC × HWIO convolution with symmetric `padding`; impl "blocked" or "xla".

    `block_pixels` bounds the pixels per block of the blocked weight gradient (its memory);
    blocks of wide layers are smaller still (BLOCK_ELEMENTS).
    """
    if impl not in ("xla", "blocked"):
        raise ValueError(f"conv impl {impl!r}; allowed: xla, blocked")
    if impl == "xla":
        return _conv(x, kernel, stride, padding)
    if kernel.shape[:2] == (1, 1) and stride == 1 and padding == 0:
        # A 1×1 conv is a matmul over pixels; XLA:CPU runs it ~3× faster as a dot than as a
        # convolution (BENCHMARKS.md, "Model"), and its gradients are dots too.
        return jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
    return _conv_blocked(x, kernel, stride, padding, block_pixels)
