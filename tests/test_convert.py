"""Tests of the PyTorch -> Flax converter (docs/DESIGN.md §2.6, §3, §6) on synthetic state dicts.

The state dicts are built here from the key list and shapes of §2.6/§3, written out
independently of the converter, for a tiny config; `fc1.*` and `num_batches_tracked` are included
because real checkpoints hold them and the converter must drop them.
"""

from __future__ import annotations

import os
import pickle
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.cli import convert as convert_cli
from ecgan_jax.config_lib import load_config
from ecgan_jax.data.fake_trees import snapshot
from ecgan_jax.interop import authors as convert
from ecgan_jax.models.layers import SpectralConv

NGF, NDF, HIDDEN, LABEL_NC = 2, 2, 8, 5

CONFIG_TEMPLATE = """
from ecgan_jax.config_lib import base_config


def get_config(arg=None):
    c = base_config()
    c.dataset.name = "cityscapes"
    c.dataset.image_size = (32, 64)
    c.dataset.label_nc = {label_nc}
    c.dataset.contain_dontcare_label = {dontcare}
    c.dataset.no_instance = {no_instance}
    c.model.num_upsampling_layers = "normal"
    c.model.ngf = {ngf}
    c.model.ndf = {ndf}
    c.model.spade_hidden = {hidden}
    return c
"""

# (contain_dontcare_label, no_instance) -> semantic_nc: Cityscapes-like and ADE20K-like layouts.
VARIANTS = {"instance": (False, False), "dontcare": (True, True)}


def _config_file(directory, variant="instance"):
    dontcare, no_instance = VARIANTS[variant]
    path = os.path.join(directory, f"tiny_{variant}.py")
    with open(path, "w") as f:
        f.write(
            textwrap.dedent(
                CONFIG_TEMPLATE.format(
                    label_nc=LABEL_NC,
                    dontcare=dontcare,
                    no_instance=no_instance,
                    ngf=NGF,
                    ndf=NDF,
                    hidden=HIDDEN,
                )
            )
        )
    return path


@pytest.fixture
def tiny(tmp_path):
    """(config path, config, semantic_nc) for the Cityscapes-like tiny config."""
    path = _config_file(str(tmp_path))
    return path, load_config(path), LABEL_NC + 1


