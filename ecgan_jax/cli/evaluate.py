r"""FID and mIoU / pixel accuracy of a trained generator on the validation split (§5, §D.5).

    python -m ecgan_jax.evaluate --config=configs/cityscapes.py --workdir=runs/cityscapes \
        --config.dataset.root=/data/cityscapes --fid_weights=weights/inception_fid.npz \
        --segmenter_weights=weights/drn.npz [--segmenter=drn_d_105] [--real] \
        [--fid_stats=stats/cityscapes_val.npz | --save_real_stats=stats/cityscapes_val.npz] \
        [--out=DIR] [--max_images=N] [--checkpoint=STEP_OR_DIR] [--raw] [--save_images] \
        [--segmenter_scales=protocol|single] [--overwrite] [--batch_size=8] [--num_devices=-1]

    python -m ecgan_jax.evaluate --config=configs/ade20k.py --real \
        --config.dataset.root=/data/ADEChallengeData2016 \
        --segmenter_weights=weights/upernet101_ade20k.npz --out=eval/ade20k_real

The protocol (`ecgan_jax.eval.protocol`) is printed before any number and written with the
numbers to `<out>/metrics.json` ({"protocol", "metrics", "real"}):
* the generator's final output I″ of every image of `config.dataset.eval_split` (or the first
  `--max_images`), made from the label (+ instance) maps at `config.dataset.image_size`, EMA
  parameters unless `--raw`, quantised to uint8 as saved PNGs;
* FID (with `--fid_weights`): pytorch-fid's InceptionV3 (`python -m ecgan_jax.eval.inception`),
  against the same number of real validation images at the same resolution, or `--fid_stats`;
* mIoU / accuracy (with `--segmenter_weights`): the dataset's conventional segmenter
  (DRN-D-105 for Cityscapes, UperNet-101 for ADE20K, DeepLab-v2 for COCO-Stuff; `--segmenter`
  chooses another, and must for custom datasets) on I″, against the eval pipeline's labels
  through the protocol's label mapping; ignored pixels excluded from every score;
* `--real`: the same segmenter on the real validation images (the upper bound); alone (no
  `--workdir` / `--checkpoint`) it scores only those.
`<out>/fake_stats.npz` holds the generated images' FID statistics (pytorch-fid format).
Existing output files are refused unless `--overwrite`; `--out` may not lie in an input
folder (`cli/outputs.py`). Flags: `ecgan_jax.cli.flags` (shared with `generate`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from absl import flags

from ecgan_jax.cli import flags as cli_flags
from ecgan_jax.cli import outputs
from ecgan_jax.eval import protocol as protocol_lib

# --------------------------------------------------------------------------- flags

RANDOM = "random"  # --fid_weights=random: a randomly initialised InceptionV3 (smoke use only)
RANDOM_WARNING = (
    "WARNING: --fid_weights=random: InceptionV3 with RANDOM weights (seed 0). The 'FID' below "
    "is a smoke-test figure, comparable only to other runs with random weights, never to a "
    "published FID"
)


def define_flags(fv: flags.FlagValues, argv: Sequence[str] | None = None) -> None:
    """The flags of `evaluate`: the shared checkpoint flags plus its own."""
    cli_flags.define_checkpoint_flags(fv, argv)
    flags.DEFINE_string(
        "fid_weights",
        None,
        "FID InceptionV3 .npz (python -m ecgan_jax.eval.inception), or 'random': random weights "
        "for a smoke test offline (the FID is then labelled as not comparable to any other)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "fid_stats",
        None,
        "real images' FID statistics .npz (mu, sigma) to compare against",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "save_real_stats",
        None,
        "write the real images' FID statistics to this .npz",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "segmenter",
        "auto",
        ["auto", "none", *protocol_lib.SEGMENTERS],
        "segmentation network; auto: the dataset's conventional one (eval/protocol.py)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "segmenter_weights",
        None,
        "converted segmenter .npz (python -m ecgan_jax.eval.drn / .upernet / .deeplab)",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "segmenter_classes",
        0,
        "classes of the segmenter (0: the protocol's)",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "segmenter_scales",
        "protocol",
        list(protocol_lib.SCALES),
        "protocol: the network's conventional test (multi-scale for UperNet, MSC for "
        "DeepLab); single: one pass at the generated resolution",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "label_mapping",
        "auto",
        ["auto", *protocol_lib.LABEL_MAPPINGS],
        "ground truth of the segmenter; auto: the dataset's",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "real", False, "also score the segmenter on the real validation images", flag_values=fv
    )
    flags.DEFINE_string(
        "out",
        None,
        "output folder (default: <workdir>/eval for a training workdir)",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "max_images",
        0,
        "the first N images of the split (0: all)",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "save_images", False, "also write I'' to <out>/images/<stem>.png", flag_values=fv
    )


# --------------------------------------------------------------------------- pieces


def _segmenter_choice(fv, config):
    """(segmenter name or None, num_classes, label mapping name) from the flags."""
    proto = protocol_lib.for_config(config)
    name = fv.segmenter
    if name == "auto":
        name = proto.segmenter if fv.segmenter_weights else None
        if fv.segmenter_weights and name is None:
            raise cli_flags.CommandLineError(
                f"dataset {proto.dataset!r} has no conventional segmenter: pass --segmenter="
                f"one of {', '.join(protocol_lib.SEGMENTERS)} with --segmenter_weights"
            )
    elif name == "none":
        name = None
    if name is not None and not fv.segmenter_weights:
        raise cli_flags.CommandLineError(
            f"--segmenter={name} needs --segmenter_weights=FILE.npz; make it with "
            f"{protocol_lib.segmenter_spec(name).convert_command}"
        )
    if name is None:
        return None, 0, None
    classes = fv.segmenter_classes or protocol_lib.default_num_classes(config, name)
    mapping = proto.label_mapping if fv.label_mapping == "auto" else fv.label_mapping
    return name, classes, mapping


def _default_out(fv) -> str:
    from ecgan_jax.inference import is_converted_checkpoint

    if fv.out:
        return fv.out
    if fv.workdir is None or is_converted_checkpoint(fv.workdir):
        raise cli_flags.CommandLineError(
            "--out is required unless --workdir is a training workdir (default <workdir>/eval)"
        )
    return os.path.join(fv.workdir, "eval")


def _check_outputs(fv, config, out: str, *, with_generator: bool, checkpoint_dir) -> dict:
    """Refuses outputs over inputs or existing files; returns {role: path} of the outputs."""
    inputs = {
        "--fid_weights": (None if fv.fid_weights == RANDOM else fv.fid_weights, "file"),
        "--fid_stats": (fv.fid_stats, "file"),
        "--segmenter_weights": (fv.segmenter_weights, "file"),
        "dataset.root": (str(config.dataset.root or ""), "dir"),
        "the checkpoint": (checkpoint_dir, "dir"),
    }
    outputs.check_not_inputs(
        {"--out": (out, "dir"), "--save_real_stats": (fv.save_real_stats, "file")}, inputs
    )
    paths = {"metrics": os.path.join(out, "metrics.json")}
    if with_generator and fv.fid_weights:
        paths["fake_stats"] = os.path.join(out, "fake_stats.npz")
    if fv.save_real_stats:
        paths["real_stats"] = fv.save_real_stats
    existing = list(paths.values())
    image_dir = os.path.join(out, "images")
    if fv.save_images and os.path.isdir(image_dir) and os.listdir(image_dir):
        existing.append(image_dir)
    outputs.check_absent(existing, overwrite=fv.overwrite)
    return paths


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _scores(seg: dict) -> dict:
    return {
        "miou": seg["miou"],
        "pixel_accuracy": seg["pixel_accuracy"],
        "mean_class_accuracy": seg["mean_class_accuracy"],
        "per_class_iou": [float(v) for v in seg["per_class_iou"]],
        "class_present": [bool(v) for v in seg["class_present"]],
        "num_pixels": int(seg["num_pixels"]),
    }


# --------------------------------------------------------------------------- command


def evaluate(fv: flags.FlagValues) -> dict:
    """The command on parsed flags; returns the report written to `<out>/metrics.json`."""
    config = cli_flags.load_config(fv)
    with_generator = fv.workdir is not None or fv.checkpoint is not None
    if not with_generator and not fv.real:
        cli_flags.require_checkpoint(fv)
    choice = _segmenter_choice(fv, config)
    _check_flag_combinations(fv, with_generator=with_generator, seg_name=choice[0])
    out = _default_out(fv)
    checkpoint_dir = cli_flags.checkpoint_folder(fv) if with_generator else None
    paths = _check_outputs(
        fv, config, out, with_generator=with_generator, checkpoint_dir=checkpoint_dir
    )
    inputs = _load_inputs(fv, config, with_generator=with_generator, segmenter_choice=choice)
    block = _protocol(fv, config, inputs, segmenter_choice=choice)
    print(protocol_lib.format_block(block), flush=True)

    report = {"protocol": block, "metrics": None}
    if inputs.loaded is not None:
        report["metrics"] = _score_generator(fv, config, inputs, block=block, paths=paths, out=out)
    if fv.real:
        real = protocol_lib.score_real_images(
            config,
            inputs.segmenter,
            inputs.mapping,
            max_images=fv.max_images,
            batch_size=inputs.batch_size,
            mesh=inputs.mesh,
        )
        report["real"] = {"num_images": real["num_images"], **_scores(real)}
    _write_report(report, path=paths["metrics"], loaded=inputs.loaded, size=inputs.size)
    return report


def _check_flag_combinations(fv, *, with_generator: bool, seg_name: str | None) -> None:
    """One-line errors for flag sets that measure nothing or contradict each other."""
    if fv.real and seg_name is None:
        raise cli_flags.CommandLineError(
            "--real scores the segmenter on the real images: give --segmenter_weights"
        )
    if with_generator and not fv.fid_weights and seg_name is None:
        raise cli_flags.CommandLineError(
            "nothing to measure: give --fid_weights (FID) and/or --segmenter_weights (mIoU)"
        )
    if fv.fid_stats and fv.save_real_stats:
        raise cli_flags.CommandLineError(
            "--save_real_stats needs the real images: leave out --fid_stats"
        )
    if fv.save_real_stats and not (with_generator and fv.fid_weights):
        raise cli_flags.CommandLineError("--save_real_stats needs --fid_weights and a generator")


class _Inputs(NamedTuple):
    """Everything `evaluate` reads before it computes: networks, statistics, the generator.

    use_fid: FID is measured (a generator and --fid_weights). inception: InceptionV3 variables
    or None; real_stats: `(mu, sigma)` from --fid_stats or None; segmenter: a loaded segmenter
    or None, mapping its label mapping (or None); size: `(H, W)` of the generated images;
    mesh, batch_size: from the device flags; num_images: images of the eval split to score;
    loaded: the restored generator (`cli_flags.restore_generator`) or None for real only.
    """

    use_fid: bool
    inception: object
    real_stats: object
    segmenter: object
    mapping: object
    size: tuple[int, int]
    mesh: object
    batch_size: int
    num_images: int
    loaded: object


def _load_inputs(fv, config, *, with_generator: bool, segmenter_choice) -> _Inputs:
    """Reads every input file first, so that a missing one fails before any compute."""
    from ecgan_jax import data as data_lib
    from ecgan_jax.eval import fid as fid_lib

    seg_name, seg_classes, mapping_name = segmenter_choice
    inception = real_stats = segmenter = mapping = None
    use_fid = with_generator and bool(fv.fid_weights)
    if use_fid:
        from ecgan_jax.eval.inception import init_inception, load_inception

        if fv.fid_weights == RANDOM:
            print(RANDOM_WARNING, flush=True)
            inception = init_inception(0)
        else:
            inception = load_inception(fv.fid_weights)
        real_stats = fid_lib.load_statistics(fv.fid_stats) if fv.fid_stats else None
    h, w = (int(v) for v in config.dataset.image_size)
    if seg_name is not None:
        protocol_lib.segmenter_spec(seg_name).check_size(h, w)
        segmenter = protocol_lib.load_segmenter(
            seg_name, fv.segmenter_weights, num_classes=seg_classes, scales=fv.segmenter_scales
        )
        mapping = protocol_lib.LABEL_MAPPINGS[mapping_name]
    mesh, batch_size = cli_flags.mesh_and_batch(fv)
    available = data_lib.make_eval_iterator(
        config, batch_size=batch_size, process_index=0, process_count=1
    ).num_examples
    num_images = min(available, fv.max_images) if fv.max_images else available
    loaded = cli_flags.restore_generator(fv, config) if with_generator else None
    return _Inputs(
        use_fid=use_fid,
        inception=inception,
        real_stats=real_stats,
        segmenter=segmenter,
        mapping=mapping,
        size=(h, w),
        mesh=mesh,
        batch_size=batch_size,
        num_images=num_images,
        loaded=loaded,
    )


def _protocol(fv, config, inputs: _Inputs, *, segmenter_choice) -> dict:
    """The protocol block (`ecgan_jax.eval.protocol`) of this run, with the config's file and
    overrides and `max_images`."""
    seg_name, seg_classes, mapping_name = segmenter_choice
    fid_info = seg_info = None
    if inputs.use_fid:
        fid_info = protocol_lib.fid_block(
            weights=None if fv.fid_weights == RANDOM else fv.fid_weights,
            stats_file=fv.fid_stats,
            num_images=inputs.num_images,
            resolution=inputs.size,
            split=str(config.dataset.eval_split),
        )
    if seg_name is not None:
        seg_info = protocol_lib.segmentation_block(
            config,
            segmenter=seg_name,
            weights=fv.segmenter_weights,
            num_classes=seg_classes,
            label_mapping=mapping_name,
            scales=fv.segmenter_scales,
        )
    block = protocol_lib.protocol_block(
        config,
        num_images=inputs.num_images,
        generator=_generator_block(inputs.loaded),
        fid=fid_info,
        segmentation=seg_info,
    )
    block["config"] = {
        "file": cli_flags.config_spec(fv),
        "overrides": cli_flags.config_overrides(fv),
    }
    block["max_images"] = fv.max_images or None
    return block


def _score_generator(fv, config, inputs: _Inputs, *, block: dict, paths: dict, out: str) -> dict:
    """Generates and scores the eval split (`inference.evaluate_generator`), writes the FID
    statistics (their paths added to `block["fid"]`) and the PNGs with --save_images; returns
    the report's `metrics`."""
    from ecgan_jax import inference
    from ecgan_jax.eval import fid as fid_lib

    callback = None
    if fv.save_images:
        image_dir = os.path.join(out, "images")

        def callback(stems, images):
            for stem, img in zip(stems, images, strict=True):
                outputs.save_png(os.path.join(image_dir, f"{stem}.png"), img)

    result = inference.evaluate_generator(
        config,
        inputs.loaded.module,
        inputs.loaded.variables,
        max_images=fv.max_images,
        inception_variables=inputs.inception,
        real_stats=inputs.real_stats,
        segmenter=inputs.segmenter,
        label_mapping=inputs.mapping or inference.identity_labels,
        batch_size=inputs.batch_size,
        mesh=inputs.mesh,
        image_callback=callback,
    )
    if result["num_images"] != inputs.num_images:
        raise RuntimeError(
            f"evaluated {result['num_images']} images, expected {inputs.num_images} (eval split)"
        )
    metrics = {
        "num_images": result["num_images"],
        "class_colour_error": float(result["class_colour_error"]),  # the demo's figure
    }
    if inputs.use_fid:
        metrics["fid"] = float(result["fid"])
        fid_lib.save_statistics(paths["fake_stats"], *result["fake_stats"])
        if fv.save_real_stats:
            fid_lib.save_statistics(paths["real_stats"], *result["real_stats"])
        block["fid"]["fake_stats"] = os.path.abspath(paths["fake_stats"])
        if fv.save_real_stats:
            block["fid"]["real_stats"] = os.path.abspath(paths["real_stats"])
    if result.get("segmentation") is not None:
        metrics.update(_scores(result["segmentation"]))
    return metrics


