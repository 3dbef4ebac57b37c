"""UperNet-101 segmenter for ADE20K mIoU (CSAILVision `resnet101` + `upernet`), §5, §D.5.

    python -m ecgan_jax.eval.upernet --convert encoder_epoch_50.pth decoder_epoch_50.pth \
        --out weights/upernet101_ade20k.npz

    segmenter = upernet_segmenter(load_upernet("weights/upernet101_ade20k.npz"))
    # images (B, H, W, 3) in [-1, 1] -> class scores (B, H, W, 150); score them against
    # ade20k_targets(labels) (ADE20K ids 1..150 -> 0..149, 0 "other" -> -1, ignored)

The released model is CSAILVision/semantic-segmentation-pytorch's ADE20K
`ade20k-resnet101-upernet` (formerly `baseline-resnet101-upernet`), epoch 50. NHWC, every
BatchNorm with eps 1e-5 and running statistics:
* encoder (`models.Resnet` around `resnet.resnet101`, not dilated): deep stem 3x3 conv
  3->64 /2, 3x3 64->64, 3x3 64->128 (each + BN + ReLU), 3x3 max pool /2 (padding 1); then
  layer1..4 of [3, 4, 23, 3] Bottlenecks (planes 64, 128, 256, 512, x4 out; stride 2 on the
  3x3 conv of the first block of layer2..4; 1x1 conv + BN downsample on each first block).
  The four stage outputs (/4 256, /8 512, /16 1024, /32 2048 channels) go to the decoder.
* decoder (`models.UPerNet`, fpn_dim 512): PPM on the /32 map: for s in (1, 2, 3, 6),
  adaptive average pool to s x s, bilinear back to /32, 1x1 conv 2048->512 + BN + ReLU;
  the /32 map and the 4 pooled maps concatenated -> 3x3 conv 4096->512 + BN + ReLU. FPN
  top-down over /16, /8, /4: lateral 1x1 conv + BN + ReLU, plus the bilinearly upsampled
  coarser sum, then a 3x3 conv + BN + ReLU output per level; the 4 level outputs upsampled
  to /4, concatenated (2048) -> 3x3 conv + BN + ReLU -> 1x1 conv (bias) -> 150 logits at /4.
  Every resize is `F.interpolate(bilinear, align_corners=False)` (`resampling`).

Test protocol (their `eval.py` with `config/ade20k-resnet101-upernet.yaml`): images in [0, 1]
RGB, normalised by the ImageNet mean/std; for each short side s in (300, 375, 450, 525, 600)
the image is resized (PIL bilinear, antialiased) to (int(H r), int(W r)) with r = min(s /
min(H, W), 1000 / max(H, W)), each rounded up to a multiple of 32; the logits of each size
are resized bilinearly to the label size, soft-maxed and averaged; the prediction is the
arg-max. `upernet_segmenter(test_sizes=None)` runs once at the input size instead. We resize
float images (PIL rounds its resized uint8 image; that rounding is not reproduced).

Converter: the two files are plain state dicts (`encoder_epoch_50.pth`,
`decoder_epoch_50.pth`). Encoder keys: `conv{1,2,3}.weight`, `bn{1,2,3}.{weight,bias,
running_mean,running_var}`, `layer{i}.{b}.conv{1,2,3}.weight`, `layer{i}.{b}.bn{1,2,3}.*`,
`layer{i}.0.downsample.{0,1}.*`. Decoder keys: `ppm_conv.{j}.{0,1}.*`, `ppm_last_conv.{0,1}.*`,
`fpn_in.{j}.{0,1}.*`, `fpn_out.{j}.0.{0,1}.*`, `conv_last.0.{0,1}.*`, `conv_last.1.{weight,
bias}`. `*.num_batches_tracked` is dropped, a `module.` prefix removed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.eval import converter
from ecgan_jax.eval.backbone import HIGHEST, BottleneckLayer, batch_norm, conv, torch_name
from ecgan_jax.eval.resampling import (
    adaptive_avg_pool,
    max_pool,
    resize_antialiased,
    resize_bilinear,
)
from ecgan_jax.eval.segmentation import Segmenter
from ecgan_jax.interop import state_dict as sd_lib

FORMAT = "ecgan_jax/upernet101_ade20k/v1"
ADE20K_CLASSES = 150
ADE20K_IGNORE = -1  # `ade20k_targets` maps the "other" id 0 here: outside [0, 150), ignored
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_SIZES = (300, 375, 450, 525, 600)  # short sides of config/ade20k-resnet101-upernet.yaml
TEST_MAX_SIZE = 1000  # imgMaxSize: cap on the long side
TEST_PADDING = 32  # padding_constant: sizes rounded up to a multiple of it
LAYERS_101 = (3, 4, 23, 3)
POOL_SCALES = (1, 2, 3, 6)
FPN_DIM = 512
CONVERT_COMMAND = (
    "python -m ecgan_jax.eval.upernet --convert encoder_epoch_50.pth decoder_epoch_50.pth "
    "--out FILE.npz  (CSAILVision's ade20k-resnet101-upernet release)"
)
_DROPPED = converter.BN_COUNTER


def _conv_bn_relu(x, features, kernel, name, precision):
    """conv `{name}_conv` (no bias) + BN `{name}_bn` + ReLU, created in the caller's scope."""
    x = conv(features, kernel, name=f"{name}_conv", precision=precision)(x)
    return nn.relu(batch_norm(f"{name}_bn")(x))


