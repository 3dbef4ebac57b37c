"""`train_and_evaluate(config, workdir)`: the training loop behind `python -m ecgan_jax.main`.

Mesh first; the state created already replicated on it (or restored from the latest checkpoint
in `workdir`, data position included); one jitted, donated step per global batch, run under
`jax.transfer_guard("disallow")` so no hidden host transfer slips into the loop; metrics fetched
only every `log_every` steps; clu writers (TensorBoard) from process 0; image grids of the EMA
generator on a fixed eval batch every `image_every` steps (also written as PNG); a per-class
colour error of I″ against the real image logged at the start and the end; orbax checkpoints on
an interval, on SIGTERM (preemption) and at the end. A non-finite loss stops the run naming the
term, without writing a checkpoint of the broken state. With `fid_every > 0`, the FID of the
EMA generator on the eval split every `fid_every` steps and at the end (scalar `fid`), keeping
the best checkpoint in `<workdir>/best` (`ecgan_jax.train_fid`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax import config_lib, inference
from ecgan_jax.eval.quality import class_colour_error, image_grid
from ecgan_jax.sharding import check_batch_size, global_batch, make_mesh, replicated
from ecgan_jax.training import run_record
from ecgan_jax.training.checkpointing import Checkpointer, abstract_with_shardings
from ecgan_jax.training.fid_tracker import FidTracker, check_fid_config, fid_enabled
from ecgan_jax.training.progress import CompileTimer, ProgressLine
from ecgan_jax.training.state import (
    build_models,
    create_train_state,
    make_init_fn,
    make_optimizers,
    parameter_overview,
    seed_key,
    state_shardings,
    total_steps,
)
from ecgan_jax.training.step import jit_train_step, make_train_step
from ecgan_jax.xla_cpu import runtime_for
from ecgan_jax.xla_cpu.hostmem import release_host_memory


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient norm became NaN/inf; the message names the term and the step."""


class Preempted(Exception):
    """Training stopped by SIGTERM after saving a checkpoint; rerun the command to resume."""

    def __init__(self, step: int, workdir: str):
        self.step, self.workdir = step, workdir
        super().__init__(
            f"stopped by SIGTERM at step {step} after saving a checkpoint in {workdir}; rerun "
            "the same command to resume"
        )


def compilation_cache_dir(config) -> str | None:
    """`config.compilation_cache_dir`, else $JAX_COMPILATION_CACHE_DIR, else the user's cache
    directory (`$XDG_CACHE_HOME` or ~/.cache)/ecgan_jax/jax_cache; None for "off"."""
    value = str(config.get("compilation_cache_dir", ""))
    if value == "off":
        return None
    if value:
        return value
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ecgan_jax", "jax_cache")


def setup_compilation_cache(config) -> str | None:
    """Turns JAX's persistent compilation cache on (shared by runs; safe to delete)."""
    path = compilation_cache_dir(config)
    if path:
        if "://" not in path:
            os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def perceptual_network(config):
    """(vgg module, params) for the perceptual loss, or (None, None) when disabled.

    Refuses to start without a weights file unless the config disables the loss or asks for
    random weights (tests, demos), and says which in the log.
    """
    p = config.perceptual
    if not p.enabled or float(config.lambda_vgg) == 0:
        logging.info("perceptual (VGG) loss disabled")
        return None, None
    from ecgan_jax.models import factory
    from ecgan_jax.models import vgg as vgg_lib

    module = vgg_lib.VGG19Features(
        imagenet_normalize=bool(p.imagenet_normalize),
        dtype=factory.DTYPES[p.dtype],
    )
    if p.weights_path:
        params = vgg_lib.load_vgg19_params(p.weights_path)
        logging.info("perceptual loss: VGG19 weights from %s", p.weights_path)
    elif p.random_weights:
        params = vgg_lib.random_vgg19_params(int(config.seed) + 17)
        logging.warning(
            "perceptual loss uses RANDOMLY INITIALISED VGG19 weights "
            "(config.perceptual.random_weights=True): fine for tests and demos, not for results"
        )
    else:
        raise ValueError(
            "config.perceptual.weights_path is empty: the VGG perceptual loss needs ImageNet "
            "VGG19 weights. Convert torchvision's vgg19 state dict once with\n"
            "  python -m ecgan_jax.models.vgg --convert vgg19-dcbb9e9d.pth --out vgg19.npz\n"
            "and pass --config.perceptual.weights_path=vgg19.npz; or set "
            "--config.perceptual.enabled=False, or --config.perceptual.random_weights=True "
            "(tests/demos only)"
        )
    return module, params


