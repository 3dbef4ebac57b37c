"""DeepLab-v2 ResNet-101 segmenter for COCO-Stuff mIoU (kazuto1011/deeplab-pytorch), §5, §D.5.

    python -m ecgan_jax.eval.deeplab \
        --convert deeplabv2_resnet101_msc-cocostuff164k-100000.pth \
        --out weights/deeplabv2_cocostuff.npz

    segmenter = deeplab_segmenter(load_deeplab("weights/deeplabv2_cocostuff.npz"))
    # images (B, H, W, 3) in [-1, 1] -> logits (B, H, W, 182); labels 0..181, 255 ignored

The released model is `DeepLabV2_ResNet101_MSC(n_classes=182)` trained on COCO-Stuff 164k
(`configs/cocostuff164k.yaml`). NHWC, BatchNorm eps 1e-5 with running statistics, convs
without bias except the ASPP's:
* `layer1` (stem): 7x7 conv 3->64 /2 (padding 3) + BN + ReLU, 3x3 max pool /2 (padding 1,
  `ceil_mode=True`);
* `layer2..5`: [3, 4, 23, 3] MSRA Bottlenecks (out 256, 512, 1024, 2048, mid = out / 4):
  `reduce` 1x1 (carries the stride) + BN + ReLU, `conv3x3` (dilation d, padding d) + BN +
  ReLU, `increase` 1x1 + BN, plus `shortcut` (1x1 conv with the stride + BN) on the first
  block of every layer, identity elsewhere; ReLU after the sum. Strides 1, 2, 1, 1 and
  dilations 1, 1, 2, 4: output stride 8;
* `aspp`: the sum of four 3x3 convs 2048 -> 182 with bias, dilation = padding = 6, 12, 18,
  24 -> logits at /8.
`MSC` (test time): the logits of the input and of the input resized by 0.5 and 0.75
(`F.interpolate(scale_factor=s, bilinear, align_corners=False)`), the latter two resized to
the full-scale logits' size, pixel-wise maximum.

Test protocol (`main.py test` with the 164k dataset, `augment=False`): the image at its own
size, BGR in 0..255 minus the mean (B, G, R) = (104.008, 116.669, 122.675), no std; the MSC
logits resized bilinearly to the label size; arg-max. `deeplab_segmenter` does the same from
[-1, 1] RGB. Labels: COCO-Stuff 164k `stuffthingmaps` ids 0..181, 255 unlabeled (ignored).

Converter: keys of the `MSC` module: `base.layer1.conv1.conv.weight`,
`base.layer1.conv1.bn.{weight,bias,running_mean,running_var}`,
`base.layer{2..5}.block{n}.{reduce,conv3x3,increase,shortcut}.{conv,bn}.*`,
`base.aspp.c{0..3}.{weight,bias}`; `*.num_batches_tracked` dropped, `module.` removed. The
repo's layout before 2019-02 (MSC's child named `scale.`, the shortcut `proj`, the ASPP convs
under `aspp.stages.`) and a bare `DeepLabV2` state dict (no `base.`) are renamed to it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.eval import backbone, converter
from ecgan_jax.eval.backbone import HIGHEST, ConvBN
from ecgan_jax.eval.resampling import max_pool, resize_bilinear
from ecgan_jax.eval.segmentation import Segmenter
from ecgan_jax.interop import state_dict as sd_lib

FORMAT = "ecgan_jax/deeplabv2_resnet101/v1"
COCOSTUFF_CLASSES = 182
COCOSTUFF_IGNORE = 255
MEAN_BGR = (104.008, 116.669, 122.675)  # configs/cocostuff164k.yaml IMAGE.MEAN (B, G, R)
MSC_SCALES = (0.5, 0.75)
N_BLOCKS = (3, 4, 23, 3)
ATROUS_RATES = (6, 12, 18, 24)
CONVERT_COMMAND = (
    "python -m ecgan_jax.eval.deeplab --convert deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
    " --out FILE.npz  (kazuto1011/deeplab-pytorch's v1.0 release)"
)
_DROPPED = converter.BN_COUNTER
# kazuto1011 `_ConvBnReLU` (conv without bias `conv`, BN `bn`, optional ReLU) is `ConvBN`.


class Bottleneck(nn.Module):
    """`_Bottleneck`: reduce (stride) -> conv3x3 (dilation) -> increase, + shortcut, ReLU."""

    features: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        mid, p, d = self.features // 4, self.precision, self.dilation
        h = ConvBN(mid, 1, self.stride, precision=p, name="reduce")(x)
        h = ConvBN(mid, 3, 1, d, d, precision=p, name="conv3x3")(h)
        h = ConvBN(self.features, 1, relu=False, precision=p, name="increase")(h)
        if self.downsample:
            x = ConvBN(self.features, 1, self.stride, relu=False, precision=p, name="shortcut")(x)
        return nn.relu(h + x)


class ResLayer(nn.Module):
    """`_ResLayer`: `block1` (stride, shortcut) then blocks 2..n, all with `dilation`."""

    blocks: int
    features: int
    stride: int = 1
    dilation: int = 1
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        for i in range(self.blocks):
            x = Bottleneck(
                self.features,
                self.stride if i == 0 else 1,
                self.dilation,
                downsample=i == 0,
                precision=self.precision,
                name=f"block{i + 1}",
            )(x)
        return x


class Stem(nn.Module):
    """`_Stem`: `conv1` 7x7 /2 + BN + ReLU, then a ceil-mode 3x3 /2 max pool."""

    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        x = ConvBN(64, 7, 2, 3, precision=self.precision, name="conv1")(x)
        return max_pool(x, 3, 2, 1, ceil_mode=True)


class ASPP(nn.Module):
    """`_ASPP`: sum of 3x3 convs `c{i}` with bias, dilation = padding = rate."""

    num_classes: int
    rates: tuple[int, ...] = ATROUS_RATES
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        out = 0.0
        for i, r in enumerate(self.rates):
            conv = backbone.conv(
                self.num_classes, 3, dilation=r, name=f"c{i}", precision=self.precision, bias=True
            )
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Dilated ResNet-101 + ASPP: BGR-mean-subtracted (B, H, W, 3) -> logits at /8.

    The output has ceil(H / 8)-ish rows (conv /2, ceil-mode pool /2, layer3 /2).
    """

    num_classes: int = COCOSTUFF_CLASSES
    n_blocks: tuple[int, ...] = N_BLOCKS
    rates: tuple[int, ...] = ATROUS_RATES
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"DeepLabV2 expects (B, H, W, 3) images, got {x.shape}")
        p, n = self.precision, self.n_blocks
        x = Stem(p, name="layer1")(x.astype(jnp.float32))
        x = ResLayer(n[0], 256, 1, 1, p, name="layer2")(x)
        x = ResLayer(n[1], 512, 2, 1, p, name="layer3")(x)
        x = ResLayer(n[2], 1024, 1, 2, p, name="layer4")(x)
        x = ResLayer(n[3], 2048, 1, 4, p, name="layer5")(x)
        return ASPP(self.num_classes, self.rates, p, name="aspp")(x)


