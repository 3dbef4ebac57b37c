"""pytorch-fid's InceptionV3 (the TF 2015-12-05 graph) in Flax, and its converter (§D.5).

    python -m ecgan_jax.eval.inception --convert pt_inception-2015-12-05-6726825d.pth \
        --out weights/inception_fid.npz

The network is pytorch-fid's `fid_inception_v3()` truncated at the pool3 features
(`InceptionV3(output_blocks=[3])`), not torchvision's ImageNet InceptionV3:
* every conv is `BasicConv2d`: conv without bias, BatchNorm (eps 1e-3, running statistics),
  ReLU;
* Mixed_5b-d (FIDInceptionA), Mixed_6b-e (FIDInceptionC) and Mixed_7b (FIDInceptionE_1)
  average-pool their pool branch excluding padding from the count (`count_include_pad=False`,
  TensorFlow's rule); Mixed_7c (FIDInceptionE_2) max-pools it instead;
* the 2048-d output is the spatial mean of Mixed_7c (adaptive average pool to 1x1).
Input: NHWC float32 images in [-1, 1] (pytorch-fid maps its [0, 1] inputs to [-1, 1]; the map
is affine, so applying it before or after the resize is the same). With `resize_input` the
images are first resized to 299x299 by PyTorch's `F.interpolate(mode="bilinear",
align_corners=False)` rule (`resize_bilinear`): half-pixel centres, source index clamped at 0,
no antialiasing for downsampling, which `jax.image.resize` would apply.

Converter: keys follow pytorch-fid's module names (`Conv2d_1a_3x3.conv.weight`,
`Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}`, `Mixed_5b.branch1x1.conv.weight`,
...); `fc.*` and `*.num_batches_tracked` are dropped. The `.npz` written holds the Flax
variables (see `ecgan_jax.state_dict`). `load_inception(path)` reads it back.
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
from ecgan_jax.eval.backbone import HIGHEST, ConvBN
from ecgan_jax.eval.resampling import bilinear_matrix as bilinear_matrix  # re-exported
from ecgan_jax.eval.resampling import max_pool, resize_bilinear
from ecgan_jax.interop import state_dict as sd_lib

FORMAT = "ecgan_jax/inception_v3_fid/v1"
FID_INPUT_SIZE = 299
FEATURE_DIM = 2048
CONVERT_COMMAND = (
    "python -m ecgan_jax.eval.inception --convert pt_inception-2015-12-05-6726825d.pth "
    "--out FILE.npz  (the .pth is pytorch-fid's FID weights release file)"
)
_DROPPED = re.compile(r"(^fc\.(weight|bias)$)|(\.num_batches_tracked$)")
_FC_SHAPE = (1008, FEATURE_DIM)  # the TF graph's 1008-way classifier, dropped


# --------------------------------------------------------------------------- pools


def _pool_window(x, init, op, window: int, stride: int, pad: int):
    return jax.lax.reduce_window(
        x,
        init,
        op,
        (1, window, window, 1),
        (1, stride, stride, 1),
        ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1 average pool that divides by the unpadded count."""
    total = _pool_window(x, 0.0, jax.lax.add, 3, 1, 1)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = _pool_window(ones, 0.0, jax.lax.add, 3, 1, 1)
    return total / count


# --------------------------------------------------------------------------- blocks


class BasicConv2d(ConvBN):
    """pytorch-fid `BasicConv2d`: conv `conv` (no bias) + BatchNorm `bn` (eps 1e-3) + ReLU."""

    epsilon: float = 1e-3


def _conv(name, features, kernel, stride=1, padding=(0, 0), precision=HIGHEST):
    return BasicConv2d(features, kernel, stride, padding, precision=precision, name=name)


