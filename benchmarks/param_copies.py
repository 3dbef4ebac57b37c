"""Which donated state buffers XLA copies in the compiled train step, and why.

    python benchmarks/param_copies.py --config=configs/cityscapes.py:smoke [--top=20]

The train step donates its state, so each new parameter can be written into the buffer of the
old one. XLA's copy insertion copies a donated parameter instead when some reader of the old
value is not ordered before that write by data dependencies; the copy is then live for most of
the step (0.39 GB of G kernels at the full Cityscapes config). This compiles the step (batch 1,
one device, `jax_disable_most_optimizations` off as in training), lists every
`copy(parameter)` in the optimised HLO with the state leaf it copies, and for the largest ones
the readers of the copy that are not ancestors of the leaf's new value: those are the reads
that force the copy. Shapes are small at the smoke configs but the structure is the same.
"""

from __future__ import annotations

import argparse
import collections
import re

import jax
import numpy as np
from step_timing import compile_step

from ecgan_jax.config_lib import apply_override, load_config, validate_config
from ecgan_jax.data.pseudo import pseudo_batch
from ecgan_jax.sharding import global_batch, make_mesh
from ecgan_jax.training.loop import build_trainer

_DEF = re.compile(r"\s*(?:ROOT )?%(\S+) = (.*)$")


def entry_graph(hlo_text: str):
    """(definitions, operands) of the entry computation's instructions, by name."""
    entry = hlo_text.split("\nENTRY", 1)[1]
    defs = {}
    for line in entry.splitlines():
        m = _DEF.match(line)
        if m:
            defs[m.group(1)] = m.group(2)
    operands = {n: [t for t in re.findall(r"%([\w.\-]+)", d) if t in defs] for n, d in defs.items()}
    root = re.search(r"ROOT %(\S+) =", entry).group(1)
    return defs, operands, root


def ancestors(node, operands):
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(operands[n])
    return seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cityscapes.py:smoke")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides: field=value")
    args = parser.parse_args()

    config = load_config(args.config)
    config.batch_size = 1
    config.perceptual.random_weights = True  # as train_bench.py: no VGG file needed
    for override in args.set:
        apply_override(config, override)
    validate_config(config)
    trainer = build_trainer(config, make_mesh(jax.devices()[:1]), dataset_size=100)
    state = trainer.abstract_state
    batch = global_batch(pseudo_batch(config), trainer.mesh)
    compiled, _ = compile_step(trainer.step_fn, state, batch, trainer.vgg_params)
    defs, operands, root = entry_graph(compiled.as_text())

    # Unused inputs are pruned from the HLO, so parameters are named by their metadata.
    state_index = {
        "state" + jax.tree_util.keystr(path): i
        for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0])
    }
    copies = []  # (bytes, input name, copy instruction)
    for n, d in defs.items():
        m = re.match(r"(\w+)\[([\d,]*)\]\S* copy\(%([^)]+)\)", d)
        source = defs.get(m.group(3), "") if m else ""
        if " parameter(" in source:
            name = re.search(r'op_name="([^"]*)"', source).group(1).replace("\\'", "'")
            dims = [int(v) for v in m.group(2).split(",") if v]
            nbytes = int(np.prod(dims)) * int(re.sub(r"\D", "", m.group(1)) or 8) // 8
            copies.append((nbytes, name, n))
    copies.sort(reverse=True)
    total = sum(c[0] for c in copies)
    print(
        f"{len(copies)} donated buffers copied, {total / 1e6:.2f} MB; XLA temp "
        f"{compiled.memory_analysis().temp_size_in_bytes / 1e9:.3f} GB"
    )
    outputs = operands[root]
    users = collections.defaultdict(list)
    for n, ops in operands.items():
        for o in ops:
            users[o].append(n)
    for nbytes, name, copy in copies[: args.top]:
        print(f"{nbytes / 1e6:9.3f} MB  {name}")
        if name not in state_index:
            continue
        before_write = ancestors(outputs[state_index[name]], operands)
        for u in users[copy]:
            if u not in before_write:
                op = re.search(r'op_name="([^"]*)"', defs[u])
                print(f"             unordered reader {u}: {op.group(1)[-110:] if op else ''}")


if __name__ == "__main__":
    main()
