"""Shared by the train-step benchmarks: compile once, warm up, time `repeats` steps."""

from __future__ import annotations

import time

import jax
import numpy as np


def compile_step(step, state, batch, vgg_params):
    """(compiled step, compile seconds) for lower + compile."""
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, vgg_params).compile()
    return compiled, time.perf_counter() - t0


def median_step_seconds(compiled, state, batch, vgg_params, repeats: int):
    """(median seconds of `repeats` steps after one warm-up step, final state)."""
    state, metrics = compiled(state, batch, vgg_params)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, vgg_params)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), state
