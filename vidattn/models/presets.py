"""Named presets: the architecture, tokens, preprocessing and weight source of each model family.

One table, in the spirit of timm's ``default_cfgs`` and keras-hub's presets: everything that differs
between DINO, the supervised ViT, DeiT, DINOv2 (with or without registers) and DINOv3 is data here,
so ``vit.py`` holds a single backbone with switches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from vidattn.cells import grid_shape
from vidattn.demo.classes import CLASSES
from vidattn.options import DEFAULT_RESAMPLE

__all__ = ["PRESETS", "Preset", "get_preset", "with_stride"]

_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
DINOV3_REQUEST = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


@dataclass(frozen=True)
class Preset:
    """What a model is and how to feed it.

    Attributes:
        name: preset name (``vidattn models`` lists them).
        description: one line for listings.
        patch_size: side of a square patch in pixels.
        embed_dim, depth, num_heads: transformer shape.
        mlp: feed-forward kind: ``"gelu"`` (``fc1``, GELU, ``fc2``) or ``"swiglu"`` (``w12``, ``w3``).
        mlp_hidden: the feed-forward's hidden width (SwiGLU widths are rounded by each family's
            own rule, so they are given as published); default ``int(embed_dim * 4)``.
        act: the ``"gelu"`` feed-forward's activation: ``"gelu"`` (exact, erf: timm, DINO,
            OpenCLIP), ``"gelu_tanh"`` (the tanh approximation: SigLIP) or ``"quick_gelu"``
            (``x * sigmoid(1.702 x)``: OpenAI's CLIP).
        pre_norm: a LayerNorm on the tokens after the positions are added and before the first
            block (CLIP's ``ln_pre``, timm's ``norm_pre``).
        patch_bias: the patch projection has a bias (CLIP's ``conv1`` has none).
        pool: what summarises the image in ``features``: ``"token"`` (the final-normed CLS
            token) or ``"map"`` (attention pooling: a learned probe attends over the final-normed
            patches, then a residual MLP; SigLIP's head, timm's ``attn_pool``). A ``"map"`` model
            has no class token; its maps are the probe's attention over the patches.
        num_class_tokens: 0 (none: SigLIP), 1 (CLS) or 2 (CLS then distillation token,
            distilled DeiT).
        num_register_tokens: tokens after the class tokens that take part in attention but have
            no position and never appear in a map: DINOv2's registers, DINOv3's storage tokens.
        layer_scale: LayerScale on both residual branches (``ls1``, ``ls2``).
        position: ``"learned"`` (``pos_embed`` over class tokens and patches) or ``"rope"``
            (DINOv3's axial rotary embedding of patch queries and keys, base ``rope_base``).
        pos_resize: how learned embeddings are resampled to another grid, as the weights' own
            code does it (``position.RESIZES``: "offset", "size" or "antialias").
        mask_k_bias: the qkv bias is masked by the stored ``bias_mask`` (DINOv3).
        num_classes: classifier outputs, 0 for a headless backbone.
        class_names: the names of the head's classes, where the preset defines its own (the
            toy ``demo_classifier``'s coloured shapes); empty: a 1000-way head's are ImageNet-1k's
            (``relevance.targets.class_names``).
        image_size: side of the square images it was trained on; learned position embeddings
            cover ``(image_size // patch_size) ** 2`` patches.
        preprocessing: a name in ``preprocess.NORMALIZATIONS`` (``"imagenet"``: ImageNet's mean
            and std on 0..1 pixels; ``"minus_one_one"``; ``"clip"``: OpenAI CLIP's mean and
            std), or a ``(mean, std)`` pair of RGB triples on 0..1 pixels (a checkpoint's own
            preprocessing config).
        resample: the image probes' resize filter (``keras.ops.image.resize`` names:
            ``"bicubic"``, ``"bilinear"``, ...): the study's bicubic, or what a checkpoint's own
            preprocessing config names.
        weights_url: official download address of the weights (a release file, looked for in
            torch hub's cache first), or None.
        hf_repo, hf_file: the weights on the Hugging Face Hub, or None.
        gated: where to request weights that have no public address (shown in the error); such
            a preset downloads nothing, but uses its Hugging Face cache entry when there is one.
        packaged_weights: file name under ``vidattn/data/`` for weights that ship with the
            package (the demo model), used instead of a download.
        weights_path: the weights file of a model read from its own folder and config
            (``--model PATH``: ``vidattn.models.configs``), used instead of a download.
        weights_format: what the download is (for listings): "DINO .pth", "timm safetensors", ...
        licence: the weights' licence.
        family: whose checkpoint names the weights use (``vidattn.models.families``).
        layer_norm_eps: LayerNorm epsilon of the checkpoint's implementation.
        stride: the patch convolution's stride where patches overlap (``with_stride``), None
            for the family's own ``patch_size``.
    """

    name: str
    description: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    act: str = "gelu"
    pre_norm: bool = False
    patch_bias: bool = True
    pool: str = "token"
    num_class_tokens: int = 1
    num_register_tokens: int = 0
    layer_scale: bool = False
    position: str = "learned"
    pos_resize: str = "size"
    rope_base: float = 100.0
    mask_k_bias: bool = False
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    image_size: int = 224
    preprocessing: str | tuple = "imagenet"
    resample: str = DEFAULT_RESAMPLE
    weights_url: str | None = None
    hf_repo: str | None = None
    hf_file: str = "model.safetensors"
    gated: str | None = None
    packaged_weights: str | None = None
    weights_path: str | None = None
    weights_format: str = ""
    licence: str = "Apache-2.0"
    family: str = "vit"
    layer_norm_eps: float = 1e-6
    stride: int | None = None

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid the positional embeddings were trained on."""
        return self.image_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class tokens, then registers (or storage tokens)."""
        return self.num_class_tokens + self.num_register_tokens

    @property
    def num_tokens(self) -> int:
        """Tokens at the native resolution: prefix tokens plus patches."""
        return self.num_prefix_tokens + self.grid_size**2

    @property
    def cell_stride(self) -> int:
        """Pixels between neighbouring patches: the stride, or the patch size."""
        return self.stride or self.patch_size

    def grid_at(self, input_hw) -> tuple[int, int]:
        """The patch grid ``(gh, gw)`` of an input ``(H, W)`` (``cells.grid_shape``)."""
        return grid_shape(input_hw, self.patch_size, self.stride)

    def tokens_at(self, input_hw) -> int:
        """Tokens of an input ``(H, W)``: prefix tokens plus its patches."""
        gh, gw = self.grid_at(input_hw)
        return self.num_prefix_tokens + gh * gw

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden(self) -> int:
        """The feed-forward's hidden width."""
        return self.mlp_hidden or 4 * self.embed_dim


_SIZES = {  # ViT sizes: (letter, embed_dim, depth, heads)
    "s": ("S", 384, 12, 6), "b": ("B", 768, 12, 12), "l": ("L", 1024, 24, 16),
    "g": ("g", 1536, 40, 24), "h": ("H", 1280, 32, 20),
}  # fmt: skip


def _dino(size, patch, folder):
    letter, dim, depth, heads = _SIZES[size]
    return Preset(
        name=f"dino_vit{size}{patch}",
        description=f"DINO self-supervised ViT-{letter}/{patch} (ImageNet-1k, no labels)",
        patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, pos_resize="offset",
        weights_url=f"{_DINO}/{folder}/{folder}.pth", weights_format="DINO .pth",
    )  # fmt: skip


def _dinov2(size, registers):
    """DINOv2 ViT-{S,B,L,g}/14 at 518 (a 37x37 grid), LayerScale; giant: SwiGLU of width 4096.
    Without registers, official positions resize by scale factor with DINO's 0.1 offset; with
    them, by size with antialiasing (the hub's interpolate_offset=0, interpolate_antialias)."""
    letter, dim, depth, heads = _SIZES[size]
    reg = "_reg4" if registers else ""
    base = f"dinov2_vit{size}14"
    hf_name = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    return Preset(
        name=f"{base}{'_reg' if registers else ''}",
        description=f"DINOv2 ViT-{letter}/14{' with 4 registers' if registers else ''} "
                    "(LVD-142M, no labels)",
        patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, image_size=518,
        mlp="swiglu" if size == "g" else "gelu", mlp_hidden=4096 if size == "g" else None,
        num_register_tokens=4 if registers else 0, layer_scale=True,
        pos_resize="antialias" if registers else "offset",
        weights_url=f"{_DINOV2}/{base}/{base}{reg}_pretrain.pth", weights_format="DINOv2 .pth",
        hf_repo=f"facebook/dinov2-{'with-registers-' if registers else ''}{hf_name}",
        family="dinov2",
    )  # fmt: skip


def _dinov3(size, plus=False, hidden=None):
    """DINOv3 ViT-{S,S+,B,L,H+}/16: 4 storage tokens, RoPE (base 100), LayerScale, masked key
    bias, LayerNorm eps 1e-5; the "+" models use SwiGLU of the published width."""
    letter, dim, depth, heads = _SIZES[size]
    name = f"vit{size}16{'plus' if plus else ''}"
    return Preset(
        name=f"dinov3_{name}",
        description=f"DINOv3 ViT-{letter}{'+' if plus else ''}/16 (LVD-1689M, no labels)",
        patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
        mlp="swiglu" if plus else "gelu", mlp_hidden=hidden, num_register_tokens=4,
        layer_scale=True, position="rope", mask_k_bias=True, layer_norm_eps=1e-5,
        hf_repo=f"facebook/dinov3-{name}-pretrain-lvd1689m", gated=DINOV3_REQUEST,
        weights_format="DINOv3 .pth or HF safetensors", licence="DINOv3 License",
        family="dinov3",
    )  # fmt: skip


def _clip(size, patch):
    """OpenAI CLIP ViT-{B,L} image towers at 224 (Hugging Face ``CLIPModel`` files): QuickGELU,
    ``ln_pre``, a patch projection without bias, LayerNorm eps 1e-5, positions resized by size
    (``CLIPVisionEmbeddings.interpolate_pos_encoding``), OpenAI's mean and std."""
    letter, dim, depth, heads = _SIZES[size]
    hf_size = {"b": "base", "l": "large"}[size]
    return Preset(
        name=f"clip_vit{size}{patch}",
        description=f"OpenAI CLIP ViT-{letter}/{patch} image tower (WIT-400M image-text pairs)",
        patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, act="quick_gelu",
        pre_norm=True, patch_bias=False, preprocessing="clip", layer_norm_eps=1e-5,
        hf_repo=f"openai/clip-vit-{hf_size}-patch{patch}",
        weights_format="HF CLIPModel safetensors", licence="MIT", family="clip",
    )  # fmt: skip


def _siglip2(name, title, patch, dim, depth, heads, hidden, repo):
    """SigLIP 2 image towers at 224 (the fixed-resolution checkpoints: Hugging Face
    ``SiglipModel`` files): no class token, an attention-pooling head, tanh GELU, LayerNorm eps
    1e-6, positions resized by size (``SiglipVisionEmbeddings``), pixels to [-1, 1]."""
    return Preset(
        name=name,
        description=f"SigLIP 2 {title}/{patch} image tower (WebLI image-text pairs)",
        patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_hidden=hidden,
        act="gelu_tanh", pool="map", num_class_tokens=0, preprocessing="minus_one_one",
        hf_repo=repo, weights_format="HF SiglipModel safetensors", family="siglip",
    )  # fmt: skip


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _dino("s", 16, "dino_deitsmall16_pretrain"),
        _dino("s", 8, "dino_deitsmall8_pretrain"),
        _dino("b", 16, "dino_vitbase16_pretrain"),
        _dino("b", 8, "dino_vitbase8_pretrain"),
        *(_dinov2(size, registers) for registers in (False, True) for size in "sblg"),
        _dinov3("s"),
        _dinov3("s", plus=True, hidden=1536),
        _dinov3("b"),
        _dinov3("l"),
        _dinov3("h", plus=True, hidden=5120),
        Preset(
            name="vit_b16",
            description="Supervised ViT-B/16 (ImageNet-21k, fine-tuned on ImageNet-1k)",
            patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000,
            preprocessing="minus_one_one", hf_repo="google/vit-base-patch16-224",
            weights_format="Hugging Face safetensors", layer_norm_eps=1e-12,
        ),
        Preset(
            name="deit_b16",
            description="DeiT-B/16 (supervised, ImageNet-1k)",
            patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000,
            pos_resize="antialias", hf_repo="timm/deit_base_patch16_224.fb_in1k",
            weights_format="timm safetensors",
        ),
        Preset(
            name="deit_b16_distilled",
            description="DeiT-B/16 with distillation token (supervised, ImageNet-1k)",
            patch_size=16, embed_dim=768, depth=12, num_heads=12, num_class_tokens=2,
            num_classes=1000, pos_resize="antialias",
            hf_repo="timm/deit_base_distilled_patch16_224.fb_in1k",
            weights_format="timm safetensors",
        ),
        _clip("b", 32),
        _clip("b", 16),
        _clip("l", 14),
        Preset(
            name="openclip_vitb16_laion2b",
            description="OpenCLIP ViT-B/16 image tower (LAION-2B image-text pairs)",
            patch_size=16, embed_dim=768, depth=12, num_heads=12, pre_norm=True,
            patch_bias=False, preprocessing="clip", layer_norm_eps=1e-5,
            pos_resize="antialias",  # OpenCLIP's resize_pos_embed: bicubic, antialiased
            hf_repo="laion/CLIP-ViT-B-16-laion2B-s34B-b88K", hf_file="open_clip_pytorch_model.bin",
            weights_format="OpenCLIP .bin", licence="MIT", family="clip",
        ),
        _siglip2("siglip2_vitb16", "ViT-B", 16, 768, 12, 12, 3072,
                 "google/siglip2-base-patch16-224"),
        _siglip2("siglip2_so400m14", "So400m", 14, 1152, 27, 16, 4304,
                 "google/siglip2-so400m-patch14-224"),
        Preset(
            name="demo",
            description="Demo ViT-4L/8 trained here with DINO on synthetic scenes (a toy, offline)",
            patch_size=8, embed_dim=128, depth=4, num_heads=4, image_size=64,
            packaged_weights="demo_vit.safetensors", weights_format="demo safetensors",
            licence="Apache-2.0 (this project)",
        ),
        Preset(
            name="demo_classifier",
            description="Demo ViT-4L/8 classifier trained here on synthetic coloured shapes "
                        "(4 classes; a toy, offline)",
            patch_size=8, embed_dim=128, depth=4, num_heads=4, image_size=96,
            num_classes=len(CLASSES), class_names=CLASSES,
            packaged_weights="demo_classifier.safetensors", weights_format="demo safetensors",
            licence="Apache-2.0 (this project)",
        ),
    )
}  # fmt: skip


def get_preset(name: str) -> Preset:
    """Look a preset up by name, or read a model source (a checkpoint folder, a checkpoint file
    in one, or ``hf:ORG/NAME``: ``configs.read_model``); unknown names list the known ones.

    A source is read once per ``(name, resolved path, newest modification time in its folder)``,
    so repeated calls (every command's checks, then its load) cost a ``stat``, and an edited
    folder is read again."""
    from vidattn.errors import VidattnError
    from vidattn.models import configs

    if name in PRESETS:
        return PRESETS[name]
    if configs.is_model_source(name):
        return _read_source(name, _source_stamp(name))
    raise VidattnError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)} (or a "
                       "checkpoint folder, or hf:ORG/NAME)")


