"""Frozen VGG19 feature extractor for the perceptual loss, and its weight converter (§4.1, §D.2).

`VGG19Features` is torchvision's `vgg19().features[0:30]` in Flax Linen (NHWC, float32): it
returns relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1, the outputs of the slices [0:2],
[2:7], [7:12], [12:21] and [21:30] that SPADE's and the authors' `VGG19` module use. Inputs are
the raw [-1, 1] images by default (as the authors' code); `imagenet_normalize=True` maps
[-1, 1] to [0, 1] and applies the ImageNet mean/std instead.

Weights never download at run time. Convert torchvision's ImageNet state dict once:

    python -m ecgan_jax.models.vgg --convert vgg19-dcbb9e9d.pth --out vgg19.npz

(an `.npz` holding the same `features.N.weight/bias` keys, OIHW, is accepted as input too),
then `load_vgg19_params("vgg19.npz")` gives the variables for `VGG19Features().apply`.
The converted file holds `conv{N}.kernel` (3, 3, in, out) and `conv{N}.bias` (out,) for the
13 convolutions N of `features[0:30]`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (torchvision index N in vgg19.features, in channels, out channels) of each 3×3 conv in [0:30].
VGG19_CONVS = (
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (16, 256, 256),
    (19, 256, 512),
    (21, 512, 512),
    (23, 512, 512),
    (25, 512, 512),
    (28, 512, 512),
)
CONVERT_COMMAND = "python -m ecgan_jax.models.vgg --convert torchvision_vgg19.pth --out FILE.npz"
_POOL_BEFORE = (5, 10, 19, 28)  # max-pools at features.4, .9, .18, .27
_OUTPUT_AFTER = (0, 5, 10, 19, 28)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
FEATURE_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG19 `features[0:30]` (NHWC), frozen: its params are an input, never trained.

    Attributes:
      imagenet_normalize: False (default, the authors' code): feed the raw [-1, 1] input.
        True: map [-1, 1] to [0, 1], then (x − ImageNet mean) / std per channel.
      dtype: computation dtype (`config.perceptual.dtype`): float32 (default) or bfloat16;
        the params stay float32.

    Call: `(B, H, W, 3)` image (any float dtype, computed in `dtype`) -> list of the five
    feature maps `(B, H, W, 64)`, `(B, H/2, W/2, 128)`, `(B, H/4, W/4, 256)`,
    `(B, H/8, W/8, 512)`, `(B, H/16, W/16, 512)` (floor division, as PyTorch's max-pool).
    """

    imagenet_normalize: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG19Features: expected (B, H, W, 3) NHWC images; got {x.shape}")
        x = jnp.asarray(x, jnp.float32)
        if self.imagenet_normalize:
            mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
            std = jnp.asarray(IMAGENET_STD, jnp.float32)
            x = ((x + 1.0) * 0.5 - mean) / std
        x = x.astype(self.dtype)
        outputs = []
        for index, _, out_ch in VGG19_CONVS:
            if index in _POOL_BEFORE:
                x = self.pool(x)
            x = nn.Conv(
                out_ch,
                (3, 3),
                padding=((1, 1), (1, 1)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.initializers.he_normal(),
                name=f"conv{index}",
            )(x)
            x = self.relu(x)
            if index in _OUTPUT_AFTER:
                outputs.append(x)
        return outputs

    def relu(self, x: jax.Array) -> jax.Array:
        return nn.relu(x)

    def pool(self, x: jax.Array) -> jax.Array:
        return max_pool_2x2(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, odd edges dropped (PyTorch's floor rule)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def vgg19_param_shapes() -> dict[str, tuple[int, ...]]:
    """Flat key -> shape of the converted file (`conv{N}.kernel` HWIO, `conv{N}.bias`)."""
    shapes = {}
    for index, cin, cout in VGG19_CONVS:
        shapes[f"conv{index}.kernel"] = (3, 3, cin, cout)
        shapes[f"conv{index}.bias"] = (cout,)
    return shapes


def random_vgg19_params(seed: int) -> dict:
    """Random He-normal kernels (std √(2/fan_in)) and zero biases as `{"params": ...}`, drawn
    with numpy: for tests, demos and benchmarks only.

    Drawn on the host like a converted file is read, not by compiling `VGG19Features.init`,
    whose compile left compiler heap in the training process.
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in vgg19_param_shapes().items():
        if key.endswith(".kernel"):
            std = np.sqrt(2.0 / (shape[0] * shape[1] * shape[2]))
            flat[key] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        else:
            flat[key] = np.zeros(shape, np.float32)
    return _unflatten(flat)


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    params = {}
    for key, value in flat.items():
        layer, leaf = key.split(".")
        params.setdefault(layer, {})[leaf] = jnp.asarray(value, jnp.float32)
    return {"params": params}


_TORCH_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def torchvision_to_flat(state_dict: Mapping[str, np.ndarray], *, source: str = "state dict"):
    """torchvision `vgg19` state dict (OIHW numpy arrays) -> flat converted dict (HWIO, float32).

    Keys of `features[30:]` and `classifier.*` (part of a full torchvision state dict) are
    dropped; any other unexpected, missing or wrong-shape key is an error naming `source`.
    """
    needed = {}
    for index, cin, cout in VGG19_CONVS:
        needed[f"features.{index}.weight"] = (cout, cin, 3, 3)
        needed[f"features.{index}.bias"] = (cout,)
    unexpected = []
    for key in state_dict:
        if key in needed or key.startswith("classifier."):
            continue
        m = _TORCH_KEY.match(key)
        if m and int(m.group(1)) >= 30:
            continue
        unexpected.append(key)
    missing = [k for k in needed if k not in state_dict]
    wrong = [
        f"{k}: {tuple(np.shape(state_dict[k]))} (expected {shape})"
        for k, shape in needed.items()
        if k in state_dict and tuple(np.shape(state_dict[k])) != shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} is not a torchvision vgg19 state dict: missing keys {missing}; "
            f"unexpected keys {unexpected}; wrong shapes {wrong}"
        )
    flat = {}
    for index, _, _ in VGG19_CONVS:
        w = np.asarray(state_dict[f"features.{index}.weight"], np.float32)
        flat[f"conv{index}.kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        flat[f"conv{index}.bias"] = np.asarray(state_dict[f"features.{index}.bias"], np.float32)
    return flat


def read_torchvision_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a torchvision vgg19 state dict from `.pth` (needs torch) or `.npz` (same keys)."""
    from ecgan_jax.interop.state_dict import read_state_dict

    return read_state_dict(path)


def convert_vgg19(src: str, out: str) -> None:
    """Converts a torchvision vgg19 `.pth`/`.npz` state dict into the project's `.npz`."""
    from ecgan_jax.interop.state_dict import write_npz

    flat = torchvision_to_flat(read_torchvision_state_dict(src), source=src)
    write_npz(out, flat)  # a temporary file renamed into place: never a truncated .npz


def load_vgg19_params(path: str) -> dict:
    """Loads a converted `.npz` into variables `{"params": ...}` for `VGG19Features.apply`.

    Raises ValueError naming the file and the missing, unexpected and wrong-shape keys.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VGG19 weights file not found: {path} (make it with "
            "`python -m ecgan_jax.models.vgg --convert torchvision_vgg19.pth --out FILE.npz`)"
        )
    from ecgan_jax.interop.state_dict import read_npz

    flat = read_npz(
        path, "python -m ecgan_jax.models.vgg --convert torchvision_vgg19.pth --out FILE.npz"
    )
    expected = vgg19_param_shapes()
    missing = [k for k in expected if k not in flat]
    unexpected = [k for k in flat if k not in expected]
    wrong = [
        f"{k}: {flat[k].shape} (expected {shape})"
        for k, shape in expected.items()
        if k in flat and flat[k].shape != shape
    ]
    if missing or unexpected or wrong:
        hint = ""
        if any(k.startswith("features.") for k in flat):
            hint = " (this looks like a torchvision state dict: convert it with --convert first)"
        raise ValueError(
            f"{path} is not a converted VGG19 file{hint}: missing keys {missing}; "
            f"unexpected keys {unexpected}; wrong shapes {wrong}"
        )
    return _unflatten(flat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecgan_jax.models.vgg",
        description="Convert torchvision's vgg19 state dict (.pth or .npz) for the VGG loss.",
    )
    parser.add_argument("--convert", required=True, metavar="SRC", help=".pth or .npz input")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="converted output")
    args = parser.parse_args(argv)
    convert_vgg19(args.convert, args.out)
    n = sum(int(np.prod(s)) for s in vgg19_param_shapes().values())
    print(f"wrote {args.out}: VGG19 features[0:30], {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
