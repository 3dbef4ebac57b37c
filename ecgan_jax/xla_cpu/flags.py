"""XLA flags for XLA:CPU that must be in XLA_FLAGS before JAX starts its backend.

XLA:CPU's default instruction scheduler favours running independent ops concurrently and keeps
more buffers alive; the memory-minimising one gives the train step a lower peak RSS at the same
step time (BENCHMARKS.md, "Train step"). XLA reads this flag only from XLA_FLAGS at backend
start (a per-jit compiler option is accepted but has no effect), so the training command sets
it before JAX is imported; an explicit setting in XLA_FLAGS wins. GPU/TPU ignore it.
"""

from __future__ import annotations

import os

CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def set_cpu_scheduler_flag(environ=os.environ) -> None:
    """Adds CPU_SCHEDULER_FLAG to environ["XLA_FLAGS"] unless the flag is already there."""
    flags_now = environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags_now:
        environ["XLA_FLAGS"] = f"{flags_now} {CPU_SCHEDULER_FLAG}".strip()
