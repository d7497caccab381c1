"use strict";
// vidattn viewer: what the video and image pages share. Everything runs from file:// with no
// server and no network: data chunks are scripts (see vidattn/viewer/__init__.py).
const VA = (() => {
  const waiting = new Map();  // chunk key -> {resolve, reject} while its script loads
  const loaded = new Map();  // chunk key -> Promise<Uint8Array>

  window.vidattnChunk = (key, base64) => {
    const entry = waiting.get(key);
    if (!entry) return;
    waiting.delete(key);
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    entry.resolve(bytes);
  };

  /** The bytes of chunk `key` in `folder` (a script `folder/key.js`), loaded once. */
  function load(folder, key) {
    if (loaded.has(key)) return loaded.get(key);
    const promise = new Promise((resolve, reject) => {
      waiting.set(key, { resolve, reject });
      const script = document.createElement("script");
      script.src = `${folder}/${key}.js`;
      const fail = (why) => {
        script.remove();
        if (waiting.delete(key)) reject(new Error(`${script.src}: ${why}`));
      };
      script.onload = () => fail("the data file is damaged (it did not hand over its data)");
      script.onerror = () => fail("cannot load the data file (missing or unreadable)");
      document.head.appendChild(script);
    });
    loaded.set(key, promise);  // a failed load stays failed: its error is shown once
    return promise;
  }

  /** Let the browser free a chunk no longer near what is shown. */
  function forget(key) { loaded.delete(key); }

  function meta() { return JSON.parse(document.getElementById("vidattn-meta").textContent); }

  const luts = new Map();
  /** The (256 x RGB) table of colormap `name`, from the page's data. */
  function lut(info, name) {
    if (!luts.has(name)) {
      const text = atob(info.colormaps[name]);
      luts.set(name, Uint8Array.from(text, (c) => c.charCodeAt(0)));
    }
    return luts.get(name);
  }

  /** DINO's mask: the fewest cells holding `keep` of the mass of `values` (non-negative): sort
   * ascending (stable), keep the cells after which the cumulative share exceeds 1 - keep. */
  function keepMass(values, keep) {
    const n = values.length;
    const order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => values[a] - values[b] || a - b);
    let total = 0;
    for (let i = 0; i < n; i++) total += values[i];
    const mask = new Float32Array(n);
    if (total <= 0) return mask;
    let share = 0;
    for (const i of order) {
      share += values[i] / total;
      mask[i] = share > 1 - keep ? 1 : 0;
    }
    return mask;
  }

  /** Where the grid's cells lie on a picture of `extentH x extentW` model-input pixels (the
   * resized frame, or the image crop), as cells.py says: cell i is centred on input pixel
   * i * stride + patch / 2. So a fraction f of the picture lies at cell coordinate
   * f * span - offset, with span = extent / stride and offset = patch / (2 stride). */
  function cells(info, extentH, extentW) {
    const stride = info.stride || info.patch;
    return { spanH: extentH / stride, spanW: extentW / stride, offset: info.patch / (2 * stride) };
  }

  /** Draws a gh x gw map onto a canvas as vidattn draws it onto video frames
   * (cells.map_to_frame + draw.overlay): the picture's geometry `geo` (`cells`), bilinear
   * between cell centres with replicated borders (the pad of a padded input never shows), each
   * pixel coloured by the colormap at its heat, with opacity alpha * heat, so cold parts leave
   * the picture untouched. */
  class Overlay {
    constructor(canvas, gh, gw, geo) {
      Object.assign(this, { canvas, gh, gw });
      this.ctx = canvas.getContext("2d", { willReadFrequently: true });
      this.rows = Overlay.taps(canvas.height, geo.spanH, geo.offset, gh);
      this.cols = Overlay.taps(canvas.width, geo.spanW, geo.offset, gw);
      this.image = this.ctx.createImageData(canvas.width, canvas.height);
      this.heat = new Float32Array(canvas.width * canvas.height);
    }

    /** For each of `n` output pixels: the two cells it lies between and the weight of the second
     * (cell coordinate (x + 0.5) * span / n - offset, clamped to the grid). */
    static taps(n, span, offset, size) {
      const lo = new Int32Array(n), hi = new Int32Array(n), w = new Float32Array(n);
      for (let x = 0; x < n; x++) {
        const g = Math.min(Math.max((x + 0.5) * span / n - offset, 0), size - 1);
        lo[x] = Math.floor(g);
        hi[x] = Math.min(lo[x] + 1, size - 1);
        w[x] = g - lo[x];
      }
      return { lo, hi, w };
    }

    /** Bilinear upsampling of `values` (gh * gw) into this.heat (canvas pixels). */
    upsample(values) {
      const { rows, cols, gw } = this, width = this.canvas.width, heat = this.heat;
      for (let y = 0, o = 0; y < rows.lo.length; y++) {
        const a = rows.lo[y] * gw, b = rows.hi[y] * gw, fy = rows.w[y];
        for (let x = 0; x < width; x++, o++) {
          const x0 = cols.lo[x], x1 = cols.hi[x], fx = cols.w[x];
          const top = values[a + x0] + (values[a + x1] - values[a + x0]) * fx;
          const bottom = values[b + x0] + (values[b + x1] - values[b + x0]) * fx;
          heat[o] = top + (bottom - top) * fy;
        }
      }
      return heat;
    }

    /** Heat in [0, 1] per cell (gh * gw) -> colormap glow with opacity alpha * heat. */
    drawHeat(values, table, alpha) {
      const heat = this.upsample(values), data = this.image.data;
      for (let o = 0; o < heat.length; o++) {
        const v = Math.min(Math.max(heat[o], 0), 1);
        const k = 3 * Math.min(255, Math.floor(v * 256)), p = 4 * o;
        data[p] = table[k]; data[p + 1] = table[k + 1]; data[p + 2] = table[k + 2];
        data[p + 3] = Math.round(255 * alpha * v);
      }
      this.ctx.putImageData(this.image, 0, 0);
    }

    /** A 0/1 mask per cell -> the region (cells upsampled, cut at half) tinted with `color`. */
    drawMask(mask, color, alpha) {
      const heat = this.upsample(mask), data = this.image.data, a = Math.round(255 * alpha);
      for (let o = 0; o < heat.length; o++) {
        const p = 4 * o, inside = heat[o] >= 0.5;
        data[p] = color[0]; data[p + 1] = color[1]; data[p + 2] = color[2];
        data[p + 3] = inside ? a : 0;
      }
      this.ctx.putImageData(this.image, 0, 0);
    }

    /** Draw `values` (gh * gw, non-negative) as the controls say: {mode, table, alpha, keep,
     * color}. Heat is each map over its own peak, as the rendered videos show it. */
    draw(values, how) {
      if (how.mode === "mask") {
        this.drawMask(keepMass(values, how.keep), how.color, how.alpha);
      } else {
        let peak = 0;
        for (const v of values) peak = Math.max(peak, v);
        const heat = peak > 0 ? values.map((v) => v / peak) : values;
        this.drawHeat(heat, how.table, how.alpha);
      }
    }

    /** The RANDOM WEIGHTS caption, bottom left, as on the rendered videos. */
    caption(text) {
      const ctx = this.ctx, size = Math.max(11, Math.round(this.canvas.height / 28));
      ctx.font = `bold ${size}px system-ui, sans-serif`;
      const w = ctx.measureText(text).width + size;
      ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
      ctx.fillRect(0, this.canvas.height - 1.6 * size, w, 1.6 * size);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, size / 2, this.canvas.height - 0.45 * size);
    }
  }

  /** The grid cell nearest a pointer event on `element`, whose picture has the geometry `geo`
   * (`cells`) -> {row, col}, or null outside the picture. */
  function cellAt(event, element, geo, gh, gw) {
    const box = element.getBoundingClientRect();
    const fx = (event.clientX - box.left) / box.width, fy = (event.clientY - box.top) / box.height;
    if (fx < 0 || fy < 0 || fx >= 1 || fy >= 1) return null;
    const nearest = (f, span, size) => Math.min(size - 1,
      Math.max(0, Math.floor(f * span - geo.offset + 0.5)));
    return { row: nearest(fy, geo.spanH, gh), col: nearest(fx, geo.spanW, gw) };
  }

  /** Stored patch features (features.quantize_signed): `scales` (one float32 per vector) and
   * `bytes` (dims per vector); vector j is (byte - 128) / 127 * scales[j]. -> vector j, a
   * Float32Array of dims. */
  function signedVector(scales, bytes, dims, j) {
    const s = scales[j] / 127;
    return Float32Array.from(bytes.subarray(j * dims, (j + 1) * dims), (b) => (b - 128) * s);
  }

  /** The dot products of stored vectors first .. first + n - 1 (as `signedVector`) with
   * `query` (dims values) -> Float32Array of n: the cosine of the full features, within the
   * error the page states, where both are unit vectors stored so. */
  function signedDots(scales, bytes, dims, first, n, query) {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const j = first + i, o = j * dims;
      let dot = 0;
      for (let k = 0; k < dims; k++) dot += (bytes[o + k] - 128) * query[k];
      out[i] = dot * scales[j] / 127;
    }
    return out;
  }

  /** Fill a <select> with [value, label] pairs and choose `chosen`. */
  function options(select, pairs, chosen) {
    select.replaceChildren(...pairs.map(([value, label]) => new Option(label, value)));
    select.value = String(chosen);
  }

  /** [value, label] choices of the map control: the mean of the heads, then each head. */
  function headChoices(heads) {
    const choices = [["mean", "mean of the heads"]];
    for (let h = 0; h < heads; h++) choices.push([h, `head ${h}`]);
    return choices;
  }

  /** The block control's label of block b of a model `depth` blocks deep. */
  const blockLabel = (b, depth) => `block ${b}${b === depth - 1 ? " (last)" : ""}`;

  /** Wire the controls both viewers share (block, map, mode, colormap, opacity, mask share):
   * their first values from `state`; a change stores the control's value into `state` (a number
   * for the sliders, else the option's value as text) and calls `changed()`, which redraws. */
  function controls(info, state, changed) {
    const $ = (id) => document.getElementById(id);
    options($("colormap"), Object.keys(info.colormaps).map((n) => [n, n]), state.colormap);
    for (const id of ["mode", "alpha", "threshold"]) $(id).value = String(state[id]);
    const sliders = new Set(["alpha", "threshold"]);
    const show = () => {
      $("alpha-out").textContent = `${Math.round(100 * state.alpha)} %`;
      $("threshold-out").textContent = `${Math.round(100 * state.threshold)} %`;
      $("threshold").disabled = state.mode !== "mask";
    };
    for (const id of ["block", "map", "mode", "colormap", "alpha", "threshold"]) {
      $(id).addEventListener("input", (e) => {
        state[id] = sliders.has(id) ? Number(e.target.value) : e.target.value;
        show();
        changed();
      });
    }
    show();
  }

  /** The header every page shares: title, model line, the RANDOM banner. */
  function header(info, title) {
    document.getElementById("title").textContent = title;
    document.getElementById("model").textContent =
      `model ${info.model} · weights: ${info.weights} · patch ${info.patch} px` +
      (info.stride && info.stride !== info.patch ? ` every ${info.stride} px (--stride)` : "") +
      `, ${info.depth} blocks, ${info.heads} heads`;
    document.getElementById("random").hidden = !info.random;
  }

  /** A message in the page's status line (and the console) for what went wrong. */
  function fail(error) {
    document.getElementById("status").textContent = String(error.message || error);
  }

  const fmt = (v) => (v === 0 ? "0" : Math.abs(v) >= 0.01 ? v.toFixed(4) : v.toExponential(2));

  return {
    load, forget, meta, lut, keepMass, cells, Overlay, cellAt, signedVector, signedDots, options,
    headChoices, blockLabel, controls, header, fail, fmt,
  };
})();
