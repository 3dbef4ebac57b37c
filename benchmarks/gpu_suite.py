"""The prepared GPU benchmark plan: every figure a lent GPU should give, inside one time budget.

    bash benchmarks/gpu_suite.sh             # on the GPU machine; to $OUT, else ./gpu_suite_out
    bash benchmarks/gpu_suite.sh --smoke     # the same code path on CPU at a tiny size
    python benchmarks/gpu_suite.py --budget_s=300 --batches=8 --dtypes=bfloat16 --no_torch

Why a plan: a GPU is lent for minutes, rarely, so what to measure is decided here, beforehand.
For the full Cityscapes config (configs/cityscapes.py) it runs, per batch per device (8, 16)
and per model.dtype (float32, bfloat16), benchmarks/train_bench.py on one device (compile time,
step time, images/s, device peak memory, XLA's FLOP count); then the PyTorch reference iteration
(benchmarks/torch_reference.py --device=cuda, float32) at the same batches; then weak scaling
(train_bench at N × batch on N devices against the 1-device row) where the machine has N > 1.

Each case is its own process group with its own timeout (at most what is left of --budget_s),
so an OOM, a crash or a hang costs that case only; a case that fails, times out or does not fit
the budget is a row saying why, never left out. The JSON (gpu_suite.json), the markdown table
(gpu_suite.md) and the cases' logs (gpu_suite.log) are rewritten after every case, so a suite
stopped from outside still leaves what it measured. MFU is XLA's FLOPs per step over the step
time and the device's dense peak for the row's dtype (PEAKS, or --peak_tflops). `--smoke` runs
the same plan on CPU (configs/synthetic.py:smoke without VGG19, batch 1, one timed step, weak
scaling on 2 fake CPU devices; tests/test_gpu_suite.py) so it cannot rot: its figures mean
nothing. Figures from a real run go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense (no sparsity) peak TFLOP/s per device by jax's device_kind (first match wins, so the
# longer names come first). Source: NVIDIA's datasheets (H200 and H100 Tensor Core GPU,
# A100 Tensor Core GPU), whose tensor-core rates are quoted with 2:4 sparsity and are halved
# here. "float32" is the TF32 tensor-core rate: with XLA's default precision (and cuDNN's, in
# torch) float32 convolutions may run in TF32 on these GPUs; "float32_no_tf32" is the plain
# FP32 rate, given beside it for float32 rows.
PEAKS = (  # (device_kind contains, {dtype: TFLOP/s})
    ("H200 NVL", {"bfloat16": 835.5, "float32": 417.5, "float32_no_tf32": 60.0}),
    ("H200", {"bfloat16": 989.5, "float32": 494.5, "float32_no_tf32": 67.0}),
    ("H100 NVL", {"bfloat16": 835.5, "float32": 417.5, "float32_no_tf32": 60.0}),
    ("H100 PCIe", {"bfloat16": 756.5, "float32": 378.0, "float32_no_tf32": 51.0}),
    ("H100", {"bfloat16": 989.5, "float32": 494.5, "float32_no_tf32": 67.0}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0, "float32_no_tf32": 19.5}),
)
PEAK_BASIS = {"bfloat16": "bf16 dense", "float32": "tf32 dense"}
NUMERIC = ("compile_s", "step_s", "images_per_s", "device_peak_gb", "xla_tflop_per_step", "mfu")
OOM_MARKS = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemoryError", "Out of memory")
JSON_NAME, MD_NAME, LOG_NAME = "gpu_suite.json", "gpu_suite.md", "gpu_suite.log"

# Run in a subprocess before the plan is made: what the cases will find (backend, devices,
# whether the project and torch import), without keeping the device.
PROBE = r"""
import json
out = {}
try:
    import jax
    devices = jax.devices()
    out.update(backend=jax.default_backend(), device_kind=devices[0].device_kind,
               device_count=len(devices), jax=jax.__version__)
except Exception as e:
    out["jax_error"] = f"{type(e).__name__}: {e}"
try:
    import ecgan_jax.training.loop  # what train_bench.py and torch_reference.py import
except Exception as e:
    out["ecgan_jax_error"] = f"{type(e).__name__}: {e}"
try:
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@dataclass
class Case:
    """One planned measurement: a command, its device restriction and its own time limit."""

    name: str
    kind: str  # "jax" | "torch" | "scaling"
    dtype: str
    batch: int  # per device
    devices: int
    argv: list = field(default_factory=list)
    timeout_s: float = 0.0
    skip: str | None = None  # why it is not run (set when planned)
    broken: bool = False  # not run because the environment is broken: a failure, not a skip