class Trainer(NamedTuple):
    """What a training run compiles and feeds, built once from the config (`build_trainer`)."""

    config: Any
    models: Any
    mesh: Any
    tx_g: Any
    tx_d: Any
    schedules: tuple
    vgg_params: Any  # replicated VGG19 variables, or None without the perceptual loss
    abstract_state: Any  # TrainState of ShapeDtypeStructs
    step_fn: Any  # jitted (state, global batch, vgg_params) -> (state, metrics)
    init_fn: Any  # jitted PRNG key -> fresh TrainState, replicated on the mesh (not cached)
    generate_fn: Any  # eval-mode generator, batch replicated (`inference.make_generate_fn`)

    def init_state(self, seed=None):
        """A fresh TrainState (from `config.seed` unless `seed` is given), replicated.

        The initialiser runs once per run, so its executable is not kept afterwards: its host
        memory would otherwise add to the train step's peak (BENCHMARKS.md, "Fifth
        session"). Another call compiles it again (from the persistent compilation cache when
        one is set).
        """
        state = self.init_fn(seed_key(self.config, seed))
        jax.block_until_ready(state)
        self.init_fn.clear_cache()
        release_host_memory()
        return state


# Trainers built in this process, newest last: a second `train_and_evaluate` whose step is
# the same (a resumed or extended run in a notebook, the tests) reuses the traced and compiled
# step instead of tracing and loading it again (the initialiser is compiled again:
# `Trainer.init_state` frees it after use).
_TRAINERS: dict = {}
_MAX_TRAINERS = 2

# Top-level fields that steer the loop around the train step and never enter it: trainers
# that differ only in these share one step. The learning-rate schedule, which the step does
# use, enters the key resolved (`_schedule_key`) instead of its four fields.
# tests/test_train.py traces the step with every one of them changed: the same program.
LOOP_FIELDS = (
    "num_train_steps",
    "niter",
    "niter_decay",
    "extend_schedule",
    "num_devices",
    "log_every",
    "image_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_eval_images",
    "compilation_cache_dir",
    "fid_every",
    "fid_weights",
    "fid_num_images",
    "fid_stats",
    "keep_best_fid",
)


def _schedule_key(config, dataset_size: int, schedule) -> tuple:
    """The lr schedule the step will follow: a constant one whatever the run's length."""
    if schedule is None:
        schedule = run_record.schedule_of(config, total_steps(config, dataset_size))
    if schedule.decay_steps <= 0 and schedule.extend_from is None:
        return ("constant",)
    extended = schedule.extend_from is not None
    return (schedule.const_steps, schedule.decay_steps, schedule.extend_from,
            schedule.total if extended else None)  # fmt: skip


def build_trainer(config, mesh, dataset_size: int, schedule=None) -> Trainer:
    """Models, optimizers, perceptual network and the jitted, donated train step on `mesh`.

    `dataset_size` only sets the learning-rate schedule (`schedule`, a `run_record.Schedule`,
    replaces it). Shared by `train_and_evaluate`, the tests and the benchmarks. The last two
    trainers are kept, keyed by the config without its `LOOP_FIELDS`, the devices and the
    resolved schedule; a request with an equal key gets that trainer's step with a copy of
    its own config (so later changes to `config` are not seen by the trainer).
    """
    step_fields = json.loads(config.to_json_best_effort())
    for name in LOOP_FIELDS:
        step_fields.pop(name, None)
    key = (
        json.dumps(step_fields, sort_keys=True),
        tuple(d.id for d in mesh.devices.flat),
        mesh.axis_names,
        _schedule_key(config, dataset_size, schedule),
    )
    if key in _TRAINERS:
        _TRAINERS[key] = _TRAINERS.pop(key)  # most recently used last
        return _TRAINERS[key]._replace(config=config.copy_and_resolve_references())
    trainer = _build_trainer(config.copy_and_resolve_references(), mesh, dataset_size, schedule)
    _TRAINERS[key] = trainer
    while len(_TRAINERS) > _MAX_TRAINERS:
        _TRAINERS.pop(next(iter(_TRAINERS)))
    return trainer


def _build_trainer(config, mesh, dataset_size: int, schedule=None) -> Trainer:
    check_batch_size(int(config.batch_size), mesh)
    models = build_models(config)
    tx_g, tx_d, schedules = make_optimizers(config, dataset_size, schedule)
    vgg, vgg_params = perceptual_network(config)
    rep = replicated(mesh)
    if vgg_params is not None:
        vgg_params = jax.device_put(vgg_params, rep)
    abstract = jax.eval_shape(lambda: create_train_state(config, models, tx_g, tx_d, mesh=None))
    runtime = runtime_for(config, mesh)
    step_fn = jit_train_step(
        make_train_step(config, models, tx_g, tx_d, schedules=schedules, vgg=vgg, runtime=runtime),
        mesh,
        state_shardings(abstract, mesh),
        rep if vgg_params is not None else None,
        compiler_options=runtime.compiler_options(mesh),
    )
    init_fn = make_init_fn(config, models, tx_g, tx_d, mesh)
    return Trainer(
        config,
        models,
        mesh,
        tx_g,
        tx_d,
        schedules,
        vgg_params,
        abstract,
        step_fn,
        init_fn,
        inference.make_generate_fn(models.generator, config, mesh, replicated_batch=True),
    )


def _check_finite(metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite value {value} of '{name}' at step {step}; training stopped, the "
                "last good checkpoint is kept"
            )


def _compile_in_step(step_fn, state, batch, vgg_params, timer=None, key="") -> None:
    """Compiles the train step, returns the compiler's freed memory, then waits for the peers.

    Compiling inside the first step's call would leave the compiler's freed heap mapped under
    the step's own buffers (`release_host_memory`). With several processes, CPU collectives
    (gloo) give up when a peer has not joined within 30 s, and compile times differ between
    processes (persistent-cache hits, load), so the first step must not start on one process
    while another is still compiling. The barrier is the coordination service's (a device
    barrier would itself be a collective); barrier names must be unique, hence the counter.
    The later call reuses the executable compiled here.
    """
    from jax._src import distributed

    started = timer.start("the train step", key) if timer else None
    step_fn.lower(state, batch, vgg_params).compile()
    if timer:
        timer.done("the train step", key, started)
    release_host_memory()
    client = distributed.global_state.client
    if client is not None:
        _BARRIERS["count"] += 1
        name = f"ecgan_train_step_compiled_{_BARRIERS['count']}"
        client.wait_at_barrier(name, 30 * 60 * 1000)


_BARRIERS = {"count": 0}


