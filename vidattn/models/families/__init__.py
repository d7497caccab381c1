"""Model families: each family's checkpoint names mapped onto the canonical layout.

A family is a module with ``to_canonical(tensors, preset, path) -> tensors``: it takes a flat dict of
names to tensors (lazy or numpy, training prefixes already stripped by ``state_dict``) in any of
the layouts the family's weights are published in, and returns it under the canonical names that
``ViT.checkpoint_layout`` lists for a preset of that family. Names it does not know pass through,
so the model can report them. Each preset names its family (``Preset.family``).
"""

from __future__ import annotations

from vidattn.models.families import clip, dinov2, dinov3, siglip, vit

FAMILIES = {"vit": vit, "dinov2": dinov2, "dinov3": dinov3, "clip": clip, "siglip": siglip}


def get(name: str):
    """The family module called ``name``."""
    return FAMILIES[name]
