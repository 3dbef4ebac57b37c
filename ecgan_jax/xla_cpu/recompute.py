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
    wait: at ngf 16 (SPADE's γ/β weight gradients from windows of dy, `xla_cpu/conv.py`) XLA
    recomputed three SPADE layers of a block before finishing the first, and its temp buffer
    grew by a sixth; with the tie it is back (BENCHMARKS.md, "Seventh session").
    """

    @jax.custom_vjp
    def g(*args):
        return f(*args)

    def fwd(*args):
        return f(*args), args

    def bwd(args, cotangent):
        # Recompute only once the cotangent exists: tie the inputs to its first element.
        zero = _zero_after(_floating_leaves(cotangent)[:1])
        grads = jax.vjp(f, *_tie(args, zero))[1](cotangent)
        if not release_after:
            return grads
        done = _zero_after([x for i in release_after for x in _floating_leaves(grads[i])])
        return tuple(g if i in release_after else _tie(g, done) for i, g in enumerate(grads))

    g.defvjp(fwd, bwd)
    return g


def _is_floating(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _floating_leaves(tree) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree) if _is_floating(x) and x.size]


def _zero_after(leaves):
    """0 that XLA can compute only after every array of `leaves`: 0·Σ their first elements."""
    return sum(x.reshape(-1)[0].astype(jnp.float32) for x in leaves) * 0.0


def _tie(tree, zero):
    """`tree` with `zero` added to its floating leaves (integer/key leaves unchanged)."""
    zero = jnp.asarray(zero)
    return jax.tree_util.tree_map(
        lambda a: a + zero.astype(a.dtype) if _is_floating(a) else a, tree
    )