class ResNetEncoder(nn.Module):
    """CSAILVision `Resnet(resnet101)`: (B, H, W, 3) -> 4 maps at /4, /8, /16, /32."""

    layers: tuple[int, ...] = LAYERS_101
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 1)), start=1):
            x = nn.relu(
                batch_norm(f"bn{i}")(conv(features, 3, stride, name=f"conv{i}", precision=p)(x))
            )
        x = max_pool(x, 3, 2, 1)
        feats = []
        for i, (planes, blocks) in enumerate(
            zip((64, 128, 256, 512), self.layers, strict=True), start=1
        ):
            stride = 1 if i == 1 else 2
            x = BottleneckLayer(planes, blocks, stride, precision=p, name=f"layer{i}")(x)
            feats.append(x)
        return tuple(feats)


class UPerNetHead(nn.Module):
    """CSAILVision `UPerNet` decoder: the 4 encoder maps -> logits (B, H/4, W/4, K)."""

    num_classes: int = ADE20K_CLASSES
    fpn_dim: int = FPN_DIM
    pool_scales: tuple[int, ...] = POOL_SCALES
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, feats):
        p = self.precision
        c5 = feats[-1]
        size5 = c5.shape[1:3]
        ppm = [c5]
        for j, s in enumerate(self.pool_scales):
            pooled = resize_bilinear(adaptive_avg_pool(c5, s), size5)
            ppm.append(_conv_bn_relu(pooled, 512, 1, f"ppm{j}", p))
        f = _conv_bn_relu(jnp.concatenate(ppm, axis=-1), self.fpn_dim, 3, "ppm_last", p)
        levels = [f]
        for j in reversed(range(len(feats) - 1)):
            lateral = _conv_bn_relu(feats[j], self.fpn_dim, 1, f"fpn_in{j}", p)
            # The running top-down sum (not the level's output conv) feeds the next level.
            f = lateral + resize_bilinear(f, lateral.shape[1:3])
            levels.append(_conv_bn_relu(f, self.fpn_dim, 3, f"fpn_out{j}", p))
        levels.reverse()  # /4 first
        size4 = levels[0].shape[1:3]
        fused = jnp.concatenate([levels[0]] + [resize_bilinear(t, size4) for t in levels[1:]], -1)
        x = _conv_bn_relu(fused, self.fpn_dim, 3, "last", p)
        return conv(self.num_classes, 1, name="classifier", precision=p, bias=True)(x)


