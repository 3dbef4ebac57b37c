"""The HTTP side of `python -m ecgan_jax.serve`: the page, its static files and a small JSON API.

Standard library only (`http.server.ThreadingHTTPServer`): one thread per connection, every
generation goes through the one `GenerationEngine`, so the generator is compiled once and
never per request.

    GET  /                            the painting page (static/index.html)
    GET  /static/<file>               its script and style sheet
    GET  /api/classes                 {"dataset", "image_size": [H, W], "classes": [{id, name,
                                      color: [r, g, b]}]}
    GET  /api/info                    the generator: checkpoint, step, parameters, batch size,
                                      compile time, limits
    GET  /api/samples                 {"samples": [{index, stem}], "note"}: validation maps
    GET  /api/samples/<i>/label.png   validation label map i (palette PNG: ids = indices)
    GET  /api/samples/<i>/image.png   its real image
    POST /api/generate?output=final   label-map PNG body (one channel, the dataset's ids, at
                                      dataset.image_size) -> PNG of I″; output=first: I′,
                                      output=edge: I′_e, output=all: JSON of the three as
                                      base64 PNGs and the generator's seconds (the page's call)
    POST /api/labelmap                a label-map PNG of any size (at most 8192 per side) ->
                                      JSON {height, width, dtype, data: base64 ids, source_size},
                                      resized to dataset.image_size by nearest neighbour as the
                                      generate command does (the page's upload)

Bad input answers HTTP 400 with one plain-text line naming what is wrong and what is allowed
(`codec.BadInput`); a full queue 503; a failure of the generator 500; unknown paths 404.
Instance maps are derived from the label map (`codec.instances_from_labels`). Bind to
127.0.0.1 (the default) unless the page should be reachable from other machines: there is no
authentication.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import importlib.resources
import json
import logging
import re
import socket
import urllib.parse

import numpy as np

from ecgan_jax.serve import codec
from ecgan_jax.serve.catalog import ClassTable, ValidationMaps, class_table, num_label_values
from ecgan_jax.serve.engine import EngineBusy, GenerationEngine
from ecgan_jax.sharding import local_mesh

OUTPUTS = ("final", "first", "edge", "all")
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DRAIN_LIMIT = 64 * 1024 * 1024
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
_SAMPLE_PATH = re.compile(r"^/api/samples/(\d+)/(label|image)\.png$")


@dataclasses.dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict = dataclasses.field(default_factory=dict)


def _json(obj, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(obj).encode())


def _text(message: str, status: int) -> Response:
    return Response(status, "text/plain; charset=utf-8", (message.strip() + "\n").encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ServeApp:
    """Routes requests to the engine, the class table and the validation maps.

    `handle(method, path, body)` -> `Response`; it never raises for bad input.
    """

    def __init__(
        self,
        engine: GenerationEngine,
        config,
        *,
        classes: ClassTable | None = None,
        samples: ValidationMaps | None = None,
        info: dict | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        self.engine = engine
        self.config = config
        self.classes = classes if classes is not None else class_table(config)
        self.samples = samples if samples is not None else ValidationMaps(config, limit=0)
        self.max_body_bytes = int(max_body_bytes)
        self.image_size = engine.image_size
        self.num_values = num_label_values(config)
        d = config.dataset
        self.dontcare = int(d.label_nc) if d.contain_dontcare_label else None
        self.info = {
            "dataset": str(d.name),
            "image_size": list(self.image_size),
            "batch_size": engine.batch_size,
            "compile_seconds": round(engine.compile_seconds, 3),
            "uses_instances": not bool(d.no_instance),
            "instances": "derived from the label map: the instance-boundary channel is the "
            "class boundary map",
            "max_body_bytes": self.max_body_bytes,
            "num_samples": len(self.samples),
            **(info or {}),
        }
        self._static = importlib.resources.files("ecgan_jax.serve") / "static"

    # -- routing
    def handle(self, method: str, path: str, body: bytes = b"") -> Response:
        url = urllib.parse.urlsplit(path)
        route = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        try:
            if method == "POST":
                if route == "/api/generate":
                    return self.generate(body, self._output(query))
                if route == "/api/labelmap":
                    return self.import_labelmap(body)
                return _text(f"no POST route {route}; POST /api/generate or /api/labelmap", 404)
            if method != "GET":
                return _text(f"method {method} not allowed; allowed: GET, POST", 405)
            if route in ("/", "/index.html"):
                return self.static("index.html")
            if route.startswith("/static/"):
                return self.static(route[len("/static/") :])
            if route == "/api/classes":
                return _json(
                    {
                        "dataset": str(self.config.dataset.name),
                        "image_size": list(self.image_size),
                        "classes": self.classes.as_json(),
                    }
                )
            if route == "/api/info":
                return _json(self.info)
            if route == "/api/samples":
                samples = [{"index": i, "stem": s} for i, s in enumerate(self.samples.stems)]
                return _json({"samples": samples, "note": self.samples.note})
            match = _SAMPLE_PATH.match(route)
            if match:
                return self.sample(int(match.group(1)), match.group(2))
            return _text(f"no such page {route}; the API is under /api/ (see GET /api/info)", 404)
        except codec.BadInput as e:
            return _text(str(e), 400)
        except EngineBusy as e:
            return _text(str(e), 503)
        except Exception as e:  # the generator failed: say so instead of dropping the connection
            logging.exception("request %s %s failed", method, route)
            return _text(f"generation failed: {type(e).__name__}: {e}".replace("\n", " "), 500)

    @staticmethod
    def _output(query) -> str:
        values = query.get("output", ["final"])
        if len(values) != 1 or values[0] not in OUTPUTS:
            raise codec.BadInput(
                f"output={','.join(values)!r} is invalid; allowed: {', '.join(OUTPUTS)}"
            )
        return values[0]

    # -- handlers
    def generate(self, body: bytes, output: str = "final") -> Response:
        label, _ = codec.read_label_png(
            body, self.num_values, size=self.image_size, dontcare=self.dontcare
        )
        result = self.engine.generate(label, codec.instances_from_labels(label))
        seconds = {"X-Generator-Seconds": f"{result.seconds:.4f}"}
        if output != "all":
            png = codec.encode_rgb_png(getattr(result, output))
            return Response(200, "image/png", png, seconds)
        return _json(
            {
                name: _b64(codec.encode_rgb_png(getattr(result, name)))
                for name in ("final", "first", "edge")
            }
            | {"seconds": result.seconds}
        )

    def import_labelmap(self, body: bytes) -> Response:
        from ecgan_jax.data.transforms import resize_nearest

        label, source = codec.read_label_png(
            body, self.num_values, size=None, dontcare=self.dontcare
        )
        label = resize_nearest(label, self.image_size)
        dtype = np.uint8 if self.num_values <= 256 else np.dtype("<u2")
        return _json(
            {
                "height": self.image_size[0],
                "width": self.image_size[1],
                "dtype": np.dtype(dtype).name,
                "data": _b64(np.ascontiguousarray(label, dtype).tobytes()),
                "source_size": list(source),
            }
        )

    def sample(self, index: int, kind: str) -> Response:
        if not 0 <= index < len(self.samples):
            have = f"0..{len(self.samples) - 1}" if len(self.samples) else "none"
            note = f" ({self.samples.note})" if self.samples.note else ""
            return _text(f"validation map {index} does not exist; allowed: {have}{note}", 404)
        if kind == "label":
            png = codec.encode_label_png(self.samples.label(index), self.classes.colors)
        else:
            png = codec.encode_rgb_png(self.samples.image(index))
        return Response(200, "image/png", png)

    def static(self, name: str) -> Response:
        files = {p.name: p for p in self._static.iterdir() if p.is_file()}
        if name not in files:
            return _text(f"no static file {name!r}; have: {', '.join(sorted(files))}", 404)
        suffix = name[name.rfind(".") :]
        return Response(
            200,
            STATIC_TYPES.get(suffix, "application/octet-stream"),
            files[name].read_bytes(),
            {"Cache-Control": "no-cache"},
        )


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "ecgan-serve/1"
    protocol_version = "HTTP/1.1"  # keep-alive: the page sends a request per stroke
    timeout = 60  # seconds a client may take to send its request

    def setup(self):
        super().setup()
        # The headers and the body go out in two writes; with Nagle's algorithm the second
        # waits for the client's delayed ACK of the first (about 40 ms on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(_text("chunked request bodies are not accepted; send Content-Length", 400))
            return None
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._send(
                _text(
                    f"Content-Length {length_text!r} is missing or invalid; send the PNG as the "
                    "body with its length",
                    400,
                )
            )
            return None
        length = int(length_text)
        if length > self.server.app.max_body_bytes:
            # Read (and drop) a moderately large body so that the client, still sending it,
            # gets the answer instead of a reset connection; past DRAIN_LIMIT just close.
            left = length if length <= DRAIN_LIMIT else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            self.close_connection = True
            self._send(self._too_large(length))
            return None
        return self.rfile.read(length)

    def _too_large(self, length: int) -> Response:
        limit = self.server.app.max_body_bytes
        return _text(
            f"request body of {length} bytes is too large; allowed: at most {limit} bytes "
            "(--max_body_bytes)",
            400,
        )

    def handle_expect_100(self):
        # `Expect: 100-continue` (curl sends it for large bodies): refuse before the body.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.app.max_body_bytes:
            self.close_connection = True
            self._send(self._too_large(int(length)))
            return False
        return super().handle_expect_100()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._send(self.server.app.handle("GET", self.path))

    def do_HEAD(self):  # noqa: N802
        self._send(self.server.app.handle("GET", self.path))

    def do_POST(self):  # noqa: N802
        body = self._body()
        if body is not None:
            self._send(self.server.app.handle("POST", self.path, body))

    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        logging.info("%s %s", self.address_string(), format % args)


class ServeHTTPServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the `ServeApp` its handlers use."""

    daemon_threads = True

    def __init__(self, address, app: ServeApp):
        self.app = app
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_http_server(app: ServeApp, host: str = "127.0.0.1", port: int = 8000):
    """The bound (not yet serving) server; port 0 picks a free port (see `.url`)."""
    return ServeHTTPServer((host, int(port)), app)


def build_app(
    config,
    *,
    workdir: str | None = None,
    checkpoint=None,
    use_ema: bool = True,
    batch_size: int = 1,
    mesh=None,
    batch_window_s: float = 0.0,
    num_samples: int = 16,
    class_names: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ServeApp:
    """Loads the generator (`inference.restore_generator`), compiles it and builds the app.

    `mesh`: the devices a batch is sharded over (default: one; `batch_size` must be a
    multiple of its size).
    """
    from ecgan_jax import inference

    classes = class_table(config, class_names)  # a bad names file fails before loading
    loaded = inference.restore_generator(
        config, workdir=workdir, checkpoint=checkpoint, use_ema=use_ema
    )
    engine = GenerationEngine(
        loaded.module,
        loaded.variables,
        config,
        batch_size=batch_size,
        mesh=local_mesh(1) if mesh is None else mesh,
        batch_window_s=batch_window_s,
    )
    info = {
        "checkpoint": loaded.checkpoint.path,
        "step": loaded.checkpoint.step,
        "parameters": loaded.params,
    }
    return ServeApp(
        engine,
        config,
        classes=classes,
        samples=ValidationMaps(config, limit=num_samples),
        info=info,
        max_body_bytes=max_body_bytes,
    )
