"""Train the ``demo`` preset with DINO on procedural scenes and write its shipped weights.

    .venv/bin/python scripts/train_demo_model.py [--seed 0] [--steps 700] [--out PATH]

DINO (Caron et al. 2021) at toy scale: a student ViT and its teacher (an exponential moving
average of the student) each carry a projection head; the student learns to predict, from every
crop of a scene, the teacher's centred and sharpened output for the other global crop. Only the
teacher's backbone is exported; the heads are dropped.

One departure from photographs, and why: in a photograph the object is what crops of one picture
share, so DINO learns to look at it. Crops of our synthetic scenes would mostly share their
background (stripes, noise, colours), and a first try at this budget taught the CLS token to look
at the background. So each crop of a scene is cut from a differently-backgrounded rendering of
the same objects (:func:`vidattn.demo.scenes.make_views`), and objects are drawn larger in training
(radius 15-35 % of the side) so that most crops contain one. There are no labels anywhere.

Deterministic given ``--seed`` (Keras seeds, TensorFlow op determinism, one numpy Generator for
scenes and augmentations). At the end it reloads the written file through
``vidattn.load_model`` and prints the bar (see ``samples/README.md``): the share of last-block CLS
attention on object patches of 200 fresh scenes (a seed never used in training), for the trained
and a randomly initialised model, next to the share of object patches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import vidattn
from vidattn.demo.scenes import make_scenes, object_area_share, object_attention_share
from vidattn.demo.training import train, write_weights
from vidattn.models.presets import get_preset
from vidattn.models.vit import export_state_dict

ROOT = Path(__file__).resolve().parent.parent
EVAL_SEED = 20_240_601  # held-out scenes: never a training seed (training draws from --seed)


def report(path: Path, n_scenes: int):
    """Print the bar on ``n_scenes`` fresh scenes for the written weights and random ones."""
    scenes = make_scenes(np.random.default_rng(EVAL_SEED), n_scenes)
    preset = get_preset("demo")
    trained = vidattn.load_model(preset, weights=path)
    random = vidattn.load_model(preset, weights="random")
    area = object_area_share(scenes.masks, preset.patch_size)
    print(f"bar on {n_scenes} held-out scenes (seed {EVAL_SEED}):")
    print(f"  object patch share (uniform attention): {area:.3f}")
    print(f"  trained CLS attention on objects:       "
          f"{object_attention_share(trained, scenes.images, scenes.masks):.3f}  (bar >= 0.6)")
    print(f"  random-init CLS attention on objects:   "
          f"{object_attention_share(random, scenes.images, scenes.masks):.3f}  "
          f"(bar <= {area + 0.1:.3f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--local-crops", type=int, default=4)
    parser.add_argument("--out-dim", type=int, default=1024, help="DINO head prototypes")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--teacher-temp", type=float, default=0.04)
    parser.add_argument("--momentum", type=float, default=0.99, help="initial teacher EMA")
    parser.add_argument("--eval-scenes", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "vidattn/data/demo_vit.safetensors")
    args = parser.parse_args()
    backbone, seconds = train(args)
    write_weights(export_state_dict(backbone, np.float16), args.out)
    print(f"trained {args.steps} steps in {seconds / 60:.1f} min; wrote {args.out}")
    report(args.out, args.eval_scenes)


if __name__ == "__main__":
    main()