class _StateDict:
    """Builds a state dict with the authors' key names and OIHW shapes, random values."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.sd = {}

    def _randn(self, *shape, scale=1.0):
        return (self.rng.normal(size=shape) * scale).astype(np.float32)

    def _unit(self, n):
        x = self.rng.normal(size=n)
        return (x / np.linalg.norm(x)).astype(np.float32)

    def conv(self, name, o, i, k, bias=True):
        self.sd[f"{name}.weight"] = self._randn(o, i, k, k, scale=1 / np.sqrt(i * k * k))
        if bias:
            self.sd[f"{name}.bias"] = self._randn(o, scale=0.1)

    def sn_conv(self, name, o, i, k, bias=True):
        self.sd[f"{name}.weight_orig"] = self._randn(o, i, k, k, scale=1 / np.sqrt(i * k * k))
        self.sd[f"{name}.weight_u"] = self._unit(o)
        self.sd[f"{name}.weight_v"] = self._unit(i * k * k)
        if bias:
            self.sd[f"{name}.bias"] = self._randn(o, scale=0.1)

    def spade(self, name, nc, s):
        pfn = f"{name}.param_free_norm"
        self.sd[f"{pfn}.running_mean"] = self._randn(nc, scale=0.1)
        self.sd[f"{pfn}.running_var"] = self.rng.uniform(0.5, 1.5, nc).astype(np.float32)
        self.sd[f"{pfn}.num_batches_tracked"] = np.array(3, np.int64)
        self.conv(f"{name}.mlp_shared.0", HIDDEN, s, 3)
        self.conv(f"{name}.mlp_gamma", nc, HIDDEN, 3)
        self.conv(f"{name}.mlp_beta", nc, HIDDEN, 3)

    def block(self, name, fin, fout, s):
        fm = min(fin, fout)
        self.sn_conv(f"{name}.conv_0", fm, fin, 3)
        self.sn_conv(f"{name}.conv_1", fout, fm, 3)
        self.spade(f"{name}.norm_0", fin, s)
        self.spade(f"{name}.norm_1", fm, s)
        if fin != fout:
            self.sn_conv(f"{name}.conv_s", fout, fin, 1, bias=False)
            self.spade(f"{name}.norm_s", fin, s)


def synthetic_generator_state(s, label_nc, seed=0):
    b = _StateDict(seed)
    nf = 16 * NGF
    b.conv("fc", nf, s, 3)
    for name in ("head_0", "G_middle_0", "G_middle_1"):
        b.block(name, nf, nf, s)
    for name, fin, fout in (("up_0", 16, 8), ("up_1", 8, 4), ("up_2", 4, 2), ("up_3", 2, 1)):
        b.block(name, fin * NGF, fout * NGF, s)
    widths = (NGF, 32, 16, 8, 3)
    for k in range(1, 5):
        b.conv(f"conv_img{k}", widths[k], widths[k - 1], 3)
        b.conv(f"conv_edge{k}", widths[k], widths[k - 1], 3)
    c_cat = NGF + 3 + 3 + s
    b.conv("conv_comb1", label_nc, c_cat, 3)
    b.conv("conv_comb2", c_cat, label_nc, 3)
    b.conv("conv_comb", 3, c_cat, 3)
    b.sd["fc1.weight"] = b._randn(label_nc, label_nc)  # unused by the model: must be dropped
    b.sd["fc1.bias"] = b._randn(label_nc)
    return b.sd


def synthetic_discriminator_state(s, seed=1):
    b = _StateDict(seed)
    widths = (s + 3, NDF, 2 * NDF, 4 * NDF, 8 * NDF)
    for i in range(2):
        b.conv(f"discriminator_{i}.model0.0", widths[1], widths[0], 4)
        for n in (1, 2, 3):
            b.sn_conv(f"discriminator_{i}.model{n}.0.0", widths[n + 1], widths[n], 4, bias=False)
        b.conv(f"discriminator_{i}.model4.0", 1, widths[4], 4)
    return b.sd


def flax_location(key):
    """(collection, module path..., leaf name) of a torch key, and whether it is an OIHW conv."""
    *mods, leaf = key.split(".")
    mods = [m for m in mods if m != "0"]  # Sequential indices: mlp_shared.0, model1.0.0, model0.0
    if leaf in ("weight", "weight_orig"):
        return ("params", *mods, "kernel"), True
    name = {
        "bias": ("params", "bias"),
        "weight_u": ("spectral", "u"),
        "weight_v": ("spectral", "v"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }[leaf]
    return (name[0], *mods, name[1]), False


def _flat(tree):
    return {
        tuple(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _dropped(key):
    return key.startswith("fc1.") or key.endswith(".num_batches_tracked")


def _check_leaves_equal_source(converted, sd):
    flat = _flat(converted)
    expected = {}
    for key, value in sd.items():
        if _dropped(key):
            continue
        where, is_conv = flax_location(key)
        expected[where] = value.transpose(2, 3, 1, 0) if is_conv else value
    assert set(flat) == set(expected)
    for where, value in expected.items():
        got = np.asarray(flat[where])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, value, err_msg=str(where))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_every_leaf(tmp_path, variant):
    config = load_config(_config_file(str(tmp_path), variant))
    s = LABEL_NC + 1  # one extra channel either way: instance edges or dontcare
    g_sd = synthetic_generator_state(s, LABEL_NC)
    d_sd = synthetic_discriminator_state(s)
    assert "fc1.weight" in g_sd and any(k.endswith("num_batches_tracked") for k in g_sd)
    gen = convert.torch_generator_to_flax(g_sd, config)
    disc = convert.torch_discriminator_to_flax(d_sd, config)
    assert set(gen) == {"params", "batch_stats", "spectral"}
    assert set(disc) == {"params", "spectral"}
    assert "fc1" not in gen["params"]
    _check_leaves_equal_source(gen, g_sd)
    _check_leaves_equal_source(disc, d_sd)
    # A DataParallel checkpoint ("module." prefix) converts to the same variables.
    prefixed = convert.torch_generator_to_flax({f"module.{k}": v for k, v in g_sd.items()}, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, prefixed, gen)


def np_conv(x, w_oihw, stride, pad):
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    o, _, kh, kw = w_oihw.shape
    b, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((b, ho, wo, o))
    for a in range(kh):
        for c in range(kw):
            rows = slice(a, a + stride * (ho - 1) + 1, stride)
            cols = slice(c, c + stride * (wo - 1) + 1, stride)
            out += np.einsum("bhwi,oi->bhwo", x[:, rows, cols], w_oihw[:, :, a, c])
    return out


def _converted_layer(variables, *path):
    layer = {"params": variables["params"], "spectral": variables["spectral"]}
    for name in path:
        layer = {k: v[name] for k, v in layer.items()}
    return layer


def test_converted_spectral_conv_matches_numpy(tiny):
    _, config, s = tiny
    g_sd = synthetic_generator_state(s, LABEL_NC)
    gen = convert.torch_generator_to_flax(g_sd, config)
    layer = _converted_layer(gen, "up_1", "conv_0")  # 16 -> 8 channels, 3x3
    w = g_sd["up_1.conv_0.weight_orig"].astype(np.float64)
    u, v, bias = (g_sd[f"up_1.conv_0.{k}"] for k in ("weight_u", "weight_v", "bias"))
    x = np.random.default_rng(3).normal(size=(2, 5, 7, w.shape[1])).astype(np.float32)
    y = SpectralConv(w.shape[0], 3).apply(layer, jnp.asarray(x), update_stats=False)
    sigma = u @ w.reshape(w.shape[0], -1) @ v  # PyTorch eval: stored u, v, no iteration
    ref = np_conv(x, w / sigma, 1, 1) + bias
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_converted_layers_match_torch_spectral_norm(tiny):
    torch = pytest.importorskip("torch", reason="compares with torch.nn.utils.spectral_norm")
    _, config, s = tiny
    g_sd = synthetic_generator_state(s, LABEL_NC)
    d_sd = synthetic_discriminator_state(s)
    gen = convert.torch_generator_to_flax(g_sd, config)
    disc = convert.torch_discriminator_to_flax(d_sd, config)
    cases = [
        # (flax variables, flax path, torch prefix, kernel, stride, padding, bias)
        (gen, ("head_0", "conv_1"), "head_0.conv_1", 3, 1, 1, True),
        (gen, ("up_0", "conv_s"), "up_0.conv_s", 1, 1, 0, False),
        (disc, ("discriminator_1", "model2"), "discriminator_1.model2.0.0", 4, 2, 2, False),
    ]
    rng = np.random.default_rng(4)
    for variables, path, prefix, k, stride, pad, bias in cases:
        sd = g_sd if variables is gen else d_sd
        w = sd[f"{prefix}.weight_orig"]
        tconv = torch.nn.Conv2d(w.shape[1], w.shape[0], k, stride, pad, bias=bias)
        tconv = torch.nn.utils.spectral_norm(tconv)
        keys = ["weight_orig", "weight_u", "weight_v"] + (["bias"] if bias else [])
        tconv.load_state_dict({n: torch.from_numpy(sd[f"{prefix}.{n}"]) for n in keys})
        x = rng.normal(size=(2, 9, 10, w.shape[1])).astype(np.float32)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        layer = _converted_layer(variables, *path)
        mod = SpectralConv(w.shape[0], k, stride=stride, padding=pad, use_bias=bias)
        # Eval: PyTorch uses the stored u, v.
        tconv.eval()
        with torch.no_grad():
            ref = tconv(xt).numpy().transpose(0, 2, 3, 1)
        y = mod.apply(layer, jnp.asarray(x), update_stats=False)
        # Random u, v make σ small and outputs large: float32 tolerance relative to the scale.
        tol = 1e-5 * np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=tol, err_msg=prefix)
        # Train: one power iteration, then the same output and the same stored u, v.
        tconv.train()
        with torch.no_grad():
            ref = tconv(xt).numpy().transpose(0, 2, 3, 1)
        y, upd = mod.apply(layer, jnp.asarray(x), update_stats=True, mutable=["spectral"])
        tol = 1e-5 * np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=tol, err_msg=prefix)
        np.testing.assert_allclose(upd["spectral"]["u"], tconv.weight_u.numpy(), atol=1e-5)
        np.testing.assert_allclose(upd["spectral"]["v"], tconv.weight_v.numpy(), atol=1e-5)


def test_errors_list_the_offending_keys(tiny):
    _, config, s = tiny
    g_sd = synthetic_generator_state(s, LABEL_NC)

    missing = dict(g_sd)
    del missing["up_0.conv_s.weight_orig"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): up_0\.conv_s\.weight_orig"):
        convert.torch_generator_to_flax(missing, config)

    extra = dict(g_sd, **{"head_0.conv_2.weight": np.zeros((1, 1, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): head_0\.conv_2\.weight"):
        convert.torch_generator_to_flax(extra, config)

    bad = dict(g_sd)
    bad["fc.bias"] = np.zeros(16 * NGF + 1, np.float32)
    bad["conv_img1.weight"] = np.zeros((32, NGF + 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"wrong shapes \(2\)") as err:
        convert.torch_generator_to_flax(bad, config)
    assert "fc.bias" in str(err.value) and "conv_img1.weight" in str(err.value)

    d_sd = synthetic_discriminator_state(s)
    del d_sd["discriminator_1.model2.0.0.weight_u"]
    d_sd["discriminator_0.model4.0.bias"] = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="discriminator_1.model2.0.0.weight_u") as err:
        convert.torch_discriminator_to_flax(d_sd, config)
    assert "discriminator_0.model4.0.bias" in str(err.value)


def _assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y), a, b)


def test_cli_npz_to_orbax_round_trip(tiny, tmp_path, capsys):
    cfg_path, config, s = tiny
    g_sd = synthetic_generator_state(s, LABEL_NC)
    d_sd = synthetic_discriminator_state(s)
    np.savez(tmp_path / "G.npz", **g_sd)
    np.savez(tmp_path / "D.npz", **d_sd)
    out = tmp_path / "converted"
    convert_cli.main(
        [
            f"--config={cfg_path}",
            f"--generator={tmp_path / 'G.npz'}",
            f"--discriminator={tmp_path / 'D.npz'}",
            f"--out={out}",
        ]
    )
    assert "wrote" in capsys.readouterr().out
    loaded = convert.load_converted(str(out))
    assert set(loaded) == {"generator", "discriminator"}
    _assert_same_tree(loaded["generator"], convert.torch_generator_to_flax(g_sd, config))
    _assert_same_tree(loaded["discriminator"], convert.torch_discriminator_to_flax(d_sd, config))
    _check_leaves_equal_source(loaded["generator"], g_sd)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"fc.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        convert.read_state_dict(str(path))
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        convert.read_state_dict(str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match="python -m ecgan_jax.convert"):
        convert.load_converted(str(tmp_path / "nothing_here"))


@pytest.mark.torch
def test_cli_pth_round_trip(tiny, tmp_path):
    torch = pytest.importorskip("torch", reason="writes a .pth with torch.save")
    cfg_path, config, s = tiny
    g_sd = synthetic_generator_state(s, LABEL_NC)
    torch.save({k: torch.from_numpy(v) for k, v in g_sd.items()}, tmp_path / "latest_net_G.pth")
    out = tmp_path / "converted"
    convert_cli.main(
        [
            "--config",
            cfg_path,
            "--generator",
            str(tmp_path / "latest_net_G.pth"),
            "--out",
            str(out),
        ]
    )
    loaded = convert.load_converted(str(out))
    assert set(loaded) == {"generator"}
    _assert_same_tree(loaded["generator"], convert.torch_generator_to_flax(g_sd, config))
    _check_leaves_equal_source(loaded["generator"], g_sd)


class _Payload:
    """Unpickling this calls os.mkdir(marker): code execution if a loader allowed it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.torch
