"""The jitted train step: G step then D step on the same global batch (docs/DESIGN.md §4.1, §D.4).

One pure function `train_step(state, batch, vgg_params) -> (state, metrics)`, compiled once with
the batch sharded on the mesh's `data` axis and the state donated:

1. G forward in training mode (batch statistics, one spectral-norm power iteration).
2. `generator_losses`: D on the three fakes (I′, I′_e, I″), stacked into one call of 3B
   samples, against D on the two distinct reals (I, I_e) in one call of 2B samples under
   stop-gradient (D has only per-sample InstanceNorm, so stacking changes nothing; the real
   image appears once, its weight 1 + 2 is applied in the loss). D's spectral statistics are
   not advanced in the G step. L_G = Σ_k w_k [hinge_G + FM + λ_vgg·VGG] + L_cl + λ_sim·L_sim
   with w = (1, 1, 2).
3. Adam update of G (and the projection/label heads); EMA of G; memory-bank push.
4. `discriminator_losses`: D on the stop-gradient fakes (reused from the G step, or regenerated
   with the new G when `regenerate_fakes_for_d`) and the reals, one call of 5B samples, one
   power iteration; L_D = Σ_k w_k [hinge_fake_k] + 3·hinge_real(I) + 1·hinge_real(I_e); Adam
   update of D.

Samples are stacked b-major ((B, k) -> B·k) so that each device's slice of the stacked batch is
made of its own slice of the input batch: stacking needs no communication on the mesh.
Randomness: `fold_in(state.rng, state.step)`. Backend hooks (`runtime`, an
`ecgan_jax.xla_cpu.Runtime`) and the rematerialisation policy (`config.runtime.remat`,
`training.remat`), both applied in `make_train_step`, change how the step is compiled, never
its values.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from ecgan_jax import losses as L
from ecgan_jax.models.encoding import contrastive_labels, encode_labels, num_contrastive_classes
from ecgan_jax.sharding import batch_sharding, replicated
from ecgan_jax.training import remat
from ecgan_jax.training.state import Models, TrainState
from ecgan_jax.xla_cpu.runtime import Runtime

FAKE_NAMES = ("first", "edge", "final")  # I′, I′_e, I″ in the order of config.loss_weights
TARGETS = (0, 1, 0)  # I′ and I″ against the real image I, I′_e against its edge map I_e


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The config fields the step reads, as plain Python values; `config` for the label encoding."""

    config: object
    weights: tuple[float, float, float]
    lambda_feat: float
    lambda_vgg: float
    lambda_sim: float
    num_d: int
    ema_decay: float
    regenerate: bool
    use_vgg: bool
    contrastive: dict | None  # keyword arguments of multiscale_contrastive_loss, or None
    contrastive_layers: tuple[str, ...]
    bank_push_per_class: int

    @classmethod
    def from_config(cls, config, use_vgg: bool) -> StepSettings:
        cl = config.contrastive
        contrastive = None
        if cl.enabled:
            contrastive = dict(
                num_classes=num_contrastive_classes(config),
                num_anchors=int(cl.num_anchors),
                temperature=float(cl.temperature),
                cross_scale=bool(cl.cross_scale),
                lambda_pixel=float(cl.lambda_pixel),
                lambda_class=float(cl.lambda_class),
                anchor_selection=str(cl.anchor_selection),
            )
        return cls(
            config=config,
            weights=tuple(float(w) for w in config.loss_weights),
            lambda_feat=float(config.lambda_feat),
            lambda_vgg=float(config.lambda_vgg),
            lambda_sim=float(config.lambda_sim),
            num_d=int(config.model.num_D),
            ema_decay=float(config.ema_decay),
            regenerate=bool(config.regenerate_fakes_for_d),
            use_vgg=use_vgg,
            contrastive=contrastive,
            contrastive_layers=tuple(cl.layers),
            bank_push_per_class=int(cl.bank_push_per_class),
        )


def stack_b_major(xs):
    """[(B, ...)] * k -> (B·k, ...) with sample b·k + i taken from xs[i][b]."""
    x = jnp.stack(xs, axis=1)
    return x.reshape((-1,) + x.shape[2:])


def unstack_b_major(x, k):
    """Inverse of `stack_b_major`: (B·k, ...) -> [(B, ...)] * k."""
    x = x.reshape((-1, k) + x.shape[1:])
    return [x[:, i] for i in range(k)]


def split_d_outputs(outs, k):
    """D outputs (scales × layers of (B·k, ...)) -> k copies of (scales × layers of (B, ...))."""
    per = [[[None] * len(scale) for scale in outs] for _ in range(k)]
    for s, scale in enumerate(outs):
        for layer, x in enumerate(scale):
            for i, part in enumerate(unstack_b_major(x, k)):
                per[i][s][layer] = part
    return per


