"""Hinge GAN losses and discriminator feature matching (docs/DESIGN.md §4.1).

The discriminator output format of the project is a list over scales (`num_D` of them), each a
list of layer outputs `(B, h, w, C)` NHWC; the last tensor of each scale is the patch logit map
`(B, h, w, 1)`, the others are the intermediate activations used by feature matching.

These losses are per pair (fake X_k against real Y_k); the (1, 1, 2) weighting of
(I′, I′_e, I″) is applied by the train step, not here. Every reduction is in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DiscriminatorOutputs = Sequence[Sequence[jax.Array]]


def _check_outputs(name: str, outputs) -> None:
    if len(outputs) == 0 or any(len(scale) == 0 for scale in outputs):
        raise ValueError(
            f"{name}: expected a non-empty list over discriminator scales, each a non-empty list "
            f"of layer outputs (B, h, w, C); got {len(outputs)} scales with layer counts "
            f"{[len(s) for s in outputs]}"
        )


def _mean_over_scales(fn, outputs) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for scale in outputs:
        total = total + fn(jnp.asarray(scale[-1], jnp.float32))
    return total / len(outputs)


def hinge_discriminator_real_loss(*, discriminator_outputs: DiscriminatorOutputs) -> jax.Array:
    """D's hinge loss on real inputs: mean over scales of mean(relu(1 − D(real))).

    Args:
      discriminator_outputs: list over scales of lists of `(B, h, w, C)` arrays (any float
        dtype); only the last array of each scale (the patch logits) is used.

    Returns:
      float32 scalar. SPADE's `GANLoss(hinge, target_is_real=True, for_discriminator=True)`,
      averaged over the scales (docs/DESIGN.md §4.1).
    """
    _check_outputs(
        "hinge_discriminator_real_loss(discriminator_outputs=...)", discriminator_outputs
    )
    return _mean_over_scales(lambda x: jnp.mean(jax.nn.relu(1.0 - x)), discriminator_outputs)


def hinge_discriminator_fake_loss(*, discriminator_outputs: DiscriminatorOutputs) -> jax.Array:
    """D's hinge loss on fake inputs: mean over scales of mean(relu(1 + D(fake))).

    Args/returns as `hinge_discriminator_real_loss` (docs/DESIGN.md §4.1). The caller passes
    the discriminator outputs of stop-gradient fakes.
    """
    _check_outputs(
        "hinge_discriminator_fake_loss(discriminator_outputs=...)", discriminator_outputs
    )
    return _mean_over_scales(lambda x: jnp.mean(jax.nn.relu(1.0 + x)), discriminator_outputs)


def hinge_discriminator_loss(
    *, real_outputs: DiscriminatorOutputs, fake_outputs: DiscriminatorOutputs
) -> jax.Array:
    """Full hinge D loss of one pair: real term + fake term (docs/DESIGN.md §4.1).

    Args:
      real_outputs: D outputs on the real pair (scales × layers of `(B, h, w, C)`).
      fake_outputs: D outputs on the (stop-gradient) fake pair, same structure.

    Returns:
      float32 scalar `hinge_discriminator_real_loss + hinge_discriminator_fake_loss`.
    """
    return hinge_discriminator_real_loss(
        discriminator_outputs=real_outputs
    ) + hinge_discriminator_fake_loss(discriminator_outputs=fake_outputs)


def hinge_generator_loss(*, discriminator_outputs: DiscriminatorOutputs) -> jax.Array:
    """G's hinge loss: mean over scales of −mean(D(fake)) (docs/DESIGN.md §4.1).

    Args:
      discriminator_outputs: D outputs on the fake pair (scales × layers of `(B, h, w, C)`);
        only the last array of each scale is used.

    Returns:
      float32 scalar.
    """
    _check_outputs("hinge_generator_loss(discriminator_outputs=...)", discriminator_outputs)
    return _mean_over_scales(lambda x: -jnp.mean(x), discriminator_outputs)


def feature_matching_loss(
    *,
    fake_outputs: DiscriminatorOutputs,
    real_outputs: DiscriminatorOutputs,
    lambda_feat: float,
    num_discriminators: int | None = None,
) -> jax.Array:
    """Discriminator feature matching (pix2pixHD/SPADE), docs/DESIGN.md §4.1.

    (lambda_feat / num_D) · Σ_scales Σ_{intermediate layers j} mean|D_j(fake) − sg(D_j(real))|

    All layers but the last (the logits) of every scale take part; the per-layer mean absolute
    errors are summed, **not** divided by the number of layers (SPADE's behaviour).

    Args:
      fake_outputs: D outputs on the fake pair: scales × layers of `(B, h, w, C)`.
      real_outputs: D outputs on the matching real pair, same structure and shapes; a
        stop-gradient is applied to them here.
      lambda_feat: weight λ_feat (10 in the paper's setting).
      num_discriminators: num_D of the division; default `len(fake_outputs)`.

    Returns:
      float32 scalar.
    """
    _check_outputs("feature_matching_loss(fake_outputs=...)", fake_outputs)
    _check_outputs("feature_matching_loss(real_outputs=...)", real_outputs)
    if len(fake_outputs) != len(real_outputs) or any(
        len(f) != len(r) for f, r in zip(fake_outputs, real_outputs, strict=True)
    ):
        raise ValueError(
            "feature_matching_loss: fake_outputs and real_outputs must have the same number of "
            f"scales and layers; got {[len(s) for s in fake_outputs]} and "
            f"{[len(s) for s in real_outputs]}"
        )
    num_d = len(fake_outputs) if num_discriminators is None else int(num_discriminators)
    total = jnp.zeros((), jnp.float32)
    for fake_scale, real_scale in zip(fake_outputs, real_outputs, strict=True):
        for fake, real in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            if fake.shape != real.shape:
                raise ValueError(
                    f"feature_matching_loss: layer shapes differ, fake {fake.shape} vs real "
                    f"{real.shape}"
                )
            diff = jnp.asarray(fake, jnp.float32) - jax.lax.stop_gradient(
                jnp.asarray(real, jnp.float32)
            )
            total = total + jnp.mean(jnp.abs(diff))
    return total * (float(lambda_feat) / num_d)
