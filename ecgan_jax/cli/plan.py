r"""Plan a TPU run without a TPU: compile the real train step for a TPU topology on this host.

    python -m ecgan_jax.plan --config=configs/cityscapes.py --topology=v4-8 \
        [--batch_per_chip=1 | --fit] [--hbm_gib=32] [--config.model.dtype=bfloat16] \
        [--config.runtime.remat=none|spade|blocks] \
        [--json=FILE] [--nocache]

libtpu (`pip install libtpu`, the version `jax[tpu]` pins) compiles for a TPU topology on a
machine that has none (`jax.experimental.topologies.get_topology_desc`). The train step is the
one training runs (`training.step.make_train_step` + `jit_train_step`, with the backend hooks
`xla_cpu.runtime_for` picks for a TPU mesh, i.e. none of the CPU machinery), lowered on
`jax.ShapeDtypeStruct`s that carry the mesh's shardings: nothing is allocated or run.

Printed per chip (XLA's figures for the partitioned program): argument, output, temporary and
generated-code bytes (`memory_analysis()`) and their total against the HBM libtpu gives one
program (the chip's less what it keeps back; libtpu's own compile check let a program over it
through); FLOPs and bytes accessed per step (`cost_analysis()`), their ratio (arithmetic
intensity), a roofline step-time estimate max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth)
(a lower bound, not a measurement), and the bytes that enter collectives (operands of
all-gather, all-reduce, reduce-scatter and all-to-all in the compiled HLO). `--fit` searches
the largest per-chip batch whose total fits in HBM (sizes chosen by a line through the plans so
far, the answer always a compiled fit and a compiled next size that does not). Each result is
cached in `$XDG_CACHE_HOME/ecgan_jax/plans/` (default `~/.cache/...`) by a hash of the config
JSON, the topology and the batch, so a second plan or a `--fit` over known sizes compiles
nothing.

Topologies: Cloud names (`v4-8` and `v5p-8` count TensorCores, two per chip, megacore;
`v5e-4` / `v5litepod-4` and `v6e-4` count chips) or libtpu's own `v4:2x2x1`, `v5e:2x2`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence

from absl import flags

from ecgan_jax.cli import flags as cli_flags

__all__ = [
    "CHIPS",
    "Chip",
    "Topology",
    "abstract_step",
    "cache_dir",
    "collective_bytes",
    "define_flags",
    "fit_batch",
    "format_plan",
    "hbm_shortfall",
    "main",
    "oversized_program",
    "plan",
    "plan_step",
    "probe_usable_hbm",
    "resolve_topology",
    "run",
    "tpu_devices",
]

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation's per-chip figures (Google's Cloud TPU system-architecture pages)."""

    generation: str
    hbm_bytes: int  # the chip's HBM as published
    usable_hbm_bytes: int  # what libtpu lets one program have (the rest it keeps back)
    peak_bf16_flops: float  # FLOP/s
    hbm_bandwidth: float  # bytes/s
    cores_per_chip: int  # TensorCores; a Cloud name `vX-N` counts these for v4 and v5p
    dims: int  # 3: 3-D torus (v4, v5p); 2: 2-D (v5e, v6e)
    source: str