def generator_apply(models: Models, g_params, g_stats, seg):
    """G in training mode: ((I′, I′_e, I″), backbone features, new G statistics)."""
    (first, final, edge, feats), new_stats = models.generator.apply(
        {"params": g_params["generator"], **g_stats},
        seg,
        train=True,
        return_features=True,
        mutable=list(g_stats.keys()),
    )
    return (first, edge, final), feats, new_stats


def real_targets(models: Models, state: TrainState, seg, batch, vgg, vgg_params):
    """D layer outputs and VGG features of the reals (I, I_e), forward only, per real."""
    reals = stack_b_major([batch["image"], batch["edge"]])
    d_vars = {"params": state.d_params, **state.d_stats}
    real_d = models.discriminator.apply(d_vars, jnp.repeat(seg, 2, axis=0), reals, train=False)
    real_d = split_d_outputs(jax.lax.stop_gradient(real_d), 2)
    real_vgg = None
    if vgg is not None:
        per_layer = [unstack_b_major(f, 2) for f in vgg.apply(vgg_params, reals)]
        real_vgg = [[jax.lax.stop_gradient(f[i]) for f in per_layer] for i in range(2)]
    return real_d, real_vgg


def generator_losses(
    g_params, *, models, settings, state, batch, seg, reals, vgg, vgg_params, key, runtime
):
    """L_G of §4.1 for the G parameters: (total, (fakes, new G statistics, metrics, bank aux))."""
    s = settings
    real_d, real_vgg = reals
    fakes, feats, new_g_stats = generator_apply(models, g_params, state.g_stats, seg)
    stacked = stack_b_major(list(fakes))
    d_vars = {"params": state.d_params, **state.d_stats}
    fake_d = models.discriminator.apply(d_vars, jnp.repeat(seg, 3, axis=0), stacked, train=False)
    fake_d = split_d_outputs(fake_d, 3)
    if s.use_vgg:
        fake_vgg = [unstack_b_major(f, 3) for f in vgg.apply(vgg_params, stacked)]
    metrics, total = {}, 0.0
    for i, name in enumerate(FAKE_NAMES):
        t = TARGETS[i]
        adv = L.hinge_generator_loss(discriminator_outputs=fake_d[i])
        fm = L.feature_matching_loss(
            fake_outputs=fake_d[i],
            real_outputs=real_d[t],
            lambda_feat=s.lambda_feat,
            num_discriminators=s.num_d,
        )
        metrics[f"g/adv_{name}"], metrics[f"g/feat_{name}"] = adv, fm
        term = adv + fm
        if s.use_vgg:
            vgg_term = L.vgg_perceptual_loss(
                x_features=[f[i] for f in fake_vgg], y_features=real_vgg[t], abs_fn=runtime.abs
            )
            metrics[f"g/vgg_{name}"] = vgg_term
            term = term + s.lambda_vgg * vgg_term
        total = total + s.weights[i] * term
    aux = None
    if s.contrastive is not None:
        embeddings = [
            models.heads[layer].apply({"params": g_params["heads"][layer]}, feats[layer])
            for layer in s.contrastive_layers
        ]
        l_cl, aux = L.multiscale_contrastive_loss(
            embeddings=embeddings,
            labels=contrastive_labels(batch["label"], s.config),
            bank=state.bank,
            key=key,
            **s.contrastive,
        )
        metrics["g/contrastive"] = l_cl
        metrics.update({f"g/contrastive_{k}": v for k, v in aux.terms.items()})
        total = total + l_cl
    if s.lambda_sim > 0:
        logits = models.label_head.apply({"params": g_params["label_head"]}, fakes[2])
        labels = contrastive_labels(batch["label"], s.config)
        metrics["g/similarity"] = L.similarity_loss(logits=logits, labels=labels)
        total = total + s.lambda_sim * metrics["g/similarity"]
    metrics["g/total"] = total
    return total, (fakes, new_g_stats, metrics, aux)


def discriminator_losses(d_params, *, models, settings, state, seg, d_inputs):
    """L_D of §4.1 on the 5B stacked samples [I′, I′_e, I″, I, I_e] (b-major), training mode:
    (total, (new D statistics, metrics))."""
    w_first, w_edge, w_final = settings.weights
    outs, new_d_stats = models.discriminator.apply(
        {"params": d_params, **state.d_stats},
        jnp.repeat(seg, 5, axis=0),
        d_inputs,
        train=True,
        mutable=list(state.d_stats.keys()),
    )
    parts = split_d_outputs(outs, 5)
    metrics, total = {}, 0.0
    for i, name in enumerate(FAKE_NAMES):
        metrics[f"d/fake_{name}"] = L.hinge_discriminator_fake_loss(discriminator_outputs=parts[i])
        total = total + settings.weights[i] * metrics[f"d/fake_{name}"]
    l_real = L.hinge_discriminator_real_loss(discriminator_outputs=parts[3])
    l_real_edge = L.hinge_discriminator_real_loss(discriminator_outputs=parts[4])
    metrics["d/real_image"], metrics["d/real_edge"] = l_real, l_real_edge
    total = total + (w_first + w_final) * l_real + w_edge * l_real_edge
    metrics["d/total"] = total
    return total, (new_d_stats, metrics)


