"""Hinge GAN losses and feature matching vs numpy loops (docs/DESIGN.md §4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ecgan_jax.losses as L

LAYER_CHANNELS = (4, 6, 8, 1)  # 3 intermediate layers + logits


def d_outputs(rng, num_d=2, b=2):
    out = []
    for s in range(num_d):
        size = 10 - 2 * s
        out.append(
            [
                rng.normal(size=(b, size - i, size - i, c)).astype(np.float32)
                for i, c in enumerate(LAYER_CHANNELS)
            ]
        )
    return out


def to_jnp(outs):
    return [[jnp.asarray(x) for x in scale] for scale in outs]


def ref_hinge(outs, kind):
    vals = []
    for scale in outs:
        x = scale[-1].astype(np.float64).reshape(-1)
        if kind == "real":
            vals.append(np.mean([max(0.0, 1.0 - v) for v in x]))
        elif kind == "fake":
            vals.append(np.mean([max(0.0, 1.0 + v) for v in x]))
        else:
            vals.append(-np.mean(x))
    return sum(vals) / len(vals)


def ref_fm(fake, real, lambda_feat):
    total = 0.0
    for fs, rs in zip(fake, real, strict=True):
        for f, r in zip(fs[:-1], rs[:-1], strict=True):
            total += np.abs(f.astype(np.float64) - r).sum() / f.size
    return total * lambda_feat / len(fake)


@pytest.mark.parametrize("num_d", [1, 2, 3])
def test_hinge_losses_match_reference(num_d):
    rng = np.random.default_rng(num_d)
    real, fake = d_outputs(rng, num_d), d_outputs(rng, num_d)
    for x in fake:  # push some logits beyond ±1 so the hinges clip
        x[-1] *= 3.0
    np.testing.assert_allclose(
        float(L.hinge_discriminator_real_loss(discriminator_outputs=to_jnp(real))),
        ref_hinge(real, "real"),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(L.hinge_discriminator_fake_loss(discriminator_outputs=to_jnp(fake))),
        ref_hinge(fake, "fake"),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(L.hinge_discriminator_loss(real_outputs=to_jnp(real), fake_outputs=to_jnp(fake))),
        ref_hinge(real, "real") + ref_hinge(fake, "fake"),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(L.hinge_generator_loss(discriminator_outputs=to_jnp(fake))),
        ref_hinge(fake, "gen"),
        rtol=1e-5,
        atol=1e-6,
    )


def test_hinge_hand_case_and_dtype():
    # one scale, logits [2, -0.5]: real relu(1 - x) = [0, 1.5]; fake relu(1 + x) = [3, 0.5]
    outs = [[jnp.zeros((1, 1, 2, 3)), jnp.array([2.0, -0.5], jnp.bfloat16).reshape(1, 1, 2, 1)]]
    real = L.hinge_discriminator_real_loss(discriminator_outputs=outs)
    assert real.dtype == jnp.float32
    np.testing.assert_allclose(float(real), 0.75)
    np.testing.assert_allclose(
        float(L.hinge_discriminator_fake_loss(discriminator_outputs=outs)), 1.75
    )
    np.testing.assert_allclose(float(L.hinge_generator_loss(discriminator_outputs=outs)), -0.75)


def test_feature_matching_matches_reference_and_stops_real_gradient():
    rng = np.random.default_rng(7)
    fake, real = d_outputs(rng), d_outputs(rng)
    got = L.feature_matching_loss(
        fake_outputs=to_jnp(fake),
        real_outputs=to_jnp(real),
        lambda_feat=10.0,
        num_discriminators=2,
    )
    np.testing.assert_allclose(float(got), ref_fm(fake, real, 10.0), rtol=1e-5)
    # default num_discriminators = number of scales
    got_default = L.feature_matching_loss(
        fake_outputs=to_jnp(fake), real_outputs=to_jnp(real), lambda_feat=10.0
    )
    np.testing.assert_allclose(float(got_default), float(got), rtol=1e-6)
    g_fake, g_real = jax.grad(
        lambda f, r: L.feature_matching_loss(fake_outputs=f, real_outputs=r, lambda_feat=10.0),
        argnums=(0, 1),
    )(to_jnp(fake), to_jnp(real))
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(g_real))
    # logits (last layer) do not take part; the intermediate layers do
    assert all(float(jnp.abs(scale[-1]).max()) == 0 for scale in g_fake)
    assert all(float(jnp.abs(x).max()) > 0 for scale in g_fake for x in scale[:-1])


def test_feature_matching_is_summed_not_averaged_over_layers():
    # 2 scales × 3 intermediate layers, each with |fake - real| = 1 everywhere:
    # (λ/num_D) · Σ 1 = (10 / 2) · 6 = 30 (averaging over layers would give 10).
    ones = [[jnp.ones((1, 2, 2, 1))] * 3 + [jnp.zeros((1, 2, 2, 1))]] * 2
    zeros = [[jnp.zeros((1, 2, 2, 1))] * 4] * 2
    got = L.feature_matching_loss(fake_outputs=ones, real_outputs=zeros, lambda_feat=10.0)
    np.testing.assert_allclose(float(got), 30.0)


def test_bad_structures_are_rejected():
    rng = np.random.default_rng(0)
    a, b = to_jnp(d_outputs(rng, 2)), to_jnp(d_outputs(rng, 1))
    with pytest.raises(ValueError, match="same number of scales"):
        L.feature_matching_loss(fake_outputs=a, real_outputs=b, lambda_feat=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        L.hinge_generator_loss(discriminator_outputs=[])
