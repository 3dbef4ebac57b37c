"""`python -m ecgan_jax.serve --config=CONFIG --workdir=DIR`: the painting page and its API.

    python -m ecgan_jax.serve --config=configs/synthetic.py --workdir=runs/demo \
        [--checkpoint=STEP_OR_DIR] [--raw] [--port=8000] [--host=127.0.0.1] [--batch_size=1] \
        [--num_devices=1] [--config.model.dtype=bfloat16 ...]

`--workdir`: a training workdir (the latest checkpoint's EMA generator unless `--checkpoint` /
`--raw`) or a directory written by `python -m ecgan_jax.convert`, as
`inference.load_generator` takes them; `--config` must be the config the generator was
trained (or converted) with. The checkpoint flags are `cli/flags.py`'s, as for
`python -m ecgan_jax.generate`, with one image per generator call on one device by default.
Then open http://127.0.0.1:8000/ (routes: ecgan_jax/serve/server.py).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from absl import flags

from ecgan_jax.cli import flags as cli_flags


def define_flags(fv: flags.FlagValues, argv: Sequence[str] | None = None) -> None:
    cli_flags.define_checkpoint_flags(fv, argv)
    # One request is one image: batching more only pays with several clients at once.
    fv.set_default("batch_size", 1)
    fv.set_default("num_devices", 1)
    flags.DEFINE_string(
        "host", "127.0.0.1", "address to listen on (no authentication: keep it local)",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer("port", 8000, "port to listen on (0: a free one)", flag_values=fv)
    flags.DEFINE_float(
        "batch_window_ms", 20.0, "with --batch_size > 1: how long a batch waits for more",
        lower_bound=0.0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_samples", 16, "validation label maps the page offers (0: none)", lower_bound=0,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_string(
        "class_names", None, "text file: one class name per line, in id order", flag_values=fv
    )
    flags.DEFINE_integer(
        "max_body_bytes", 8 * 1024 * 1024, "largest request body accepted", lower_bound=1,
        flag_values=fv,
    )  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(fv: flags.FlagValues) -> None:
    """Loads and compiles the generator, then serves until Ctrl-C / SIGTERM."""
    from ecgan_jax.serve.server import build_app, make_http_server

    config = cli_flags.load_config(fv)
    cli_flags.require_checkpoint(fv)
    mesh, batch_size = cli_flags.mesh_and_batch(fv)
    serve_app = build_app(
        config,
        workdir=fv.workdir,
        checkpoint=fv.checkpoint,
        use_ema=not fv.raw,
        batch_size=batch_size,
        mesh=mesh,
        batch_window_s=fv.batch_window_ms / 1000.0,
        num_samples=fv.num_samples,
        class_names=fv.class_names,
        max_body_bytes=fv.max_body_bytes,
    )
    try:
        httpd = make_http_server(serve_app, fv.host, fv.port)
    except OSError as e:
        serve_app.engine.close()
        raise OSError(
            f"--host={fv.host} --port={fv.port}: cannot listen there ({e}); choose another"
        ) from None
    if not _is_loopback(fv.host):
        logging.warning("listening on %s: anyone who can reach it can use the page", fv.host)
    print(f"ecgan_jax.serve: open {httpd.url}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        serve_app.engine.close()


def run() -> None:
    cli_flags.run(serve, define_flags, __doc__)


if __name__ == "__main__":
    run()
