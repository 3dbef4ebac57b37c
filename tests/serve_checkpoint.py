"""Tiny randomly-initialised generators saved as checkpoints, for the serve tests.

`make_serve_workdir(directory)` writes `<directory>/checkpoints/0` with the training
`Checkpointer`, as tests/test_generate_evaluate.py does, but without `create_train_state`
(whose D, heads and VGG initialisers would cost most of the serve tests' time): the
generator's variables are drawn with numpy (see `_random_generator`), and every other leaf
of the `TrainState` (D, optimizer states, memory banks), which serving never reads, is zeros
of the shape that `inference.abstract_train_state` says the restore expects.
`make_converted_checkpoint` saves the generator alone as `python -m ecgan_jax.convert` does
(tests/test_generate_evaluate.py makes both kinds the same way).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax import config_lib, inference
from ecgan_jax.models import build_generator
from ecgan_jax.training.checkpointing import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/synthetic.py:smoke")  # ngf 8, 32x64


def _random_generator(seed: int):
    """(config, generator, variables): random generator variables drawn with numpy on
    `jax.eval_shape(init)`'s tree (no initialiser to compile: most of a cold start).

    Kernels are LeCun-normal (std 1/sqrt(kh·kw·I)) and the spectral vectors u, v those that
    power iteration converges to (σ = the kernel's largest singular value, as after training),
    zero biases, BatchNorm mean 0 / var 1. Training's own init (Xavier-normal 0.02, random
    unit u, v) gives a random generator whose I″ is one flat grey (128 everywhere in uint8)
    or, by a small random σ, saturated: either way the tests could not see a label map's effect.
    """
    config = config_lib.load_config(CONFIG)
    generator = build_generator(config)
    h, w = config.dataset.image_size
    seg = jnp.zeros((1, h, w, config_lib.semantic_nc(config)), jnp.float32)
    shapes = jax.eval_shape(lambda k: generator.init(k, seg, train=False), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            kh, kw, cin, _ = shape
            return (rng.standard_normal(shape) / np.sqrt(kh * kw * cin)).astype(np.float32)
        if name == "var":
            return np.ones(shape, np.float32)
        if name in ("bias", "mean", "u", "v"):
            return np.zeros(shape, np.float32)
        raise ValueError(f"no distribution for generator leaf {jax.tree_util.keystr(path)}")

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    for module, vectors in _spectral_modules(variables["spectral"]):
        kernel = variables["params"]
        for key in module:
            kernel = kernel[key]
        kernel = kernel["kernel"]
        # PyTorch's W_mat (O, I·kh·kw), whose singular vectors u [O] and v [I·kh·kw] are stored.
        w_mat = np.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[-1], -1)
        u = rng.standard_normal(w_mat.shape[0])
        for _ in range(30):
            v = w_mat.T @ u
            v /= np.linalg.norm(v)
            u = w_mat @ v
            u /= np.linalg.norm(u)
        vectors["u"], vectors["v"] = u.astype(np.float32), v.astype(np.float32)
    return config, generator, variables


def _spectral_modules(tree, prefix=()):
    """(module path, its {"u", "v"} dict) of every spectral-norm layer in `tree`."""
    if "u" in tree and "v" in tree:
        yield prefix, tree
        return
    for key, sub in tree.items():
        yield from _spectral_modules(sub, (*prefix, key))


def make_serve_workdir(directory: str, seed: int = 0):
    """(config, workdir, generator module, generator eval variables as numpy)."""
    config, generator, variables = _random_generator(seed)
    abstract = inference.abstract_train_state(config)
    state = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    g_params = dict(state.g_params, generator=variables["params"])
    stats = {k: v for k, v in variables.items() if k != "params"}
    state = state.replace(g_params=g_params, g_stats=stats, ema_params=variables["params"])
    workdir = str(directory)
    ckpt = Checkpointer(workdir, every=1, keep=1, async_save=False)
    ckpt.save(0, state, {}, force=True)
    ckpt.close()
    return config, workdir, generator, variables


def make_converted_checkpoint(directory: str, seed: int = 0):
    """(config, directory, generator, variables): the generator alone, saved as
    `python -m ecgan_jax.convert` saves converted weights (`interop.authors.save_converted`)."""
    from ecgan_jax.interop.authors import save_converted

    config, generator, variables = _random_generator(seed)
    return config, save_converted(str(directory), variables), generator, variables
