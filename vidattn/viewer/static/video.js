// vidattn video viewer: the overlay follows the exact frame the video shows.
(() => {
  const info = VA.meta();
  const $ = (id) => document.getElementById(id);
  const video = $("video"), stage = $("stage"), canvas = $("overlay");
  const [gh, gw] = info.grid, cells = gh * gw, K = info.maps, H = info.heads;
  const [fh, fw] = info.frame, geo = VA.cells(info, ...info.resized);
  const times = info.times, count = times.length;
  const CANVAS_SIDE = 960;  // the overlay's long side in canvas pixels
  const NEAR = 2;  // chunks kept either side of the one shown

  const scale = CANVAS_SIDE / Math.max(fh, fw);
  canvas.width = Math.max(1, Math.round(fw * scale));
  canvas.height = Math.max(1, Math.round(fh * scale));
  stage.style.aspectRatio = `${fw} / ${fh}`;
  const overlay = new VA.Overlay(canvas, gh, gw, geo);

  const d = info.defaults;
  const state = {
    frame: -1, drawn: -1, presented: -1, block: info.blocks.length - 1,
    map: d.map === "rollout" && !info.rollout ? "mean" : d.map, mode: d.mode,
    colormap: d.colormap, alpha: d.alpha, threshold: d.threshold, pointer: null,
    query: null,  // similarity: {frame, row, col, vector} of the clicked patch
  };

  // -- data ---------------------------------------------------------------------------------
  /** A series of data chunks (`spec`: {folder, keys, frames}): chunk c holds frames
   * c * spec.frames ...; for its n frames, n * vectors float32 scales, then n * vectors * width
   * bytes. `get(c)` loads chunk c (those more than NEAR away are let go); `of(i)` is frame i's
   * chunk {first, n, scales, bytes} if loaded. */
  function series(spec, vectors, width, what) {
    const cached = new Map();
    function get(c) {
      if (cached.has(c)) return Promise.resolve(cached.get(c));
      return VA.load(spec.folder, spec.keys[c]).then((bytes) => {
        const n = bytes.length / (vectors * (width + 4));
        if (!Number.isInteger(n) || n !== Math.min(spec.frames, count - c * spec.frames)) {
          throw new Error(`${spec.keys[c]}.js: damaged ${what} (${bytes.length} bytes)`);
        }
        const scales = new Float32Array(bytes.buffer, bytes.byteOffset, n * vectors);
        const entry = {
          first: c * spec.frames, n, scales, bytes: bytes.subarray(n * vectors * 4),
        };
        cached.set(c, entry);
        for (const k of cached.keys()) {
          if (Math.abs(k - c) > NEAR) { cached.delete(k); VA.forget(spec.keys[k]); }
        }
        return entry;
      });
    }
    return { get, of: (i) => cached.get(Math.floor(i / spec.frames)), spec };
  }
  // the maps: K per frame, each gh * gw bytes of its own maximum (pages.quantize)
  const mapData = series(info.chunks, K, cells, "map data");
  // --viewer-similarity: each patch's reduced feature, dims bytes (features.quantize_signed)
  const feats = info.features, dims = feats ? feats.dims : 0;
  const featData = feats ? series(feats.chunks, cells, dims, "feature data") : null;

  /** Patch p's stored feature vector in frame i (Float32Array of dims), or null if not here. */
  function vectorOf(i, p) {
    const entry = featData && featData.of(i);
    if (!entry) return null;
    return VA.signedVector(entry.scales, entry.bytes, dims, (i - entry.first) * cells + p);
  }

  /** Each patch of frame i: its stored feature's dot product with the query's (the cosine of
   * the full features, within meta.features.max_error), or null if frame i is not loaded. */
  function similarityOf(i) {
    const entry = state.query && featData.of(i);
    if (!entry) return null;
    return VA.signedDots(entry.scales, entry.bytes, dims, (i - entry.first) * cells, cells,
                         state.query.vector);
  }

  /** Which of a frame's K maps the controls choose. */
  function mapIndex() {
    if (state.map === "rollout") return K - 1;
    const base = Number(state.block) * (H + 1);
    return state.map === "mean" ? base + H : base + Number(state.map);
  }

  /** Map k of frame i as attention values (Float32Array of gh * gw), or null if not loaded. */
  function mapOf(i, k) {
    const entry = mapData.of(i);
    if (!entry) return null;
    const j = (i - entry.first) * K + k, s = entry.scales[j] / 255;
    const bytes = entry.bytes.subarray(j * cells, (j + 1) * cells);
    return Float32Array.from(bytes, (b) => b * s);
  }

  // -- drawing --------------------------------------------------------------------------------
  function render() {
    if (state.map === "similarity") { renderSimilarity(); return; }
    const i = state.frame, k = mapIndex(), values = mapOf(i, k);
    if (!values) return;
    const color = state.map === "mean" || state.map === "rollout"
      ? [255, 255, 255] : info.head_colors[Number(state.map)];
    overlay.draw(values, {
      mode: state.mode, table: VA.lut(info, state.colormap), alpha: state.alpha,
      keep: state.threshold, color,
    });
    if (info.random) overlay.caption("RANDOM WEIGHTS (untrained)");
    if (state.drawn < 0) performance.mark("vidattn-first-overlay");
    state.drawn = i;
    canvas.dataset.frame = String(i);
    canvas.dataset.map = String(k);
    readPointer();
  }

  /** The similarity map of the frame shown (cosine 0..1 on the colormap, never rescaled). */
  function renderSimilarity() {
    const i = state.frame, values = similarityOf(i);
    if (!state.query) {
      overlay.ctx.clearRect(0, 0, canvas.width, canvas.height);
      $("cursor").textContent = "Click a patch to see its similarity across the clip.";
    }
    if (!values) return;
    overlay.drawHeat(values, VA.lut(info, state.colormap), state.alpha);
    if (info.random) overlay.caption("RANDOM WEIGHTS (untrained)");
    state.drawn = i;
    canvas.dataset.frame = String(i);
    canvas.dataset.map = "similarity";
    readPointer();
  }

  /** Show frame i: draw it now if its chunk is here, else once it has loaded. */
  function show(i) {
    i = Math.min(Math.max(i, 0), count - 1);
    state.frame = i;
    $("scrub").value = String(i);
    $("clock").textContent = `frame ${i + 1} of ${count} · ${times[i].toFixed(3)} s`;
    for (const data of featData ? [mapData, featData] : [mapData]) {
      const per = data.spec.frames, c = Math.floor(i / per);
      data.get(c).then(() => { if (Math.floor(state.frame / per) === c) render(); }, VA.fail);
      if (c + 1 < data.spec.keys.length) data.get(c + 1).catch(VA.fail);
    }
  }

  /** The frame shown at media time t: the last one whose time is not after t. */
  function frameAt(t) {
    let lo = 0, hi = count - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (times[mid] <= t + 1e-4) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  /** Seek the video into frame j (a little past its start, never into the next frame). */
  function seekFrame(j) {
    j = Math.min(Math.max(j, 0), count - 1);
    const next = j + 1 < count ? times[j + 1] : times[j] + 1 / (info.fps || 25);
    video.currentTime = times[j] + Math.min((next - times[j]) / 2, 0.001);
    show(j);
  }

  function step(by) {
    video.pause();
    seekFrame(state.frame + by);
  }

  // -- the video ------------------------------------------------------------------------------
  // state.presented: the frame the video has put on screen, as far as the browser says (the
  // per-frame callback's media time; else the time after a seek or on an animation frame)
  video.src = info.video;
  const perFrame = "requestVideoFrameCallback" in HTMLVideoElement.prototype;
  if (perFrame) {
    const onFrame = (now, frame) => {
      show(state.presented = frameAt(frame.mediaTime));
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {  // no per-frame callback: follow currentTime on every animation frame
    const tick = () => {
      if (!video.paused) show(state.presented = frameAt(video.currentTime));
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }
  const onSettled = () => {
    const i = frameAt(video.currentTime);
    if (!perFrame) state.presented = i;
    show(i);
  };
  video.addEventListener("loadeddata", onSettled);
  video.addEventListener("seeked", onSettled);
  video.addEventListener("play", () => { $("play").textContent = "pause"; });
  video.addEventListener("pause", () => { $("play").textContent = "play"; });
  video.addEventListener("error", () => VA.fail(new Error(
    `cannot play ${info.video}: ${video.error ? video.error.message || video.error.code : ""}`)));

  function togglePlay() {
    if (video.paused) video.play().catch(VA.fail); else video.pause();
  }

  // -- controls -------------------------------------------------------------------------------
  VA.header(info, info.source);
  VA.options($("block"), info.blocks.map((b, i) => [i, VA.blockLabel(b, info.depth)]),
             state.block);
  const maps = VA.headChoices(H);
  if (info.rollout) maps.push(["rollout", "rollout (all blocks)"]);
  if (feats) maps.push(["similarity", "similarity to a clicked patch"]);
  VA.options($("map"), maps, state.map);
  $("scrub").max = String(count - 1);
  const sync = () => {
    $("block").disabled = info.blocks.length < 2 || state.map === "rollout" ||
      state.map === "similarity";
    $("mode").disabled = state.map === "similarity";
  };
  VA.controls(info, state, () => { sync(); render(); });
  sync();
  $("play").addEventListener("click", togglePlay);
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("mute").addEventListener("click", () => {
    video.muted = !video.muted;
    $("mute").textContent = video.muted ? "sound on" : "sound off";
  });
  $("scrub").addEventListener("input", (e) => seekFrame(Number(e.target.value)));

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "SELECT" || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === " ") togglePlay();
    else if (e.key === "ArrowRight") step(1);
    else if (e.key === "ArrowLeft") step(-1);
    else return;
    e.preventDefault();
  }, true);
  document.addEventListener("keyup", (e) => { if (e.key === " ") e.preventDefault(); }, true);

  // -- the value under the pointer ------------------------------------------------------------
  function readPointer() {
    const cell = state.pointer && VA.cellAt(state.pointer, stage, geo, gh, gw);
    if (state.map === "similarity") {
      const sims = cell && similarityOf(state.frame), q = state.query;
      if (!sims) return;
      $("cursor").textContent = `patch row ${cell.row}, column ${cell.col}: ` +
        `${VA.fmt(sims[cell.row * gw + cell.col])} · cosine similarity to row ${q.row}, ` +
        `column ${q.col} of frame ${q.frame + 1} (${dims} dimensions kept, largest error ` +
        `${VA.fmt(feats.max_error)})`;
      return;
    }
    const values = cell && mapOf(state.frame, mapIndex());
    if (!values) return;
    const v = values[cell.row * gw + cell.col];
    const what = state.map === "rollout" ? "rollout (1 = its peak)"
      : `CLS attention, ${state.map === "mean" ? "mean of the heads" : `head ${state.map}`}, ` +
        `block ${info.blocks[Number(state.block)]}`;
    $("cursor").textContent = `patch row ${cell.row}, column ${cell.col}: ${VA.fmt(v)} · ${what}`;
  }
  stage.addEventListener("pointermove", (e) => { state.pointer = e; readPointer(); });
  stage.addEventListener("pointerleave", () => { state.pointer = null; });
  /** A click on a patch (with stored features) makes it the similarity's query. */
  function choose(cell) {
    const vector = cell && vectorOf(state.frame, cell.row * gw + cell.col);
    if (!vector) return;
    state.query = { frame: state.frame, row: cell.row, col: cell.col, vector };
    state.map = "similarity";
    $("map").value = "similarity";
    sync();
    render();
  }
  if (feats) stage.addEventListener("click", (e) => {
    choose(VA.cellAt(e, stage, geo, gh, gw));
  });

  show(0);
  window.vidattnViewer = { state, frameAt, seekFrame, mapIndex, mapOf, similarityOf, choose,
                           canvas };
})();
