"""A PyTorch (torch.nn) ECGAN generator and multi-scale discriminator, for same-machine timings.

    python benchmarks/torch_reference.py --config=configs/cityscapes.py --case=train --batch=1
    python benchmarks/torch_reference.py --config=configs/cityscapes.py --case=g_forward
    python benchmarks/torch_reference.py --config=configs/cityscapes.py --case=train --batch=2 \
        --set model.ngf=16 model.ndf=16 dataset.image_size=128,256 --threads=2 --repeats=3
    python benchmarks/torch_reference.py --config=configs/cityscapes.py --batch=8 --device=cuda

Written for this project from its own Flax models (ecgan_jax/models/*) and docs/DESIGN.md §2-4;
no code of the authors is used. Module and parameter names follow the authors' PyTorch
state-dict layout (docs/DESIGN.md §2.6, §3; what `ecgan_jax.convert` reads): spectral norm is
`torch.nn.utils.spectral_norm` (`weight_orig`, `weight_u`, `weight_v`), SPADE's parameter-free
SyncBN is a `BatchNorm2d(affine=False)` (one process: the same statistics, momentum 0.1,
unbiased running variance), and the unused `fc1` Linear is present. So the state dicts of
../shared/fixtures/authors_*_tiny.npz load with `load_state_dict(strict=True)`
(tests/test_torch_reference.py checks the eval-mode outputs against them).

Cases (models random-initialised as the authors do: Xavier-normal gain 0.02, zero biases):
* `g_forward`: generator inference, eval mode, `torch.no_grad()`, on a precomputed one-hot
  input (as benchmarks/model_bench.py's generator_forward).
* `train`: one iteration in the authors' style: preprocess (one-hot scatter, instance edges,
  the unused label-existence histc), G step (G forward in train mode, three separate D calls on
  concat[fake pair; real pair] for (I′, I), (I′_e, I_e), (I″, I), hinge G loss + feature
  matching + VGG19 perceptual loss with random weights when perceptual.enabled, weights
  (1, 1, 2), backward, Adam), then D step (preprocess again, G forward again under no_grad,
  the three D calls, hinge D loss, backward, Adam). Adam lr_G = lr/2, lr_D = 2·lr with TTUR,
  betas (beta1, beta2) from the config. No contrastive loss, no EMA (the authors' code has
  neither; this project's JAX step has both by default).

Prints one JSON line and a markdown row: median seconds per iteration over --repeats timed
iterations after one warm-up iteration, seconds per image, images/s, peak RSS (ru_maxrss of
this process), torch version and thread count. `--device=cuda` runs the same iteration on the
first CUDA device (each timed iteration ends in `torch.cuda.synchronize()`) and adds the device
name, its peak allocated memory and whether cuDNN may use TF32 for float32 convolutions
(torch's default: yes), so a float32 row is compared with XLA's float32 knowing that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}
BRANCH_WIDTHS = (32, 16, 8, 3)


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


# --------------------------------------------------------------------------------------------
# Generator (docs/DESIGN.md §2; ecgan_jax/models/generator.py, spade.py)


class SPADE(nn.Module):
    """BN(x)·(1 + γ(seg)) + β(seg); BN parameter-free, γ/β from a shared ReLU(conv(seg))."""

    def __init__(self, norm_nc: int, semantic_nc: int, hidden: int = 128):
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)  # eps 1e-5, momentum 0.1
        self.mlp_shared = nn.Sequential(nn.Conv2d(semantic_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x, seg):
        normalized = self.param_free_norm(x)
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """shortcut(x) + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x)))))); spectral-norm convs."""

    def __init__(self, fin: int, fout: int, semantic_nc: int, hidden: int = 128):
        super().__init__()
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, semantic_nc, hidden)
        self.norm_1 = SPADE(fmiddle, semantic_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, semantic_nc, hidden)

    def forward(self, x, seg):
        xs = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(_lrelu(self.norm_0(x, seg)))
        dx = self.conv_1(_lrelu(self.norm_1(dx, seg)))
        return xs + dx


class Generator(nn.Module):
    """ECGAN generator: SPADE backbone, edge/image branches with attention transfer, and the
    semantic-preserving module. forward(seg NCHW) -> (I′, I″, I′_e), each (B,3,H,W)."""

    def __init__(
        self,
        label_nc: int,
        semantic_nc: int,
        ngf: int = 64,
        num_upsampling_layers: str = "normal",
        spade_hidden: int = 128,
    ):
        super().__init__()
        nf = ngf
        self.num_up = UPSAMPLING_LAYERS[num_upsampling_layers]
        self.num_upsampling_layers = num_upsampling_layers

        def blk(fin, fout):
            return SPADEResnetBlock(fin, fout, semantic_nc, spade_hidden)

        self.fc = nn.Conv2d(semantic_nc, 16 * nf, 3, padding=1)
        self.head_0 = blk(16 * nf, 16 * nf)
        self.G_middle_0 = blk(16 * nf, 16 * nf)
        self.G_middle_1 = blk(16 * nf, 16 * nf)
        self.up_0 = blk(16 * nf, 8 * nf)
        self.up_1 = blk(8 * nf, 4 * nf)
        self.up_2 = blk(4 * nf, 2 * nf)
        self.up_3 = blk(2 * nf, nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = blk(nf, nf // 2)
            final_nc = nf // 2
        widths = (final_nc, *BRANCH_WIDTHS)
        for k in range(1, len(BRANCH_WIDTHS) + 1):
            setattr(self, f"conv_img{k}", nn.Conv2d(widths[k - 1], widths[k], 3, padding=1))
        for k in range(1, len(BRANCH_WIDTHS) + 1):
            setattr(self, f"conv_edge{k}", nn.Conv2d(widths[k - 1], widths[k], 3, padding=1))
        c_cat = final_nc + 3 + 3 + semantic_nc
        self.conv_comb = nn.Conv2d(c_cat, 3, 3, padding=1)
        self.conv_comb1 = nn.Conv2d(c_cat, label_nc, 3, padding=1)
        self.conv_comb2 = nn.Conv2d(label_nc, c_cat, 3, padding=1)
        self.fc1 = nn.Linear(label_nc, label_nc)  # in the authors' state dict, never used

    def forward(self, seg):
        h, w = seg.shape[2:]
        f = 2**self.num_up
        if h % f or w % f:
            raise ValueError(f"H and W must be multiples of {f}, got {h}x{w}")
        x = self.fc(F.interpolate(seg, size=(h // f, w // f), mode="nearest"))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        x = self.head_0(x, seg)
        x = self.G_middle_0(up(x), seg)
        if self.num_upsampling_layers in ("more", "most"):
            x = up(x)
        x = self.G_middle_1(x, seg)
        x = self.up_0(up(x), seg)
        x = self.up_1(up(x), seg)
        x = self.up_2(up(x), seg)
        x = self.up_3(up(x), seg)
        if self.num_upsampling_layers == "most":
            x = self.up_4(up(x), seg)
        feat = x

        e, g = feat, feat
        n = len(BRANCH_WIDTHS)
        for k in range(1, n + 1):
            e = getattr(self, f"conv_edge{k}")(_lrelu(e))
            g = getattr(self, f"conv_img{k}")(_lrelu(g))
            if k < n:
                g = g * torch.sigmoid(e) + g
        edge = torch.tanh(e)
        image_first = torch.tanh(g) * (1 + torch.sigmoid(edge))

        xcat = torch.cat([feat, image_first, edge, seg], dim=1)
        f_c = self.conv_comb1(_lrelu(xcat))
        gate = torch.sigmoid(f_c.mean(dim=(2, 3), keepdim=True))
        f_c = f_c + f_c * gate
        f_r = self.conv_comb2(_lrelu(f_c))
        image_final = torch.tanh(self.conv_comb(_lrelu(f_r)))
        return image_first, image_final, edge


# --------------------------------------------------------------------------------------------
# Discriminator (docs/DESIGN.md §3; ecgan_jax/models/discriminator.py)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: model0 conv+lrelu, model1..n-1 SN-conv (no bias)+IN+lrelu, model{n} conv.

    Returns every layer's output (n post-activation features, then the patch logits)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        kw, pad = 4, 2
        nf = ndf
        layers = [nn.Sequential(nn.Conv2d(input_nc, nf, kw, 2, pad), nn.LeakyReLU(0.2))]
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            conv = spectral_norm(nn.Conv2d(nf_prev, nf, kw, stride, pad, bias=False))
            norm = nn.Sequential(conv, nn.InstanceNorm2d(nf, affine=False))
            layers.append(nn.Sequential(norm, nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(nf, 1, kw, 1, pad)))
        self.n_models = len(layers)
        for i, layer in enumerate(layers):
            self.add_module(f"model{i}", layer)

    def forward(self, x):
        outs = []
        for i in range(self.n_models):
            x = getattr(self, f"model{i}")(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """num_D NLayerDiscriminators on successively AvgPool(3, 2, 1, exclude pad)-ed inputs."""

    def __init__(self, input_nc: int, ndf: int = 64, num_D: int = 2, n_layers: int = 4):
        super().__init__()
        self.num_D = num_D
        for i in range(num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(input_nc, ndf, n_layers))

    def forward(self, x):
        results = []
        for i in range(self.num_D):
            results.append(getattr(self, f"discriminator_{i}")(x))
            if i != self.num_D - 1:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return results


# --------------------------------------------------------------------------------------------
# VGG19 features[0:30] (random weights here; torchvision's `features.N` key layout)

VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))  # relu1_1 ... relu5_1
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGG19Features(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)  # indices 0..29, as torchvision's
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        outs = []
        for a, b in VGG_SLICES:
            for i in range(a, b):
                x = self.features[i](x)
            outs.append(x)
        return outs


# --------------------------------------------------------------------------------------------
# Construction from the project config


def build_models(config):
    """(Generator, MultiscaleDiscriminator) for an ecgan_jax config, untrained, train mode."""
    from ecgan_jax.config_lib import semantic_nc

    m = config.model
    s = semantic_nc(config)
    gen = Generator(
        label_nc=int(config.dataset.label_nc),
        semantic_nc=s,
        ngf=int(m.ngf),
        num_upsampling_layers=m.num_upsampling_layers,
        spade_hidden=int(m.spade_hidden),
    )
    disc = MultiscaleDiscriminator(s + 3, int(m.ndf), int(m.num_D), int(m.n_layers_D))
    return gen, disc


def authors_init_(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Xavier-normal(gain) on every conv/linear weight (weight_orig under spectral norm), 0 bias."""
    for mod in module.modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            weight = mod.weight_orig if hasattr(mod, "weight_orig") else mod.weight
            nn.init.xavier_normal_(weight, gain=gain)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    return module


