"""FID InceptionV3 (ecgan_jax/eval/inception.py): resize rule, converter, block numerics.

The expected PyTorch key list and the torch reference blocks below are written from
pytorch-fid's documented architecture (torchvision's Inception3 with the FIDInceptionA/C/E_1/
E_2 patches), independently of the converter, which derives its keys from the Flax modules.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.eval import inception
from ecgan_jax.interop import state_dict

# (name, cin, cout, (kh, kw), stride, (ph, pw)) of every BasicConv2d, per block type.


def _block_a(cin, pool):
    return [
        ("branch1x1", cin, 64, (1, 1), 1, (0, 0)),
        ("branch5x5_1", cin, 48, (1, 1), 1, (0, 0)),
        ("branch5x5_2", 48, 64, (5, 5), 1, (2, 2)),
        ("branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
        ("branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
        ("branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1)),
        ("branch_pool", cin, pool, (1, 1), 1, (0, 0)),
    ]


def _block_b(cin):
    return [
        ("branch3x3", cin, 384, (3, 3), 2, (0, 0)),
        ("branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
        ("branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
        ("branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0)),
    ]


def _block_c(cin, c7):
    return [
        ("branch1x1", cin, 192, (1, 1), 1, (0, 0)),
        ("branch7x7_1", cin, c7, (1, 1), 1, (0, 0)),
        ("branch7x7_2", c7, c7, (1, 7), 1, (0, 3)),
        ("branch7x7_3", c7, 192, (7, 1), 1, (3, 0)),
        ("branch7x7dbl_1", cin, c7, (1, 1), 1, (0, 0)),
        ("branch7x7dbl_2", c7, c7, (7, 1), 1, (3, 0)),
        ("branch7x7dbl_3", c7, c7, (1, 7), 1, (0, 3)),
        ("branch7x7dbl_4", c7, c7, (7, 1), 1, (3, 0)),
        ("branch7x7dbl_5", c7, 192, (1, 7), 1, (0, 3)),
        ("branch_pool", cin, 192, (1, 1), 1, (0, 0)),
    ]


def _block_d(cin):
    return [
        ("branch3x3_1", cin, 192, (1, 1), 1, (0, 0)),
        ("branch3x3_2", 192, 320, (3, 3), 2, (0, 0)),
        ("branch7x7x3_1", cin, 192, (1, 1), 1, (0, 0)),
        ("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
        ("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
        ("branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0)),
    ]


def _block_e(cin):
    return [
        ("branch1x1", cin, 320, (1, 1), 1, (0, 0)),
        ("branch3x3_1", cin, 384, (1, 1), 1, (0, 0)),
        ("branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)),
        ("branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
        ("branch3x3dbl_1", cin, 448, (1, 1), 1, (0, 0)),
        ("branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1)),
        ("branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
        ("branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
        ("branch_pool", cin, 192, (1, 1), 1, (0, 0)),
    ]


STEM = [
    ("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)),
    ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
    ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)),
    ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
    ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0)),
]
MIXED = [
    ("Mixed_5b", _block_a(192, 32)),
    ("Mixed_5c", _block_a(256, 64)),
    ("Mixed_5d", _block_a(288, 64)),
    ("Mixed_6a", _block_b(288)),
    ("Mixed_6b", _block_c(768, 128)),
    ("Mixed_6c", _block_c(768, 160)),
    ("Mixed_6d", _block_c(768, 160)),
    ("Mixed_6e", _block_c(768, 192)),
    ("Mixed_7a", _block_d(768)),
    ("Mixed_7b", _block_e(1280)),
    ("Mixed_7c", _block_e(2048)),
]


def all_convs():
    convs = list(STEM)
    for block, members in MIXED:
        convs += [(f"{block}.{name}", *rest) for name, *rest in members]
    return convs


def synthetic_state_dict(seed=0, with_extras=True):
    """pytorch-fid's key layout with random values: He-scaled convs, non-trivial BN."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, cin, cout, (kh, kw), _, _ in all_convs():
        std = np.sqrt(2.0 / (cin * kh * kw))
        sd[f"{name}.conv.weight"] = (rng.standard_normal((cout, cin, kh, kw)) * std).astype(
            np.float32
        )
        sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
        sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
        sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        if with_extras:
            sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
    if with_extras:
        sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
        sd["fc.bias"] = np.zeros((1008,), np.float32)
    return sd