# Per-chip figures from cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} ("system architecture").
# v5e checked against the stored page (197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s); the others
# are the published values as remembered, not re-checked here. The usable HBM is the
# "available HBM" of libtpu 0.0.42's out-of-HBM compile error for each generation
# (`probe_usable_hbm`; tests/test_plan.py checks the table against the installed libtpu).
CHIPS = {
    "v4": Chip("v4", 32 * GIB, int(30.75 * GIB), 275e12, 1.2e12, 2, 3,
               "cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 16 * GIB, int(15.75 * GIB), 197e12, 0.819e12, 1, 2,
                "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 95 * GIB, int(95.74 * GIB), 459e12, 2.765e12, 2, 3,
                "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 32 * GIB, int(31.25 * GIB), 918e12, 1.64e12, 1, 2,
                "cloud.google.com/tpu/docs/v6e"),
}  # fmt: skip
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}
# Chip counts -> libtpu topology shapes of a single slice.
_SHAPES = {
    3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"},
    2: {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: `name` as given, libtpu's `libtpu_name` (e.g. v4:2x2x1), `chips`."""

    name: str
    chip: Chip
    libtpu_name: str
    chips: int

    @property
    def chip_config_name(self) -> str | None:
        # Megacore: one JAX device per chip, its two TensorCores used as one.
        return "megacore" if self.chip.cores_per_chip == 2 else None


def _allowed_topologies() -> str:
    names = []
    for gen, chip in CHIPS.items():
        per = chip.cores_per_chip
        names.append(f"{gen}-{{{','.join(str(n * per) for n in _SHAPES[chip.dims])}}}")
    return "; ".join(names) + "; or libtpu's <gen>:<AxB[xC]>, e.g. v4:2x2x1, v5e:2x2"


def resolve_topology(name: str) -> Topology:
    """`Topology` of a Cloud name (`v4-8`) or a libtpu name (`v4:2x2x1`); ValueError naming
    the allowed values otherwise."""
    text = str(name).strip().lower()
    m = re.fullmatch(r"([a-z0-9]+)[-:](\d+(?:x\d+)*)", text)
    gen = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if m is None or gen not in CHIPS:
        raise ValueError(f"--topology={name!r}: unknown; allowed: {_allowed_topologies()}")
    chip = CHIPS[gen]
    size = m.group(2)
    if "x" in size:
        dims = [int(v) for v in size.split("x")]
        if len(dims) != chip.dims or min(dims) < 1:
            raise ValueError(f"--topology={name!r}: {gen} takes {chip.dims} dimensions")
        return Topology(name, chip, f"{gen}:{size}", math.prod(dims))
    count = int(size)
    chips, rest = divmod(count, chip.cores_per_chip)
    if rest or chips not in _SHAPES[chip.dims]:
        raise ValueError(f"--topology={name!r}: no such slice; allowed: {_allowed_topologies()}")
    return Topology(name, chip, f"{gen}:{_SHAPES[chip.dims][chips]}", chips)


def tpu_devices(topology: Topology) -> list:
    """The topology's TPU devices (compile-only: they can be compiled for, not run on)."""
    # A second process with libtpu loaded (another planner, a test worker) is fine for
    # compiling; without this libtpu refuses to load twice on one host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise ValueError(
            "the planner needs libtpu to compile for a TPU without one: pip install libtpu "
            "(the version jax[tpu] pins; see setup.cfg's `tpu` extra)"
        ) from e
    from jax.experimental import topologies

    kwargs = {}
    if topology.chip_config_name:
        kwargs["chip_config_name"] = topology.chip_config_name
    desc = topologies.get_topology_desc(
        topology_name=topology.libtpu_name, platform="tpu", **kwargs
    )
    return list(desc.devices)


# --------------------------------------------------------------------------- the step


def abstract_step(config, mesh, batch_per_chip: int, dataset_size: int = 1000):
    """(jitted train step, (state, batch, vgg_params) as sharded ShapeDtypeStructs).

    The step is built as `training.loop.build_trainer` builds it (same functions, same
    order), except that the VGG weights stay abstract: `build_trainer` puts them on the
    mesh's devices, which a compile-only TPU mesh cannot hold. `tests/test_plan.py` checks the
    two steps trace to the same jaxpr on a CPU mesh. The global batch is
    `batch_per_chip` × chips (`config.batch_size` is set to it); the perceptual loss uses
    random weights (only their shapes matter).
    """
    import jax
    import jax.numpy as jnp

    from ecgan_jax.data.pseudo import pseudo_batch
    from ecgan_jax.sharding import batch_sharding, check_batch_size, replicated
    from ecgan_jax.training import loop
    from ecgan_jax.training.state import (
        build_models,
        create_train_state,
        make_optimizers,
        state_shardings,
    )
    from ecgan_jax.training.step import jit_train_step, make_train_step
    from ecgan_jax.xla_cpu import runtime_for

    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = int(batch_per_chip) * mesh.devices.size
        if config.perceptual.enabled and not config.perceptual.weights_path:
            config.perceptual.random_weights = True
    check_batch_size(int(config.batch_size), mesh)
    models = build_models(config)
    tx_g, tx_d, schedules = make_optimizers(config, dataset_size)
    vgg, vgg_params = loop.perceptual_network(config)
    rep = replicated(mesh)
    abstract = jax.eval_shape(lambda: create_train_state(config, models, tx_g, tx_d, mesh=None))
    runtime = runtime_for(config, mesh)
    shardings = state_shardings(abstract, mesh)
    step_fn = jit_train_step(
        make_train_step(config, models, tx_g, tx_d, schedules=schedules, vgg=vgg, runtime=runtime),
        mesh,
        shardings,
        rep if vgg_params is not None else None,
        compiler_options=runtime.compiler_options(mesh),
    )

    def sds(x, sharding):
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=sharding)

    state = jax.tree_util.tree_map(sds, abstract, shardings)
    bs = batch_sharding(mesh)
    batch = {
        k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype, sharding=bs)
        for k, v in pseudo_batch(config, batch=1).items()
    }
    vgg_abstract = (
        None if vgg_params is None else jax.tree_util.tree_map(lambda x: sds(x, rep), vgg_params)
    )
    return step_fn, (state, batch, vgg_abstract)


