"""The planner table: dataset configs × dtypes × remat policies × TPU slices, one cell at a time.

    python benchmarks/plan_table.py --out=runs/plan_table \
        [--configs=cityscapes,ade20k,coco_stuff] [--dtypes=float32,bfloat16] \
        [--remat=none,spade,blocks] [--topologies=v4-8,v5e-8] [--batch_per_chip=1 | --fit] \
        [--cell_timeout_s=5400]

Each cell is `python -m ecgan_jax.plan ... --json=<out>/cells/<cell>.json` in its own process
(a full-config TPU compile holds 13-17 GB of host memory on the way; a process per cell gives
it back) with its own timeout. A cell whose JSON exists is read, not compiled again, so an
interrupted table resumes where it stopped (and the planner's own cache,
`~/.cache/ecgan_jax/plans`, serves cells planned before). A failed or timed-out cell is a row
saying why. After every cell `<out>/plan_table.json` and `<out>/plan_table.md` are rewritten:
the rows of the table there before (re-read from their cells, so a row follows the planner's
current fit test), this run's cells in their places, new ones at the end; so a run over a few
cells adds to the table, not replaces it. `--table_only` writes them from the cells already
there, running none.
A full-config cell compiles in about 9 minutes on a 2-core host (BENCHMARKS.md, "Tenth
session"): the whole table (36 cells) is hours there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
COLUMNS = (
    "config", "dtype", "remat", "topology", "batch/chip", "fits", "HBM GiB: total of usable",
    "temp GiB", "arguments GiB", "TFLOP/step", "collectives MiB", "roofline ms/step",
    "compile s", "status",
)  # fmt: skip


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("an empty list")
    return items


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory of the cells, the JSON and the table")
    p.add_argument("--configs", type=_csv, default=["cityscapes", "ade20k", "coco_stuff"])
    p.add_argument("--dtypes", type=_csv, default=["float32", "bfloat16"])
    p.add_argument("--remat", type=_csv, default=["none", "spade", "blocks"])
    p.add_argument("--topologies", type=_csv, default=["v4-8", "v5e-8"])
    p.add_argument("--batch_per_chip", type=int, default=1)
    p.add_argument("--fit", action="store_true", help="the largest batch that fits, per cell")
    p.add_argument("--cell_timeout_s", type=float, default=5400.0)
    p.add_argument(
        "--table_only", action="store_true", help="only tabulate the cells already written"
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="more config fields for every cell, as FIELD=VALUE (e.g. "
        "contrastive.anchor_selection=global); they join the cell's name",
    )
    a = p.parse_args(argv)
    for name in a.configs:
        if not os.path.exists(os.path.join(ROOT, "configs", f"{name}.py")):
            p.error(f"--configs: no configs/{name}.py")
    for d in a.dtypes:
        if d not in ("float32", "bfloat16"):
            p.error(f"--dtypes: {d!r}; allowed: float32, bfloat16")
    for r in a.remat:
        if r not in ("none", "spade", "blocks"):
            p.error(f"--remat: {r!r}; allowed: none, spade, blocks")
    if a.batch_per_chip < 1:
        p.error("--batch_per_chip: at least 1")
    for item in a.set:
        if "=" not in item or item.startswith("="):
            p.error(f"--set: {item!r} is not FIELD=VALUE")
    return a


def cells(a) -> list[dict]:
    """The cells in run order: every config's float32/no-remat plan first (the headline)."""
    out = []
    for topo, name, dtype, remat in itertools.product(a.topologies, a.configs, a.dtypes, a.remat):
        size = "fit" if a.fit else f"b{a.batch_per_chip}"
        cell = dict(config=name, dtype=dtype, remat=remat, topology=topo, size=size)
        cell["id"] = "_".join([name, dtype, remat, topo, size, *a.set]).replace("=", "-")
        cell["set"] = list(a.set)
        out.append(cell)
    return sorted(out, key=lambda c: (c["dtype"] != "float32" or c["remat"] != "none",))


def command(a, cell: dict, json_path: str) -> list[str]:
    cmd = [
        sys.executable, "-m", "ecgan_jax.plan", f"--config=configs/{cell['config']}.py",
        f"--topology={cell['topology']}", f"--config.model.dtype={cell['dtype']}",
        f"--config.runtime.remat={cell['remat']}", f"--json={json_path}",
    ]  # fmt: skip
    cmd += ["--fit"] if a.fit else [f"--batch_per_chip={a.batch_per_chip}"]
    return cmd + [f"--config.{item}" for item in cell.get("set", ())]


