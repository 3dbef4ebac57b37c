"""Directory layouts of the datasets and pairing of their files by stem (docs/DESIGN.md §7, §D.6).

`list_examples(name, root, split, *, need_edges, need_instances)` scans one split and returns
one `ExamplePaths` per stem, in stem order. Every modality is paired **by file stem**, never by
sort order: a file without a partner in another modality is an error naming it
(`find_examples` returns them all as `Problem`s instead, for `scan.py`). Layouts
(`data/README.md`):

cityscapes  `<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`   image
            `<root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`     label (ids 0..33)
            `<root>/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png`  instance (16/32-bit)
            `<root>/edge/<split>/<city>/<stem>.png`                       edge (precomputed)
ade20k      `<root>/images/<split>/<stem>.jpg`, `<root>/annotations/<split>/<stem>.png`,
            `<root>/edges/<split>/<stem>.png`; splits `training` / `validation`, no instances
coco_stuff  `<root>/<split>_img/<stem>.jpg`, `<root>/<split>_label/<stem>.png`,
            `<root>/<split>_inst/<stem>.png`, `<root>/<split>_edge/<stem>.png`
custom      `<root>/<split>/images/<stem>.{jpg,jpeg,png}`, `<root>/<split>/labels/<stem>.png`,
            `<root>/<split>/instances/<stem>.png` (needed unless dataset.no_instance),
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


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one dataset file: the `file`, what it holds (`value`) and what is
    `allowed` there. `str()` is the one-line message every check of the data package raises."""

    file: str
    value: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.file}: {self.value}; allowed: {self.allowed}"


class DatasetError(ValueError):
    """Bad dataset files; `problems` holds one `Problem` per offending file (may be empty after
    crossing a process boundary, where only the message travels)."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = tuple(problems)


def _scan(modality: Modality, problems: list[Problem]) -> dict[str, str]:
    """{stem: path} of one modality; a second file of a stem is appended to `problems`."""
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
                problems.append(
                    Problem(
                        path,
                        f"a second file of stem {stem!r} (the first is {found[stem]})",
                        "one file per stem in each modality",
                    )  # fmt: skip
                )
                continue
            found[stem] = path
    return found


def scan(modality: Modality) -> dict[str, str]:
    """{stem: path} of the files of one modality; a stem seen twice is an error naming both."""
    problems: list[Problem] = []
    found = _scan(modality, problems)
    if problems:
        raise DatasetError(str(problems[0]), problems)
    return found


def _wanted(name: str, mods: dict[str, Modality], split: str, need_instances, need_edges):
    """The modalities to read; a config that needs instances the layout lacks is an error."""
    wanted = ["image", "label"]
    if need_instances is None:  # the layout decides: custom reads instances when it has them
        need_instances = "instance" in mods and (
            name != "custom" or os.path.isdir(mods["instance"].directory)
        )
    if need_instances:
        if "instance" not in mods:
            raise ValueError(
                f"config field 'dataset.no_instance' = False, but the {name} layout has no "
                f"instance maps; allowed for {name}: dataset.no_instance = True"
            )
        wanted.append("instance")
    if need_edges:
        wanted.append("edge")
    return wanted


def find_examples(
    name: str,
    root: str,
    split: str,
    *,
    need_edges: bool = False,
    need_instances: bool | None = None,
) -> tuple[list[ExamplePaths], list[Problem]]:
    """(examples paired by stem, sorted by stem; pairing problems) of one split.

    Every file without a partner of the same stem in another wanted modality, and every second
    file of a stem, is one `Problem`; the examples are the stems found in all modalities.
    Modalities: image and label; instance when `need_instances` (None: where the layout has
    them, custom only when its `instances` directory exists; False: never); edge when
    `need_edges`. A missing or empty directory raises (FileNotFoundError / ValueError) naming it.
    """
    mods = modalities(name, root, split)
    wanted = _wanted(name, mods, split, need_instances, need_edges)
    files, problems = {}, []
    for kind in wanted:
        directory = mods[kind].directory
        if not os.path.isdir(directory):
            hint = {
                "edge": " (run `python -m ecgan_jax.data.edges` to precompute edges, or set "
                "dataset.edges='on_the_fly')",
                "instance": "; config field 'dataset.no_instance' = False reads an instance map "
                "<stem>.png there for every image: add them, or set dataset.no_instance=True "
                "(the generator then has no instance-edge channel)",
            }.get(kind, "")
            raise FileNotFoundError(
                f"{kind} directory of split {split!r} not found: {directory}{hint}"
            )
        files[kind] = _scan(mods[kind], problems)
        if not files[kind]:
            raise ValueError(
                f"split {split!r} is empty: no {kind} files ending in "
                f"{'/'.join(mods[kind].suffixes)} in {directory}"
            )
    images = set(files["image"])
    for kind in wanted[1:]:
        where = mods[kind].directory
        for s in sorted(images - set(files[kind])):
            problems.append(
                Problem(
                    files["image"][s],
                    f"no {kind} file of stem {s!r} in {where}",
                    f"an image with one {kind} file of the same stem",
                )  # fmt: skip
            )
        for s in sorted(set(files[kind]) - images):
            problems.append(
                Problem(
                    files[kind][s],
                    f"no image of stem {s!r} in {mods['image'].directory}",
                    f"a {kind} file with one image of the same stem",
                )  # fmt: skip
            )
    stems = sorted(set.intersection(*(set(f) for f in files.values())))
    examples = [
        ExamplePaths(
            stem=s,
            image=files["image"][s],
            label=files["label"][s],
            instance=files.get("instance", {}).get(s),
            edge=files.get("edge", {}).get(s),
        )
        for s in stems
    ]
    return examples, problems


def list_examples(
    name: str,
    root: str,
    split: str,
    *,
    need_edges: bool = False,
    need_instances: bool | None = None,
) -> list[ExamplePaths]:
    """All examples of one split, paired by stem and sorted by stem (`find_examples`).

    Raises ValueError naming the first unpaired or duplicated files (and how many there are),
    or the directory of a missing or empty split.
    """
    examples, problems = find_examples(
        name, root, split, need_edges=need_edges, need_instances=need_instances
    )
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DatasetError(
            f"{len(problems)} file(s) of split {split!r} are not paired by stem: {shown}{more}",
            problems,
        )
    return examples
