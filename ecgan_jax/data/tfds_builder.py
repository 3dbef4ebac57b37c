"""TFDS builder for pods: every dataset as array_record files readable by `tfds.data_source`.

The builder `ecgan_dataset` prepares one dataset (builder config `cityscapes`, `ade20k`,
`coco_stuff` or `custom`) from its manual directory, which is the dataset root in the layout
of `layouts.py` (data/README.md). Each record holds, for one stem:

    stem      text
    image     the original image file's bytes (JPEG/PNG, not re-encoded)
    label     the original label PNG's bytes
    instance  the original instance PNG's bytes (b"" where the dataset has none)
    edge      PNG bytes of the Canny map made by `transforms.edge_map` at the config's
              pre-crop size (image_size; load_size^2 for a resize_and_crop training split)

The pipeline decodes these bytes with the same code as the `files` source, so both sources give
identical batches. Prepare once, copy the data_dir to GCS, then train with
`dataset.source = "tfds"`, `dataset.root = <data_dir>` (e.g. gs://bucket/tfds),
`dataset.tfds_name = "ecgan_dataset/<config>"`:

    python -m ecgan_jax.data.tfds_builder --config=cityscapes --manual_dir=/data/cityscapes \
        --data_dir=/data/tfds

A builder config with other sizes or splits: `EcganBuilderConfig(name=..., dataset=...,
splits=..., image_size=..., ...)` passed as `EcganDataset(config=..., data_dir=...)`.
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


@dataclasses.dataclass(eq=False)
class EcganBuilderConfig(tfds.core.BuilderConfig):
    dataset: str = "custom"
    splits: tuple[str, ...] = ("train", "val")
    train_split: str = "train"
    image_size: tuple[int, int] = (256, 256)
    preprocess: str = "fixed"
    load_size: int = 286


BUILDER_CONFIGS = [
    EcganBuilderConfig(
        name="cityscapes",
        description="Cityscapes gtFine, edges at 256x512",
        dataset="cityscapes",
        image_size=(256, 512),
    ),
    EcganBuilderConfig(
        name="ade20k",
        description="ADEChallengeData2016, edges at 286x286 (training) / 256x256 (validation)",
        dataset="ade20k",
        splits=("training", "validation"),
        train_split="training",
        preprocess="resize_and_crop",
    ),
    EcganBuilderConfig(
        name="coco_stuff",
        description="COCO-Stuff, edges at 286x286 (train) / 256x256 (val)",
        dataset="coco_stuff",
        preprocess="resize_and_crop",
    ),
    EcganBuilderConfig(
        name="custom", description="custom layout, edges at 256x256", dataset="custom"
    ),
]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class EcganDataset(tfds.core.GeneratorBasedBuilder):
    """ECGAN datasets (label, instance, image, edge per stem) from a manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw image/label/instance bytes plus precomputed Canny edges."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the dataset in its directory layout (data/README.md) and pass that root as the "
        "manual_dir: Cityscapes leftImg8bit/ + gtFine/, ADEChallengeData2016 images/ + "
        "annotations/, COCO-Stuff {train,val}_{img,label,inst}/, custom <split>/{images,labels}."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        data = tfds.features.Tensor(shape=(), dtype=np.object_)
        return tfds.core.DatasetInfo(
            builder=self,
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
            image_bytes = open(ex.image, "rb").read()
            image = transforms.open_image(image_bytes, ex.image)
            instance = open(ex.instance, "rb").read() if ex.instance else b""
            yield (
                ex.stem,
                {
                    "stem": ex.stem,
                    "image": image_bytes,
                    "label": open(ex.label, "rb").read(),
                    "instance": instance,
                    "edge": _png(transforms.edge_map(image, size)),
                },
            )


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