class SampleWriter:
    """Image grids and the colour-error figure of the (EMA) generator on a fixed eval batch.

    The eval iterator yields this process's part only; every process gathers the whole
    (small) batch on the host and the generator runs on it replicated, so the batch size need
    not divide the device count and each process can read its result from a local shard (the
    params are global arrays spanning every process: a host-local input would not mix with
    them under jit).
    """

    def __init__(self, config, trainer: Trainer, writer, workdir: str, is_main: bool):
        from ecgan_jax import data as data_lib

        batch_size = min(int(config.num_eval_images), 8)
        batch = next(iter(data_lib.make_eval_iterator(config, batch_size=batch_size)))
        batch = {k: np.asarray(v) for k, v in batch.items()}
        batch = {k: v for k, v in batch.items() if v.dtype.kind not in "USO"}  # drop file names
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            batch = multihost_utils.process_allgather(batch, tiled=True)
        self.batch = batch
        self.inputs = jax.device_put((batch["label"], batch["instance"]), replicated(trainer.mesh))
        self.generate = trainer.generate_fn
        self.num_classes = config_lib.semantic_nc(config)
        self.writer, self.is_main = writer, is_main
        self.image_dir = None if "://" in workdir else os.path.join(workdir, "images")
        self.written: set[int] = set()

    def __call__(self, state, step: int, write: bool = True) -> float:
        """Writes the grid (summary and PNG) and the colour error at `step`, once per step
        (`write=False`, or a step already written: nothing is written); returns the error."""
        params = state.ema_params if state.ema_params is not None else state.g_params["generator"]
        outputs = self.generate({"params": params, **state.g_stats}, *self.inputs)
        first, final, edge = (np.asarray(x.addressable_data(0)) for x in outputs)
        b = self.batch
        err = class_colour_error(final, b["image"], b["label"], num_classes=self.num_classes)
        if not write or step in self.written:
            return err
        self.written.add(step)
        self.writer.write_scalars(step, {"quality/class_colour_error": err})
        grid = image_grid(b, first, edge, final, num_classes=self.num_classes)
        self.writer.write_images(step, {"samples": grid[None]})
        if self.is_main and self.image_dir is not None:
            from PIL import Image

            os.makedirs(self.image_dir, exist_ok=True)
            Image.fromarray(grid).save(os.path.join(self.image_dir, f"step_{step:07d}.png"))
        return err


class StopSignal:
    """SIGTERM (preemption) or the `max_steps` hook, agreed by every process.

    Multi-process: SIGTERM is left to JAX's preemption notifier (installed by
    jax.distributed.initialize), which tells every process and lets them agree on the step to
    stop at (`reached_preemption_sync_point`). A Python handler would replace it, and a flag
    set on the signalled host alone would make that host save and stop while the others wait
    for it in the next step's collectives. Use as a context manager (restores the handler).
    """

    def __init__(self, start: int, max_steps: int | None):
        self.start, self.max_steps = start, max_steps
        self.multiprocess = jax.process_count() > 1
        self.requested = False
        self._previous = None

    def __enter__(self):
        if not self.multiprocess:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self.requested = True

    def __call__(self, step: int) -> bool:
        if self.max_steps is not None and step - self.start >= self.max_steps:
            return True
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def save_if_finite(ckpt: Checkpointer, step: int, state, metrics, data_state, force: bool):
    """Saves `state` unless a loss or any state value is non-finite (then raises)."""
    if metrics is not None:
        _check_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, step)
    if not bool(_all_finite(state)):
        raise NonFiniteLossError(
            f"the train state holds non-finite values at step {step}; not saving it, the "
            "last good checkpoint is kept"
        )
    ckpt.save(step, state, data_state, force=force)


def restore_or_init(trainer: Trainer, ckpt: Checkpointer, train_iter):
    """(state, start step): the newest readable checkpoint (data position included; damaged
    ones are reported and skipped), or a fresh state."""
    if ckpt.latest_step() is None:
        return trainer.init_state(), 0
    abstract = abstract_with_shardings(trainer.abstract_state, replicated(trainer.mesh))
    state, data_state, start = ckpt.restore_latest_intact(abstract)
    train_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", ckpt.directory, start)
    return state, start


class MetricLogger:
    """Every `log_every` steps: all metrics to the summary writer, one short line to the log."""

    def __init__(self, writer, log_every: int, progress: ProgressLine):
        self.writer, self.every, self.progress = writer, log_every, progress

    def __call__(self, step: int, metrics, force: bool = False) -> None:
        if step % self.every and not force:
            return
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(values, step)
        dt = self.progress.step_time()
        if dt:
            values["perf/step_time_s"] = dt
            values["perf/images_per_s"] = self.progress.batch_size / dt
            values["perf/steps_per_s"] = 1.0 / dt
        self.writer.write_scalars(step, values)
        logging.info("%s", self.progress.line(step, values))


