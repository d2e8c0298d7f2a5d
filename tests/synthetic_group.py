"""A group picture made from the two shipped public-domain portraits: six people in two rows on a 1280x886 canvas,
faces about 45-95 px wide (as in a photo of a group round a table), some mirrored, known positions left to right.

A stand-in for a real group photo (none with a documented public-domain licence ships with any package this
project can install); it exercises the same full-resolution search."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "example_inputs")
# (portrait, mirrored, portrait width in px, top-left x, top-left y): faces from ~40 to ~90 px wide
PEOPLE = (("astronaut.png", False, 260, 20, 60), ("grace_hopper.jpg", True, 140, 320, 120),
          ("astronaut.png", True, 300, 500, 30), ("grace_hopper.jpg", False, 230, 840, 60),
          ("astronaut.png", False, 380, 860, 460), ("grace_hopper.jpg", False, 170, 200, 560))


def group_canvas(width: int = 1280, height: int = 886) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """(uint8 RGB canvas, the box (x0, y0, x1, y1) of each pasted portrait ordered by its face, left to right)."""
    out = np.full((height, width, 3), 150, np.uint8)
    boxes = []
    for name, mirror, w, x, y in PEOPLE:
        with Image.open(os.path.join(EXAMPLES, name)) as im:
            im = im.convert("RGB")
            h = round(im.height * w / im.width)
            p = np.asarray(im.resize((w, h), Image.LANCZOS))
        if mirror:
            p = p[:, ::-1]
        out[y:y + h, x:x + w] = p
        boxes.append((x, y, x + w, y + h))
    return out, sorted(boxes, key=lambda b: b[0] + (b[2] - b[0]) * 0.5)
