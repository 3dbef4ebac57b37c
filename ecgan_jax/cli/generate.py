"""Generate images from label maps with a trained (or converted) generator.

    python -m ecgan_jax.generate --config=configs/cityscapes.py --workdir=runs/cityscapes \
        --labels=DIR [--instances=DIR] --out=DIR [--checkpoint=STEP_OR_DIR] \
        [--save_first] [--save_edge] [--raw] [--batch_size=8] [--num_devices=-1] \
        [--config.model.dtype=bfloat16 ...]

Every label file in `--labels` (`<stem>.png`; Cityscapes `<stem>_gtFine_labelIds.png`, found in
city subfolders too) is read like the data pipeline reads it (`data.transforms`: raw values,
the dataset's 255 -> unknown mapping, values checked against label_nc with the file named),
resized to `config.dataset.image_size` by nearest neighbour, and paired by stem with an
instance file in `--instances` (`<stem>.png`; Cityscapes `<stem>_gtFine_instanceIds.png`,
default: the labels folder) when the config uses instances. The generator runs batched in eval
mode; I″ is written as `<out>/<stem>.png` (optionally I′ as `<stem>_first.png` and I′_e as
`<stem>_edge.png`), as uint8 with `quality.to_uint8`. Weights: `inference.load_generator` (EMA
of the latest checkpoint of `--workdir` unless `--raw` / `--checkpoint`; or a directory made by
`python -m ecgan_jax.convert`).
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from ecgan_jax import config_lib

# --------------------------------------------------------------------------- config flags


def _parse_value(text: str, current):
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    value = ast.literal_eval(text)
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(config, overrides: Sequence[str]):
    """Applies `--config.a.b=value` arguments (value parsed like the field's current type)."""
    for arg in overrides:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ValueError(f"unrecognised argument {arg!r} (config overrides: --config.a.b=v)")
        key, _, text = arg[len("--config.") :].partition("=")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            if p not in node:
                raise ValueError(f"{arg}: config has no field {p!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"{arg}: config has no field {key!r}")
        try:
            value = _parse_value(text, node[leaf])
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{arg}: cannot parse {text!r} for field {key!r}: {e}") from e
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"{arg}: {e}") from e
    return config_lib.validate_config(config)


def load_cli_config(spec: str, overrides: Sequence[str] = ()):
    """`config_lib.load_config(spec)` plus `--config.x=y` overrides."""
    return apply_overrides(config_lib.load_config(spec), overrides)


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file[:variant] of the run")
    parser.add_argument(
        "--workdir",
        default=None,
        help="training workdir (its checkpoints/), or a converted checkpoint directory",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a step of --workdir, or a checkpoint directory (step dir, or converted)",
    )
    parser.add_argument(
        "--raw", action="store_true", help="use the raw generator parameters, not the EMA"
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per generator call")
    parser.add_argument(
        "--num_devices", type=int, default=-1, help="local devices to shard over (-1: all)"
    )


def batch_for_mesh(batch_size: int, mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh size."""
    n = mesh.devices.size
    return max(n, -(-int(batch_size) // n) * n)


# --------------------------------------------------------------------------- label files


def _layout_suffixes(name: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(label suffixes, instance suffixes, recursive) of the dataset's label files."""
    from ecgan_jax.data import layouts

    if name in layouts.FILE_DATASETS:
        mods = layouts.modalities(name, "", "")
        inst = mods.get("instance", mods["label"])
        return mods["label"].suffixes, inst.suffixes, mods["label"].recursive
    return (".png",), (".png",), False


def list_label_files(config, labels_dir: str, instances_dir: str | None = None):
    """[(stem, label path, instance path or None)] sorted by stem, paired by stem."""
    from ecgan_jax.data import layouts

    uses_instances = not bool(config.dataset.no_instance)
    label_sfx, inst_sfx, recursive = _layout_suffixes(str(config.dataset.name))
    if not os.path.isdir(labels_dir):
        raise FileNotFoundError(f"label directory not found: {labels_dir}")
    labels = layouts.scan(layouts.Modality(labels_dir, label_sfx, recursive))
    if not labels:
        raise ValueError(f"no label files ending in {'/'.join(label_sfx)} in {labels_dir}")
    instances = {}
    if uses_instances:
        if instances_dir is None:
            if config.dataset.name != "cityscapes":
                raise ValueError(
                    "this config uses instance maps (dataset.no_instance=False): pass "
                    f"--instances=DIR holding <stem>{inst_sfx[0]} for every label file"
                )
            instances_dir = labels_dir  # gtFine keeps labelIds and instanceIds side by side
        if not os.path.isdir(instances_dir):
            raise FileNotFoundError(f"instance directory not found: {instances_dir}")
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


# --------------------------------------------------------------------------- main


def _save_png(path: str, image_u8: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image_u8).save(path)


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
) -> list[str]:
    """Runs the generator over `list_label_files` output and writes PNGs; returns I″ paths."""
    from ecgan_jax import inference

    mesh = inference.make_mesh(1) if mesh is None else mesh
    batch_size = batch_for_mesh(batch_size, mesh)
    fn = inference.make_generate_fn(generator, config, mesh)
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def chunks():
        for start in range(0, len(files), batch_size):
            part = files[start : start + batch_size]
            pairs = [read_label_example(config, lab, inst) for _, lab, inst in part]
            yield (
                [s for s, _, _ in part],
                np.stack([p[0] for p in pairs]),
                np.stack([p[1] for p in pairs]),
            )

    for stems, labels, instances in chunks():
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
        for i, stem in enumerate(stems):
            path = os.path.join(out_dir, f"{stem}.png")
            _save_png(path, final[i])
            written.append(path)
            if save_first:
                _save_png(os.path.join(out_dir, f"{stem}_first.png"), first[i])
            if save_edge:
                _save_png(os.path.join(out_dir, f"{stem}_edge.png"), edge[i])
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ecgan_jax.generate",
        description="Write generated images (I'') for a folder of label maps.",
        epilog="Config overrides: --config.FIELD=VALUE (e.g. --config.model.dtype=bfloat16).",
    )
    add_checkpoint_flags(parser)
    parser.add_argument("--labels", required=True, help="folder of label PNGs")
    parser.add_argument("--instances", default=None, help="folder of instance PNGs (by stem)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--save_first", action="store_true", help="also write I' (_first)")
    parser.add_argument("--save_edge", action="store_true", help="also write I'_e (_edge)")
    args, rest = parser.parse_known_args(argv)
    config = load_cli_config(args.config, rest)
    if args.workdir is None and args.checkpoint is None:
        parser.error("give --workdir and/or --checkpoint")

    from ecgan_jax import inference

    files = list_label_files(config, args.labels, args.instances)
    loaded = inference.restore_generator(
        config, workdir=args.workdir, checkpoint=args.checkpoint, use_ema=not args.raw
    )
    mesh = inference.make_mesh(args.num_devices)
    written = generate_directory(
        config,
        loaded.module,
        loaded.variables,
        files,
        args.out,
        batch_size=args.batch_size,
        mesh=mesh,
        save_first=args.save_first,
        save_edge=args.save_edge,
    )
    step = loaded.checkpoint.step
    print(
        f"wrote {len(written)} images to {args.out} ({loaded.params} generator parameters"
        f"{'' if step is None else f' of step {step}'} from {loaded.checkpoint.path})",
        file=sys.stderr,
    )


def run() -> None:
    logging.basicConfig(level=logging.INFO)
    main()


if __name__ == "__main__":
    run()