def peak_for(device_kind: str, dtype: str, override: float | None):
    """(TFLOP/s, basis) for MFU, or (None, why not)."""
    if override:
        return override, "--peak_tflops"
    for name, peaks in PEAKS:
        if name.lower() in device_kind.lower():
            return peaks[dtype], f"{name} {PEAK_BASIS[dtype]}"
    return None, f"no peak for device kind {device_kind!r} in PEAKS (pass --peak_tflops)"


def _device_env(env: dict, backend: str, n: int) -> dict:
    """env restricted to the first n devices: CUDA_VISIBLE_DEVICES on GPU, fake CPU devices."""
    env = dict(env)
    if backend == "gpu":
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(n)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    elif backend == "cpu":
        flags = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
    return env


def _scaling_counts(spec: str, available: int) -> list[int]:
    if spec != "auto":
        return [int(x) for x in spec.split(",") if x.strip()]
    counts = [n for n in (2, 4, 8, 16, 32, 64) if n < available]
    return [*counts, available] if available > 1 else []


def make_plan(a, probe: dict) -> list[Case]:
    """The cases in run order, the most wanted first (b8 before b16): a budget cuts the rest."""
    backend = probe.get("backend", "?")
    sets = ["--set", *a.set] if a.set else []
    jax_env_error = probe.get("jax_error") or probe.get("ecgan_jax_error")
    plan = []

    def jax_case(name, kind, dtype, batch, devices):
        peak, _ = peak_for(probe.get("device_kind", ""), dtype, a.peak_tflops)
        argv = [
            sys.executable,
            "benchmarks/train_bench.py",
            f"--config={a.config}",
            f"--batch={batch * devices}",
            f"--repeats={a.repeats}",
            f"--dtype={dtype}",
            *([f"--peak_tflops={peak}"] if peak else []),
            *sets,
        ]
        return Case(name, kind, dtype, batch, devices, argv, a.case_timeout_s)

    for b in a.batches:
        plan += [jax_case(f"jax {d} b{b}", "jax", d, b, 1) for d in a.dtypes]
        torch_argv = [
            sys.executable,
            "benchmarks/torch_reference.py",
            f"--config={a.config}",
            "--case=train",
            f"--batch={b}",
            f"--repeats={a.repeats}",
            f"--threads={a.torch_threads}",
            f"--device={'cpu' if a.smoke else 'cuda'}",
            *sets,
        ]
        plan.append(
            Case(f"torch float32 b{b}", "torch", "float32", b, 1, torch_argv, a.case_timeout_s)
        )

    counts = _scaling_counts(a.scaling_devices, int(probe.get("device_count", 1)))
    if not counts:
        plan.append(
            Case(
                f"scaling {a.scaling_dtype} b{a.batches[0]}/device",
                "scaling",
                a.scaling_dtype,
                a.batches[0],
                int(probe.get("device_count", 1)),
                skip=f"weak scaling needs more than one device; {backend} has "
                f"{probe.get('device_count', '?')}",
            )
        )
    for n in counts:
        plan.append(
            jax_case(
                f"scaling {a.scaling_dtype} b{a.batches[0]}/device x{n}",
                "scaling",
                a.scaling_dtype,
                a.batches[0],
                n,
            )
        )
        if n > int(probe.get("device_count", 0)) and backend != "cpu":  # CPU devices are made
            plan[-1].skip = f"{n} devices asked, {probe.get('device_count', '?')} present"

    for c in plan:
        if c.skip:
            continue
        if jax_env_error:
            c.skip, c.broken = f"environment: {jax_env_error}", True
        elif not a.smoke and backend != "gpu":
            c.skip = f"no GPU: jax's backend is {backend} (--smoke is the CPU check)"
        elif c.kind == "torch" and a.no_torch:
            c.skip = "--no_torch"
        elif c.kind == "torch" and "torch_error" in probe:
            c.skip = f"torch does not import: {probe['torch_error']}"
        elif c.kind == "torch" and not a.smoke and not probe.get("torch_cuda"):
            c.skip = f"torch {probe.get('torch')} sees no CUDA device"
    return plan


