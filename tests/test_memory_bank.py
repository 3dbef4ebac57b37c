"""Per-class FIFO memory banks (docs/DESIGN.md §D.3.10) against a deque reference."""

import collections
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ecgan_jax.losses as L

K, D = 4, 3


def fifo_contents(queue, valid, ptr):
    """The valid entries of each class, oldest first, read from the ring buffer."""
    queue, valid, ptr = np.asarray(queue), np.asarray(valid), np.asarray(ptr)
    s = queue.shape[1]
    out = []
    for c in range(queue.shape[0]):
        order = [(int(ptr[c]) + i) % s for i in range(s)]
        out.append([queue[c, j] for j in order if valid[c, j]])
    return out


def push_reference(deques, items, labels, valid, cap, size):
    for c in range(len(deques)):
        picked = [x for x, y, v in zip(items, labels, valid, strict=True) if v and y == c]
        if cap is not None:
            picked = picked[:cap]
        for x in picked:
            deques[c].append(x)
            while len(deques[c]) > size:
                deques[c].popleft()


class Fields(NamedTuple):
    """Any pytree with these six attributes can feed `update_memory_bank`."""

    pixels: np.ndarray
    pixel_labels: np.ndarray
    pixel_valid: np.ndarray
    regions: np.ndarray
    region_labels: np.ndarray
    region_valid: np.ndarray


def fields(rng, n_pix, n_reg):
    def part(n):
        items = rng.normal(size=(n, D)).astype(np.float32)
        labels = rng.integers(-1, K, size=n).astype(np.int32)
        valid = rng.random(n) > 0.2
        return items, labels, valid

    px, py, pv = part(n_pix)
    rx, ry, rv = part(n_reg)
    return Fields(
        pixels=px, pixel_labels=py, pixel_valid=pv, regions=rx, region_labels=ry, region_valid=rv
    )


def test_init_is_empty_and_checks_arguments():
    bank = L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=5, region_bank_size=2)
    assert bank.pixel.shape == (K, 5, D) and bank.region.shape == (K, 2, D)
    assert bank.pixel.dtype == jnp.float32 and bank.pixel_valid.dtype == jnp.bool_
    assert not np.asarray(bank.pixel_valid).any() and not np.asarray(bank.region_valid).any()
    with pytest.raises(ValueError, match="pixel_bank_size"):
        L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=0, region_bank_size=2)


@pytest.mark.parametrize("cap", [2, 3, 50])
def test_updates_follow_fifo_order_capacity_and_validity(cap):
    rng = np.random.default_rng(cap)
    p, r = 5, 3
    bank = L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=p, region_bank_size=r)
    ref_pix = [collections.deque() for _ in range(K)]
    ref_reg = [collections.deque() for _ in range(K)]
    update = jax.jit(L.update_memory_bank, static_argnames=("push_per_class",))
    for step in range(6):
        f = fields(rng, 12, 9)
        if step == 0:
            f.pixel_labels[:] = 2  # one class floods the first push (12 > P)
            f.pixel_valid[:] = True
        bank = update(bank, f, push_per_class=cap)
        push_reference(ref_pix, f.pixels, f.pixel_labels, f.pixel_valid, cap, p)
        push_reference(ref_reg, f.regions, f.region_labels, f.region_valid, None, r)
        for got, want in (
            (fifo_contents(bank.pixel, bank.pixel_valid, bank.pixel_ptr), ref_pix),
            (fifo_contents(bank.region, bank.region_valid, bank.region_ptr), ref_reg),
        ):
            for c in range(K):
                assert len(got[c]) == len(want[c]), (step, c)
                np.testing.assert_array_equal(
                    np.asarray(got[c]).reshape(-1, D), np.asarray(list(want[c])).reshape(-1, D)
                )
    # the run exercised wrap-around: full queues whose oldest entry is not in slot 0
    full = np.asarray(bank.pixel_valid).all(1) & (np.asarray(bank.pixel_ptr) != 0)
    assert full.any() and np.asarray(bank.region_valid).all(1).any()


def test_per_class_cap_and_ignored_items():
    bank = L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=8, region_bank_size=2)
    items = np.arange(10 * D, dtype=np.float32).reshape(10, D)
    labels = np.array([1, 1, 1, 1, 1, -1, 3, 3, 7, 0], np.int32)  # 7 is out of range
    valid = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], bool)
    f = Fields(
        pixels=items,
        pixel_labels=labels,
        pixel_valid=valid,
        regions=np.zeros((1, D), np.float32),
        region_labels=np.array([-1], np.int32),
        region_valid=np.array([True]),
    )
    new = L.update_memory_bank(bank, f, push_per_class=3)
    np.testing.assert_array_equal(np.asarray(new.pixel_valid).sum(1), [1, 3, 0, 1])
    np.testing.assert_array_equal(np.asarray(new.pixel_ptr), [1, 3, 0, 1])
    np.testing.assert_array_equal(np.asarray(new.pixel[1, :3]), items[:3])
    np.testing.assert_array_equal(np.asarray(new.pixel[3, 0]), items[6])
    np.testing.assert_array_equal(np.asarray(new.pixel[0, 0]), items[9])
    assert not np.asarray(new.region_valid).any()


def test_update_from_contrastive_aux_pushes_anchor_major_and_stops_gradient():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, K, size=(2, 8, 8)).astype(np.int32)
    embs = [jnp.asarray(L.l2_normalize(rng.normal(size=(2, s, s, D)))) for s in (4, 8)]
    bank = L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=6, region_bank_size=4)

    def loss_after_push(es):
        _, aux = L.multiscale_contrastive_loss(
            embeddings=es,
            labels=labels,
            bank=bank,
            key=jax.random.PRNGKey(0),
            num_classes=K,
            num_anchors=10,
            temperature=0.1,
        )
        return jnp.sum(L.update_memory_bank(bank, aux, push_per_class=2).pixel), aux

    (_, aux), grads = jax.value_and_grad(loss_after_push, has_aux=True)(embs)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)  # bank contents are constants
    new = L.update_memory_bank(bank, aux, push_per_class=2)
    pix, lab = np.asarray(aux.pixels), np.asarray(aux.pixel_labels)
    for c in range(K):
        rows = [i for i in range(len(lab)) if lab[i] == c][:2]
        np.testing.assert_array_equal(np.asarray(new.pixel[c, : len(rows)]), pix[rows])
    # regions: one per image and layer containing the class (2 images × 2 layers ≤ 4 slots)
    present = [(labels[b] == c).any() for b in range(2) for c in range(K)]
    np.testing.assert_array_equal(
        np.asarray(new.region_valid).sum(1),
        [2 * sum(present[b * K + c] for b in range(2)) for c in range(K)],
    )


def test_bank_survives_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint", reason="orbax-checkpoint not installed")
    rng = np.random.default_rng(1)
    bank = L.init_memory_bank(num_classes=K, dim=D, pixel_bank_size=4, region_bank_size=2)
    bank = L.update_memory_bank(bank, fields(rng, 20, 6), push_per_class=3)
    assert np.asarray(bank.pixel_valid).any()
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "bank", bank)
    ckpt.wait_until_finished()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, bank)
    restored = ckpt.restore(tmp_path / "bank", abstract)
    assert isinstance(restored, L.MemoryBank)
    for name in L.MemoryBank._fields:
        a, b = getattr(bank, name), getattr(restored, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the restored bank keeps working: the next push continues the same FIFOs
    f = fields(rng, 8, 4)
    np.testing.assert_array_equal(
        np.asarray(L.update_memory_bank(restored, f, push_per_class=3).pixel),
        np.asarray(L.update_memory_bank(bank, f, push_per_class=3).pixel),
    )
