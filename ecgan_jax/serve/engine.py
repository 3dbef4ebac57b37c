"""One compiled generator behind a request queue: every call has the same batch shape.

`GenerationEngine(generator, variables, config, batch_size=B)` compiles
`inference.make_generate_fn` once, at construction, for (B, H, W) label and instance batches
(one warm-up batch), then serves `generate(label, instance)` calls from any thread: a worker
thread takes up to B queued requests, pads them to B rows (`inference.generate_batches`
repeats the last row) and runs them as one batch. Eval mode uses BatchNorm's running
statistics, so a row's output does not depend on the rows batched with it. With B > 1,
`batch_window_s` lets the worker wait that long for more requests before running a partial
batch (several clients at once); with B = 1 requests simply run in arrival order.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ecgan_jax import inference


class EngineBusy(RuntimeError):
    """The request queue is full (the server answers HTTP 503)."""


@dataclasses.dataclass(frozen=True)
class Generated:
    """One request's outputs, uint8 (H, W, 3): I′ (`first`), I″ (`final`), I′_e (`edge`), and
    the seconds its batch took on the generator."""

    first: np.ndarray
    final: np.ndarray
    edge: np.ndarray
    seconds: float


@dataclasses.dataclass
class _Request:
    label: np.ndarray
    instance: np.ndarray
    future: concurrent.futures.Future


_STOP = object()


class GenerationEngine:
    """Batched, compiled-once generation; see the module docstring."""

    def __init__(
        self,
        generator,
        variables,
        config,
        *,
        batch_size: int = 1,
        mesh=None,
        batch_window_s: float = 0.0,
        max_queue: int = 64,
    ):
        self.config = config
        self.generator = generator
        self.image_size = tuple(int(v) for v in config.dataset.image_size)
        self.generate_fn = inference.make_generate_fn(generator, config, mesh)
        n_dev = self.generate_fn.mesh.devices.size
        if int(batch_size) <= 0 or int(batch_size) % n_dev:
            raise ValueError(
                f"--batch_size={batch_size} is invalid; allowed: a positive multiple of the "
                f"device count ({n_dev})"
            )
        self.batch_size = int(batch_size)
        self.batch_window_s = max(0.0, float(batch_window_s))
        # Placed once: generate_batches' device_put is then a no-op on every request.
        self.variables = jax.device_put(variables, NamedSharding(self.generate_fn.mesh, P()))
        self.batches_run = 0
        self.images_run = 0
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_queue))
        t0 = time.perf_counter()
        zeros = np.zeros((self.batch_size, *self.image_size), np.int32)
        self._run(zeros, zeros)
        self.compile_seconds = time.perf_counter() - t0
        logging.info(
            "generator compiled for batch %d at %dx%d in %.1f s",
            self.batch_size,
            self.image_size[0],
            self.image_size[1],
            self.compile_seconds,
        )
        self._thread = threading.Thread(target=self._loop, name="ecgan-serve-engine", daemon=True)
        self._thread.start()

    def _run(self, labels: np.ndarray, instances: np.ndarray):
        outs = next(
            inference.generate_batches(
                self.generator,
                self.variables,
                self.config,
                labels,
                instances,
                batch_size=self.batch_size,
                generate_fn=self.generate_fn,
            )
        )
        return tuple(inference.to_uint8(o) for o in outs)

    def submit(self, label: np.ndarray, instance: np.ndarray) -> concurrent.futures.Future:
        """Queues one int32 (H, W) label map and instance map; the future gives `Generated`."""
        label = np.asarray(label, np.int32)
        instance = np.asarray(instance, np.int32)
        if label.shape != self.image_size or instance.shape != self.image_size:
            raise ValueError(
                f"label {label.shape} / instance {instance.shape} maps must be {self.image_size}"
            )
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait(_Request(label, instance, future))
        except queue.Full:
            raise EngineBusy(
                f"{self._queue.maxsize} requests are already waiting for the generator; retry"
            ) from None
        return future

    def generate(self, label, instance, timeout: float | None = 120.0) -> Generated:
        return self.submit(label, instance).result(timeout=timeout)

    def _take_batch(self, first) -> tuple[list[_Request], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.batch_size:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = self._take_batch(item)
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                self._serve(batch)
            if stop:
                return

    def _serve(self, batch: list[_Request]) -> None:
        t0 = time.perf_counter()
        try:
            first, final, edge = self._run(
                np.stack([r.label for r in batch]), np.stack([r.instance for r in batch])
            )
        except Exception as e:  # handed to every waiting request, the worker stays up
            logging.exception("generation failed")
            for r in batch:
                r.future.set_exception(e)
            return
        seconds = time.perf_counter() - t0
        self.batches_run += 1
        self.images_run += len(batch)
        for i, r in enumerate(batch):
            r.future.set_result(Generated(first[i], final[i], edge[i], seconds))

    def close(self, timeout: float = 10.0) -> None:
        """Stops the worker after the requests already queued."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                logging.warning("generation queue still full after %.0f s: not waiting", timeout)
                return
            self._thread.join(timeout)
