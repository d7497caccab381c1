// vidattn image viewer: click a patch to see its attention row, in any block and head.
(() => {
  const info = VA.meta();
  const $ = (id) => document.getElementById(id);
  const stage = $("stage"), canvas = $("overlay");
  const [gh, gw] = info.grid, cells = gh * gw, T = info.tokens, H = info.heads;
  const nPrefix = info.prefix_tokens, CANVAS_SIDE = 768;

  canvas.width = canvas.height = CANVAS_SIDE;
  stage.style.aspectRatio = `${gw} / ${gh}`;
  const overlay = new VA.Overlay(canvas, gh, gw, gh, gw);
  const d = info.defaults;
  const state = {
    block: String(info.depth - 1), map: "mean", query: 0, mode: d.mode, colormap: d.colormap,
    alpha: d.alpha, threshold: d.threshold, drawn: null, pointer: null,
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

  let current = null;  // the values drawn last
  function render() {
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

  function outlineQuery() {
    const q = state.query - nPrefix;
    if (q < 0) return;
    const ctx = overlay.ctx, w = canvas.width / gw, h = canvas.height / gh;
    const x = (q % gw) * w, y = Math.floor(q / gw) * h;
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
      ? "query: the CLS token (click a patch to see its row)"
      : `query: patch row ${Math.floor(q / gw)}, column ${q % gw}`;
  }

  // -- controls -------------------------------------------------------------------------------
  VA.header(info, info.source);
  $("image").src = info.image;
  const blocks = Array.from({ length: info.depth }, (_, b) => [b, VA.blockLabel(b, info.depth)]);
  VA.options($("block"), [...blocks, ["rollout", "rollout (all blocks)"]], state.block);
  VA.options($("map"), VA.headChoices(H), state.map);
  const sync = () => {
    $("map").disabled = state.block === "rollout";
    describeQuery();
  };
  VA.controls(info, state, () => { sync(); render(); });
  $("cls").addEventListener("click", () => { state.query = 0; sync(); render(); });
  stage.addEventListener("click", (e) => {
    const cell = VA.cellAt(e, stage, gh, gw, gh, gw);
    if (!cell) return;
    state.query = nPrefix + cell.row * gw + cell.col;
    sync();
    render();
  });

  function readPointer() {
    const cell = state.pointer && current && VA.cellAt(state.pointer, stage, gh, gw, gh, gw);
    if (!cell) return;
    const v = current[cell.row * gw + cell.col];
    const what = state.block === "rollout" ? "rollout"
      : `attention, ${state.map === "mean" ? "mean of the heads" : `head ${state.map}`}, block ${state.block}`;
    $("cursor").textContent = `patch row ${cell.row}, column ${cell.col}: ${VA.fmt(v)} · ${what}`;
  }
  stage.addEventListener("pointermove", (e) => { state.pointer = e; readPointer(); });
  stage.addEventListener("pointerleave", () => { state.pointer = null; });

  sync();
  render();
  window.vidattnViewer = { state, canvas, rowOf, chunk };
})();