def test_pth_with_pickled_object_is_refused(tiny, tmp_path):
    torch = pytest.importorskip("torch", reason="writes a .pth with torch.save")
    cfg_path, _, s = tiny
    marker = str(tmp_path / "code_ran")
    sd = {k: torch.from_numpy(v) for k, v in synthetic_generator_state(s, LABEL_NC).items()}
    sd["payload"] = _Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(sd, path)
    with pytest.raises(pickle.UnpicklingError):
        convert.read_state_dict(str(path))
    with pytest.raises(pickle.UnpicklingError):
        convert_cli.main(
            ["--config", cfg_path, "--generator", str(path), "--out", str(tmp_path / "o")]
        )
    assert not os.path.exists(marker)
    assert not os.path.exists(tmp_path / "o")
    # The payload is live: a plain (unsafe) torch.load would have run it.
    torch.load(path, weights_only=False)
    assert os.path.isdir(marker)
    # A .pth holding something other than a dict is refused with a message.
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        convert.read_state_dict(str(tmp_path / "tensor.pth"))


# --- the output folder: never replaced silently, never another folder (issue 16) ---


def _refused(argv, capsys, tree, *, says):
    """Runs the CLI expecting exit status 2, one stderr line containing `says`, `tree` intact."""
    before = snapshot(tree)
    with pytest.raises(SystemExit) as e:
        convert_cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert snapshot(tree) == before
    return err