# --------------------------------------------------------------------------- HLO reading

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5,
}  # fmt: skip
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all")


def _shape_bytes(shape_text: str) -> int:
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape_text):
        size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4)
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def _operand_names(rest: str) -> list[str]:
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", rest[:end])


def collective_bytes(hlo_text: str) -> dict:
    """{op: operand bytes summed over its instructions} of COLLECTIVES in an HLO module's
    text (compiled, per device; `-start` forms of async ops counted once, `-done` not)."""
    shapes, calls = {}, []
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        shapes[name] = shape
        op = opcode.removesuffix("-start")
        if op in COLLECTIVES:
            calls.append((op, rest))
    out = dict.fromkeys(COLLECTIVES, 0)
    for op, rest in calls:
        out[op] += sum(_shape_bytes(shapes.get(n, "")) for n in _operand_names(rest))
    return out


# --------------------------------------------------------------------------- planning


def cache_dir() -> str:
    """`$XDG_CACHE_HOME/ecgan_jax/plans` (default `~/.cache/ecgan_jax/plans`)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "ecgan_jax", "plans")


def _cache_key(config, topology: Topology, batch_per_chip: int) -> str:

    return hashlib.sha256(
        json.dumps(_key_fields(config, topology, batch_per_chip), sort_keys=True).encode()
    ).hexdigest()[:24]


def _key_fields(config, topology: Topology, batch_per_chip: int) -> dict:
    """What a cached plan depends on (the config as a hash of its JSON)."""
    import jax

    text = config.to_json_best_effort(sort_keys=True)
    return {
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "topology": topology.libtpu_name,
        "batch_per_chip": int(batch_per_chip),
        "jax": jax.__version__,
        "jax_disable_most_optimizations": bool(jax.config.read("jax_disable_most_optimizations")),
    }


def plan_step(config, topology: Topology, batch_per_chip: int, *, log=print) -> dict:
    """Compiles the train step for `topology` at `batch_per_chip`; the per-chip figures.

    Returns {memory: {argument, output, alias, temp, generated_code, total} bytes, flops,
    bytes_accessed, collective_bytes: {op: bytes}, compile_seconds, cpu_kernels, dtype,
    remat, compiler_options (the jit's XLA options), host_peak_rss_bytes (this process's peak
    host memory so far)}. The HLO text is not kept (`plan_step.last_hlo` holds the last one
    compiled in this process).

    When libtpu refuses the program for the chip's HBM (a RESOURCE_EXHAUSTED compile error) the
    result is that refusal: `out_of_memory` (libtpu's sentence), the memory figures it states
    (the others None) and no FLOPs: a size that does not fit, not a failed plan.
    """
    import jax

    from ecgan_jax.sharding import make_mesh
    from ecgan_jax.xla_cpu import cpu_kernels_enabled, runtime_for

    mesh = make_mesh(tpu_devices(topology))
    t0 = time.perf_counter()
    log(f"compiling the train step for {topology.name} at batch {batch_per_chip}/chip ...")
    step_fn, args = abstract_step(config, mesh, batch_per_chip)
    about = {
        "cpu_kernels": bool(cpu_kernels_enabled(config, mesh)),
        "dtype": str(config.model.dtype),
        "remat": str(config.runtime.remat),
        "compiler_options": runtime_for(config, mesh).compiler_options(mesh),
    }
    try:
        compiled = step_fn.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        shortfall = hbm_shortfall(str(e))
        if shortfall is None:
            raise
        seconds = time.perf_counter() - t0
        log(f"does not fit ({seconds:.1f} s): {shortfall['message']}")
        del step_fn, args
        _release_compile_memory()
        return {
            "memory": shortfall["memory"],
            "flops": None,
            "bytes_accessed": None,
            "collective_bytes": {},
            "compile_seconds": seconds,
            "out_of_memory": shortfall["message"],
            **about,
            "host_peak_rss_bytes": _host_peak_rss(),
        }
    seconds = time.perf_counter() - t0
    log(f"compiled in {seconds:.1f} s")
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hlo = compiled.as_text()
    plan_step.last_hlo = hlo
    memory = {
        "argument": int(mem.argument_size_in_bytes),
        "output": int(mem.output_size_in_bytes),
        "alias": int(mem.alias_size_in_bytes),
        "temp": int(mem.temp_size_in_bytes),
        "generated_code": int(mem.generated_code_size_in_bytes),
    }
    # Donated state buffers are both argument and output: count them once.
    memory["total"] = (
        memory["argument"]
        + memory["output"]
        - memory["alias"]
        + memory["temp"]
        + memory["generated_code"]
    )
    host_peak = _host_peak_rss()
    del compiled, step_fn, args
    _release_compile_memory()
    return {
        "memory": memory,
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "collective_bytes": collective_bytes(hlo),
        "compile_seconds": seconds,
        **about,
        "host_peak_rss_bytes": host_peak,
    }


plan_step.last_hlo = None

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# libtpu's two wordings of a program that does not fit (the sizes as XLA prints them, 1024-based).
_TEMP_OOM = re.compile(
    r"HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"
)
_USED_OOM = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")


def hbm_shortfall(text: str) -> dict | None:
    """{"message", "memory", "available"} from libtpu's out-of-HBM compile error, or None for
    another error.

    "HLO temporaries (T) exceeds available HBM (A)": temp T, and T as the total, a lower bound
    (the arguments are not stated); `available` is A, the HBM libtpu gives a program (the same
    for every program of a generation: `Chip.usable_hbm_bytes`). "Used U of H hbm": a total of
    U, `available` H. Figures the message does not state are None.
    """
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    memory = dict.fromkeys(("argument", "output", "alias", "temp", "generated_code", "total"))
    m = _TEMP_OOM.search(text)
    if m:
        temp = int(float(m.group(1)) * _UNITS[m.group(2)])
        memory.update(temp=temp, total=temp)
    elif m := _USED_OOM.search(text):
        memory["total"] = int(float(m.group(1)) * _UNITS[m.group(2)])
    else:
        return None
    available = int(float(m.group(3)) * _UNITS[m.group(4)])
    line = next(ln for ln in text.splitlines() if m.group(0) in ln)
    return {"message": line.strip(), "memory": memory, "available": available}


def oversized_program(device, n: int = 100_000):
    """A jitted function and its abstract argument on `device` whose temporaries (a cumulative
    sum of an n × n outer product: over 80 GiB at n = 10^5) no chip but a v5p holds; libtpu
    refuses it at compile time in well under a second."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))
    return jax.jit(lambda x: jnp.cumsum(jnp.outer(x, x), axis=0)[::1000]), (x,)


def probe_usable_hbm(topology: Topology) -> int:
    """The HBM libtpu gives one program on `topology`'s chips, in bytes: the "available HBM"
    of its refusal of `oversized_program`, or of one 4× larger where that compiles (v5p)."""
    import jax

    device = tpu_devices(topology)[0]
    for n in (100_000, 200_000):
        fn, args = oversized_program(device, n)
        try:
            fn.lower(*args).compile()
        except jax.errors.JaxRuntimeError as e:
            shortfall = hbm_shortfall(str(e))
            if shortfall is None:
                raise
            return shortfall["available"]
    raise RuntimeError(f"libtpu compiled a program of over 300 GiB for {topology.name}")


def _host_peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports kB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _release_compile_memory() -> None:
    """What one compile leaves behind, given back: `--fit` compiles several sizes in one
    process, and JAX's caches plus glibc's free lists made its third full-size compile run out
    of a 24 GB host (BENCHMARKS.md, "Host memory of a TPU compile")."""
    import jax

    from ecgan_jax.xla_cpu.hostmem import release_host_memory

    jax.clear_caches()
    gc.collect()
    release_host_memory()


def plan(
    config,
    topology: Topology,
    batch_per_chip: int,
    *,
    hbm_bytes: int | None = None,
    use_cache: bool = True,
    log: Callable = print,
) -> dict:
    """`plan_step`'s figures (cached) plus the topology, the HBM it is held against (`hbm_bytes`,
    default the chip's usable HBM), whether it fits, arithmetic intensity and the roofline
    estimate."""
    key = _cache_key(config, topology, batch_per_chip)
    path = os.path.join(cache_dir(), f"{key}.json")
    step = None
    if use_cache and os.path.isfile(path):
        try:
            with open(path) as f:
                step = json.load(f)
            log(f"batch {batch_per_chip}/chip on {topology.name}: cached ({path})")
        except (OSError, ValueError):
            step = None
    if step is None:
        step = plan_step(config, topology, batch_per_chip, log=log)
        step["key"] = _key_fields(config, topology, batch_per_chip)
        if use_cache:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(step, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    chip = topology.chip
    hbm = int(hbm_bytes) if hbm_bytes else chip.usable_hbm_bytes
    flops, moved = step["flops"], step["bytes_accessed"]
    roofline = intensity = None
    if flops is not None:
        compute_s, memory_s = flops / chip.peak_bf16_flops, moved / chip.hbm_bandwidth
        intensity = flops / moved if moved else float("inf")
        roofline = {
            "compute_seconds": compute_s,
            "memory_seconds": memory_s,
            "step_seconds": max(compute_s, memory_s),
            "bound": "compute" if compute_s >= memory_s else "memory",
        }
    return {
        **step,
        "topology": topology.name,
        "libtpu_topology": topology.libtpu_name,
        "chips": topology.chips,
        "generation": chip.generation,
        "batch_per_chip": int(batch_per_chip),
        "global_batch": int(batch_per_chip) * topology.chips,
        # The limit the total is held against: what libtpu gives a program (or --hbm_gib).
        # libtpu's compile check is not the test: it let a Cityscapes v4-8 step of 31.31 GiB
        # through (BENCHMARKS.md, "Fit on a chip"). It refuses a program for the chip's own
        # HBM, whatever --hbm_gib says.
        "hbm_bytes": hbm,
        "fits": step["memory"]["total"] <= hbm and not step.get("out_of_memory"),
        "arithmetic_intensity": intensity,
        "roofline": roofline,
        "chip": dataclasses.asdict(chip),
    }


def fit_batch(
    config, topology: Topology, *, hbm_bytes: int | None = None, use_cache=True, log=print
):
    """(largest per-chip batch whose plan fits in HBM, its plan, the plan of the next size up).

    Every answer is two compiled plans, one that fits and the next size up that does not; the
    per-chip total, close to linear in the batch, only chooses which sizes to compile: after
    batches 1 and 2 a line through the two plans nearest the HBM predicts the boundary, so a
    linear case takes about four compiles where doubling then bisecting takes two per bit.
    Once a size does not fit, the line runs through the ends of the bracket (regula falsi);
    a guess stays inside the bracket, at most `_GROWTH` times the largest size known to fit,
    and a bisection step follows any guess that left the bracket over half as wide, so a
    curve that is not a line costs compiles, never the answer. ValueError
    when batch 1 does not fit.
    """
    results = {}

    def fits(b):
        results[b] = plan(config, topology, b, hbm_bytes=hbm_bytes, use_cache=use_cache, log=log)
        return results[b]["fits"]

    if not fits(1):
        total = results[1]["memory"]["total"]
        raise ValueError(
            f"batch 1/chip needs {total / GIB:.2f} GiB per chip, more than the "
            f"{results[1]['hbm_bytes'] / GIB:.2f} GiB of HBM: nothing fits on {topology.name}"
        )
    lo, hi, bisect = 1, None, False
    while hi is None or hi - lo > 1:
        if hi is not None and bisect:
            guess = (lo + hi) // 2
        else:
            guess = _linear_guess(results, lo, hi)
        upper = hi - 1 if hi is not None else _GROWTH * lo
        guess = min(max(guess, lo + 1), upper)
        width = None if hi is None else hi - lo
        if fits(guess):
            lo = guess
        else:
            hi = guess
        # A guess that did not halve a known bracket is followed by a bisection step.
        bisect = width is not None and (hi - lo) * 2 > width and not bisect
    return lo, results[lo], results[hi]


_GROWTH = 32  # the furthest a fit guess reaches past the largest batch known to fit


def _linear_guess(results: dict, lo: int, hi: int | None) -> int:
    """The batch at which the per-chip total reaches the HBM on a line through the bracket's
    two ends (before there is an upper end: through the two largest sizes that fit)."""
    fitting = sorted(b for b, r in results.items() if r["fits"])
    if hi is None and len(fitting) < 2:
        return 2 * lo
    b1, b2 = (lo, hi) if hi is not None else fitting[-2:]
    t1, t2 = (results[b]["memory"]["total"] for b in (b1, b2))
    slope = (t2 - t1) / (b2 - b1)
    if slope <= 0:
        return 2 * lo if hi is None else (lo + hi) // 2
    return int(b1 + (results[b1]["hbm_bytes"] - t1) // slope)


# --------------------------------------------------------------------------- report


def _gib(n: float) -> str:
    return f"{n / GIB:.3f} GiB"


def format_plan(p: dict) -> str:
    """The plan as the lines the command prints."""
    m, chip, r = p["memory"], p["chip"], p["roofline"]
    coll = p["collective_bytes"]
    head = (
        f"plan: {p['topology']} ({p['libtpu_topology']}, {p['chips']} chips), "
        f"batch {p['batch_per_chip']}/chip = {p['global_batch']} global; "
        f"{p.get('dtype', '?')}, remat {p.get('remat', '?')}, "
        f"CPU machinery {'ON' if p['cpu_kernels'] else 'off'}"
    )
    if p.get("out_of_memory"):
        known = ", ".join(f"{k} {_gib(v)}" for k, v in m.items() if v is not None)
        return "\n".join([
            head,
            f"  DOES NOT FIT: libtpu refused the program for a {_gib(chip['hbm_bytes'])} chip "
            f"({_gib(chip['usable_hbm_bytes'])} usable):",
            f"    {p['out_of_memory']}",
            f"  per chip, as libtpu states it: {known}",
        ])  # fmt: skip
    lines = [
        head,
        "per chip (XLA's figures for the partitioned step):",
        f"  arguments       {_gib(m['argument'])}",
        f"  outputs         {_gib(m['output'])} ({_gib(m['alias'])} of them donated arguments)",
        f"  temporaries     {_gib(m['temp'])}",
        f"  generated code  {_gib(m['generated_code'])}",
        f"  total           {_gib(m['total'])} of {_gib(p['hbm_bytes'])} usable HBM "
        f"({100 * m['total'] / p['hbm_bytes']:.1f}%; the chip has {_gib(chip['hbm_bytes'])}): "
        f"{'fits' if p['fits'] else 'DOES NOT FIT'}",
        f"  FLOPs / step    {p['flops']:.4g}",
        f"  bytes accessed  {p['bytes_accessed']:.4g} B / step",
        f"  arithmetic intensity {p['arithmetic_intensity']:.1f} FLOP/B",
        "  collectives     "
        + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in coll.items())
        + f" (total {sum(coll.values()) / 2**20:.2f} MiB)",
        f"  roofline ESTIMATE (not a measurement): {r['step_seconds'] * 1e3:.3f} ms/step, "
        f"{r['bound']}-bound (compute {r['compute_seconds'] * 1e3:.3f} ms at "
        f"{chip['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak, memory "
        f"{r['memory_seconds'] * 1e3:.3f} ms at {chip['hbm_bandwidth'] / 1e12:.2f} TB/s; "
        f"{chip['source']})",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def define_flags(fv: flags.FlagValues, argv: Sequence[str] | None = None) -> None:
    """The flags of `plan`."""
    cli_flags.define_config_flag(fv, argv)
    flags.DEFINE_string(
        "topology", None, "TPU slice, e.g. v4-8, v5e-4, v5p-8, v6e-4, v4:2x2x1", flag_values=fv
    )
    flags.DEFINE_integer(
        "batch_per_chip", 1, "images per chip per step", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_boolean(
        "fit", False, "find the largest per-chip batch that fits in HBM", flag_values=fv
    )
    flags.DEFINE_float(
        "hbm_gib",
        None,
        "HBM per chip in GiB a plan must fit (default: what libtpu gives a program)",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_string("json", None, "also write the plan(s) as JSON here", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing --json file", flag_values=fv)
    flags.DEFINE_boolean(
        "cache", True, "reuse and store results under the cache dir", flag_values=fv
    )


def plan_command(fv: flags.FlagValues) -> dict:
    """The command on parsed flags; returns {"plan": ...} or {"fit": batch, "plan", "next"}."""
    from ecgan_jax.cli import outputs

    config = cli_flags.load_config(fv)
    cli_flags.require(fv, "topology")
    topology = resolve_topology(fv.topology)
    if fv.json:  # before the minutes of compiling, not after
        outputs.check_absent([fv.json], overwrite=fv.overwrite, where="--json")
    hbm = int(fv.hbm_gib * GIB) if fv.hbm_gib else None

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if fv.fit:
        best, p, nxt = fit_batch(config, topology, hbm_bytes=hbm, use_cache=fv.cache, log=log)
        result = {"fit": best, "plan": p, "next": nxt}
        print(format_plan(p))
        print(
            f"fit: batch {best}/chip fits ({_gib(p['memory']['total'])}); "
            f"{nxt['batch_per_chip']}/chip needs {_gib(nxt['memory']['total'])} "
            f"of {_gib(p['hbm_bytes'])}"
        )
    else:
        p = plan(config, topology, fv.batch_per_chip, hbm_bytes=hbm, use_cache=fv.cache, log=log)
        result = {"plan": p}
        print(format_plan(p))
    if fv.json:
        outputs.save_json(fv.json, result)
    return result


def main(argv: Sequence[str]) -> dict:
    """`plan` in-process: `main(["--config=...", "--topology=v4-8"])` (argv[0] optional)."""
    return plan_command(cli_flags.parse(argv, define_flags))


def run() -> None:
    """`python -m ecgan_jax.plan`."""
    cli_flags.run(plan_command, define_flags, __doc__)


if __name__ == "__main__":
    run()
