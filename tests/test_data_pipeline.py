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


def _host(monkeypatch, cpu_count, affinity=None):
    """Makes this process see `cpu_count` cores (an affinity mask of `affinity` cores)."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: cpu_count)
    mask = set(range((cpu_count or 1) if affinity is None else affinity))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: mask, raising=False)


def test_resolve_num_workers_auto_and_bad_values(monkeypatch):
    from ecgan_jax.config_lib import ConfigError
    from ecgan_jax.data.pipeline import MAX_AUTO_WORKERS, resolve_num_workers

    for cores, want in [(9, 8), (3, 2), (2, 0), (1, 0), (None, 0), (500, MAX_AUTO_WORKERS)]:
        _host(monkeypatch, cores)
        assert resolve_num_workers("auto") == want, cores
    assert MAX_AUTO_WORKERS == 32
    _host(monkeypatch, 64, affinity=4)  # taskset / cpuset: 4 of the 64 cores are ours
    assert resolve_num_workers("auto") == 3
    assert resolve_num_workers("auto", cores=5) == 4
    assert [resolve_num_workers(v) for v in (0, 3, "3", np.int64(2))] == [0, 3, 3, 2]
    for bad in (-1, "-1", "four", "", 2.0, True, None, "AUTO"):
        with pytest.raises(ConfigError) as e:
            resolve_num_workers(bad)
        message = str(e.value)
        assert "\n" not in message and "'dataset.num_workers'" in message, bad
        assert f"= {bad!r} is invalid; allowed: 'auto'" in message and "integer >= 0" in message


def _with_workers(config, value):
    # base_config declares num_workers as an int; "auto" replaces the field itself.
    del config.dataset["num_workers"]
    config.dataset.num_workers = value
    return config


def test_num_workers_auto_state_holds_the_resolved_count(monkeypatch):
    _host(monkeypatch, 2)  # "auto" -> 0 workers: no worker processes in this test
    auto = make_train_iterator(_with_workers(_config(n=6), "auto"), process_index=0,
                               process_count=1)  # fmt: skip
    assert auto.num_workers == 0
    next(auto)
    state = json.loads(json.dumps(auto.get_state()))
    assert state["num_workers"] == 0
    want = next(auto)
    explicit = make_train_iterator(_config(n=6, num_workers=0), process_index=0, process_count=1)
    explicit.set_state(state)  # resolved counts compared: "auto" (0 here) == 0
    assert _equal(want, next(explicit))
    state["num_workers"] = 2  # a checkpoint made where "auto" gave 2 workers
    again = make_train_iterator(_with_workers(_config(n=6), "auto"), process_index=0,
                                process_count=1)  # fmt: skip
    with pytest.raises(ValueError) as e:
        again.set_state(state)
    assert str(e.value) == (
        "cannot restore the input pipeline: the checkpoint was made with "
        "config.dataset.num_workers = 2, this run has 0 ('auto' on a host of 2 core(s)); set "
        "--config.dataset.num_workers=2 to resume"
    )
    with pytest.raises(ValueError, match="'dataset.num_workers' = 'some'"):
        make_eval_iterator(_with_workers(_config(), "some"), process_index=0, process_count=1)


def _data_bench():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "data_bench.py"
    spec = importlib.util.spec_from_file_location("data_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_bench_cpu_seconds_count_live_children():
    import subprocess
    import sys

    bench = _data_bench()
    if not bench.HAVE_PROC:
        pytest.skip("no /proc")
    burn = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    before = bench.cpu_seconds()
    child = subprocess.Popen(
        [sys.executable, "-c", burn + "print(1, flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline() == "1\n"  # it burnt 0.5 s of CPU and is still alive
        # RUSAGE_CHILDREN counts reaped children only: the live child comes from /proc.
        assert bench.cpu_seconds() - before >= 0.45
    finally:
        child.stdin.close()
        child.wait()


def test_data_bench_preprocessed_source_equals_the_png_path(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from ecgan_jax.data.fake_trees import write_split

    bench = _data_bench()
    root = str(tmp_path / "cityscapes")
    stems = [f"aachen_000000_{i:06d}" for i in range(4)]
    write_split("cityscapes", root, "train", stems, size=(16, 32), label_nc=34)
    png = bench.cityscapes_config(root, 2, (8, 16))
    pre = bench.cityscapes_config(root, 2, (8, 16))
    built = bench.build_preprocessed(root, str(tmp_path / "work"), (8, 16))
    pre.dataset.update(**built["fields"])
    assert pre.dataset.source == "tfds" and pre.dataset.edges == "precomputed"

    def by_stem(config):
        it = make_train_iterator(config, process_index=0, process_count=1)
        out = {str(s): {k: v[i] for k, v in b.items()} for b in (next(it), next(it))
               for i, s in enumerate(b["stem"])}  # fmt: skip
        it.close()
        return out

    a, b = by_stem(png), by_stem(pre)
    assert sorted(a) == sorted(b) == stems
    for s in stems:  # TFDS keeps its own record order, and flips follow the position
        flip = not np.array_equal(a[s]["label"], b[s]["label"])
        for k in ("label", "instance", "image", "edge"):
            np.testing.assert_array_equal(a[s][k], b[s][k][:, ::-1] if flip else b[s][k], k)
    r = bench.run(pre, 2)
    assert r["workers"] == 0 and r["images_per_cpu_s"] > 0
