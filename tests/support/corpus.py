"""The seed corpus: one small valid file of each kind vidattn reads, made fresh in each test
session (nothing binary is checked in), for the fuzz tests to damage.

Videos: H.264 + AAC, yuv444, 10-bit, a rotation flag, variable frame rate, 1x1 frames and 7x5
frames (smaller than a patch). Images: PNG, JPEG with an EXIF rotation, animated GIF, 16-bit PNG,
WebP, palette PNG with transparency. Checkpoints: the demo model's weights as a DINO-style
``.pth`` and as ``.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.videos import make_video

VIDEOS = {
    "clip.mp4": dict(audio=True),
    "yuv444.mkv": dict(pix_fmt="yuv444p"),
    "10bit.mp4": dict(pix_fmt="yuv420p10le"),
    "rotated.mp4": dict(rotation=90),
    "vfr.mkv": dict(vfr=True),
    "1x1.mkv": dict(size=(1, 1), pix_fmt="yuv444p"),
    "7x5.mkv": dict(size=(7, 5), pix_fmt="yuv444p"),
}
VIDEO_FRAMES = 8


def make_videos(folder) -> dict[str, Path]:
    """``VIDEOS`` in ``folder``: 8 frames each, 96x64 unless said otherwise."""
    return {name: make_video(Path(folder) / name, n_frames=VIDEO_FRAMES, seed=i, **kwargs).path
            for i, (name, kwargs) in enumerate(VIDEOS.items())}


def _pixels(seed=0, size=(40, 56)):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (*size, 3), np.uint8)
    pixels[8:20, 10:30] = (255, 0, 0)
    return pixels


def make_images(folder) -> dict[str, Path]:
    """Six small images in ``folder``, one per format and oddity listed in the module doc."""
    folder = Path(folder)
    rgb = Image.fromarray(_pixels())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    saves = {
        "photo.png": lambda p: rgb.save(p),
        "exif.jpg": lambda p: rgb.save(p, exif=exif.tobytes()),
        "anim.gif": lambda p: rgb.save(p, save_all=True, append_images=[rgb.rotate(180)],
                                       duration=100),
        "deep.png": lambda p: Image.fromarray(_pixels(1)[..., 0].astype(np.uint16) * 257).save(p),
        "photo.webp": lambda p: rgb.save(p, quality=80),
        "palette.png": lambda p: rgb.quantize(16).save(p, transparency=0),
    }
    for name, save in saves.items():
        save(folder / name)
    return {name: folder / name for name in saves}


def demo_state() -> dict[str, np.ndarray]:
    """The bundled demo weights as a canonical state dict."""
    from vidattn.models import hub
    from vidattn.models.presets import get_preset
    from vidattn.models.state_dict import read_checkpoint

    return read_checkpoint(hub.resolve(get_preset("demo")))


def make_checkpoints(folder) -> dict[str, Path]:
    """The bundled demo weights re-saved as ``demo.pth`` (torch.save of a DINO-style state dict)
    and ``demo.safetensors``."""
    import torch
    from safetensors.numpy import save_file

    state = demo_state()
    folder = Path(folder)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "demo.pth")
    save_file(state, folder / "demo.safetensors")
    return {name: folder / name for name in ("demo.pth", "demo.safetensors")}


FAMILY_PRESETS = {"dinov2_reg": ("dinov2", True, True), "dinov3": ("dinov3", None, True)}


def family_preset(name):
    """The tiny preset of a family seed group: DINOv2-g-like with registers, DINOv3 S+-like."""
    from tests.support.families import tiny_dinov2, tiny_dinov3

    family, registers, swiglu = FAMILY_PRESETS[name]
    return tiny_dinov2(registers, swiglu) if family == "dinov2" else tiny_dinov3(swiglu)


def make_family_checkpoints(folder) -> dict[str, dict[str, Path]]:
    """Tiny random DINOv2-with-registers (SwiGLU) and DINOv3 (SwiGLU) weights in each format
    their weights come in: ``{group: {file name: path}}``, official ``.pth``, timm and Hugging
    Face safetensors for DINOv2, official ``.pth`` and Hugging Face safetensors for DINOv3."""
    import torch
    from safetensors.torch import save_file

    from tests.support.families import (
        official_dinov2,
        official_dinov3,
        peaky_hf_dinov2,
        peaky_hf_dinov3,
        timm_dinov2,
    )

    folder = Path(folder)
    groups = {}
    for name in FAMILY_PRESETS:
        preset = family_preset(name)
        hf = peaky_hf_dinov2(preset) if preset.family == "dinov2" else peaky_hf_dinov3(preset)
        hf.save_pretrained(folder / name)
        official = official_dinov2(hf) if preset.family == "dinov2" else official_dinov3(hf)
        files = {f"{name}_hf.safetensors": folder / name / "model.safetensors",
                 f"{name}.pth": folder / f"{name}.pth"}
        torch.save(official, files[f"{name}.pth"])
        if preset.family == "dinov2":
            files[f"{name}_timm.safetensors"] = folder / f"{name}_timm.safetensors"
            save_file(timm_dinov2(official), str(files[f"{name}_timm.safetensors"]))
        groups[name] = files
    return groups
