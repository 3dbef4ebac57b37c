"""Loading a trained generator and running it in eval mode (generation, FID, mIoU; §5, §D.5).

    generator, variables = load_generator(config, workdir="runs/cityscapes")   # EMA, latest
    for first, final, edge in generate_batches(generator, variables, config, labels, instances,
                                               batch_size=8):
        ...                                                  # (b, H, W, 3) float32, [-1, 1]
    result = fid_of_generator(config, generator, variables, load_inception(W), max_images=500)

Where the generator comes from (`resolve_checkpoint`, `restore_generator`):
* a training workdir: the orbax checkpoints of `ecgan_jax.train` in `<workdir>/checkpoints`,
  the latest step by default, or `checkpoint=STEP`, or `checkpoint=PATH` of one step directory
  (`<workdir>/checkpoints/<step>`) or of a `checkpoints` directory (its latest step). The
  `TrainState` is restored against `jax.eval_shape` of `create_train_state(config, ...)` (no
  data iterator is built, no training data is read), so `config` must be the training config
  (same model widths, contrastive heads, EMA on/off). The generator variables are
  `{"params": state.ema_params, **state.g_stats}` (EMA, the default) or
  `{"params": state.g_params["generator"], **state.g_stats}` (`use_ema=False`); a run trained
  with `ema_decay = 0` has no EMA and falls back to the raw parameters, with a log line.
* a converted PyTorch checkpoint: the directory written by `python -m ecgan_jax.convert` (an
  orbax `StandardCheckpointer` tree `{"generator": variables, ...}`), recognised by its layout
  when given as `workdir` or `checkpoint`. Its variables are used as they are (no EMA).

Images are scored as they would be saved: I″ quantised to uint8 (`quality.to_uint8`), the
8-bit PNGs pytorch-fid reads (§D.5); the real images are the uint8 values of the files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecgan_jax import config_lib
from ecgan_jax.eval.quality import to_uint8
from ecgan_jax.models.encoding import encode_labels_typed
from ecgan_jax.sharding import DATA_AXIS, local_mesh, replicated

__all__ = [
    "CheckpointRef",
    "LoadedGenerator",
    "evaluate_generator",
    "fid_of_generator",
    "generate_batches",
    "is_converted_checkpoint",
    "load_generator",
    "make_generate_fn",
    "resolve_checkpoint",
    "restore_generator",
    "to_uint8",
]

HOW_TO_GET_A_CHECKPOINT = (
    "train one with `python -m ecgan_jax.main --config=CONFIG --workdir=DIR`, or convert the "
    "authors' PyTorch weights with `python -m ecgan_jax.convert --config=CONFIG "
    "--generator=latest_net_G.pth --out=DIR` and pass that DIR"
)


# --------------------------------------------------------------------------- checkpoints


def is_converted_checkpoint(path: str) -> bool:
    """True for a directory written by `ecgan_jax.convert` (an orbax StandardCheckpointer tree).

    A training step directory has `state/` and `data/` items instead; a workdir has
    `checkpoints/`.
    """
    return (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, "_METADATA"))
        and not os.path.isdir(os.path.join(path, "state"))
    )


def _is_step_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "state"))


def _steps_in(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        if name.isdigit() and _is_step_dir(os.path.join(directory, name)):
            steps.append(int(name))
    return sorted(steps)


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """Where the generator comes from: `kind` "train_state" (a step directory of a training
    run, `step` its step) or "converted" (a `python -m ecgan_jax.convert` directory)."""

    kind: str
    path: str
    step: int | None = None


def resolve_checkpoint(workdir: str | None = None, checkpoint: str | int | None = None):
    """The `CheckpointRef` of (workdir, checkpoint); FileNotFoundError naming what was tried.

    `checkpoint`: None (the latest step of `<workdir>/checkpoints`, or `workdir` itself when it
    is a converted checkpoint), a step number (int or digit string, in `<workdir>/checkpoints`),
    or a path (a step directory, a `checkpoints` directory, a workdir, or a converted
    checkpoint).
    """
    if workdir is None and checkpoint is None:
        raise ValueError(f"give a workdir or a checkpoint; {HOW_TO_GET_A_CHECKPOINT}")
    if checkpoint is not None and str(checkpoint).isdigit():
        if workdir is None:
            raise ValueError(f"checkpoint step {checkpoint} needs the workdir it belongs to")
        ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
        step_dir = os.path.join(ckpt_dir, str(int(checkpoint)))
        if not _is_step_dir(step_dir):
            have = _steps_in(ckpt_dir)
            raise FileNotFoundError(
                f"no checkpoint of step {int(checkpoint)} in {ckpt_dir} (steps there: "
                f"{have or 'none'}); {HOW_TO_GET_A_CHECKPOINT}"
            )
        return CheckpointRef("train_state", step_dir, int(checkpoint))

    path = os.path.abspath(str(checkpoint if checkpoint is not None else workdir))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path not found: {path}; {HOW_TO_GET_A_CHECKPOINT}")
    if is_converted_checkpoint(path):
        return CheckpointRef("converted", path)
    if _is_step_dir(path):
        base = os.path.basename(path.rstrip(os.sep))
        return CheckpointRef("train_state", path, int(base) if base.isdigit() else None)
    for ckpt_dir in (os.path.join(path, "checkpoints"), path):
        steps = _steps_in(ckpt_dir)
        if steps:
            return CheckpointRef("train_state", os.path.join(ckpt_dir, str(steps[-1])), steps[-1])
    raise FileNotFoundError(
        f"no checkpoint found in {path}: neither {os.path.join(path, 'checkpoints')}/<step> "
        f"(a training workdir), a step directory, nor a converted checkpoint; "
        f"{HOW_TO_GET_A_CHECKPOINT}"
    )


@dataclasses.dataclass(frozen=True)
class LoadedGenerator:
    """A generator module, its eval variables ({params, batch_stats, spectral}) and where they
    came from: `params` is "ema", "raw" or "converted"."""

    module: object
    variables: dict
    checkpoint: CheckpointRef
    params: str


def abstract_train_state(config):
    """`jax.eval_shape` of the config's fresh `TrainState` (no data, no compute)."""
    from ecgan_jax.training.state import build_models, create_train_state, make_optimizers

    models = build_models(config)
    # The dataset size only shapes the lr schedule, never the state's tree structure.
    tx_g, tx_d, _ = make_optimizers(config, 1000)
    return jax.eval_shape(lambda: create_train_state(config, models, tx_g, tx_d, mesh=None))


