// The painting page of `python -m ecgan_jax.serve`: plain JavaScript, no libraries, no network
// access besides this page's server (routes: ecgan_jax/serve/server.py).
//
// The label map lives in `state.ids` (one class id per pixel, H*W); the canvas shows it in the
// dataset's palette. After each change the map is sent to POST /api/generate as a palette PNG
// (indices = class ids; encoded here), at most one request in flight: changes made while one
// runs are sent when it returns, so painting updates the images continuously.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_UNDO = 50;
  const state = {
    H: 0, W: 0, classes: [], palette: null, ids: null, current: 0, tool: 'brush', brush: 4,
    undo: [], generation: 0, inflight: false, dirty: false, last: null, painting: false,
    lastPoint: null,
  };
  const canvas = $('label-canvas');
  const ctx = canvas.getContext('2d');
  let imageData = null;

  function setStatus(text, isError = false) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('error', isError);
  }

  async function fetchOk(url, options) {
    const response = await fetch(url, options);
    if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
    return response;
  }

  // ------------------------------------------------------------------ label map and drawing

  function render() {
    const d = imageData.data, p = state.palette, ids = state.ids;
    for (let i = 0, n = ids.length; i < n; i++) {
      const c = ids[i] * 3;
      d[4 * i] = p[c]; d[4 * i + 1] = p[c + 1]; d[4 * i + 2] = p[c + 2]; d[4 * i + 3] = 255;
    }
    ctx.putImageData(imageData, 0, 0);
  }

  function pushUndo() {
    state.undo.push(state.ids.slice());
    if (state.undo.length > MAX_UNDO) state.undo.shift();
  }

  function toLabel(event) {
    const r = canvas.getBoundingClientRect();
    return [(event.clientX - r.left) * state.W / r.width, (event.clientY - r.top) * state.H / r.height];
  }

  function stamp(cx, cy) {
    const { W, H, ids, current } = state;
    const r = state.brush / 2;
    const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(W - 1, Math.floor(cx + r));
    const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(H - 1, Math.floor(cy + r));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy <= r * r) ids[y * W + x] = current;
      }
    }
    const px = Math.floor(cx), py = Math.floor(cy);  // a 1-pixel brush always paints its pixel
    if (px >= 0 && px < W && py >= 0 && py < H) ids[py * W + px] = current;
  }

  function line(from, to) {
    const dist = Math.hypot(to[0] - from[0], to[1] - from[1]);
    // Stamps a quarter pixel apart: the stroke's outline is then the brush circle swept.
    const steps = Math.max(1, Math.ceil(dist / 0.25));
    for (let s = 1; s <= steps; s++) {
      const t = s / steps;
      stamp(from[0] + (to[0] - from[0]) * t, from[1] + (to[1] - from[1]) * t);
    }
  }

  function floodFill(x, y) {
    const { W, H, ids, current } = state;
    if (x < 0 || x >= W || y < 0 || y >= H) return;
    const target = ids[y * W + x];
    if (target === current) return;
    const stack = new Int32Array(W * H);
    let top = 0;
    stack[top++] = y * W + x;
    ids[y * W + x] = current;
    while (top > 0) {
      const i = stack[--top], px = i % W;
      const next = [px > 0 ? i - 1 : -1, px < W - 1 ? i + 1 : -1, i >= W ? i - W : -1,
        i < W * (H - 1) ? i + W : -1];
      for (const j of next) {
        if (j >= 0 && ids[j] === target) { ids[j] = current; stack[top++] = j; }
      }
    }
  }

  function setIds(ids, { undoable = true } = {}) {
    if (undoable && state.ids) pushUndo();
    state.ids = ids;
    render();
    requestGenerate();
  }

  // ------------------------------------------------------------------ PNG encoding

  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function pngChunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }

  // zlib stream of `bytes`: the browser's deflate, or stored (uncompressed) blocks without it.
  async function zlib(bytes) {
    if (typeof CompressionStream !== 'undefined') {
      const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('deflate'));
      return new Uint8Array(await new Response(stream).arrayBuffer());
    }
    const blocks = Math.max(1, Math.ceil(bytes.length / 65535));
    const out = new Uint8Array(2 + bytes.length + 5 * blocks + 4);
    out[0] = 0x78; out[1] = 0x01;
    let o = 2;
    for (let b = 0; b < blocks; b++) {
      const part = bytes.subarray(b * 65535, (b + 1) * 65535), n = part.length;
      out[o++] = b === blocks - 1 ? 1 : 0;
      out[o++] = n & 255; out[o++] = n >>> 8; out[o++] = ~n & 255; out[o++] = (~n >>> 8) & 255;
      out.set(part, o); o += n;
    }
    let a = 1, s = 0;
    for (let i = 0; i < bytes.length; i++) { a = (a + bytes[i]) % 65521; s = (s + a) % 65521; }
    new DataView(out.buffer).setUint32(o, ((s << 16) | a) >>> 0);
    return out;
  }

  // The label map as a PNG the server reads back to the same ids: a palette PNG (indices =
  // class ids, palette = class colours) up to 256 classes, 16-bit grey beyond.
  async function encodeLabelPng() {
    const { W, H, ids } = state;
    const wide = state.classes.length > 256, bpp = wide ? 2 : 1, stride = 1 + W * bpp;
    const raw = new Uint8Array(H * stride);  // filter byte 0 (none) on every row
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const v = ids[y * W + x], o = y * stride + 1 + x * bpp;
        if (wide) { raw[o] = v >>> 8; raw[o + 1] = v & 255; } else raw[o] = v;
      }
    }
    const header = new Uint8Array(13);
    const hv = new DataView(header.buffer);
    hv.setUint32(0, W); hv.setUint32(4, H);
    header[8] = wide ? 16 : 8; header[9] = wide ? 0 : 3;
    const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', header)];
    if (!wide) parts.push(pngChunk('PLTE', state.palette.subarray(0, 3 * state.classes.length)));
    parts.push(pngChunk('IDAT', await zlib(raw)), pngChunk('IEND', new Uint8Array(0)));
    return new Blob(parts, { type: 'image/png' });
  }

  // ------------------------------------------------------------------ generation

  function requestGenerate() {
    state.dirty = true;
    if (!state.inflight) sendGenerate();
  }

  async function sendGenerate() {
    state.inflight = true;
    state.dirty = false;
    document.body.dataset.busy = '1';
    const t0 = performance.now();
    try {
      const body = await encodeLabelPng();
      const response = await fetchOk('/api/generate?output=all', {
        method: 'POST', headers: { 'Content-Type': 'image/png' }, body,
      });
      const result = await response.json();
      const loads = ['final', 'first', 'edge'].map((name) => {
        const img = $(name);
        img.src = 'data:image/png;base64,' + result[name];
        return img.decode();
      });
      await Promise.all(loads);
      state.last = result;
      state.generation += 1;
      document.body.dataset.generation = String(state.generation);
      const ms = Math.round(performance.now() - t0);
      setStatus(`I″ updated in ${ms} ms (generator ${Math.round(result.seconds * 1000)} ms)`);
    } catch (err) {
      setStatus(err.message, true);
    } finally {
      state.inflight = false;
      document.body.dataset.busy = '0';
      if (state.dirty) sendGenerate();
    }
  }

  // ------------------------------------------------------------------ label maps from the server

  function idsFromJson(json) {
    const bytes = Uint8Array.from(atob(json.data), (c) => c.charCodeAt(0));
    const values = json.dtype === 'uint8' ? bytes : new Uint16Array(bytes.buffer);
    return Uint16Array.from(values);
  }

  async function importPng(pngBytes) {
    const response = await fetchOk('/api/labelmap', {
      method: 'POST', headers: { 'Content-Type': 'image/png' }, body: pngBytes,
    });
    return response.json();
  }

  async function loadSample(index) {
    setStatus(`loading validation map ${index}…`);
    try {
      const png = await (await fetchOk(`/api/samples/${index}/label.png`)).arrayBuffer();
      setIds(idsFromJson(await importPng(png)));
      $('real').src = `/api/samples/${index}/image.png`;
      $('real-figure').hidden = false;
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  async function uploadFile(file) {
    try {
      const json = await importPng(await file.arrayBuffer());
      setIds(idsFromJson(json));
      $('real-figure').hidden = true;
      const [h, w] = json.source_size;
      if (h !== state.H || w !== state.W) {
        setStatus(`${file.name}: ${w}x${h} resized to ${state.W}x${state.H} (nearest)`);
      }
    } catch (err) {
      setStatus(`${file.name}: ${err.message}`, true);
    }
  }

  function download(href, name) {
    const a = document.createElement('a');
    a.href = href;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  // ------------------------------------------------------------------ controls

  function selectClass(id) {
    state.current = id;
    for (const b of document.querySelectorAll('.class-button')) {
      const on = Number(b.dataset.id) === id;
      b.classList.toggle('selected', on);
      b.setAttribute('aria-checked', String(on));
    }
  }

  function buildClassButtons() {
    const box = $('classes');
    for (const c of state.classes) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'class-button';
      b.dataset.id = String(c.id);
      b.setAttribute('role', 'radio');
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = `rgb(${c.color.join(',')})`;
      b.append(sw, `${c.id} ${c.name}`);
      b.addEventListener('click', () => selectClass(c.id));
      box.appendChild(b);
    }
  }

  function bindControls() {
    canvas.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      canvas.setPointerCapture(e.pointerId);
      const [x, y] = toLabel(e);
      pushUndo();
      if (state.tool === 'fill') {
        floodFill(Math.floor(x), Math.floor(y));
      } else {
        state.painting = true;
        state.lastPoint = [x, y];
        stamp(x, y);
      }
      render();
      requestGenerate();
    });
    canvas.addEventListener('pointermove', (e) => {
      if (!state.painting) return;
      const p = toLabel(e);
      line(state.lastPoint, p);
      state.lastPoint = p;
      render();
      requestGenerate();
    });
    const end = () => { state.painting = false; };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);

    for (const r of document.querySelectorAll('input[name=tool]')) {
      r.addEventListener('change', () => { state.tool = r.value; });
    }
    $('brush-size').addEventListener('input', (e) => {
      state.brush = Number(e.target.value);
      $('brush-size-value').textContent = e.target.value;
    });
    const undo = () => {
      if (!state.undo.length) { setStatus('nothing to undo'); return; }
      state.ids = state.undo.pop();
      render();
      requestGenerate();
    };
    $('undo').addEventListener('click', undo);
    document.addEventListener('keydown', (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === 'z') { e.preventDefault(); undo(); }
    });
    $('clear').addEventListener('click', () => setIds(new Uint16Array(state.W * state.H).fill(state.current)));
    $('samples').addEventListener('change', (e) => {
      if (e.target.value !== '') loadSample(Number(e.target.value));
    });
    $('upload').addEventListener('change', (e) => {
      if (e.target.files.length) uploadFile(e.target.files[0]);
      e.target.value = '';
    });
    $('download-label').addEventListener('click', async () => {
      download(URL.createObjectURL(await encodeLabelPng()), 'label_map.png');
    });
    $('download-image').addEventListener('click', () => {
      if (state.last) download('data:image/png;base64,' + state.last.final, 'generated.png');
    });
    $('show-all').addEventListener('change', (e) => {
      for (const f of document.querySelectorAll('.extra')) f.hidden = !e.target.checked;
    });
  }

  async function init() {
    const [classes, info, samples] = await Promise.all(
      ['/api/classes', '/api/info', '/api/samples'].map(async (u) => (await fetchOk(u)).json()));
    const [H, W] = classes.image_size;
    Object.assign(state, { H, W, classes: classes.classes });
    state.palette = new Uint8Array(3 * state.classes.length);
    state.classes.forEach((c, i) => state.palette.set(c.color, 3 * i));
    canvas.width = W;
    canvas.height = H;
    imageData = ctx.createImageData(W, H);
    // Label map and I″ side by side in the window where they fit, in whole-pixel steps.
    const room = (Math.max(window.innerWidth, 800) - 300) / 2 - 24;
    const scale = Math.max(1, Math.min(8, Math.floor(room / W)));
    for (const el of [canvas, $('final'), $('first'), $('edge'), $('real')]) {
      el.style.width = `${W * scale}px`;
      el.style.height = `${H * scale}px`;
    }
    const slider = $('brush-size');
    slider.max = String(Math.max(8, Math.round(W / 4)));
    slider.value = String(Math.max(2, Math.round(W / 24)));
    state.brush = Number(slider.value);
    $('brush-size-value').textContent = slider.value;
    const step = info.step === null || info.step === undefined ? '' : ` step ${info.step}`;
    $('model-info').textContent =
      `${info.dataset} ${W}x${H}, ${info.parameters} generator${step}, ${info.checkpoint}`;
    buildClassButtons();
    selectClass(Math.min(1, state.classes.length - 1));
    const select = $('samples');
    for (const s of samples.samples) {
      const o = document.createElement('option');
      o.value = String(s.index);
      o.textContent = `${s.index}: ${s.stem}`;
      select.appendChild(o);
    }
    if (samples.note) select.title = samples.note;
    bindControls();
    if (samples.samples.length) {
      select.value = '0';
      await loadSample(0);
    } else {
      setIds(new Uint16Array(W * H), { undoable: false });
    }
  }

  // For tests and the console: the state, the label map as PNG bytes (base64).
  window.ecgan = {
    state,
    labelPngBase64: async () => {
      const bytes = new Uint8Array(await (await encodeLabelPng()).arrayBuffer());
      let s = '';
      for (const b of bytes) s += String.fromCharCode(b);
      return btoa(s);
    },
  };

  init().catch((err) => setStatus(`cannot start the page: ${err.message}`, true));
})();
