"""Tiny randomly-initialised generators saved as checkpoints, for the serve tests.

`make_serve_workdir(directory)` writes `<directory>/checkpoints/0` with the training
`Checkpointer`, as tests/test_generate_evaluate.py does, but without `create_train_state`
(whose D, heads and VGG initialisers would cost most of the serve tests' time): the
generator's variables come from its own `init`, and every other leaf of the `TrainState`
(D, optimizer states, memory banks), which serving never reads, is zeros of the shape that
`inference.abstract_train_state` says the restore expects. `make_converted_checkpoint`
saves the generator alone as `python -m ecgan_jax.convert` does (tests/test_generate_evaluate.py
makes both kinds the same way).
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
    config = config_lib.load_config(CONFIG)
    generator = build_generator(config)
    h, w = config.dataset.image_size
    seg = jnp.zeros((1, h, w, config_lib.semantic_nc(config)), jnp.float32)
    variables = jax.device_get(
        jax.jit(lambda key: generator.init(key, seg, train=False))(jax.random.key(seed))
    )
    return config, generator, variables


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