def _source_stamp(name: str) -> tuple | None:
    """``(resolved folder, newest mtime_ns of it and its files)`` of a path source; None for a
    Hub name or a path that cannot be read (``read_model`` then says why)."""
    import os
    from pathlib import Path

    if name.startswith("hf:"):
        return None
    try:
        path = Path(name).expanduser().resolve()
        folder = path if path.is_dir() else path.parent
        with os.scandir(folder) as entries:
            stamps = [e.stat().st_mtime_ns for e in entries if e.is_file()]
        return os.fspath(path), max([folder.stat().st_mtime_ns, *stamps])
    except OSError:
        return None


@functools.lru_cache(maxsize=16)
def _read_source(name: str, stamp) -> Preset:
    """``configs.read_model(name)``, cached per ``stamp`` (``_source_stamp``); errors are not."""
    from vidattn.models import configs

    return configs.read_model(name)


def with_stride(preset: Preset, stride: int | None) -> Preset:
    """``preset`` with overlapping patches ``stride`` pixels apart: dino-vit-features'
    ``patch_vit_resolution`` (ShirAmir/dino-vit-features ``extractor.py``).

    That code sets the patch convolution's stride and replaces the model's position
    interpolation with its ``_fix_pos_enc``: DINO's rule (``position`` "offset": bicubic at
    scale ``(g + 0.1) / M``, skipped on the native grid) on the grid ``1 + (H - p) // s``, for
    whatever family it patches, so every family here takes that rule with a stride. A stride
    equal to the patch size changes nothing, there as here. Raises VidattnError for a stride
    that does not divide the patch (the reference asserts it) and for RoPE (DINOv3), where no
    reference defines overlapping patches.
    """
    from vidattn.errors import VidattnError

    if stride is None or stride == preset.patch_size:
        return preset
    p = preset.patch_size
    if preset.position != "learned":
        raise VidattnError(f"--stride: {preset.name} places patches by RoPE, and no reference "
                           "defines overlapping patches for it (only learned positions)")
    if not 0 < stride < p or p % stride:
        raise VidattnError(f"--stride {stride}: must divide {preset.name}'s patch size {p} "
                           f"(one of {', '.join(str(s) for s in range(1, p) if p % s == 0)})")
    return replace(preset, stride=int(stride), pos_resize="offset")