def export_examples(config, workdir: str, count: int = 4) -> str | None:
    """The first `count` eval label (and instance) maps as PNGs under `<workdir>/examples`,
    for `generate` and `serve` to start from (synthetic data only: other datasets have files).
    Returns the labels directory, or None."""
    if config.dataset.name != "synthetic" or "://" in workdir:
        return None
    from PIL import Image

    from ecgan_jax import data as data_lib

    labels_dir = os.path.join(workdir, "examples", "labels")
    instances_dir = os.path.join(workdir, "examples", "instances")
    if os.path.isdir(labels_dir):
        return labels_dir
    batch = next(iter(data_lib.make_eval_iterator(config, batch_size=count)))
    os.makedirs(instances_dir, exist_ok=True)
    tmp_labels = f"{labels_dir}.tmp-{os.getpid()}"
    os.makedirs(tmp_labels, exist_ok=True)
    for i in np.flatnonzero(np.asarray(batch["valid"])):
        stem = str(np.asarray(batch["stem"])[i])
        label = np.asarray(batch["label"][i]).astype(np.uint8)
        Image.fromarray(label, mode="L").save(os.path.join(tmp_labels, f"{stem}.png"))
        instance = np.asarray(batch["instance"][i]).astype(np.uint16)  # 16-bit PNG
        Image.fromarray(instance).save(os.path.join(instances_dir, f"{stem}.png"))
    os.replace(tmp_labels, labels_dir)
    return labels_dir


def _writer(workdir: str, is_main: bool):
    """TensorBoard summaries from process 0 (every metric); the log gets the short line."""
    from clu import metric_writers

    if not is_main:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))


class _Run(NamedTuple):
    """What `train_and_evaluate` has set up before its first step."""

    mesh: Any
    trainer: Trainer
    ckpt: Checkpointer
    train_iter: Any
    num_steps: int
    state: Any
    start: int
    writer: Any
    cache_dir: str | None
    is_main: bool


def prepare_run(config, workdir: str) -> _Run:
    """Every check and the state, before anything compiles: the config, the FID files, the
    run record of a resumed run, every dataset file (scan, cached in `workdir`), the schedule,
    the trainer and the restored (or fresh) state."""
    from ecgan_jax import data as data_lib
    from ecgan_jax.data.scan import scan_dataset

    config_lib.validate_config(config)
    check_fid_config(config)  # missing FID files, several processes: refused before any compute
    cache_dir = setup_compilation_cache(config)
    if "://" not in workdir:
        os.makedirs(workdir, exist_ok=True)
    record = run_record.read(workdir)
    ckpt = Checkpointer(
        workdir, every=int(config.checkpoint_every), keep=int(config.keep_checkpoints)
    )
    latest = ckpt.latest_step()
    if record is not None and latest is not None:
        run_record.check_resumable(record, config, workdir)
    is_main = jax.process_index() == 0
    num_devices = int(config.get("num_devices", -1))
    mesh = make_mesh(jax.devices()[:num_devices] if num_devices > 0 else None)
    for split in {str(config.dataset.train_split), str(config.dataset.eval_split)}:
        scan_dataset(config, split, cache_dir=workdir)
    train_iter = data_lib.make_train_iterator(config)
    dataset_size = int(train_iter.num_examples)
    num_steps = total_steps(config, dataset_size)
    schedule = run_record.resumed_schedule(record, config, num_steps, latest or 0)
    logging.info("learning-rate schedule: %s", schedule.describe())
    trainer = build_trainer(config, mesh, dataset_size, schedule)
    state, start = restore_or_init(trainer, ckpt, train_iter)
    writer = _writer(workdir, is_main)
    if start == 0:
        if is_main:
            run_record.write(workdir, config, dataset_size=dataset_size, total_steps=num_steps)
        hparams = {k: str(v) for k, v in config.to_dict().items() if not isinstance(v, dict)}
        writer.write_hparams(hparams)
    logging.info("parameter overview:\n%s", parameter_overview(state))
    if is_main and (examples := export_examples(config, workdir)):
        logging.info("example label maps for generate/serve: %s", examples)
    return _Run(
        mesh, trainer, ckpt, train_iter, num_steps, state, start, writer, cache_dir, is_main
    )