def _restore_train_state(config, step_dir: str):
    import orbax.checkpoint as ocp

    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_train_state(config),
    )
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(os.path.join(step_dir, "state"), abstract)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"cannot restore the train state in {step_dir} with this config: {e}\n(the config "
            "must be the training config: same model widths, contrastive heads, label head "
            "and EMA on/off)"
        ) from e


def restore_generator(
    config, *, workdir: str | None = None, checkpoint=None, use_ema: bool = True
) -> LoadedGenerator:
    """Like `load_generator`, with the checkpoint and the parameters used (for the protocol)."""
    from ecgan_jax.models import build_generator

    config_lib.validate_config(config)
    ref = resolve_checkpoint(workdir, checkpoint)
    generator = build_generator(config)
    if ref.kind == "converted":
        from ecgan_jax.interop.authors import load_converted

        tree = load_converted(ref.path)
        if "generator" not in tree:
            raise ValueError(
                f"{ref.path} holds no generator (items: {sorted(tree)}); convert one with "
                "`python -m ecgan_jax.convert --generator=latest_net_G.pth ...`"
            )
        variables = jax.tree_util.tree_map(jnp.asarray, tree["generator"])
        if not use_ema:
            logging.info("converted checkpoint %s: its generator weights are used", ref.path)
        return LoadedGenerator(generator, variables, ref, "converted")

    state = _restore_train_state(config, ref.path)
    params, which = state.g_params["generator"], "raw"
    if use_ema:
        if state.ema_params is None:
            logging.warning(
                "%s has no EMA parameters (trained with ema_decay = 0): using the raw "
                "generator parameters",
                ref.path,
            )
        else:
            params, which = state.ema_params, "ema"
    logging.info("generator: %s parameters of step %s from %s", which, ref.step, ref.path)
    return LoadedGenerator(generator, {"params": params, **state.g_stats}, ref, which)


