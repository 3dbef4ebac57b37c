"""The one switch that applies the XLA:CPU machinery to the plain model and train step.

`runtime_for(config, mesh)` returns a `Runtime`: with `config.runtime.cpu_kernels` "on" (or
"auto" and a mesh of CPU devices) it carries the CPU versions below; otherwise every hook is
the identity and the compiled program is the plain one. The model never sees the switch: the
module methods named here are replaced from outside by a Flax method interceptor
(`nn.intercept_methods`), entered once around the traced function (`Runtime.wrap`), the way
one remat policy is applied in one place. Values are unchanged either way; only speed and
memory on XLA:CPU differ (docs/PERFORMANCE_NOTES.md, BENCHMARKS.md "XLA:CPU machinery").

* `Conv2d.convolve`: the weight gradient as blocked matmuls (`conv.conv2d`), 1×1 convs as
  dots, spectral norm's 1/σ applied to the smaller of kernel and output;
* `SPADE.__call__` in training and `ProjectionHead.__call__`: keep only their inputs and
  recompute in the backward pass, the input gradient released after the weight gradients
  (`recompute.recompute_in_backward`);
* `VGG19Features.relu` / `.pool`: the backward pass keeps packed bits (`bitmask`);

and, for the step itself, `abs` (the perceptual L1's |x| with a bit-packed backward),
`seed_backward` (the loss reductions before the backward pass, `step.py`) and
`after_g_update` (the D step starts once the G update exists).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecgan_jax.models.heads import ProjectionHead
from ecgan_jax.models.layers import Conv2d
from ecgan_jax.models.spade import SPADE
from ecgan_jax.models.vgg import VGG19Features
from ecgan_jax.training.remat import call_purely, is_training_call
from ecgan_jax.xla_cpu import bitmask
from ecgan_jax.xla_cpu.conv import conv2d
from ecgan_jax.xla_cpu.recompute import recompute_in_backward

CHOICES = ("auto", "on", "off")


def cpu_kernels_enabled(config, mesh=None) -> bool:
    """`config.runtime.cpu_kernels` resolved for `mesh` (auto: on iff its devices are CPUs).

    Without a mesh, "auto" follows `jax.default_backend()`.
    """
    choice = config.runtime.cpu_kernels
    if choice not in CHOICES:
        raise ValueError(f"config field runtime.cpu_kernels={choice!r}; allowed: auto, on, off")
    if choice != "auto":
        return choice == "on"
    if mesh is None:
        return jax.default_backend() == "cpu"
    return all(d.platform == "cpu" for d in mesh.devices.flat)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Backend hooks of one compiled function; the identity when `cpu_kernels` is False."""

    cpu_kernels: bool = False
    fusion_emitters: bool = False  # XLA:CPU's MLIR fusion emitters for the train step
    tpu_space_to_batch: bool = True  # XLA:TPU's space-to-batch pass for the train step

    def wrap(self, fn: Callable) -> Callable:
        """`fn` traced with the CPU versions of the model's methods (or `fn` itself)."""
        if not self.cpu_kernels:
            return fn

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with nn.intercept_methods(_intercept):
                return fn(*args, **kwargs)

        return wrapped

    def abs(self, x: jax.Array) -> jax.Array:
        return bitmask.abs_(x) if self.cpu_kernels else jnp.abs(x)

    def seed_backward(self, loss: jax.Array) -> jax.Array:
        """The backward seed 1, data-dependent on `loss` on CPU (see `seed_after`)."""
        return seed_after(loss) if self.cpu_kernels else jnp.ones_like(loss)

    def after_g_update(self, tree):
        """`tree` (the D step's inputs and the new G parameters), held until all exist.

        With reused fakes the D step does not depend on the G backward pass and XLA:CPU's
        scheduler interleaved the two, holding both passes' activations at once.
        """
        return jax.lax.optimization_barrier(tree) if self.cpu_kernels else tree

    def compiler_options(self, mesh) -> dict | None:
        """Per-jit XLA options for the train step on `mesh`: LLVM IR fusion emitters on CPU;
        on TPU, without the space-to-batch pass where the config turns it off."""
        platforms = {d.platform for d in mesh.devices.flat}
        if platforms == {"cpu"} and not self.fusion_emitters:
            return {"xla_cpu_use_fusion_emitters": False}
        if platforms == {"tpu"} and not self.tpu_space_to_batch:
            return {"xla_disable_hlo_passes": "space-to-batch-converter"}
        return None


def runtime_for(config, mesh=None) -> Runtime:
    """The `Runtime` of `config.runtime` for functions compiled on `mesh`."""
    return Runtime(
        cpu_kernels=cpu_kernels_enabled(config, mesh),
        fusion_emitters=bool(config.runtime.xla_cpu_fusion_emitters),
        tpu_space_to_batch=bool(config.runtime.xla_tpu_space_to_batch),
    )


def seed_after(loss):
    """The backward pass's seed, exactly 1, made data-dependent on the value of `loss`.

    `jax.grad` seeds the backward pass with a constant 1, so nothing orders the loss value's
    own reductions (read only by the logged metrics) before the backward pass, and XLA:CPU's
    memory-minimising scheduler put them at the very end of the step, keeping what they read
    (the VGG feature differences, the contrastive logits) alive through the whole backward
    pass. Seeding with `1 + 0·loss` (the zero stays 0 when the loss is not finite) computes
    them first; the gradients are unchanged.
    """
    finite = jnp.where(jnp.isfinite(loss), loss, jnp.zeros_like(loss))
    return jnp.ones_like(loss) + finite * 0


# --- the method interceptor ---------------------------------------------------------------

_RECOMPUTE = "xla_cpu:recompute"  # the token of calls inside a recomputed module


def _conv(module: Conv2d, x, kernel, divisor=None):
    """`Conv2d.convolve` with the blocked weight gradient; 1/σ on the smaller operand.

    Scaling the output instead of the kernel keeps wide layers at small maps (1024×1024×3×3
    kernels on 8×16 maps) from materialising a scaled copy of the kernel, which would also be
    kept for the backward pass.
    """
    kh, kw, _, cout = kernel.shape
    pad = module.kernel_size // 2 if module.padding is None else module.padding
    h = (x.shape[1] + 2 * pad - kh) // module.stride + 1
    w = (x.shape[2] + 2 * pad - kw) // module.stride + 1
    scale_output = divisor is not None and x.shape[0] * h * w * cout < kernel.size
    if divisor is not None and not scale_output:
        kernel = kernel / divisor
    dtype = module.dtype
    y = conv2d(x.astype(dtype), kernel.astype(dtype), stride=module.stride, padding=pad)
    if scale_output:
        y = y / divisor.astype(dtype)
    return y


def _recomputed(module: nn.Module, next_fun, args, kwargs):
    """`module(*args, **kwargs)` keeping only its inputs and variables for the backward pass;
    the inputs' gradients leave only once the parameters' gradients exist (`release_after`)."""

    def transform(pure):
        return recompute_in_backward(pure, release_after=(0,))

    return call_purely(module, next_fun, args, kwargs, transform, _RECOMPUTE)


def _intercept(next_fun, args, kwargs, context):
    module, method = context.module, context.method_name
    if isinstance(module, Conv2d) and method == "convolve":
        return _conv(module, *args, **kwargs)
    if isinstance(module, SPADE) and method == "__call__":
        if is_training_call(module, args, kwargs):
            return _recomputed(module, next_fun, args, kwargs)
    if isinstance(module, ProjectionHead) and method == "__call__":
        return _recomputed(module, next_fun, args, kwargs)
    if isinstance(module, VGG19Features):
        if method == "relu":
            return bitmask.relu(*args)
        if method == "pool":
            return bitmask.max_pool_2x2(*args)
    return next_fun(*args, **kwargs)