class UperNet(nn.Module):
    """Encoder + decoder: ImageNet-normalised (B, H, W, 3) -> logits (B, ~H/4, ~W/4, K).

    Any H, W work (the output has ceil(ceil(H/2)/2) rows); the test sizes are multiples of
    32, where it is exactly H/4.
    """

    num_classes: int = ADE20K_CLASSES
    layers: tuple[int, ...] = LAYERS_101
    fpn_dim: int = FPN_DIM
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"UperNet expects (B, H, W, 3) images, got {x.shape}")
        feats = ResNetEncoder(self.layers, self.precision, name="encoder")(x.astype(jnp.float32))
        return UPerNetHead(
            self.num_classes, self.fpn_dim, precision=self.precision, name="decoder"
        )(feats)


# --------------------------------------------------------------------------- weights


@functools.cache
def abstract_variables(num_classes: int = ADE20K_CLASSES, layers: tuple[int, ...] = LAYERS_101):
    return converter.abstract_of(UperNet(num_classes, layers))


def init_upernet(
    seed: int = 0, num_classes: int = ADE20K_CLASSES, layers: tuple[int, ...] = LAYERS_101
) -> dict:
    """Random variables in numpy (tests, benchmarks): He-normal kernels, identity BN, zero bias."""
    return converter.random_variables(abstract_variables(num_classes, layers), seed)


_LEAF_TO_TORCH = sd_lib.CONV_BN_LEAVES
_BN_INDEX = {"conv": "0", "bn": "1"}
_DECODER_NAMES = (  # Flax module name -> torch key prefix (conv at .0, its BN at .1)
    (re.compile(r"ppm(\d)_(conv|bn)"), "ppm_conv.{0}.{1}"),
    (re.compile(r"ppm_last_(conv|bn)"), "ppm_last_conv.{0}"),
    (re.compile(r"fpn_in(\d)_(conv|bn)"), "fpn_in.{0}.{1}"),
    (re.compile(r"fpn_out(\d)_(conv|bn)"), "fpn_out.{0}.0.{1}"),
    (re.compile(r"last_(conv|bn)"), "conv_last.0.{0}"),
    (re.compile(r"classifier"), "conv_last.1"),
)


def _decoder_part(module: str) -> str:
    for pattern, template in _DECODER_NAMES:
        if g := pattern.fullmatch(module):
            groups = [_BN_INDEX.get(x, x) for x in g.groups()]
            return template.format(*groups)
    raise KeyError(f"no torch name for decoder module {module!r}")


def torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """`encoder.<encoder_epoch key>` / `decoder.<decoder_epoch key>` and kind of a Flax leaf."""
    part, *modules, leaf = path
    name, kind = _LEAF_TO_TORCH[(collection, leaf)]
    if part == "decoder":
        return f"decoder.{_decoder_part(modules[0])}.{name}", kind
    return ".".join(("encoder", *map(torch_name, modules), name)), kind


def state_dict_shapes(
    num_classes: int = ADE20K_CLASSES, layers: tuple[int, ...] = LAYERS_101
) -> dict[str, dict[str, tuple]]:
    """{"encoder": {key: torch shape}, "decoder": {...}}: the layout the converter expects."""
    out: dict[str, dict[str, tuple]] = {"encoder": {}, "decoder": {}}
    for key, shape in converter.torch_shapes(
        abstract_variables(num_classes, layers), torch_key
    ).items():
        part, key = key.split(".", 1)
        out[part][key] = shape
    return out


def convert_state_dict(
    encoder: dict[str, np.ndarray],
    decoder: dict[str, np.ndarray],
    source: str = "state dicts",
    num_classes: int = ADE20K_CLASSES,
    layers: tuple[int, ...] = LAYERS_101,
) -> dict:
    """Flax variables from CSAILVision's resnet101 encoder and upernet decoder state dicts.

    `layers` (blocks per stage) other than (3, 4, 23, 3) is for tests of shallower nets.
    """
    for given, want, other in (
        (encoder, "encoder", "conv_last.1.weight"),
        (decoder, "decoder", "conv1.weight"),
    ):
        if other in given:
            raise ValueError(
                f"{source}: the {want} state dict holds {other!r}; give the files in the "
                "order ENCODER.pth DECODER.pth"
            )
    merged = {f"encoder.{k}": v for k, v in encoder.items()}
    merged.update({f"decoder.{k}": v for k, v in decoder.items()})
    return sd_lib.convert_state_dict(
        merged, abstract_variables(num_classes, layers), torch_key, dropped=_DROPPED, source=source
    )


