"""The training state: one pytree holding everything a step reads and writes (docs/DESIGN.md §D.4).

`TrainState` holds the generator's trainable parameters (the generator plus the contrastive
projection heads and the optional label head), the generator's statistics (SPADE BatchNorm
running statistics, spectral-norm u/v), the discriminator's parameters and spectral statistics,
two Adam states (TTUR: lr_G = lr/2, lr_D = 2·lr, betas (0, 0.9)), the EMA of the generator's
parameters, the contrastive memory banks, the step and the base PRNG key. `create_train_state`
builds it directly with replicated shardings on the mesh (jit with `out_shardings`), so no
device ever holds an unsharded copy first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ecgan_jax import config_lib
from ecgan_jax.models import build_discriminator, build_generator
from ecgan_jax.models.encoding import num_contrastive_classes


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    rng: jax.Array  # uint32[2] base key; step keys are fold_in(rng, step)
    g_params: Any  # {"generator": ..., "heads": {layer: ...}, "label_head": ...}
    g_stats: Any  # {"batch_stats": ..., "spectral": ...}
    d_params: Any
    d_stats: Any  # {"spectral": ...}
    g_opt_state: Any
    d_opt_state: Any
    ema_params: Any  # EMA of g_params["generator"] (or None when ema_decay == 0)
    bank: Any  # contrastive memory banks (or None)


@dataclasses.dataclass(frozen=True)
class Models:
    """The modules of a training run, built once from the config."""

    generator: nn.Module
    discriminator: nn.Module
    heads: dict  # layer name -> projection head module
    label_head: nn.Module | None


def build_models(config) -> Models:
    cl = config.contrastive
    heads, label_head = {}, None
    if cl.enabled:
        from ecgan_jax.models.heads import ProjectionHead

        heads = {layer: ProjectionHead(dim=int(cl.dim)) for layer in cl.layers}
    if float(config.lambda_sim) > 0:
        from ecgan_jax.models.heads import LabelHead

        label_head = LabelHead(num_classes=num_contrastive_classes(config))
    return Models(build_generator(config), build_discriminator(config), heads, label_head)


def steps_per_epoch(config, dataset_size: int) -> int:
    return max(1, int(dataset_size) // int(config.batch_size))


def total_steps(config, dataset_size: int) -> int:
    """num_train_steps when set, else (niter + niter_decay) epochs."""
    if int(config.num_train_steps) > 0:
        return int(config.num_train_steps)
    return (int(config.niter) + int(config.niter_decay)) * steps_per_epoch(config, dataset_size)


def learning_rate_schedules(config, dataset_size: int, schedule=None):
    """(lr_G, lr_D) schedules: constant, then linear decay to 0 (docs/DESIGN.md §4.1, §D.4).

    The decay starts after `niter` epochs and lasts `niter_decay` epochs; with
    `num_train_steps` set, the same niter : niter_decay split is applied to that many steps.
    `schedule` (a `run_record.Schedule`) replaces the step structure, e.g. for a resumed run.
    """
    from ecgan_jax.training.run_record import schedule_of

    if schedule is None:
        schedule = schedule_of(config, total_steps(config, dataset_size))
    lr = float(config.lr)
    lr_g, lr_d = (lr / 2, lr * 2) if config.ttur else (lr, lr)

    def make(base):
        if schedule.decay_steps <= 0:
            first = optax.constant_schedule(base)
        else:
            decay = optax.linear_schedule(base, 0.0, schedule.decay_steps)
            first = optax.join_schedules(
                [optax.constant_schedule(base), decay], [schedule.const_steps]
            )
        if schedule.extend_from is None:
            return first
        reached = float(first(schedule.extend_from))
        rest = optax.linear_schedule(reached, 0.0, schedule.total - schedule.extend_from)
        return optax.join_schedules([first, rest], [schedule.extend_from])

    return make(lr_g), make(lr_d)


class ScaleByAdamNoMomentumState(NamedTuple):
    count: jax.Array
    nu: Any


def scale_by_adam_no_momentum(b2: float, eps: float = 1e-8) -> optax.GradientTransformation:
    """`optax.scale_by_adam(b1=0, b2, eps)` without storing the first moment.

    With b1 = 0 Adam's first moment is the current gradient (mu = 1·g + 0·mu, and its bias
    correction divides by 1 − 0**t = 1), so keeping it only costs one copy of the parameters.
    Same arithmetic as optax, so updates are bit-identical
    (tests/test_train_state.py).
    """

    def init_fn(params):
        return ScaleByAdamNoMomentumState(
            count=jnp.zeros([], jnp.int32), nu=optax.tree.zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        updates = jax.tree.map(lambda g, v: g / (jnp.sqrt(v) + eps), updates, nu_hat)
        return updates, ScaleByAdamNoMomentumState(count=count, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adam(learning_rate, b1: float, b2: float) -> optax.GradientTransformation:
    """optax.adam, with the first moment dropped when b1 == 0 (ECGAN's betas are (0, 0.9))."""
    if b1 != 0.0:
        return optax.adam(learning_rate, b1=b1, b2=b2)
    return optax.chain(scale_by_adam_no_momentum(b2), optax.scale_by_learning_rate(learning_rate))


def make_optimizers(config, dataset_size: int, schedule=None):
    sched_g, sched_d = learning_rate_schedules(config, dataset_size, schedule)
    b1, b2 = float(config.beta1), float(config.beta2)
    return adam(sched_g, b1, b2), adam(sched_d, b1, b2), (sched_g, sched_d)


def init_variables(config, models: Models, rng):
    """Random initial variables of every module (call under jit; eager init is slow)."""
    h, w = (int(v) for v in config.dataset.image_size)
    s = config_lib.semantic_nc(config)
    seg = jnp.zeros((1, h, w, s), jnp.float32)
    img = jnp.zeros((1, h, w, 3), jnp.float32)
    k_g, k_d, k_h, k_l = jax.random.split(rng, 4)
    g_vars = models.generator.init(k_g, seg, train=False, return_features=True)
    _, _, _, feats = jax.eval_shape(
        lambda v: models.generator.apply(v, seg, train=False, return_features=True), g_vars
    )
    d_vars = models.discriminator.init(k_d, seg, img, train=False)
    heads = {}
    for i, (layer, head) in enumerate(sorted(models.heads.items())):
        x = jnp.zeros(feats[layer].shape, jnp.float32)
        heads[layer] = head.init(jax.random.fold_in(k_h, i), x)["params"]
    g_params = {"generator": g_vars["params"], "heads": heads}
    if models.label_head is not None:
        g_params["label_head"] = models.label_head.init(k_l, img)["params"]
    g_stats = {k: v for k, v in g_vars.items() if k != "params"}
    d_stats = {k: v for k, v in d_vars.items() if k != "params"}
    return g_params, g_stats, d_vars["params"], d_stats


def init_bank(config):
    from ecgan_jax.losses import init_memory_bank

    cl = config.contrastive
    if not cl.enabled:
        return None
    return init_memory_bank(
        num_classes=num_contrastive_classes(config),
        dim=int(cl.dim),
        pixel_bank_size=int(cl.pixel_bank_size),
        region_bank_size=int(cl.region_bank_size),
    )


def create_train_state(config, models: Models, tx_g, tx_d, mesh=None, seed=None) -> TrainState:
    """A fresh state, created directly with replicated shardings on `mesh` when given."""
    return make_init_fn(config, models, tx_g, tx_d, mesh)(seed_key(config, seed))


def seed_key(config, seed=None):
    """The PRNG key a fresh state is drawn from: `config.seed` unless `seed` is given."""
    return jax.random.PRNGKey(int(config.seed if seed is None else seed))


def make_init_fn(config, models: Models, tx_g, tx_d, mesh=None):
    """jit(key -> fresh TrainState), replicated on `mesh` when given.

    `train.build_trainer` makes it once per trainer (the output shardings need an abstract
    evaluation of the initialiser); `Trainer.init_state` drops its executable after each use.
    """

    init_models = _float32_models(config, models)

    def init(rng):
        k_init, k_run = jax.random.split(rng)
        g_params, g_stats, d_params, d_stats = init_variables(config, init_models, k_init)
        ema = g_params["generator"] if float(config.ema_decay) > 0 else None
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            rng=k_run,
            g_params=g_params,
            g_stats=g_stats,
            d_params=d_params,
            d_stats=d_stats,
            g_opt_state=tx_g.init(g_params),
            d_opt_state=tx_d.init(d_params),
            ema_params=ema,
            bank=init_bank(config),
        )

    if mesh is None:
        return jax.jit(init)
    abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
    return jax.jit(init, out_shardings=state_shardings(abstract, mesh))


def _float32_models(config, models: Models) -> Models:
    """The models the initialiser runs: float32 ones. The parameters are float32 whatever
    `model.dtype` is, and their initial values do not depend on it, so a bfloat16 run starts
    from the float32 run's state by construction and both compile one initialiser."""
    if str(config.model.dtype) == "float32":
        return models
    float32 = config.copy_and_resolve_references()
    float32.model.dtype = "float32"
    return build_models(float32)


def state_shardings(state_or_abstract, mesh):
    """The state's shardings: every leaf replicated over the mesh (data parallelism)."""
    from ecgan_jax.sharding import replicated

    return jax.tree_util.tree_map(lambda _: replicated(mesh), state_or_abstract)


def parameter_overview(state: TrainState) -> str:
    """Counts per group, for the log at start."""

    def count(tree):
        return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))

    lines = [f"generator params: {count(state.g_params['generator']):,}"]
    if state.g_params.get("heads"):
        lines.append(f"projection heads params: {count(state.g_params['heads']):,}")
    if "label_head" in state.g_params:
        lines.append(f"label head params: {count(state.g_params['label_head']):,}")
    lines.append(f"discriminator params: {count(state.d_params):,}")
    return "\n".join(lines)
