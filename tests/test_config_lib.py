"""Config overrides from strings (config_lib.apply_override) and the CLI's XLA flag."""

import numpy as np
import pytest

from ecgan_jax import config_lib
from ecgan_jax.config_lib import apply_override, load_config


def test_override_parses_the_field_type():
    c = load_config("configs/cityscapes.py")
    for a in ("model.ngf=16", "dataset.image_size=128,256", "contrastive.enabled=false"):
        apply_override(c, a)
    assert c.model.ngf == 16 and isinstance(c.model.ngf, int)
    assert c.dataset.image_size == (128, 256)
    assert c.contrastive.enabled is False
    apply_override(c, "lr=0.001")
    assert c.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "assignment,error,match",
    [
        ("model.nope=1", KeyError, "no config field 'model.nope'"),
        ("model.ngf=wide", ValueError, "'wide' is not a valid int for 'model.ngf'"),
        ("contrastive.enabled=maybe", ValueError, "not a valid bool"),
        ("model.ngf", ValueError, "expected key=value"),
    ],
)
def test_bad_override_names_the_key(assignment, error, match):
    with pytest.raises(error, match=match):
        apply_override(load_config("configs/cityscapes.py"), assignment)


def test_training_cli_sets_the_cpu_memory_scheduler_flag_once():
    from ecgan_jax.xla_cpu.flags import CPU_SCHEDULER_FLAG, set_cpu_scheduler_flag

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    set_cpu_scheduler_flag(env)
    set_cpu_scheduler_flag(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {CPU_SCHEDULER_FLAG}"
    explicit = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    set_cpu_scheduler_flag(explicit)
    assert explicit["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    empty = {}
    set_cpu_scheduler_flag(empty)
    assert empty["XLA_FLAGS"] == CPU_SCHEDULER_FLAG


def test_fusion_emitter_switch_must_be_a_bool():
    from ecgan_jax.config_lib import validate_config

    c = load_config("configs/cityscapes.py")
    assert c.runtime.xla_cpu_fusion_emitters is False
    c.runtime.xla_cpu_fusion_emitters = None  # (ConfigDict itself refuses a str for a bool)
    with pytest.raises(ValueError, match="runtime.xla_cpu_fusion_emitters.*True, False"):
        validate_config(c)


def test_cpu_kernels_switch_follows_the_mesh_platform():
    from types import SimpleNamespace

    from ecgan_jax.config_lib import validate_config
    from ecgan_jax.xla_cpu import cpu_kernels_enabled

    def mesh(platform):
        return SimpleNamespace(devices=np.array([SimpleNamespace(platform=platform)] * 2))

    c = load_config("configs/cityscapes.py")
    assert c.runtime.cpu_kernels == "auto"
    assert cpu_kernels_enabled(c, mesh("cpu")) and not cpu_kernels_enabled(c, mesh("tpu"))
    c.runtime.cpu_kernels = "off"
    assert not cpu_kernels_enabled(c, mesh("cpu"))
    c.runtime.cpu_kernels = "on"
    assert cpu_kernels_enabled(c, mesh("gpu"))
    c.runtime.cpu_kernels = "yes"
    with pytest.raises(ValueError, match="runtime.cpu_kernels.*auto, on, off"):
        validate_config(c)


def test_anchor_selection_choices_are_the_samplers():
    from ecgan_jax.losses import ANCHOR_SELECTIONS
    from ecgan_jax.training.step import StepSettings

    assert config_lib._CHOICES["contrastive.anchor_selection"] == ANCHOR_SELECTIONS
    config = config_lib.load_config("configs/synthetic.py:smoke")
    config.contrastive.anchor_selection = "global"
    settings = StepSettings.from_config(config, use_vgg=False)
    assert settings.contrastive["anchor_selection"] == "global"
    config.contrastive.anchor_selection = "sorted"
    with pytest.raises(config_lib.ConfigError, match="auto, global, per_shard"):
        config_lib.validate_config(config)
