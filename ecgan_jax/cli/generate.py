r"""Generate images from label maps with a trained (or converted) generator.

    python -m ecgan_jax.generate --config=configs/cityscapes.py --workdir=runs/cityscapes \
        --labels=DIR --out=DIR [--instances=DIR] [--checkpoint=STEP_OR_DIR] [--raw] \
        [--save_first] [--save_edge] [--overwrite] [--batch_size=8] [--num_devices=-1] \
        [--config.model.dtype=bfloat16 ...]

Every label file in `--labels` (`<stem>.png`; Cityscapes `<stem>_gtFine_labelIds.png`, found in
city subfolders too) is read like the data pipeline reads it (`data.transforms`: raw values,
the dataset's 255 -> unknown mapping, values checked against label_nc with the file named),
resized to `config.dataset.image_size` by nearest neighbour, and paired by stem with an
instance map when the config uses instances (`dataset.no_instance=False`). Instance maps come
from `--instances`, or else from where the dataset's layout keeps them beside the labels
(`default_instance_dirs`: Cityscapes the same gtFine folder, `<stem>_gtFine_instanceIds.png`;
COCO-Stuff `<split>_inst` beside `<split>_label`; custom and synthetic `instances` beside
`labels`); without either the command stops and says so. The generator runs batched in eval
mode; I″ is written as `<out>/<stem>.png` (optionally I′ as `<stem>_first.png` and I′_e as
`<stem>_edge.png`), uint8 by `quality.to_uint8`. Weights: `inference.restore_generator` (EMA
of the latest checkpoint of `--workdir` unless `--raw` / `--checkpoint`; or a directory made by
`python -m ecgan_jax.convert`). Flags: `ecgan_jax.cli.flags` (shared with `evaluate`).

Nothing of the user's is overwritten (`cli/outputs.py`): `--out` may not be, contain or lie
inside the labels, instances, dataset root or checkpoint folder; output files that exist
already are refused unless `--overwrite`; every file is written to a temporary name and
renamed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from ecgan_jax.cli import flags as cli_flags
from ecgan_jax.cli import outputs
from ecgan_jax.sharding import local_mesh

# --------------------------------------------------------------------------- flags


def define_flags(fv: flags.FlagValues, argv: Sequence[str] | None = None) -> None:
    """The flags of `generate`: the shared checkpoint flags plus its own."""
    cli_flags.define_checkpoint_flags(fv, argv)
    flags.DEFINE_string("labels", None, "folder of label maps (PNG)", flag_values=fv)
    flags.DEFINE_string(
        "instances",
        None,
        "folder of instance maps, paired by stem (default: the layout's instance folder "
        "beside --labels, when the config uses instances)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "out", None, "output folder (not inside or around an input folder)", flag_values=fv
    )
    flags.DEFINE_boolean("save_first", False, "also write I' as <stem>_first.png", flag_values=fv)
    flags.DEFINE_boolean("save_edge", False, "also write I'_e as <stem>_edge.png", flag_values=fv)


# --------------------------------------------------------------------------- label files


def _layout_suffixes(name: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(label suffixes, instance suffixes, recursive) of the dataset's label files."""
    from ecgan_jax.data import layouts

    if name in layouts.FILE_DATASETS:
        mods = layouts.modalities(name, "", "")
        inst = mods.get("instance", mods["label"])
        return mods["label"].suffixes, inst.suffixes, mods["label"].recursive
    return (".png",), (".png",), False


def default_instance_dirs(config, labels_dir: str) -> list[tuple[str, str]]:
    """[(folder, why)]: where the dataset's layout keeps the instance maps of `labels_dir`.

    Cityscapes: the labels folder itself (gtFine holds `_labelIds` and `_instanceIds` side by
    side); COCO-Stuff: `<x>_inst` beside `<x>_label`; custom / synthetic: `instances` beside
    `labels` (`<root>/<split>/{labels,instances}`). ADE20K has no instance maps.
    """
    name = str(config.dataset.name)
    labels = os.path.normpath(os.path.abspath(labels_dir))
    parent, base = os.path.split(labels)
    if name == "cityscapes":
        return [(labels, "the Cityscapes layout keeps _instanceIds beside _labelIds")]
    if name == "coco_stuff":
        if base.endswith("_label"):
            inst = os.path.join(parent, base[: -len("_label")] + "_inst")
            return [(inst, "the COCO-Stuff layout's <split>_inst beside <split>_label")]
        return [(os.path.join(parent, "instances"), "an instances folder beside the labels")]
    if name in ("custom", "synthetic"):
        return [(os.path.join(parent, "instances"), "the custom layout's instances beside labels")]
    return []


