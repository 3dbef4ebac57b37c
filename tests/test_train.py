"""Training: one step per config, sharded == single device, exact resume, preemption, NaN stop,
and a tiny overfit (docs/DESIGN.md §4.1, §D.3, §D.4; issue 5)."""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_configs import demo_config

from ecgan_jax.config_lib import load_config
from ecgan_jax.data.pseudo import pseudo_batch
from ecgan_jax.sharding import global_batch, make_mesh
from ecgan_jax.training.loop import NonFiniteLossError, Preempted, build_trainer, train_and_evaluate
from ecgan_jax.training.step import jit_train_step
from ecgan_jax.xla_cpu import runtime_for
from ecgan_jax.xla_cpu.runtime import seed_after

# The dataset configs whose smoke step is only traced: Cityscapes runs a real step below and
# the synthetic smoke config is the one every training test of the "train_step" group compiles.
TRACED_CONFIGS = ("ade20k", "coco_stuff")


def setup_step(config, devices):
    """(mesh, fresh state, jitted step, vgg params) through the trainer the loop uses."""
    trainer = build_trainer(config, make_mesh(devices), dataset_size=8)
    return trainer.mesh, trainer.init_state(), trainer.step_fn, trainer.vgg_params


def abstract(tree):
    """`tree` as ShapeDtypeStructs: what tracing a function on it needs."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def tree_max_abs_diff(a, b):
    def diff(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return float(np.max(np.abs(x - y))) if x.size else 0.0

    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(diff, a, b))
    return max(leaves) if leaves else 0.0


STEP_METRICS = (
    "g/total",
    "d/total",
    "g/contrastive_pixel",
    "g/contrastive_class",
    "g/similarity",
    "g/vgg_final",
    "g/feat_final",
    "g/adv_final",
)


def one_step_config(name):
    config = load_config(f"configs/{name}.py:smoke")
    config.lambda_sim = 1.0  # exercise the optional similarity loss and label head too
    config.runtime.cpu_kernels = "off"  # compiles faster; the CPU runtime is in the other tests
    return config


def test_one_step_every_parameter_group_changes():
    """One real step of the Cityscapes smoke config: the widest of the four (instance edges,
    the seventh up-sampling block, VGG, the similarity head); every trained group moves. The
    other datasets' steps are traced below (their differences are shapes and channel counts,
    which tracing checks; a compiled step each cost ~50 s of suite time)."""
    config = one_step_config("cityscapes")
    mesh, state, step, vgg_params = setup_step(config, jax.devices()[:2])
    before = jax.device_get(state)
    with jax.transfer_guard("disallow"):
        state, metrics = step(state, global_batch(pseudo_batch(config), mesh), vgg_params)
    after = jax.device_get(state)
    metrics = jax.device_get(metrics)
    for key in STEP_METRICS:
        assert np.isfinite(metrics[key]), key
    assert metrics["g/contrastive_pixel"] > 0 and metrics["g/contrastive_class"] > 0
    assert int(after.step) == 1
    groups = {
        "generator": (before.g_params["generator"], after.g_params["generator"]),
        "projection heads": (before.g_params["heads"], after.g_params["heads"]),
        "label head": (before.g_params["label_head"], after.g_params["label_head"]),
        "discriminator": (before.d_params, after.d_params),
        "G batch stats": (before.g_stats["batch_stats"], after.g_stats["batch_stats"]),
        "G spectral u/v": (before.g_stats["spectral"], after.g_stats["spectral"]),
        "D spectral u/v": (before.d_stats["spectral"], after.d_stats["spectral"]),
        "EMA": (before.ema_params, after.ema_params),
        "G Adam": (before.g_opt_state, after.g_opt_state),
        "D Adam": (before.d_opt_state, after.d_opt_state),
    }
    for group, (b, a) in groups.items():
        for path, x in jax.tree_util.tree_leaves_with_path(b):
            y = _get(a, path)
            if np.issubdtype(np.asarray(x).dtype, np.floating) and np.asarray(x).size > 1:
                assert not np.array_equal(x, y), f"{group}: {jax.tree_util.keystr(path)} unchanged"
    assert int(np.asarray(after.bank.pixel_valid).sum()) > 0
    assert int(np.asarray(after.bank.region_valid).sum()) > 0


@pytest.mark.parametrize("name", TRACED_CONFIGS)
def test_every_dataset_config_traces_a_step(name):
    """Each dataset's smoke config builds the trainer and its step traces on a 2-device mesh:
    the state comes back with every leaf's shape and dtype, and the metrics are the scalars
    the step reports (no compile: tracing is where a label-channel count or an up-sampling
    depth that does not fit would fail)."""
    config = one_step_config(name)
    trainer = build_trainer(config, make_mesh(jax.devices()[:2]), dataset_size=8)
    batch, vgg = abstract(pseudo_batch(config)), abstract(trainer.vgg_params)
    new_state, metrics = jax.eval_shape(trainer.step_fn, trainer.abstract_state, batch, vgg)

    def sig(tree):
        return jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)

    assert sig(new_state) == sig(trainer.abstract_state)
    assert set(STEP_METRICS) <= set(metrics)
    assert all(m.shape == () for m in jax.tree_util.tree_leaves(metrics)), sig(metrics)


def _get(tree, path):
    for p in path:
        tree = (
            tree[p.key]
            if hasattr(p, "key")
            else (tree[p.idx] if hasattr(p, "idx") else getattr(tree, p.name))
        )
    return tree


@pytest.mark.slow
@pytest.mark.xdist_group("four_devices")
def test_sharded_equals_single_device():
    # The 4-device step is the one test_multiprocess.py's reference compiles (shared through
    # the persistent compilation cache); VGG is off as there (it is a per-image function).
    config = demo_config(batch_size=4)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh, state, step, vgg_params = setup_step(config, devices)
        losses = []
        for i in range(3):
            state, metrics = step(
                state, global_batch(pseudo_batch(config, seed=i), mesh), vgg_params
            )
            losses.append(jax.device_get(metrics))
            if i == 0:
                first = jax.device_get((state.g_stats, state.d_stats, state.bank))
        results.append((losses, jax.device_get(state), first))
    (l1, s1, f1), (l4, s4, f4) = results
    # After step 1 the statistics come from identical parameters: BatchNorm running stats
    # (global-batch reductions over the sharded batch), spectral u/v and the memory banks
    # (sampled anchors span the global batch) agree to float32 rounding.
    for a, b, name in zip(f1, f4, ("G statistics", "D statistics", "memory bank"), strict=True):
        assert tree_max_abs_diff(a, b) < 1e-4, name
    # Step 1 from identical states: every loss and gradient norm agrees to float32 rounding.
    for k in l1[0]:
        np.testing.assert_allclose(l1[0][k], l4[0][k], rtol=1e-4, atol=1e-6, err_msg=k)
    # Later steps: with beta1 = 0, Adam moves every weight by about 3·lr·sign(gradient), so a
    # sign flip of a ~1e-9 gradient element (another reduction order) moves that weight by
    # ~6·lr; losses then stay within 1%, weights within a few lr.
    # (Gradient norms, which amplify such differences, are compared at step 1 only.)
    for m1, m4 in zip(l1[1:], l4[1:], strict=True):
        for k in m1:
            if not k.startswith("grad_norm"):
                np.testing.assert_allclose(m1[k], m4[k], rtol=1e-2, atol=1e-3, err_msg=k)
    lr = 2 * float(config.lr)  # the larger (D) learning rate
    assert tree_max_abs_diff(s1.g_params, s4.g_params) < 3 * 7 * lr
    assert tree_max_abs_diff(s1.d_params, s4.d_params) < 3 * 7 * lr
    # Statistics and banks after step 3 follow those few-lr weight differences.
    assert tree_max_abs_diff(s1.g_stats, s4.g_stats) < 5e-2
    assert tree_max_abs_diff(s1.bank, s4.bank) < 1e-1


@pytest.mark.xdist_group("train_step")
def test_resume_equals_uninterrupted(tmp_path):
    config = demo_config(num_train_steps=4, checkpoint_every=100)
    straight = jax.device_get(train_and_evaluate(config, str(tmp_path / "straight")))
    part = train_and_evaluate(config, str(tmp_path / "resumed"), max_steps=2)
    assert int(part.step) == 2
    assert os.path.isdir(tmp_path / "resumed" / "checkpoints" / "2")
    resumed = jax.device_get(train_and_evaluate(config, str(tmp_path / "resumed")))
    assert int(resumed.step) == 4
    for field in (
        "g_params",
        "g_stats",
        "d_params",
        "d_stats",
        "g_opt_state",
        "d_opt_state",
        "ema_params",
        "bank",
        "rng",
    ):
        diff = tree_max_abs_diff(getattr(straight, field), getattr(resumed, field))
        assert diff < 1e-5, f"{field} differs after resume by {diff}"
    assert int(np.asarray(resumed.bank.pixel_valid).sum()) > 0
    # The data position saved with step 4 is the same in both runs.
    import orbax.checkpoint as ocp

    from ecgan_jax.training.checkpointing import Checkpointer

    def data_state(workdir):
        ckpt = Checkpointer(str(workdir), every=1, keep=0)
        args = ocp.args.Composite(data=ocp.args.JsonRestore())
        out = ckpt.manager.restore(4, args=args)["data"]
        ckpt.close()
        return out

    assert data_state(tmp_path / "straight") == data_state(tmp_path / "resumed")


@pytest.mark.xdist_group("train_step")
def test_sigterm_saves_and_stops(tmp_path):
    config = demo_config(num_train_steps=50, checkpoint_every=100)

    def send_sigterm(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted, match="stopped by SIGTERM at step 3") as stopped:
        train_and_evaluate(config, str(tmp_path), step_callback=send_sigterm)
    assert stopped.value.step == 3  # the flag is seen after the next step
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


@pytest.mark.xdist_group("train_step")
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = demo_config(num_train_steps=6, checkpoint_every=2)
    train_and_evaluate(config, str(tmp_path), max_steps=2)
    # From here on the images hold NaNs: the losses of step 3 are NaN.
    from ecgan_jax import data as data_lib

    make = data_lib.make_train_iterator

    class Poisoned:
        def __init__(self, it):
            self.it = it
            self.num_examples = it.num_examples

        def __next__(self):
            batch = dict(next(self.it))
            batch["image"] = np.full_like(batch["image"], np.nan)
            return batch

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    monkeypatch.setattr(data_lib, "make_train_iterator", lambda c: Poisoned(make(c)))
    with pytest.raises(NonFiniteLossError, match=r"non-finite value nan of '(g|d|grad_norm)/"):
        train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.xdist_group("train_step")
def test_missing_vgg_weights_is_refused(tmp_path):
    config = demo_config()
    config.perceptual.enabled = True
    config.perceptual.random_weights = False
    with pytest.raises(ValueError, match="perceptual.weights_path"):
        train_and_evaluate(config, str(tmp_path))


@pytest.mark.xdist_group("train_step")
def test_overfit_reduces_reconstruction_error():
    """The demo-test model on 2 synthetic scenes: L1(I″, real) drops by at least 2.5× in 20
    steps (from ~1.0 to ~0.33; the step is the one the train_and_evaluate tests compile)."""
    config = demo_config()
    config.dataset.synthetic_num_images = 2
    from ecgan_jax import data as data_lib

    trainer = build_trainer(config, make_mesh(jax.devices()[:2]), dataset_size=8)
    state, step, vgg_params = trainer.init_state(), trainer.step_fn, trainer.vgg_params
    batch = next(data_lib.make_train_iterator(config))
    batch = {k: v for k, v in batch.items() if k != "stem"}

    def l1(state):  # I'' of the generator the loop logs image grids with (train=False)
        variables = {"params": state.g_params["generator"], **state.g_stats}
        _, final, _ = trainer.generate_fn(variables, batch["label"], batch["instance"])
        return float(jnp.mean(jnp.abs(final - batch["image"])))

    gb = global_batch(batch, trainer.mesh)
    start = l1(state)
    for _ in range(20):
        state, _ = step(state, gb, vgg_params)
    end = l1(state)
    print(f"L1(I'', real): {start:.4f} -> {end:.4f} after 20 steps")
    assert end < start / 2.5, (start, end)


def test_backward_seed_is_exactly_one_and_gradients_are_unchanged():
    for loss in (2.5, -3.0, 0.0, float("inf"), float("nan")):
        assert float(seed_after(jnp.float32(loss))) == 1.0

    def f(w):
        return jnp.sum(jnp.sin(w) * w), jnp.cos(w)

    w = jnp.linspace(-2.0, 3.0, 7)
    value, vjp, aux = jax.vjp(f, w, has_aux=True)
    (grad,) = vjp(seed_after(value))
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(jax.grad(f, has_aux=True)(w)[0]))


@pytest.mark.xdist_group("train_step")
def test_init_state_drops_its_executable_and_is_deterministic():
    # The demo trainer of this group: its initialiser is then in the persistent cache.
    trainer = build_trainer(demo_config(), make_mesh(jax.devices()[:2]), dataset_size=8)
    first = trainer.init_state()
    assert trainer.init_fn._cache_size() == 0  # 0.2 GB of host memory at the full config
    assert tree_max_abs_diff(first, trainer.init_state()) == 0.0  # recompiled, same state
    assert tree_max_abs_diff(first, trainer.init_state(seed=1)) > 0.0


def test_build_trainer_reuses_an_equal_trainer_and_copies_the_config():
    config = demo_config()
    mesh = make_mesh(jax.devices()[:2])
    first = build_trainer(config, mesh, dataset_size=8)
    again = build_trainer(demo_config(), make_mesh(jax.devices()[:2]), dataset_size=8)
    assert again.step_fn is first.step_fn and again.init_fn is first.init_fn
    # Loop fields and, with a constant lr, the dataset size and run length do not enter the
    # step: the same step, with the request's own config.
    loop_only = demo_config(num_train_steps=7, log_every=3, checkpoint_every=5)
    same = build_trainer(loop_only, mesh, dataset_size=16)
    assert same.step_fn is first.step_fn and int(same.config.num_train_steps) == 7
    config.lr = 2 * float(config.lr)  # the trainer holds a copy: its config is unchanged
    assert float(first.config.lr) == float(demo_config().lr)
    changed = build_trainer(config, mesh, dataset_size=8)
    assert changed.step_fn is not first.step_fn and float(changed.config.lr) == float(config.lr)
    other = build_trainer(demo_config(), make_mesh(jax.devices()[2:4]), dataset_size=8)
    assert other.step_fn is not first.step_fn
    # A decaying lr does: its length is part of the step.
    decaying = [demo_config(num_train_steps=n, niter=1, niter_decay=1) for n in (4, 8)]
    a, b = (build_trainer(c, mesh, dataset_size=8) for c in decaying)
    assert a.step_fn is not b.step_fn


def test_loop_fields_do_not_enter_the_step():
    """`loop.LOOP_FIELDS`, each changed, trace to the same program as the demo config's."""
    from ecgan_jax.training import loop as loop_lib

    mesh = make_mesh(jax.devices()[:2])
    changed = demo_config()
    new_values = {
        # The lr stays constant (the decay share of 123 steps rounds to 0): the schedule is
        # the one part of these fields that does enter the step (`loop._schedule_key`).
        "num_train_steps": 123, "niter": 1000, "niter_decay": 1, "extend_schedule": True,
        "num_devices": 4, "log_every": 9, "image_every": 11, "checkpoint_every": 13,
        "keep_checkpoints": 5, "num_eval_images": 4, "compilation_cache_dir": "/tmp/x",
        "fid_every": 17, "fid_weights": "w.npz", "fid_num_images": 2, "fid_stats": "s.npz",
        "keep_best_fid": False,
    }  # fmt: skip
    assert set(new_values) == set(loop_lib.LOOP_FIELDS)
    for name, value in new_values.items():
        assert changed[name] != value, name
        changed[name] = value
    assert loop_lib._schedule_key(changed, 8, None) == ("constant",)
    texts = []
    for config in (demo_config(), changed):
        trainer = loop_lib._build_trainer(config, mesh, dataset_size=8)
        batch = abstract(pseudo_batch(config))
        texts.append(str(trainer.step_fn.trace(trainer.abstract_state, batch, None).jaxpr))
    assert texts[0] == texts[1]


