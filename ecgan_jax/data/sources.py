"""Random-access sources of raw records for grain: directory trees, TFDS, synthetic scenes.

Every source returns the same raw record (see `transforms.ExampleTransform`): `stem`, `origin`
({modality: file path or TFDS record, for error messages}), `image`, `label`, `instance`,
`edge` (encoded bytes, arrays or None). So the grain pipeline is one code path for all sources:
`make_source(config, split=..., train=...)` picks the source from `config.dataset`.
"""

from __future__ import annotations

import numpy as np

from ecgan_jax.data import layouts
from ecgan_jax.data.synthetic import SyntheticSource

TFDS_BUILDER_NAME = "ecgan_dataset"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read file {path}: {e}") from e


class FileSource:
    """The examples of one split of a directory layout (`layouts.py`), paired by stem.

    Listing and pairing happen in the constructor, so a missing/extra file or an empty split
    fails before training starts. `need_instances`: see `layouts.find_examples` (`make_source`
    passes `not dataset.no_instance`, so a config that uses instance maps never trains on zeros).
    """

    def __init__(
        self,
        name: str,
        root: str,
        split: str,
        *,
        need_edges: bool = False,
        need_instances: bool | None = None,
    ):
        if not root:
            raise ValueError(
                f"config field 'dataset.root' is empty; set it to the {name} root directory"
            )
        self.name, self.root, self.split = name, root, split
        self.examples = layouts.list_examples(
            name, root, split, need_edges=need_edges, need_instances=need_instances
        )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[int(index)]
        origin = {"image": ex.image, "label": ex.label}
        record = {
            "stem": ex.stem,
            "image": _read_bytes(ex.image),
            "label": _read_bytes(ex.label),
            "instance": None,
            "edge": None,
        }
        for kind in ("instance", "edge"):
            path = getattr(ex, kind)
            if path is not None:
                origin[kind] = path
                record[kind] = _read_bytes(path)
        record["origin"] = origin
        return record

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, root={self.root!r}, split={self.split!r})"


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


class TfdsSource:
    """One split of a dataset prepared by `tfds_builder.EcganDataset` (array_record files),
    read with `tfds.data_source` from `data_dir` (a local path or gs://...)."""

    def __init__(self, tfds_name: str, split: str, data_dir: str | None):
        import tensorflow_datasets as tfds

        from ecgan_jax.data import tfds_builder  # noqa: F401  (registers the builder)

        self.tfds_name, self.split, self.data_dir = tfds_name, split, data_dir or None
        try:
            self.source = tfds.data_source(
                tfds_name, split=split, data_dir=self.data_dir, download=False
            )
        except Exception as e:
            raise ValueError(
                f"cannot open TFDS dataset {tfds_name!r} split {split!r} in data_dir "
                f"{self.data_dir!r} (config fields dataset.tfds_name / dataset.root): {e}"
            ) from e
        if len(self.source) == 0:
            raise ValueError(f"TFDS dataset {tfds_name!r} split {split!r} is empty")

    def __len__(self) -> int:
        return len(self.source)

    def built_for(self) -> dict | None:
        """The builder's record of what it stored (`stored`, `image_size`, `preprocess`,
        `load_size`, `train_split`), or None for data prepared before builder 1.1.0."""
        info = getattr(self.source, "dataset_info", None)
        meta = getattr(info, "metadata", None)
        return dict(meta) if meta and "stored" in meta else None

    def __getitem__(self, index: int) -> dict:
        r = self.source[int(index)]
        stem = _text(r["stem"])
        where = f"TFDS {self.tfds_name}[{self.split}] record {int(index)} (stem {stem!r})"
        instance = bytes(r["instance"])
        return {
            "stem": stem,
            "origin": {k: f"{k} of {where}" for k in ("image", "label", "instance", "edge")},
            "image": bytes(r["image"]),
            "label": bytes(r["label"]),
            "instance": instance if instance else None,
            "edge": bytes(r["edge"]),
        }

    def __repr__(self) -> str:
        return f"TfdsSource({self.tfds_name!r}, split={self.split!r}, data_dir={self.data_dir!r})"


def tfds_name(config) -> str:
    """`dataset.tfds_name`, or `ecgan_dataset/<dataset.name>` when empty."""
    d = config.dataset
    return str(d.get("tfds_name", "") or f"{TFDS_BUILDER_NAME}/{d.name}")


def check_stored_sizes(config, source: TfdsSource) -> None:
    """Refuses records stored resized for other sizes than `config.dataset` asks for: the
    pipeline would resize them a second time, from the smaller stored copy."""
    built = source.built_for()
    if not built or built["stored"] != "resized":
        return
    d = config.dataset
    fields = {"image_size": [int(v) for v in d.image_size], "preprocess": str(d.preprocess)}
    if d.preprocess == "resize_and_crop" or built["preprocess"] == "resize_and_crop":
        fields["load_size"] = int(d.load_size)
    wrong = [
        f"dataset.{k} = {v!r} (built for {built[k]!r})" for k, v in fields.items() if v != built[k]
    ]
    if wrong:
        raise ValueError(
            f"TFDS dataset {source.tfds_name!r} in {source.data_dir!r} stores images resized "
            f"for other sizes than the config asks: {'; '.join(wrong)}. Set these fields to "
            "the dataset's, or prepare it again for these sizes (python -m "
            "ecgan_jax.data.tfds_builder)"
        )


def make_source(config, *, train: bool):
    """The raw-record source of the training (`train=True`) or eval split of `config.dataset`."""
    d = config.dataset
    if d.name == "synthetic":
        if d.edges == "precomputed":
            raise ValueError(
                "config field 'dataset.edges' = 'precomputed' is invalid for the synthetic "
                "dataset (it has no files); allowed: on_the_fly"
            )
        n = d.synthetic_num_images if train else d.synthetic_eval_images
        return SyntheticSource(n, d.image_size, seed=int(config.seed), stream=0 if train else 1)
    split = str(d.train_split if train else d.eval_split)
    if d.source == "tfds":
        source = TfdsSource(tfds_name(config), split, str(d.root))
        check_stored_sizes(config, source)
        return source
    if d.source != "files":
        raise ValueError(
            f"config field 'dataset.source' = {d.source!r} is invalid; allowed: files, tfds"
        )
    return FileSource(
        str(d.name),
        str(d.root),
        split,
        need_edges=d.edges == "precomputed",
        need_instances=not bool(d.no_instance),
    )