def list_label_files(config, labels_dir: str, instances_dir: str | None = None):
    """[(stem, label path, instance path or None)] sorted by stem, paired by stem.

    Instance maps (when the config uses them) come from `instances_dir`, else from the first
    of `default_instance_dirs` that exists; with neither, a FileNotFoundError says what to pass.
    """
    from ecgan_jax.data import layouts

    uses_instances = not bool(config.dataset.no_instance)
    label_sfx, inst_sfx, recursive = _layout_suffixes(str(config.dataset.name))
    if not os.path.isdir(labels_dir):
        raise FileNotFoundError(f"--labels: label folder not found: {labels_dir}")
    labels = layouts.scan(layouts.Modality(labels_dir, label_sfx, recursive))
    if not labels:
        raise ValueError(
            f"--labels: no label files ending in {'/'.join(label_sfx)} in {labels_dir}"
        )
    instances = {}
    if uses_instances:
        if instances_dir is None:
            tried = default_instance_dirs(config, labels_dir)
            found = [d for d, _ in tried if os.path.isdir(d)]
            if not found:
                looked = "; ".join(f"{d} ({why})" for d, why in tried) or "nowhere (no layout)"
                raise FileNotFoundError(
                    f"this config uses instance maps (dataset.no_instance=False) and --instances "
                    f"is not given; looked beside the labels for {looked}: not found. Pass "
                    f"--instances=DIR holding <stem>{inst_sfx[0]} for every label file"
                )
            instances_dir = found[0]
            logging.info("instance maps from %s (beside the labels)", instances_dir)
        if not os.path.isdir(instances_dir):
            raise FileNotFoundError(f"--instances: instance folder not found: {instances_dir}")
        instances = layouts.scan(layouts.Modality(instances_dir, inst_sfx, recursive))
        missing = sorted(s for s in labels if s not in instances)
        if missing:
            shown = ", ".join(labels[s] for s in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"{len(missing)} label file(s) have no instance file with the same stem in "
                f"{instances_dir} (expected <stem>{inst_sfx[0]}): {shown}{more}"
            )
    return [(s, labels[s], instances.get(s)) for s in sorted(labels)]


def read_label_example(config, label_path: str, instance_path: str | None):
    """(label, instance) int32 (H, W) at config.dataset.image_size, as the pipeline reads them."""
    from ecgan_jax.data import transforms as tf

    spec = tf.DataSpec.from_config(config)
    size = tuple(int(v) for v in config.dataset.image_size)
    raw = tf.int_map(tf.open_image(label_path, label_path), "label", label_path)
    label = tf.resize_nearest(tf.map_and_check_labels(raw, spec, label_path), size)
    if instance_path is None:
        return label, np.zeros(size, np.int32)
    inst = tf.int_map(tf.open_image(instance_path, instance_path), "instance", instance_path)
    return label, tf.resize_nearest(inst, size)


# --------------------------------------------------------------------------- outputs


def output_paths(files, out_dir: str, *, save_first: bool, save_edge: bool) -> list[str]:
    """Every file `generate_directory` writes, in order; a name written twice is an error."""
    paths, owner = [], {}
    for stem, label, _ in files:
        names = [f"{stem}.png"]
        names += [f"{stem}_first.png"] * save_first + [f"{stem}_edge.png"] * save_edge
        for name in names:
            if name in owner:
                raise outputs.OutputError(
                    f"{out_dir}/{name} would be written for both {owner[name]} and {label}; "
                    "rename one of them or leave out --save_first / --save_edge"
                )
            owner[name] = label
            paths.append(os.path.join(out_dir, name))
    return paths