def _write_report(report: dict, *, path: str, loaded, size: tuple[int, int]) -> None:
    """Writes `report` to `path` (metrics.json) and prints one summary line per scored set."""
    outputs.save_json(path, report)
    print("\n".join([*_summary(report, loaded, size), f"written {path}"]))


def _generator_block(loaded) -> dict | None:
    """Where the scored images come from (the protocol's `generator`); None: real images."""
    if loaded is None:
        return None
    ref = loaded.checkpoint
    return {
        "output": "I'' (the generator's final image)",
        "parameters": loaded.params,
        "checkpoint": {"kind": ref.kind, "path": ref.path, "step": ref.step},
    }


def _summary(report: dict, loaded, size) -> list[str]:
    """One line per scored set: the generated images, then the real ones."""
    h, w = size
    lines = []
    if report["metrics"] is not None:
        m = report["metrics"]
        step = "" if loaded.checkpoint.step is None else f" step {loaded.checkpoint.step}"
        lines.append(
            (f"FID {_fmt(m['fid'])}  " if "fid" in m else "")
            + (f"mIoU {_fmt(m['miou'])}  acc {_fmt(m['pixel_accuracy'])}  " if "miou" in m else "")
            + f"colour error {_fmt(m['class_colour_error'])}  "
            + f"({m['num_images']} images, {loaded.params} params{step}, {h}x{w}, I'')"
        )
    if "real" in report:
        r = report["real"]
        lines.append(
            f"real images: mIoU {_fmt(r['miou'])}  acc {_fmt(r['pixel_accuracy'])}  "
            f"({r['num_images']} images, {h}x{w})"
        )
    return lines


def main(argv: Sequence[str]) -> dict:
    """`evaluate` in-process: `main(["--config=...", ...])` (argv[0] optional); the report."""
    return evaluate(cli_flags.parse(argv, define_flags))


def run() -> None:
    """`python -m ecgan_jax.evaluate`."""
    cli_flags.run(evaluate, define_flags, __doc__)


if __name__ == "__main__":
    run()
