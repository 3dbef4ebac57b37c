"""Periodic FID during training, keeping the checkpoint of the best one (`config.fid_every`).

With `fid_every = N > 0`, `train_and_evaluate` scores the generator every N steps and at the
last step, the way `python -m ecgan_jax.evaluate` does by default (`inference.evaluate_generator`):
I″ of the EMA parameters (the raw ones for a run without EMA, `ema_decay = 0`), quantised to
uint8, on the first `fid_num_images` images of `dataset.eval_split` (0: all of it), pytorch-fid's
InceptionV3 from `fid_weights`. The reference is `fid_stats` when given, else the statistics of
the same real images, computed at the first FID and cached as
`<workdir>/fid_real_stats_<split>_<n|all>_<hash>.npz` (pytorch-fid's format; the hash covers the
eval data fields, the image count and the content of the Inception weights file), so a resumed
run reuses them. The value is logged as the scalar `fid`.

With `keep_best_fid` (the default), an FID lower than every one before saves the train state
(and the data position) in `<workdir>/best` (the layout of `<workdir>/checkpoints`, one step
kept) and records it in `<workdir>/best_fid.json` (`step`, `fid`, ...). A resumed run reads that
record, so the best survives restarts. Generate or evaluate from it with
`--checkpoint=<workdir>/best`.

Single process only: the FID pass reads the whole eval split in one process; multi-process
training with `fid_every > 0` is refused before any compute (`check_fid_config`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh

from ecgan_jax import inference
from ecgan_jax.eval import fid as fid_lib
from ecgan_jax.eval.inception import CONVERT_COMMAND, load_inception
from ecgan_jax.sharding import make_mesh
from ecgan_jax.training.checkpointing import Checkpointer

BEST_DIR = "best"
BEST_JSON = "best_fid.json"
# Dataset fields that do not change the eval split's images (left out of the cache key).
_NOT_EVAL_FIELDS = ("num_workers", "prefetch", "flip", "train_split")


def fid_enabled(config) -> bool:
    return int(config.get("fid_every", 0)) > 0


def check_fid_config(config, process_count: int | None = None) -> None:
    """Refuses, before any compute, what the periodic FID cannot run with: a missing weights
    or statistics file, or several processes. Nothing to check when `fid_every = 0`."""
    if not fid_enabled(config):
        return
    every = int(config.fid_every)
    count = jax.process_count() if process_count is None else int(process_count)
    if count > 1:
        raise ValueError(
            f"config field 'fid_every' = {every} is not supported in multi-process training "
            f"(jax.process_count() = {count}): the FID pass reads the whole eval split in one "
            "process. Set --config.fid_every=0 and score saved checkpoints with "
            "`python -m ecgan_jax.evaluate --workdir=WORKDIR --checkpoint=STEP "
            "--fid_weights=FILE.npz`"
        )
    weights = str(config.fid_weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"config field 'fid_weights' = {weights!r}: weights file not found. Nothing is "
            f"downloaded at run time; make it with\n  {CONVERT_COMMAND}\nor set "
            "--config.fid_every=0"
        )
    stats = str(config.get("fid_stats", ""))
    if stats and not os.path.isfile(stats):
        raise FileNotFoundError(
            f"config field 'fid_stats' = {stats!r}: statistics file not found; make it with "
            f"{fid_lib.STATS_COMMAND}; or leave fid_stats empty (the real images' statistics "
            "are then computed once and cached in the workdir)"
        )


def file_digest(path: str) -> str:
    """sha256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def real_stats_cache_path(config, workdir: str, weights_digest: str) -> epath.Path:
    """`<workdir>/fid_real_stats_<split>_<n|all>_<hash>.npz` for this eval data and network."""
    dataset = {k: v for k, v in config.dataset.to_dict().items() if k not in _NOT_EVAL_FIELDS}
    n = int(config.fid_num_images)
    key = {"dataset": dataset, "num_images": n, "inception_sha256": weights_digest}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    split = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(config.dataset.eval_split))
    name = f"fid_real_stats_{split}_{n if n > 0 else 'all'}_{digest[:12]}.npz"
    return epath.Path(workdir) / name


