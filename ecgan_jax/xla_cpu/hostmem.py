"""Host-memory hygiene for glibc processes: fewer malloc arenas, and freed pages given back.

Both matter on CPU, where the train step's peak RSS is what limits the batch size. Neither
imports JAX: `limit_malloc_arenas` must run before JAX starts its thread pools (each thread
that allocates gets an arena of its own, and memory freed in one arena is not reused by the
others), so `python -m ecgan_jax.main` calls it first thing; a user driving
`ecgan_jax.training.train_and_evaluate` from their own Python can call it before importing JAX,
or set `MALLOC_ARENA_MAX` in the environment. On other C libraries both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def default_arenas() -> int:
    """1 arena on hosts with at most 2 usable cores, else 2.

    One arena serialises every thread's malloc, which the many data-loading and runtime
    threads of a large GPU or TPU host would contend on; with 2 cores at most 2 threads run at
    once, and the single arena measured both smaller and faster (BENCHMARKS.md, "Seventh
    session").
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 1 if cores <= 2 else 2


def _libc_function(name: str):
    lib = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(lib), name, None) if lib else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """Caps glibc's malloc arenas (mallopt M_ARENA_MAX); True when the cap was set.

    `arenas` defaults to `default_arenas()`. An explicit `MALLOC_ARENA_MAX` in the environment
    wins (glibc read it at start). The arenas of XLA's compiler and runtime threads otherwise
    keep freed compiler memory resident (BENCHMARKS.md, "Fifth session").
    """
    if arenas is None:
        arenas = default_arenas()
    if arenas < 1:
        raise ValueError(f"limit_malloc_arenas: arenas={arenas}; allowed: an integer >= 1")
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    return bool(mallopt is not None and mallopt(_M_ARENA_MAX, int(arenas)) == 1)


def release_host_memory() -> None:
    """Returns freed heap pages to the OS (glibc `malloc_trim`); a no-op elsewhere.

    Compiling the full-size step allocates a few GB of short-lived compiler data; glibc keeps
    the freed pages mapped, and the step's own buffers are then allocated on top, so the
    process's peak RSS is the sum; trimming after compilation avoids that (BENCHMARKS.md,
    "Train step").
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)
