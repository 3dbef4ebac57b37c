"""benchmarks/plan_table.py, the planner table's driver, with the planner stood in for.

The cells and their order, the planner command of each, resuming from the cells already
written, a failed and a timed-out cell as rows saying why, and the table rewritten after every
cell. No TPU compile (tests/test_plan.py compiles the real step for a TPU slice).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _table():
    spec = importlib.util.spec_from_file_location(
        "plan_table", ROOT / "benchmarks" / "plan_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_plan(batch: int, total_gib: float) -> dict:
    gib = 2**30
    return {
        "batch_per_chip": batch,
        "fits": total_gib <= 32,
        "hbm_bytes": 32 * gib,
        "memory": {"total": int(total_gib * gib), "temp": int(0.8 * total_gib * gib),
                   "argument": int(0.2 * total_gib * gib)},
        "flops": 2.9e12 * batch * 4,
        "collective_bytes": {"all-reduce": 373 * 2**20, "all-gather": 0},
        "roofline": {"step_seconds": 0.0425, "bound": "compute"},
        "compile_seconds": 1200.0,
    }  # fmt: skip


def test_default_cells_and_the_headline_first():
    table = _table()
    a = table.parse_args(["--out=x"])
    cells = table.cells(a)
    assert len(cells) == 3 * 2 * 3 * 2 and len({c["id"] for c in cells}) == len(cells)
    head = cells[:6]  # each config's float32, no-remat plan on each slice comes first
    assert all(c["dtype"] == "float32" and c["remat"] == "none" for c in head)
    assert {(c["config"], c["topology"]) for c in head} == {
        (n, t) for n in ("cityscapes", "ade20k", "coco_stuff") for t in ("v4-8", "v5e-8")
    }
    cmd = table.command(a, cells[0], "c.json")
    assert cmd[:3] == [sys.executable, "-m", "ecgan_jax.plan"]
    assert "--config=configs/cityscapes.py" in cmd and "--topology=v4-8" in cmd
    assert "--config.model.dtype=float32" in cmd and "--config.runtime.remat=none" in cmd
    assert "--batch_per_chip=1" in cmd and "--json=c.json" in cmd
    fit = table.parse_args(["--out=x", "--fit", "--configs=ade20k", "--topologies=v5e-8"])
    assert "--fit" in table.command(fit, table.cells(fit)[0], "c.json")
    extra = table.parse_args(["--out=x", "--set", "contrastive.anchor_selection=global"])
    cell = table.cells(extra)[0]
    assert cell["id"].endswith("_b1_contrastive.anchor_selection-global")
    assert (
        table.command(extra, cell, "c.json")[-1] == "--config.contrastive.anchor_selection=global"
    )
    for bad in (
        ["--dtypes=float16"],
        ["--remat=all"],
        ["--configs=nope"],
        ["--batch_per_chip=0"],
        ["--set", "contrastive"],
    ):
        with pytest.raises(SystemExit):
            table.parse_args(["--out=x", *bad])


def test_runs_resumes_and_reports_failures(tmp_path, monkeypatch):
    table = _table()
    out = tmp_path / "table"
    argv = [f"--out={out}", "--configs=cityscapes,ade20k", "--dtypes=float32",
            "--remat=none", "--topologies=v4-8"]  # fmt: skip
    calls = []

    def fake_run(cmd, cwd, capture_output, text, timeout):
        calls.append(cmd)
        json_path = next(c.split("=", 1)[1] for c in cmd if c.startswith("--json="))
        if "--config=configs/ade20k.py" in cmd:
            return subprocess.CompletedProcess(cmd, 2, "", "Traceback\nValueError: bad thing\n")
        pathlib.Path(json_path).write_text(json.dumps({"plan": _fake_plan(1, 6.3)}))
        return subprocess.CompletedProcess(cmd, 0, "plan: ...", "")

    monkeypatch.setattr(table.subprocess, "run", fake_run)
    rows = table.main(argv)
    assert [r["status"].split()[0] for r in rows] == ["ok", "failed"]
    assert rows[1]["status"] == "failed rc 2: ValueError: bad thing"
    ok = rows[0]
    assert ok["hbm_total_gib"] == pytest.approx(6.3) and ok["fits"] is True
    assert ok["tflop_per_step"] == pytest.approx(11.6) and ok["collective_mib"] == 373
    md = (out / "plan_table.md").read_text().splitlines()
    assert md[0].startswith("| config | dtype | remat | topology |") and len(md) == 4
    assert "6.30 of 32.00" in md[2] and "42.5 (compute, ESTIMATE)" in md[2] and "failed" in md[3]
    assert json.loads((out / "plan_table.json").read_text()) == rows

    # Again: the written cell is read back, the failed one is tried again (and times out).
    calls.clear()

    def timing_out(cmd, cwd, capture_output, text, timeout):
        calls.append(cmd)
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(table.subprocess, "run", timing_out)
    rows = table.main([*argv, "--cell_timeout_s=7"])
    assert len(calls) == 1 and "--config=configs/ade20k.py" in calls[0]
    assert rows[0]["status"] == "ok (from an earlier run)"
    assert rows[0]["hbm_total_gib"] == pytest.approx(6.3)
    assert rows[1]["status"] == "timeout after 7 s"

    # --table_only runs nothing: the written cell, the other one "not planned yet".
    calls.clear()
    rows = table.main([*argv, "--table_only", "--remat=none,spade"])
    assert not calls and len(rows) == 4
    assert [r["status"] for r in rows].count("ok (from an earlier run)") == 1
    assert [r["status"] for r in rows].count("not planned yet") == 3

    # A run over other cells adds to the table: the earlier rows stay, in their order.
    def planning(cmd, cwd, capture_output, text, timeout):
        json_path = next(c.split("=", 1)[1] for c in cmd if c.startswith("--json="))
        pathlib.Path(json_path).write_text(json.dumps({"plan": _fake_plan(8, 27.5)}))
        return subprocess.CompletedProcess(cmd, 0, "plan: ...", "")

    monkeypatch.setattr(table.subprocess, "run", planning)
    before = [r["id"] for r in rows]
    rows = table.main([f"--out={out}", "--configs=cityscapes", "--dtypes=float32",
                       "--remat=none", "--topologies=v4-8", "--batch_per_chip=8"])  # fmt: skip
    assert [r["id"] for r in rows] == [*before, "cityscapes_float32_none_v4-8_b8"]
    assert rows[0]["status"] == "ok (from an earlier run)" and rows[-1]["batch_per_chip"] == 8
    assert json.loads((out / "plan_table.json").read_text()) == rows
    assert len((out / "plan_table.md").read_text().splitlines()) == 2 + len(rows)
    # A row follows its cell's JSON as it is now, not as the table last wrote it.
    cell = out / "cells" / "cityscapes_float32_none_v4-8_b1.json"
    cell.write_text(json.dumps({"plan": {**_fake_plan(1, 6.3), "fits": False}}))
    rows = table.main([*argv, "--table_only", "--configs=ade20k"])
    assert rows[0]["id"] == "cityscapes_float32_none_v4-8_b1" and rows[0]["fits"] is False
    (out / "plan_table.json").write_text("{not json")
    with pytest.raises(SystemExit, match="plan_table.json: not a plan table"):
        table.main([*argv, "--table_only"])


def test_fit_rows_name_the_largest_batch():
    table = _table()
    cell = {"config": "cityscapes", "dtype": "bfloat16", "remat": "spade", "topology": "v4-8",
            "id": "x"}  # fmt: skip
    r = table.row(cell, {"fit": 6, "plan": _fake_plan(6, 30.0), "next": _fake_plan(7, 34.0)}, "ok")
    assert r["batch_per_chip"] == 6 and r["fits"] == "largest: 6 (7 does not)"
