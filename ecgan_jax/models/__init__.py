"""Flax Linen models of ECGAN (NHWC). See `factory.py` for the config-to-module translation."""

from ecgan_jax.models.encoding import encode_labels, instance_edges
from ecgan_jax.models.factory import build_discriminator, build_generator

__all__ = ["build_discriminator", "build_generator", "encode_labels", "instance_edges"]
