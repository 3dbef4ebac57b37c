"""The optimizer of the train state (docs/DESIGN.md §D.4)."""

import jax
import numpy as np
import optax

from ecgan_jax.training.state import adam


def test_adam_without_first_moment_is_bit_identical_to_optax_adam():
    params = {"w": jax.random.normal(jax.random.key(0), (7, 5)), "b": np.zeros(5, np.float32)}
    sched = optax.linear_schedule(2e-4, 0.0, 10)
    ours, ref = adam(sched, 0.0, 0.9), optax.adam(sched, b1=0.0, b2=0.9)
    s_ours, s_ref = ours.init(params), ref.init(params)
    # No first-moment copy of the parameters is kept.
    n_leaves = len(jax.tree.leaves(params))
    assert len(jax.tree.leaves(s_ours)) == len(jax.tree.leaves(s_ref)) - n_leaves
    for i in range(6):
        grads = jax.tree.map(
            lambda p, i=i: jax.random.normal(jax.random.key(i + 1), p.shape) * 10.0**-i, params
        )
        u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params)
        u_ref, s_ref = jax.jit(ref.update)(grads, s_ref, params)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref), strict=True):
            np.testing.assert_array_equal(a, b)


def test_adam_with_momentum_is_optax_adam():
    params = {"w": np.ones((3,), np.float32)}
    assert len(jax.tree.leaves(adam(1e-3, 0.5, 0.999).init(params))) == len(
        jax.tree.leaves(optax.adam(1e-3, b1=0.5, b2=0.999).init(params))
    )