def load_generator(
    config, *, workdir: str | None = None, checkpoint=None, use_ema: bool = True
) -> tuple[object, dict]:
    """(generator module, eval variables) from a training workdir or a converted checkpoint.

    See the module docstring for what `workdir` / `checkpoint` may name. EMA parameters by
    default (raw ones with `use_ema=False`, or when the run has no EMA).
    """
    loaded = restore_generator(config, workdir=workdir, checkpoint=checkpoint, use_ema=use_ema)
    return loaded.module, loaded.variables


# --------------------------------------------------------------------------- generation


def make_generate_fn(
    generator, config, mesh: Mesh | None = None, *, replicated_batch: bool = False
) -> Callable:
    """jit(eval-mode generator): (variables, label (B,H,W), instance (B,H,W)) -> (I′, I″, I′_e).

    The batch is sharded on the `data` axis of `mesh` (default: one device); B must be a
    multiple of its size. With `replicated_batch` the batch is replicated instead (any B; the
    training loop's sample grids, whose result every process reads from a local shard).
    Labels are mapped class ids (`transforms.map_and_check_labels`); `generate_batches`
    checks their range on the host. Compiled with the backend hooks of `config.runtime`.
    """
    from ecgan_jax.xla_cpu import runtime_for

    mesh = local_mesh(1) if mesh is None else mesh
    d = config.dataset
    channels = int(d.label_nc) + int(bool(d.contain_dontcare_label))
    use_instance = not bool(d.no_instance)

    def fn(variables, label, instance):
        seg = encode_labels_typed(
            label,
            instance if use_instance else None,
            num_label_channels=channels,
            use_instance=use_instance,
        )
        return generator.apply(variables, seg, train=False)

    batch = replicated(mesh) if replicated_batch else NamedSharding(mesh, P(DATA_AXIS))
    fn = runtime_for(config, mesh).wrap(fn)
    jitted = jax.jit(fn, in_shardings=(replicated(mesh), batch, batch))
    return GenerateFn(jitted, mesh, channels)


@dataclasses.dataclass(frozen=True, eq=False)
class GenerateFn:
    """`make_generate_fn`'s result: the jitted function and the mesh its batch is sharded on."""

    fn: Callable
    mesh: Mesh
    num_label_values: int

    def __call__(self, variables, label, instance):
        return self.fn(variables, label, instance)


def _chunks(x, batch_size: int) -> Iterator[np.ndarray]:
    if isinstance(x, np.ndarray | jax.Array):
        for start in range(0, x.shape[0], batch_size):
            yield np.asarray(x[start : start + batch_size])
        return
    for chunk in x:
        chunk = np.asarray(chunk)
        for start in range(0, chunk.shape[0], batch_size):
            yield chunk[start : start + batch_size]


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)])


