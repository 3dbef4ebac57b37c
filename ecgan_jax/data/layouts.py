"""Directory layouts of the datasets and pairing of their files by stem (ECGAN_SPEC.md §7, §D.6).

`list_examples(name, root, split, *, need_edges)` scans one split and returns one `ExamplePaths`
per stem, in stem order. Every modality is paired **by file stem**, never by sort order: a file
without a partner in another modality is an error naming it. Layouts (`data/README.md`):

cityscapes  `<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`   image
            `<root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`     label (ids 0..33)
            `<root>/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png`  instance (16/32-bit)
            `<root>/edge/<split>/<city>/<stem>.png`                       edge (precomputed)
ade20k      `<root>/images/<split>/<stem>.jpg`, `<root>/annotations/<split>/<stem>.png`,
            `<root>/edges/<split>/<stem>.png`; splits `training` / `validation`, no instances
coco_stuff  `<root>/<split>_img/<stem>.jpg`, `<root>/<split>_label/<stem>.png`,
            `<root>/<split>_inst/<stem>.png`, `<root>/<split>_edge/<stem>.png`
custom      `<root>/<split>/images/<stem>.{jpg,jpeg,png}`, `<root>/<split>/labels/<stem>.png`,
            optional `<root>/<split>/instances/<stem>.png`,
            optional `<root>/<split>/edges/<stem>.png`

The Cityscapes stem is the `<city>_<seq>_<frame>` prefix shared by all of its files.
"""

from __future__ import annotations

import dataclasses
import os

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
FILE_DATASETS = ("cityscapes", "ade20k", "coco_stuff", "custom")


@dataclasses.dataclass(frozen=True)
class ExamplePaths:
    stem: str
    image: str
    label: str
    instance: str | None = None
    edge: str | None = None


@dataclasses.dataclass(frozen=True)
class Modality:
    """Where one modality of a split lives: `directory`, scanned (recursively when `recursive`)
    for files ending in one of `suffixes`; the stem is the file name minus the suffix."""

    directory: str
    suffixes: tuple[str, ...]
    recursive: bool = False


def modalities(name: str, root: str, split: str) -> dict[str, Modality]:
    """The modality directories of dataset `name` (keys image, label, instance?, edge)."""
    j = os.path.join
    if name == "cityscapes":
        return {
            "image": Modality(j(root, "leftImg8bit", split), ("_leftImg8bit.png",), True),
            "label": Modality(j(root, "gtFine", split), ("_gtFine_labelIds.png",), True),
            "instance": Modality(j(root, "gtFine", split), ("_gtFine_instanceIds.png",), True),
            "edge": Modality(j(root, "edge", split), (".png",), True),
        }
    if name == "ade20k":
        return {
            "image": Modality(j(root, "images", split), IMAGE_EXTS),
            "label": Modality(j(root, "annotations", split), (".png",)),
            "edge": Modality(j(root, "edges", split), (".png",)),
        }
    if name == "coco_stuff":
        return {
            "image": Modality(j(root, f"{split}_img"), IMAGE_EXTS),
            "label": Modality(j(root, f"{split}_label"), (".png",)),
            "instance": Modality(j(root, f"{split}_inst"), (".png",)),
            "edge": Modality(j(root, f"{split}_edge"), (".png",)),
        }
    if name == "custom":
        return {
            "image": Modality(j(root, split, "images"), IMAGE_EXTS),
            "label": Modality(j(root, split, "labels"), (".png",)),
            "instance": Modality(j(root, split, "instances"), (".png",)),
            "edge": Modality(j(root, split, "edges"), (".png",)),
        }
    raise ValueError(
        f"config field 'dataset.name' = {name!r} has no directory layout; allowed: "
        + ", ".join(FILE_DATASETS)
    )


def edge_path(name: str, root: str, split: str, paths: ExamplePaths) -> str:
    """Where the edge map of `paths` goes in the edge tree (Cityscapes keeps the city folder)."""
    directory = modalities(name, root, split)["edge"].directory
    if name == "cityscapes":
        city = os.path.basename(os.path.dirname(paths.image))
        return os.path.join(directory, city, paths.stem + ".png")
    return os.path.join(directory, paths.stem + ".png")


def scan(modality: Modality) -> dict[str, str]:
    """{stem: path} of the files of one modality; a stem seen twice is an error naming both."""
    found: dict[str, str] = {}
    if modality.recursive:
        walker = ((d, sorted(files)) for d, subdirs, files in sorted(os.walk(modality.directory)))
    else:
        walker = [(modality.directory, sorted(os.listdir(modality.directory)))]
    for directory, files in walker:
        for f in files:
            suffix = next((s for s in modality.suffixes if f.lower().endswith(s.lower())), None)
            if suffix is None:
                continue
            stem, path = f[: -len(suffix)], os.path.join(directory, f)
            if stem in found:
                raise ValueError(f"two files with stem {stem!r}: {found[stem]} and {path}")
            found[stem] = path
    return found


def _unpaired(kind: str, extra: set[str], files: dict[str, str], other: str, where: str):
    first = sorted(extra)[:5]
    listed = ", ".join(files[s] for s in first)
    more = f" (and {len(extra) - len(first)} more)" if len(extra) > len(first) else ""
    return ValueError(
        f"{len(extra)} {kind} file(s) have no {other} file with the same stem in {where}: "
        f"{listed}{more}"
    )


def list_examples(
    name: str, root: str, split: str, *, need_edges: bool = False
) -> list[ExamplePaths]:
    """All examples of one split, paired by stem and sorted by stem.

    Images and labels must exist; instances are read where the layout has them (custom: when the
    `instances` directory exists); edges when `need_edges` (precomputed edges) or, for custom,
    never otherwise. Raises ValueError naming the directory (missing or empty split) or the
    first unpaired files.
    """
    mods = modalities(name, root, split)
    wanted = ["image", "label"]
    if "instance" in mods and (name != "custom" or os.path.isdir(mods["instance"].directory)):
        wanted.append("instance")
    if need_edges:
        wanted.append("edge")
    files = {}
    for kind in wanted:
        directory = mods[kind].directory
        if not os.path.isdir(directory):
            hint = (
                " (run `python -m ecgan_jax.data.edges` to precompute edges, or set "
                "dataset.edges='on_the_fly')"
                if kind == "edge"
                else ""
            )
            raise FileNotFoundError(
                f"{kind} directory of split {split!r} not found: {directory}{hint}"
            )
        files[kind] = scan(mods[kind])
        if not files[kind]:
            raise ValueError(
                f"split {split!r} is empty: no {kind} files ending in "
                f"{'/'.join(mods[kind].suffixes)} in {directory}"
            )
    stems = set(files["image"])
    for kind in wanted[1:]:
        where = mods[kind].directory
        missing = stems - set(files[kind])
        if missing:
            raise _unpaired("image", missing, files["image"], kind, where)
        extra = set(files[kind]) - stems
        if extra:
            raise _unpaired(kind, extra, files[kind], "image", mods["image"].directory)
    return [
        ExamplePaths(
            stem=s,
            image=files["image"][s],
            label=files["label"][s],
            instance=files.get("instance", {}).get(s),
            edge=files.get("edge", {}).get(s),
        )
        for s in sorted(stems)
    ]
