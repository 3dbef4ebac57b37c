"""FID and mIoU / pixel accuracy of a trained generator on the validation split (§5, §D.5).

    python -m ecgan_jax.evaluate --config=configs/cityscapes.py --workdir=runs/cityscapes \
        --fid_weights=weights/inception_fid.npz [--fid_stats=stats/cityscapes_val.npz] \
        [--save_real_stats=stats/cityscapes_val.npz] [--segmenter_weights=weights/drn.npz] \
        [--out=DIR] [--max_images=N] [--checkpoint=STEP_OR_DIR] [--raw] [--save_images] \
        [--batch_size=8] [--num_devices=-1] [--config.dataset.root=/data/cityscapes ...]

Protocol (§D.5; written next to the numbers in `<out>/metrics.json`):
* the generator's final output I″ of every image of `config.dataset.eval_split` (or the first
  `--max_images`), made from the label (+ instance) maps at `config.dataset.image_size`, EMA
  parameters unless `--raw`; quantised to uint8 as saved PNGs;
* FID: pytorch-fid's InceptionV3 (pool3, 2048-d; weights from `--fid_weights`, converted by
  `python -m ecgan_jax.eval.inception`), bilinear resize to 299, float64 Fréchet distance,
  against the real validation images at the same resolution (or `--fid_stats`);
* mIoU / accuracy (with `--segmenter_weights`): DRN-D-105 (fyu/drn, converted by
  `python -m ecgan_jax.eval.drn`) on I″ at the generated resolution; labels resized by nearest
  (the eval pipeline), Cityscapes labelIds mapped to the 19 train ids, ignore (255) excluded
  from every score; mIoU over the classes present in the ground truth or the prediction.
`<out>/fake_stats.npz` holds the statistics of the generated images (pytorch-fid format).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

from ecgan_jax.cli.generate import add_checkpoint_flags, batch_for_mesh, load_cli_config

LABEL_MAPPINGS = ("auto", "cityscapes_train_id", "identity")
FID_NETWORK = (
    "pytorch-fid InceptionV3 (TF 2015-12-05 graph), pool3 2048-d features, bilinear resize to "
    "299x299 (PyTorch rule, align_corners=False), inputs uint8 mapped to [-1, 1]"
)


def _label_mapping(name: str, config):
    """(callable, description) for the segmenter's ground truth."""
    from ecgan_jax import inference
    from ecgan_jax.eval.segmentation import cityscapes_label_to_train_id

    if name == "auto":
        name = "cityscapes_train_id" if config.dataset.name == "cityscapes" else "identity"
    if name == "cityscapes_train_id":
        return cityscapes_label_to_train_id, (
            "Cityscapes labelIds -> 19 trainIds (cityscapesScripts), others ignored (255)"
        )
    return inference.identity_labels, "identity (label values used as class ids; 255 ignored)"


