"""XLA:CPU machinery, opt-in by one switch (`config.runtime.cpu_kernels`, `runtime_for`).

The model (`ecgan_jax.models`) and the train step are written plainly; for a CPU mesh
`runtime_for(config, mesh)` returns the hooks that trade XLA:CPU's weak spots for faster or
smaller equivalents with the same values: `conv` (blocked weight gradients), `recompute`
(recomputation XLA:CPU does not undo), `bitmask` (bit-packed backward masks), `hostmem`
(glibc arenas and trimming) and `flags` (the XLA_FLAGS set before JAX starts).

Importing this package imports neither JAX nor the model: `hostmem` and `flags` must run
before JAX starts, so `runtime_for` and friends load on first use.
"""

_RUNTIME_NAMES = ("Runtime", "cpu_kernels_enabled", "runtime_for")
__all__ = list(_RUNTIME_NAMES)


def __getattr__(name):
    if name in _RUNTIME_NAMES:
        from ecgan_jax.xla_cpu import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'ecgan_jax.xla_cpu' has no attribute {name!r}")
