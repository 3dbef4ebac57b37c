"""Conv + BatchNorm and ResNet building blocks of the ported evaluation networks (§D.5).

Shared by `drn.py` (DRN-D-105), `upernet.py` (CSAILVision ResNet-101 encoder), `deeplab.py`
(kazuto1011 ResNet-101) and `inception.py` (pytorch-fid InceptionV3). NHWC float32, convs
at `HIGHEST` precision by default (true float32 on GPU/TPU too), BatchNorm with running
statistics only (these networks are never trained here).

* `conv(features, kernel, ...)`: an `nn.Conv` with PyTorch's symmetric padding (default
  dilation * (kernel // 2), "same" for odd kernels), no bias unless asked.
* `batch_norm(name, epsilon=1e-5)`: `nn.BatchNorm(use_running_average=True)`.
* `ConvBN`: a conv named `conv` and its BatchNorm named `bn` (+ ReLU) as one module, the
  layout of kazuto1011's `_ConvBnReLU` and pytorch-fid's `BasicConv2d` state-dict keys.
* `Bottleneck`, `BottleneckLayer`: torchvision's ResNet Bottleneck (1x1 -> 3x3 carrying the
  stride and dilation -> 1x1 x4, BN after each, flat names `conv{1,2,3}`, `bn{1,2,3}`,
  `downsample_{conv,bn}`), as fyu/drn and CSAILVision use it; `torch_name` gives the
  PyTorch state-dict name of their submodules.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax

HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv(
    features: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    dilation: int = 1,
    *,
    padding: int | tuple[int, int] | None = None,
    name: str | None = None,
    precision: jax.lax.Precision | None = HIGHEST,
    bias: bool = False,
) -> nn.Conv:
    """`nn.Conv2d(cin, features, kernel, stride, padding, dilation, bias=bias)` in Flax.

    `padding` (rows, cols) defaults to dilation * (kernel // 2) on each side.
    """
    kh, kw = _pair(kernel)
    ph, pw = (dilation * (kh // 2), dilation * (kw // 2)) if padding is None else _pair(padding)
    return nn.Conv(
        features,
        (kh, kw),
        strides=(stride, stride),
        padding=((ph, ph), (pw, pw)),
        kernel_dilation=(dilation, dilation),
        use_bias=bias,
        precision=precision,
        name=name,
    )


def batch_norm(name: str, epsilon: float = 1e-5) -> nn.BatchNorm:
    """BatchNorm over the channels with running statistics (PyTorch's eval mode)."""
    return nn.BatchNorm(use_running_average=True, epsilon=epsilon, name=name)


class ConvBN(nn.Module):
    """conv `conv` (no bias) + BatchNorm `bn` (+ ReLU); `kernel`, `padding` int or (h, w)."""

    features: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0
    dilation: int = 1
    relu: bool = True
    epsilon: float = 1e-5
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        x = conv(
            self.features,
            self.kernel,
            self.stride,
            self.dilation,
            padding=self.padding,
            name="conv",
            precision=self.precision,
        )(x)
        x = batch_norm("bn", self.epsilon)(x)
        return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels), BN after each, residual, ReLU."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        out = nn.relu(batch_norm("bn1")(conv(self.planes, 1, name="conv1", precision=p)(x)))
        out = conv(self.planes, 3, self.stride, self.dilation, name="conv2", precision=p)(out)
        out = nn.relu(batch_norm("bn2")(out))
        out = batch_norm("bn3")(conv(self.planes * 4, 1, name="conv3", precision=p)(out))
        if self.downsample:
            x = conv(self.planes * 4, 1, self.stride, name="downsample_conv", precision=p)(x)
            x = batch_norm("downsample_bn")(x)
        return nn.relu(out + x)


class BottleneckLayer(nn.Module):
    """`blocks` Bottlenecks `block0..`: the first carries the stride (and a downsample when
    the stride or the width changes), all share `dilation` (fyu/drn `_make_layer` with
    `new_level=False`, torchvision `_make_layer`)."""

    planes: int
    blocks: int
    stride: int = 1
    dilation: int = 1
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        downsample = self.stride != 1 or x.shape[-1] != self.planes * 4
        x = Bottleneck(
            self.planes, self.stride, self.dilation, downsample, self.precision, name="block0"
        )(x)
        for b in range(1, self.blocks):
            x = Bottleneck(self.planes, 1, self.dilation, False, self.precision, name=f"block{b}")(
                x
            )
        return x


def torch_name(module: str) -> str:
    """PyTorch name of a `BottleneckLayer` / `Bottleneck` submodule: `block{b}` -> `{b}`
    (an `nn.Sequential` index), `downsample_conv` / `downsample_bn` -> `downsample.0` /
    `downsample.1`; any other name is the same in both."""
    if g := re.fullmatch(r"block(\d+)", module):
        return g[1]
    return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(module, module)
