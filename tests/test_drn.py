"""DRN-D-105 segmenter (ecgan_jax/eval/drn.py): key layout, converter, numerics vs torch.

The expected key list and the torch reference below are written from fyu/drn's `drn.py`
(`DRN(Bottleneck, [1, 1, 3, 4, 23, 3, 1, 1], arch='D')`) and `segment.py` (`DRNSeg`: `base` =
the DRN children without avgpool/fc, `seg` 1x1 conv, `up` ConvTranspose2d), independently of
the converter, which derives its keys from the Flax modules.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgan_jax.eval import drn, segmentation


def expected_shapes(classes=19):
    """{torch key: shape} of DRNSeg('drn_d_105', classes), BN entries expanded."""
    shapes = {}

    def conv(key, cout, cin, k):
        shapes[f"{key}.weight"] = (cout, cin, k, k)

    def bn(key, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{leaf}"] = (c,)

    for i, (cin, cout, k) in {0: (3, 16, 7), 1: (16, 16, 3), 2: (16, 32, 3)}.items():
        conv(f"base.{i}.0", cout, cin, k)
        bn(f"base.{i}.1", cout)
    inplanes = 32
    for i, (planes, blocks) in {3: (64, 3), 4: (128, 4), 5: (256, 23), 6: (512, 3)}.items():
        for b in range(blocks):
            key = f"base.{i}.{b}"
            conv(f"{key}.conv1", planes, inplanes if b == 0 else planes * 4, 1)
            bn(f"{key}.bn1", planes)
            conv(f"{key}.conv2", planes, planes, 3)
            bn(f"{key}.bn2", planes)
            conv(f"{key}.conv3", planes * 4, planes, 1)
            bn(f"{key}.bn3", planes * 4)
            if b == 0:
                conv(f"{key}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{key}.downsample.1", planes * 4)
        inplanes = planes * 4
    conv("base.7.0", 512, 2048, 3)
    bn("base.7.1", 512)
    conv("base.8.0", 512, 512, 3)
    bn("base.8.1", 512)
    conv("seg", classes, 512, 1)
    shapes["seg.bias"] = (classes,)
    shapes["up.weight"] = (classes, 1, 16, 16)
    return shapes


def synthetic_state_dict(seed=0, classes=19):
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in expected_shapes(classes).items():
        if key == "up.weight":
            f = math.ceil(16 / 2)
            c = (2 * f - 1 - f % 2) / (2.0 * f)
            w = np.zeros(shape, np.float32)
            for i in range(16):
                for j in range(16):
                    w[:, 0, i, j] = (1 - abs(i / f - c)) * (1 - abs(j / f - c))
            sd[key] = w
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("weight"):
            sd[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
        else:
            sd[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    return sd


def test_key_list_and_converter():
    sd = synthetic_state_dict()
    sd["base.0.1.num_batches_tracked"] = np.array(3)
    variables = drn.convert_state_dict(sd)
    leaves = jax.tree_util.tree_leaves(variables)
    assert len(leaves) == len(expected_shapes())
    p = variables["params"]
    np.testing.assert_array_equal(
        p["layer5"]["block22"]["conv2"]["kernel"],
        sd["base.5.22.conv2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer7"]["seq_bn0"]["mean"], sd["base.7.1.running_mean"]
    )
    np.testing.assert_array_equal(p["seg"]["bias"], sd["seg.bias"])
    # The bilinear `up` kernel is symmetric: flipping it changes nothing; init equals the file.
    np.testing.assert_allclose(p["up"]["kernel"], drn.init_drn()["params"]["up"]["kernel"])


def test_converter_errors_and_prefix(tmp_path):
    sd = synthetic_state_dict()
    bad = dict(sd)
    del bad["base.3.0.downsample.0.weight"]
    bad["base.9.0.weight"] = np.zeros(1, np.float32)
    bad["seg.weight"] = np.zeros((20, 512, 1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        drn.convert_state_dict(bad, source="drn.pth")
    msg = str(err.value)
    assert "base.3.0.downsample.0.weight" in msg and "base.9.0.weight" in msg
    assert "seg.weight: got (20, 512, 1, 1), expected (19, 512, 1, 1)" in msg
    # DataParallel-saved files carry a `module.` prefix: removed by the reader.
    src = tmp_path / "drn_module.npz"
    np.savez(src, **{f"module.{k}": v for k, v in sd.items()})
    out = tmp_path / "drn.npz"
    drn.main(["--convert", str(src), "--out", str(out)])
    loaded = drn.load_drn(str(out))
    jax.tree.map(np.testing.assert_array_equal, loaded, drn.convert_state_dict(sd))
    with pytest.raises(FileNotFoundError, match="--convert drn-d-105_ms_cityscapes.pth"):
        drn.load_drn(str(tmp_path / "absent.npz"))


def test_up_matches_numpy_transposed_conv():
    """ConvTranspose2d(stride 8, padding 4, k 16, depthwise) by its scatter definition."""
    k = 3
    rng = np.random.default_rng(1)
    w = rng.standard_normal((k, 1, 16, 16)).astype(np.float32)  # asymmetric: checks the flip
    x = rng.standard_normal((2, 3, 5, k)).astype(np.float32)
    full = np.zeros((2, 3 * 8 + 8, 5 * 8 + 8, k))
    for i in range(3):
        for j in range(5):
            # output rows i*8 - 4 + (0..15), shifted by +4 into `full`
            full[:, i * 8 : i * 8 + 16, j * 8 : j * 8 + 16, :] += (
                x[:, i, j, None, None, :] * w[:, 0].transpose(1, 2, 0)[None]
            )
    want = full[:, 4 : 4 + 24, 4 : 4 + 40]
    kernel = jnp.asarray(drn.sd_lib.to_flax(drn.sd_lib.DECONV, w))
    got = drn.UpsampleX8(k).apply({"params": {"kernel": kernel}}, jnp.asarray(x))
    assert got.shape == (2, 24, 40, k)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_bilinear_up_reproduces_constant():
    """fyu/drn's bilinear up kernel maps a constant map to the same constant inside."""
    x = jnp.full((1, 4, 4, 2), 3.0)
    y = drn.UpsampleX8(2).apply(drn.UpsampleX8(2).init(jax.random.key(0), x), x)
    np.testing.assert_allclose(np.asarray(y)[0, 4:-4, 4:-4], 3.0, rtol=1e-6)