def test_train_step_compiler_options_reach_xla(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import ecgan_jax.training.loop as train_module

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return jit_train_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "jit_train_step", spy)
    train_module._build_trainer(demo_config(), make_mesh(jax.devices()[:1]), dataset_size=8)
    assert seen["compiler_options"] == {"xla_cpu_use_fusion_emitters": False}

    config = demo_config()
    mesh = make_mesh(jax.devices()[:2])
    options = runtime_for(config, mesh).compiler_options
    assert options(mesh) == {"xla_cpu_use_fusion_emitters": False}
    gpu_mesh = SimpleNamespace(devices=np.array([SimpleNamespace(platform="gpu")]))
    assert options(gpu_mesh) is None  # a CPU-only option
    config.runtime.xla_cpu_fusion_emitters = True
    assert runtime_for(config, mesh).compiler_options(mesh) is None  # XLA's default

    def step(state, batch, vgg_params):
        return state * 2.0, {"loss": jnp.sum(batch * vgg_params)}

    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jit_train_step(
        step, mesh, rep, rep, compiler_options={"xla_cpu_use_fusion_emitters": False}
    )
    args = (jnp.ones(3), jnp.ones((2, 3)), jnp.ones(3))
    jitted.lower(*args).compile(compiler_options={"xla_dump_to": str(tmp_path)})
    (options,) = tmp_path.glob("*.debug_options")  # the options XLA compiled it with
    assert "xla_cpu_use_fusion_emitters: false" in options.read_text()