def generate_batches(
    generator,
    variables,
    config,
    labels,
    instances=None,
    *,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    generate_fn: Callable | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (I′, I″, I′_e), numpy float32 (b, H, W, 3), for consecutive chunks of `labels`.

    `labels` (and `instances`, required when the config uses instances): one (N, H, W) int
    array, or an iterable of (b, H, W) arrays (instances chunked the same way). Chunks larger
    than `batch_size` are split; every call of the jitted generator sees `batch_size` rows (the
    last chunk is padded by repeating a row and the padding dropped), so one shape compiles.
    `batch_size` must be a multiple of the mesh size (default mesh: one device).
    """
    fn = generate_fn or make_generate_fn(generator, config, mesh)
    n_dev = fn.mesh.devices.size
    if batch_size <= 0 or batch_size % n_dev:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of the device count ({n_dev})"
        )
    if instances is None and not config.dataset.no_instance:
        raise ValueError(
            "this config uses instance maps (dataset.no_instance=False): give `instances`"
        )
    variables = jax.device_put(variables, NamedSharding(fn.mesh, P()))
    inst_chunks = _chunks(instances, batch_size) if instances is not None else None
    for label in _chunks(labels, batch_size):
        instance = next(inst_chunks) if inst_chunks is not None else None
        yield _run(fn, variables, label, instance, batch_size)


def _run(fn, variables, label, instance, batch_size):
    n = label.shape[0]
    label = _pad(np.asarray(label, np.int32), batch_size)
    if label.size and (label.min() < 0 or label.max() >= fn.num_label_values):
        bad = np.unique(label[(label < 0) | (label >= fn.num_label_values)])
        raise ValueError(
            f"label values {bad[:10].tolist()} outside [0, {fn.num_label_values - 1}] "
            "(dataset.label_nc plus the dontcare class)"
        )
    if instance is None:
        instance = np.zeros_like(label)
    else:
        instance = _pad(np.asarray(instance, np.int32), batch_size)
        if instance.shape != label.shape:
            raise ValueError(f"instance batch {instance.shape} != label batch {label.shape}")
    outs = jax.device_get(fn(variables, label, instance))
    return tuple(np.asarray(o[:n], np.float32) for o in outs)


# --------------------------------------------------------------------------- evaluation


def image_to_uint8(x) -> np.ndarray:
    """Real images of the pipeline ([-1, 1] = u / 127.5 - 1 of uint8 files) back to uint8."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def uint8_to_unit(x) -> np.ndarray:
    return np.asarray(x, np.float32) / np.float32(127.5) - np.float32(1.0)


def identity_labels(label):
    return np.asarray(label, np.int32)


def _as_statistics(real_stats):
    if real_stats is None:
        return None
    if isinstance(real_stats, str | os.PathLike):
        from ecgan_jax.eval.fid import load_statistics

        return load_statistics(real_stats)
    mu, sigma = real_stats
    return np.asarray(mu, np.float64), np.asarray(sigma, np.float64)


def _eval_split(config, fn, variables, *, batch_size: int, limit: int | None, real: bool):
    """Yields (stems, images uint8 (b,H,W,3), real uint8, labels) over the eval split: I″ of
    the generator (or, with `real`, the real images themselves), padding rows dropped, at most
    `limit` images in all."""
    from ecgan_jax import data as data_lib

    it = data_lib.make_eval_iterator(
        config, batch_size=batch_size, process_index=0, process_count=1
    )
    count = 0
    for batch in it:
        keep = np.flatnonzero(np.asarray(batch["valid"]))
        if limit is not None:
            keep = keep[: limit - count]
        if keep.size == 0:
            return
        real_u8 = image_to_uint8(np.asarray(batch["image"])[keep])
        if real:
            images = real_u8
        else:
            _, final, _ = _run(fn, variables, batch["label"], batch["instance"], batch_size)
            images = to_uint8(final[keep])
        count += keep.size
        stems = [str(s) for s in np.asarray(batch["stem"])[keep]]
        yield stems, images, real_u8, np.asarray(batch["label"])[keep]
        if limit is not None and count >= limit:
            return


def _fid_result(fake_feats, real_feats, given, count: int) -> dict:
    """FID of the generated features against the real ones (or the given statistics)."""
    from ecgan_jax.eval.fid import compute_statistics, frechet_distance

    if count < 2:
        raise ValueError(f"FID needs at least 2 images, got {count} (max_images)")
    fake = compute_statistics(np.concatenate(fake_feats))
    real = given if given is not None else compute_statistics(np.concatenate(real_feats))
    return dict(
        fid=frechet_distance(*fake, *real),
        fake_stats=fake,
        real_stats=real,
        real_stats_source="given" if given is not None else "computed",
    )


def evaluate_generator(
    config,
    generator,
    variables,
    *,
    max_images: int | None = None,
    inception_variables=None,
    real_stats=None,
    segmenter=None,
    label_mapping: Callable = identity_labels,
    ignore_label: int = 255,
    batch_size: int = 8,
    mesh: Mesh | None = None,
    image_callback: Callable | None = None,
    generate_fn: GenerateFn | None = None,
    real_images: bool = False,
) -> dict:
    """Generates the eval split (`config.dataset.eval_split`) and scores I″ in one pass.

    Returns {"num_images", "resolution", "class_colour_error" (the demo's per-class colour
    error of I″ against the real images, `eval.quality`, averaged over batches by their image
    count), and with `inception_variables`: "fid",
    "fake_stats" (mu, sigma), "real_stats" (mu, sigma; of the real images unless given),
    "real_stats_source" ("computed" / "given"); with `segmenter`: "segmentation" (the
    `scores_from_confusion` dict)}. I″ is quantised to uint8 first (as saved PNGs); the FID
    inputs are uint8, the segmenter's those values mapped back to [-1, 1]. Labels for the
    segmenter: `label_mapping(label)` (e.g. Cityscapes labelIds -> train ids), pixels equal to
    `ignore_label` ignored, at the generated resolution (the eval pipeline resizes labels by
    nearest). Padding rows of the eval iterator (`valid` False) are dropped; at most
    `max_images` (None or <= 0: all). `image_callback(stems, final_uint8)` sees every kept
    batch (e.g. to write PNGs). `generate_fn`: a `make_generate_fn(generator, config, mesh)`
    made once, for repeated calls (periodic FID during training: no re-trace of the
    generator); it replaces `mesh`. `real_images=True` scores the real images instead of I″
    (the upper bound of the segmentation scores; `generator` and `variables` are unused).

    The whole split is read by this process (run it single-process).
    """
    if generate_fn is not None:
        mesh = generate_fn.mesh
    mesh = local_mesh(1) if mesh is None else mesh
    n_dev = mesh.devices.size
    if batch_size <= 0 or batch_size % n_dev:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of the device count ({n_dev})"
        )
    limit = None if max_images is None or max_images <= 0 else int(max_images)
    given = _as_statistics(real_stats)
    if inception_variables is None and segmenter is None:
        raise ValueError("evaluate_generator: give inception_variables and/or a segmenter")

    from ecgan_jax.eval.fid import extract_features

    seg_eval = None
    if segmenter is not None:
        from ecgan_jax.eval.segmentation import SegmentationEvaluator, pad_batch

        seg_eval = SegmentationEvaluator(segmenter, ignore_label=ignore_label, mesh=mesh)
    fn = None
    if not real_images:
        fn = generate_fn or make_generate_fn(generator, config, mesh)
        variables = jax.device_put(variables, replicated(mesh))
    fake_feats, real_feats, count, colour = [], [], 0, 0.0
    from ecgan_jax.eval.quality import class_colour_error

    kw = dict(batch_size=batch_size, mesh=mesh)
    num_colour_classes = config_lib.semantic_nc(config)
    split = _eval_split(config, fn, variables, batch_size=batch_size, limit=limit, real=real_images)
    for stems, images, real_u8, labels in split:
        count += len(stems)
        unit = uint8_to_unit(images)  # what the colour error and the segmenter score
        colour += len(stems) * class_colour_error(
            unit, uint8_to_unit(real_u8), labels, num_classes=num_colour_classes
        )
        if image_callback is not None:
            image_callback(stems, images)
        if inception_variables is not None:
            fake_feats.append(extract_features(inception_variables, images, **kw))
            if given is None:
                real_feats.append(extract_features(inception_variables, real_u8, **kw))
        if seg_eval is not None:
            # One shape for the segmenter: padded rows carry label -1 (not counted).
            seg_eval.update(*pad_batch(unit, label_mapping(labels), batch_size))
    if count == 0:
        raise ValueError(f"the eval split of {config.dataset.name!r} yielded no image")
    result = {
        "num_images": count,
        "resolution": [int(v) for v in config.dataset.image_size],
        "class_colour_error": colour / count,
    }
    if inception_variables is not None:
        result.update(_fid_result(fake_feats, real_feats, given, count))
    if seg_eval is not None:
        result["segmentation"] = seg_eval.result()
    return result


def fid_of_generator(
    config,
    generator,
    variables,
    inception_variables,
    *,
    max_images: int | None,
    real_stats=None,
    batch_size: int = 8,
    mesh: Mesh | None = None,
) -> float:
    """FID of I″ (uint8-quantised) on the first `max_images` of the eval split.

    Against `real_stats` ((mu, sigma) or a statistics `.npz` path) when given, else against
    the same real images (their statistics recomputed each call: pass them in for periodic
    use during training). For a training state:
    `fid_of_generator(config, models.generator, {"params": state.ema_params, **state.g_stats},
    load_inception(path), max_images=config.num_eval_images)`.
    """
    result = evaluate_generator(
        config,
        generator,
        variables,
        max_images=max_images,
        inception_variables=inception_variables,
        real_stats=real_stats,
        batch_size=batch_size,
        mesh=mesh,
    )
    return float(result["fid"])
