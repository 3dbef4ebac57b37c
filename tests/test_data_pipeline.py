"""grain pipelines (ecgan_jax/data/pipeline.py): shards, global batches, resume, eval padding."""

import json

import numpy as np
import pytest

from ecgan_jax.config_lib import base_config
from ecgan_jax.data import colorize_labels, make_eval_iterator, make_train_iterator
from ecgan_jax.data.palette import CITYSCAPES_PALETTE


def _config(n=10, batch=2, n_eval=5, **dataset):
    c = base_config()
    c.dataset.update(name="synthetic", image_size=(16, 32), synthetic_num_images=n,
                     synthetic_eval_images=n_eval, read_threads=1, **dataset)  # fmt: skip
    c.batch_size = batch
    c.seed = 7
    return c


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_keys_dtypes_shapes():
    it = make_train_iterator(_config(), process_index=0, process_count=1)
    b = next(it)
    assert b["label"].shape == (2, 16, 32) and b["label"].dtype == np.int32
    assert b["instance"].shape == (2, 16, 32) and b["instance"].dtype == np.int32
    assert b["image"].shape == (2, 16, 32, 3) and b["image"].dtype == np.float32
    assert b["edge"].shape == (2, 16, 32, 3) and b["edge"].dtype == np.float32
    assert b["stem"].shape == (2,) and b["stem"].dtype.kind == "U"
    assert -1 <= b["image"].min() and b["image"].max() <= 1
    np.testing.assert_array_equal(b["edge"][..., 0], b["edge"][..., 2])
    assert it.steps_per_epoch == 5 and it.num_examples == 10


@pytest.mark.parametrize("n", [10, 11])
def test_two_processes_read_disjoint_shards_covering_the_epoch(n):
    c = _config(n=n, batch=4)
    stems = []
    for p in range(2):
        it = make_train_iterator(c, process_index=p, process_count=2)
        assert it.local_batch_size == 2 and it.steps_per_epoch == 2  # floor(n / 2) // 2
        epoch = [str(s) for _ in range(it.steps_per_epoch) for s in next(it)["stem"]]
        stems.append(set(epoch))
        assert len(epoch) == 4 == len(set(epoch))
    assert not stems[0] & stems[1]
    # per process floor(n / 2) = 5 examples, 2 batches of 2: 8 of the 10 shard examples seen;
    # over two epochs each process sees its whole shard.
    for p in range(2):
        it = make_train_iterator(c, process_index=p, process_count=2)
        seen = {str(s) for _ in range(2 * it.steps_per_epoch * 3) for s in next(it)["stem"]}
        assert len(seen) == 5
        stems[p] = seen
    assert not stems[0] & stems[1] and len(stems[0] | stems[1]) == 10


def test_epochs_reshuffle_and_runs_are_deterministic():
    c = _config(n=8, batch=8)
    a = make_train_iterator(c, process_index=0, process_count=1)
    b = make_train_iterator(c, process_index=0, process_count=1)
    e1, e2 = next(a), next(a)
    assert sorted(e1["stem"]) == sorted(e2["stem"]) and list(e1["stem"]) != list(e2["stem"])
    assert _equal(e1, next(b)) and _equal(e2, next(b))
    c.seed = 8
    assert list(next(make_train_iterator(c, process_index=0, process_count=1))["stem"]) != list(
        e1["stem"]
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_restores_the_next_batch(num_workers):
    c = _config(n=6, batch=2, num_workers=num_workers)
    it = make_train_iterator(c, process_index=0, process_count=1)
    for _ in range(4):  # across an epoch boundary (3 steps per epoch)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    want = [next(it) for _ in range(3)]
    it.close()
    fresh = make_train_iterator(c, process_index=0, process_count=1)
    fresh.set_state(state)
    got = [next(fresh) for _ in range(3)]
    fresh.close()
    assert all(_equal(w, g) for w, g in zip(want, got, strict=True))
    assert state["num_workers"] == num_workers and state["version"] == 1


def test_set_state_with_another_config_names_the_field():
    it = make_train_iterator(_config(), process_index=0, process_count=1)
    state = it.get_state()
    other = make_train_iterator(_config(batch=4), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="config.batch_size / process count"):
        other.set_state(state)
    with pytest.raises(ValueError, match="not a TrainIterator state"):
        other.set_state({"next_index": 3})


def test_batch_size_not_divisible_by_processes():
    with pytest.raises(ValueError, match=r"config.batch_size=3 .*process count \(2\)"):
        make_train_iterator(_config(batch=3), process_index=0, process_count=2)
    with pytest.raises(ValueError, match=r"batch_size=3 .*process count \(2\)"):
        make_eval_iterator(_config(), process_index=1, process_count=2, batch_size=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_train_iterator(_config(n=3, batch=4), process_index=0, process_count=1)


def test_eval_padding_valid_mask_and_process_coverage():
    c = _config(n_eval=7, batch=4)
    single = list(make_eval_iterator(c, process_index=0, process_count=1))
    assert [b["valid"].tolist() for b in single] == [[True] * 4, [True] * 3 + [False]]
    assert list(single[1]["stem"])[-1] == ""
    # the padding row repeats a real example (finite, in range)
    np.testing.assert_array_equal(single[1]["image"][3], single[1]["image"][2])
    order = [str(s) for b in single for s, v in zip(b["stem"], b["valid"], strict=True) if v]
    assert order == [f"synthetic_eval_{i:06d}" for i in range(7)]  # source order, no shuffle
    again = list(make_eval_iterator(c, process_index=0, process_count=1))
    assert all(_equal(a, b) for a, b in zip(single, again, strict=True))
    by_stem = {str(s): b["image"][i] for b in single for i, s in enumerate(b["stem"]) if s}
    seen = []
    lens = []
    for p in range(2):
        ev = make_eval_iterator(c, process_index=p, process_count=2, batch_size=4)
        batches = list(ev)
        lens.append(len(batches))
        assert len(batches) == len(ev) == 2  # ceil(ceil(7 / 2) / 2)
        for b in batches:
            assert b["label"].shape == (2, 16, 32)
            for i in np.flatnonzero(b["valid"]):
                seen.append(str(b["stem"][i]))
                np.testing.assert_array_equal(b["image"][i], by_stem[str(b["stem"][i])])
    assert sorted(seen) == order and lens[0] == lens[1]


def test_eval_process_without_examples_yields_padding_only():
    c = _config(n_eval=1, batch=2)
    b = list(make_eval_iterator(c, process_index=1, process_count=2))
    assert len(b) == 1 and not b[0]["valid"].any() and b[0]["label"].shape == (1, 16, 32)


def test_colorize_labels():
    label = np.array([[7, 26], [-1, 0]])
    rgb = colorize_labels(label, 35)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], CITYSCAPES_PALETTE[7])  # road (128, 64, 128)
    np.testing.assert_array_equal(rgb[0, 1], (0, 0, 142))  # car
    np.testing.assert_array_equal(rgb[1, 0], (0, 0, 0))  # ignore
    generic = colorize_labels(np.arange(200).reshape(10, 20), 183)
    assert len({tuple(c) for c in generic.reshape(-1, 3)}) == 200  # distinct colours
    batch = colorize_labels(np.zeros((3, 4, 5), np.int32), 9)
    assert batch.shape == (3, 4, 5, 3)
