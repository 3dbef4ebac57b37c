"""Anchor top-k per device shard == one global top-k, on 1, 4 and 8 devices (§D.3.4).

The sharded runs are `jax.jit` with the batch sharded on the `data` axis of a mesh over the
first n of the 8 fake CPU devices (tests/conftest.py); the reference is the plain call on one
device with `selection="global"`, the single top-k over the whole batch that the code used
before.
"""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ecgan_jax.losses as L
from ecgan_jax.losses.sampling import select_top_pixels
from ecgan_jax.sharding import DATA_AXIS, make_mesh

DEVICE_COUNTS = (1, 4, 8)


def _mesh(n):
    return make_mesh(jax.devices()[:n])


def _sharded(mesh, *arrays):
    return [jax.device_put(a, NamedSharding(mesh, P(DATA_AXIS))) for a in arrays]


def _tied_scores(seed, shape):
    """Scores drawn from 5 values (−inf, ±0.0 among them), so nearly every score is tied."""
    pool = np.array([-np.inf, -0.0, 0.0, 1.5, -2.0], np.float32)
    return pool[np.random.default_rng(seed).integers(0, pool.size, size=shape)]


def _reference_top_k(scores, payload, k):
    """The old code: one `jax.lax.top_k` over all flattened scores, padded with −inf."""
    flat = np.concatenate([scores.reshape(-1), np.full(max(0, k - scores.size), -np.inf)])
    values, index = jax.lax.top_k(jnp.asarray(flat, jnp.float32), k)
    values, index = np.asarray(values), np.asarray(index)
    ok = np.isfinite(values)
    picked = payload.reshape(-1)[np.where(ok, index, 0)]
    return values, index, picked, ok


@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_per_shard_top_k_equals_global_top_k_with_ties(n):
    mesh = _mesh(n)
    b, pixels = 8, 12
    scores = _tied_scores(n, (b, pixels))
    payload = np.arange(b * pixels, dtype=np.int32).reshape(b, pixels) * 7
    fn = jax.jit(
        lambda s, p, k: select_top_pixels(scores=s, payload=p, k=k),
        static_argnums=2,
    )
    fn_per_shard = jax.jit(  # on one device "auto" is the global top-k; force the shard path
        lambda s, p, k: select_top_pixels(scores=s, payload=p, k=k, selection="per_shard"),
        static_argnums=2,
    )
    s, p = _sharded(mesh, scores, payload)
    with jax.set_mesh(mesh):  # "auto" reads the context mesh: per shard when n > 1
        for f, k in itertools.product((fn, fn_per_shard), (5, 40, 100)):  # 100 > B·n: padding
            values, index, picked = (np.asarray(x) for x in f(s, p, k))
            want_values, want_index, want_picked, ok = _reference_top_k(scores, payload, k)
            np.testing.assert_array_equal(values, want_values)
            # The same bits: −0.0 and +0.0 keep their order (TopK compares in total order).
            np.testing.assert_array_equal(np.signbit(values), np.signbit(want_values))
            np.testing.assert_array_equal(index[ok], want_index[ok])
            np.testing.assert_array_equal(picked[ok], want_picked[ok])


@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_sample_anchors_sharded_equals_unsharded(n):
    mesh = _mesh(n)
    rng = np.random.default_rng(10 + n)
    labels = rng.integers(-1, 5, size=(8, 6, 10)).astype(np.int32)
    labels[5:] = -1  # three empty images
    sparse = np.full((8, 6, 10), -1, np.int32)
    sparse[0, 1, 2], sparse[3, 0, 0], sparse[7, 5, 9] = 2, 4, 0  # fewer pixels than anchors
    key = jax.random.PRNGKey(3)

    def draw(labels, mesh=None):
        return L.sample_anchors(labels=labels, key=key, num_anchors=50, num_classes=5, mesh=mesh)

    for lab in (labels, sparse):
        want = L.sample_anchors(
            labels=lab, key=key, num_anchors=50, num_classes=5, selection="global"
        )
        (lab_sharded,) = _sharded(mesh, lab)
        with jax.set_mesh(mesh):
            got_context = jax.jit(draw)(lab_sharded)
        got_explicit = jax.jit(draw, static_argnums=1)(lab_sharded, mesh)  # no context mesh
        for got in (got_context, got_explicit):
            for name in ("index", "labels", "valid"):
                np.testing.assert_array_equal(
                    np.asarray(getattr(got, name)), np.asarray(getattr(want, name)), name
                )
    assert int(np.asarray(want.valid).sum()) == 3