def load_numpy_state_dict(module: nn.Module, state: dict) -> None:
    """load_state_dict(strict=True) from numpy arrays (authors' layout)."""
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    module.load_state_dict(state, strict=True)


def preprocess(label, instance, config):
    """The authors' generator input from integer maps (B,H,W): one-hot (+ dontcare) (+ instance
    edges, both pixels of a differing 4-neighbour pair), plus their unused label-existence
    histogram. NCHW float32."""
    d = config.dataset
    n_lab = int(d.label_nc) + int(bool(d.contain_dontcare_label))
    b, h, w = label.shape
    seg = torch.zeros(b, n_lab, h, w, device=label.device)
    seg = seg.scatter_(1, label.long().unsqueeze(1), 1.0)
    if not d.no_instance:
        t = instance.unsqueeze(1)
        edge = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        dw = t[:, :, :, 1:] != t[:, :, :, :-1]
        dh = t[:, :, 1:, :] != t[:, :, :-1, :]
        edge[:, :, :, 1:] |= dw
        edge[:, :, :, :-1] |= dw
        edge[:, :, 1:, :] |= dh
        edge[:, :, :-1, :] |= dh
        seg = torch.cat([seg, edge.float()], dim=1)
    existence = torch.stack(
        [
            torch.histc(label[i].float(), bins=int(d.label_nc), min=0, max=int(d.label_nc) - 1) > 0
            for i in range(b)
        ]
    )
    return seg, existence


