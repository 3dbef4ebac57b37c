"""ecgan_jax: ECGAN (Tang et al., TPAMI 2023) in JAX/Flax.

Sub-packages: `models` (generator, discriminator, VGG19, heads), `losses` (a jax-only library),
`data` (grain pipelines), `eval` (FID, mIoU); entry points `main`, `convert`, `generate`,
`evaluate`.
"""

__version__ = "0.1.0"
