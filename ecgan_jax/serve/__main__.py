"""`python -m ecgan_jax.serve --config=CONFIG --workdir=DIR`: the painting page and its API.

    python -m ecgan_jax.serve --config=configs/synthetic.py --workdir=runs/demo \
        [--checkpoint=STEP_OR_DIR] [--raw] [--port=8000] [--host=127.0.0.1] [--batch_size=1] \
        [--config.model.dtype=bfloat16 ...]

`--workdir`: a training workdir (the latest checkpoint's EMA generator unless `--checkpoint` /
`--raw`) or a directory written by `python -m ecgan_jax.convert`, as
`inference.load_generator` takes them; `--config` must be the config the generator was
trained (or converted) with. Then open http://127.0.0.1:8000/ (routes: ecgan_jax/serve/server.py).
"""

from __future__ import annotations

import ipaddress

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file[:variant] of the run.", lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Training workdir (its checkpoints/), or a converted checkpoint directory."
)
flags.DEFINE_string(
    "checkpoint", None, "A step of --workdir, or a checkpoint directory (step dir, or converted)."
)
flags.DEFINE_bool("raw", False, "Use the raw generator parameters, not the EMA.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (no authentication: keep it local).")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: a free one).")
flags.DEFINE_integer("batch_size", 1, "Images per generator call (the one compiled shape).")
flags.DEFINE_float(
    "batch_window_ms", 20.0, "With --batch_size > 1: how long to wait for more requests."
)
flags.DEFINE_integer("num_samples", 16, "Validation label maps the page offers (0: none).")
flags.DEFINE_string("class_names", None, "Text file: one class name per line, in id order.")
flags.DEFINE_integer("max_body_bytes", 8 * 1024 * 1024, "Largest request body accepted.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None and FLAGS.checkpoint is None:
        raise app.UsageError("give --workdir and/or --checkpoint")
    from ecgan_jax.serve.server import build_app, make_http_server

    try:
        serve_app = build_app(
            FLAGS.config,
            workdir=FLAGS.workdir,
            checkpoint=FLAGS.checkpoint,
            use_ema=not FLAGS.raw,
            batch_size=FLAGS.batch_size,
            batch_window_s=FLAGS.batch_window_ms / 1000.0,
            num_samples=FLAGS.num_samples,
            class_names=FLAGS.class_names,
            max_body_bytes=FLAGS.max_body_bytes,
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"ecgan_jax.serve: {e}") from None
    try:
        httpd = make_http_server(serve_app, FLAGS.host, FLAGS.port)
    except OSError as e:
        serve_app.engine.close()
        raise SystemExit(
            f"ecgan_jax.serve: cannot listen on {FLAGS.host}:{FLAGS.port} ({e}); choose another "
            "--port or --host"
        ) from None
    if not _is_loopback(FLAGS.host):
        logging.warning("listening on %s: anyone who can reach it can use the page", FLAGS.host)
    print(f"ecgan_jax.serve: open {httpd.url}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        serve_app.engine.close()


def run() -> None:
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    run()
