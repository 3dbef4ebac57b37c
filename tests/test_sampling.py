"""Label resizing, class-balanced Gumbel-top-k sampling and region embeddings (§D.2, §D.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ecgan_jax.losses as L
from ecgan_jax.losses.sampling import anchor_scores, select_top_pixels


def ref_resize(labels, h, w):
    b, in_h, in_w = labels.shape
    out = np.zeros((b, h, w), labels.dtype)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = labels[:, int(np.floor(i * in_h / h)), int(np.floor(j * in_w / w))]
    return out


@pytest.mark.parametrize("size", [(3, 4), (7, 9), (16, 20), (5, 10)])
def test_resize_nearest_follows_pytorch_rule(size):
    labels = np.random.default_rng(0).integers(-1, 9, size=(2, 7, 10)).astype(np.int32)
    got = np.asarray(L.resize_labels_nearest(jnp.asarray(labels), size=size))
    np.testing.assert_array_equal(got, ref_resize(labels, *size))


def test_resize_nearest_matches_torch_when_available():
    torch = pytest.importorskip("torch", reason="torch not installed: numpy rule checked above")
    labels = np.random.default_rng(1).integers(0, 9, size=(2, 12, 20)).astype(np.int32)
    for size in ((3, 5), (6, 10), (5, 7), (24, 40)):
        want = (
            torch.nn.functional.interpolate(
                torch.from_numpy(labels[:, None].astype(np.float32)), size=size, mode="nearest"
            )[:, 0]
            .numpy()
            .astype(np.int32)
        )
        got = np.asarray(L.resize_labels_nearest(jnp.asarray(labels), size=size))
        np.testing.assert_array_equal(got, want)


def test_class_counts_and_valid_labels():
    labels = np.array([[[0, 0, 2], [-1, 2, 5]]], np.int32)  # 5 is out of range for K = 3
    np.testing.assert_array_equal(np.asarray(L.class_counts(labels, num_classes=3)), [[2, 0, 2]])
    np.testing.assert_array_equal(
        np.asarray(L.valid_labels(jnp.asarray(labels), 3)), [[[1, 1, 1], [0, 1, 0]]]
    )


def _draw(labels, num_anchors, num_classes, trials):
    keys = jax.random.split(jax.random.PRNGKey(0), trials)
    fn = jax.jit(
        jax.vmap(
            lambda k: L.sample_anchors(
                labels=jnp.asarray(labels),
                key=k,
                num_anchors=num_anchors,
                num_classes=num_classes,
            )
        )
    )
    return jax.tree_util.tree_map(np.asarray, fn(keys))


def test_top1_is_class_balanced_per_image():
    # Image 0: class 0 has 100 pixels, class 1 has 10, class 2 has 1, plus 9 ignore pixels;
    # image 1 holds class 0 only. Weight 1/count gives each (image, class) pair the same mass,
    # so the first draw lands in each of the 4 pairs with probability 1/4.
    lab = np.full((2, 8, 15), 0, np.int32)
    flat = lab[0].reshape(-1)
    flat[100:110] = 1
    flat[110] = 2
    flat[111:] = -1
    lab[0] = flat.reshape(8, 15)
    trials = 4000
    s = _draw(lab, 1, 3, trials)
    index = s.index[:, 0]
    image = index // (8 * 15)
    cls = lab.reshape(-1)[index]
    assert (cls >= 0).all() and s.valid.all()
    freqs = np.array([np.mean((image == 0) & (cls == c)) for c in range(3)] + [np.mean(image == 1)])
    # Binomial std sqrt(p(1-p)/n) = 0.0068 at p = 1/4, n = 4000; allow 4.5 std.
    np.testing.assert_allclose(freqs, 0.25, atol=4.5 * np.sqrt(0.25 * 0.75 / trials))


def test_many_anchors_are_class_balanced_without_replacement():
    # 900 pixels of class 0, 100 of class 1 in one image, 40 anchors: each class gets ~20.
    lab = np.zeros((1, 20, 50), np.int32)
    lab[0, :2] = 1
    s = _draw(lab, 40, 2, 200)
    for idx in s.index:
        assert len(set(idx.tolist())) == 40  # without replacement
    frac = np.mean(s.labels == 1)
    # Per draw the class-1 share is ≈ 1/2 (it drifts by < 0.5% as pixels are removed);
    # the 200 × 40 draws are not independent, so allow a wide 0.05 band (≈ 9 std).
    assert abs(frac - 0.5) < 0.05, frac
    # Unweighted sampling would give 0.1: the test separates the two clearly.


def test_fewer_valid_pixels_than_anchors():
    lab = np.full((2, 3, 4), -1, np.int32)
    lab[0, 1, 2], lab[1, 0, 0], lab[1, 2, 3] = 4, 1, 1
    s = L.sample_anchors(labels=lab, key=jax.random.PRNGKey(3), num_anchors=30, num_classes=5)
    assert s.index.shape == (30,) and int(s.valid.sum()) == 3
    flat = lab.reshape(-1)
    chosen = sorted(np.asarray(s.index)[np.asarray(s.valid)].tolist())
    assert chosen == sorted(np.flatnonzero(flat >= 0).tolist())
    np.testing.assert_array_equal(np.asarray(s.labels)[~np.asarray(s.valid)], -1)
    np.testing.assert_array_equal(
        np.asarray(s.labels)[np.asarray(s.valid)], flat[np.asarray(s.index)[np.asarray(s.valid)]]
    )
    empty = L.sample_anchors(
        labels=np.full((1, 2, 2), -1, np.int32),
        key=jax.random.PRNGKey(0),
        num_anchors=3,
        num_classes=2,
    )
    assert not np.asarray(empty.valid).any()


def test_sample_anchors_is_the_stable_top_k_of_the_scores():
    # Independent reference: the A highest scores, lower flat index first among equal scores.
    lab = np.random.default_rng(4).integers(-1, 3, size=(3, 5, 7)).astype(np.int32)
    key = jax.random.PRNGKey(9)
    scores = np.asarray(anchor_scores(labels=lab, key=key, num_classes=3)).reshape(-1)
    s = L.sample_anchors(labels=lab, key=key, num_anchors=20, num_classes=3)
    order = np.lexsort((np.arange(scores.size), -scores))[:20]
    np.testing.assert_array_equal(np.asarray(s.index), order)
    np.testing.assert_array_equal(np.asarray(s.labels), lab.reshape(-1)[order])
    # Every pixel with a finite score is drawn in turn; ignore pixels score −inf.
    np.testing.assert_array_equal(np.isfinite(scores), lab.reshape(-1) >= 0)


def test_select_top_pixels_breaks_ties_by_lower_index():
    scores = np.array([[1.0, 3.0, 1.0, 3.0], [3.0, -np.inf, 1.0, 2.0]], np.float32)
    payload = np.arange(8, dtype=np.int32).reshape(2, 4) + 10
    values, index, picked = select_top_pixels(scores=scores, payload=payload, k=10)
    np.testing.assert_array_equal(np.asarray(index)[:7], [1, 3, 4, 7, 0, 2, 6])
    np.testing.assert_array_equal(np.asarray(picked)[:7], [11, 13, 14, 17, 10, 12, 16])
    np.testing.assert_array_equal(np.asarray(values)[7:], -np.inf)  # ignore + 2 padding slots


def test_region_embeddings_match_loops():
    rng = np.random.default_rng(5)
    b, h, w, d, k = 2, 4, 5, 3, 6
    emb = rng.normal(size=(b, h, w, d)).astype(np.float32)
    lab = rng.integers(-1, 4, size=(b, h, w)).astype(np.int32)  # classes 4, 5 absent
    lab[1, 0, 0] = 4  # single pixel
    got, present = L.region_embeddings(embeddings=jnp.asarray(emb), labels=lab, num_classes=k)
    got, present = np.asarray(got), np.asarray(present)
    for bi in range(b):
        for c in range(k):
            pix = [emb[bi, i, j] for i in range(h) for j in range(w) if lab[bi, i, j] == c]
            assert present[bi, c] == bool(pix)
            if pix:
                m = np.mean(pix, axis=0)
                np.testing.assert_allclose(got[bi, c], m / np.linalg.norm(m), rtol=1e-5)
            else:
                np.testing.assert_array_equal(got[bi, c], 0.0)


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(L.l2_normalize(x)), [[0.6, 0.8], [0.0, 0.0]])
    g = jax.grad(lambda v: L.l2_normalize(v).sum())(jnp.zeros((1, 2)))
    assert np.isfinite(np.asarray(g)).all()
