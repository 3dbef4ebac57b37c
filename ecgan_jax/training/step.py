"""The jitted train step: G step then D step on the same global batch (ECGAN_SPEC.md §4.1, §D.4).

One pure function `train_step(state, batch, vgg_params) -> (state, metrics)`, compiled once with
the batch sharded on the mesh's `data` axis and the state donated:

1. G forward in training mode (batch statistics, one spectral-norm power iteration).
2. D on the three fakes (I′, I′_e, I″), stacked into one call of 3B samples, and on the two
   distinct reals (I, I_e) in one call of 2B samples under stop-gradient (D has only
   per-sample InstanceNorm, so stacking changes nothing; the real image appears once, its
   weight 1 + 2 is applied in the loss). D's spectral statistics are not advanced in the G step.
3. L_G = Σ_k w_k [hinge_G + FM + λ_vgg·VGG] + L_cl + λ_sim·L_sim with w = (1, 1, 2); Adam
   update of G (and the projection/label heads); EMA of G; memory-bank push.
4. D on the stop-gradient fakes (reused from the G step, or regenerated with the new G when
   `regenerate_fakes_for_d`) and the reals, one call of 5B samples, one power iteration;
   L_D = Σ_k w_k [hinge_fake_k] + 3·hinge_real(I) + 1·hinge_real(I_e); Adam update of D.

Samples are stacked b-major ((B, k) -> B·k) so that each device's slice of the stacked batch is
made of its own slice of the input batch: stacking needs no communication on the mesh.
Randomness: `fold_in(state.rng, state.step)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ecgan_jax import losses as L
from ecgan_jax.models.encoding import contrastive_labels, encode_labels, num_contrastive_classes
from ecgan_jax.training.state import Models, TrainState
from ecgan_jax.xla_cpu.recompute import recompute_in_backward

FAKE_NAMES = ("first", "edge", "final")  # I′, I′_e, I″ in the order of config.loss_weights


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


def seed_after(loss):
    """The backward pass's seed, exactly 1, made data-dependent on the value of `loss`.

    `jax.grad` seeds the backward pass with a constant 1, so nothing orders the loss value's
    own reductions (read only by the logged metrics) before the backward pass, and XLA:CPU's
    memory-minimising scheduler put them at the very end of the step, keeping what they read
    (the VGG feature differences, the contrastive logits) alive through the whole backward
    pass. Seeding with `1 + 0·loss` (the zero stays 0 when the loss is not finite) computes
    them first; the gradients are unchanged. At the full Cityscapes config XLA's temp buffer
    went from 2.78 to 2.56 GB (BENCHMARKS.md).
    """
    finite = jnp.where(jnp.isfinite(loss), loss, jnp.zeros_like(loss))
    return jnp.ones_like(loss) + finite * 0


def make_train_step(config, models: Models, tx_g, tx_d, schedules=None, vgg=None):
    """Returns `train_step(state, batch, vgg_params)`; jit it with `jit_train_step`.

    `vgg` is the VGG19 feature module (or None when the perceptual loss is disabled);
    `batch` has `label` (B,H,W) int32, `instance` (B,H,W) int32, `image` and `edge`
    (B,H,W,3) float32 in [-1, 1].
    """
    G, D = models.generator, models.discriminator
    w_first, w_edge, w_final = (float(w) for w in config.loss_weights)
    weights = (w_first, w_edge, w_final)
    lambda_feat, lambda_vgg = float(config.lambda_feat), float(config.lambda_vgg)
    num_d = int(config.model.num_D)
    use_vgg = bool(config.perceptual.enabled) and vgg is not None
    cl = config.contrastive
    use_cl = bool(cl.enabled)
    lambda_sim = float(config.lambda_sim)
    num_classes = num_contrastive_classes(config)
    ema_decay = float(config.ema_decay)
    regenerate = bool(config.regenerate_fakes_for_d)

    def g_apply(g_params, g_stats, seg):
        (first, final, edge, feats), new_stats = G.apply(
            {"params": g_params["generator"], **g_stats},
            seg,
            train=True,
            return_features=True,
            mutable=list(g_stats.keys()),
        )
        return (first, edge, final), feats, new_stats

    def train_step(state: TrainState, batch, vgg_params):
        rng = jax.random.fold_in(state.rng, state.step)
        seg = encode_labels(batch["label"], batch["instance"], config)
        real, real_edge = batch["image"], batch["edge"]
        targets_index = (0, 1, 0)  # I′ and I″ against I, I′_e against I_e
        d_vars = {"params": state.d_params, **state.d_stats}

        # Reals through D and VGG once, forward only.
        reals = stack_b_major([real, real_edge])
        real_d = split_d_outputs(
            jax.lax.stop_gradient(D.apply(d_vars, jnp.repeat(seg, 2, axis=0), reals, train=False)),
            2,
        )
        if use_vgg:
            per_layer = [unstack_b_major(f, 2) for f in vgg.apply(vgg_params, reals)]
            real_vgg = [[jax.lax.stop_gradient(f[i]) for f in per_layer] for i in range(2)]

        def g_loss_fn(g_params):
            fakes, feats, new_g_stats = g_apply(g_params, state.g_stats, seg)
            stacked = stack_b_major(list(fakes))
            fake_d = split_d_outputs(
                D.apply(d_vars, jnp.repeat(seg, 3, axis=0), stacked, train=False), 3
            )
            if use_vgg:
                fake_vgg_all = [unstack_b_major(f, 3) for f in vgg.apply(vgg_params, stacked)]
            metrics, total = {}, 0.0
            for i, name in enumerate(FAKE_NAMES):
                t = targets_index[i]
                adv = L.hinge_generator_loss(discriminator_outputs=fake_d[i])
                fm = L.feature_matching_loss(
                    fake_outputs=fake_d[i],
                    real_outputs=real_d[t],
                    lambda_feat=lambda_feat,
                    num_discriminators=num_d,
                )
                term = adv + fm
                metrics[f"g/adv_{name}"], metrics[f"g/feat_{name}"] = adv, fm
                if use_vgg:
                    vl = L.vgg_perceptual_loss(
                        x_features=[f[i] for f in fake_vgg_all], y_features=real_vgg[t]
                    )
                    metrics[f"g/vgg_{name}"] = vl
                    term = term + lambda_vgg * vl
                total = total + weights[i] * term
            aux = None
            if use_cl:
                labels = contrastive_labels(batch["label"], config)
                # The heads run on every pixel (65536 × 128 floats at 128×256, batch 2): they
                # keep only their input for the backward pass and recompute there, and the
                # feature gradient waits for their weight gradients, so the 128-wide
                # cotangent dies at once (ngf 16: XLA temp 0.61 -> 0.55 GB, peak RSS 1.59 ->
                # 1.53 GB, same step time; BENCHMARKS.md).
                embeddings = [
                    recompute_in_backward(
                        lambda p, f, head=models.heads[layer]: head.apply({"params": p}, f),
                        release_after=(0,),
                    )(g_params["heads"][layer], feats[layer])
                    for layer in cl.layers
                ]
                l_cl, aux = L.multiscale_contrastive_loss(
                    embeddings=embeddings,
                    labels=labels,
                    bank=state.bank,
                    key=jax.random.fold_in(rng, 1),
                    num_classes=num_classes,
                    num_anchors=int(cl.num_anchors),
                    temperature=float(cl.temperature),
                    cross_scale=bool(cl.cross_scale),
                    lambda_pixel=float(cl.lambda_pixel),
                    lambda_class=float(cl.lambda_class),
                )
                metrics["g/contrastive"] = l_cl
                for k, v in aux.terms.items():
                    metrics[f"g/contrastive_{k}"] = v
                total = total + l_cl
            if lambda_sim > 0:
                logits = models.label_head.apply({"params": g_params["label_head"]}, fakes[2])
                l_sim = L.similarity_loss(
                    logits=logits, labels=contrastive_labels(batch["label"], config)
                )
                metrics["g/similarity"] = l_sim
                total = total + lambda_sim * l_sim
            metrics["g/total"] = total
            return total, (fakes, new_g_stats, metrics, aux)

        total_g, g_vjp, (fakes, g_stats, metrics, aux) = jax.vjp(
            g_loss_fn, state.g_params, has_aux=True
        )
        (grads_g,) = g_vjp(seed_after(total_g))
        updates, g_opt_state = tx_g.update(grads_g, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)
        metrics["grad_norm/g"] = optax.global_norm(grads_g)

        ema = state.ema_params
        if ema is not None:
            ema = jax.tree_util.tree_map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, g_params["generator"]
            )
        bank = state.bank
        if use_cl:
            bank = L.update_memory_bank(bank, aux, push_per_class=int(cl.bank_push_per_class))

        if regenerate:
            fakes, _, g_stats = g_apply(g_params, g_stats, seg)
        fakes = [jax.lax.stop_gradient(f) for f in fakes]
        # With reused fakes the D step does not depend on the G backward pass, and XLA may
        # interleave the two, holding both passes' activations at once. The barrier makes the
        # D step start after the G gradients exist, so peak memory is the larger pass, not the
        # sum (about 1 GB less at the full Cityscapes config on CPU; no change in values).
        fakes, g_params = jax.lax.optimization_barrier((fakes, g_params))
        d_inputs = stack_b_major([*fakes, real, real_edge])

        def d_loss_fn(d_params):
            outs, new_d_stats = D.apply(
                {"params": d_params, **state.d_stats},
                jnp.repeat(seg, 5, axis=0),
                d_inputs,
                train=True,
                mutable=list(state.d_stats.keys()),
            )
            parts = split_d_outputs(outs, 5)
            m, total = {}, 0.0
            for i, name in enumerate(FAKE_NAMES):
                lf = L.hinge_discriminator_fake_loss(discriminator_outputs=parts[i])
                m[f"d/fake_{name}"] = lf
                total = total + weights[i] * lf
            l_real = L.hinge_discriminator_real_loss(discriminator_outputs=parts[3])
            l_real_edge = L.hinge_discriminator_real_loss(discriminator_outputs=parts[4])
            m["d/real_image"], m["d/real_edge"] = l_real, l_real_edge
            total = total + (w_first + w_final) * l_real + w_edge * l_real_edge
            m["d/total"] = total
            return total, (new_d_stats, m)

        grads_d, (d_stats, d_metrics) = jax.grad(d_loss_fn, has_aux=True)(state.d_params)
        updates, d_opt_state = tx_d.update(grads_d, state.d_opt_state, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)
        metrics.update(d_metrics)
        metrics["grad_norm/d"] = optax.global_norm(grads_d)
        if schedules is not None:
            metrics["lr/g"] = schedules[0](state.step)
            metrics["lr/d"] = schedules[1](state.step)

        new_state = state.replace(
            step=state.step + 1,
            g_params=g_params,
            g_stats=g_stats,
            d_params=d_params,
            d_stats=d_stats,
            g_opt_state=g_opt_state,
            d_opt_state=d_opt_state,
            ema_params=ema,
            bank=bank,
        )
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return new_state, metrics

    return train_step


def train_step_compiler_options(config, mesh) -> dict | None:
    """XLA options for compiling the train step on `mesh` (`config.xla_cpu_fusion_emitters`).

    On CPU meshes with `xla_cpu_fusion_emitters=False` (the default): XLA's LLVM IR emitters
    for fused ops (`xla_cpu_use_fusion_emitters=False`), which compile the step in less than
    half the memory, to a step as fast (BENCHMARKS.md). They are set on this one jit
    only: the initialiser compiles 4x slower with them (22 -> 86 s at ngf 16). None elsewhere.
    """
    on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    if on_cpu and not config.get("xla_cpu_fusion_emitters", False):
        return {"xla_cpu_use_fusion_emitters": False}
    return None


def jit_train_step(train_step, mesh, state_shardings, vgg_shardings=None, compiler_options=None):
    """jit over the mesh: batch sharded on `data`, state replicated and donated.

    `compiler_options`: XLA debug options for this jit (`train_step_compiler_options`).
    """
    from ecgan_jax.sharding import batch_sharding, replicated

    rep = replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh), vgg_shardings or rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )
