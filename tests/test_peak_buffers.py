"""benchmarks/peak_buffers.py reads a real XLA:CPU dump: the live bytes at the peak it reports
equal a hand count for a chain whose peak is known."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Three 4 MB float32 arrays are alive at once at the peak: a, b = a + 1 and the product a * b,
# before the reduction; XLA fuses elementwise ops, so the program keeps them apart with dots.
PROGRAM = """
import jax, jax.numpy as jnp
def train_step(x, w):
    a = x @ w
    b = (a + 1.0) @ w
    c = (a * b) @ w
    return jnp.sum(c) + jnp.sum(a) + jnp.sum(b)
x = jnp.ones((1024, 1024)); w = jnp.eye(1024)
jax.jit(train_step).lower(x, w).compile()
"""


def test_reports_the_peak_of_a_known_program(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_dump_to={tmp_path} --xla_dump_hlo_module_re=.*train_step.* "
        "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    )
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cache hit would write no dump
    subprocess.run([sys.executable, "-c", PROGRAM], env=env, check=True, timeout=300)
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peak_buffers.py"), str(tmp_path), "--top=3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    first = out.splitlines()[0]
    peak_gb = float(first.split("peak at ")[1].split(" GB")[0])
    assert 3 * 4.19e-3 - 1e-3 <= peak_gb <= 4 * 4.19e-3 + 1e-3, out
    assert "live at the peak by module and pass" in out
    assert "largest 3 live values" in out
