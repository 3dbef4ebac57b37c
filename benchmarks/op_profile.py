"""Where the compiled train step spends its time on CPU, op by op, from a profiler trace.

    python benchmarks/op_profile.py --config=configs/cityscapes.py --batch=2 \
        --set model.ngf=16 model.ndf=16 dataset.image_size=128,256 [--top=40]

Compiles the train step as `train_bench.py` does (random VGG19 weights, the CLI's XLA flags),
runs two warm-up steps, then traces `--steps` steps with `jax.profiler` and sums the wall time
of every XLA:CPU thunk (one event per HLO instruction executed) over the traced steps. Each
instruction is named by its `op_name` metadata in the optimised HLO (`compiled.as_text()`), so
the report says which model part and pass (forward, `transpose(...)` = backward) the time
belongs to. Prints: the traced step time, the time by kind of instruction (convolution, dot,
fusion, custom call, ...), by model part and pass (G/D/VGG/heads/contrastive, as
`peak_buffers.py` groups them), and the most expensive instructions with their shapes.

Thunk times of two threads can overlap (XLA:CPU runs independent thunks concurrently), so the
sums can exceed the step time; the shares are still what to look at.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

from peak_buffers import group_of  # the same grouping as the memory report

_META = re.compile(r'op_name="([^"]+)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, shape, op_name, calls} for every instruction in the module."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\(", line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        meta = _META.search(line)
        calls = _CALLS.search(line)
        out[name] = {
            "opcode": opcode,
            "shape": shape[:80],
            "op_name": meta.group(1) if meta else "",
            "calls": calls.group(1) if calls else None,
        }
    return out


def fused_root_opcodes(hlo_text: str) -> dict[str, str]:
    """Fused computation name -> the opcodes inside it that do the work (conv/dot/reduce)."""
    out, current, ops = {}, None, set()
    for line in hlo_text.splitlines():
        head = re.match(r"^%?([\w.\-]+) \(.*\) -> .* \{$", line)
        if head:
            current, ops = head.group(1), set()
            continue
        if current and line.startswith("}"):
            out[current] = ",".join(sorted(ops)) or "elementwise"
            current = None
            continue
        if current:
            m = re.match(r"^\s*(?:ROOT )?%?[\w.\-]+ = .+? ([\w\-]+)\(", line)
            if m and m.group(1) in (
                "convolution",
                "dot",
                "reduce",
                "reduce-window",
                "scatter",
                "gather",
                "select-and-scatter",
                "sort",
                "transpose",
            ):
                ops.add(m.group(1))
    return out


def _thunk_events(trace_dir: str):
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    files += glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        raise SystemExit(f"no trace file under {trace_dir}")
    with gzip.open(sorted(files)[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def thunk_seconds(run_once, instrs: dict, steps: int) -> collections.Counter:
    """Seconds per call of `run_once()` spent in each HLO instruction of `instrs`, traced."""
    import jax

    trace_dir = tempfile.mkdtemp(prefix="op_profile_")
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            run_once()
    by_instr = collections.Counter()
    for e in _thunk_events(trace_dir):
        if e["name"] in instrs:
            by_instr[e["name"]] += e["dur"] / 1e6 / steps
    return by_instr


def run(args) -> None:
    from ecgan_jax.xla_cpu.hostmem import limit_malloc_arenas

    limit_malloc_arenas()
    import jax
    from step_timing import compile_step, median_step_seconds

    from ecgan_jax.config_lib import apply_override, load_config, validate_config
    from ecgan_jax.data.pseudo import pseudo_batch
    from ecgan_jax.sharding import global_batch, make_mesh
    from ecgan_jax.training.loop import build_trainer

    config = load_config(args.config)
    config.batch_size = args.batch
    config.perceptual.random_weights = True
    for a in args.set:
        apply_override(config, a)
    validate_config(config)
    trainer = build_trainer(config, make_mesh(jax.devices()[:1]), dataset_size=1000)
    state = trainer.init_state()
    batch = global_batch(pseudo_batch(config, batch=args.batch), trainer.mesh)
    compiled, _ = compile_step(trainer.step_fn, state, batch, trainer.vgg_params)
    hlo = compiled.as_text()
    instrs = hlo_instructions(hlo)
    fused = fused_root_opcodes(hlo)
    step_s, state = median_step_seconds(compiled, state, batch, trainer.vgg_params, 1)
    holder = [state]

    def one_step():
        holder[0], metrics = compiled(holder[0], batch, trainer.vgg_params)
        jax.block_until_ready(metrics)

    by_instr = thunk_seconds(one_step, instrs, args.steps)
    total = sum(by_instr.values())
    print(
        f"untraced step {step_s:.3f} s; thunk time per step {total:.3f} s "
        f"({len(by_instr)} instructions seen of {len(instrs)})"
    )

    def kind_of(name):
        ins = instrs[name]
        if ins["opcode"] == "fusion" and ins["calls"]:
            return f"fusion[{fused.get(ins['calls'], '?')}]"
        return ins["opcode"]

    for title, key in (("kind", kind_of), ("part", lambda n: group_of(instrs[n]["op_name"]))):
        agg = collections.Counter()
        for n, t in by_instr.items():
            agg[key(n)] += t
        print(f"\n| {title} | s/step | share |\n|---|---|---|")
        for k, t in agg.most_common(args.top):
            print(f"| {k} | {t:.3f} | {t / total:.1%} |")
    if args.save:
        rows = [dict(instrs[n], name=n, kind=kind_of(n), seconds=t) for n, t in by_instr.items()]
        with open(args.save, "w") as f:
            json.dump({"step_s": step_s, "rows": rows}, f)
        with open(args.save + ".hlo.txt", "w") as f:
            f.write(hlo)
    print("\n| instruction | kind | s/step | shape | op_name |\n|---|---|---|---|---|")
    ranked = [(n, t) for n, t in by_instr.most_common() if args.kind in (None, kind_of(n))]
    for n, t in ranked[: args.top]:
        ins = instrs[n]
        op = ins["op_name"].replace("jit(train_step)/", "")
        print(f"| {n} | {kind_of(n)} | {t:.4f} | {ins['shape']} | {op[-110:]} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/cityscapes.py:smoke")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="traced steps")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    p.add_argument("--kind", default=None, help="list the top instructions of this kind only")
    p.add_argument(
        "--save",
        default=None,
        help="also write the per-instruction table as JSON (and the HLO to SAVE.hlo.txt)",
    )
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        run(a)
        return
    env = dict(os.environ)
    from ecgan_jax.xla_cpu.flags import set_cpu_scheduler_flag

    set_cpu_scheduler_flag(env)  # as `python -m ecgan_jax.main` does
    raise SystemExit(
        subprocess.run([sys.executable, __file__, "--_child", *sys.argv[1:]], env=env).returncode
    )


if __name__ == "__main__":
    main()
