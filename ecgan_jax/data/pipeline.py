"""grain input pipelines: per-process shards of global batches, checkpointable (§7, §D.6).

`make_train_iterator(config)` -> `TrainIterator`, an endless iterator of local batches:

    label    int32   (b, H, W)      b = config.batch_size / process_count
    instance int32   (b, H, W)      zeros where the dataset has no instances
    image    float32 (b, H, W, 3)   [-1, 1]
    edge     float32 (b, H, W, 3)   [-1, 1], three identical channels
    stem     unicode (b,)           file stems (host only; dropped by `sharding.global_batch`)

Process p of n reads the strided shard p, p + n, ... of the first n * floor(N / n) examples
(every shard has the same length, so all processes take the same number of steps and hold the
same iterator state), shuffled by `config.seed` and reshuffled every epoch, cut into batches with
drop_remainder (an epoch is floor(floor(N / n) / b) steps), repeated forever. Random crops and
flips come from grain's per-element rngs (seed, process, epoch, index): deterministic.
`dataset.num_workers` > 0 decodes in that many grain worker processes (`mp_prefetch`);
"auto" picks the count from the host's cores (`resolve_num_workers`).

Iterator state (`get_state()` / `set_state(state)`): a JSON-serialisable dict
`{"version": 1, "grain": <grain DatasetIterator state>, "num_workers", "process_count",
"local_batch_size", "num_examples", "seed"}` (num_workers as resolved, an int); restoring into
an iterator built from a config with different values of those fields is an error naming the
field. Resume is exact: the next batch after `set_state(s)` equals the next batch after the
`get_state()` that gave s.

`make_eval_iterator(config)` -> `EvalIterable`: the eval split once, in source order, no
shuffle, no flip, no crop (straight resize); process p reads examples p, p + n, ...; every
process yields the same number of batches, the last ones padded by repeating a real example,
with `valid` (bool (b,)) False on padding rows and stem "".
"""

from __future__ import annotations

import dataclasses
import os

import grain
import jax
import numpy as np

from ecgan_jax.config_lib import MAX_AUTO_WORKERS, num_workers_setting
from ecgan_jax.data.sources import make_source
from ecgan_jax.data.transforms import DataSpec, ExampleTransform

STATE_VERSION = 1
KEYS = ("label", "instance", "image", "edge", "stem")


def host_cores() -> int:
    """The CPU cores this process may run on: os.cpu_count(), less where an affinity mask
    (taskset, a container's cpuset) leaves it fewer."""
    n = os.cpu_count() or 1
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        n = min(n, len(affinity(0)))
    return max(n, 1)


def auto_num_workers(cores: int) -> int:
    """One grain worker per core but one, which the training process keeps, at most
    MAX_AUTO_WORKERS (each worker is a whole Python process: memory, start-up time), and none
    on hosts of 1-2 cores, where a worker decodes no more images per CPU-second than the
    training process's own read threads and adds its start-up (BENCHMARKS.md "Input pipeline")."""
    return 0 if cores <= 2 else min(cores - 1, MAX_AUTO_WORKERS)


def resolve_num_workers(value, *, cores: int | None = None) -> int:
    """`dataset.num_workers` as a grain worker count: an integer >= 0 as is, "auto" as
    `auto_num_workers(cores)` (`cores` defaults to `host_cores()`); the check and its error
    are `config_lib.num_workers_setting`'s."""
    value = num_workers_setting(value)
    if value == "auto":
        return auto_num_workers(host_cores() if cores is None else int(cores))
    return value


def _processes(process_index, process_count) -> tuple[int, int]:
    if process_index is None and process_count is None:
        shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    else:
        shard = grain.sharding.ShardOptions(
            shard_index=jax.process_index() if process_index is None else int(process_index),
            shard_count=jax.process_count() if process_count is None else int(process_count),
            drop_remainder=True,
        )
    if not 0 <= shard.shard_index < shard.shard_count:
        raise ValueError(
            f"process_index={shard.shard_index} is invalid for process_count="
            f"{shard.shard_count}; allowed: 0 <= process_index < process_count"
        )
    return shard.shard_index, shard.shard_count


def _local_batch(global_batch: int, process_count: int, field: str = "config.batch_size") -> int:
    if global_batch < 1 or global_batch % process_count:
        raise ValueError(
            f"{field}={global_batch} must be a positive multiple of the process count "
            f"({process_count}): each process reads {field} / process_count examples"
        )
    return global_batch // process_count


def _ensure_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app nobody parsed them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _to_iter_dataset(ds: grain.MapDataset, config, workers: int) -> grain.IterDataset:
    d = config.dataset
    prefetch = max(int(d.get("prefetch", 2)), 1)
    threads = int(d.get("read_threads", 2))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        _ensure_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        )
    return it


def _stack(rows: list[dict]) -> dict:
    out = {k: np.stack([r[k] for r in rows]) for k in KEYS if k != "stem"}
    out["stem"] = np.array([r["stem"] for r in rows], dtype=np.str_)
    return out