# --------------------------------------------------------------------------- resize


def numpy_bilinear_torch_rule(x, out_h, out_w):
    """PyTorch upsample_bilinear2d (align_corners=False) per output pixel, NHWC."""
    _, in_h, in_w, _ = x.shape

    def coords(n_out, n_in):
        # PyTorch: float32 scale, src = fma(scale, dst + 0.5, -0.5) rounded to float32.
        scale = float(np.float32(n_in) / np.float32(n_out))
        src = [np.float32(scale * (d + 0.5) - 0.5) for d in range(n_out)]
        src = np.array([max(v, np.float32(0)) for v in src], np.float32)
        lo = src.astype(np.int64)  # src >= 0: truncation is floor
        hi = np.where(lo < n_in - 1, lo + 1, lo)
        w_hi = (src - lo.astype(np.float32)).astype(np.float64)
        return lo, hi, 1.0 - w_hi, w_hi

    y0, y1, wy0, wy1 = coords(out_h, in_h)
    x0, x1, wx0, wx1 = coords(out_w, in_w)
    yy0, xx0 = np.meshgrid(y0, x0, indexing="ij")
    yy1, xx1 = np.meshgrid(y1, x1, indexing="ij")
    a, b = np.meshgrid(wy0, wx0, indexing="ij")
    c, d = np.meshgrid(wy1, wx1, indexing="ij")
    top = b[None, ..., None] * x[:, yy0, xx0] + d[None, ..., None] * x[:, yy0, xx1]
    bottom = b[None, ..., None] * x[:, yy1, xx0] + d[None, ..., None] * x[:, yy1, xx1]
    return a[None, ..., None] * top + c[None, ..., None] * bottom


@pytest.mark.parametrize("in_hw", [(17, 23), (256, 512), (401, 350), (299, 299)])
def test_resize_matches_torch_bilinear_rule(in_hw):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, *in_hw, 3)).astype(np.float32)
    got = np.asarray(inception.resize_bilinear(jnp.asarray(x), (299, 299)))
    want = numpy_bilinear_torch_rule(x.astype(np.float64), 299, 299)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    rng = np.random.default_rng(2)
    for hw in [(64, 128), (512, 400)]:
        x = rng.uniform(-1, 1, (1, *hw, 3)).astype(np.float32)
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size=(299, 299),
            mode="bilinear",
            align_corners=False,
        )
        got = inception.resize_bilinear(jnp.asarray(x), (299, 299))
        np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=2e-6)


def test_downsampling_is_not_antialiased():
    """jax.image.resize antialiases when downsampling; PyTorch's rule (ours) does not."""
    x = np.random.default_rng(3).uniform(-1, 1, (1, 600, 500, 3)).astype(np.float32)
    ours = np.asarray(inception.resize_bilinear(jnp.asarray(x), (299, 299)))
    np.testing.assert_allclose(ours, numpy_bilinear_torch_rule(x, 299, 299), atol=2e-6)
    antialiased = np.asarray(jax.image.resize(jnp.asarray(x), (1, 299, 299, 3), "bilinear"))
    assert np.abs(antialiased - ours).max() > 0.1


# --------------------------------------------------------------------------- converter


