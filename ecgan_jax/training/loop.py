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

import logging
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ecgan_jax import config_lib
from ecgan_jax.eval.quality import class_colour_error, image_grid
from ecgan_jax.models.encoding import encode_labels
from ecgan_jax.sharding import check_batch_size, global_batch, make_mesh, replicated
from ecgan_jax.training.checkpointing import Checkpointer, abstract_with_shardings
from ecgan_jax.training.fid_tracker import FidTracker, check_fid_config, fid_enabled
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
from ecgan_jax.training.step import jit_train_step, make_train_step, train_step_compiler_options
from ecgan_jax.xla_cpu.hostmem import release_host_memory


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient norm became NaN/inf; the message names the term and the step."""


def setup_compilation_cache(config) -> None:
    path = config.get("compilation_cache_dir", "") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def perceptual_network(config):
    """(vgg module, params) for the perceptual loss, or (None, None) when disabled.

    Refuses to start without a weights file unless the config disables the loss or asks for
    random weights (tests, demos), and says which in the log.
    """
    p = config.perceptual
    if not p.enabled or float(config.lambda_vgg) == 0:
        logging.info("perceptual (VGG) loss disabled")
        return None, None
    from ecgan_jax.models import vgg as vgg_lib

    module = vgg_lib.VGG19Features(imagenet_normalize=bool(p.imagenet_normalize))
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
    generate_fn: Any  # jitted eval-mode generator, `make_generate_fn`

    def init_state(self, seed=None):
        """A fresh TrainState (from `config.seed` unless `seed` is given), replicated.

        The initialiser runs once per run, so its executable is not kept afterwards: at the
        full Cityscapes config it holds 0.2 GB of host memory that the train step's peak
        would otherwise include (BENCHMARKS.md). Another call compiles it again (from the
        persistent compilation cache when one is set).
        """
        state = self.init_fn(seed_key(self.config, seed))
        jax.block_until_ready(state)
        self.init_fn.clear_cache()
        release_host_memory()
        return state


# Trainers built in this process, newest last: a second `train_and_evaluate` with the same
# config and devices (a resumed run in a notebook, the tests) reuses the traced and compiled
# step instead of spending ~20 s tracing and loading it again (the initialiser is compiled
# again: `Trainer.init_state` frees it after use).
_TRAINERS: dict = {}
_MAX_TRAINERS = 2


def build_trainer(config, mesh, dataset_size: int) -> Trainer:
    """Models, optimizers, perceptual network and the jitted, donated train step on `mesh`.

    `dataset_size` only sets the learning-rate schedule. Shared by `train_and_evaluate`, the
    tests and the benchmarks. The last two trainers are kept per (config, devices,
    dataset_size) and returned again for an equal request; the trainer holds its own copy of
    the config, so later changes to `config` make a new one.
    """
    key = (
        config.to_json_best_effort(sort_keys=True),
        tuple(d.id for d in mesh.devices.flat),
        mesh.axis_names,
        int(dataset_size),
    )
    if key in _TRAINERS:
        _TRAINERS[key] = _TRAINERS.pop(key)  # most recently used last
        return _TRAINERS[key]
    trainer = _build_trainer(config.copy_and_resolve_references(), mesh, dataset_size)
    _TRAINERS[key] = trainer
    while len(_TRAINERS) > _MAX_TRAINERS:
        _TRAINERS.pop(next(iter(_TRAINERS)))
    return trainer


def _build_trainer(config, mesh, dataset_size: int) -> Trainer:
    check_batch_size(int(config.batch_size), mesh)
    models = build_models(config)
    tx_g, tx_d, schedules = make_optimizers(config, dataset_size)
    vgg, vgg_params = perceptual_network(config)
    rep = replicated(mesh)
    if vgg_params is not None:
        vgg_params = jax.device_put(vgg_params, rep)
    abstract = jax.eval_shape(lambda: create_train_state(config, models, tx_g, tx_d, mesh=None))
    step_fn = jit_train_step(
        make_train_step(config, models, tx_g, tx_d, schedules=schedules, vgg=vgg),
        mesh,
        state_shardings(abstract, mesh),
        rep if vgg_params is not None else None,
        compiler_options=train_step_compiler_options(config, mesh),
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
        make_generate_fn(models, config),
    )


def make_generate_fn(models, config):
    """jit(eval-mode generator): (gen_params, g_stats, label, instance) -> (I′, I″, I′_e)."""

    @jax.jit
    def generate(gen_params, g_stats, label, instance):
        seg = encode_labels(label, instance, config)
        return models.generator.apply({"params": gen_params, **g_stats}, seg, train=False)

    return generate


def _check_finite(metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite value {value} of '{name}' at step {step}; training stopped, the "
                "last good checkpoint is kept"
            )


def _compile_in_step(step_fn, state, batch, vgg_params) -> None:
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

    step_fn.lower(state, batch, vgg_params).compile()
    release_host_memory()
    client = distributed.global_state.client
    if client is not None:
        _BARRIERS["count"] += 1
        name = f"ecgan_train_step_compiled_{_BARRIERS['count']}"
        client.wait_at_barrier(name, 30 * 60 * 1000)


_BARRIERS = {"count": 0}


def train_and_evaluate(config, workdir: str, *, max_steps: int | None = None, step_callback=None):
    """Trains per `config`, writing checkpoints, logs and image grids into `workdir`.

    Resumes from the latest checkpoint in `workdir` when there is one. `max_steps` stops (with
    a checkpoint, as on preemption) after that many steps of this call; `step_callback(step)`
    runs on the host after each step. Both are for tests and notebooks. Returns the final
    `TrainState`.
    """
    from clu import metric_writers, periodic_actions

    from ecgan_jax import data as data_lib

    config_lib.validate_config(config)
    check_fid_config(config)  # missing FID files, several processes: refused before any compute
    setup_compilation_cache(config)
    if "://" not in workdir:
        os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

    num_devices = int(config.get("num_devices", -1))
    mesh = make_mesh(jax.devices()[:num_devices] if num_devices > 0 else None)
    train_iter = data_lib.make_train_iterator(config)
    dataset_size = int(train_iter.num_examples)
    num_steps = total_steps(config, dataset_size)
    trainer = build_trainer(config, mesh, dataset_size)
    models, vgg_params, rep = trainer.models, trainer.vgg_params, replicated(mesh)
    step_fn = trainer.step_fn

    ckpt = Checkpointer(
        workdir, every=int(config.checkpoint_every), keep=int(config.keep_checkpoints)
    )
    if ckpt.latest_step() is not None:
        start = ckpt.latest_step()
        state, data_state = ckpt.restore(abstract_with_shardings(trainer.abstract_state, rep))
        train_iter.set_state(data_state)
        logging.info("resumed from %s at step %d", ckpt.directory, start)
    else:
        state = trainer.init_state()
        start = 0
    logging.info("parameter overview:\n%s", parameter_overview(state))
    if start == 0:
        writer.write_hparams(
            {k: str(v) for k, v in config.to_dict().items() if not isinstance(v, dict)}
        )

    # A fixed eval batch for image grids and the colour-error figure. The eval iterator yields
    # this process's part only; every process gathers the whole (small) batch on the host and
    # the generator runs on it replicated, so the batch size need not divide the device count
    # and each process can read its result from a local shard (the params are global arrays
    # spanning every process: a host-local input would not mix with them under jit).
    eval_batch = next(
        iter(data_lib.make_eval_iterator(config, batch_size=min(int(config.num_eval_images), 8)))
    )
    eval_batch = {
        k: np.asarray(v) for k, v in eval_batch.items() if np.asarray(v).dtype.kind not in "USO"
    }
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        eval_batch = multihost_utils.process_allgather(eval_batch, tiled=True)
    eval_inputs = jax.device_put((eval_batch["label"], eval_batch["instance"]), rep)
    generate = trainer.generate_fn
    fid_tracker = (
        FidTracker(config, workdir, models.generator, mesh, is_main=is_main)
        if fid_enabled(config)
        else None
    )

    def evaluate_images(st, step):
        gen_params = st.ema_params if st.ema_params is not None else st.g_params["generator"]
        outputs = generate(gen_params, st.g_stats, *eval_inputs)
        first, final, edge = (np.asarray(x.addressable_data(0)) for x in outputs)
        err = class_colour_error(
            final,
            eval_batch["image"],
            eval_batch["label"],
            num_classes=config_lib.semantic_nc(config),
        )
        writer.write_scalars(step, {"quality/class_colour_error": err})
        grid = image_grid(
            eval_batch, first, edge, final, num_classes=config_lib.semantic_nc(config)
        )
        writer.write_images(step, {"samples": grid[None]})
        if is_main and "://" not in workdir:
            from PIL import Image

            os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
            Image.fromarray(grid).save(os.path.join(workdir, "images", f"step_{step:07d}.png"))
        return err

    stop_requested = {"flag": False}

    def on_sigterm(signum, frame):
        del signum, frame
        stop_requested["flag"] = True

    # Multi-process: SIGTERM is left to JAX's preemption notifier (installed by
    # jax.distributed.initialize), which tells every process and lets them agree on the step
    # to stop at (`reached_preemption_sync_point`). A Python handler would replace it, and a
    # flag set on the signalled host alone would make that host save and stop while the
    # others wait for it in the next step's collectives.
    multiprocess = jax.process_count() > 1
    previous_handler = None if multiprocess else signal.signal(signal.SIGTERM, on_sigterm)
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    hooks = [report] if is_main else []
    all_finite = jax.jit(
        lambda t: jnp.all(
            jnp.stack(
                [
                    jnp.all(jnp.isfinite(x))
                    for x in jax.tree_util.tree_leaves(t)
                    if jnp.issubdtype(x.dtype, jnp.floating)
                ]
            )
        )
    )

    def save(step, metrics, force):
        """Saves unless a loss or any state value is non-finite (then raises)."""
        if metrics is not None:
            _check_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, step)
        if not bool(all_finite(state)):
            raise NonFiniteLossError(
                f"the train state holds non-finite values at step {step}; not saving it, the "
                "last good checkpoint is kept"
            )
        ckpt.save(step, state, train_iter.get_state(), force=force)

    def should_stop(step):
        """SIGTERM (or the max_steps test hook), agreed by every process."""
        if max_steps is not None and step - start >= max_steps:
            return True
        if multiprocess:
            from jax.experimental import multihost_utils

            # JAX's preemption sync manager (set up by jax.distributed.initialize) makes all
            # processes stop at the same step; a local flag could leave hosts in a collective.
            return multihost_utils.reached_preemption_sync_point(step)
        return stop_requested["flag"]

    err0 = evaluate_images(state, start)
    logging.info("class colour error of I'' at step %d: %.4f", start, err0)
    step, metrics = start, None
    last_log_time, last_log_step = time.time(), start
    try:
        while step < num_steps:
            batch = global_batch(next(train_iter), mesh)
            if step == start:
                _compile_in_step(step_fn, state, batch, vgg_params)
            with jax.transfer_guard("disallow"):
                state, metrics = step_fn(state, batch, vgg_params)
            step += 1
            for h in hooks:
                h(step)
            if step % int(config.log_every) == 0 or step == num_steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(values, step)
                now = time.time()
                dt = (now - last_log_time) / max(step - last_log_step, 1)
                values["perf/step_time_s"] = dt
                values["perf/images_per_s"] = int(config.batch_size) / dt
                last_log_time, last_log_step = now, step
                writer.write_scalars(step, values)
            if int(config.image_every) > 0 and step % int(config.image_every) == 0:
                evaluate_images(state, step)
            stop = should_stop(step)
            if step % int(config.checkpoint_every) == 0 or stop:
                save(step, metrics, force=stop)
            if fid_tracker is not None and fid_tracker.due(step, num_steps):
                fid_tracker(state, step, writer, data_state=train_iter.get_state())
            if stop:
                logging.warning("stop requested (SIGTERM or max_steps): saved step %d", step)
                break
            if step_callback is not None:
                step_callback(step)
        else:
            if ckpt.latest_step() != step:
                save(step, metrics, force=True)
            err1 = evaluate_images(state, step)
            logging.info(
                "class colour error of I'' at step %d: %.4f (start: %.4f)", step, err1, err0
            )
    finally:
        ckpt.close()
        if fid_tracker is not None:
            fid_tracker.close()
        writer.flush()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return state
