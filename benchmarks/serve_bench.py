"""Request-to-image latency of `python -m ecgan_jax.serve` (issue 19's benchmark).

    python benchmarks/serve_bench.py --config=configs/synthetic.py [--workdir=runs/demo]
    python benchmarks/serve_bench.py --config=configs/cityscapes.py --requests=10
    python benchmarks/serve_bench.py --config=configs/synthetic.py --workdir=runs/demo \
        --browser --screenshot=docs/serve_demo.png

Starts the server in this process on a free 127.0.0.1 port (random generator weights unless
`--workdir` names a checkpoint) and times, from an HTTP client in this process, `--requests`
POST /api/generate calls one after another (the page's pattern: one request in flight), each
with a different label map (the config's validation scenes where it has them, else blocky
random maps): from sending the label-map PNG to holding the decoded I″ PNG. Reports the
start-up (weights + compile), the median / 90th percentile / max of the request latency and
the generator's share (its X-Generator-Seconds header), as one JSON line.

`--browser` (needs chromium, chromedriver and selenium) also opens the page in headless
Chromium, paints `--strokes` strokes of vegetation into the sky of validation map 1 and times
each from the end of the stroke to the new I″ on the page (this includes WebDriver's dispatch
of the stroke), and the page's own figure (label-map PNG encoding, request, image decoding);
`--screenshot` saves the page afterwards, with I′ and I′_e shown.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_app(config, batch_size: int):
    """A ServeApp over a freshly initialised generator (no checkpoint needed)."""
    import jax
    import jax.numpy as jnp

    from ecgan_jax import config_lib
    from ecgan_jax.models import build_generator
    from ecgan_jax.serve.catalog import ValidationMaps
    from ecgan_jax.serve.engine import GenerationEngine
    from ecgan_jax.serve.server import ServeApp
    from ecgan_jax.sharding import local_mesh

    generator = build_generator(config)
    h, w = config.dataset.image_size
    seg = jnp.zeros((1, h, w, config_lib.semantic_nc(config)), jnp.float32)
    variables = jax.jit(lambda k: generator.init(k, seg, train=False))(jax.random.key(0))
    engine = GenerationEngine(
        generator, variables, config, batch_size=batch_size, mesh=local_mesh(1)
    )
    samples = ValidationMaps(config, limit=16)
    return ServeApp(engine, config, samples=samples, info={"parameters": "random"})


def label_maps(app, n: int) -> list[np.ndarray]:
    if len(app.samples):
        return [app.samples.label(i % len(app.samples)) for i in range(n)]
    rng = np.random.default_rng(0)
    h, w = app.image_size
    maps = []
    for _ in range(n):
        coarse = rng.integers(0, app.num_values, (h // 16 + 1, w // 16 + 1))
        maps.append(np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:h, :w].astype(np.int32))
    return maps


def browser_latency(url: str, strokes: int, screenshot: str | None) -> dict:
    """Seconds from each painted stroke to its image on the page (headless Chromium)."""
    import re
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    state = (
        "const s = window.ecgan && window.ecgan.state;"
        "return s ? [s.generation, s.inflight || s.dirty] : [0, true];"
    )

    def wait(after):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            generation, busy = driver.execute_script(state)
            if generation > after and not busy:
                return generation
            time.sleep(0.005)
        raise SystemExit("the page showed no new image within 600 s")

    try:
        driver.get(url + "/")
        generation = wait(0)
        select = driver.find_element(By.ID, "samples")
        if len(select.find_elements(By.TAG_NAME, "option")) > 2:
            select.find_element(By.CSS_SELECTOR, "option[value='1']").click()
            generation = wait(generation)
        driver.find_element(By.ID, "show-all").click()
        driver.find_element(By.CSS_SELECTOR, ".class-button[data-id='4']").click()
        canvas = driver.find_element(By.ID, "label-canvas")
        width, height = canvas.size["width"], canvas.size["height"]

        def at(fx, fy):  # a point of the label map (fractions of W, H) as a canvas offset
            return round((fx - 0.5) * width), round((fy - 0.5) * height)

        # Each stroke is a short dab; together they paint a tree crown into the sky at the
        # right of validation map 1 (a scene worth a screenshot).
        seconds, page_ms = [], []
        for i in range(strokes):
            angle, ring = 2 * np.pi * i / max(1, strokes - 1), float(i > 0)  # centre first
            stroke = ActionChains(driver, duration=10)
            stroke.move_to_element_with_offset(
                canvas, *at(0.88 + 0.03 * ring * np.cos(angle), 0.3 + 0.06 * ring * np.sin(angle))
            )
            stroke.click_and_hold().move_by_offset(2, 1).release()
            t = time.perf_counter()
            stroke.perform()
            generation = wait(generation)
            seconds.append(time.perf_counter() - t)
            status = driver.find_element(By.ID, "status").text
            page_ms.append(float(re.search(r"updated in (\d+) ms", status).group(1)))
        # and a car on the road's left lane, with a wider brush (not timed)
        driver.find_element(By.CSS_SELECTOR, ".class-button[data-id='5']").click()
        driver.execute_script(
            "const s = document.getElementById('brush-size'); s.value = 7;"
            "s.dispatchEvent(new Event('input'));"
        )
        stroke = ActionChains(driver, duration=10)
        stroke.move_to_element_with_offset(canvas, *at(0.38, 0.86)).click_and_hold()
        stroke.move_by_offset(round(0.06 * width), 0).release().perform()
        wait(generation)
        if screenshot:
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(screenshot)
    finally:
        driver.quit()
    return {
        "browser_stroke_to_image_ms_median": round(1000 * float(np.median(seconds)), 1),
        "browser_stroke_to_image_ms_max": round(1000 * max(seconds), 1),
        "page_request_ms_median": float(np.median(page_ms)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file[:variant]")
    parser.add_argument("--workdir", default=None, help="checkpoint to serve (default: random)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    parser.add_argument("--batch_size", type=int, default=1, help="the server's batch size")
    parser.add_argument("--browser", action="store_true", help="also time the page in Chromium")
    parser.add_argument("--strokes", type=int, default=5, help="strokes painted with --browser")
    parser.add_argument("--screenshot", default=None, help="PNG of the page (with --browser)")
    args = parser.parse_args(argv)

    from PIL import Image

    from ecgan_jax import config_lib
    from ecgan_jax.serve import codec
    from ecgan_jax.serve.server import build_app, make_http_server

    config = config_lib.load_config(args.config)
    t0 = time.perf_counter()
    if args.workdir:
        app = build_app(config, workdir=args.workdir, batch_size=args.batch_size)
    else:
        app = random_app(config, args.batch_size)
    startup = time.perf_counter() - t0
    server = make_http_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=600)
    bodies = [
        codec.encode_label_png(m, app.classes.colors)
        for m in label_maps(app, args.warmup + args.requests)
    ]
    latency, generator = [], []
    for i, body in enumerate(bodies):
        t = time.perf_counter()
        conn.request("POST", "/api/generate", body=body, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"request {i}: HTTP {response.status}: {data.decode()}")
        image = np.asarray(Image.open(io.BytesIO(data)))
        elapsed = time.perf_counter() - t
        if i >= args.warmup:
            latency.append(elapsed)
            generator.append(float(response.getheader("X-Generator-Seconds")))
    assert image.shape == (*app.image_size, 3)
    conn.close()
    page = browser_latency(server.url, args.strokes, args.screenshot) if args.browser else {}
    server.shutdown()
    app.engine.close()
    ms = lambda xs, q: round(1000 * float(np.percentile(xs, q)), 1)
    print(
        json.dumps(
            {
                "config": args.config,
                "weights": args.workdir or "random",
                "image_size": list(app.image_size),
                "batch_size": args.batch_size,
                "requests": args.requests,
                "startup_s": round(startup, 1),
                "compile_s": round(app.engine.compile_seconds, 1),
                "latency_ms_median": ms(latency, 50),
                "latency_ms_p90": ms(latency, 90),
                "latency_ms_max": round(1000 * max(latency), 1),
                "generator_ms_median": ms(generator, 50),
                "cpu_count": os.cpu_count(),
                **page,
            }
        )
    )


if __name__ == "__main__":
    main()
