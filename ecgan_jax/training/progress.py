"""What the training log says: one short line per logged step, honest timing, quiet libraries.

* `ProgressLine`: `step 120/300 | G 3.21 D 1.98 | adv 0.71 0.69 0.74 | cl 2.31 | 0.52 s/step,
  7.7 img/s | ETA 1m33s`, with the step time a moving average over the recent steps that
  excludes the step that compiled; every metric still goes to TensorBoard.
* `CompileTimer`: a line before a long compile saying what compiles and how long the same
  compile took last time (kept in the compilation cache directory), and one after it.
* `quiet_library_logs`: orbax's per-file INFO lines at WARNING unless `--verbosity` >= 1.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import time

log = logging.getLogger("ecgan_jax")
_FAKES = ("first", "edge", "final")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressLine:
    """Step times (a moving average over `window` steps, the compiling step excluded), the ETA
    and the one-line summary of a logged step."""

    def __init__(self, num_steps: int, batch_size: int, start: int, window: int = 20):
        self.num_steps, self.batch_size = num_steps, batch_size
        self.times = collections.deque(maxlen=window)
        self.last = None
        self.start_time = time.time()
        self.start = start

    def tick(self, step: int, compiled_here: bool = False) -> None:
        """Called after each step; the step that compiled is not timed."""
        now = time.time()
        if self.last is not None and not compiled_here:
            self.times.append(now - self.last)
        self.last = now

    def step_time(self) -> float | None:
        return sum(self.times) / len(self.times) if self.times else None

    def line(self, step: int, metrics: dict) -> str:
        def get(name):
            v = metrics.get(name)
            return "-" if v is None else f"{v:.3f}"

        parts = [
            f"step {step}/{self.num_steps}",
            f"G {get('g/total')} D {get('d/total')}",
            "adv I' {} I'e {} I'' {}".format(*(get(f"g/adv_{n}") for n in _FAKES)),
        ]
        if "g/contrastive" in metrics:
            parts.append(f"cl {get('g/contrastive')}")
        dt = self.step_time()
        if dt:
            eta = format_duration(dt * (self.num_steps - step))
            parts.append(f"{dt:.2f} s/step, {self.batch_size / dt:.1f} img/s | ETA {eta}")
        return " | ".join(parts)

    def final_line(self, step: int) -> str:
        wall = time.time() - self.start_time
        done = step - self.start
        return f"finished at step {step}: {done} steps in {format_duration(wall)} wall time"


class CompileTimer:
    """Logs a line before and after a compile; remembers its duration per key in `directory`."""

    def __init__(self, directory: str | None):
        self.path = os.path.join(directory, "ecgan_compile_times.json") if directory else None

    def _load(self) -> dict:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def key(self, *parts) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def start(self, what: str, key: str) -> float:
        before = self._load().get(key)
        hint = f" (took {format_duration(before)} last time)" if before else " (no time on record)"
        log.info("compiling %s%s ...", what, hint)
        return time.time()

    def done(self, what: str, key: str, started: float) -> None:
        seconds = time.time() - started
        log.info("compiled %s in %s", what, format_duration(seconds))
        if self.path is None:
            return
        times = self._load()
        times[key] = seconds
        try:
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(times, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache directory only loses the hint


class _DropLibraryInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


_FILTER = _DropLibraryInfo()


def quiet_library_logs(verbose: bool = False) -> None:
    """Checkpoint-library INFO lines (about 40 per save) dropped unless `verbose`: a filter
    on the root logger's handlers, which every propagated record passes (absl's included)."""
    for handler in logging.getLogger().handlers:
        if verbose:
            handler.removeFilter(_FILTER)
        else:
            handler.addFilter(_FILTER)
