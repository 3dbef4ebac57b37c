"""Recomputation in the backward pass that XLA:CPU does not undo (used for SPADE and the
contrastive loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def recompute_in_backward(f, release_after: tuple[int, ...] = ()):
    """`f(*args)` that saves only its inputs and recomputes itself in the backward pass.

    `jax.checkpoint` does not do this on XLA:CPU: XLA merges the recomputation with the forward
    computation (common-subexpression elimination across the optimization barrier), and the
    activations stay live anyway. Here the recomputation reads its floating-point inputs plus
    0·(one element of the incoming cotangent): values XLA cannot prove equal to the forward
    ones (0·c is not folded for floats, since c may be NaN), available only once the cotangent
    exists. For a finite cotangent the values are unchanged; a non-finite one gives non-finite
    gradients either way. `args` may hold integer, boolean or key arrays (no gradient).

    `release_after`: positions of `args` (a layer's weights, say) whose cotangents the others
    wait for, by the same `+ 0·element` tie. Without it the input's cotangent can run ahead
    down the network while the weight gradients, and the recomputed activations they read,
    wait: at ngf 16 (SPADE's γ/β weight gradients from windows of dy, `models/conv.py`) XLA
    recomputed three SPADE layers of a block before finishing the first, and its temp buffer
    grew 0.61 -> 0.71 GB; with the tie it is 0.61 GB again (BENCHMARKS.md).
    """

    def tie_to(zero):
        def tie(a):
            if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
                return a + jnp.asarray(zero).astype(a.dtype)
            return a

        return tie

    @jax.custom_vjp
    def g(*args):
        return f(*args)

    def fwd(*args):
        return f(*args), args

    def bwd(args, cotangent):
        floating = [
            c
            for c in jax.tree_util.tree_leaves(cotangent)
            if hasattr(c, "dtype") and jnp.issubdtype(c.dtype, jnp.floating) and c.size
        ]
        zero = floating[0].reshape(-1)[0].astype(jnp.float32) * 0.0 if floating else 0.0

        tie = tie_to(zero)

        grads = jax.vjp(f, *jax.tree_util.tree_map(tie, args))[1](cotangent)
        if not release_after:
            return grads
        leaves = [
            g
            for i in release_after
            for g in jax.tree_util.tree_leaves(grads[i])
            if hasattr(g, "dtype") and jnp.issubdtype(g.dtype, jnp.floating) and g.size
        ]
        done = sum(g.reshape(-1)[0].astype(jnp.float32) for g in leaves) * 0.0
        return tuple(
            g if i in release_after else jax.tree_util.tree_map(tie_to(done), g)
            for i, g in enumerate(grads)
        )

    g.defvjp(fwd, bwd)
    return g
