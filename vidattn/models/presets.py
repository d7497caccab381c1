"""Named presets: the architecture, tokens, preprocessing and weight source of each model family.

One table, in the spirit of timm's ``default_cfgs`` and keras-hub's presets: everything that differs
between DINO, supervised ViT and DeiT is data here, so ``vit.py`` holds a single model family.
"""

from __future__ import annotations

from dataclasses import dataclass

_DINO = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class Preset:
    """What a model is and how to feed it.

    Attributes:
        name: preset name (``vidattn models`` lists them).
        description: one line for listings.
        patch_size: side of a square patch in pixels.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        num_class_tokens: 1 (CLS) or 2 (CLS then distillation token, distilled DeiT).
        num_classes: classifier outputs, 0 for a headless backbone (DINO).
        image_size: side of the square images it was trained on; its positional embeddings
            cover ``(image_size // patch_size) ** 2`` patches and are interpolated for other grids.
        preprocessing: ``"imagenet"`` (mean/std on 0..1 pixels) or ``"minus_one_one"``.
        weights_url: official download address of the weights (a release file, looked for in
            torch hub's cache first), or None.
        hf_repo, hf_file: the weights on the Hugging Face Hub, or None.
        gated: where to request weights that have no public address (shown in the error).
        packaged_weights: file name under ``vidattn/data/`` for weights that ship with the
            package (the demo model), used instead of a download.
        weights_format: what the download is (for listings): "DINO .pth", "timm safetensors", ...
        licence: the weights' licence.
        family: whose checkpoint names the weights use (``vidattn.models.families``).
        layer_norm_eps: LayerNorm epsilon of the checkpoint's implementation.
    """

    name: str
    description: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_class_tokens: int = 1
    num_classes: int = 0
    image_size: int = 224
    preprocessing: str = "imagenet"
    weights_url: str | None = None
    hf_repo: str | None = None
    hf_file: str = "model.safetensors"
    gated: str | None = None
    packaged_weights: str | None = None
    weights_format: str = ""
    licence: str = "Apache-2.0"
    family: str = "vit"
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid the positional embeddings were trained on."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens at the native resolution: class tokens plus patches."""
        return self.num_class_tokens + self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def _dino(name, size, patch, dim, heads, folder):
    return Preset(
        name=name,
        description=f"DINO self-supervised ViT-{size}/{patch} (ImageNet-1k, no labels)",
        patch_size=patch,
        embed_dim=dim,
        depth=12,
        num_heads=heads,
        weights_url=f"{_DINO}/{folder}/{folder}.pth",
        weights_format="DINO .pth",
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _dino("dino_vits16", "S", 16, 384, 6, "dino_deitsmall16_pretrain"),
        _dino("dino_vits8", "S", 8, 384, 6, "dino_deitsmall8_pretrain"),
        _dino("dino_vitb16", "B", 16, 768, 12, "dino_vitbase16_pretrain"),
        _dino("dino_vitb8", "B", 8, 768, 12, "dino_vitbase8_pretrain"),
        Preset(
            name="vit_b16",
            description="Supervised ViT-B/16 (ImageNet-21k, fine-tuned on ImageNet-1k)",
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            num_classes=1000,
            preprocessing="minus_one_one",
            hf_repo="google/vit-base-patch16-224",
            weights_format="Hugging Face safetensors",
            layer_norm_eps=1e-12,
        ),
        Preset(
            name="deit_b16",
            description="DeiT-B/16 (supervised, ImageNet-1k)",
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            num_classes=1000,
            hf_repo="timm/deit_base_patch16_224.fb_in1k",
            weights_format="timm safetensors",
        ),
        Preset(
            name="deit_b16_distilled",
            description="DeiT-B/16 with distillation token (supervised, ImageNet-1k)",
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            num_class_tokens=2,
            num_classes=1000,
            hf_repo="timm/deit_base_distilled_patch16_224.fb_in1k",
            weights_format="timm safetensors",
        ),
        Preset(
            name="demo",
            description="Demo ViT-4L/8 trained here with DINO on synthetic scenes (a toy, offline)",
            patch_size=8,
            embed_dim=128,
            depth=4,
            num_heads=4,
            image_size=64,
            packaged_weights="demo_vit.safetensors",
            weights_format="demo safetensors",
            licence="Apache-2.0 (this project)",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name; unknown names list the known ones."""
    from vidattn.errors import VidattnError

    try:
        return PRESETS[name]
    except KeyError:
        raise VidattnError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
