"""benchmarks/bf16_allreduce.py: the emulated bf16 all-reduce rounds every partial sum, and the
script runs end to end at a tiny size (its figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import pathlib
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bf16_allreduce  # noqa: E402


def test_ring_mean_rounds_each_partial_sum():
    rng = np.random.default_rng(0)
    shards = rng.normal(size=(5, 7)).astype(np.float32)
    bf16 = ml_dtypes.bfloat16
    want = shards[0].astype(bf16)
    for k in range(1, 5):
        want = (want.astype(np.float32) + shards[k].astype(bf16).astype(np.float32)).astype(bf16)
    got = bf16_allreduce.ring_mean({"g": jnp.asarray(shards)}, "bfloat16")["g"]
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32) / 5)
    exact = bf16_allreduce.ring_mean({"g": jnp.asarray(shards)}, "float32")["g"]
    np.testing.assert_allclose(np.asarray(exact), shards.mean(0), rtol=1e-6)
    assert not np.array_equal(np.asarray(got), np.asarray(exact))


def test_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "r.json"
    args = ["--devices=2", "--batch=2", "--size=16,16", "--ndf=4", "--label_nc=3"]
    bf16_allreduce.main([*args, f"--json={out}"])  # the suite's fake CPU devices
    result = json.loads(out.read_text())
    assert result["devices"] == 2 and len(result["kernels"]) == 10  # 2 scales x 5 convs
    for row in result["kernels"]:
        for col in ("one_program", "shards_sum_float32", "shards_sum_bfloat16"):
            assert 0 < row[col] < 1, row
