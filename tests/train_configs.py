"""The config of every test that runs `train_and_evaluate` (or its compiled step).

One config so that the tests share compiled code: within one pytest worker through
`train.build_trainer`'s reuse of a trainer, across workers and processes through the
persistent compilation cache. The tests that use it are in the xdist group "train_step"
(setup.cfg runs pytest with `--dist loadgroup`), so one worker compiles the step once.
"""

from __future__ import annotations

from ecgan_jax.config_lib import load_config


def demo_config(**overrides):
    """The synthetic smoke config on 2 devices without VGG (covered by the one-step tests),
    image grids or learning-rate decay (the step count then stays out of the compiled step),
    with metrics every step; `overrides` set top-level fields."""
    config = load_config("configs/synthetic.py:smoke")
    config.num_devices = 2
    config.image_every = 0
    config.log_every = 1
    config.perceptual.enabled = False
    config.niter_decay = 0
    for k, v in overrides.items():
        config[k] = v
    return config