def _last_json(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _failure_reason(rc: int, stderr: str) -> str:
    if any(m in stderr for m in OOM_MARKS):
        line = next(ln for ln in stderr.splitlines()[::-1] if any(m in ln for m in OOM_MARKS))
        return f"OOM: {line.strip()[:300]}"
    if rc in (-9, 137, 247):
        return f"killed by SIGKILL (rc {rc}; the host's OOM killer?)"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return f"error rc {rc}: {lines[-1][:300] if lines else 'no stderr'}"


def run_subprocess(argv, env, timeout_s):
    """(rc, stdout, stderr, timed_out); the whole process group is killed on timeout."""
    # Its own process group (train_bench.py runs a child of its own: both must go), but the
    # same session, so whoever stops this suite's session stops the cases too.
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return proc.returncode, out, err, True
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass


def _row(case: Case, **fields) -> dict:
    row = {
        "case": case.name,
        "kind": case.kind,
        "dtype": case.dtype,
        "batch_per_device": case.batch,
        "devices": case.devices,
        "status": "ok",
        "reason": None,
        **{k: None for k in NUMERIC},
        "peak_tflops": None,
        "peak_basis": None,
        "mfu_vs_fp32_no_tf32": None,  # float32 rows: against the plain FP32 rate
        "weak_scaling_eff": None,
        "missing": {},
        "wall_s": None,
        "command": shlex.join(case.argv) if case.argv else None,
        "result": None,
    }
    row.update(fields)
    return row


def fill_row(row: dict, case: Case, r: dict, probe: dict, a) -> dict:
    """Copies the benchmark script's JSON figures into the row; says why any is absent."""
    row["result"] = r
    missing = row["missing"]
    for k in ("step_s", "images_per_s"):
        row[k] = r.get(k)
    if case.kind == "torch":
        missing["compile_s"] = "eager PyTorch: nothing is compiled"
        missing["xla_tflop_per_step"] = "no XLA program (PyTorch)"
        missing["mfu"] = "no FLOP count for the PyTorch iteration (no contrastive loss, no EMA)"
        row["device_peak_gb"] = r.get("device_peak_gb")
        if row["device_peak_gb"] is None:
            missing["device_peak_gb"] = "torch_reference.py reports it with --device=cuda only"
        return row
    row["compile_s"] = r.get("compile_s")
    row["xla_tflop_per_step"] = r.get("xla_tflop_per_step")
    if row["xla_tflop_per_step"] is None:
        missing["xla_tflop_per_step"] = "XLA's cost analysis gave no FLOP count"
    row["device_peak_gb"] = r.get("device_peak_gb")
    if row["device_peak_gb"] is None:
        missing["device_peak_gb"] = (
            f"train_bench.py reads device memory_stats on GPU only (backend {r.get('backend')})"
        )
    peak, basis = peak_for(
        str(r.get("device", probe.get("device_kind", ""))), case.dtype, a.peak_tflops
    )
    if peak is None:
        missing["mfu"] = basis
    elif not row["xla_tflop_per_step"] or not row["step_s"]:
        missing["mfu"] = "no FLOP count or step time"
    else:
        row["peak_tflops"], row["peak_basis"] = peak, basis
        # train_bench's own MFU uses the unrounded FLOP count; recompute only where it has none.
        row["mfu"] = r.get("mfu") or round(row["xla_tflop_per_step"] / row["step_s"] / peak, 4)
        plain = None if a.peak_tflops else _plain_fp32_peak(str(r.get("device", "")))
        if case.dtype == "float32" and plain:
            row["mfu_vs_fp32_no_tf32"] = round(row["xla_tflop_per_step"] / row["step_s"] / plain, 4)
    return row


def _plain_fp32_peak(device_kind: str):
    for name, peaks in PEAKS:
        if name.lower() in device_kind.lower():
            return peaks["float32_no_tf32"]
    return None


def add_scaling_efficiency(rows: list[dict]) -> None:
    """weak_scaling_eff = step_s(1 device) / step_s(N devices), same dtype and batch/device."""
    base = {(r["dtype"], r["batch_per_device"]): r for r in rows if r["kind"] == "jax"}
    for r in rows:
        if r["kind"] != "scaling" or r["status"] != "ok":
            continue
        b = base.get((r["dtype"], r["batch_per_device"]))
        if b and b["status"] == "ok" and b["step_s"] and r["step_s"]:
            r["weak_scaling_eff"] = round(b["step_s"] / r["step_s"], 3)
            r["missing"].pop("weak_scaling_eff", None)
        else:
            r["missing"]["weak_scaling_eff"] = "no 1-device row of this dtype and batch"


def run_case(case: Case, deadline: float, a, probe: dict, base_env: dict, log) -> dict:
    if case.skip:
        return _row(case, status="failed" if case.broken else "skipped", reason=case.skip)
    left = deadline - time.monotonic()
    if left < a.min_case_s:
        return _row(
            case,
            status="skipped",
            reason=f"budget: {max(left, 0):.0f} s left of --budget_s={a.budget_s:g}, "
            f"a case needs --min_case_s={a.min_case_s:g}",
        )
    timeout = min(case.timeout_s, left)
    env = _device_env(base_env, probe.get("backend", "?"), case.devices)
    t0 = time.monotonic()
    rc, out, err, timed_out = run_subprocess(case.argv, env, timeout)
    wall = round(time.monotonic() - t0, 1)
    log.write(f"\n===== {case.name} (rc {rc}, {wall} s)\n$ {shlex.join(case.argv)}\n")
    log.write(out[-20000:] + "\n--- stderr\n" + err[-50000:] + "\n")
    log.flush()
    if timed_out:
        by = "at the budget's end" if timeout < case.timeout_s else "(--case_timeout_s)"
        return _row(
            case, status="failed", reason=f"timeout after {timeout:.0f} s {by}", wall_s=wall
        )
    r = _last_json(out) if rc == 0 else None
    if r is None:
        reason = _failure_reason(rc, err) if rc else "no JSON line on stdout"
        return _row(case, status="failed", reason=reason, wall_s=wall)
    return fill_row(_row(case, wall_s=wall), case, r, probe, a)


def _fmt(v):
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    p = report["environment"]
    lines = [
        f"# ECGAN GPU suite{' (smoke: CPU, figures meaningless)' if report['smoke'] else ''}",
        "",
        f"{report['date']}; {p.get('backend', '?')} / {p.get('device_kind', '?')} × "
        f"{p.get('device_count', '?')}, jax {p.get('jax', '?')}, torch {p.get('torch', '-')}; "
        f"config {report['config']}, repeats {report['repeats']}; budget "
        f"{report['budget_s']:g} s, used {report['elapsed_s']:.0f} s.",
        f"Command: `{report['command']}`",
        "",
        "MFU: XLA's cost-analysis FLOPs / step time / the peak named in its column (float32: "
        "TF32 dense, the plain-FP32 ratio is in the JSON). PyTorch: benchmarks/torch_reference.py "
        "(the authors' iteration: no contrastive loss, no EMA).",
        "",
        "| case | devices | batch/device | dtype | compile s | step s | images/s | "
        "device peak GB | TFLOP/step | MFU | peak TFLOP/s | weak-scaling eff. | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        status = " ".join(status.replace("|", "/").split())  # one table cell
        peak = f"{r['peak_tflops']} ({r['peak_basis']})" if r["peak_tflops"] else "-"
        lines.append(
            f"| {r['case']} | {r['devices']} | {r['batch_per_device']} | {r['dtype']} | "
            f"{_fmt(r['compile_s'])} | {_fmt(r['step_s'])} | {_fmt(r['images_per_s'])} | "
            f"{_fmt(r['device_peak_gb'])} | {_fmt(r['xla_tflop_per_step'])} | {_fmt(r['mfu'])} | "
            f"{peak} | {_fmt(r['weak_scaling_eff'])} | {status} |"
        )
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, report: dict) -> None:
    for name, text in ((JSON_NAME, json.dumps(report, indent=1)), (MD_NAME, markdown(report))):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of positive integers")
    return values


def _dtypes(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or set(values) - set(PEAK_BASIS):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {', '.join(PEAK_BASIS)}")
    return values


def _scaling(text: str) -> str:
    return text if text == "auto" else ",".join(map(str, _positive_ints(text)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_suite_out")
    p.add_argument("--budget_s", type=float, default=480.0, help="the whole plan, probe included")
    p.add_argument("--smoke", action="store_true", help="the same plan on CPU at a tiny size")
    p.add_argument(
        "--config", default=None, help="default configs/cityscapes.py (smoke: synthetic)"
    )
    p.add_argument("--batches", type=_positive_ints, help="per device; default 8,16")
    p.add_argument("--dtypes", type=_dtypes, default=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 10; smoke 1)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every case")
    p.add_argument("--peak_tflops", type=float, default=None, help="one peak for every row's MFU")
    p.add_argument("--case_timeout_s", type=float, default=240.0)
    p.add_argument("--min_case_s", type=float, default=None, help="skip a case with less left")
    p.add_argument("--scaling_devices", type=_scaling, help="'auto' (2, 4, .., N) or a list")
    p.add_argument("--scaling_dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--torch_threads", type=int, default=None)
    p.add_argument("--no_torch", action="store_true", help="plan the PyTorch rows as skipped")
    a = p.parse_args(argv)
    smoke_defaults = dict(
        config="configs/synthetic.py:smoke",
        batches=[1],
        repeats=1,
        min_case_s=5.0,
        scaling_devices="2",
        torch_threads=1,
    )
    gpu_defaults = dict(
        config="configs/cityscapes.py",
        batches=[8, 16],
        repeats=10,
        min_case_s=30.0,
        scaling_devices="auto",
        torch_threads=min(8, os.cpu_count() or 1),
    )
    for k, v in (smoke_defaults if a.smoke else gpu_defaults).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.smoke:
        # The GPU program (runtime.cpu_kernels is off there), without VGG19: the suite's code
        # path is the same and a CPU case takes half the time.
        a.set = ["runtime.cpu_kernels=off", "perceptual.enabled=False", *a.set]
    return a


def base_env(a) -> tuple[dict, bool]:
    """(the cases' environment, whether it names a compilation cache made for this run)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if a.smoke:
        env["JAX_PLATFORMS"] = "cpu"
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # figures are meaningless; compile fast
    if not env.get("JAX_COMPILATION_CACHE_DIR"):
        # A cache new to this run: the cases' train steps differ (batch, dtype, devices), so
        # each compile_s stays a cold compile, while what they share (the initialisers, VGG)
        # compiles once. A cache kept from an earlier run would make compile_s a cache read.
        env["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpu_suite_jax_cache_")
        return env, True
    return env, False


def probe_machine(a, env: dict, log) -> dict:
    """What the cases will find, from a subprocess that lets the device go again."""
    probe_env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    rc, out, err, timed_out = run_subprocess(
        [sys.executable, "-c", PROBE], probe_env, min(120.0, a.budget_s)
    )
    log.write(f"===== probe (rc {rc})\n{out}\n--- stderr\n{err[-20000:]}\n")
    return _last_json(out) or {
        "jax_error": "probe timed out" if timed_out else _failure_reason(rc, err)
    }


def run_plan(a, env: dict, report: dict, t_start: float) -> None:
    """Probes, plans and runs every case, rewriting the report after each."""
    deadline = t_start + a.budget_s
    with open(os.path.join(a.out, LOG_NAME), "w") as log:
        report["environment"] = probe = probe_machine(a, env, log)
        plan = make_plan(a, probe)
        report["plan"] = [c.name for c in plan]
        write_report(a.out, report)
        print(f"plan ({len(plan)} cases): {', '.join(report['plan'])}", file=sys.stderr)
        for i, case in enumerate(plan):
            rows = report["rows"]
            rows.append(run_case(case, deadline, a, probe, env, log))
            add_scaling_efficiency(rows)
            report["elapsed_s"] = round(time.monotonic() - t_start, 1)
            write_report(a.out, report)
            r = rows[-1]
            detail = f"step {r['step_s']} s" if r["status"] == "ok" else r["reason"]
            print(
                f"[{report['elapsed_s']:6.0f} s] {i + 1}/{len(plan)} {case.name}: "
                f"{r['status']}, {detail}",
                file=sys.stderr,
                flush=True,
            )


def _stop(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through run_subprocess, which kills the case


def main(argv=None) -> int:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    t_start = time.monotonic()
    os.makedirs(a.out, exist_ok=True)
    env, own_cache = base_env(a)
    report = {
        "suite": "benchmarks/gpu_suite.py",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(
            ["benchmarks/gpu_suite.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "smoke": a.smoke,
        "config": a.config,
        "repeats": a.repeats,
        "budget_s": a.budget_s,
        "elapsed_s": 0.0,
        "jax_compilation_cache": (
            "fresh for this run" if own_cache else env["JAX_COMPILATION_CACHE_DIR"]
        ),
        "peaks_source": "PEAKS in benchmarks/gpu_suite.py (NVIDIA datasheets, dense)",
        "environment": {},
        "plan": [],
        "rows": [],
    }
    try:
        run_plan(a, env, report, t_start)
    finally:
        report["elapsed_s"] = round(time.monotonic() - t_start, 1)
        write_report(a.out, report)
        if own_cache:
            shutil.rmtree(env["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    print(markdown(report))
    probe = report["environment"]
    failed = [r for r in report["rows"] if r["status"] == "failed"]
    return 1 if failed or "jax_error" in probe or "ecgan_jax_error" in probe else 0


if __name__ == "__main__":
    sys.exit(main())
