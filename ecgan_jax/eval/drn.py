"""DRN-D-105 segmenter for Cityscapes mIoU (fyu/drn `DRNSeg('drn_d_105', 19)`), §5, §D.5.

    python -m ecgan_jax.eval.drn --convert drn-d-105_ms_cityscapes.pth --out weights/drn.npz

    segmenter = drn_segmenter(load_drn("weights/drn.npz"))   # a segmentation.Segmenter
    # images (B, H, W, 3) in [-1, 1], H and W multiples of 8 -> logits (B, H, W, 19)

Architecture (fyu/drn `drn.py`, arch "D", Bottleneck, layers [1, 1, 3, 4, 23, 3, 1, 1],
channels (16, 32, 64, 128, 256, 512, 512, 512)), all convs without bias, BatchNorm eps 1e-5
with running statistics, NHWC:
* layer0: 7x7 conv 3->16 + BN + ReLU; layer1: 3x3 conv 16->16; layer2: 3x3 conv 16->32 /2;
* layer3: 3 Bottlenecks (planes 64, out 256, /2); layer4: 4 (128 -> 512, /2);
  layer5: 23 (256 -> 1024, dilation 2); layer6: 3 (512 -> 2048, dilation 4); the first block
  of each has a 1x1 conv + BN downsample; a Bottleneck's 3x3 conv carries the stride and the
  dilation (padding = dilation);
* layer7: 3x3 conv 2048->512 dilation 2 + BN + ReLU; layer8: 3x3 conv 512->512 + BN + ReLU;
* `DRNSeg`: `seg` 1x1 conv 512->19 with bias, then `up`, a depthwise ConvTranspose2d(19, 19,
  16, stride 8, padding 4, groups 19, no bias) initialised to bilinear ×8 upsampling
  (output stride 8 -> full resolution). DRNSeg's LogSoftmax is left out (same arg-max).
The segmenter maps [-1, 1] images to [0, 1] and normalises them with the Cityscapes mean/std
of fyu/drn's `datasets/cityscapes/info.json`, as its test loader does (single scale).

Converter: DRNSeg's state dict keys are `base.{i}...` (`base` = DRN children 0..8 = layer0..8):
`base.0.0.weight` / `base.0.1.{weight,bias,running_mean,running_var}` (conv / BN of the
conv-layer groups 0, 1, 2, 7, 8; conv j at index 3j, its BN at 3j + 1),
`base.3.0.conv1.weight`, `base.3.0.bn1.*`, `base.3.0.downsample.{0,1}.*` (Bottlenecks),
`seg.weight`, `seg.bias`, `up.weight`. A `module.` prefix and a `{"state_dict": ...}` wrapper
are removed; `*.num_batches_tracked` dropped.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.eval import converter
from ecgan_jax.eval.backbone import HIGHEST, BottleneckLayer, batch_norm, conv, torch_name
from ecgan_jax.eval.backbone import Bottleneck as Bottleneck  # fyu/drn's block, re-exported
from ecgan_jax.eval.segmentation import Segmenter
from ecgan_jax.interop import state_dict as sd_lib

FORMAT = "ecgan_jax/drn_d_105_seg/v1"
CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)
CONVERT_COMMAND = (
    "python -m ecgan_jax.eval.drn --convert drn-d-105_ms_cityscapes.pth --out FILE.npz  "
    "(fyu/drn's released Cityscapes DRN-D-105 weights)"
)
LAYERS_D_105 = (1, 1, 3, 4, 23, 3, 1, 1)
CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
_DROPPED = converter.BN_COUNTER


class ConvLayers(nn.Module):
    """fyu/drn `_make_conv_layers`: `convs` x (3x3 conv + BN + ReLU); stride on the first."""

    features: int
    convs: int = 1
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        for j in range(self.convs):
            stride = self.stride if j == 0 else 1
            x = conv(
                self.features,
                self.kernel,
                stride,
                self.dilation,
                name=f"seq_conv{j}",
                precision=self.precision,
            )(x)
            x = nn.relu(batch_norm(f"seq_bn{j}")(x))
        return x


def bilinear_up_kernel(num_classes: int, size: int = 16) -> np.ndarray:
    """fyu/drn `fill_up_weights` as a torch ConvTranspose2d weight (K, 1, size, size)."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = 1 - np.abs(np.arange(size) / f - c)
    return np.broadcast_to(np.outer(r, r), (num_classes, 1, size, size)).astype(np.float32)


class UpsampleX8(nn.Module):
    """Depthwise ConvTranspose2d(K, K, 16, stride 8, padding 4, groups K, no bias).

    As a conv: the input dilated by 8, padded by 16 - 1 - 4 = 11 on each side, with the
    flipped kernel (the converter flips it). Output size = 8 x input size.
    """

    num_classes: int
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        k = self.num_classes

        def init(_, shape, dtype=jnp.float32):
            return jnp.asarray(sd_lib.to_flax(sd_lib.DECONV, bilinear_up_kernel(k)), dtype)

        kernel = self.param("kernel", init, (16, 16, 1, k))
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=((11, 11), (11, 11)),
            lhs_dilation=(8, 8),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=k,
            precision=self.precision,
        )