class InceptionA(nn.Module):
    """FIDInceptionA: 64 + 64 + 96 + pool_features channels, exclude-pad avg pool."""

    pool_features: int
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        b1 = _conv("branch1x1", 64, 1, precision=p)(x)
        b5 = _conv("branch5x5_1", 48, 1, precision=p)(x)
        b5 = _conv("branch5x5_2", 64, 5, padding=(2, 2), precision=p)(b5)
        b3 = _conv("branch3x3dbl_1", 64, 1, precision=p)(x)
        b3 = _conv("branch3x3dbl_2", 96, 3, padding=(1, 1), precision=p)(b3)
        b3 = _conv("branch3x3dbl_3", 96, 3, padding=(1, 1), precision=p)(b3)
        bp = _conv("branch_pool", self.pool_features, 1, precision=p)(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction): 384 + 96 + in channels."""

    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        b3 = _conv("branch3x3", 384, 3, stride=2, precision=p)(x)
        bd = _conv("branch3x3dbl_1", 64, 1, precision=p)(x)
        bd = _conv("branch3x3dbl_2", 96, 3, padding=(1, 1), precision=p)(bd)
        bd = _conv("branch3x3dbl_3", 96, 3, stride=2, precision=p)(bd)
        return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC: factorised 7x7 branches, 4 x 192 channels, exclude-pad avg pool."""

    channels_7x7: int
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        p, c7 = self.precision, self.channels_7x7
        b1 = _conv("branch1x1", 192, 1, precision=p)(x)
        b7 = _conv("branch7x7_1", c7, 1, precision=p)(x)
        b7 = _conv("branch7x7_2", c7, (1, 7), padding=(0, 3), precision=p)(b7)
        b7 = _conv("branch7x7_3", 192, (7, 1), padding=(3, 0), precision=p)(b7)
        bd = _conv("branch7x7dbl_1", c7, 1, precision=p)(x)
        bd = _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0), precision=p)(bd)
        bd = _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3), precision=p)(bd)
        bd = _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0), precision=p)(bd)
        bd = _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3), precision=p)(bd)
        bp = _conv("branch_pool", 192, 1, precision=p)(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction): 320 + 192 + in channels."""

    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        b3 = _conv("branch3x3_1", 192, 1, precision=p)(x)
        b3 = _conv("branch3x3_2", 320, 3, stride=2, precision=p)(b3)
        b7 = _conv("branch7x7x3_1", 192, 1, precision=p)(x)
        b7 = _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3), precision=p)(b7)
        b7 = _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0), precision=p)(b7)
        b7 = _conv("branch7x7x3_4", 192, 3, stride=2, precision=p)(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (`pool="avg"`, exclude pad) / FIDInceptionE_2 (`pool="max"`): 2048 ch."""

    pool: str = "avg"
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        if self.pool not in ("avg", "max"):
            raise ValueError(f"InceptionE.pool={self.pool!r}; allowed: 'avg', 'max'")
        p = self.precision
        b1 = _conv("branch1x1", 320, 1, precision=p)(x)
        b3 = _conv("branch3x3_1", 384, 1, precision=p)(x)
        b3 = jnp.concatenate(
            [
                _conv("branch3x3_2a", 384, (1, 3), padding=(0, 1), precision=p)(b3),
                _conv("branch3x3_2b", 384, (3, 1), padding=(1, 0), precision=p)(b3),
            ],
            axis=-1,
        )
        bd = _conv("branch3x3dbl_1", 448, 1, precision=p)(x)
        bd = _conv("branch3x3dbl_2", 384, 3, padding=(1, 1), precision=p)(bd)
        bd = jnp.concatenate(
            [
                _conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1), precision=p)(bd),
                _conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0), precision=p)(bd),
            ],
            axis=-1,
        )
        pooled = avg_pool_exclude_pad(x) if self.pool == "avg" else max_pool(x, 3, 1, 1)
        bp = _conv("branch_pool", 192, 1, precision=p)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's FID InceptionV3 up to pool3: (B, H, W, 3) in [-1, 1] -> (B, 2048) float32.

    `resize_input`: bilinear resize to 299x299 first (pytorch-fid's default). Without it the
    input must be at least 75x75. `precision`: conv precision (HIGHEST: true float32 on
    GPU/TPU too, whose default would round conv inputs to TF32/bf16).
    """

    resize_input: bool = True
    precision: jax.lax.Precision | None = HIGHEST

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3FID expects (B, H, W, 3) images, got {x.shape}")
        x = x.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
        p = self.precision
        x = _conv("Conv2d_1a_3x3", 32, 3, stride=2, precision=p)(x)
        x = _conv("Conv2d_2a_3x3", 32, 3, precision=p)(x)
        x = _conv("Conv2d_2b_3x3", 64, 3, padding=(1, 1), precision=p)(x)
        x = max_pool(x, 3, 2)
        x = _conv("Conv2d_3b_1x1", 80, 1, precision=p)(x)
        x = _conv("Conv2d_4a_3x3", 192, 3, precision=p)(x)
        x = max_pool(x, 3, 2)
        x = InceptionA(32, p, name="Mixed_5b")(x)
        x = InceptionA(64, p, name="Mixed_5c")(x)
        x = InceptionA(64, p, name="Mixed_5d")(x)
        x = InceptionB(p, name="Mixed_6a")(x)
        x = InceptionC(128, p, name="Mixed_6b")(x)
        x = InceptionC(160, p, name="Mixed_6c")(x)
        x = InceptionC(160, p, name="Mixed_6d")(x)
        x = InceptionC(192, p, name="Mixed_6e")(x)
        x = InceptionD(p, name="Mixed_7a")(x)
        x = InceptionE("avg", p, name="Mixed_7b")(x)
        x = InceptionE("max", p, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# --------------------------------------------------------------------------- weights


@functools.cache
def abstract_variables():
    """Shapes of the network's variables ({params, batch_stats}), without computing them."""
    return converter.abstract_of(InceptionV3FID(), FID_INPUT_SIZE)


def init_inception(seed: int = 0) -> dict:
    """Random variables for tests and benchmarks, made in numpy (no compile).

    He-normal kernels keep the activation scale through the 94 conv+ReLU layers; BatchNorm is
    the identity (scale 1, bias 0, mean 0, var 1).
    """
    return converter.random_variables(abstract_variables(), seed)


_LEAF_TO_TORCH = sd_lib.CONV_BN_LEAVES


def torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """pytorch-fid key and conversion kind of a Flax leaf (module names are the same)."""
    name, kind = _LEAF_TO_TORCH[(collection, path[-1])]
    return ".".join((*path[:-1], name)), kind


def convert_state_dict(state_dict: dict[str, np.ndarray], source: str = "state dict") -> dict:
    """Flax variables from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` state dict."""
    fc = state_dict.get("fc.weight")
    if fc is not None and tuple(np.shape(fc)) != _FC_SHAPE:
        raise ValueError(
            f"{source}: fc.weight has shape {tuple(np.shape(fc))}, not {_FC_SHAPE}: these look "
            "like torchvision's ImageNet InceptionV3 weights, not pytorch-fid's FID weights "
            "(pt_inception-2015-12-05-6726825d.pth)"
        )
    return sd_lib.convert_state_dict(
        state_dict, abstract_variables(), torch_key, dropped=_DROPPED, source=source
    )


def convert_file(src: str, out: str) -> None:
    """Converts a `.pth` (or `.npz`) pytorch-fid state dict to this project's `.npz`.

    `out` (replaced if present) is written whole or not at all (a temporary sibling renamed
    into place), so a full disk never leaves a truncated weights file behind.
    """

    def convert():
        return convert_state_dict(sd_lib.read_state_dict(src), source=src)

    converter.save_converted(out, convert, FORMAT, overwrite=True)


def load_inception(path: str) -> dict:
    """Variables ({params, batch_stats}, jax arrays) of a file written by the converter."""
    return converter.load_converted(path, abstract_variables(), FORMAT, CONVERT_COMMAND)


def main(argv: Sequence[str] | None = None) -> None:
    converter.converter_main(
        argv,
        prog="python -m ecgan_jax.eval.inception",
        description="Convert pytorch-fid's FID InceptionV3 weights to a local .npz.",
        sources="PTH",
        sources_help="pt_inception-2015-12-05-6726825d.pth (or the same state dict as .npz)",
        refuse_existing=False,
        run=lambda a: convert_file(a.convert, a.out),
    )


if __name__ == "__main__":
    main()
