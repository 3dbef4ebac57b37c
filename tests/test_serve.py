"""`ecgan_jax.serve`: the HTTP API on a loopback port, against a tiny random generator.

The server runs in-process on a free 127.0.0.1 port over a step-0 training checkpoint
(tests/serve_checkpoint.py). Images are checked against the generator applied in the test
(labels one-hot encoded outside the server, instances = labels); validation maps against the
synthetic scenes drawn directly; every bad input against its 400 message.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from serve_checkpoint import make_serve_workdir

from ecgan_jax import config_lib
from ecgan_jax.data import palette, synthetic
from ecgan_jax.eval.quality import to_uint8
from ecgan_jax.models.encoding import encode_labels
from ecgan_jax.serve import catalog, codec
from ecgan_jax.serve.engine import EngineBusy, GenerationEngine
from ecgan_jax.serve.server import ServeApp, build_app, make_http_server

pytestmark = pytest.mark.xdist_group("serve")
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(config, generator, variables, server, app) with batch 2 (requests share a call)."""
    config, workdir, generator, variables = make_serve_workdir(tmp_path_factory.mktemp("w"))
    app = build_app(config, workdir=workdir, batch_size=2, num_samples=4, max_body_bytes=MAX_BODY)
    server = make_http_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield config, generator, variables, server, app
    server.shutdown()
    server.server_close()
    app.engine.close()


