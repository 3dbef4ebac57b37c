"""`recompute_in_backward` (ecgan_jax/xla_cpu/recompute.py) and SPADE's recomputed backward."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax.xla_cpu.conv import conv2d
from ecgan_jax.xla_cpu.recompute import recompute_in_backward


def _block(x, w1, w2, labels):
    """Two convs with a ReLU, and an integer input that gets no gradient."""
    h = jax.nn.relu(conv2d(x, w1, padding=1, impl="xla"))
    y = conv2d(h, w2, padding=1, impl="xla")
    return y * (1.0 + labels[..., None].astype(y.dtype)), jnp.mean(h)


def _inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
    w1 = jnp.asarray(rng.normal(size=(3, 3, 4, 6)) * 0.3, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(3, 3, 6, 5)) * 0.3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(2, 8, 8)), jnp.int32)
    return x, w1, w2, labels


def _loss(fn):
    def loss(x, w1, w2, labels):
        y, m = fn(x, w1, w2, labels)
        return jnp.sum(jnp.sin(y)) + 3.0 * m

    return loss


def test_values_and_gradients_equal_plain_autodiff():
    args = _inputs()
    plain = jax.jit(jax.value_and_grad(_loss(_block), argnums=(0, 1, 2)))(*args)
    ours = jax.jit(jax.value_and_grad(_loss(recompute_in_backward(_block)), argnums=(0, 1, 2)))(
        *args
    )
    np.testing.assert_allclose(ours[0], plain[0], rtol=1e-6)
    for a, b in zip(ours[1], plain[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _convolutions(fn, argnums=(1, 2)) -> int:
    """Convolutions in the optimised HLO of the gradient of `fn`."""
    args = _inputs()
    grad = jax.jit(jax.grad(_loss(fn), argnums=argnums))
    return len(re.findall(r"\bconvolution\(", grad.lower(*args).compile().as_text()))


def test_release_after_keeps_values_and_waits_for_the_weight_gradients():
    args = _inputs()
    plain = jax.jit(jax.value_and_grad(_loss(_block), argnums=(0, 1, 2)))(*args)
    tied = recompute_in_backward(_block, release_after=(1, 2))
    ours = jax.jit(jax.value_and_grad(_loss(tied), argnums=(0, 1, 2)))(*args)
    np.testing.assert_allclose(ours[0], plain[0], rtol=1e-6)
    for a, b in zip(ours[1], plain[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Asked for the input gradient alone, XLA drops the weight gradients (2 convolutions) of
    # the untied function; with release_after the input gradient is a data dependent of them,
    # so they stay.
    untied = _convolutions(recompute_in_backward(_block), argnums=(0,))
    assert _convolutions(tied, argnums=(0,)) == untied + 2


def test_forward_is_really_recomputed():
    # Plain autodiff: 2 forward convs + 2 weight-gradient + 1 input-gradient conv. Recomputed:
    # the first conv runs again in the backward pass (the ReLU's mask and the second weight
    # gradient need its output; the second conv's output is not needed there). XLA must not
    # merge it with the forward one, as it does for jax.checkpoint on CPU.
    plain = _convolutions(_block)
    assert _convolutions(recompute_in_backward(_block)) == plain + 1


def test_spade_recompute_equals_stored_activations():
    """The CPU runtime's SPADE (recomputed in the backward pass, applied from outside the model
    by `Runtime.wrap`) gives the plain module's loss, gradients and BatchNorm statistics."""
    from ecgan_jax.models.spade import SPADEResnetBlock
    from ecgan_jax.xla_cpu import Runtime

    # One residual block with a learned shortcut (norm_s, norm_0, norm_1), training mode.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 16, 6)), jnp.float32)
    seg = jax.nn.one_hot(jnp.asarray(rng.integers(0, 5, size=(2, 16, 32))), 5)
    block = SPADEResnetBlock(4, hidden=8)
    variables = block.init(jax.random.key(0), x, seg, True)
    params = variables["params"]
    stats = {k: v for k, v in variables.items() if k != "params"}

    def run(runtime):
        def loss(p, x):
            y, new = block.apply({"params": p, **stats}, x, seg, True, mutable=list(stats))
            return jnp.sum(jnp.sin(3.0 * y)), new

        grad = jax.value_and_grad(runtime.wrap(loss), argnums=(0, 1), has_aux=True)
        return jax.jit(grad)(params, x), str(jax.make_jaxpr(grad)(params, x))

    ((l_plain, s_plain), g_plain), hlo_plain = run(Runtime(cpu_kernels=False))
    ((l_re, s_re), g_re), hlo_re = run(Runtime(cpu_kernels=True))
    # 3 recomputed SPADEs, and the blocked convs inside and between them.
    assert "custom_vjp" not in hlo_plain and hlo_re.count("custom_vjp_call") > 3
    np.testing.assert_allclose(l_re, l_plain, rtol=1e-6)
    flat_plain = jax.tree_util.tree_leaves_with_path(g_plain)
    flat_re = dict(jax.tree_util.tree_leaves_with_path(g_re))
    assert len(flat_plain) == len(flat_re) > 10
    # conv_0's bias gradient is 0 up to rounding (norm_1 removes its mean): the tolerance is
    # relative to the largest gradient, not to each leaf's own.
    scale = max(float(np.abs(a).max()) for _, a in flat_plain)
    for path, a in flat_plain:
        np.testing.assert_allclose(
            flat_re[path], a, rtol=1e-4, atol=1e-6 * scale, err_msg=str(path)
        )
    leaves = (jax.tree_util.tree_leaves(s_plain), jax.tree_util.tree_leaves(s_re))
    assert len(leaves[0]) == len(leaves[1]) > 0
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
