"""The rematerialisation policy (`config.runtime.remat`, ecgan_jax/training/remat.py).

Each policy must give the plain generator's outputs, gradients and BatchNorm statistics, and
put exactly its modules under `jax.checkpoint`. The memory and FLOPs each trades on a TPU chip:
`python benchmarks/remat_plan.py` (BENCHMARKS.md, "Rematerialisation"; a TPU compile takes
minutes here, too long for the suite).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax import config_lib
from ecgan_jax.models.generator import Generator
from ecgan_jax.training import remat

# 7 residual blocks at "normal"; each has norm_0 and norm_1, the 4 that change width a norm_s.
SPADES, BLOCKS = 7 * 2 + 4, 7


@functools.cache
def _generator_variables(ngf=4, size=(32, 64)):
    """(generator, label map, variables), initialised once and under jit (eager init is slow)."""
    rng = np.random.default_rng(0)
    seg = jax.nn.one_hot(jnp.asarray(rng.integers(0, 6, size=(2, *size))), 6)
    gen = Generator(label_nc=5, semantic_nc=6, ngf=ngf, spade_hidden=8)
    variables = jax.jit(lambda key, x: gen.init(key, x, train=False))(jax.random.key(0), seg)
    return gen, seg, variables


def _generator_loss():
    """(loss(params) -> (scalar, new statistics), params) of a tiny generator in training."""
    gen, seg, variables = _generator_variables()
    stats = {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        (first, final, edge), new = gen.apply(
            {"params": params, **stats}, seg, train=True, mutable=list(stats)
        )
        return jnp.sum(jnp.sin(3.0 * final)) + jnp.sum(first * edge), new

    return loss, variables["params"]


def _generator_grad(policy, runtime=None):
    """jit(value_and_grad) of the tiny generator's loss under `policy`, and its jaxpr text."""
    from ecgan_jax.xla_cpu import Runtime

    loss, params = _generator_loss()
    fn = (runtime or Runtime()).wrap(remat.wrap(policy, loss))
    traced = jax.jit(jax.value_and_grad(fn, has_aux=True)).trace(params)  # traced once
    return traced.lower().compile()(params), str(traced.jaxpr)


def _remats(jaxpr_text: str) -> int:
    """Calls of `jax.checkpoint` in a differentiated jaxpr (`remat2`; `checkpoint` before)."""
    return len(re.findall(r"\b(?:remat2|checkpoint)\[", jaxpr_text))


def _assert_same(got, want):
    (l_got, s_got), g_got = got
    (l_want, s_want), g_want = want
    np.testing.assert_allclose(l_got, l_want, rtol=1e-5)
    flat_want = jax.tree_util.tree_leaves_with_path(g_want)
    flat_got = dict(jax.tree_util.tree_leaves_with_path(g_got))
    assert len(flat_want) == len(flat_got) > 50
    scale = max(float(np.abs(a).max()) for _, a in flat_want)
    for path, a in flat_want:
        np.testing.assert_allclose(
            flat_got[path], a, rtol=1e-4, atol=1e-6 * scale, err_msg=str(path)
        )
    stats = (jax.tree_util.tree_leaves(s_want), jax.tree_util.tree_leaves(s_got))
    assert len(stats[0]) == len(stats[1]) > 2 * SPADES  # BN statistics, spectral u and v
    for a, b in zip(*stats, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def plain():
    return _generator_grad("none")


def test_plain_policy_is_the_plain_function(plain):
    assert _remats(plain[1]) == 0


@pytest.mark.parametrize(("policy", "count"), [("spade", SPADES), ("blocks", BLOCKS)])
def test_policy_checkpoints_its_modules_with_the_same_values(plain, policy, count):
    got, jaxpr = _generator_grad(policy)
    assert _remats(jaxpr) == count
    _assert_same(got, plain[0])


def test_blocks_compose_with_the_cpu_runtime(plain):
    """Under the CPU runtime each SPADE inside a rematerialised block is still recomputed its
    own way (another token), and the values stay the plain ones."""
    from ecgan_jax.xla_cpu import Runtime

    got, jaxpr = _generator_grad("blocks", Runtime(cpu_kernels=True))
    assert _remats(jaxpr) == BLOCKS and "custom_vjp_call" in jaxpr
    _assert_same(got, plain[0])


def test_unknown_policy_is_refused():
    config = config_lib.base_config()
    config.runtime.remat = "all"
    with pytest.raises(config_lib.ConfigError, match="runtime.remat.*none, spade, blocks"):
        config_lib.validate_config(config)
    with pytest.raises(ValueError, match="allowed: none, spade, blocks"):
        remat.wrap("all", lambda: None)