def request(server, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request to the test server."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def label_png(label):
    return png(np.asarray(label, np.uint8))


def blocky_label(seed, size=(32, 64), n=8):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, n, (size[0] // 8, size[1] // 8))
    return np.repeat(np.repeat(coarse, 8, 0), 8, 1).astype(np.int32)


def reference(generator, variables, config, labels):
    """uint8 (I′, I″, I′_e) of (B, H, W) labels, instances = labels, in this process."""
    labels = jnp.asarray(labels)
    seg = encode_labels(labels, labels, config)
    fn = jax.jit(lambda v, s: generator.apply(v, s, train=False))
    return [to_uint8(o) for o in fn(variables, seg)]


def decode(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def test_generate_returns_the_generators_image(served):
    config, generator, variables, server, _ = served
    labels = np.stack([blocky_label(1), blocky_label(2)])
    first, final, edge = reference(generator, variables, config, labels)
    status, headers, body = request(server, "POST", "/api/generate", label_png(labels[0]))
    assert status == 200 and headers["Content-Type"] == "image/png"
    got = decode(body)
    assert got.shape == (32, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, final[0])
    assert float(headers["X-Generator-Seconds"]) > 0
    for name, want in (("first", first), ("edge", edge), ("final", final)):
        status, _, body = request(
            server, "POST", f"/api/generate?output={name}", label_png(labels[1])
        )
        assert status == 200
        np.testing.assert_array_equal(decode(body), want[1])
    # output=all (the page's call), from a palette PNG whose indices are the ids.
    body = codec.encode_label_png(labels[1], catalog.class_table(config).colors)
    assert Image.open(io.BytesIO(body)).mode == "P"
    status, headers, body = request(server, "POST", "/api/generate?output=all", body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    result = json.loads(body)
    for name, want in (("first", first), ("final", final), ("edge", edge)):
        np.testing.assert_array_equal(decode(base64.b64decode(result[name])), want[1])
    assert not np.array_equal(final[0], final[1])  # the label map matters


def test_requests_share_one_compiled_batch(served):
    """Two queued requests run as one batch of 2; nothing compiles after start-up."""
    config, generator, variables, server, app = served
    engine = app.engine
    labels = [blocky_label(3), blocky_label(4)]
    want = reference(generator, variables, config, np.stack(labels))[1]
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: events.append(name) if name.startswith("/jax/core/compile") else 0
    )
    batches, images = engine.batches_run, engine.images_run
    engine.batch_window_s = 5.0  # the worker waits for the second request
    try:
        futures = [engine.submit(x, x) for x in labels]
        results = [f.result(timeout=60) for f in futures]
    finally:
        engine.batch_window_s = 0.0
    assert (engine.batches_run - batches, engine.images_run - images) == (1, 2)
    for r, w in zip(results, want, strict=True):
        np.testing.assert_array_equal(r.final, w)
    one = engine.generate(labels[0], labels[0])  # a partial batch: padded, same image
    np.testing.assert_array_equal(one.final, want[0])
    assert events == []


def test_bad_inputs_answer_400_with_one_line(served):
    _, _, _, server, _ = served
    good = blocky_label(5)
    out_of_range = good.copy()
    out_of_range[0, :3] = [8, 9, 200]
    cases = [
        (b"", "empty request body"),
        (b"GIF89a not a png", "request body is not a PNG"),
        (png(np.zeros((32, 64, 3), np.uint8)), "has mode 'RGB' (3 channels); allowed: a single"),
        (png(np.zeros((32, 64, 4), np.uint8)), "has mode 'RGBA'"),
        (label_png(out_of_range), "has ids 8, 9, 200 outside the allowed class ids 0..7"),
        (label_png(good[:16]), "label map is 64x16 (width x height); this generator takes 64x32"),
        (label_png(good)[:60], "cannot"),  # truncated
        (b"x" * (MAX_BODY + 1), f"too large; allowed: at most {MAX_BODY} bytes"),
    ]
    for body, message in cases:
        status, headers, text = request(server, "POST", "/api/generate", body)
        text = text.decode()
        assert status == 400, (message, status, text)
        assert message in text and text.count("\n") == 1, (message, text)
        assert headers["Content-Type"].startswith("text/plain")
    status, _, text = request(server, "POST", "/api/generate?output=photo", label_png(good))
    assert status == 400 and "output='photo' is invalid; allowed: final, first, edge, all" in (
        text.decode()
    )
    # Chunked bodies (no Content-Length) are refused too.
    body = label_png(good)
    raw = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=60) as sock:
        sock.sendall(raw)
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400") and b"chunked request bodies are not" in answer
    status, _, text = request(server, "GET", "/api/nothing")
    assert status == 404
    # The server still answers after all that.
    assert request(server, "POST", "/api/generate", label_png(good))[0] == 200


def test_classes_and_page(served):
    _, _, _, server, _ = served
    status, headers, body = request(server, "GET", "/api/classes")
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["dataset"] == "synthetic" and data["image_size"] == [32, 64]
    assert [c["name"] for c in data["classes"]] == list(synthetic.CLASS_NAMES)
    assert [c["id"] for c in data["classes"]] == list(range(8))
    assert [c["color"] for c in data["classes"]] == synthetic.PALETTE.tolist()
    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and info["step"] == 0 and info["parameters"] == "ema"
    assert info["batch_size"] == 2 and info["uses_instances"] is True
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript")):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    assert request(server, "GET", "/static/../server.py")[0] == 404


def test_class_tables_of_the_other_datasets(tmp_path):
    city = catalog.class_table(config_lib.load_config("configs/cityscapes.py"))
    assert len(city) == 35 and city.names[7] == "road" and city.names[26] == "car"
    assert city.names[23] == "sky" and city.names[34] == "license plate"
    np.testing.assert_array_equal(city.colors, palette.CITYSCAPES_PALETTE)
    ade = catalog.class_table(config_lib.load_config("configs/ade20k.py"))
    assert len(ade) == 151 and ade.names[0] == "unknown" and ade.names[150] == "dontcare"
    coco = catalog.class_table(config_lib.load_config("configs/coco_stuff.py"))
    assert len(coco) == 183 and coco.names[182] == "unknown"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(151)))
    assert catalog.class_table(config_lib.load_config("configs/ade20k.py"), str(names)).names[
        3
    ] == ("thing 3")
    with pytest.raises(ValueError, match="has 8 names; this config takes 151 label values"):
        names.write_text("\n".join("abcdefgh"))
        catalog.class_table(config_lib.load_config("configs/ade20k.py"), str(names))


