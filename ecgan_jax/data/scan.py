"""Checks every file of a dataset split once, before the first compile (docs/DESIGN.md §7, §D.6).

    python -m ecgan_jax.data.scan --config=configs/cityscapes.py [--split=val] [--cache_dir=DIR]

`scan_dataset(config, split, cache_dir=workdir)` runs, over every example of the split, the
checks the input pipeline makes when it loads an example (`transforms.decode_record`), so that a
bad file fails the run at start-up instead of at step 50,000:

* pairing by stem of image, label, instance (when `dataset.no_instance` is False) and edge
  (when `dataset.edges` is "precomputed") files (`layouts.find_examples`);
* every file decodes completely; labels and instances are single-channel integer images;
* label values lie in [0, dataset.label_nc + dataset.contain_dontcare_label) after the layout's
  mapping (255 -> label_nc where the dataset has a dontcare class);
* label and instance maps have their image's (H, W); a precomputed edge map has the shape of its
  image or of the pipeline's pre-crop size.

Every problem is listed once (file, what it holds, what is allowed) in one `DatasetError`
(the first `MAX_LISTED`, then a count). Examples that passed are remembered in a small JSON file,
`<cache_dir>/dataset_scan/<dataset>-<split>.json`, by a hash of their files' paths, sizes and
modification times and of the dataset fields the checks read, so a 3,000-image split is decoded
once and a later run re-reads only the files that changed. A TFDS split is scanned record by
record and remembered as a whole (keyed by its array_record files). The synthetic dataset is made
in code and needs no scan. Decoding runs in `workers` threads (PIL releases the GIL while it
decodes); a progress bar goes to stderr for splits of `PROGRESS_MIN` examples or more.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
import time

from etils import epath

from ecgan_jax.data import layouts
from ecgan_jax.data.layouts import DatasetError, Problem
from ecgan_jax.data.transforms import DataSpec, decode_record

SCAN_VERSION = 1
MAX_LISTED = 30
PROGRESS_MIN = 200


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """What `scan_dataset` found in one split.

    `num_examples`: examples of the split (paired stems); `num_cached`: of those, how many were
    known good from the cache and not decoded again; `problems`: one per offending file (empty
    when the split is clean); `cache_file`: the JSON written, or None; `skipped`: why nothing was
    scanned (the synthetic dataset), else "".
    """

    dataset: str
    split: str
    root: str
    num_examples: int
    problems: tuple[Problem, ...] = ()
    num_cached: int = 0
    cache_file: str | None = None
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def error(self, max_listed: int | None = None) -> DatasetError:
        """One `DatasetError` listing the first `max_listed` (default `MAX_LISTED`) problems and
        the count of the rest."""
        n = len(self.problems)
        max_listed = MAX_LISTED if max_listed is None else max_listed
        lines = [
            f"dataset scan: {n} problem(s) in split {self.split!r} of {self.dataset} at "
            f"{self.root} ({self.num_examples} paired examples); fix them and start again:"
        ]
        lines += [f"  {p}" for p in self.problems[:max_listed]]
        if n > max_listed:
            lines.append(
                f"  ... and {n - max_listed} more (all of them: python -m ecgan_jax.data.scan "
                "--config=<this config> --all)"
            )
        return DatasetError("\n".join(lines), self.problems)


# --------------------------------------------------------------------------- progress


class _Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, title: str, enabled: bool):
        self.total, self.title, self.enabled = total, title, enabled and total > 0
        self.tty = self.enabled and sys.stderr.isatty()
        self.done, self.last_shown, self.last_decile = 0, 0.0, -1
        self.start = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        decile = 10 * self.done // self.total
        if self.tty and (now - self.last_shown > 0.1 or self.done == self.total):
            self.last_shown = now
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r{self.title} [{bar}] {self.done}/{self.total}")
            sys.stderr.flush()
        elif not self.tty and decile != self.last_decile:
            self.last_decile = decile
            sys.stderr.write(f"{self.title}: {self.done}/{self.total}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            took = time.monotonic() - self.start
            end = "\n" if self.tty else ""
            sys.stderr.write(f"{end}{self.title}: {self.done} examples in {took:.1f} s\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- cache


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _spec_key(spec: DataSpec, train: bool) -> str:
    """Hash of the dataset fields the checks read (sizes only matter for edge maps)."""
    fields = dataclasses.asdict(spec)
    fields.pop("flip")
    if spec.edges != "precomputed":
        for k in ("image_size", "preprocess", "load_size"):
            fields.pop(k)
    return _digest({"version": SCAN_VERSION, "train": train, **fields})


def _example_key(ex: layouts.ExamplePaths) -> str | None:
    """Hash of an example's file paths, sizes and mtimes; None when a file cannot be stat'ed."""
    entries = []
    for kind in ("image", "label", "instance", "edge"):
        path = getattr(ex, kind)
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            return None
        entries.append((kind, os.path.abspath(path), st.st_size, st.st_mtime_ns))
    return _digest(entries)


def _cache_path(cache_dir, dataset: str, split: str) -> epath.Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dataset}-{split}")
    return epath.Path(cache_dir) / "dataset_scan" / f"{safe}.json"


def _read_cache(path: epath.Path | None, spec_key: str) -> set[str]:
    if path is None or not path.exists():
        return set()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()  # a damaged cache is only a slower start: scan again and rewrite it
    if not isinstance(data, dict) or data.get("spec") != spec_key:
        return set()
    return set(data.get("clean", []))


def _write_cache(path: epath.Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(content, sort_keys=True))
    tmp.replace(path)  # readers see the old file or the new one, never half of one


# --------------------------------------------------------------------------- scans


def _check_files(ex: layouts.ExamplePaths, spec: DataSpec, train: bool) -> list[Problem]:
    record = {
        "stem": ex.stem,
        "origin": {k: getattr(ex, k) for k in ("image", "label", "instance", "edge")},
        "image": ex.image,
        "label": ex.label,
        "instance": ex.instance,
        "edge": ex.edge,
    }
    return decode_record(record, spec, train=train).problems


def _unique(problems) -> tuple[Problem, ...]:
    seen, out = set(), []
    for p in problems:
        if (p.file, p.value) not in seen:
            seen.add((p.file, p.value))
            out.append(p)
    return tuple(out)


def _run(check, items, title: str, workers: int, progress) -> list[list[Problem]]:
    show = len(items) >= PROGRESS_MIN if progress is None else bool(progress)
    bar = _Progress(len(items), title, show)
    results = []
    try:
        if workers <= 1:
            for item in items:
                results.append(check(item))
                bar.update()
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for r in pool.map(check, items):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return results


def _scan_files(config, split, train, spec, cache_dir, workers, progress) -> ScanReport:
    d = config.dataset
    name, root = str(d.name), str(d.root)
    if not root:
        raise ValueError(
            f"config field 'dataset.root' is empty; set it to the {name} root directory"
        )
    examples, problems = layouts.find_examples(
        name,
        root,
        split,
        need_edges=spec.edges == "precomputed",
        need_instances=not spec.no_instance,
    )
    spec_key = _spec_key(spec, train)
    cache_file = _cache_path(cache_dir, name, split) if cache_dir else None
    clean = _read_cache(cache_file, spec_key)
    keys = [_example_key(ex) for ex in examples]
    todo = [(ex, k) for ex, k in zip(examples, keys, strict=True) if k is None or k not in clean]
    results = _run(
        lambda item: _check_files(item[0], spec, train),
        todo,
        f"scanning {name} split {split!r}",
        workers,
        progress,
    )
    for (_, key), found in zip(todo, results, strict=True):
        problems.extend(found)
        if not found and key is not None:
            clean.add(key)
    if cache_file is not None:
        _write_cache(
            cache_file,
            {"version": SCAN_VERSION, "spec": spec_key, "clean": sorted(clean & set(keys))},
        )
    return ScanReport(
        dataset=name,
        split=split,
        root=root,
        num_examples=len(examples),
        problems=_unique(problems),
        num_cached=len(examples) - len(todo),
        cache_file=None if cache_file is None else os.fspath(cache_file),
    )


def _tfds_key(source, spec: DataSpec, train: bool) -> str | None:
    """Hash of the split's array_record files (name, size, mtime); None where unlisted."""
    try:
        data_dir = epath.Path(source.source.dataset_info.data_dir)
        files = sorted(
            (p.name, p.stat().length, int(p.stat().mtime))
            for p in data_dir.iterdir()
            if f"-{source.split}." in p.name
        )
    except Exception:  # noqa: BLE001 (any listing failure only disables the cache)
        return None
    if not files:
        return None
    return _digest([_spec_key(spec, train), str(data_dir), files])


def _scan_tfds(config, split, train, spec, cache_dir, workers, progress) -> ScanReport:
    from ecgan_jax.data.sources import TfdsSource, tfds_name

    name = tfds_name(config)
    source = TfdsSource(name, split, str(config.dataset.root))
    key = _tfds_key(source, spec, train)
    cache_file = _cache_path(cache_dir, name, split) if cache_dir and key else None
    report = dict(dataset=name, split=split, root=str(config.dataset.root))
    if cache_file is not None and key in _read_cache(cache_file, key):
        return ScanReport(**report, num_examples=len(source), num_cached=len(source),
                          cache_file=os.fspath(cache_file))  # fmt: skip

    def check(index):
        return decode_record(source[index], spec, train=train).problems

    results = _run(check, list(range(len(source))), f"scanning {name} split {split!r}",
                   workers, progress)  # fmt: skip
    problems = _unique(p for r in results for p in r)
    if cache_file is not None and not problems:
        _write_cache(cache_file, {"version": SCAN_VERSION, "spec": key, "clean": [key]})
    return ScanReport(**report, num_examples=len(source), problems=problems,
                      cache_file=None if cache_file is None else os.fspath(cache_file))  # fmt: skip


def scan_dataset(
    config,
    split: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    raise_on_problems: bool = True,
) -> ScanReport:
    """Checks every example of one split of `config.dataset` (module docstring).

    `split`: a split name (default `dataset.train_split`); the training split's edge maps are
    checked against its pre-crop size, every other split's against `dataset.image_size`.
    `cache_dir`: where the cache JSON goes (the workdir; None: no cache). `workers`: decoding
    threads (default min(8, CPUs)). `progress`: None shows a bar on stderr from PROGRESS_MIN
    examples. Raises `DatasetError` (a ValueError) listing the problems unless
    `raise_on_problems` is False; a missing or empty directory raises FileNotFoundError /
    ValueError naming it. Returns the `ScanReport`.
    """
    d = config.dataset
    split = str(d.train_split if split is None else split)
    if d.name == "synthetic":
        n = d.synthetic_num_images if split == d.train_split else d.synthetic_eval_images
        return ScanReport("synthetic", split, "", int(n), skipped="generated in code")
    spec = DataSpec.from_config(config)
    train = split == str(d.train_split)
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if d.source == "tfds":
        report = _scan_tfds(config, split, train, spec, cache_dir, workers, progress)
    elif d.source == "files":
        report = _scan_files(config, split, train, spec, cache_dir, workers, progress)
    else:
        raise ValueError(
            f"config field 'dataset.source' = {d.source!r} is invalid; allowed: files, tfds"
        )
    if raise_on_problems and report.problems:
        raise report.error()
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecgan_jax.data.scan",
        description="Check every file of a dataset split (pairing, sizes, label ranges).",
    )
    p.add_argument("--config", required=True, help="config file[:variant]")
    p.add_argument("--split", action="append", default=None,
                   help="split to scan (repeatable; default: train and eval splits)")  # fmt: skip
    p.add_argument("--cache_dir", default="", help="where to remember good examples")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument("--all", action="store_true", help="list every problem (no cap)")
    a = p.parse_args(argv)
    from ecgan_jax.config_lib import load_config

    config = load_config(a.config)
    d = config.dataset
    splits = a.split or list(dict.fromkeys([str(d.train_split), str(d.eval_split)]))
    status = 0
    for split in splits:
        report = scan_dataset(config, split, cache_dir=a.cache_dir or None, workers=a.workers,
                              raise_on_problems=False)  # fmt: skip
        if report.problems:
            status = 1
            limit = len(report.problems) if a.all else MAX_LISTED
            print(str(report.error(limit)), file=sys.stderr)
        else:
            what = report.skipped or f"{report.num_examples} examples, no problem"
            print(f"{report.dataset} split {split!r}: {what}")
    return status


if __name__ == "__main__":
    sys.exit(main())