def _torch_drnseg(torch, classes=19):
    """torchvision-free DRNSeg('drn_d_105') reference written from fyu/drn."""
    nn, F = torch.nn, torch.nn.functional

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride, dilation, downsample):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(
                planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
            )
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.downsample = downsample

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            res = x if self.downsample is None else self.downsample(x)
            return F.relu(out + res)

    def conv_layers(cin, cout, k, stride=1, dilation=1):
        pad = dilation * (k // 2)
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    def layer(inplanes, planes, blocks, stride, dilation):
        ds = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        mods = [Bottleneck(inplanes, planes, stride, dilation, ds)]
        mods += [Bottleneck(planes * 4, planes, 1, dilation, None) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Sequential(
                conv_layers(3, 16, 7),
                conv_layers(16, 16, 3),
                conv_layers(16, 32, 3, stride=2),
                layer(32, 64, 3, 2, 1),
                layer(256, 128, 4, 2, 1),
                layer(512, 256, 23, 1, 2),
                layer(1024, 512, 3, 1, 4),
                conv_layers(2048, 512, 3, dilation=2),
                conv_layers(512, 512, 3),
            )
            self.seg = nn.Conv2d(512, classes, 1)
            self.up = nn.ConvTranspose2d(
                classes, classes, 16, stride=8, padding=4, groups=classes, bias=False
            )

        def forward(self, x):
            return self.up(self.seg(self.base(x)))

    return Seg()


@pytest.fixture(scope="module")
def torch_seg():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    net = _torch_drnseg(torch)
    sd = synthetic_state_dict(seed=2)
    ref_keys = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    ref_keys = {k: v for k, v in ref_keys.items() if not k.endswith("num_batches_tracked")}
    assert ref_keys == expected_shapes()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    return torch, net.eval(), sd


def test_dilated_bottleneck_matches_torch(torch_seg):
    """First block of layer5: dilation 2, 1x1 downsample 512 -> 1024."""
    torch, net, sd = torch_seg
    variables = drn.convert_state_dict(sd)
    sub = {c: v["layer5"]["block0"] for c, v in variables.items()}
    x = np.random.default_rng(3).standard_normal((1, 7, 9, 512)).astype(np.float32)
    got = drn.Bottleneck(256, 1, 2, True).apply(sub, jnp.asarray(x))
    with torch.no_grad():
        want = net.base[5][0](torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(
        np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4
    )


def test_full_drnseg_and_segmenter_match_torch(torch_seg):
    torch, net, sd = torch_seg
    variables = drn.convert_state_dict(sd)
    images = np.random.default_rng(4).uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    segmenter = drn.drn_segmenter(variables)
    got = np.asarray(jax.jit(segmenter.apply_fn)(variables, jnp.asarray(images)))
    mean = np.array(drn.CITYSCAPES_MEAN, np.float32)
    std = np.array(drn.CITYSCAPES_STD, np.float32)
    normalised = ((images + 1) / 2 - mean) / std
    with torch.no_grad():
        want = net(torch.from_numpy(normalised).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert got.shape == (1, 32, 48, 19)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    assert isinstance(segmenter, segmentation.Segmenter) and segmenter.num_classes == 19