def train_step(
    state: TrainState, batch, vgg_params, *, models, settings, tx_g, tx_d, vgg, schedules, runtime
):
    """One G step then one D step (module docstring); returns (new state, float32 metrics)."""
    s = settings
    rng = jax.random.fold_in(state.rng, state.step)
    seg = encode_labels(batch["label"], batch["instance"], s.config)
    reals = real_targets(models, state, seg, batch, vgg if s.use_vgg else None, vgg_params)

    # G step.
    g_loss = functools.partial(
        generator_losses,
        **dict(models=models, settings=s, state=state, batch=batch, seg=seg, reals=reals),
        **dict(vgg=vgg, vgg_params=vgg_params, key=jax.random.fold_in(rng, 1), runtime=runtime),
    )
    total_g, g_vjp, (fakes, g_stats, metrics, aux) = jax.vjp(g_loss, state.g_params, has_aux=True)
    (grads_g,) = g_vjp(runtime.seed_backward(total_g))
    updates, g_opt_state = tx_g.update(grads_g, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    metrics["grad_norm/g"] = optax.global_norm(grads_g)
    ema = state.ema_params
    if ema is not None:
        d = s.ema_decay
        ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, g_params["generator"])
    bank = state.bank
    if aux is not None:
        bank = L.update_memory_bank(bank, aux, push_per_class=s.bank_push_per_class)

    # D step, on the fakes of this G step or of the updated G.
    if s.regenerate:
        fakes, _, g_stats = generator_apply(models, g_params, g_stats, seg)
    fakes = [jax.lax.stop_gradient(f) for f in fakes]
    fakes, g_params = runtime.after_g_update((fakes, g_params))
    d_inputs = stack_b_major([*fakes, batch["image"], batch["edge"]])
    d_loss = functools.partial(
        discriminator_losses, models=models, settings=s, state=state, seg=seg, d_inputs=d_inputs
    )
    grads_d, (d_stats, d_metrics) = jax.grad(d_loss, has_aux=True)(state.d_params)
    updates, d_opt_state = tx_d.update(grads_d, state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, updates)
    metrics.update(d_metrics)
    metrics["grad_norm/d"] = optax.global_norm(grads_d)
    if schedules is not None:
        metrics["lr/g"], metrics["lr/d"] = schedules[0](state.step), schedules[1](state.step)

    new_state = state.replace(
        step=state.step + 1,
        **dict(g_params=g_params, g_stats=g_stats, g_opt_state=g_opt_state, ema_params=ema),
        **dict(d_params=d_params, d_stats=d_stats, d_opt_state=d_opt_state, bank=bank),
    )
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def make_train_step(
    config, models: Models, tx_g, tx_d, schedules=None, vgg=None, runtime: Runtime | None = None
):
    """`train_step(state, batch, vgg_params)` for `config`; jit it with `jit_train_step`.

    `vgg` is the VGG19 feature module (or None when the perceptual loss is disabled);
    `batch` has `label` (B,H,W) int32, `instance` (B,H,W) int32, `image` and `edge`
    (B,H,W,3) float32 in [-1, 1]. `runtime`: the backend hooks (`xla_cpu.runtime_for(config,
    mesh)`; default: none, the plain step).
    """
    runtime = runtime or Runtime()
    use_vgg = bool(config.perceptual.enabled) and vgg is not None
    step = functools.partial(
        train_step,
        models=models,
        settings=StepSettings.from_config(config, use_vgg),
        **dict(tx_g=tx_g, tx_d=tx_d, vgg=vgg, schedules=schedules, runtime=runtime),
    )
    return runtime.wrap(remat.wrap(config.runtime.remat, step))


def jit_train_step(train_step, mesh, state_shardings, vgg_shardings=None, compiler_options=None):
    """jit over the mesh: batch sharded on `data`, state replicated and donated.

    `compiler_options`: XLA debug options for this jit (`Runtime.compiler_options`).
    """
    rep = replicated(mesh)

    def step(state, batch, vgg_params):
        # Traced under the mesh, so mesh-aware loss code sees the data axis: the contrastive
        # anchors take a per-shard top-k instead of sorting the global batch on every device.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return train_step(state, batch, vgg_params)

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding(mesh), vgg_shardings or rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )
