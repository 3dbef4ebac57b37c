"""Rematerialisation: one policy that trades FLOPs for memory, applied in one place.

`config.runtime.remat` names what the backward pass recomputes instead of keeping:

* "none" (default): every activation the backward pass reads is kept;
* "spade": each SPADE layer in training keeps only its inputs (x and the label map); its
  BatchNorm, shared conv and γ/β convs run again in the backward pass;
* "blocks": each generator residual block (`SPADEResnetBlock`) in training keeps only its
  inputs and is recomputed whole.

The model is not touched: `wrap(policy, fn)` traces `fn` under a Flax method interceptor that
runs the named modules through `jax.checkpoint`, the way maxtext applies one remat policy to
its decoder layers. Values are the same under every policy; `python -m ecgan_jax.plan` and
`benchmarks/remat_plan.py` show the memory and FLOPs of each (BENCHMARKS.md,
"Rematerialisation"). On XLA:CPU, `jax.checkpoint` is undone by the compiler's
common-subexpression elimination; the CPU runtime recomputes SPADE its own way
(`xla_cpu.recompute`), so "spade" adds nothing there.

`call_purely` is the shared piece: a module call turned into a pure function of its
variables and array arguments, to which a transform (`jax.checkpoint`, or the CPU runtime's
`recompute_in_backward`) is applied.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable

import flax.linen as nn
import jax

from ecgan_jax.models.spade import SPADE, SPADEResnetBlock

POLICIES = ("none", "spade", "blocks")
_TARGETS = {"spade": SPADE, "blocks": SPADEResnetBlock}
_local = threading.local()


@contextlib.contextmanager
def _inside(token: str):
    """Marks the calls made while `token`'s transformed function runs (no second transform)."""
    active = getattr(_local, "active", frozenset())
    _local.active = active | {token}
    try:
        yield
    finally:
        _local.active = active


def is_inside(token: str) -> bool:
    return token in getattr(_local, "active", frozenset())


def _is_array(a) -> bool:
    return isinstance(a, jax.Array) or hasattr(a, "__jax_array__")


def call_purely(module: nn.Module, next_fun, args, kwargs, transform: Callable, token: str):
    """`module(*args, **kwargs)` computed by `transform(pure)(params, others, *arrays)`.

    `pure` runs a parentless clone of the module on the given variables, so `transform` sees a
    function of arrays only; mutated collections (SPADE's BatchNorm statistics) are written
    back to `module`. Calls made inside `pure` carry `token` (`is_inside`), so an interceptor
    does not transform its own module twice. During `init` the call runs plainly.
    """
    if module.is_initializing() or is_inside(token):
        return next_fun(*args, **kwargs)
    variables = dict(module.variables)
    params = variables.pop("params", {})
    mutable = [c for c in variables if module.is_mutable_collection(c)]
    plain = module.clone(parent=None)
    arrays = [i for i, a in enumerate(args) if _is_array(a)]

    def pure(params, others, *array_args):
        full = list(args)
        for i, a in zip(arrays, array_args, strict=True):
            full[i] = a
        with _inside(token):
            result = plain.apply(
                {"params": params, **others}, *full, mutable=mutable or False, **kwargs
            )
        return result if mutable else (result, {})

    out, updates = transform(pure)(params, variables, *[args[i] for i in arrays])
    for collection, tree in updates.items():
        for name, value in tree.items():
            module.put_variable(collection, name, value)
    return out


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"config field runtime.remat={policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.__call__)


def is_training_call(module: nn.Module, args, kwargs) -> bool:
    """Whether this call of `module` (a SPADE or SPADE block: a `train` argument) trains."""
    return bool(_signature(type(module)).bind(module, *args, **kwargs).arguments["train"])


def _interceptor(target: type) -> Callable:
    token = f"remat:{target.__name__}"

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name == "__call__"
            and isinstance(module, target)
            and is_training_call(module, args, kwargs)
        ):
            return call_purely(module, next_fun, args, kwargs, jax.checkpoint, token)
        return next_fun(*args, **kwargs)

    return intercept


def wrap(policy: str, fn: Callable) -> Callable:
    """`fn` traced with `policy` applied to the modules it calls (`fn` itself for "none")."""
    if check_policy(policy) == "none":
        return fn
    intercept = _interceptor(_TARGETS[policy])

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with nn.intercept_methods(intercept):
            return fn(*args, **kwargs)

    return wrapped
