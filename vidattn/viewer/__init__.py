"""The browser viewer: static pages that open from the file system (``file://``, no server, no
network), for a video (``video.py``), for each still image (``image.py``), and the gallery of a
batch run (``gallery.py``); ``pages.py`` holds what they share.

Why the data travels as JavaScript: a page opened from ``file://`` may not ``fetch()`` or
``XMLHttpRequest`` its neighbours (Chromium refuses file URLs to scripts, Firefox treats each file
as its own origin), and images drawn into a canvas from ``file://`` taint it. A
``<script src="...">`` loads from anywhere, so each data chunk is a small script,
``vidattnChunk("KEY", "BASE64")``, that the page adds when it needs the chunk. Base64 costs a third
more than the raw bytes.

Maps are stored as uint8 per map (or per attention row) with one float32 scale each, its maximum:
value = byte / 255 * scale. Displays scale every map to its own peak anyway (as
``attention.normalize_maps``), so the bytes are the displayed heat and the scale gives back the
attention value under the cursor.
"""
