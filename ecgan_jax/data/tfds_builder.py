"""TFDS builder for pods: every dataset as array_record files readable by `tfds.data_source`.

The builder `ecgan_dataset` prepares one dataset (builder config `cityscapes`, `ade20k`,
`coco_stuff` or `custom`) from its manual directory, which is the dataset root in the layout
of `layouts.py` (data/README.md). Each record holds, for one stem, at the config's pre-crop
size (`transforms.edge_size`: image_size; load_size^2 for a resize_and_crop training split):

    stem      text
    image     PNG bytes of the RGB image resized BICUBIC (`transforms.resize_bicubic`)
    label     PNG bytes of the raw label ids resized NEAREST (`transforms.resize_nearest`),
              8-bit for an 8-bit (L/P) file, else 16-bit
    instance  the same for the instance ids (b"" where the dataset has none)
    edge      PNG bytes of the Canny map of the resized image (= `transforms.edge_map`)

These are the pipeline's own resizes, done once: reading a record, its resize to the pre-crop
size is an identity (`resize_bicubic` / `resize_nearest` return a same-size input unchanged),
so training decodes small PNGs and resizes nothing. With `stored="original"` (builder config)
image, label and instance hold the original files' bytes instead (JPEG/PNG, not re-encoded)
and the pipeline resizes them on every read (BENCHMARKS.md "Input pipeline" for the speed).
Either way the pipeline decodes the bytes with the same code as the `files` source, so both
sources give identical batches, provided the training config's image_size, preprocess and
load_size are the builder config's. Resized images are re-encoded as lossless PNG, which is
larger on disk than a JPEG original at the same size but much smaller than a full-size
Cityscapes PNG. Prepare once, copy the data_dir to GCS, then train with
`dataset.source = "tfds"`, `dataset.root = <data_dir>` (e.g. gs://bucket/tfds),
`dataset.tfds_name = "ecgan_dataset/<config>"`:

    python -m ecgan_jax.data.tfds_builder --config=cityscapes --manual_dir=/data/cityscapes \
        --data_dir=/data/tfds

A builder config with other sizes or splits: `EcganBuilderConfig(name=..., dataset=...,
splits=..., image_size=..., ..., stored="resized" | "original")` passed as
`EcganDataset(config=..., data_dir=...)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ecgan_jax.data import layouts, transforms

STORED = ("resized", "original")


@dataclasses.dataclass(eq=False)
class EcganBuilderConfig(tfds.core.BuilderConfig):
    dataset: str = "custom"
    splits: tuple[str, ...] = ("train", "val")
    train_split: str = "train"
    image_size: tuple[int, int] = (256, 256)
    preprocess: str = "fixed"
    load_size: int = 286
    stored: str = "resized"

    def __post_init__(self):
        if self.stored not in STORED:
            raise ValueError(
                f"EcganBuilderConfig field 'stored' = {self.stored!r} is invalid; allowed: "
                + ", ".join(STORED)
            )


BUILDER_CONFIGS = [
    EcganBuilderConfig(
        name="cityscapes",
        description="Cityscapes gtFine at 256x512",
        dataset="cityscapes",
        image_size=(256, 512),
    ),
    EcganBuilderConfig(
        name="ade20k",
        description="ADEChallengeData2016 at 286x286 (training) / 256x256 (validation)",
        dataset="ade20k",
        splits=("training", "validation"),
        train_split="training",
        preprocess="resize_and_crop",
    ),
    EcganBuilderConfig(
        name="coco_stuff",
        description="COCO-Stuff at 286x286 (train) / 256x256 (val)",
        dataset="coco_stuff",
        preprocess="resize_and_crop",
    ),
    EcganBuilderConfig(name="custom", description="custom layout at 256x256", dataset="custom"),
]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _read(path: str | None) -> bytes:
    if not path:
        return b""
    with open(path, "rb") as f:
        return f.read()


def _int_png(img: Image.Image, kind: str, origin: str, size: tuple[int, int]) -> bytes:
    """A label / instance image resized NEAREST to `size`, as a PNG whose decoded values are the
    pipeline's `resize_nearest(int_map(file))`: 8-bit for an 8-bit file, 16-bit otherwise."""
    ids = transforms.resize_nearest(transforms.int_map(img, kind, origin), size)
    if ids.size and (ids.min() < 0 or ids.max() >= 2**16):
        raise ValueError(
            f"{origin}: {kind} values {ids.min()}..{ids.max()} do not fit a 16-bit PNG "
            "(0..65535); build with EcganBuilderConfig(stored='original')"
        )
    return _png(ids.astype(np.uint8 if img.mode in ("L", "P") else np.uint16))


