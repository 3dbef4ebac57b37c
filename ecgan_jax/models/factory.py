"""Config -> module factories: the only place that reads the ConfigDict for the models."""

from __future__ import annotations

import jax.numpy as jnp

from ecgan_jax import config_lib
from ecgan_jax.models.discriminator import MultiscaleDiscriminator
from ecgan_jax.models.generator import Generator

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
    return DTYPES[config.model.dtype]


def build_generator(config) -> Generator:
    """The ECGAN generator for `config` (validated first)."""
    config_lib.validate_config(config)
    m = config.model
    return Generator(
        label_nc=int(config.dataset.label_nc),
        semantic_nc=config_lib.semantic_nc(config),
        ngf=int(m.ngf),
        num_upsampling_layers=m.num_upsampling_layers,
        spade_hidden=int(m.spade_hidden),
        dtype=compute_dtype(config),
    )


def build_discriminator(config) -> MultiscaleDiscriminator:
    """The multi-scale PatchGAN discriminator for `config` (validated first)."""
    config_lib.validate_config(config)
    m = config.model
    return MultiscaleDiscriminator(
        input_nc=config_lib.semantic_nc(config) + 3,
        ndf=int(m.ndf),
        num_D=int(m.num_D),
        n_layers=int(m.n_layers_D),
        dtype=compute_dtype(config),
    )
