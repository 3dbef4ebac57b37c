"""FID (ecgan_jax/eval/fid.py): Fréchet distance, statistics files, sharded feature extraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import Mesh

from ecgan_jax.eval import fid, inception


def random_statistics(rng, d, n=None):
    n = 3 * d if n is None else n
    feats = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return feats.mean(0), np.atleast_2d(np.cov(feats, rowvar=False))


def reference_distance(mu1, s1, mu2, s2):
    """Tr sqrt(S1 S2) = Σ sqrt(eig(sqrt(S1) S2 sqrt(S1))), a symmetric PSD problem (eigh)."""
    w, v = scipy.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = scipy.linalg.eigvalsh(root1 @ s2 @ root1)
    tr = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_distance_matches_eigen_reference():
    rng = np.random.default_rng(0)
    for d in (1, 7, 64):
        a, b = random_statistics(rng, d), random_statistics(rng, d)
        got = fid.frechet_distance(*a, *b)
        np.testing.assert_allclose(got, reference_distance(*a, *b), rtol=1e-8, atol=1e-8)


def test_frechet_distance_hand_case():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # Diagonal: per-dimension sum of the same.
    got = fid.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([9.0, 16.0]))
    assert got == pytest.approx(2 + 4 + 4)


def test_singular_covariances_stay_finite():
    rng = np.random.default_rng(1)
    a, b = random_statistics(rng, 32, n=8), random_statistics(rng, 32, n=8)  # rank 7
    got = fid.frechet_distance(*a, *b)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, reference_distance(*a, *b), rtol=1e-4)


def test_fid_of_a_set_against_itself_is_zero():
    feats = np.random.default_rng(2).standard_normal((200, 32))
    assert abs(fid.fid_from_features(feats, feats)) < 1e-7
    other = feats + 0.5
    assert fid.fid_from_features(feats, other) == pytest.approx(32 * 0.25, rel=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="mean shapes"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        fid.compute_statistics(np.zeros((1, 4)))


def test_statistics_npz_round_trip_and_pytorch_fid_format(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = random_statistics(rng, 16)
    path = tmp_path / "stats" / "val.npz"
    fid.save_statistics(path, mu, sigma)
    with np.load(path, allow_pickle=False) as f:  # what pytorch-fid reads: f["mu"], f["sigma"]
        assert sorted(f.files) == ["mu", "sigma"]
        np.testing.assert_array_equal(f["mu"], mu)
    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=mu.astype(np.float32), sigma=sigma)  # pytorch-fid's writer
    for p in (path, theirs):
        m, s = fid.load_statistics(p)
        assert m.dtype == s.dtype == np.float64
        np.testing.assert_allclose(m, mu, rtol=1e-6)
        np.testing.assert_array_equal(s, sigma)
    with pytest.raises(FileNotFoundError, match="save_statistics"):
        fid.load_statistics(tmp_path / "absent.npz")
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="missing"):
        fid.load_statistics(tmp_path / "bad.npz")


@pytest.fixture(scope="module")
def variables():
    return inception.init_inception(seed=0)


def test_extract_features_sharded_padded_and_iterable(variables):
    """8-device mesh == 1-device mesh; partial batch padded and dropped; any chunking."""
    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (11, 80, 80, 3)).astype(np.float32)  # no resize: small & fast
    mesh8 = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    mesh1 = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    sharded = fid.extract_features(variables, images, batch_size=8, mesh=mesh8, resize_input=False)
    single = fid.extract_features(variables, images, batch_size=8, mesh=mesh1, resize_input=False)
    assert sharded.shape == (11, 2048) and sharded.dtype == np.float32
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
    direct = inception.InceptionV3FID(resize_input=False).apply(variables, jnp.asarray(images[:3]))
    np.testing.assert_allclose(sharded[:3], np.asarray(direct), rtol=1e-4, atol=1e-5)
    chunks = (images[i:j] for i, j in [(0, 3), (3, 4), (4, 11)])
    chunked = fid.extract_features(variables, chunks, batch_size=8, mesh=mesh8, resize_input=False)
    np.testing.assert_array_equal(chunked, sharded)
    with pytest.raises(ValueError, match="multiple of the mesh's device count"):
        fid.extract_features(variables, images, batch_size=4, mesh=mesh8)


def test_extract_features_default_path_uint8(variables):
    """Default mesh, resize to 299, uint8 images mapped to [-1, 1] like pytorch-fid's PNGs."""
    images = np.random.default_rng(5).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    got = fid.extract_features(variables, images, batch_size=8)
    as_float = images.astype(np.float32) / 255.0 * 2.0 - 1.0
    want = inception.InceptionV3FID().apply(variables, jnp.asarray(as_float))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-5)
    mu, sigma = fid.compute_statistics(np.concatenate([got, got + 1.0]))
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