def row(cell: dict, result: dict | None, status: str) -> dict:
    """One table row from the planner's JSON (`{"plan": ...}` or `{"fit": n, "plan", "next"}`)."""
    out = {k: cell[k] for k in ("config", "dtype", "remat", "topology")}
    out.update({"id": cell["id"], "status": status, "set": " ".join(cell.get("set", ()))})
    if not result:
        return out
    p = result["plan"]
    m = p["memory"]
    fits = p["fits"]
    if "fit" in result:
        fits = f"largest: {result['fit']} ({result['next']['batch_per_chip']} does not)"
    out.update({
        "batch_per_chip": p["batch_per_chip"],
        "fits": fits,
        "hbm_total_gib": m["total"] / GIB,
        "hbm_gib": p["hbm_bytes"] / GIB,
        "temp_gib": None if m["temp"] is None else m["temp"] / GIB,
        "argument_gib": None if m["argument"] is None else m["argument"] / GIB,
        "tflop_per_step": None if p["flops"] is None else p["flops"] / 1e12,
        "collective_mib": sum(p["collective_bytes"].values()) / 2**20 if p["flops"] else None,
        "roofline_ms": p["roofline"]["step_seconds"] * 1e3 if p["roofline"] else None,
        "roofline_bound": p["roofline"]["bound"] if p["roofline"] else None,
        "compile_s": p.get("compile_seconds"),
    })  # fmt: skip
    return out


def _num(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        hbm = r.get("hbm_total_gib")
        total = "-" if hbm is None else f"{hbm:.2f} of {r['hbm_gib']:.2f}"
        roof = r.get("roofline_ms")
        roof = "-" if roof is None else f"{roof:.1f} ({r['roofline_bound']}, ESTIMATE)"
        config = r["config"] + (f" ({r['set']})" if r.get("set") else "")
        cells_ = [
            config, r["dtype"], r["remat"], r["topology"],
            str(r.get("batch_per_chip", "-")), str(r.get("fits", "-")), total,
            _num(r.get("temp_gib"), "{:.2f}"), _num(r.get("argument_gib"), "{:.2f}"),
            _num(r.get("tflop_per_step")), _num(r.get("collective_mib"), "{:.1f}"), roof,
            _num(r.get("compile_s"), "{:.0f}"), " ".join(r["status"].replace("|", "/").split()),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def written_row(cell: dict, cell_dir: str) -> dict | None:
    """The row of a cell whose JSON an earlier run wrote, or None."""
    json_path = os.path.join(cell_dir, f"{cell['id']}.json")
    if not os.path.exists(json_path):
        return None
    with open(json_path) as f:
        return row(cell, json.load(f), "ok (from an earlier run)")


def run_cell(a, cell: dict, cell_dir: str, log) -> dict:
    json_path = os.path.join(cell_dir, f"{cell['id']}.json")
    if (written := written_row(cell, cell_dir)) is not None:
        return written
    if a.table_only:
        return row(cell, None, "not planned yet")
    cmd = command(a, cell, json_path)
    log.write(f"===== {cell['id']}: {' '.join(cmd)}\n")
    log.flush()
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.cell_timeout_s
        )
    except subprocess.TimeoutExpired:
        return row(cell, None, f"timeout after {a.cell_timeout_s:.0f} s")
    log.write(done.stdout + "\n--- stderr\n" + done.stderr[-20000:] + "\n")
    if done.returncode != 0 or not os.path.exists(json_path):
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return row(cell, None, f"failed rc {done.returncode}: {lines[-1] if lines else ''}")
    with open(json_path) as f:
        return row(cell, json.load(f), f"ok in {time.monotonic() - started:.0f} s")


def earlier_rows(out: str, cell_dir: str) -> list[dict]:
    """The rows of `<out>/plan_table.json` (none if there is no such file), each re-read from
    its cell's JSON where that exists."""
    path = os.path.join(out, "plan_table.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = json.load(f)
        cells_ = [
            {**{k: r[k] for k in ("id", "config", "dtype", "remat", "topology")},
             "set": r.get("set", "").split()}
            for r in rows
        ]  # fmt: skip
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise SystemExit(
            f"{path}: not a plan table ({e!r}); move it away to start a new one"
        ) from None
    return [written_row(c, cell_dir) or r for c, r in zip(cells_, rows, strict=True)]


def main(argv=None) -> list[dict]:
    """Runs the cells; returns the whole table (the earlier rows with this run's)."""
    a = parse_args(argv)
    cell_dir = os.path.join(a.out, "cells")
    os.makedirs(cell_dir, exist_ok=True)
    table = {r["id"]: r for r in earlier_rows(a.out, cell_dir)}  # dicts keep the order
    with open(os.path.join(a.out, "plan_table.log"), "a") as log:
        for cell in cells(a):
            table[cell["id"]] = run_cell(a, cell, cell_dir, log)
            print(f"{cell['id']}: {table[cell['id']]['status']}", flush=True)
            rows = list(table.values())
            _write(os.path.join(a.out, "plan_table.json"), json.dumps(rows, indent=1))
            _write(os.path.join(a.out, "plan_table.md"), markdown(rows))
    return list(table.values())


if __name__ == "__main__":
    main()