def convert_file(
    encoder_path: str,
    decoder_path: str,
    out: str,
    num_classes: int = ADE20K_CLASSES,
    overwrite: bool = False,
) -> None:
    """The two released `.pth` (or `.npz`) files to this project's `.npz`; an existing `out`
    is refused unless `overwrite`."""

    def convert():
        return convert_state_dict(
            sd_lib.read_state_dict(encoder_path),
            sd_lib.read_state_dict(decoder_path),
            f"{encoder_path} + {decoder_path}",
            num_classes,
        )

    converter.save_converted(out, convert, f"{FORMAT}/{num_classes}", overwrite)


def load_upernet(path: str, num_classes: int = ADE20K_CLASSES) -> dict:
    """Variables ({params, batch_stats}, jax arrays) of a file written by the converter."""
    return converter.load_converted(
        path, abstract_variables(num_classes), f"{FORMAT}/{num_classes}", CONVERT_COMMAND
    )


# --------------------------------------------------------------------------- segmenter


def scaled_input_size(
    height: int,
    width: int,
    short_size: int,
    max_size: int = TEST_MAX_SIZE,
    padding: int = TEST_PADDING,
) -> tuple[int, int]:
    """(h, w) that CSAILVision's ValDataset resizes an H x W image to for one short side."""
    scale = min(short_size / float(min(height, width)), max_size / float(max(height, width)))
    h, w = int(height * scale), int(width * scale)
    return ((h - 1) // padding + 1) * padding, ((w - 1) // padding + 1) * padding


def ade20k_targets(labels):
    """ADE20K annotation ids (0 = other, 1..150) -> targets 0..149, other -> -1 (ignored)."""
    xp = jnp if isinstance(labels, jax.Array) else np
    return xp.asarray(labels).astype(xp.int32) - 1


def upernet_segmenter(
    variables,
    *,
    num_classes: int = ADE20K_CLASSES,
    test_sizes: Sequence[int] | None = TEST_SIZES,
    max_size: int = TEST_MAX_SIZE,
    padding: int = TEST_PADDING,
    layers: tuple[int, ...] = LAYERS_101,
) -> Segmenter:
    """A `Segmenter` for images (B, H, W, 3) in [-1, 1]: class probabilities (B, H, W, K).

    The probabilities are the softmax of the label-size logits averaged over `test_sizes`
    (CSAILVision's multi-scale test, see the module docstring); `test_sizes=None` runs once
    at (H, W). The arg-max is the prediction.
    """
    model = UperNet(num_classes, layers)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    sizes = None if test_sizes is None else tuple(int(s) for s in test_sizes)
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise ValueError(
            f"upernet_segmenter: test_sizes={test_sizes!r}; give positive short sides, or None "
            "for one pass at the input size"
        )

    def apply_fn(v, images):
        h, w = images.shape[1:3]
        x = (images.astype(jnp.float32) + 1.0) * 0.5
        shapes = (
            [(h, w)]
            if sizes is None
            else [scaled_input_size(h, w, s, max_size, padding) for s in sizes]
        )
        probs = 0.0
        for shape in shapes:
            logits = model.apply(v, (resize_antialiased(x, shape) - mean) / std)
            probs = probs + jax.nn.softmax(resize_bilinear(logits, (h, w)), axis=-1) / len(shapes)
        return probs

    return Segmenter(apply_fn, variables, num_classes, name="upernet101")


def main(argv: Sequence[str] | None = None) -> None:
    converter.converter_main(
        argv,
        prog="python -m ecgan_jax.eval.upernet",
        description="Convert CSAILVision's UperNet-101 ADE20K weights to a local .npz.",
        sources=("ENCODER", "DECODER"),
        sources_help="encoder_epoch_50.pth decoder_epoch_50.pth (or .npz)",
        classes=ADE20K_CLASSES,
        run=lambda a: convert_file(*a.convert, a.out, a.classes, a.overwrite),
    )


if __name__ == "__main__":
    main()
