"""Headless Chromium for the viewer tests, driven by Playwright for Python on the system's
browser (Debian's ``chromium``; ``VIDATTN_CHROMIUM`` names another), so nothing is downloaded.

``Browser.open(path)`` loads a page from the disk (``file://``, as a user double-clicking it) and
records its console errors and uncaught exceptions; the helpers read the overlay canvas, decode
the viewer's data chunks as the page does, and compute what the canvas should hold from them.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path

import numpy as np

from vidattn import draw

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "out" / "screenshots"  # gitignored: the tests leave what they saw here


def chromium_path() -> str:
    """The Chromium executable, or an AssertionError saying how to get one (the browser tests
    must run, not be skipped: scripts/test.sh installs it with apt-get where it can)."""
    path = os.environ.get("VIDATTN_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    assert path, ("the viewer tests need Chromium: apt-get install chromium (scripts/test.sh "
                  "does it as root), or set VIDATTN_CHROMIUM to a Chromium executable")
    return path


class Page:
    """A Playwright page and what it said: ``errors`` holds console errors and page errors."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught {e.name}: {e.message}"))
        page.on("requestfailed", lambda r: self.errors.append(f"failed to load {r.url}"))

    def evaluate(self, script, arg=None):
        return self.page.evaluate(script, arg)

    def wait_for(self, script, arg=None, timeout_ms=15000):
        """Wait until ``script`` (a JS function of ``arg``) returns a true value."""
        self.page.wait_for_function(script, arg=arg, timeout=timeout_ms)

    def canvas(self) -> np.ndarray:
        """The overlay canvas's pixels, uint8 ``(h, w, 4)`` RGBA (not premultiplied)."""
        data = self.evaluate("""() => {
            const c = document.getElementById("overlay");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let s = ""; for (let i = 0; i < d.length; i += 8192)
                s += String.fromCharCode.apply(null, d.subarray(i, i + 8192));
            return [c.height, c.width, btoa(s)]; }""")
        h, w, b64 = data
        return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)

    def screenshot(self, name: str, selector: str | None = None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        target = self.page.locator(selector) if selector else self.page
        target.screenshot(path=str(path))
        return path

    def stage_picture(self) -> np.ndarray:
        """What the stage shows (the video or image with the overlay), uint8 RGB."""
        from io import BytesIO

        from PIL import Image

        png = self.page.locator("#stage").screenshot()
        return np.asarray(Image.open(BytesIO(png)).convert("RGB"))


class Browser:
    """One headless Chromium for a test module."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=chromium_path(),
            args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])

    def open(self, path, wait_script="() => window.vidattnViewer !== undefined") -> Page:
        page = Page(self._browser.new_page(viewport={"width": 1300, "height": 950}))
        page.page.goto(Path(path).resolve().as_uri())
        page.wait_for(wait_script)
        return page

    def close(self):
        self._browser.close()
        self._playwright.stop()


def read_chunk(path) -> bytes:
    """The bytes a viewer data chunk (``vidattnChunk("KEY", "BASE64");``) hands the page."""
    match = re.fullmatch(r'vidattnChunk\("[\w-]+","([A-Za-z0-9+/=]*)"\);\n',
                         Path(path).read_text(encoding="ascii"))
    assert match, f"{path} is not a viewer data chunk"
    return base64.b64decode(match.group(1))


def expected_overlay(values, canvas_hw, resized_hw, patch: int, colormap: str,
                     alpha: float, stride: int | None = None) -> np.ndarray:
    """What the page should draw for the map ``values`` ``(gh, gw)``: the map over its peak,
    brought to the canvas exactly as the rendered videos bring it to a frame
    (``draw.map_to_frame`` with the input's ``resized_hw``, ``patch`` and ``stride``), each pixel
    the colormap's colour with opacity ``alpha * heat`` -> float ``(h, w, 4)`` RGBA in 0..255."""
    values = np.asarray(values, np.float32)
    heat = values / values.max() if values.max() > 0 else values
    up = draw.map_to_frame(heat, canvas_hw, resized_hw, patch, stride=stride)
    up = np.clip(up, 0, 1).astype(np.float64)
    rgb = draw.colormap_lut(colormap)[np.minimum(255, np.floor(up * 256).astype(int))]
    return np.concatenate([rgb, np.round(255 * alpha * up)[..., None]], axis=-1)


def read_meta(page_path) -> dict:
    """The JSON a viewer page carries for its script."""
    import json

    html = Path(page_path).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="vidattn-meta">(.*?)</script>', html,
                      re.S)
    assert match, f"{page_path} has no viewer data"
    return json.loads(match.group(1))


def video_maps(folder) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's stored maps of the video viewer in ``folder``, decoded as the page does:
    ``(scales (F, K) float32, bytes (F, K, gh, gw) uint8)``."""
    meta = read_meta(Path(folder) / "index.html")
    gh, gw = meta["grid"]
    k = meta["maps"]
    scales, maps = [], []
    for key in meta["chunks"]["keys"]:
        raw = read_chunk(Path(folder, meta["chunks"]["folder"], f"{key}.js"))
        n = len(raw) // (k * (gh * gw + 4))
        assert len(raw) == n * k * (gh * gw + 4)
        scales.append(np.frombuffer(raw[: 4 * n * k], "<f4").reshape(n, k))
        maps.append(np.frombuffer(raw[4 * n * k:], np.uint8).reshape(n, k, gh, gw))
    return np.concatenate(scales), np.concatenate(maps)


def video_features(folder) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's stored patch features of the video viewer in ``folder`` (with
    ``--viewer-similarity``), as the page reads them: ``(scales (F, cells) float32, bytes (F,
    cells, dims) uint8)``."""
    meta = read_meta(Path(folder) / "index.html")
    cells, dims = meta["grid"][0] * meta["grid"][1], meta["features"]["dims"]
    scales, data = [], []
    for key in meta["features"]["chunks"]["keys"]:
        raw = read_chunk(Path(folder, meta["features"]["chunks"]["folder"], f"{key}.js"))
        n = len(raw) // (cells * (dims + 4))
        assert len(raw) == n * cells * (dims + 4)
        scales.append(np.frombuffer(raw[: 4 * n * cells], "<f4").reshape(n, cells))
        data.append(np.frombuffer(raw[4 * n * cells:], np.uint8).reshape(n, cells, dims))
    return np.concatenate(scales), np.concatenate(data)