def random_batch(config, batch: int, seed: int = 0) -> dict:
    """Blocky label maps (8×8), instance maps (16×16), images in [-1,1], ±1 edges (NCHW)."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in config.dataset.image_size)
    n_lab = int(config.dataset.label_nc) + int(bool(config.dataset.contain_dontcare_label))
    label = np.repeat(np.repeat(rng.integers(0, n_lab, (batch, h // 8, w // 8)), 8, 1), 8, 2)
    inst = np.repeat(np.repeat(rng.integers(0, 4, (batch, h // 16, w // 16)), 16, 1), 16, 2)
    image = rng.uniform(-1, 1, (batch, 3, h, w)).astype(np.float32)
    edge = np.where(rng.random((batch, 1, h, w)) < 0.1, 1.0, -1.0).repeat(3, 1)
    return {
        "label": torch.from_numpy(label.astype(np.int64)),
        "instance": torch.from_numpy(inst.astype(np.int64)),
        "image": torch.from_numpy(image),
        "edge": torch.from_numpy(edge.astype(np.float32)),
    }


# --------------------------------------------------------------------------------------------
# The authors'-style training iteration


def _hinge_g(preds):
    return sum(-p[-1].mean() for p in preds) / len(preds)


def _hinge_d(preds, real: bool):
    sign = -1.0 if real else 1.0
    return sum(F.relu(1 + sign * p[-1]).mean() for p in preds) / len(preds)


class TorchTrainer:
    """G step then D step on one batch, as the authors' Pix2PixTrainer/Pix2PixModel do."""

    def __init__(self, config, device="cpu"):
        self.config = config
        self.G, self.D = build_models(config)
        authors_init_(self.G).to(device)
        authors_init_(self.D).to(device)
        self.G.train()
        self.D.train()
        self.vgg = VGG19Features().to(device).eval() if config.perceptual.enabled else None
        lr = float(config.lr)
        lr_g, lr_d = (lr / 2, lr * 2) if config.ttur else (lr, lr)
        betas = (float(config.beta1), float(config.beta2))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=betas)
        self.weights = tuple(float(v) for v in config.loss_weights)  # (I′, I′_e, I″)

    def _discriminate(self, seg, fake, real):
        """One D call on concat[fake pair; real pair] (fake first); per-scale halves."""
        x = torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real], 1)], 0)
        outs = self.D(x)
        b = fake.shape[0]
        return [[t[:b] for t in o] for o in outs], [[t[b:] for t in o] for o in outs]

    def _vgg_loss(self, x, y):
        fx, fy = self.vgg(x), self.vgg(y)
        return sum(
            w * F.l1_loss(a, b.detach()) for w, a, b in zip(VGG_WEIGHTS, fx, fy, strict=True)
        )

    def g_step(self, batch):
        c = self.config
        self.opt_g.zero_grad()
        seg, _ = preprocess(batch["label"], batch["instance"], c)
        first, final, edge = self.G(seg)
        pairs = ((first, batch["image"]), (edge, batch["edge"]), (final, batch["image"]))
        loss = 0.0
        for weight, (fake, real) in zip(self.weights, pairs, strict=True):
            pred_fake, pred_real = self._discriminate(seg, fake, real)
            term = _hinge_g(pred_fake)
            num_d = len(pred_fake)
            for pf, pr in zip(pred_fake, pred_real, strict=True):
                for j in range(len(pf) - 1):
                    term = term + F.l1_loss(pf[j], pr[j].detach()) * float(c.lambda_feat) / num_d
            if self.vgg is not None:
                term = term + self._vgg_loss(fake, real) * float(c.lambda_vgg)
            loss = loss + weight * term
        loss.backward()
        self.opt_g.step()
        return float(loss.detach())

    def d_step(self, batch):
        self.opt_d.zero_grad()
        seg, _ = preprocess(batch["label"], batch["instance"], self.config)
        with torch.no_grad():
            first, final, edge = self.G(seg)
        pairs = ((first, batch["image"]), (edge, batch["edge"]), (final, batch["image"]))
        loss = 0.0
        for weight, (fake, real) in zip(self.weights, pairs, strict=True):
            pred_fake, pred_real = self._discriminate(seg, fake.detach().requires_grad_(), real)
            loss = loss + weight * (_hinge_d(pred_fake, False) + _hinge_d(pred_real, True))
        loss.backward()
        self.opt_d.step()
        return float(loss.detach())

    def step(self, batch):
        return self.g_step(batch), self.d_step(batch)


