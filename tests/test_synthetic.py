"""The embedded synthetic dataset (ecgan_jax/data/synthetic.py)."""

import hashlib

import numpy as np

from ecgan_jax.config_lib import load_config
from ecgan_jax.data import canny, make_eval_iterator, make_train_iterator
from ecgan_jax.data.synthetic import CAR, CAR_INSTANCE_BASE, NUM_CLASSES, SyntheticSource, scene


def test_deterministic_from_seed_and_index():
    a = SyntheticSource(4, (64, 128), seed=3, stream=0)
    b = SyntheticSource(4, (64, 128), seed=3, stream=0)
    for i in range(4):
        for k in ("label", "instance", "image"):
            np.testing.assert_array_equal(a[i][k], b[i][k])
    other_seed = SyntheticSource(4, (64, 128), seed=4, stream=0)
    eval_stream = SyntheticSource(4, (64, 128), seed=3, stream=1)
    assert not np.array_equal(a[0]["image"], other_seed[0]["image"])
    assert not np.array_equal(a[0]["image"], eval_stream[0]["image"])
    assert a[0]["stem"] == "synthetic_train_000000" and eval_stream[2]["stem"].endswith("02")


def test_scene_contents():
    seen = np.zeros(NUM_CLASSES, bool)
    for i in range(30):
        s = scene(np.random.default_rng(i), (64, 128))
        assert s["label"].dtype == np.int32 and s["label"].shape == (64, 128)
        assert s["image"].dtype == np.uint8 and s["image"].shape == (64, 128, 3)
        assert 0 <= s["label"].min() and s["label"].max() < NUM_CLASSES
        seen[np.unique(s["label"])] = True
        car = s["label"] == CAR
        ids = np.unique(s["instance"][car])
        assert car.any() and (ids >= CAR_INSTANCE_BASE).all()
        np.testing.assert_array_equal(s["instance"][~car], s["label"][~car])
    assert seen.all()  # every class occurs


def test_several_cars_get_distinct_instance_ids():
    ids = []
    for i in range(20):
        inst = scene(np.random.default_rng(i), (64, 128))["instance"]
        ids.append(np.unique(inst[inst >= CAR_INSTANCE_BASE]))
    assert max(len(x) for x in ids) >= 2  # several cars, each its own id


def test_colour_and_texture_depend_on_the_class():
    """Per-class mean colours differ between classes far more than across images, and textured
    classes (building, vegetation) vary more inside a region than the sky does."""
    means = [[] for _ in range(NUM_CLASSES)]
    local_std = [[] for _ in range(NUM_CLASSES)]
    for i in range(20):
        s = scene(np.random.default_rng(i), (64, 128))
        img = s["image"].astype(np.float64)
        for c in range(NUM_CLASSES):
            m = s["label"] == c
            if m.sum() >= 20:
                means[c].append(img[m].mean(0))
                # horizontal pixel differences inside the class
                both = m[:, 1:] & m[:, :-1]
                local_std[c].append(np.abs(np.diff(img, axis=1))[both].mean())
    centre = np.array([np.mean(m, 0) for m in means])
    spread = max(
        np.mean(np.linalg.norm(np.array(m) - centre[c], axis=1))
        for c, m in enumerate(means)
        if c not in (5, 7)
    )  # fmt: skip  (cars/signs: random colours)
    sky, road, side, building, veg = 0, 1, 2, 3, 4
    for a, b in [(sky, road), (road, building), (building, veg), (side, road), (sky, veg)]:
        assert np.linalg.norm(centre[a] - centre[b]) > spread, (a, b)
    assert np.mean(local_std[building]) > 2 * np.mean(local_std[sky])
    assert np.mean(local_std[veg]) > 2 * np.mean(local_std[sky])


def test_pipeline_batches_of_the_demo_config():
    c = load_config("configs/synthetic.py:smoke")
    c.dataset.read_threads = 1
    it = make_train_iterator(c, process_index=0, process_count=1)
    assert it.num_examples == c.dataset.synthetic_num_images
    b = next(it)
    h, w = c.dataset.image_size
    assert b["label"].shape == (2, h, w) and b["image"].shape == (2, h, w, 3)
    # Edges come from the same Canny as everywhere else (up to the flip).
    idx = int(str(b["stem"][0]).rsplit("_", 1)[1])
    raw = SyntheticSource(8, (h, w), seed=c.seed, stream=0)[idx]
    e = canny(raw["image"]) / 127.5 - 1.0
    assert np.array_equal(b["edge"][0, ..., 0], e) or np.array_equal(b["edge"][0, ..., 0],
                                                                      e[:, ::-1])  # fmt: skip
    ev = list(make_eval_iterator(c, process_index=0, process_count=1))
    n_eval = sum(int(x["valid"].sum()) for x in ev)
    assert n_eval == c.dataset.synthetic_eval_images
    np.testing.assert_array_equal(ev[0]["edge"][0, ..., 1],
                                  canny(SyntheticSource(16, (h, w), seed=c.seed, stream=1)[0][
                                      "image"]) / 127.5 - 1.0)  # fmt: skip


def test_scenes_are_bit_identical_to_the_recorded_ones():
    """A hash of scenes of several sizes and seeds (label, instance and image bytes, then the
    next draw of `rng`, so that the number of draws counts too), recorded from the code of
    commit eb6cfef: a refactoring of `scene` must leave every generated dataset unchanged."""
    digest = hashlib.sha256()
    cases = [(0, (64, 128)), (1, (64, 128)), (7, (32, 48)), (11, (96, 96)), (5, (17, 29))]
    for seed, size in cases + [(3, (256, 512))]:
        rng = np.random.default_rng(seed)
        s = scene(rng, size)
        for k in ("label", "instance", "image"):
            digest.update(s[k].tobytes())
        digest.update(np.float64(rng.random()).tobytes())
    want = "66f63316ebccf75c4e6dbcf39e510e26dd2d60f15166222be6657b1dee0fe1c0"
    assert digest.hexdigest() == want