@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_multiscale_loss_sharded_equals_unsharded(n):
    mesh = _mesh(n)
    rng = np.random.default_rng(20 + n)
    b, d, k = 8, 8, 4
    labels = rng.integers(-1, k, size=(b, 8, 12)).astype(np.int32)
    embeddings = [
        np.asarray(L.l2_normalize(rng.normal(size=(b, h, w, d)).astype(np.float32)))
        for h, w in ((4, 6), (8, 12))
    ]
    bank = L.init_memory_bank(num_classes=k, dim=d, pixel_bank_size=4, region_bank_size=2)
    key = jax.random.PRNGKey(7)

    def loss(embeddings, labels, selection="auto"):
        return L.multiscale_contrastive_loss(
            embeddings=embeddings,
            labels=labels,
            bank=bank,
            key=key,
            num_classes=k,
            num_anchors=32,
            temperature=0.1,
            anchor_selection=selection,
        )

    def in_step(embeddings, labels):
        # How a train step jitted without a context mesh can still see its mesh.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return loss(embeddings, labels)

    want_loss, want_aux = jax.jit(loss, static_argnums=2)(embeddings, labels, "global")
    *emb_sharded, lab_sharded = _sharded(mesh, *embeddings, labels)
    with jax.set_mesh(mesh):
        got_context = jax.jit(loss)(emb_sharded, lab_sharded)
    got_traced = jax.jit(in_step)(emb_sharded, lab_sharded)
    for got_loss, got_aux in (got_context, got_traced):
        np.testing.assert_array_equal(
            np.asarray(got_aux.pixel_index), np.asarray(want_aux.pixel_index)
        )
        np.testing.assert_array_equal(
            np.asarray(got_aux.pixel_labels), np.asarray(want_aux.pixel_labels)
        )
        np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    assert 0.0 < float(want_loss) < 50.0


_ARRAY = re.compile(r"\b(?:f32|s32|u32|pred)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([\w\-]+)\((.*)$")


def _elements(shape_text):
    sizes = [
        int(np.prod([int(d) for d in dims.split(",") if d])) for dims in _ARRAY.findall(shape_text)
    ]
    return max(sizes, default=0)


def _largest(hlo):
    """Largest sort / TopK operand and largest all-gather result, in elements."""
    shapes, largest_sort, largest_gather = {}, 0, 0
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = shape
        if op == "sort" or (op == "custom-call" and 'custom_call_target="TopK"' in rest):
            for operand in re.findall(r"%([\w.\-]+)", rest.split(")")[0]):
                largest_sort = max(largest_sort, _elements(shapes.get(operand, "")))
        if op.removesuffix("-start") == "all-gather":
            largest_gather = max(largest_gather, _elements(shape))
    return largest_sort, largest_gather


def test_per_shard_hlo_sorts_no_global_batch():
    mesh = _mesh(8)
    b, h, w, k = 8, 16, 16, 16
    global_pixels = b * h * w  # 2048; one device holds 256
    labels = jax.ShapeDtypeStruct((b, h, w), jnp.int32, sharding=NamedSharding(mesh, P(DATA_AXIS)))

    def draw(labels, selection):
        return L.sample_anchors(
            labels=labels,
            key=jax.random.PRNGKey(0),
            num_anchors=k,
            num_classes=3,
            selection=selection,
        )

    def compiled(selection):
        with jax.set_mesh(mesh):
            return jax.jit(draw, static_argnums=1).lower(labels, selection).compile().as_text()

    old_sort, old_gather = _largest(compiled("global"))
    new_sort, new_gather = _largest(compiled("auto"))
    assert old_sort >= global_pixels and old_gather >= global_pixels, (old_sort, old_gather)
    assert new_sort == global_pixels // 8, new_sort  # the local top-k over one shard
    assert new_gather == 8 * k, new_gather  # k candidates per device


def test_bad_selection_and_missing_mesh_fail_clearly():
    scores = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="selection='best'; allowed: auto, global, per_shard"):
        select_top_pixels(scores=scores, payload=scores, k=2, selection="best")
    with pytest.raises(ValueError, match="needs a mesh with axis 'data'"):
        select_top_pixels(scores=scores, payload=scores, k=2, selection="per_shard")
    with pytest.raises(ValueError, match="batch 4 does not divide over the 8 devices"):
        select_top_pixels(scores=scores, payload=scores, k=2, selection="per_shard", mesh=_mesh(8))
    with pytest.raises(ValueError, match="must be the same"):
        select_top_pixels(scores=scores, payload=scores[:, :2], k=2)
    # "auto" with an indivisible batch or no data axis falls back to the global top-k.
    values, index, _ = select_top_pixels(scores=scores, payload=scores, k=2, mesh=_mesh(8))
    np.testing.assert_array_equal(np.asarray(index), [0, 1])
