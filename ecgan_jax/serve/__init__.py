"""Paint a label map, get a photo: a web page and HTTP API over a trained generator.

    python -m ecgan_jax.serve --config=configs/synthetic.py --workdir=runs/demo [--port=8000]

Modules: `catalog` (class names and colours, validation label maps), `codec` (label-map PNGs
in and out, their checks, instance maps), `engine` (the generator compiled once behind a
batching request queue), `server` (the HTTP routes, `build_app`, `make_http_server`),
`static/` (the page: plain HTML and JavaScript, no network access besides this server).
"""

from ecgan_jax.serve.codec import BadInput
from ecgan_jax.serve.engine import GenerationEngine
from ecgan_jax.serve.server import ServeApp, build_app, make_http_server

__all__ = ["BadInput", "GenerationEngine", "ServeApp", "build_app", "make_http_server"]