def train_and_evaluate(config, workdir: str, *, max_steps: int | None = None, step_callback=None):
    """Trains per `config`, writing checkpoints, logs and image grids into `workdir`.

    Resumes from the newest readable checkpoint in `workdir` when there is one (the config
    must match the run's `run.json`; the lr schedule stays the run's unless
    `extend_schedule`). `max_steps` stops (with a checkpoint, as on preemption) after that
    many steps of this call; `step_callback(step)` runs on the host after each step. Both are
    for tests and notebooks. Returns the final `TrainState`; raises `Preempted` after saving
    when stopped by SIGTERM.
    """
    run = prepare_run(config, workdir)
    mesh, trainer, ckpt, train_iter, writer = (
        run.mesh, run.trainer, run.ckpt, run.train_iter, run.writer
    )  # fmt: skip
    state, start, num_steps = run.state, run.start, run.num_steps
    samples = SampleWriter(config, trainer, writer, workdir, run.is_main)
    fid = None
    if fid_enabled(config):
        fid = FidTracker(config, workdir, trainer.models.generator, mesh, is_main=run.is_main)
    progress = ProgressLine(num_steps, int(config.batch_size), start)
    log = MetricLogger(writer, int(config.log_every), progress)
    cache_dir = run.cache_dir
    timer = CompileTimer(cache_dir if cache_dir and "://" not in cache_dir else None)
    compile_key = timer.key(config.to_json_best_effort(sort_keys=True), mesh.devices.shape)

    err0 = samples(state, start, write=start == 0)  # a resumed run logged its step already
    logging.info("class colour error of I'' at step %d: %.4f", start, err0)
    step, metrics, stopped = start, None, False
    try:
        with StopSignal(start, max_steps) as should_stop:
            while step < num_steps:
                batch = global_batch(next(train_iter), mesh)
                if step == start:
                    args = (trainer.step_fn, state, batch, trainer.vgg_params)
                    _compile_in_step(*args, timer, compile_key)
                with jax.transfer_guard("disallow"):
                    state, metrics = trainer.step_fn(state, batch, trainer.vgg_params)
                step += 1
                progress.tick(step, compiled_here=step == start + 1)
                log(step, metrics, force=step == num_steps)
                if int(config.image_every) > 0 and step % int(config.image_every) == 0:
                    samples(state, step)
                stopped = should_stop(step)
                if step % int(config.checkpoint_every) == 0 or stopped:
                    save_if_finite(ckpt, step, state, metrics, train_iter.get_state(), stopped)
                if fid is not None and fid.due(step, num_steps):
                    fid(state, step, writer, data_state=train_iter.get_state())
                if stopped:
                    break
                if step_callback is not None:
                    step_callback(step)
        if not stopped:
            if ckpt.latest_step() != step:
                save_if_finite(ckpt, step, state, metrics, train_iter.get_state(), force=True)
            if step > start:
                err1 = samples(state, step)
                logging.info(
                    "class colour error of I'' at step %d: %.4f (start: %.4f)", step, err1, err0
                )
    finally:
        ckpt.close()
        if fid is not None:
            fid.close()
        writer.flush()
    logging.info("%s", progress.final_line(step))
    if stopped and (max_steps is None or step - start < max_steps):
        raise Preempted(step, workdir)
    if stopped:
        logging.warning("stopped after max_steps=%d: saved step %d", max_steps, step)
    return state