def test_cli_out_is_refused_unless_it_is_its_own_checkpoint(tiny, tmp_path, capsys):
    cfg_path, config, s = tiny
    g_sd = synthetic_generator_state(s, LABEL_NC)
    g_path = tmp_path / "G.npz"
    np.savez(g_path, **g_sd)
    base = [f"--config={cfg_path}", f"--generator={g_path}"]

    # Somebody's folder: refused with and without --overwrite, not a byte changed.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    err = _refused([*base, f"--out={mine}"], capsys, tmp_path, says=str(mine))
    assert "--overwrite" in err
    _refused([*base, f"--out={mine}", "--overwrite"], capsys, tmp_path,
             says="not a checkpoint written by python -m ecgan_jax.convert")  # fmt: skip
    # A file (here the input itself) and the folder that holds the input.
    _refused([*base, f"--out={g_path}", "--overwrite"], capsys, tmp_path, says="is a file")
    _refused([*base, f"--out={tmp_path}", "--overwrite"], capsys, tmp_path,
             says=f"tiny_instance.py, {g_path}")  # fmt: skip

    # A fresh --out is written; then it is refused without --overwrite.
    out = tmp_path / "converted"
    convert_cli.main([*base, f"--out={out}"])
    capsys.readouterr()
    first = snapshot(out)
    assert convert.MARKER in first
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["G.npz", "converted", "mine", "tiny_instance.py"]
    )
    _refused([*base, f"--out={out}"], capsys, tmp_path, says="already exists")

    # --overwrite replaces this command's checkpoint, through a temporary sibling.
    g2 = {k: v + 1 if v.dtype == np.float32 else v for k, v in g_sd.items()}
    np.savez(g_path, **g2)
    convert_cli.main([*base, f"--out={out}", "--overwrite"])
    capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["G.npz", "converted", "mine", "tiny_instance.py"]
    )
    assert snapshot(out) != first
    _check_leaves_equal_source(convert.load_converted(str(out))["generator"], g2)

    # ... but not once it holds a file this command did not write, or one of the inputs.
    (out / "README").write_text("my notes")
    says = "holds files that python -m ecgan_jax.convert did not write (README)"
    _refused([*base, f"--out={out}", "--overwrite"], capsys, tmp_path, says=says)
    os.remove(out / "README")
    os.rename(g_path, out / "G.npz")
    moved = [f"--config={cfg_path}", f"--generator={out / 'G.npz'}"]
    _refused(
        [*moved, f"--out={out}", "--overwrite"],
        capsys,
        tmp_path,
        says=f"holds the input(s) {out / 'G.npz'}",
    )


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    out = tmp_path / "conv"
    convert.save_converted(str(out), {"params": {"w": np.arange(3, dtype=np.float32)}})
    before = snapshot(tmp_path)

    def fail(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        convert.save_converted(str(out), {"params": {"w": np.zeros(3, np.float32)}},
                               overwrite=True)  # fmt: skip
    assert snapshot(tmp_path) == before  # no staging folder left, the old checkpoint intact
    monkeypatch.undo()
    np.testing.assert_array_equal(convert.load_converted(str(out))["generator"]["params"]["w"],
                                  np.arange(3, dtype=np.float32))  # fmt: skip
    with pytest.raises(FileExistsError, match="already exists"):
        convert.save_converted(str(out), {"params": {"w": np.zeros(3, np.float32)}})
