"""Compiled cost of the contrastive anchors' top-k on a data-parallel mesh (docs/DESIGN.md §D.3.4).

    python benchmarks/anchor_sampling_bench.py            # Cityscapes shapes, 8 CPU devices
    python benchmarks/anchor_sampling_bench.py --small    # 1/4 of each side, for a quick look
    python benchmarks/anchor_sampling_bench.py --run      # also time sample_anchors x3

Compiles (no run, nothing allocated) under `jax.jit` with the batch sharded on the `data` axis
of an 8-fake-CPU-device mesh, at the Cityscapes contrastive shapes (layers up_1/up_2/up_3 at
64×128, 128×256, 256×512, D = 128, K = 35, 1024 anchors per layer, cross-scale, both memory
banks, batch 4 per device): (a) `sample_anchors` of the three layers alone, (b) the value and
gradient (w.r.t. the embeddings) of `multiscale_contrastive_loss`. Two anchor selections:
`global` (one top-k over the global batch: the old code, and what a jit traced without a
context mesh still gets) and `per_shard` (the default, traced under `jax.set_mesh(mesh)`).
Per device it prints XLA's FLOPs and bytes accessed (`compiled.cost_analysis()`), the bytes
that each kind of collective produces (the result sizes of all-gather / all-reduce /
collective-permute / all-to-all / reduce-scatter in the compiled HLO), and the largest sort or
TopK operand in elements. `--run` also runs the sampling alone on random labels and prints
its median wall time (the fake devices share the host's cores: a relative figure only).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ecgan_jax.losses import init_memory_bank, multiscale_contrastive_loss, sample_anchors  # noqa: E402
from ecgan_jax.sharding import DATA_AXIS, make_mesh  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "bf16": 2, "s8": 1, "u8": 1}
_ARRAY = re.compile(r"\b(f32|s32|u32|pred|f16|bf16|s8|u8)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([\w\-]+)\((.*)$")


def _arrays(text):
    """[(dtype, elements)] of every array type in an HLO shape string."""
    out = []
    for dtype, dims in _ARRAY.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append((dtype, n))
    return out


def hlo_summary(hlo: str) -> dict:
    """Collective bytes per kind (result sizes) and the largest sort / TopK operand (elements)."""
    shapes, coll, largest_sort = {}, dict.fromkeys(COLLECTIVES, 0), 0
    count = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = shape
        kind = op.removesuffix("-start")
        if kind in COLLECTIVES:
            coll[kind] += sum(n * _BYTES[d] for d, n in _arrays(shape))
            count[kind] += 1
        is_topk = op == "custom-call" and 'custom_call_target="TopK"' in rest
        if op == "sort" or is_topk:
            operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            for o in operands:
                largest_sort = max([largest_sort] + [n for _, n in _arrays(shapes.get(o, ""))])
    return {"collective_bytes": coll, "collective_count": count, "largest_sort": largest_sort}


def build(small: bool):
    mesh = make_mesh(jax.devices()[:8])
    batch = 4 * mesh.devices.size
    sizes = ((64, 128), (128, 256), (256, 512))
    if small:
        sizes = tuple((h // 4, w // 4) for h, w in sizes)
    dim, num_classes, num_anchors = 128, 35, 1024
    shard, rep = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
    embeddings = [
        jax.ShapeDtypeStruct((batch, h, w, dim), jnp.float32, sharding=shard) for h, w in sizes
    ]
    labels = jax.ShapeDtypeStruct((batch,) + sizes[-1], jnp.int32, sharding=shard)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    bank = jax.eval_shape(
        lambda: init_memory_bank(
            num_classes=num_classes, dim=dim, pixel_bank_size=64, region_bank_size=16
        )
    )
    bank = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), bank
    )

    def sampling(selection):
        def fn(labels, key):
            from ecgan_jax.losses import resize_labels_nearest

            return [
                sample_anchors(
                    labels=resize_labels_nearest(labels, size=hw),
                    key=jax.random.fold_in(key, layer),
                    num_anchors=num_anchors,
                    num_classes=num_classes,
                    selection=selection,
                )
                for layer, hw in enumerate(sizes)
            ]

        return fn, (labels, key)

    def loss(selection):
        def fn(embeddings, labels, bank, key):
            def value(embeddings):
                return multiscale_contrastive_loss(
                    embeddings=embeddings,
                    labels=labels,
                    bank=bank,
                    key=key,
                    num_classes=num_classes,
                    num_anchors=num_anchors,
                    temperature=0.1,
                    anchor_selection=selection,
                )

            return jax.value_and_grad(value, has_aux=True)(embeddings)

        return fn, (embeddings, labels, bank, key)

    return mesh, batch, sizes, sampling, loss


def compile_row(mesh, make, selection):
    fn, args = make("global" if selection == "global" else "auto")
    t0 = time.perf_counter()
    if selection == "per_shard":
        with jax.set_mesh(mesh):
            compiled = jax.jit(fn).lower(*args).compile()
    else:
        compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return cost, hlo_summary(compiled.as_text()), seconds


def time_sampling(mesh, make, selection, repeats=5):
    """Median seconds of one call of the compiled sampling on random labels."""
    fn, (labels, key) = make("global" if selection == "global" else "auto")
    values = jax.device_put(
        jax.random.randint(jax.random.PRNGKey(0), labels.shape, -1, 35, jnp.int32),
        labels.sharding,
    )
    key = jax.device_put(jax.random.key_data(jax.random.PRNGKey(1)), key.sharding)
    if selection == "per_shard":
        with jax.set_mesh(mesh):
            compiled = jax.jit(fn).lower(labels, key).compile()
    else:
        compiled = jax.jit(fn).lower(labels, key).compile()
    jax.block_until_ready(compiled(values, key))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(values, key))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1/4 of each feature side")
    parser.add_argument("--run", action="store_true", help="also time sample_anchors x3")
    args = parser.parse_args()
    mesh, batch, sizes, sampling, loss = build(args.small)
    print(
        f"jax {jax.__version__}, {mesh.devices.size} {jax.devices()[0].platform} devices, "
        f"global batch {batch}, layers {sizes}; figures per device"
    )
    print(
        "| program | selection | GFLOP | GB accessed | all-gather MB | all-reduce MB | "
        "other collectives MB | largest sort/TopK (elements) | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, make in (("sample_anchors x3", sampling), ("loss value+grad", loss)):
        for selection in ("global", "per_shard"):
            cost, hlo, seconds = compile_row(mesh, make, selection)
            cb = hlo["collective_bytes"]
            other = sum(v for k, v in cb.items() if k not in ("all-gather", "all-reduce"))
            print(
                f"| {label} | {selection} | {cost.get('flops', 0.0) / 1e9:.3f} | "
                f"{cost.get('bytes accessed', 0.0) / 1e9:.3f} | {cb['all-gather'] / 1e6:.3f} | "
                f"{cb['all-reduce'] / 1e6:.3f} | {other / 1e6:.3f} | {hlo['largest_sort']} | "
                f"{seconds:.1f} |",
                flush=True,
            )
    if args.run:
        for selection in ("global", "per_shard"):
            seconds = time_sampling(mesh, sampling, selection)
            print(f"sample_anchors x3, {selection}: {seconds * 1e3:.0f} ms per call (median)")


if __name__ == "__main__":
    main()
