"""The deviceless TPU planner (`ecgan_jax.cli.plan`): the train step compiled for a TPU slice.

Needs libtpu (setup.cfg's `tpu` extra); skipped without it, a failure with
ECGAN_REQUIRE_LIBTPU=1. One tiny config (synthetic smoke, ngf = ndf = 4, 32×64, contrastive
and VGG on) on a 4-chip v4 slice; its two TPU compiles (batch 1 and 2 per chip) are shared by
every test through the module fixture and the planner's own result cache. Those compiles take
minutes on a 2-core host, so the tests that need them are marked slow; the rest only trace.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib

import jax
import pytest

from ecgan_jax import config_lib
from ecgan_jax.cli import plan as plan_lib

pytestmark = [pytest.mark.tpu, pytest.mark.xdist_group("tpu_plan")]

TOPOLOGY = "v4:2x2x1"
# The tests that need the fixture's two TPU compiles of the tiny step (minutes on 2 cores).
COMPILES = pytest.mark.slow
SMOKE = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "synthetic.py")


def _require_libtpu():
    if importlib.util.find_spec("libtpu") is not None:
        return
    message = "libtpu is not installed (pip install the `tpu` extra) : cannot compile for TPU"
    if os.environ.get("ECGAN_REQUIRE_LIBTPU") == "1":
        pytest.fail(message)
    pytest.skip(message)


def tiny_config():
    config = config_lib.load_config(f"{SMOKE}:smoke")
    with config.unlocked():
        config.model.ngf = config.model.ndf = 4
    assert tuple(config.dataset.image_size) == (32, 64) and config.perceptual.enabled
    return config


def _primitive_counts(jaxpr_text: str) -> dict:
    return {
        "custom_vjp": jaxpr_text.count("custom_vjp_call"),
        "optimization_barrier": jaxpr_text.count("optimization_barrier"),
        "uint8": jaxpr_text.count(":u8["),
        "scan": jaxpr_text.count("scan["),
    }


@functools.cache
def _cpu_planner_step() -> tuple:
    """(jaxpr text, abstract arguments) of the planner's step of the tiny config on a 2-device
    CPU mesh, built and traced once for the two tests that read it."""
    from ecgan_jax.sharding import make_mesh

    step_fn, args = plan_lib.abstract_step(
        tiny_config(), make_mesh(jax.devices("cpu")[:2]), 1, dataset_size=8
    )
    return str(step_fn.trace(*args).jaxpr), args


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """{1: plan, 2: plan, "cache": dir, "log": lines} of the tiny config."""
    _require_libtpu()
    cache = tmp_path_factory.mktemp("xdg_cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        topo = plan_lib.resolve_topology(TOPOLOGY)
        config = tiny_config()
        out = {"cache": cache, "log": []}
        out[1] = plan_lib.plan(config, topo, 1, log=out["log"].append)
        out[2] = plan_lib.plan(config, topo, 2, log=out["log"].append)
        yield out
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before


def test_topology_names():
    t = plan_lib.resolve_topology("v4-8")
    assert (t.libtpu_name, t.chips, t.chip_config_name) == ("v4:2x2x1", 4, "megacore")
    assert plan_lib.resolve_topology("v5litepod-8").libtpu_name == "v5e:2x4"
    assert plan_lib.resolve_topology("v6e:2x2").chips == 4
    for bad in ("v4-6", "v9-8", "tpu", "v5e:2x2x2"):
        with pytest.raises(ValueError, match="--topology"):
            plan_lib.resolve_topology(bad)


def test_collective_bytes_reads_operand_shapes():
    hlo = "\n".join(
        [
            "  %p = f32[8,4]{1,0} parameter(0)",
            "  %q = bf16[16]{0} parameter(1)",
            "  %ar = f32[8,4]{1,0} all-reduce(%p), replica_groups={}, to_apply=%add",
            "  %ag = bf16[64]{0} all-gather(%q), dimensions={0}",
            "  %t = (f32[8,4]{1,0}, bf16[16]{0}) all-reduce-start(%p, %q), to_apply=%add",
            "  %d = (f32[8,4]{1,0}, bf16[16]{0}) all-reduce-done(%t)",
        ]
    )
    got = plan_lib.collective_bytes(hlo)
    assert got["all-reduce"] == 8 * 4 * 4 + (8 * 4 * 4 + 16 * 2)
    assert got["all-gather"] == 16 * 2  # the operand, not the gathered result
    assert got["reduce-scatter"] == got["all-to-all"] == 0


@COMPILES
def test_compiles_for_tpu_without_one(plans):
    p = plans[1]
    assert jax.default_backend() == "cpu"
    assert p["chips"] == 4 and p["global_batch"] == 4 and p["generation"] == "v4"
    assert p["flops"] > 0 and p["bytes_accessed"] > 0
    m = p["memory"]
    assert m["argument"] > 0 and m["temp"] > 0 and m["total"] > 0
    parts = m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]
    assert m["total"] == parts
    assert not p["cpu_kernels"]
    # Data parallelism: the gradients are summed over chips.
    assert p["collective_bytes"]["all-reduce"] > 0
    r = p["roofline"]
    assert r["step_seconds"] == max(
        p["flops"] / p["chip"]["peak_bf16_flops"], p["bytes_accessed"] / p["chip"]["hbm_bandwidth"]
    )
    text = plan_lib.format_plan(p)
    assert "ESTIMATE" in text and "v4:2x2x1" in text


@COMPILES
def test_memory_grows_with_the_batch(plans):
    one, two = plans[1]["memory"], plans[2]["memory"]
    assert two["total"] > one["total"] and two["temp"] > one["temp"]
    assert plans[2]["flops"] > plans[1]["flops"]


@COMPILES
def test_second_plan_comes_from_the_cache(plans):
    log = []
    again = plan_lib.plan(tiny_config(), plan_lib.resolve_topology(TOPOLOGY), 1, log=log.append)
    files = list((plans["cache"] / "ecgan_jax" / "plans").glob("*.json"))
    keys = [json.loads(f.read_text()).get("key") for f in files]
    assert len(log) == 1 and "cached" in log[0], (log, keys)
    assert again["memory"] == plans[1]["memory"] and again["flops"] == plans[1]["flops"]
    assert len(files) == 2, keys


@COMPILES
def test_fit_command_on_a_small_hbm(plans, tmp_path):
    # HBM between batch 1's and batch 2's totals: 1 fits, 2 does not (both cached).
    hbm = (plans[1]["memory"]["total"] + plans[2]["memory"]["total"]) / 2 / plan_lib.GIB
    out = tmp_path / "fit.json"
    result = plan_lib.main(
        [
            f"--config={SMOKE}:smoke",
            "--config.model.ngf=4",
            "--config.model.ndf=4",
            f"--topology={TOPOLOGY}",
            "--fit",
            f"--hbm_gib={hbm!r}",
            f"--json={out}",
        ]
    )
    assert result["fit"] == 1 and result["plan"]["fits"] and not result["next"]["fits"]
    assert result["next"]["batch_per_chip"] == 2
    assert json.loads(out.read_text())["fit"] == 1


def test_existing_json_is_refused_before_compiling(tmp_path, monkeypatch):
    from ecgan_jax.cli import outputs

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although the output exists")

    monkeypatch.setattr(plan_lib, "plan", no_compile)
    out = tmp_path / "plan.json"
    out.write_text("{}")
    argv = [f"--config={SMOKE}:smoke", f"--topology={TOPOLOGY}", f"--json={out}"]
    with pytest.raises(outputs.OutputError, match=r"exist already: .*plan\.json.*--overwrite"):
        plan_lib.main(argv)
    assert out.read_text() == "{}"


@pytest.mark.parametrize(
    "curve, linear",
    [
        (lambda b: 10 + 3 * b, True),  # as the real totals nearly are
        (lambda b: 10 + 3 * b + b * b // 4, False),  # convex
        (lambda b: 10 + 40 * (b > 5) + 3 * b, False),  # a step at 6
        (lambda b: 10 + 30 * int(b**0.5), False),  # concave, with flat stretches
    ],
    ids=["linear", "convex", "step", "concave"],
)
def test_fit_search(monkeypatch, curve, linear):
    """The search on stand-in plans: the largest size that fits, the next does not, as a
    scan over every size says; a line costs about four compiles, other curves a few more."""
    calls = []

    def fake_plan(config, topology, batch, *, hbm_bytes, use_cache, log):
        calls.append(batch)
        total = curve(batch)
        return {"memory": {"total": total}, "fits": total <= hbm_bytes, "hbm_bytes": hbm_bytes}

    monkeypatch.setattr(plan_lib, "plan", fake_plan)
    topo = plan_lib.resolve_topology(TOPOLOGY)
    for hbm in (13, 14, 40, 61, 200, 1000):
        if curve(1) > hbm:
            continue
        want = max(b for b in range(1, 10**4) if curve(b) <= hbm)
        calls.clear()
        best, p, nxt = plan_lib.fit_batch(None, topo, hbm_bytes=hbm)
        assert best == want and p["fits"] and not nxt["fits"], (hbm, calls)
        assert nxt["memory"]["total"] == curve(want + 1) and len(set(calls)) == len(calls)
        assert len(calls) <= 4 * (want.bit_length() + 1), (hbm, calls)
        if linear and want <= 2 * plan_lib._GROWTH:  # batches 1 and 2, the boundary pair
            assert len(calls) <= 4, (hbm, calls)
    with pytest.raises(ValueError, match="nothing fits"):
        plan_lib.fit_batch(None, topo, hbm_bytes=curve(1) - 1)


def test_out_of_hbm_is_a_plan_that_does_not_fit(monkeypatch, tmp_path):
    """libtpu's RESOURCE_EXHAUSTED compile error becomes a plan that does not fit (libtpu's
    figures, no FLOPs), cached and printed, which `--fit` takes as its upper end."""
    _require_libtpu()
    topo = plan_lib.resolve_topology(TOPOLOGY)
    devices = plan_lib.tpu_devices(topo)
    fn, args = plan_lib.oversized_program(devices[0])
    with pytest.raises(jax.errors.JaxRuntimeError) as err:
        fn.lower(*args).compile()
    shortfall = plan_lib.hbm_shortfall(str(err.value))
    assert "RESOURCE_EXHAUSTED" in shortfall["message"], str(err.value)
    mem = shortfall["memory"]
    assert 80 * plan_lib.GIB < mem["temp"] < 90 * plan_lib.GIB
    assert mem["total"] == mem["temp"] and mem["argument"] is None  # a lower bound
    assert shortfall["available"] == topo.chip.usable_hbm_bytes
    assert plan_lib.hbm_shortfall("INTERNAL: something else") is None
    used = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 33.50G of 31.25G hbm."
    assert plan_lib.hbm_shortfall(used)["memory"]["total"] == 33.5 * 2**30
    assert plan_lib.hbm_shortfall(used)["available"] == 31.25 * 2**30

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(
        plan_lib,
        "abstract_step",
        lambda config, mesh, batch: plan_lib.oversized_program(devices[0]),
    )
    config = tiny_config()
    p = plan_lib.plan(config, topo, 3, log=lambda msg: None)
    assert not p["fits"] and p["flops"] is None and p["roofline"] is None
    assert p["out_of_memory"] == shortfall["message"] and p["memory"] == mem
    assert "DOES NOT FIT" in plan_lib.format_plan(p) and shortfall[
        "message"
    ] in plan_lib.format_plan(p)
    assert plan_lib.plan(config, topo, 3, log=lambda msg: None)["out_of_memory"]  # from the cache
    (cached,) = (tmp_path / "ecgan_jax" / "plans").glob("*.json")
    assert json.loads(cached.read_text())["out_of_memory"] == shortfall["message"]


def test_usable_hbm_is_what_libtpu_gives_a_program():
    """The chip table's usable HBM is what the installed libtpu says it gives a program, for
    every generation."""
    _require_libtpu()
    for gen, chip in plan_lib.CHIPS.items():
        topo = plan_lib.resolve_topology(f"{gen}:{'2x2x1' if chip.dims == 3 else '2x2'}")
        usable = plan_lib.probe_usable_hbm(topo)
        assert abs(usable - chip.usable_hbm_bytes) < 0.01 * plan_lib.GIB, (gen, usable)
        assert usable < chip.hbm_bytes or gen == "v5p", (gen, usable)  # v5p: 95 GB published


def test_tpu_step_takes_the_accelerator_path():
    """The TPU step has none of the CPU machinery (bit-packed masks, blocked-conv scans,
    recompute ties), which the same step built for a CPU mesh has."""
    from ecgan_jax.sharding import make_mesh

    _require_libtpu()
    tpu_mesh = make_mesh(plan_lib.tpu_devices(plan_lib.resolve_topology(TOPOLOGY)))
    step_fn, args = plan_lib.abstract_step(tiny_config(), tpu_mesh, 1, dataset_size=8)
    counts = {
        "tpu": _primitive_counts(str(step_fn.trace(*args).jaxpr)),
        "cpu": _primitive_counts(_cpu_planner_step()[0]),
    }
    assert all(v == 0 for k, v in counts["tpu"].items() if k != "scan"), counts
    assert counts["cpu"]["custom_vjp"] > 0 and counts["cpu"]["uint8"] > 0, counts
    assert counts["cpu"]["optimization_barrier"] > 0, counts
    assert counts["cpu"]["scan"] > counts["tpu"]["scan"], counts


def test_ade20k_step_is_compiled_for_tpu_without_space_to_batch(monkeypatch):
    """configs/ade20k.py turns XLA:TPU's space-to-batch pass off for its train step (libtpu
    0.0.42 aborts in it on that step); the option reaches libtpu (a conv gradient compiles to
    fewer FLOPs without the pass) and the planner's step is jitted with it."""
    import jax.numpy as jnp

    from ecgan_jax.sharding import make_mesh
    from ecgan_jax.training import step as step_module
    from ecgan_jax.xla_cpu import runtime_for

    _require_libtpu()
    devices = plan_lib.tpu_devices(plan_lib.resolve_topology(TOPOLOGY))
    mesh = make_mesh(devices)
    root = pathlib.Path(SMOKE).parent
    ade = config_lib.load_config(f"{root / 'ade20k.py'}:smoke")
    off = {"xla_disable_hlo_passes": "space-to-batch-converter"}
    assert runtime_for(ade, mesh).compiler_options(mesh) == off
    cityscapes = config_lib.load_config(str(root / "cityscapes.py"))
    assert runtime_for(cityscapes, mesh).compiler_options(mesh) is None
    cpu_mesh = make_mesh(jax.devices("cpu")[:1])
    assert runtime_for(ade, cpu_mesh).compiler_options(cpu_mesh) != off

    sharding = jax.sharding.SingleDeviceSharding(devices[0])
    kernel = jax.ShapeDtypeStruct((4, 4, 8, 16), jnp.float32, sharding=sharding)
    x = jax.ShapeDtypeStruct((2, 32, 32, 8), jnp.float32, sharding=sharding)

    def loss(k, x):
        dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, k, (2, 2), [(2, 2)] * 2, dimension_numbers=dims)
        return jnp.sum(jax.nn.leaky_relu(y, 0.2))

    flops = {
        str(opts): jax.jit(jax.grad(loss), compiler_options=opts)
        .lower(kernel, x)
        .compile()
        .cost_analysis()["flops"]
        for opts in (None, off)
    }
    assert flops[str(off)] < flops["None"], flops

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return jit_train_step(*args, **kwargs)

    jit_train_step = step_module.jit_train_step
    monkeypatch.setattr(step_module, "jit_train_step", spy)
    plan_lib.abstract_step(ade, mesh, 1, dataset_size=8)
    assert seen["compiler_options"] == off


def test_planner_step_is_the_trainers_step():
    """`abstract_step` builds what `build_trainer` builds (compared on a CPU mesh, where the
    trainer's VGG weights can live)."""
    from ecgan_jax.sharding import make_mesh
    from ecgan_jax.training.loop import build_trainer

    config = tiny_config()
    with config.unlocked():
        config.batch_size = 2
    mesh = make_mesh(jax.devices("cpu")[:2])
    trainer = build_trainer(config, mesh, 8)
    ours, (state, batch, _) = _cpu_planner_step()
    theirs = str(trainer.step_fn.trace(state, batch, trainer.vgg_params).jaxpr)
    assert ours == theirs
