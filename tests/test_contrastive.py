"""ecgan_jax.losses.contrastive against numpy references written here (docs/DESIGN.md §D.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import ecgan_jax.losses as L


# ----------------------------------------------------------------------------- references
def ref_supcon(za, ya, zc, yc, tau, va=None, vc=None, self_mask=None):
    """L_a of §D.3.6 with explicit loops, float64."""
    za, zc = np.asarray(za, np.float64), np.asarray(zc, np.float64)
    va = np.ones(len(ya), bool) if va is None else np.asarray(va)
    vc = np.ones(len(yc), bool) if vc is None else np.asarray(vc)
    per_anchor = []
    for a in range(len(ya)):
        if ya[a] < 0 or not va[a]:
            continue
        pos, neg = [], []
        for c in range(len(yc)):
            if yc[c] < 0 or not vc[c] or (self_mask is not None and self_mask[a, c]):
                continue
            (pos if yc[c] == ya[a] else neg).append(c)
        if not pos or not neg:
            continue
        s = {c: float(za[a] @ zc[c]) / tau for c in pos + neg}
        shift = max(s.values())  # only to keep float64 exp finite at small τ
        neg_sum = sum(np.exp(s[n] - shift) for n in neg)
        terms = [np.log(np.exp(s[p] - shift) / (np.exp(s[p] - shift) + neg_sum)) for p in pos]
        per_anchor.append(-np.mean(terms))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def ref_resize(labels, h, w):
    b, in_h, in_w = labels.shape
    out = np.zeros((b, h, w), labels.dtype)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = labels[:, (i * in_h) // h, (j * in_w) // w]
    return out


def ref_regions(emb, lab, k):
    b, h, w, d = emb.shape
    regions = np.zeros((b, k, d))
    present = np.zeros((b, k), bool)
    for bi in range(b):
        for c in range(k):
            pix = [emb[bi, i, j] for i in range(h) for j in range(w) if lab[bi, i, j] == c]
            if pix:
                m = np.mean(np.asarray(pix, np.float64), axis=0)
                regions[bi, c] = m / np.linalg.norm(m)
                present[bi, c] = True
    return regions, present


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_labels(rng, shape, k):
    """Labels with ignore pixels, an absent class (k-1), and a class with one pixel (k-2)."""
    lab = rng.integers(-1, k - 2, size=shape).astype(np.int32)
    lab[0, 0, 0] = k - 2  # single pixel in image 0
    return lab


# ----------------------------------------------------------------------------- core loss
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_core_loss_matches_reference(seed):
    rng = np.random.default_rng(seed)
    na, nc, d, k = 24, 40, 8, 5
    za, zc = unit(rng.normal(size=(na, d))), unit(rng.normal(size=(nc, d)))
    ya = rng.integers(-1, k, size=na).astype(np.int32)
    yc = rng.integers(-1, k, size=nc).astype(np.int32)
    yc[yc == 4] = 3  # class 4 absent from the contrast set: its anchors have empty P
    yc[0] = 2
    yc[yc == 2] = 1
    yc[0] = 2  # class 2 has a single contrast item
    va, vc = rng.random(na) > 0.2, rng.random(nc) > 0.2
    self_mask = rng.random((na, nc)) > 0.9
    for tau in (0.1, 0.5):
        got = L.supervised_contrastive_loss(
            jnp.asarray(za),
            jnp.asarray(ya),
            jnp.asarray(zc),
            jnp.asarray(yc),
            temperature=tau,
            anchor_valid=jnp.asarray(va),
            contrast_valid=jnp.asarray(vc),
            self_mask=jnp.asarray(self_mask),
        )
        want = ref_supcon(za, ya, zc, yc, tau, va, vc, self_mask)
        assert want > 0
        np.testing.assert_allclose(float(got), want, rtol=2e-5)
    # Defaults: all valid except labels −1, no self mask.
    got = L.supervised_contrastive_loss(za, ya, zc, yc, temperature=0.2)
    np.testing.assert_allclose(float(got), ref_supcon(za, ya, zc, yc, 0.2), rtol=2e-5)


def test_core_loss_hand_case():
    # One anchor, one positive at angle 0, one negative orthogonal: s_p = 1/τ, s_n = 0.
    za = np.array([[1.0, 0.0]], np.float32)
    zc = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    got = L.supervised_contrastive_loss(
        za, np.array([3], np.int32), zc, np.array([3, 1], np.int32), temperature=0.5
    )
    np.testing.assert_allclose(float(got), -np.log(np.exp(2.0) / (np.exp(2.0) + 1.0)), rtol=1e-6)


def test_core_loss_is_stable_at_small_temperature():
    rng = np.random.default_rng(3)
    za, zc = unit(rng.normal(size=(16, 4))), unit(rng.normal(size=(30, 4)))
    ya = rng.integers(0, 3, size=16).astype(np.int32)
    yc = rng.integers(0, 3, size=30).astype(np.int32)
    f = lambda a, c: L.supervised_contrastive_loss(a, ya, c, yc, temperature=0.005)
    got, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(za), jnp.asarray(zc))
    assert np.isfinite(float(got))  # e^{200} overflows float32 without the max shift
    np.testing.assert_allclose(float(got), ref_supcon(za, ya, zc, yc, 0.005), rtol=1e-4)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


@pytest.mark.parametrize(
    "case", ["anchors_ignored", "contrast_invalid", "no_negatives", "no_positives", "all_self"]
)
def test_core_loss_degenerate_cases_are_zero_with_finite_grad(case):
    rng = np.random.default_rng(4)
    za, zc = unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(6, 4)))
    ya = np.array([0, 1, 0, 1, 0, 1], np.int32)
    yc = ya.copy()
    kw = {}
    if case == "anchors_ignored":
        ya = np.full(6, -1, np.int32)
    elif case == "contrast_invalid":
        kw["contrast_valid"] = np.zeros(6, bool)
    elif case == "no_negatives":
        ya, yc = np.zeros(6, np.int32), np.zeros(6, np.int32)
    elif case == "no_positives":
        ya, yc = np.zeros(6, np.int32), np.ones(6, np.int32)
    elif case == "all_self":
        ya, yc = np.arange(6, dtype=np.int32), np.arange(6, dtype=np.int32)
        kw["self_mask"] = np.eye(6, dtype=bool)  # only positive of each anchor is itself

    def f(a, c):
        return L.supervised_contrastive_loss(a, ya, c, yc, temperature=0.1, **kw)

    value, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(za), jnp.asarray(zc))
    assert float(value) == 0.0
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
        assert float(jnp.abs(g).max()) == 0.0


def test_core_loss_rejects_bad_shapes():
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="same D"):
        L.supervised_contrastive_loss(
            z, np.zeros(3, np.int32), np.zeros((3, 5)), np.zeros(3), temperature=0.1
        )
    with pytest.raises(ValueError, match="self_mask"):
        L.supervised_contrastive_loss(
            z,
            np.zeros(3, np.int32),
            z,
            np.zeros(3, np.int32),
            temperature=0.1,
            self_mask=np.zeros((2, 3), bool),
        )
    with pytest.raises(ValueError, match="temperature"):
        L.supervised_contrastive_loss(
            z, np.zeros(3, np.int32), z, np.zeros(3, np.int32), temperature=0.0
        )


# ----------------------------------------------------------------------------- multi-scale
B, H, W, K, D, A = 2, 8, 12, 6, 4, 20
SIZES = ((2, 3), (4, 6), (8, 12))


def make_inputs(seed, batch=B):
    rng = np.random.default_rng(seed)
    labels = random_labels(rng, (batch, H, W), K)
    embs = [unit(rng.normal(size=(batch, h, w, D))) for h, w in SIZES]
    return labels, embs


def make_bank(seed, p=3, r=2):
    rng = np.random.default_rng(seed)
    bank = L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=p, region_bank_size=r)
    return bank._replace(
        pixel=jnp.asarray(unit(rng.normal(size=(K, p, D)))),
        pixel_valid=jnp.asarray(rng.random((K, p)) > 0.4),
        region=jnp.asarray(unit(rng.normal(size=(K, r, D)))),
        region_valid=jnp.asarray(rng.random((K, r)) > 0.4),
    )


def call(embs, labels, bank, cross_scale=True, key=7, **kw):
    return L.multiscale_contrastive_loss(
        embeddings=[jnp.asarray(e) for e in embs],
        labels=jnp.asarray(labels),
        bank=bank,
        key=jax.random.PRNGKey(key),
        num_classes=K,
        num_anchors=A,
        temperature=0.1,
        cross_scale=cross_scale,
        lambda_pixel=kw.get("lambda_pixel", 1.0),
        lambda_class=kw.get("lambda_class", 0.5),
    )


def bank_items(bank, which):
    emb = np.asarray(getattr(bank, which))
    valid = np.asarray(getattr(bank, which + "_valid"))
    z, y, v = [], [], []
    for c in range(emb.shape[0]):
        for s in range(emb.shape[1]):
            z.append(emb[c, s])
            y.append(c)
            v.append(valid[c, s])
    return np.asarray(z), np.asarray(y, np.int32), np.asarray(v)


@pytest.mark.parametrize("cross_scale", [True, False])
@pytest.mark.parametrize("with_bank", [True, False])
def test_multiscale_matches_reference(cross_scale, with_bank):
    labels, embs = make_inputs(0)
    bank = make_bank(1) if with_bank else None
    loss, aux = jax.jit(call, static_argnames="cross_scale")(embs, labels, bank, cross_scale)
    nl = len(embs)
    idx = np.asarray(aux.pixel_index)
    pix_lab = np.asarray(aux.pixel_labels).reshape(A, nl)
    pix_val = np.asarray(aux.pixel_valid).reshape(A, nl)

    anchors, alabels, avalid, regions, rlabels = [], [], [], [], []
    for l, emb in enumerate(embs):
        lab = ref_resize(labels, *emb.shape[1:3]).reshape(-1)
        n_valid = int((lab >= 0).sum())
        # sampling: distinct pixels, never an ignore pixel, all slots used when possible
        assert pix_val[:, l].sum() == min(A, n_valid)
        chosen = idx[l][pix_val[:, l]]
        assert len(set(chosen.tolist())) == len(chosen)
        assert (lab[chosen] >= 0).all()
        np.testing.assert_array_equal(pix_lab[:, l], np.where(pix_val[:, l], lab[idx[l]], -1))
        anchors.append(emb.reshape(-1, D)[idx[l]])
        alabels.append(np.where(pix_val[:, l], lab[idx[l]], -1))
        avalid.append(pix_val[:, l])
        reg, present = ref_regions(emb, ref_resize(labels, *emb.shape[1:3]), K)
        regions.append(reg.reshape(-1, D))
        rlabels.append(np.where(present, np.arange(K)[None], -1).reshape(-1))

    want_pix, want_cls = [], []
    for l in range(nl):
        layers = range(nl) if cross_scale else [l]
        zc = np.concatenate([anchors[m] for m in layers])
        yc = np.concatenate([alabels[m] for m in layers])
        vc = np.concatenate([avalid[m] for m in layers])
        self_mask = np.zeros((A, len(zc)), bool)
        off = list(layers).index(l) * A
        self_mask[np.arange(A), off + np.arange(A)] = True
        rz = np.concatenate([regions[m] for m in layers])
        ry = np.concatenate([rlabels[m] for m in layers])
        rv = ry >= 0
        if with_bank:
            bz, by, bv = bank_items(bank, "pixel")
            zc, yc, vc = (
                np.concatenate([zc, bz]),
                np.concatenate([yc, by]),
                np.concatenate([vc, bv]),
            )
            self_mask = np.concatenate([self_mask, np.zeros((A, len(bz)), bool)], axis=1)
            gz, gy, gv = bank_items(bank, "region")
            rz, ry, rv = (
                np.concatenate([rz, gz]),
                np.concatenate([ry, gy]),
                np.concatenate([rv, gv]),
            )
        want_pix.append(ref_supcon(anchors[l], alabels[l], zc, yc, 0.1, avalid[l], vc, self_mask))
        want_cls.append(ref_supcon(anchors[l], alabels[l], rz, ry, 0.1, avalid[l], rv))
        np.testing.assert_allclose(float(aux.terms[f"pixel_{l}"]), want_pix[-1], rtol=1e-4)
        np.testing.assert_allclose(float(aux.terms[f"class_{l}"]), want_cls[-1], rtol=1e-4)
    want = 1.0 * np.mean(want_pix) + 0.5 * np.mean(want_cls)
    assert want > 0
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    # aux for the bank: anchor-major pixels, image-major regions, under stop-gradient
    np.testing.assert_allclose(
        np.asarray(aux.pixels).reshape(A, nl, D)[:, 1], anchors[1], atol=1e-6
    )
    reg_aux = np.asarray(aux.regions).reshape(B, nl, K, D)
    np.testing.assert_allclose(reg_aux[:, 2], regions[2].reshape(B, K, D), atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(aux.region_labels).reshape(B, nl, K)[:, 0], rlabels[0].reshape(B, K)
    )


def test_multiscale_all_ignore_is_zero_with_finite_grad():
    labels, embs = make_inputs(1)
    labels = np.full_like(labels, -1)
    bank = make_bank(2)

    def f(es):
        return call(es, labels, bank)[0]

    value, grads = jax.value_and_grad(f)([jnp.asarray(e) for e in embs])
    assert float(value) == 0.0
    for g in grads:
        assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) == 0.0


def test_multiscale_gradient_is_finite_and_reaches_every_layer():
    labels, embs = make_inputs(2)
    grads = jax.grad(lambda es: call(es, labels, make_bank(3))[0])([jnp.asarray(e) for e in embs])
    for g in grads:
        assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0


def test_multiscale_sharded_equals_single_device():
    devices = np.array(jax.devices()[:4])
    assert len(devices) == 4, "tests/conftest.py provides 8 fake CPU devices"
    mesh = Mesh(devices, ("data",))
    labels, embs = make_inputs(3, batch=4)
    bank = make_bank(4)

    def f(es, lab, bk):
        (loss, aux), grads = jax.value_and_grad(
            lambda e: L.multiscale_contrastive_loss(
                embeddings=e,
                labels=lab,
                bank=bk,
                key=jax.random.PRNGKey(5),
                num_classes=K,
                num_anchors=A,
                temperature=0.1,
                cross_scale=True,
                lambda_pixel=1.0,
                lambda_class=1.0,
            ),
            has_aux=True,
        )(es)
        new_bank = L.update_memory_bank(bk, aux, push_per_class=2)
        return loss, aux, grads, new_bank

    single = jax.jit(f)([jnp.asarray(e) for e in embs], jnp.asarray(labels), bank)
    data = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    es = [jax.device_put(e, data) for e in embs]
    lab = jax.device_put(labels, data)
    bk = jax.device_put(bank, rep)
    assert len(es[2].sharding.device_set) == 4
    sharded = jax.jit(f, out_shardings=(rep, rep, [data] * 3, rep))(es, lab, bk)
    assert float(single[0]) > 0
    np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(sharded[1].pixel_index), np.asarray(single[1].pixel_index)
    )
    for a, b in zip(sharded[2], single[2], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    for a, b in zip(
        jax.tree_util.tree_leaves(sharded[3]), jax.tree_util.tree_leaves(single[3]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_multiscale_rejects_bad_inputs():
    labels, embs = make_inputs(0)
    with pytest.raises(ValueError, match="empty"):
        call([], labels, None)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        call(embs, labels[0], None)
    with pytest.raises(ValueError, match="bank has"):
        L.multiscale_contrastive_loss(
            embeddings=embs,
            labels=labels,
            bank=L.init_memory_bank(
                num_classes=K + 1, dim=D, pixel_bank_size=2, region_bank_size=2
            ),
            key=jax.random.PRNGKey(0),
            num_classes=K,
            num_anchors=A,
            temperature=0.1,
        )


def test_temperature_and_weights_may_be_traced():
    rng = np.random.default_rng(9)
    za, zc = unit(rng.normal(size=(8, 4))), unit(rng.normal(size=(12, 4)))
    ya = rng.integers(0, 3, size=8).astype(np.int32)
    yc = rng.integers(0, 3, size=12).astype(np.int32)
    traced = jax.jit(lambda t: L.supervised_contrastive_loss(za, ya, zc, yc, temperature=t))
    np.testing.assert_allclose(float(traced(0.3)), ref_supcon(za, ya, zc, yc, 0.3), rtol=2e-5)
    labels, embs = make_inputs(5)
    eager = call(embs, labels, None, lambda_pixel=2.0, lambda_class=0.25)[0]
    jitted = jax.jit(lambda lp, lc: call(embs, labels, None, lambda_pixel=lp, lambda_class=lc)[0])
    np.testing.assert_allclose(float(jitted(2.0, 0.25)), float(eager), rtol=1e-6)
