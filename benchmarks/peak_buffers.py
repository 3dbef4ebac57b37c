"""What XLA:CPU holds at the peak of the compiled train step, read from an XLA dump.

    XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_module_re=.*train_step.*" \
        python benchmarks/train_bench.py --config=configs/cityscapes.py --compile_only
    python benchmarks/peak_buffers.py /tmp/dump [--top=25]

Reads the optimised module's buffer assignment (which values live in the temp allocation, and
their sizes) and live ranges (schedule positions), sums the live temp bytes at every position
of the schedule, and prints: the peak and where it falls, a coarse profile over the step, the
live bytes at the peak grouped by module and pass (G/D/VGG/heads, forward/backward, from the
ops' metadata) and the largest live values with their op names. The sum of live values is a
lower bound of XLA's temp size (the heap simulator also fragments). This is how the fifth
session found the loss reductions scheduled at the end of the step and the VGG activations
kept as float32 (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import re

_VALUE = re.compile(r"\s*value: <\d+ (\S+) @(\S+)> \(size=(\d+),offset=\d+\)")
_RANGE = re.compile(r"^\s+(\S+?)\{([\d,]*)\}:(\d+)-(\d+)$", re.M)
_OP = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) [^\n]*?op_name=\"([^\"]+)\"", re.M)


def _dump_files(directory: str) -> dict[str, str]:
    suffixes = {
        "assignment": "cpu_after_optimizations-buffer-assignment.txt",
        "live": "cpu_after_optimizations-live-range.txt",
        "hlo": "cpu_after_optimizations.txt",
    }
    names = sorted(os.listdir(directory))
    out = {}
    for key, suffix in suffixes.items():
        hits = [n for n in names if "train_step" in n and n.endswith(suffix)]
        if not hits:
            raise SystemExit(
                f"{directory}: no '*train_step*{suffix}' (dump with --xla_dump_to and "
                "--xla_dump_hlo_module_re=.*train_step.*; see this file's docstring)"
            )
        out[key] = os.path.join(directory, hits[-1])
    return out


def temp_values(assignment_text: str) -> dict[tuple[str, str], int]:
    """(instruction, shape index) -> bytes, for the values in the preallocated temp buffer."""
    sizes, in_temp = {}, False
    for line in assignment_text.splitlines():
        if line.startswith("allocation "):
            in_temp = "preallocated-temp" in line
            continue
        m = _VALUE.match(line)
        if m and in_temp:
            sizes[m.group(1), m.group(2)] = int(m.group(3))
    return sizes


def group_of(op_name: str) -> str:
    """Model part and pass of an instruction (G/D/VGG/heads/contrastive, forward/backward)."""
    op = op_name.replace("jit(train_step)/", "")
    module = "other"
    for key, name in (
        ("VGG", "VGG"),
        ("Discriminator", "D"),
        ("ProjectionHead", "heads"),
        ("contrastive", "contrastive"),
        ("Generator", "G"),
    ):
        if key in op:
            module = name
            break
    return f"{module} {'backward' if 'transpose(' in op else 'forward'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", help="directory given to --xla_dump_to")
    parser.add_argument("--top", type=int, default=25, help="largest live values to list")
    args = parser.parse_args()
    files = _dump_files(args.dump)
    with open(files["assignment"]) as f:
        sizes = temp_values(f.read())
    with open(files["live"]) as f:
        live_text = f.read()
    with open(files["hlo"]) as f:
        ops = {m.group(1): m.group(3) for m in _OP.finditer(f.read())}
    head, _, ranges_text = live_text.partition("BufferLiveRange")
    order = dict((int(i), n) for i, n in re.findall(r"^\s+(\d+):(\S+)$", head, re.M))
    values = []
    for name, index, start, end in _RANGE.findall(ranges_text):
        size = sizes.get((name, index.replace(",", "") or "0"))
        if size:
            values.append((name, int(start), int(end), size))
    if not values:
        raise SystemExit(f"{files['live']}: no live range matched a temp value")
    length = max(v[2] for v in values) + 2
    delta = [0] * (length + 1)
    for _, start, end, size in values:
        delta[start] += size
        delta[end + 1] -= size
    live, running = [], 0
    for t in range(length):
        running += delta[t]
        live.append(running)
    peak = max(range(length), key=live.__getitem__)
    at_peak = sorted((v for v in values if v[1] <= peak <= v[2]), key=lambda v: -v[3])
    print(
        f"{len(values)} temp values; live bytes peak at {live[peak] / 1e9:.3f} GB, position "
        f"{peak} of {length} ({order.get(peak, '?')}: {ops.get(order.get(peak, ''), '')})"
    )
    step = max(1, length // 30)
    print(
        "profile (position: GB):",
        " ".join(f"{t}:{live[t] / 1e9:.2f}" for t in range(0, length, step)),
    )
    groups = collections.Counter()
    for name, _, _, size in at_peak:
        groups[group_of(ops.get(name, ""))] += size
    print("live at the peak by module and pass:")
    for group, size in groups.most_common():
        print(f"  {size / 1e9:.3f} GB  {group}")
    print(f"largest {args.top} live values at the peak (GB, value, live from-to, op):")
    for name, start, end, size in at_peak[: args.top]:
        op = ops.get(name, "(no metadata: a copy or a parameter)").replace("jit(train_step)/", "")
        print(f"  {size / 1e9:.3f}  {name}  {start}-{end}  {op[-110:]}")


if __name__ == "__main__":
    main()
