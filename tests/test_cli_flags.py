"""The commands' flags (ecgan_jax/cli/flags.py): absl + config_flags, one-line errors, no shared
state between in-process calls, and the programs as users run them (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

from ecgan_jax.cli import evaluate, generate
from ecgan_jax.cli import flags as cli_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/synthetic.py:smoke")


def parse(*args, define=generate.define_flags):
    return cli_flags.parse([f"--config={CONFIG}", *args], define)


def test_config_and_overrides_as_in_main():
    fv = parse(
        "--config.model.dtype=bfloat16",
        "--config.dataset.image_size=(64, 128)",
        "--config.dataset.no_instance",
        "--noconfig.perceptual.enabled",
        "--config.batch_size=3",
    )
    config = cli_flags.load_config(fv)
    assert config.model.dtype == "bfloat16" and config.dataset.image_size == (64, 128)
    assert config.dataset.no_instance is True and config.perceptual.enabled is False
    assert config.batch_size == 3 and config.dataset.label_nc == 8  # the rest from the file
    assert cli_flags.config_spec(fv) == CONFIG
    assert cli_flags.config_overrides(fv) == {
        "model.dtype": "bfloat16",
        "dataset.image_size": [64, 128],
        "dataset.no_instance": True,
        "perceptual.enabled": False,
        "batch_size": 3,
    }
    # An override that breaks the schema: the config's own validation message.
    with pytest.raises(ValueError, match=r"'dataset.image_size' = \(16, 16\) is invalid"):
        cli_flags.load_config(parse("--config.dataset.image_size=(16, 16)"))


def test_shared_flags_and_defaults():
    for define in (generate.define_flags, evaluate.define_flags):
        fv = parse(define=define)
        assert (fv.workdir, fv.checkpoint, fv.raw, fv.batch_size, fv.num_devices) == (
            None,
            None,
            False,
            8,
            -1,
        )
        assert fv.overwrite is False
    fv = parse("--workdir=w", "--checkpoint=3", "--raw", "--batch_size=2", "--num_devices=1")
    assert (fv.workdir, fv.checkpoint, fv.raw, fv.batch_size, fv.num_devices) == (
        "w",
        "3",
        True,
        2,
        1,
    )
    # The program name is optional (absl's argv[0]).
    assert cli_flags.parse(["prog", f"--config={CONFIG}", "--raw"], generate.define_flags).raw
    ev = parse(
        "--segmenter=upernet101",
        "--segmenter_scales=single",
        "--real",
        define=evaluate.define_flags,
    )
    assert (ev.segmenter, ev.segmenter_scales, ev.real, ev.label_mapping) == (
        "upernet101",
        "single",
        True,
        "auto",
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.dataset.nope=1"], r"--config.dataset.nope: the config has no field .*label_nc"),
        (["--config.nope.x=1"], r"no field 'nope.x' \(fields of the config: .*batch_size"),
        (["--config.model.ngf=abc"], r"--config.model.ngf=abc: invalid literal"),
        (["--bogus=1"], r"Unknown command line flag 'bogus'"),
        (["--labels=a", "extra"], r"unexpected arguments \['extra'\]"),
        (["--batch_size=0"], r"--batch_size=0: 0 is not a positive integer"),
        (["--segmenter=fcn"], None),  # generate has no --segmenter flag
    ],
)
def test_bad_flags_are_one_line_errors(args, message):
    with pytest.raises(cli_flags.CommandLineError) as e:
        parse(*args)
    assert "\n" not in str(e.value)
    if message:
        assert e.match(message)


def test_bad_config_files_are_one_line_errors(tmp_path):
    with pytest.raises(cli_flags.CommandLineError, match=r"config file not found: .*nope\.py$"):
        cli_flags.parse([f"--config={tmp_path / 'nope.py'}"], generate.define_flags)
    with pytest.raises(
        cli_flags.CommandLineError, match=r"synthetic.py:bad: ValueError: .*unknown variant 'bad'"
    ) as e:
        cli_flags.parse([f"--config={CONFIG[:-6]}:bad"], generate.define_flags)
    assert "\n" not in str(e.value)
    with pytest.raises(cli_flags.CommandLineError, match=r"--config is required"):
        cli_flags.load_config(cli_flags.parse([], generate.define_flags))
    with pytest.raises(cli_flags.CommandLineError, match=r"--labels is required: folder of"):
        generate.main([f"--config={CONFIG}", "--workdir=w", "--out=o"])
    with pytest.raises(cli_flags.CommandLineError, match=r"give --workdir .*and/or --checkpoint"):
        generate.main([f"--config={CONFIG}", "--labels=l", "--out=o"])


def test_calls_share_no_flag_state():
    """Each call parses into its own FlagValues: nothing leaks between calls or into absl's
    global FLAGS, and flags of the same names there (cli/train.py defines --config and
    --workdir in it) do not collide."""
    added = [n for n in ("config", "workdir", "labels") if n not in flags.FLAGS]
    for name in added:
        flags.DEFINE_string(name, "global", "a global flag of the same name")
    try:
        first = parse("--raw", "--config.model.dtype=bfloat16", "--labels=a", "--workdir=w")
        second = parse()
        assert first.raw and not second.raw and second.labels is None
        assert (first.workdir, second.workdir) == ("w", None)
        assert cli_flags.load_config(second).model.dtype == "float32"
        assert "segmenter" not in flags.FLAGS and "config.model.dtype" not in flags.FLAGS
        # Both commands' flags in one process, one after the other.
        ev = parse("--real", define=evaluate.define_flags)
        assert ev.real and "labels" not in ev and "segmenter" not in second
    finally:
        for name in added:
            delattr(flags.FLAGS, name)


def _program(module, *args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_programs_print_one_line_errors_and_help(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(labels / "a.png")
    (tmp_path / "instances").mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(tmp_path / "instances" / "a.png")
    conv = tmp_path / "conv"
    from ecgan_jax.interop.authors import save_converted

    save_converted(str(conv), {"params": {"w": np.zeros(2, np.float32)}})
    # --out=--labels: exit status 2 (bad input), one line that names the folder and what to do.
    done = _program(
        "ecgan_jax.generate",
        f"--config={CONFIG}",
        f"--workdir={conv}",
        f"--labels={labels}",
        f"--out={labels}",
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --out={labels} is an input folder (the label maps folder: {labels}); choose "
        "an --out outside it (inputs are never written to)"
    )
    assert "Traceback" not in done.stderr
    # A bad override: the field, before anything runs.
    done = _program("ecgan_jax.evaluate", f"--config={CONFIG}", "--config.nope=1", cwd=ROOT)
    assert done.returncode == 2 and "error: --config.nope: the config has no field" in done.stderr
    # --help (absl exits with status 1 after it): the command's docstring and its flags.
    done = _program("ecgan_jax.evaluate", "--help", cwd=ROOT)
    text = done.stdout + done.stderr
    assert "FID and mIoU / pixel accuracy" in text
    for name in ("--config", "--segmenter_weights", "--real", "--overwrite", "--workdir"):
        assert name in text
