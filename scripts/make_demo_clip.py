"""Write a small synthetic clip (moving shapes on a textured background, 4 s at 25 fps) for the
demo, when no sample video is bundled yet.

    python scripts/make_demo_clip.py out/clip.mp4
"""

import sys

import cv2
import numpy as np

from vidattn.video.writer import VideoWriter


def main(path, width=480, height=272, fps=25, seconds=4, seed=0):
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height * 2, width * 2, 3), np.uint8), (0, 0), 3)
    with VideoWriter(path, fps, width, height) as writer:
        for i in range(fps * seconds):
            t = i / fps
            y0, x0 = int(40 + 30 * np.sin(t)), int(60 + 60 * t)  # the camera pans
            frame = np.ascontiguousarray(texture[y0 : y0 + height, x0 : x0 + width])
            cx, cy = int(width * (0.2 + 0.15 * t)), int(height * (0.5 + 0.25 * np.sin(2 * t)))
            cv2.circle(frame, (cx, cy), 30, (230, 40, 40), -1)
            cv2.rectangle(frame, (width - 140, 60), (width - 90, 110), (40, 200, 60), -1)
            writer.write(frame, t)


if __name__ == "__main__":
    main(sys.argv[1])