# --------------------------------------------------------------------------------------------
# CLI


def run(args) -> dict:
    from ecgan_jax.config_lib import apply_override, load_config, semantic_nc, validate_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device=cuda: torch {torch.__version__} sees no CUDA device")
    config = load_config(args.config)
    config.batch_size = args.batch
    for a in args.set:
        apply_override(config, a)
    validate_config(config)
    batch = {k: v.to(args.device) for k, v in random_batch(config, args.batch).items()}
    sync = torch.cuda.synchronize if cuda else lambda: None

    if args.case == "g_forward":
        gen, _ = build_models(config)
        authors_init_(gen).to(args.device).eval()
        seg, _ = preprocess(batch["label"], batch["instance"], config)

        def iteration():
            with torch.no_grad():
                gen(seg)
            sync()

        notes = "G eval mode, no_grad, input preprocessed outside the timing"
    else:
        trainer = TorchTrainer(config, args.device)

        def iteration():
            trainer.step(batch)
            sync()

        notes = (
            "G step + D step (G regenerated under no_grad), 3 D calls per step, hinge+FM"
            + (" +VGG19 (random weights)" if config.perceptual.enabled else " (no VGG)")
            + "; no contrastive loss, no EMA"
        )

    iteration()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    h, w = (int(v) for v in config.dataset.image_size)
    device = {"device": "cpu"}
    if cuda:
        device = {
            "device": torch.cuda.get_device_name(),
            "device_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        }
    return {
        "case": args.case,
        "config": args.config,
        "set": args.set,
        "batch": args.batch,
        "image_size": [h, w],
        "semantic_nc": semantic_nc(config),
        "ngf": int(config.model.ngf),
        "ndf": int(config.model.ndf),
        "step_s": round(med, 4),
        "s_per_image": round(med / args.batch, 4),
        "images_per_s": round(args.batch / med, 3),
        "times_s": [round(t, 4) for t in times],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **device,
        "notes": notes,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/cityscapes.py:smoke")
    p.add_argument("--case", choices=("train", "g_forward"), default="train")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_args(argv)
    r = run(args)
    print(json.dumps(r))
    print(
        f"torch {r['torch']} on {r['device']} ({r['cpu_capability']}), {r['threads']} threads; "
        f"{r['notes']}"
    )
    print("| case | config | size | batch | s/iter (median) | s/image | images/s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| torch {r['case']} | {r['config']} {' '.join(r['set'])} | "
        f"{r['image_size'][0]}x{r['image_size'][1]} | {r['batch']} | {r['step_s']} | "
        f"{r['s_per_image']} | {r['images_per_s']} | {r['peak_rss_gb']} |"
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