def test_key_list_matches_architecture():
    sd = synthetic_state_dict(with_extras=False)
    assert len(all_convs()) == 94
    variables = inception.convert_state_dict(sd)
    flat = jax.tree_util.tree_leaves(variables)
    assert len(flat) == 5 * 94
    assert sum(v.size for v in flat) == sum(v.size for v in sd.values())
    k = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    np.testing.assert_array_equal(k, sd["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
        sd["Mixed_7c.branch_pool.bn.running_var"],
    )


def test_converter_errors_list_keys():
    sd = synthetic_state_dict()
    bad = dict(sd)
    del bad["Mixed_5b.branch1x1.conv.weight"]
    bad["Mixed_5b.extra.weight"] = np.zeros(3, np.float32)
    bad["Conv2d_1a_3x3.bn.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as err:
        inception.convert_state_dict(bad, source="x.pth")
    msg = str(err.value)
    assert "x.pth" in msg
    assert "missing keys (1)" in msg and "Mixed_5b.branch1x1.conv.weight" in msg
    assert "unexpected keys (1)" in msg and "Mixed_5b.extra.weight" in msg
    assert "Conv2d_1a_3x3.bn.bias: got (5,), expected (32,)" in msg
    tv = dict(sd, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match="torchvision"):
        inception.convert_state_dict(tv)


def test_convert_cli_round_trip_and_missing_file(tmp_path):
    sd = synthetic_state_dict()
    src = tmp_path / "pt_inception.npz"
    np.savez(src, **sd)
    out = tmp_path / "weights" / "inception.npz"
    inception.main(["--convert", str(src), "--out", str(out)])
    loaded = inception.load_inception(str(out))
    direct = inception.convert_state_dict(sd)
    jax.tree.map(np.testing.assert_array_equal, loaded, direct)
    with pytest.raises(FileNotFoundError, match="--convert pt_inception-2015-12-05"):
        inception.load_inception(str(tmp_path / "absent.npz"))
    other = tmp_path / "other.npz"
    np.savez(other, **{"params/x": np.zeros(1)})
    with pytest.raises(ValueError, match="_format"):
        inception.load_inception(str(other))


def test_read_state_dict_pth(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    sd = {"module.a.weight": torch.ones(2, 3), "module.b": torch.zeros(1)}
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    got = state_dict.read_state_dict(tmp_path / "w.pth")
    assert sorted(got) == ["a.weight", "b"]
    np.testing.assert_array_equal(got["a.weight"], np.ones((2, 3)))


# --------------------------------------------------------------------------- numerics


def _numpy_basic_conv(x, w, bn, stride, pad, eps=1e-3):
    """conv (OIHW weight, NHWC input) + eval BatchNorm + ReLU, by explicit shifted sums."""
    cout, _, kh, kw = w.shape
    ph, pw = pad
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, cout))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            patch = x[:, rows, cols]
            y += patch @ w[:, :, i, j].T
    gamma, beta, mean, var = bn
    y = (y - mean) / np.sqrt(var + eps) * gamma + beta
    return np.maximum(y, 0.0)


def _bn(sd, name):
    return tuple(sd[f"{name}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))


def test_stem_conv_matches_numpy():
    sd = synthetic_state_dict()
    variables = inception.convert_state_dict(sd)
    sub = {c: v["Conv2d_1a_3x3"] for c, v in variables.items()}
    x = np.random.default_rng(3).uniform(-1, 1, (2, 35, 41, 3)).astype(np.float32)
    got = inception.BasicConv2d(32, (3, 3), 2).apply(sub, jnp.asarray(x))
    want = _numpy_basic_conv(
        x.astype(np.float64), sd["Conv2d_1a_3x3.conv.weight"], _bn(sd, "Conv2d_1a_3x3"), 2, (0, 0)
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_avg_pool_excludes_padding():
    x = np.random.default_rng(4).standard_normal((1, 5, 6, 2)).astype(np.float32)
    got = np.asarray(inception.avg_pool_exclude_pad(jnp.asarray(x)))
    want = np.zeros_like(x)
    for i in range(5):
        for j in range(6):
            want[0, i, j] = x[0, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].mean(axis=(0, 1))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _torch_reference(torch):
    """torchvision-free pytorch-fid network built from the tables above."""
    nn, F = torch.nn, torch.nn.functional

    class Basic(nn.Module):
        def __init__(self, cin, cout, k, s, p):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class Block(nn.Module):
        def __init__(self, kind, convs):
            super().__init__()
            self.kind = kind
            for name, *args in convs:
                self.add_module(name, Basic(*args))

        def forward(self, x):
            g = lambda name, v: getattr(self, name)(v)
            if self.kind == "A":
                b5 = g("branch5x5_2", g("branch5x5_1", x))
                b3 = g("branch3x3dbl_3", g("branch3x3dbl_2", g("branch3x3dbl_1", x)))
                bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
                return torch.cat([g("branch1x1", x), b5, b3, g("branch_pool", bp)], 1)
            if self.kind == "B":
                b3 = g("branch3x3dbl_3", g("branch3x3dbl_2", g("branch3x3dbl_1", x)))
                return torch.cat([g("branch3x3", x), b3, F.max_pool2d(x, 3, stride=2)], 1)
            if self.kind == "C":
                b7 = g("branch7x7_3", g("branch7x7_2", g("branch7x7_1", x)))
                bd = x
                for i in range(1, 6):
                    bd = g(f"branch7x7dbl_{i}", bd)
                bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
                return torch.cat([g("branch1x1", x), b7, bd, g("branch_pool", bp)], 1)
            if self.kind == "D":
                b3 = g("branch3x3_2", g("branch3x3_1", x))
                b7 = x
                for i in range(1, 5):
                    b7 = g(f"branch7x7x3_{i}", b7)
                return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)
            b3 = g("branch3x3_1", x)
            b3 = torch.cat([g("branch3x3_2a", b3), g("branch3x3_2b", b3)], 1)
            bd = g("branch3x3dbl_2", g("branch3x3dbl_1", x))
            bd = torch.cat([g("branch3x3dbl_3a", bd), g("branch3x3dbl_3b", bd)], 1)
            if self.kind == "E1":
                bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            else:  # E2: max pool (the FID graph's quirk)
                bp = F.max_pool2d(x, 3, stride=1, padding=1)
            return torch.cat([g("branch1x1", x), b3, bd, g("branch_pool", bp)], 1)

    kinds = dict(zip([b for b, _ in MIXED], "AAABCCCCDE", strict=False), Mixed_7b="E1")
    kinds["Mixed_7c"] = "E2"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for name, *args in STEM:
                self.add_module(name, Basic(*args))
            for block, convs in MIXED:
                self.add_module(block, Block(kinds[block], convs))

        def forward(self, x):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, 3, stride=2)
            x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
            for block, _ in MIXED:
                x = getattr(self, block)(x)
            return x.mean(dim=(2, 3))

    return Net()


@pytest.fixture(scope="module")
def torch_net():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    net = _torch_reference(torch)
    sd = synthetic_state_dict(seed=5)
    missing, unexpected = net.load_state_dict(
        {k: torch.from_numpy(v) for k, v in sd.items() if not k.startswith("fc.")}, strict=False
    )
    assert not missing and not unexpected
    return torch, net.eval(), sd


def test_blocks_match_torch(torch_net):
    torch, net, sd = torch_net
    variables = inception.convert_state_dict(sd)
    rng = np.random.default_rng(6)
    cases = [
        ("Mixed_5b", inception.InceptionA(32), (1, 9, 11, 192)),
        ("Mixed_6a", inception.InceptionB(), (1, 11, 9, 288)),
        ("Mixed_7c", inception.InceptionE("max"), (1, 5, 6, 2048)),
    ]
    for name, module, shape in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        sub = {c: v[name] for c, v in variables.items()}
        got = module.apply(sub, jnp.asarray(x))
        with torch.no_grad():
            want = getattr(net, name)(torch.from_numpy(x).permute(0, 3, 1, 2))
        np.testing.assert_allclose(
            np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4, err_msg=name
        )


def test_full_network_matches_torch(torch_net):
    """One 64x96 image through the whole network (resize to 299 included)."""
    torch, net, sd = torch_net
    variables = inception.convert_state_dict(sd)
    x = np.random.default_rng(7).uniform(-1, 1, (1, 64, 96, 3)).astype(np.float32)
    got = np.asarray(jax.jit(inception.InceptionV3FID().apply)(variables, jnp.asarray(x)))
    with torch.no_grad():
        want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert got.shape == (1, 2048)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