def check_outputs(
    files, out_dir: str, *, save_first=False, save_edge=False, overwrite=False, inputs=None
) -> list[str]:
    """Output paths of `generate_directory`, after refusing unsafe ones (`cli/outputs.py`).

    The folders of every label and instance file are inputs, plus `inputs` ({name: (path,
    "dir" | "file")}: the dataset root, the checkpoint).
    """
    folders = {}
    for _, label, inst in files:
        folders.setdefault(os.path.dirname(os.path.abspath(label)), "label maps")
        if inst is not None:
            folders.setdefault(os.path.dirname(os.path.abspath(inst)), "instance maps")
    all_inputs = {f"the {what} folder": (d, "dir") for d, what in folders.items()}
    all_inputs.update(inputs or {})
    outputs.check_not_inputs({"--out": (out_dir, "dir")}, all_inputs)
    paths = output_paths(files, out_dir, save_first=save_first, save_edge=save_edge)
    outputs.check_absent(paths, overwrite=overwrite)
    return paths


def generate_directory(
    config,
    generator,
    variables,
    files,
    out_dir: str,
    *,
    batch_size: int = 8,
    mesh=None,
    save_first: bool = False,
    save_edge: bool = False,
    overwrite: bool = False,
    inputs=None,
) -> list[str]:
    """Runs the generator over `list_label_files` output and writes PNGs; returns I″ paths.

    Output checks (`check_outputs`) run before any compute; each PNG is written atomically.
    """
    from ecgan_jax import inference

    check_outputs(
        files,
        out_dir,
        save_first=save_first,
        save_edge=save_edge,
        overwrite=overwrite,
        inputs=inputs,
    )
    mesh = local_mesh(1) if mesh is None else mesh
    batch_size = cli_flags.batch_for_mesh(batch_size, mesh)
    fn = inference.make_generate_fn(generator, config, mesh)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for start in range(0, len(files), batch_size):
        part = files[start : start + batch_size]
        pairs = [read_label_example(config, lab, inst) for _, lab, inst in part]
        labels = np.stack([p[0] for p in pairs])
        instances = np.stack([p[1] for p in pairs])
        outs = next(
            inference.generate_batches(
                generator,
                variables,
                config,
                labels,
                instances,
                batch_size=batch_size,
                generate_fn=fn,
            )
        )
        first, final, edge = (inference.to_uint8(o) for o in outs)
        for i, (stem, _, _) in enumerate(part):
            path = os.path.join(out_dir, f"{stem}.png")
            outputs.save_png(path, final[i])
            written.append(path)
            if save_first:
                outputs.save_png(os.path.join(out_dir, f"{stem}_first.png"), first[i])
            if save_edge:
                outputs.save_png(os.path.join(out_dir, f"{stem}_edge.png"), edge[i])
    return written


# --------------------------------------------------------------------------- command


def generate(fv: flags.FlagValues) -> list[str]:
    """The command on parsed flags; returns the paths of the I″ images written."""
    config = cli_flags.load_config(fv)
    cli_flags.require(fv, "labels", "out")
    cli_flags.require_checkpoint(fv)
    files = list_label_files(config, fv.labels, fv.instances)
    inputs = {"the checkpoint": (cli_flags.checkpoint_folder(fv), "dir")}
    if config.dataset.root:
        inputs["dataset.root"] = (str(config.dataset.root), "dir")
    # Every check before the generator is restored and compiled.
    check_outputs(
        files,
        fv.out,
        save_first=fv.save_first,
        save_edge=fv.save_edge,
        overwrite=fv.overwrite,
        inputs=inputs,
    )
    loaded = cli_flags.restore_generator(fv, config)
    mesh, batch_size = cli_flags.mesh_and_batch(fv)
    written = generate_directory(
        config,
        loaded.module,
        loaded.variables,
        files,
        fv.out,
        batch_size=batch_size,
        mesh=mesh,
        save_first=fv.save_first,
        save_edge=fv.save_edge,
        overwrite=fv.overwrite,
        inputs=inputs,
    )
    step = loaded.checkpoint.step
    print(
        f"wrote {len(written)} images to {fv.out} ({loaded.params} generator parameters"
        f"{'' if step is None else f' of step {step}'} from {loaded.checkpoint.path})",
        file=sys.stderr,
    )
    return written


def main(argv: Sequence[str]) -> list[str]:
    """`generate` in-process: `main(["--config=...", "--labels=...", ...])` (argv[0] optional)."""
    return generate(cli_flags.parse(argv, define_flags))


def run() -> None:
    """`python -m ecgan_jax.generate`."""
    cli_flags.run(generate, define_flags, __doc__)


if __name__ == "__main__":
    run()