def _abspath(path):
    return None if not path else os.path.abspath(path)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m ecgan_jax.evaluate",
        description="FID (and mIoU/accuracy) of a generator on the validation split.",
        epilog="Config overrides: --config.FIELD=VALUE (e.g. --config.dataset.root=/data/x).",
    )
    add_checkpoint_flags(parser)
    parser.add_argument(
        "--fid_weights",
        required=True,
        help="FID InceptionV3 .npz (python -m ecgan_jax.eval.inception)",
    )
    parser.add_argument("--fid_stats", default=None, help="real statistics .npz (mu, sigma)")
    parser.add_argument(
        "--save_real_stats", default=None, help="write the real images' statistics here"
    )
    parser.add_argument(
        "--segmenter_weights", default=None, help="DRN-D-105 .npz (python -m ecgan_jax.eval.drn)"
    )
    parser.add_argument("--segmenter_classes", type=int, default=19)
    parser.add_argument("--label_mapping", choices=LABEL_MAPPINGS, default="auto")
    parser.add_argument(
        "--out", default=None, help="output folder (default: <workdir>/eval for a training workdir)"
    )
    parser.add_argument("--max_images", type=int, default=0, help="first N images (0: all)")
    parser.add_argument("--save_images", action="store_true", help="write I'' to <out>/images")
    args, rest = parser.parse_known_args(argv)
    config = load_cli_config(args.config, rest)
    if args.workdir is None and args.checkpoint is None:
        parser.error("give --workdir and/or --checkpoint")
    if args.fid_stats and args.save_real_stats:
        parser.error("--save_real_stats needs the real images: leave out --fid_stats")
    out = args.out
    if out is None:
        from ecgan_jax.inference import is_converted_checkpoint

        if args.workdir is None or is_converted_checkpoint(args.workdir):
            parser.error("--out is needed unless --workdir is a training workdir")
        out = os.path.join(args.workdir, "eval")

    from ecgan_jax import inference
    from ecgan_jax.eval import fid as fid_lib
    from ecgan_jax.eval.inception import load_inception

    # Every input file first, so a missing one fails before any compute.
    inception = load_inception(args.fid_weights)
    real_stats = fid_lib.load_statistics(args.fid_stats) if args.fid_stats else None
    segmenter = seg_protocol = mapping = None
    if args.segmenter_weights:
        from ecgan_jax.eval.drn import drn_segmenter, load_drn

        segmenter = drn_segmenter(
            load_drn(args.segmenter_weights, args.segmenter_classes),
            num_classes=args.segmenter_classes,
        )
        mapping, mapping_text = _label_mapping(args.label_mapping, config)
        h, w = (int(v) for v in config.dataset.image_size)
        if h % 8 or w % 8:
            raise ValueError(f"DRN-D-105 needs H and W multiples of 8; image_size is {(h, w)}")
        seg_protocol = {
            "network": "DRN-D-105 (fyu/drn DRNSeg, single scale, Cityscapes mean/std)",
            "weights": os.path.abspath(args.segmenter_weights),
            "num_classes": args.segmenter_classes,
            "label_mapping": mapping_text,
            "labels": "nearest-resized to the generated resolution",
            "ignore_label": 255,
            "accuracy": "pixel accuracy over non-ignored pixels",
            "miou": "mean IoU over classes present in the ground truth or the prediction",
        }
        if config.dataset.name != "cityscapes":
            seg_protocol["note"] = (
                f"DRN-D-105 is the Cityscapes segmenter; on {config.dataset.name!r} these "
                "numbers are not the conventional protocol (§5: UperNet for ADE20K, DeepLab-v2 "
                "for COCO-Stuff)"
            )
            logging.warning("%s", seg_protocol["note"])

    loaded = inference.restore_generator(
        config, workdir=args.workdir, checkpoint=args.checkpoint, use_ema=not args.raw
    )
    mesh = inference.make_mesh(args.num_devices)
    batch_size = batch_for_mesh(args.batch_size, mesh)
    os.makedirs(out, exist_ok=True)
    callback = None
    if args.save_images:
        from PIL import Image

        image_dir = os.path.join(out, "images")
        os.makedirs(image_dir, exist_ok=True)

        def callback(stems, images):
            for stem, img in zip(stems, images, strict=True):
                Image.fromarray(img).save(os.path.join(image_dir, f"{stem}.png"))

    result = inference.evaluate_generator(
        config,
        loaded.module,
        loaded.variables,
        max_images=args.max_images,
        inception_variables=inception,
        real_stats=real_stats,
        segmenter=segmenter,
        label_mapping=mapping or inference.identity_labels,
        batch_size=batch_size,
        mesh=mesh,
        image_callback=callback,
    )
    fid_lib.save_statistics(os.path.join(out, "fake_stats.npz"), *result["fake_stats"])
    if args.save_real_stats:
        fid_lib.save_statistics(args.save_real_stats, *result["real_stats"])

    metrics = {"fid": result["fid"]}
    seg = result.get("segmentation")
    if seg is not None:
        metrics.update(
            miou=seg["miou"],
            pixel_accuracy=seg["pixel_accuracy"],
            mean_class_accuracy=seg["mean_class_accuracy"],
            per_class_iou=[float(v) for v in seg["per_class_iou"]],
            class_present=[bool(v) for v in seg["class_present"]],
        )
    ref = loaded.checkpoint
    protocol = {
        "output": "I'' (the generator's final image), quantised to uint8 as saved PNGs",
        "parameters": loaded.params,
        "checkpoint": {"kind": ref.kind, "path": ref.path, "step": ref.step},
        "config": args.config,
        "dataset": str(config.dataset.name),
        "split": str(config.dataset.eval_split),
        "num_images": result["num_images"],
        "max_images": args.max_images or None,
        "resolution": result["resolution"],
        "fid": {
            "network": FID_NETWORK,
            "weights": os.path.abspath(args.fid_weights),
            "reference": (
                f"statistics file {os.path.abspath(args.fid_stats)}"
                if args.fid_stats
                else f"the same {result['num_images']} real {config.dataset.eval_split} images "
                "at the generated resolution (uint8)"
            ),
            "distance": "Frechet distance in float64 (scipy sqrtm), pytorch-fid's rules",
            "fake_stats": os.path.abspath(os.path.join(out, "fake_stats.npz")),
            "real_stats": _abspath(args.save_real_stats or args.fid_stats),
        },
        "segmentation": seg_protocol,
    }
    report = {"metrics": metrics, "protocol": protocol}
    path = os.path.join(out, "metrics.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    step = "" if ref.step is None else f" step {ref.step}"
    line = (
        f"FID {_fmt(metrics['fid'])}"
        + (
            f"  mIoU {_fmt(metrics['miou'])}  acc {_fmt(metrics['pixel_accuracy'])}"
            if seg is not None
            else ""
        )
        + f"  ({result['num_images']} images, {loaded.params} params{step}, "
        f"{result['resolution'][0]}x{result['resolution'][1]}, I''); written {path}"
    )
    print(line)
    return report


def run() -> None:
    logging.basicConfig(level=logging.INFO)
    main()


if __name__ == "__main__":
    run()