def test_validation_maps_and_upload(served):
    config, _, _, server, _ = served
    status, _, body = request(server, "GET", "/api/samples")
    stems = [s["stem"] for s in json.loads(body)["samples"]]
    assert status == 200 and stems == [f"synthetic_eval_{i:06d}" for i in range(4)]
    source = synthetic.SyntheticSource(16, (32, 64), seed=int(config.seed), stream=1)
    status, _, body = request(server, "GET", "/api/samples/2/label.png")
    assert status == 200
    np.testing.assert_array_equal(decode(body), source[2]["label"])
    status, _, body = request(server, "GET", "/api/samples/2/image.png")
    np.testing.assert_array_equal(decode(body), source[2]["image"])
    assert request(server, "GET", "/api/samples/4/label.png")[0] == 404
    # Upload: any size, resized by nearest (an exact 2x here), ids returned as base64 bytes.
    label = source[1]["label"]
    big = np.repeat(np.repeat(label, 2, 0), 2, 1)
    status, _, body = request(server, "POST", "/api/labelmap", label_png(big))
    data = json.loads(body)
    assert status == 200 and data["source_size"] == [64, 128] and data["dtype"] == "uint8"
    ids = np.frombuffer(base64.b64decode(data["data"]), np.uint8).reshape(32, 64)
    np.testing.assert_array_equal(ids, label)
    status, _, text = request(server, "POST", "/api/labelmap", png(np.zeros((8, 8, 3), np.uint8)))
    assert status == 400 and b"mode 'RGB'" in text


def test_codec_round_trip_and_dontcare():
    ids = np.arange(183 * 4).reshape(12, 61)[:, :61] % 183
    colors = catalog.class_table(config_lib.load_config("configs/coco_stuff.py")).colors
    back, size = codec.read_label_png(codec.encode_label_png(ids, colors), 183, size=(12, 61))
    np.testing.assert_array_equal(back, ids)
    assert size == (12, 61)
    wide = np.arange(300 * 2).reshape(2, 300) % 300
    back, _ = codec.read_label_png(
        codec.encode_label_png(wide, np.zeros((300, 3), np.uint8)), 300, size=(2, 300)
    )
    np.testing.assert_array_equal(back, wide)
    # 255 is the dontcare class of COCO-Stuff's label files (label_nc = 182).
    raw = np.array([[0, 255], [181, 255]], np.uint8)
    back, _ = codec.read_label_png(png(raw), 183, size=(2, 2), dontcare=182)
    np.testing.assert_array_equal(back, [[0, 182], [181, 182]])


class _FailingEngine:
    """Stands in for GenerationEngine: its generate raises `error`."""

    image_size, batch_size, compile_seconds = (32, 64), 1, 0.0

    def __init__(self, error):
        self.error = error

    def generate(self, label, instance):
        raise self.error


def test_busy_queue_and_generator_failure_answers():
    config = config_lib.load_config("configs/synthetic.py:smoke")
    body = label_png(blocky_label(6))
    busy = ServeApp(_FailingEngine(EngineBusy("64 requests are already waiting")), config)
    response = busy.handle("POST", "/api/generate", body)
    assert response.status == 503 and b"already waiting" in response.body
    broken = ServeApp(_FailingEngine(RuntimeError("out of\nmemory")), config)
    response = broken.handle("POST", "/api/generate", body)
    assert response.status == 500
    assert response.body == b"generation failed: RuntimeError: out of memory\n"


def test_engine_refuses_past_its_queue(served):
    config, generator, variables, _, _ = served
    engine = GenerationEngine(generator, variables, config, batch_size=1, max_queue=1)
    try:
        label = blocky_label(7)
        futures, refused = [], 0
        for _ in range(3):
            try:
                futures.append(engine.submit(label, label))
            except EngineBusy as e:
                refused += 1
                assert "1 requests are already waiting for the generator; retry" in str(e)
        assert refused >= 1
        assert all(f.result(timeout=60).final.shape == (32, 64, 3) for f in futures)
    finally:
        engine.close()
