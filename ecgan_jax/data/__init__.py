"""Input pipelines (docs/DESIGN.md §7, §D.6): grain over directory trees, TFDS or synthetic scenes.

Public API used by training:

* `make_train_iterator(config, *, process_index=None, process_count=None)` -> `TrainIterator`
* `make_eval_iterator(config, *, process_index=None, process_count=None, batch_size=None)`
  -> `EvalIterable`
* `colorize_labels(label, num_classes, *, palette=None)` -> uint8 RGB
* `canny(rgb)` -> uint8 0/255 edge map
* `scan.scan_dataset(config, split, *, cache_dir)` -> `ScanReport`: every file of a split
  checked once before training (pairing, sizes, label ranges, readability); a `DatasetError`
  (ValueError) lists every problem. Not imported here: `python -m ecgan_jax.data.scan` runs it.

Modules: `canny` (edge maps), `edges` (edge-tree CLI), `layouts` (directory layouts, pairing by
stem), `transforms` (decoding, label checks, resize/crop/flip), `synthetic` (embedded dataset),
`sources` (files / TFDS / synthetic sources), `tfds_builder` (array_record builder), `pipeline`
(grain iterators), `palette` (label colours), `scan` (the dataset scan). Layouts and
preparation: data/README.md.
"""

from ecgan_jax.data.canny import canny
from ecgan_jax.data.layouts import DatasetError
from ecgan_jax.data.palette import colorize_labels
from ecgan_jax.data.pipeline import (
    EvalIterable,
    TrainIterator,
    make_eval_iterator,
    make_train_iterator,
)

__all__ = [
    "DatasetError",
    "EvalIterable",
    "TrainIterator",
    "canny",
    "colorize_labels",
    "make_eval_iterator",
    "make_train_iterator",
]