class DRNSeg(nn.Module):
    """DRN-D-105 base + 1x1 `seg` conv + x8 `up`: normalised (B, H, W, 3) -> logits (B, H, W, K).

    H and W must be multiples of 8 for the output to have the input's size.
    """

    num_classes: int = 19
    layers: tuple[int, ...] = LAYERS_D_105
    channels: tuple[int, ...] = CHANNELS
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"DRNSeg expects (B, H, W, 3) images, got {x.shape}")
        c, n, p = self.channels, self.layers, self.precision
        x = x.astype(jnp.float32)
        x = ConvLayers(c[0], 1, kernel=7, precision=p, name="layer0")(x)
        x = ConvLayers(c[0], n[0], precision=p, name="layer1")(x)
        x = ConvLayers(c[1], n[1], stride=2, precision=p, name="layer2")(x)
        x = BottleneckLayer(c[2], n[2], stride=2, precision=p, name="layer3")(x)
        x = BottleneckLayer(c[3], n[3], stride=2, precision=p, name="layer4")(x)
        x = BottleneckLayer(c[4], n[4], dilation=2, precision=p, name="layer5")(x)
        x = BottleneckLayer(c[5], n[5], dilation=4, precision=p, name="layer6")(x)
        x = ConvLayers(c[6], n[6], dilation=2, precision=p, name="layer7")(x)
        x = ConvLayers(c[7], n[7], precision=p, name="layer8")(x)
        x = conv(self.num_classes, 1, name="seg", precision=p, bias=True)(x)
        return UpsampleX8(self.num_classes, p, name="up")(x)


# --------------------------------------------------------------------------- weights


@functools.cache
def abstract_variables(num_classes: int = 19):
    return converter.abstract_of(DRNSeg(num_classes))


def init_drn(seed: int = 0, num_classes: int = 19) -> dict:
    """Random variables in numpy (tests, benchmarks): He-normal kernels, identity BN,
    bilinear `up`, zero `seg` bias."""

    def up_kernel(names, _):
        if names[-2:] == ["up", "kernel"]:
            return sd_lib.to_flax(sd_lib.DECONV, bilinear_up_kernel(num_classes))
        return None

    return converter.random_variables(abstract_variables(num_classes), seed, up_kernel)


_LEAF_TO_TORCH = sd_lib.CONV_BN_LEAVES


def torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """fyu/drn DRNSeg key and conversion kind of a Flax leaf."""
    *modules, leaf = path
    name, kind = _LEAF_TO_TORCH[(collection, leaf)]
    parts = []
    for m in modules:
        if g := re.fullmatch(r"layer(\d)", m):
            parts.append(f"base.{g[1]}")
        elif g := re.fullmatch(r"seq_conv(\d+)", m):
            parts.append(str(3 * int(g[1])))
        elif g := re.fullmatch(r"seq_bn(\d+)", m):
            parts.append(str(3 * int(g[1]) + 1))
        else:
            parts.append(torch_name(m))  # a Bottleneck's: block{b}, downsample, conv1, ...
    if modules == ["up"]:
        kind = sd_lib.DECONV
    return ".".join((*parts, name)), kind


def convert_state_dict(
    state_dict: dict[str, np.ndarray], source: str = "state dict", num_classes: int = 19
) -> dict:
    """Flax variables from a fyu/drn `DRNSeg('drn_d_105', num_classes)` state dict."""
    return sd_lib.convert_state_dict(
        state_dict,
        abstract_variables(num_classes),
        torch_key,
        dropped=_DROPPED,
        source=source,
    )


def convert_file(src: str, out: str, num_classes: int = 19) -> None:
    """Converts fyu/drn's DRN-D-105 `.pth` (or `.npz`) to this project's `.npz` (replacing
    `out`), written whole or not at all (a temporary sibling renamed into place)."""

    def convert():
        return convert_state_dict(sd_lib.read_state_dict(src), src, num_classes)

    converter.save_converted(out, convert, f"{FORMAT}/{num_classes}", overwrite=True)


def load_drn(path: str, num_classes: int = 19) -> dict:
    """Variables ({params, batch_stats}, jax arrays) of a file written by the converter."""
    return converter.load_converted(
        path, abstract_variables(num_classes), f"{FORMAT}/{num_classes}", CONVERT_COMMAND
    )


def drn_segmenter(
    variables,
    *,
    num_classes: int = 19,
    mean: Sequence[float] = CITYSCAPES_MEAN,
    std: Sequence[float] = CITYSCAPES_STD,
) -> Segmenter:
    """A `Segmenter` for images in [-1, 1]: to [0, 1], (x - mean) / std, DRNSeg logits."""
    model = DRNSeg(num_classes)
    mean_a = np.asarray(mean, np.float32)
    std_a = np.asarray(std, np.float32)

    def apply_fn(v, images):
        x = (images.astype(jnp.float32) + 1.0) * 0.5
        return model.apply(v, (x - mean_a) / std_a)

    return Segmenter(apply_fn, variables, num_classes, name="drn_d_105")


def main(argv: Sequence[str] | None = None) -> None:
    converter.converter_main(
        argv,
        prog="python -m ecgan_jax.eval.drn",
        description="Convert fyu/drn's DRN-D-105 Cityscapes weights to a local .npz.",
        sources="PTH",
        sources_help="drn-d-105_ms_cityscapes.pth (or .npz)",
        classes=19,
        refuse_existing=False,
        run=lambda a: convert_file(a.convert, a.out, a.classes),
    )


if __name__ == "__main__":
    main()
