// vidattn image viewer: click a patch to see its attention row, in any block and head, and its
// features' cosine similarity on this image and on every image of the run (viewer-run.js).
(() => {
  const info = VA.meta();
  const $ = (id) => document.getElementById(id);
  const stage = $("stage"), canvas = $("overlay");
  const [gh, gw] = info.grid, cells = gh * gw, T = info.tokens, H = info.heads;
  const nPrefix = info.prefix_tokens, CANVAS_SIDE = 768;

  canvas.width = canvas.height = CANVAS_SIDE;
  stage.style.aspectRatio = `${gw} / ${gh}`;
  const geo = VA.cells(info, info.size, info.size);  // the model saw the size x size crop
  const overlay = new VA.Overlay(canvas, gh, gw, geo);
  const d = info.defaults;
  const ex = info.explain;  // the explain probe's classes and methods, or null
  const state = {
    block: String(info.depth - 1), map: ex ? "explain" : "mean", query: 0, mode: d.mode,
    colormap: d.colormap, alpha: d.alpha, threshold: d.threshold, drawn: null, pointer: null,
    similar: null,  // the query token whose similarity every picture of the strip shows
    explainClass: 0, explainMethod: 0,  // indices into ex.classes and ex.methods
  };

  // -- data: a block's chunk is heads * T float32 scales, then heads * T rows of P bytes;
  //    rollout's is T scales and T rows ----------------------------------------------------
  const chunks = new Map();
  function chunk(block) {
    const key = block === "rollout" ? info.chunks.rollout : info.chunks.blocks[Number(block)];
    if (chunks.has(key)) return Promise.resolve(chunks.get(key));
    const rows = block === "rollout" ? T : H * T;
    return VA.load(info.chunks.folder, key).then((bytes) => {
      if (bytes.length !== rows * (cells + 4)) {
        throw new Error(`${key}.js: damaged attention data (${bytes.length} bytes)`);
      }
      const entry = {
        scales: new Float32Array(bytes.buffer, bytes.byteOffset, rows),
        bytes: bytes.subarray(rows * 4),
      };
      chunks.set(key, entry);
      return entry;
    });
  }

  /** Row r of a chunk as attention values (Float32Array of gh * gw). */
  function rowOf(entry, r) {
    const s = entry.scales[r] / 255;
    return Float32Array.from(entry.bytes.subarray(r * cells, (r + 1) * cells), (b) => b * s);
  }

  /** The map the controls choose, for the query token, or null while its block loads. */
  function values(entry) {
    if (state.block === "rollout") return rowOf(entry, state.query);
    if (state.map !== "mean") return rowOf(entry, Number(state.map) * T + state.query);
    const mean = new Float32Array(cells);
    for (let h = 0; h < H; h++) {
      const row = rowOf(entry, h * T + state.query);
      for (let i = 0; i < cells; i++) mean[i] += row[i] / H;
    }
    return mean;
  }

  // -- explanations: ex.classes.length * ex.methods.length float32 scales, then a row of P
  //    bytes per (class, method), class-major ----------------------------------------------
  let explained = null;
  function explainChunk() {
    const rows = ex.classes.length * ex.methods.length;
    explained = explained || VA.load(info.chunks.folder, ex.key).then((bytes) => {
      if (bytes.length !== rows * (cells + 4)) {
        throw new Error(`${ex.key}.js: damaged explanation data (${bytes.length} bytes)`);
      }
      return { scales: new Float32Array(bytes.buffer, bytes.byteOffset, rows),
               bytes: bytes.subarray(rows * 4) };
    });
    return explained;
  }

  /** A class of the explanation in words: "tabby cat (87 %)", or its similarity. */
  function classLabel(c) {
    const name = c.name || `class ${c.class}`;
    return "probability" in c ? `${name} (${Math.round(100 * c.probability)} %)`
      : `${name} (${VA.fmt(c.similarity)})`;
  }

  function renderExplain() {
    const wanted = `explain/${state.explainClass}/${state.explainMethod}`;
    explainChunk().then((entry) => {
      if (state.map !== "explain" ||
          wanted !== `explain/${state.explainClass}/${state.explainMethod}`) return;
      current = rowOf(entry, state.explainClass * ex.methods.length + state.explainMethod);
      overlay.draw(current, {
        mode: state.mode, table: VA.lut(info, state.colormap), alpha: state.alpha,
        keep: state.threshold, color: [255, 255, 255],
      });
      if (info.random) overlay.caption("RANDOM WEIGHTS (untrained)");
      $("explain-note").textContent = `Why ${classLabel(ex.classes[state.explainClass])}: ` +
        `${ex.methods[state.explainMethod]} relevance, over its peak.`;
      state.drawn = wanted;
      canvas.dataset.drawn = state.drawn;
      readPointer();
    }, VA.fail);
  }

  let current = null;  // the values drawn last
  function render() {
    if (state.map === "similarity") { renderSimilarity(); return; }
    if (state.map === "explain") { renderExplain(); return; }
    const wanted = { ...state };
    chunk(state.block).then((entry) => {
      if (wanted.block !== state.block) return;
      current = values(entry);
      const color = state.map === "mean" || state.block === "rollout"
        ? [255, 255, 255] : info.head_colors[Number(state.map)];
      overlay.draw(current, {
        mode: state.mode, table: VA.lut(info, state.colormap), alpha: state.alpha,
        keep: state.threshold, color,
      });
      outlineQuery();
      if (info.random) overlay.caption("RANDOM WEIGHTS (untrained)");
      state.drawn = `${state.block}/${state.map}/${state.query}`;
      canvas.dataset.drawn = state.drawn;
      readPointer();
    }, VA.fail);
  }

  /** Outline the query's patch: p x p input pixels at (row, col) * stride (cells.py). */
  function outlineQuery() {
    const q = state.query - nPrefix;
    if (q < 0) return;
    const ctx = overlay.ctx, stride = info.stride || info.patch;
    const w = canvas.width * info.patch / info.size, h = canvas.height * info.patch / info.size;
    const x = (q % gw) * stride * canvas.width / info.size;
    const y = Math.floor(q / gw) * stride * canvas.height / info.size;
    ctx.lineWidth = Math.max(2, Math.round(w / 10));
    ctx.strokeStyle = "#000";
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([w / 5, w / 5]);
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
  }

  function describeQuery() {
    const q = state.query - nPrefix;
    $("query").textContent = q < 0
      ? (info.probe ? "query: the pooling probe, which reads the last block's output (click a "
                      + "patch to see its row)"
                    : "query: the CLS token (click a patch to see its row)")
      : `query: patch row ${Math.floor(q / gw)}, column ${q % gw}`;
  }

  // -- similarity: each patch's feature (meta.features, features.quantize_signed: P float32
  //    scales, then P * dims bytes), this image's and those of the run's other images ---------
  const feats = info.features, dims = feats ? feats.dims : 0;
  const strip = [];  // {id, name, folder, key, overlay, caption, values} per picture shown

  /** The features of a picture of the strip ({folder, key}), loaded once: {scales, bytes}. */
  function featuresOf(item) {
    if (!item.data) {
      item.data = VA.load(item.folder, item.key).then((bytes) => {
        if (bytes.length !== cells * (dims + 4)) {
          throw new Error(`${item.key}.js: damaged feature data (${bytes.length} bytes)`);
        }
        return { scales: new Float32Array(bytes.buffer, bytes.byteOffset, cells),
                 bytes: bytes.subarray(cells * 4) };
      });
    }
    return item.data;
  }

  /** A picture of the strip: the crop `image`, a canvas for its map, a caption. */
  function addPicture(item, image, page) {
    const figure = document.createElement("figure"), box = document.createElement("div");
    const img = document.createElement("img"), pic = document.createElement("canvas");
    box.className = "stage";
    box.style.aspectRatio = `${gw} / ${gh}`;
    img.src = image;
    img.alt = item.name;
    pic.width = pic.height = 192;
    box.append(img, pic);
    const caption = document.createElement("figcaption"), title = document.createElement("b");
    title.textContent = item.name;
    const value = document.createElement("span");
    value.textContent = "click a patch above";
    caption.append(title, document.createElement("br"), value);
    if (page) {
      const link = document.createElement("a");
      link.href = page;
      link.append(box);
      figure.append(link, caption);
    } else {
      figure.append(box, caption);
    }
    $("strip").append(figure);
    Object.assign(item, { overlay: new VA.Overlay(pic, gh, gw, geo), caption: value,
                          values: null });
    strip.push(item);
    if (state.similar !== null) drawPicture(item, state.similar);
  }

  /** Draw a picture's similarity to the query token q (a patch of this image). */
  function drawPicture(item, q) {
    const own = strip[0];
    return Promise.all([featuresOf(own), featuresOf(item)]).then(([mine, theirs]) => {
      if (q !== state.similar) return;
      if (item.drawn !== q) {  // else only the colours change
        const vector = VA.signedVector(mine.scales, mine.bytes, dims, q - nPrefix);
        item.values = VA.signedDots(theirs.scales, theirs.bytes, dims, 0, cells, vector);
      }
      item.overlay.drawHeat(item.values, VA.lut(info, state.colormap), state.alpha);
      let best = 0;
      for (let p = 1; p < cells; p++) if (item.values[p] > item.values[best]) best = p;
      item.caption.textContent = `peak ${VA.fmt(item.values[best])} at row ` +
        `${Math.floor(best / gw)}, column ${best % gw}`;
      item.drawn = q;
    }).catch((error) => { item.caption.textContent = String(error.message || error); });
  }

  /** The strip after a click (or a change of colormap or opacity). */
  function similarity() {
    const q = state.query;
    if (!feats || q < nPrefix) return;
    state.similar = q;
    Promise.all(strip.map((item) => drawPicture(item, q))).then(() => {
      if (q === state.similar) $("strip").dataset.drawn = String(q);
    });
  }

  /** The map control's "similarity": this image's similarity to the clicked patch, cosine 0..1
   * on the colormap (never rescaled), as the video page draws it. */
  function renderSimilarity() {
    const own = strip[0], q = state.query;
    if (q < nPrefix) {
      overlay.ctx.clearRect(0, 0, canvas.width, canvas.height);
      current = null;
      $("cursor").textContent = "Click a patch to see its similarity.";
      return;
    }
    drawPicture(own, q).then(() => {
      if (state.map !== "similarity" || state.query !== q || !own.values) return;
      current = own.values;
      overlay.drawHeat(current, VA.lut(info, state.colormap), state.alpha);
      outlineQuery();
      if (info.random) overlay.caption("RANDOM WEIGHTS (untrained)");
      state.drawn = `similarity/${q}`;
      canvas.dataset.drawn = state.drawn;
      readPointer();
    });
  }

  const megabytes = (n) => (n < 1e6 ? `${(n / 1e3).toPrecision(3)} kB`
    : `${(n / 1e6).toPrecision(3)} MB`);
  let runError = null;  // the run's largest error, once its file is read

  /** The line under the strip: what is compared, its size and its largest error. */
  function describeFeatures(run) {
    const what = feats.facet === "token" ? "output tokens" : `${feats.facet}s`;
    let text = `Cosine of the ${what} of block ${feats.layer} (${dims} dimensions, int8 and a ` +
      `scale per patch): ${megabytes(feats.bytes)} here`;
    if (run) {
      text += `, ${megabytes(run.bytes)} for the run's ${run.images.length} images; largest ` +
        `error ${VA.fmt(run.max_error)} against the float cosine (every pair of each image's ` +
        "patches, and each image's against a sample of those before it)";
      if (run.left_out) {
        text += `. ${run.left_out} more images of the run are not shown: their features would ` +
          `pass the ${megabytes(run.cap)} a page loads`;
      }
    } else {
      text += `; largest error ${VA.fmt(feats.max_error)} against the float cosine (the ` +
        "pairs of this image's patches)";
    }
    $("similar-note").textContent = `${text}.`;
  }

  /** The run file lists the run's images: each but this one joins the strip, if the run's
   * features are of the same kind as this page's (else the page stays alone). */
  function joinRun(run) {
    const same = run.model === info.model && run.facet === feats.facet &&
      run.layer === feats.layer && run.images.some((e) => e.folder === info.run.self);
    if (!same) return;
    const base = info.run.folder;
    for (const e of run.images) {
      if (e.folder === info.run.self || e.dims !== dims || e.grid[0] !== gh || e.grid[1] !== gw) {
        continue;
      }
      addPicture({ id: e.folder, name: e.name, folder: `${base}/${e.features}`, key: e.key },
                 `${base}/${e.image}`, `${base}/${e.page}`);
    }
    runError = run.max_error;
    describeFeatures(run);
  }

  if (feats) {
    $("similar").hidden = false;
    addPicture({ id: info.run ? info.run.self : ".", name: "this image", folder: feats.folder,
                 key: feats.key }, info.image, null);
    describeFeatures(null);
    if (info.run) {
      VA.load(info.run.folder, info.run.key).then(
        (bytes) => joinRun(JSON.parse(new TextDecoder().decode(bytes))),
        () => {});  // no run file (a page copied alone): this image's similarity only
    }
  }

  // -- controls -------------------------------------------------------------------------------
  VA.header(info, info.source);
  $("image").src = info.image;
  const blocks = Array.from({ length: info.depth }, (_, b) => [b, VA.blockLabel(b, info.depth)]);
  VA.options($("block"), [...blocks, ["rollout", "rollout (all blocks)"]], state.block);
  const maps = VA.headChoices(H);
  if (feats) maps.push(["similarity", "similarity to the clicked patch"]);
  if (ex) maps.push(["explain", "why this class (relevance)"]);
  VA.options($("map"), maps, state.map);
  if (ex) {
    VA.options($("explain-class"), ex.classes.map((c, i) => [i, classLabel(c)]), 0);
    VA.options($("explain-method"), ex.methods.map((m, i) => [i, m]), 0);
    for (const [id, key] of [["explain-class", "explainClass"], ["explain-method", "explainMethod"]]) {
      $(id).addEventListener("input", (e) => { state[key] = Number(e.target.value); render(); });
    }
  }
  const sync = () => {
    const similar = state.map === "similarity", explaining = state.map === "explain";
    $("map").disabled = state.block === "rollout" && !similar && !explaining;
    $("block").disabled = similar || explaining;
    $("mode").disabled = similar;
    $("explain").hidden = $("explain-note").hidden = !explaining;
    $("query").hidden = $("cls").disabled = explaining;  // an explanation has no query token
    describeQuery();
  };
  VA.controls(info, state, () => { sync(); similarity(); render(); });
  if (info.probe) $("cls").textContent = "show the pooling probe's row";
  $("cls").addEventListener("click", () => { state.query = 0; sync(); render(); });
  stage.addEventListener("click", (e) => {
    const cell = VA.cellAt(e, stage, geo, gh, gw);
    if (!cell) return;
    state.query = nPrefix + cell.row * gw + cell.col;
    sync();
    similarity();
    render();
  });

  function readPointer() {
    const cell = state.pointer && current && VA.cellAt(state.pointer, stage, geo, gh, gw);
    if (!cell) return;
    const v = current[cell.row * gw + cell.col];
    const q = state.query - nPrefix;
    const what = state.map === "similarity"
      ? `cosine similarity to row ${Math.floor(q / gw)}, column ${q % gw} (largest error ` +
        `${VA.fmt(runError === null ? feats.max_error : runError)})`
      : state.map === "explain" ? `relevance of ${classLabel(ex.classes[state.explainClass])}` +
        ` (${ex.methods[state.explainMethod]})`
      : state.block === "rollout" ? "rollout"
      : `attention, ${state.map === "mean" ? "mean of the heads" : `head ${state.map}`}, block ${state.block}`;
    $("cursor").textContent = `patch row ${cell.row}, column ${cell.col}: ${VA.fmt(v)} · ${what}`;
  }
  stage.addEventListener("pointermove", (e) => { state.pointer = e; readPointer(); });
  stage.addEventListener("pointerleave", () => { state.pointer = null; });

  sync();
  render();
  /** {picture id: its similarity values} of the strip (the run's folder names; "." alone). */
  const similarities = () => Object.fromEntries(
    strip.map((item) => [item.id, item.values && Array.from(item.values)]));
  window.vidattnViewer = { state, canvas, rowOf, chunk, similarities };
})();