def _original_record(ex: layouts.ExamplePaths, size: tuple[int, int]) -> dict:
    """`stored="original"`: the files' bytes, and the edges at the pre-crop size `size`."""
    image = _read(ex.image)
    return {
        "image": image,
        "label": _read(ex.label),
        "instance": _read(ex.instance),
        "edge": _png(transforms.edge_map(transforms.open_image(image, ex.image), size)),
    }


def _resized_record(ex: layouts.ExamplePaths, size: tuple[int, int]) -> dict:
    """`stored="resized"`: every modality at the pre-crop size `size` (module doc), made with
    the pipeline's own decode and resize functions.

    Label and instance must have the image's (H, W), as `transforms.decode_record` demands; that
    is checked here, before the resize would hide a mismatch."""
    image = transforms.open_image(_read(ex.image), ex.image)
    if image.mode != "RGB":  # as decode_record does before any resize
        image = image.convert("RGB")
    hw = (image.size[1], image.size[0])
    maps, problems = {}, []
    for kind, path in (("label", ex.label), ("instance", ex.instance)):
        if not path:
            continue
        maps[kind] = img = transforms.open_image(_read(path), path)
        if (img.size[1], img.size[0]) != hw:
            problems.append(
                layouts.Problem(
                    path,
                    f"{kind} map of (H, W) = {(img.size[1], img.size[0])}",
                    f"the (H, W) of its image {ex.image}: {hw}",
                )  # fmt: skip
            )
    if problems:
        raise layouts.DatasetError("; ".join(str(p) for p in problems), problems)
    small = transforms.resize_bicubic(image, size)
    instance = maps.get("instance")
    return {
        "image": _png(np.asarray(small, np.uint8)),
        "label": _int_png(maps["label"], "label", ex.label, size),
        "instance": b"" if instance is None else _int_png(instance, "instance", ex.instance, size),
        "edge": _png(transforms.edge_map(small, size)),  # its resize is an identity here
    }


class EcganDataset(tfds.core.GeneratorBasedBuilder):
    """ECGAN datasets (label, instance, image, edge per stem) from a manual directory."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Raw image/label/instance bytes plus precomputed Canny edges.",
        "1.1.0": "Image/label/instance stored resized to the pre-crop size as PNG (config "
        "field stored='resized', the default); stored='original' keeps 1.0.0's file bytes.",
    }
    BUILDER_CONFIGS = BUILDER_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the dataset in its directory layout (data/README.md) and pass that root as the "
        "manual_dir: Cityscapes leftImg8bit/ + gtFine/, ADEChallengeData2016 images/ + "
        "annotations/, COCO-Stuff {train,val}_{img,label,inst}/, custom <split>/{images,labels}."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        data = tfds.features.Tensor(shape=(), dtype=np.object_)
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            # What the records were made for (metadata.json): the reader refuses to resize
            # records stored resized to other sizes (`sources.check_stored_sizes`).
            metadata=tfds.core.MetadataDict(
                stored=c.stored,
                image_size=[int(v) for v in c.image_size],
                preprocess=c.preprocess,
                load_size=int(c.load_size),
                train_split=c.train_split,
            ),
            description="ECGAN semantic image synthesis data: "
            + (self.builder_config.description or self.builder_config.dataset),
            features=tfds.features.FeaturesDict(
                {
                    "stem": tfds.features.Text(),
                    "image": data,
                    "label": data,
                    "instance": data,
                    "edge": data,
                }
            ),
        )

    def _split_generators(self, dl_manager):
        root = str(dl_manager.manual_dir)
        return {s: self._generate_examples(root, s) for s in self.builder_config.splits}

    def _generate_examples(self, root: str, split: str):
        c = self.builder_config
        spec = transforms.DataSpec(
            name=c.dataset,
            image_size=tuple(c.image_size),
            preprocess=c.preprocess,
            load_size=c.load_size,
        )
        size = transforms.edge_size(spec, train=split == c.train_split)
        for ex in layouts.list_examples(c.dataset, root, split):
            make = _original_record if c.stored == "original" else _resized_record
            record = make(ex, size)
            yield ex.stem, {"stem": ex.stem, **record}


def prepare(config_name, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds `config_name` (a name or an `EcganBuilderConfig`) into `data_dir`."""
    builder = EcganDataset(config=config_name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecgan_jax.data.tfds_builder")
    p.add_argument("--config", required=True, choices=[c.name for c in BUILDER_CONFIGS])
    p.add_argument("--manual_dir", required=True, help="the dataset root (its layout)")
    p.add_argument("--data_dir", required=True, help="TFDS data_dir to write (local or gs://)")
    a = p.parse_args(argv)
    builder = prepare(a.config, a.manual_dir, a.data_dir)
    print(f"prepared {builder.info.full_name} in {a.data_dir}: {dict(builder.info.splits)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
