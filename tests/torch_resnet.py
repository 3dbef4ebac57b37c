"""Helpers of the ResNet segmenter tests (test_deeplab.py, test_upernet.py): synthetic state
dicts in a released key layout, and torch references loaded with them without copies."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def add_bn(shapes: dict, key: str, channels: int) -> None:
    """The four tensors of a `BatchNorm2d(channels)` under `key` (num_batches_tracked aside)."""
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{key}.{leaf}"] = (channels,)


def synthetic_state_dict(
    shapes: dict[str, tuple],
    seed: int,
    *,
    small_scale: Callable[[str], bool],
    conv_divisor: Callable[[str], float] = lambda key: 1,
) -> dict[str, np.ndarray]:
    """float32 tensors that keep a deep net's activations O(1): He-normal convs (divided by
    `conv_divisor(key)`), BN running statistics near (0, 1), BN scales in [0.5, 1] except a
    small one ([0.1, 0.3]) where `small_scale(key)` (each residual branch's last BN), biases
    N(0, 0.1). Drawn key by key in `shapes` order from `default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in shapes.items():
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            std = math.sqrt(2.0 / fan_in) / conv_divisor(key)
            sd[key] = rng.standard_normal(shape, np.float32) * np.float32(std)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("running_mean"):
            sd[key] = rng.normal(0, 0.1, shape).astype(np.float32)
        elif key.endswith("weight"):
            low, high = (0.1, 0.3) if small_scale(key) else (0.5, 1.0)
            sd[key] = rng.uniform(low, high, shape).astype(np.float32)
        else:
            sd[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    return sd


def load_on_meta(torch, build: Callable, *state_dicts: dict[str, np.ndarray]) -> tuple:
    """The torch modules of `build()` (one, or a tuple), made on the meta device and given
    `state_dicts` (one each, numpy) without copies, in eval mode. Their key layouts must be
    the state dicts' (num_batches_tracked aside)."""
    with torch.device("meta"):
        modules = build()
    modules = modules if isinstance(modules, tuple) else (modules,)
    for module, sd in zip(modules, state_dicts, strict=True):
        ref = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")} == {
            k: v.shape for k, v in sd.items()
        }
        tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
        tensors.update({k: torch.tensor(0) for k in ref if k.endswith("num_batches_tracked")})
        module.load_state_dict(tensors, strict=True, assign=True)
        module.eval()
    return modules


def nchw(torch, x: np.ndarray):
    """An NHWC numpy batch as an NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