def msc_logits(model: DeepLabV2, variables, x, scales: Sequence[float] = MSC_SCALES):
    """kazuto1011 `MSC.forward` in eval mode: max over the full and rescaled inputs' logits."""
    logits = model.apply(variables, x)
    size = logits.shape[1:3]
    pyramid = [logits]
    for s in scales:
        pyramid.append(
            resize_bilinear(model.apply(variables, resize_bilinear(x, scale_factor=s)), size)
        )
    return functools.reduce(jnp.maximum, pyramid)


# --------------------------------------------------------------------------- weights


@functools.cache
def abstract_variables(num_classes: int = COCOSTUFF_CLASSES, n_blocks: tuple[int, ...] = N_BLOCKS):
    return converter.abstract_of(DeepLabV2(num_classes, n_blocks))


def init_deeplab(
    seed: int = 0, num_classes: int = COCOSTUFF_CLASSES, n_blocks: tuple[int, ...] = N_BLOCKS
) -> dict:
    """Random variables in numpy (tests, benchmarks): He-normal kernels, identity BN, zero bias."""
    return converter.random_variables(abstract_variables(num_classes, n_blocks), seed)


_LEAF_TO_TORCH = sd_lib.CONV_BN_LEAVES
# The layout before kazuto1011/deeplab-pytorch b88e760 (2019-02) -> today's names.
_LEGACY_RENAMES = (
    (re.compile(r"^scale\."), "base."),
    (re.compile(r"\.proj\."), ".shortcut."),
    (re.compile(r"(^|\.)aspp\.stages\."), r"\1aspp."),
)


def torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """MSC state-dict key (`base.` + the DeepLabV2 module path) and kind of a Flax leaf."""
    *modules, leaf = path
    name, kind = _LEAF_TO_TORCH[(collection, leaf)]
    return ".".join(("base", *modules, name)), kind


def canonical_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The released MSC layout (`base.` ...) from the legacy or bare layouts (see module doc)."""
    renamed = {}
    for k, v in state_dict.items():
        for pattern, new in _LEGACY_RENAMES:  # none of them matches a released key
            k = pattern.sub(new, k)
        renamed[k] = v
    if renamed and not any(k.startswith("base.") for k in renamed):
        renamed = {f"base.{k}": v for k, v in renamed.items()}
    return renamed


def state_dict_shapes(num_classes: int = COCOSTUFF_CLASSES) -> dict[str, tuple]:
    """{key: torch shape}: the released layout the converter expects."""
    return converter.torch_shapes(abstract_variables(num_classes), torch_key)


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    source: str = "state dict",
    num_classes: int = COCOSTUFF_CLASSES,
    n_blocks: tuple[int, ...] = N_BLOCKS,
) -> dict:
    """Flax variables from a kazuto1011 `DeepLabV2_ResNet101_MSC(num_classes)` state dict.

    `n_blocks` other than (3, 4, 23, 3) is for tests of shallower nets.
    """
    return sd_lib.convert_state_dict(
        canonical_keys(state_dict),
        abstract_variables(num_classes, n_blocks),
        torch_key,
        dropped=_DROPPED,
        source=source,
    )


def convert_file(
    src: str, out: str, num_classes: int = COCOSTUFF_CLASSES, overwrite: bool = False
) -> None:
    """The released `.pth` (or `.npz`) to this project's `.npz`; an existing `out` is refused
    unless `overwrite`."""

    def convert():
        return convert_state_dict(sd_lib.read_state_dict(src), src, num_classes)

    converter.save_converted(out, convert, f"{FORMAT}/{num_classes}", overwrite)


def load_deeplab(path: str, num_classes: int = COCOSTUFF_CLASSES) -> dict:
    """Variables ({params, batch_stats}, jax arrays) of a file written by the converter."""
    return converter.load_converted(
        path, abstract_variables(num_classes), f"{FORMAT}/{num_classes}", CONVERT_COMMAND
    )


# --------------------------------------------------------------------------- segmenter


def deeplab_segmenter(
    variables,
    *,
    num_classes: int = COCOSTUFF_CLASSES,
    scales: Sequence[float] = MSC_SCALES,
    mean_bgr: Sequence[float] = MEAN_BGR,
    n_blocks: tuple[int, ...] = N_BLOCKS,
) -> Segmenter:
    """A `Segmenter` for images (B, H, W, 3) in [-1, 1] RGB: MSC logits (B, H, W, K).

    [-1, 1] -> 0..255, RGB -> BGR, minus `mean_bgr`; `msc_logits` at the image's own size
    (`scales=()` for the single-scale network); bilinear resize to (H, W).
    """
    model = DeepLabV2(num_classes, n_blocks)
    mean = np.asarray(mean_bgr, np.float32)
    scales = tuple(float(s) for s in scales)

    def apply_fn(v, images):
        h, w = images.shape[1:3]
        bgr = (images.astype(jnp.float32)[..., ::-1] + 1.0) * 127.5 - mean
        return resize_bilinear(msc_logits(model, v, bgr, scales), (h, w))

    return Segmenter(apply_fn, variables, num_classes, name="deeplabv2_resnet101")


def main(argv: Sequence[str] | None = None) -> None:
    converter.converter_main(
        argv,
        prog="python -m ecgan_jax.eval.deeplab",
        description="Convert kazuto1011's DeepLab-v2 COCO-Stuff weights to a local .npz.",
        sources="PTH",
        sources_help="deeplabv2_resnet101_msc-cocostuff164k-100000.pth (or .npz)",
        classes=COCOSTUFF_CLASSES,
        run=lambda a: convert_file(a.convert, a.out, a.classes, a.overwrite),
    )


if __name__ == "__main__":
    main()