def _plain(batch: dict) -> dict:
    # mp_prefetch hands out shared-memory arrays; give the caller ordinary numpy arrays.
    return {k: np.array(v) for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class _TrainFn:
    transform: ExampleTransform

    def __call__(self, record, rng):
        return self.transform(record, rng)


class TrainIterator:
    """Endless iterator of this process's training batches, with `get_state`/`set_state`.

    Attributes: `num_examples` (N, the whole split over all processes), `local_batch_size`,
    `global_batch_size`, `steps_per_epoch`, `process_index`, `process_count`.
    """

    def __init__(self, config, *, process_index=None, process_count=None):
        self.process_index, self.process_count = _processes(process_index, process_count)
        self.global_batch_size = int(config.batch_size)
        self.local_batch_size = _local_batch(self.global_batch_size, self.process_count)
        self.seed = int(config.seed)
        self.num_workers_setting = config.dataset.get("num_workers", 0)
        self.num_workers = resolve_num_workers(self.num_workers_setting)
        self.source = make_source(config, train=True)
        self.num_examples = len(self.source)
        per_process = self.num_examples // self.process_count
        self.steps_per_epoch = per_process // self.local_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split ({self.source!r}) has {self.num_examples} examples: fewer "
                f"than one batch per process (config.batch_size={self.global_batch_size}, "
                f"{self.process_count} process(es))"
            )
        p, n = self.process_index, self.process_count
        ds = grain.MapDataset.source(self.source)[p : per_process * n : n]
        ds = ds.shuffle(seed=self.seed)
        transform = ExampleTransform(DataSpec.from_config(config), train=True)
        # Fold the process into the augmentation seed so shards do not share crops/flips.
        ds = ds.random_map(_TrainFn(transform), seed=self.seed * 1_000_003 + p)
        ds = ds.batch(self.local_batch_size, drop_remainder=True, batch_fn=_stack)
        ds = ds.repeat(None)  # reseeds the shuffle and the augmentation every epoch
        self._dataset = _to_iter_dataset(ds, config, self.num_workers)
        self._iterator = iter(self._dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return _plain(next(self._iterator))

    def _fingerprint(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "process_count": self.process_count,
            "local_batch_size": self.local_batch_size,
            "num_examples": self.num_examples,
            "seed": self.seed,
        }

    def get_state(self) -> dict:
        """JSON-serialisable dict (see the module docstring)."""
        grain_state = self._iterator.get_state()
        return {"version": STATE_VERSION, "grain": grain_state, **self._fingerprint()}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a TrainIterator state (version {STATE_VERSION} dict): {state!r:.200}"
            )
        fields = {"num_workers": "config.dataset.num_workers", "seed": "config.seed",
                  "process_count": "the process count", "num_examples": "the dataset size",
                  "local_batch_size": "config.batch_size / process count"}  # fmt: skip
        for key, value in self._fingerprint().items():
            if state.get(key) != value:
                hint = ""
                if key == "num_workers" and self.num_workers_setting == "auto":
                    # grain's state holds one entry per worker: the resolved counts must match.
                    hint = (
                        f" ('auto' on a host of {host_cores()} core(s)); set "
                        f"--config.dataset.num_workers={state.get(key)!r} to resume"
                    )
                raise ValueError(
                    f"cannot restore the input pipeline: the checkpoint was made with "
                    f"{fields[key]} = {state.get(key)!r}, this run has {value!r}{hint}"
                )
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def make_train_iterator(config, *, process_index=None, process_count=None) -> TrainIterator:
    """This process's endless, checkpointable iterator of training batches (module doc)."""
    return TrainIterator(config, process_index=process_index, process_count=process_count)


@dataclasses.dataclass(frozen=True)
class _EvalFn:
    transform: ExampleTransform

    def __call__(self, record):
        return self.transform(record, None)


class EvalIterable:
    """The eval split once per `iter()`, padded to whole batches with a `valid` mask.

    Attributes: `num_examples` (N), `local_batch_size`, `num_batches` (= len(self), the same
    on every process: ceil(ceil(N / n) / b)).
    """

    def __init__(self, config, *, process_index=None, process_count=None, batch_size=None):
        self.process_index, self.process_count = _processes(process_index, process_count)
        field = "config.batch_size" if batch_size is None else "batch_size"
        global_batch = int(config.batch_size if batch_size is None else batch_size)
        self.local_batch_size = _local_batch(global_batch, self.process_count, field)
        self.config = config
        self.num_workers = resolve_num_workers(config.dataset.get("num_workers", 0))
        self.source = make_source(config, train=False)
        self.num_examples = len(self.source)
        per_process = -(-self.num_examples // self.process_count)
        self.num_batches = -(-per_process // self.local_batch_size)
        self._transform = ExampleTransform(DataSpec.from_config(config), train=False)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        p, n, b = self.process_index, self.process_count, self.local_batch_size
        ds = grain.MapDataset.source(self.source)[p::n].map(_EvalFn(self._transform))
        ds = ds.batch(b, drop_remainder=False, batch_fn=_stack)
        produced = 0
        template = None
        for batch in _to_iter_dataset(ds, self.config, self.num_workers):
            batch = _plain(batch)
            template = {k: v[-1:] for k, v in batch.items()}
            yield self._pad(batch, template)
            produced += 1
        if produced < self.num_batches and template is None:  # this process got no example
            template = {k: v[:1] for k, v in _stack([self._transform(self.source[0])]).items()}
        for _ in range(produced, self.num_batches):
            yield self._pad({k: v[:0] for k, v in template.items()}, template)

    def _pad(self, batch: dict, template: dict) -> dict:
        k = len(batch["label"])
        pad = self.local_batch_size - k
        out = {}
        for key, value in batch.items():
            filler = np.repeat(template[key], pad, axis=0)
            if key == "stem":
                filler = np.full(pad, "", dtype=np.str_)
            out[key] = np.concatenate([value, filler]) if pad else value
        out["valid"] = np.arange(self.local_batch_size) < k
        return out


def make_eval_iterator(
    config, *, process_index=None, process_count=None, batch_size=None
) -> EvalIterable:
    """This process's part of the eval split, finite and deterministic (module doc).

    `batch_size` is a global batch like config.batch_size (its default), split over processes.
    """
    return EvalIterable(
        config, process_index=process_index, process_count=process_count, batch_size=batch_size
    )