class FidTracker:
    """FID of the training state's generator on the eval split, and the best checkpoint.

    Made once per `train_and_evaluate` call (loads the Inception weights, the real statistics
    when given or cached, and the best record of an earlier run); `tracker(state, step, writer,
    data_state)` runs one FID pass and returns it.
    """

    def __init__(self, config, workdir: str, generator, mesh: Mesh, *, is_main: bool = True):
        check_fid_config(config)
        self.config = config
        self.workdir = workdir
        self.generator = generator
        self.is_main = is_main
        self.every = int(config.fid_every)
        self.num_images = int(config.fid_num_images)
        self.inception = load_inception(str(config.fid_weights))
        # The training devices, as the 1-D `data` mesh inference shards its batches on; the
        # global train batch is a multiple of their count.
        self.mesh = make_mesh(np.asarray(mesh.devices).reshape(-1))
        self.batch_size = int(config.batch_size)
        self.generate_fn = inference.make_generate_fn(generator, config, self.mesh)
        self.real_stats = None
        self.stats_path = None
        if config.get("fid_stats", ""):
            self.real_stats = fid_lib.load_statistics(config.fid_stats)
            self.real_source = os.path.abspath(config.fid_stats)
            logging.info("FID: real statistics from %s", self.real_source)
        else:
            digest = file_digest(str(config.fid_weights))
            self.stats_path = real_stats_cache_path(config, workdir, digest)
            self.real_source = str(self.stats_path)
            if self.stats_path.exists():
                self.real_stats = fid_lib.load_statistics(self.stats_path)
                logging.info("FID: cached real statistics from %s", self.stats_path)
        self.best_ckpt = None
        self.best = None
        if bool(config.get("keep_best_fid", True)):
            self.best_ckpt = Checkpointer(
                workdir, every=1, keep=1, async_save=False, subdir=BEST_DIR
            )
            self.best = self._read_best()

    @property
    def best_json(self) -> epath.Path:
        return epath.Path(self.workdir) / BEST_JSON

    def due(self, step: int, num_steps: int) -> bool:
        return step % self.every == 0 or step == num_steps

    def _read_best(self):
        steps = self.best_ckpt.all_steps()
        if not self.best_json.exists():
            if steps:
                logging.warning(
                    "%s holds step(s) %s but %s is missing: their FID is unknown, the next FID "
                    "replaces them",
                    self.best_ckpt.directory,
                    steps,
                    self.best_json,
                )
            return None
        record = json.loads(self.best_json.read_text())
        if int(record["step"]) not in steps:
            logging.warning(
                "%s names step %s but %s holds %s: the best is started over",
                self.best_json,
                record["step"],
                self.best_ckpt.directory,
                steps or "nothing",
            )
            return None
        logging.info(
            "FID: best so far %.4f at step %d (%s)", record["fid"], record["step"], self.best_json
        )
        return record

    def __call__(self, state, step: int, writer, data_state=None) -> float:
        if state.ema_params is not None:
            params, which = state.ema_params, "ema"
        else:
            params, which = state.g_params["generator"], "raw"
        start = time.time()
        result = inference.evaluate_generator(
            self.config,
            self.generator,
            {"params": params, **state.g_stats},
            max_images=self.num_images,
            inception_variables=self.inception,
            real_stats=self.real_stats,
            batch_size=self.batch_size,
            generate_fn=self.generate_fn,
        )
        fid = float(result["fid"])
        if self.real_stats is None:
            self.real_stats = result["real_stats"]
            if self.is_main:
                fid_lib.save_statistics(self.stats_path, *self.real_stats, compress=False)
                logging.info("FID: real statistics cached in %s", self.stats_path)
        writer.write_scalars(step, {"fid": fid})
        logging.info(
            "FID of I'' (%s parameters, %d images) at step %d: %.4f (%.1f s)",
            which,
            result["num_images"],
            step,
            fid,
            time.time() - start,
        )
        if self.best_ckpt is not None and np.isfinite(fid):
            if self.best is None or fid < float(self.best["fid"]):
                self._save_best(state, step, fid, which, result["num_images"], data_state)
        return fid

    def _save_best(self, state, step, fid, which, num_images, data_state) -> None:
        # Orbax skips a step at or below its latest one: after a resume from an earlier
        # checkpoint the best may be at a later step than this one.
        for old in self.best_ckpt.all_steps():
            if old >= step:
                self.best_ckpt.delete(old)
        self.best_ckpt.save(step, state, data_state, force=True)  # synchronous
        record = {
            "step": int(step),
            "fid": fid,
            "parameters": which,
            "num_images": int(num_images),
            "checkpoint": os.path.join(self.best_ckpt.directory, str(int(step))),
            "real_stats": self.real_source,
            "fid_weights": os.path.abspath(str(self.config.fid_weights)),
        }
        if self.is_main:
            fid_lib.write_atomic(self.best_json, (json.dumps(record, indent=2) + "\n").encode())
        previous = self.best
        self.best = record
        logging.info(
            "FID: new best %.4f at step %d (was %s), saved in %s",
            fid,
            step,
            "none" if previous is None else f"{previous['fid']:.4f} at step {previous['step']}",
            record["checkpoint"],
        )

    def close(self) -> None:
        if self.best_ckpt is not None:
            self.best_ckpt.close()
