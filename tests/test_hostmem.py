"""ecgan_jax.xla_cpu.hostmem: the malloc arena cap and the trim, each in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ecgan_jax.xla_cpu import hostmem
from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas

_GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None


def _run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not _GLIBC, reason="mallopt/malloc_trim are glibc's")
def test_arena_cap_is_set_unless_the_environment_sets_one():
    code = (
        "from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas, release_host_memory\n"
        "print(limit_malloc_arenas()); release_host_memory()"
    )
    assert _run(code) == "True"
    assert _run(code, MALLOC_ARENA_MAX="4") == "False"  # the user's setting wins


def test_default_arenas_follow_the_usable_cores(monkeypatch):
    monkeypatch.setattr(hostmem.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert hostmem.default_arenas() == 1
    monkeypatch.setattr(hostmem.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert hostmem.default_arenas() == 2


def test_arena_cap_refuses_nonpositive_counts():
    with pytest.raises(ValueError, match="arenas=0; allowed: an integer >= 1"):
        limit_malloc_arenas(0)


def test_main_caps_arenas_before_jax_is_imported():
    code = (
        "import sys, ecgan_jax.xla_cpu.hostmem as h\n"
        "calls = []\n"
        "h.limit_malloc_arenas = lambda: calls.append('jax' in sys.modules)\n"
        "import ecgan_jax.main\n"
        "print(calls)"
    )
    assert _run(code) == "[False]"
