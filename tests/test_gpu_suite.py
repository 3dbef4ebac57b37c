"""benchmarks/gpu_suite.sh: the prepared GPU plan, run here on CPU at a tiny size (--smoke).

* One smoke run in a temp out dir: the JSON has one row per planned case, in plan order; each
  row that ran has numbers for its figures or a stated reason per absent figure; the rows that
  did not run say why; the markdown table has a line per row.
* The planner on hand-made probes: the H200 plan (b8 before b16, weak scaling skipped on one
  device, planned for four), a CPU machine without --smoke plans every row as skipped.
* A case over its time is killed with its own children, an exhausted budget skips a case, and
  the peak table picks the longest matching device name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
FIGURES = ("compile_s", "step_s", "images_per_s", "device_peak_gb", "xla_tflop_per_step", "mfu")
# `--smoke` as a user runs it (the budget test below).
SMOKE_PLAN = [
    "jax float32 b1",
    "jax bfloat16 b1",
    "torch float32 b1",
    "scaling float32 b1/device x2",
]
# The smoke run the other tests read: bfloat16 only, which takes the --dtype path float32 (the
# default) does not, and one compile less than SMOKE_PLAN (~25 s of suite time).
SMOKE_FLAGS = ["--dtypes=bfloat16", "--scaling_dtype=bfloat16"]
SMOKE_RUN_PLAN = ["jax bfloat16 b1", "torch float32 b1", "scaling bfloat16 b1/device x2"]


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite_out")
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    cmd = ["bash", "benchmarks/gpu_suite.sh", "--smoke", f"--out={out}", "--peak_tflops=1"]
    cmd += SMOKE_FLAGS
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


@pytest.mark.slow
def test_smoke_has_one_row_per_planned_case(smoke):
    report, _ = smoke
    assert report["smoke"] and report["plan"] == SMOKE_RUN_PLAN
    assert [r["case"] for r in report["rows"]] == SMOKE_RUN_PLAN
    assert report["environment"]["backend"] == "cpu"
    for r in report["rows"]:
        if r["status"] != "ok":
            assert r["status"] == "skipped" and r["kind"] == "torch", r
            assert r["reason"].startswith("torch does not import"), r
            continue
        for k in FIGURES:
            value = r[k]
            if value is None:
                assert isinstance(r["missing"].get(k), str) and r["missing"][k], (r["case"], k)
            else:
                assert isinstance(value, int | float) and value >= 0, (r["case"], k, value)
        assert r["step_s"] > 0 and r["images_per_s"] > 0
        assert r["images_per_s"] == pytest.approx(
            r["batch_per_device"] * r["devices"] / r["step_s"], rel=0.02
        )
    jax_rows = [r for r in report["rows"] if r["kind"] != "torch"]
    assert all(r["status"] == "ok" for r in jax_rows)
    for r in jax_rows:  # CPU: no device memory stats; MFU against --peak_tflops=1
        assert "GPU only" in r["missing"]["device_peak_gb"]
        assert r["compile_s"] > 0 and r["result"]["dtype"] == r["dtype"]
        if r["xla_tflop_per_step"]:
            want = r["xla_tflop_per_step"] / r["step_s"]
            assert r["mfu"] == pytest.approx(want, rel=1e-3, abs=1e-4)
    scaling = report["rows"][-1]
    assert scaling["devices"] == 2 and scaling["result"]["batch"] == 2
    base = report["rows"][0]
    assert scaling["weak_scaling_eff"] == pytest.approx(base["step_s"] / scaling["step_s"], 1e-2)


@pytest.mark.slow
def test_smoke_torch_rows_ran(smoke):
    pytest.importorskip("torch", reason="PyTorch not installed")
    report, _ = smoke
    rows = [r for r in report["rows"] if r["kind"] == "torch"]
    assert [r["batch_per_device"] for r in rows] == [1]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["result"]["case"] == "train" and r["result"]["device"] == "cpu"
        assert r["compile_s"] is None and "eager" in r["missing"]["compile_s"]


@pytest.mark.slow
def test_smoke_markdown_has_a_line_per_row(smoke):
    report, md = smoke
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| case | devices |")
    assert [ln.split(" | ")[0][2:] for ln in lines[1:]] == report["plan"]


def _args(suite, *flags):
    return suite.parse_args(["--out=unused", *flags])


H200 = {"backend": "gpu", "device_kind": "NVIDIA H200", "device_count": 1, "jax": "x"}


def test_h200_plan_order_scaling_and_peaks():
    suite = _suite()
    plan = suite.make_plan(_args(suite), dict(H200, torch="2", torch_cuda=True))
    assert [c.name for c in plan] == [
        "jax float32 b8",
        "jax bfloat16 b8",
        "torch float32 b8",
        "jax float32 b16",
        "jax bfloat16 b16",
        "torch float32 b16",
        "scaling float32 b8/device",
    ]
    assert all(c.skip is None for c in plan[:-1])
    assert "more than one device" in plan[-1].skip and not plan[-1].broken
    assert "--peak_tflops=494.5" in plan[0].argv and "--peak_tflops=989.5" in plan[1].argv
    assert "--batch=16" in plan[3].argv and "--dtype=bfloat16" in plan[4].argv
    assert "--device=cuda" in plan[2].argv

    four = suite.make_plan(_args(suite), dict(H200, device_count=4, torch_cuda=False))
    scaling = [c for c in four if c.kind == "scaling"]
    assert [(c.devices, c.skip) for c in scaling] == [(2, None), (4, None)]
    assert "--batch=32" in scaling[-1].argv  # weak scaling: 8 per device
    assert all("sees no CUDA device" in c.skip for c in four if c.kind == "torch")


def test_cpu_without_smoke_and_broken_environment_plan_no_case():
    suite = _suite()
    cpu = suite.make_plan(_args(suite), {"backend": "cpu", "device_kind": "cpu", "device_count": 1})
    assert all(c.skip for c in cpu) and "no GPU" in cpu[0].skip
    broken = suite.make_plan(_args(suite), dict(H200, ecgan_jax_error="ModuleNotFoundError: x"))
    assert all(c.broken and "ModuleNotFoundError" in c.skip for c in broken[:-1])


def test_peak_table():
    suite = _suite()
    assert suite.peak_for("NVIDIA H200", "bfloat16", None) == (989.5, "H200 bf16 dense")
    assert suite.peak_for("NVIDIA H200 NVL", "float32", None)[0] == 417.5
    assert suite.peak_for("NVIDIA H100 PCIe", "bfloat16", None)[0] == 756.5
    assert suite.peak_for("NVIDIA H100 80GB HBM3", "bfloat16", None)[0] == 989.5
    assert suite.peak_for("cpu", "float32", None)[0] is None
    assert suite.peak_for("cpu", "float32", 2.0) == (2.0, "--peak_tflops")


def _state(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(ln.split()[1] for ln in f if ln.startswith("State:"))
    except FileNotFoundError:
        return "gone"


def test_case_timeout_kills_its_children_and_budget_skips(tmp_path):
    suite = _suite()
    a = _args(suite, "--smoke", "--case_timeout_s=2")
    grandchild = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    case = suite.Case("hang", "jax", "float32", 1, 1, [sys.executable, "-c", grandchild], 2.0)
    probe = {"backend": "cpu"}
    with open(tmp_path / "log", "w") as log:
        t0 = time.monotonic()
        row = suite.run_case(case, time.monotonic() + 100, a, probe, dict(os.environ), log)
        assert time.monotonic() - t0 < 20
        assert row["status"] == "failed" and row["reason"].startswith("timeout after 2 s")
        pid = next(int(ln) for ln in (tmp_path / "log").read_text().splitlines() if ln.isdigit())
        deadline = time.monotonic() + 5
        while _state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _state(pid) in ("gone", "Z")

        late = suite.run_case(case, time.monotonic() + 1, a, probe, dict(os.environ), log)
    assert late["status"] == "skipped" and late["reason"].startswith("budget: ")
    assert "--min_case_s=5" in late["reason"]


def test_failure_reasons():
    suite = _suite()
    oom = "...\njaxlib.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes\n"
    assert suite._failure_reason(1, oom).startswith("OOM: jaxlib.XlaRuntimeError")
    assert "SIGKILL" in suite._failure_reason(-9, "")
    assert suite._failure_reason(2, "Traceback\nValueError: bad\n") == "error rc 2: ValueError: bad"


@pytest.mark.slow
def test_budget_ends_the_suite_with_a_row_per_case(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = ["bash", "benchmarks/gpu_suite.sh", "--smoke", f"--out={tmp_path}", "--budget_s=12"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [r["case"] for r in report["rows"]] == SMOKE_PLAN
    # The probe and the first case or two fit; the case running at the deadline is stopped
    # there, the rest are skipped: each row says which, and the suite ends at its budget.
    assert report["rows"][-1]["status"] == "skipped"
    for r in report["rows"]:
        if r["status"] == "failed":
            assert "at the budget's end" in r["reason"], r
        elif r["status"] == "skipped":
            assert r["reason"].startswith("budget: "), r
    assert proc.returncode == int(any(r["status"] == "failed" for r in report["rows"]))
    assert report["elapsed_s"] < 12 + 10
