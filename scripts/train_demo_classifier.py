"""Train the ``demo_classifier`` preset on labelled synthetic scenes and write its shipped weights.

    .venv/bin/python scripts/train_demo_classifier.py [--seed 0] [--steps 300] [--out PATH]

A toy supervised ViT (``vidattn.demo.supervised``): four classes, each a shape of
``vidattn.demo.scenes`` in its own hue (red disc, green square, blue triangle, yellow blob: by
shape alone it did not learn in minutes); a scene's class is its one large object, drawn among
1-3 smaller objects of the other classes (``vidattn.demo.classes``). Its purpose is to have
class-specific explanations (``vidattn.relevance``) with a ground truth offline: the class
object's mask.

Deterministic given ``--seed`` (Keras seeds, TensorFlow op determinism, one numpy Generator for
the scenes). At the end it reloads the written file through ``vidattn.load_model`` and prints the
held-out accuracy on fresh scenes (``classes.labelled_scenes``, a seed training never draws),
next to that of the same architecture with random weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import vidattn
from vidattn.demo.classes import HELD_OUT_SEED, PRESET, accuracy, labelled_scenes
from vidattn.demo.supervised import train_classifier
from vidattn.demo.training import write_weights
from vidattn.models.vit import export_state_dict

ROOT = Path(__file__).resolve().parent.parent


def report(path: Path, n_scenes: int):
    """Print the held-out accuracy of the written weights and of random ones."""
    scenes = labelled_scenes(n_scenes, HELD_OUT_SEED)
    trained = vidattn.load_model(PRESET, weights=path)
    random = vidattn.load_model(PRESET, weights="random")
    print(f"held-out accuracy on {n_scenes} scenes (seed {HELD_OUT_SEED}), 4 classes:")
    print(f"  trained:      {accuracy(trained, scenes):.3f}")
    print(f"  RANDOM init:  {accuracy(random, scenes):.3f}  (chance 0.25)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-scenes", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "vidattn/data/demo_classifier.safetensors")
    args = parser.parse_args()
    model, seconds = train_classifier(args.seed, args.steps, args.batch, args.lr,
                                      log_every=args.log_every)
    write_weights(export_state_dict(model, np.float16), args.out)
    print(f"trained {args.steps} steps in {seconds / 60:.1f} min; wrote {args.out} "
          f"({args.out.stat().st_size / 1e6:.2f} MB)")
    report(args.out, args.eval_scenes)


if __name__ == "__main__":
    main()
