"""Where to look for faces: the full-resolution search plan the face backends follow, and the merge of its hits.

A detector has a smallest face it sees (dlib's HOG window: about 72 px; SCRFD: about 16 px of its input), so
finding faces down to ``min_face`` pixels means running it on the image scaled by ``window / min_face`` (up
as well as down): its own pyramid then covers every larger face. When that pass would be too large to hold,
it runs in overlapping tiles, and one more pass at a scale where the detector already sees faces larger than
the overlap finds the faces the tiles cut. Hits of all passes are merged by non-maximum suppression.

Pure numpy/OpenCV: boxes are (N, 4) float arrays ``x0, y0, x1, y1`` in the pixels of the image searched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pass:
    """One detector run: the region ``x0, y0, x1, y1`` of the image, resized by ``scale``."""
    x0: int
    y0: int
    x1: int
    y1: int
    scale: float


def plan(h: int, w: int, window: float, min_face: float, max_pass_px: float) -> list[Pass]:
    """Detector runs that together see every face of at least ``min_face`` px in an HxW image.

    ``window``: the smallest face the detector sees at scale 1; ``max_pass_px``: the largest (scaled) image
    one run may take. Scale > 1 enlarges, < 1 shrinks."""
    scale = window / float(min_face)
    if h * w * scale * scale <= max_pass_px:
        return [Pass(0, 0, w, h, scale)]
    side = int(math.sqrt(max_pass_px) / scale)                 # tile side in image pixels
    overlap = int(math.ceil(1.5 * window))                     # faces up to this size lie whole in some tile
    passes = [Pass(x0, y0, x1, y1, scale) for x0, y0, x1, y1 in tile_grid(h, w, side, overlap)]
    # faces larger than the overlap: one whole-image pass where they are at least a window wide
    big = min(1.0, math.sqrt(max_pass_px / (h * w)), window / overlap * 1.2)
    return passes + [Pass(0, 0, w, h, big)]


def tile_grid(h: int, w: int, side: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``x0, y0, x1, y1`` of at most ``side`` px, overlapping by at least ``overlap``, covering HxW; the last
    tile of a row/column is moved inward so that every tile is full-size when the image allows it."""
    side = max(side, overlap + 1)

    def starts(n):
        if n <= side:
            return [0]
        step = side - overlap
        k = int(math.ceil((n - side) / step))
        return sorted({min(i * step, n - side) for i in range(k + 1)})
    return [(x, y, min(x + side, w), min(y + side, h)) for y in starts(h) for x in starts(w)]


def merge(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.3, contained: float = 0.7) -> np.ndarray:
    """Indices of the boxes kept (best score first): OpenCV's non-maximum suppression at ``iou``, then boxes lying
    mostly (``contained`` of their area) inside a better one are dropped too (a face cut by a tile edge)."""
    import cv2
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]
    shifted = (scores - scores.min() + 1.0).tolist()            # (dlib scores may be negative; NMSBoxes wants > 0)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh, shifted, 0.0, iou), dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    out: list[int] = []
    for i in keep:
        b = boxes[i]
        area = max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)
        inside = [max(0.0, min(b[2], boxes[j][2]) - max(b[0], boxes[j][0])) *
                  max(0.0, min(b[3], boxes[j][3]) - max(b[1], boxes[j][1])) / area for j in out]
        if not inside or max(inside) < contained:
            out.append(int(i))
    return np.asarray(out, dtype=np.int64)


def run(image: np.ndarray, passes: list[Pass], detect) -> tuple[np.ndarray, np.ndarray, list]:
    """Run ``detect(region_uint8) -> (boxes, scores, extras)`` on every pass; boxes (pixel edges) come back in
    ``image`` pixels, ``extras`` items ((N, 2) points at pixel centres, or None) too. Returns merged (boxes, scores, extras)."""
    import cv2
    all_b, all_s, all_e = [], [], []
    for p in passes:
        region = image[p.y0:p.y1, p.x0:p.x1]
        if abs(p.scale - 1.0) > 1e-3:
            rw, rh = max(1, round(region.shape[1] * p.scale)), max(1, round(region.shape[0] * p.scale))
            region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA if p.scale < 1 else cv2.INTER_LINEAR)
        sx, sy = (p.x1 - p.x0) / region.shape[1], (p.y1 - p.y0) / region.shape[0]
        boxes, scores, extras = detect(np.ascontiguousarray(region))
        for k in range(len(scores)):
            b = np.asarray(boxes[k], dtype=np.float64)
            all_b.append([b[0] * sx + p.x0, b[1] * sy + p.y0, b[2] * sx + p.x0, b[3] * sy + p.y0])
            all_s.append(float(scores[k]))
            e = None if extras is None or extras[k] is None else \
                (np.asarray(extras[k], dtype=np.float64) + 0.5) * [sx, sy] - 0.5 + [p.x0, p.y0]   # pixel centres
            all_e.append(e)
    keep = merge(np.asarray(all_b).reshape(-1, 4), np.asarray(all_s))
    return (np.asarray(all_b, dtype=np.float64).reshape(-1, 4)[keep], np.asarray(all_s, dtype=np.float64)[keep],
            [all_e[i] for i in keep])


# ------------------------------------------------------------------------------------------------- tilted faces
def rotation(h: int, w: int, degrees: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The 2x3 matrix that turns an HxW image by ``degrees`` (counter-clockwise, about its centre) onto a canvas
    that holds all of it, and that canvas's (width, height)."""
    import cv2
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    cw, ch = int(math.ceil(w * c + h * s)), int(math.ceil(w * s + h * c))
    m[0, 2] += cw / 2.0 - w / 2.0
    m[1, 2] += ch / 2.0 - h / 2.0
    return m, (cw, ch)


def rotate(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned by ``degrees`` on a canvas that holds all of it (the corners black), and the matrix that maps
    its pixels onto the canvas."""
    import cv2
    m, size = rotation(image.shape[0], image.shape[1], degrees)
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0), m


def new_faces(centers: np.ndarray, sizes: np.ndarray, known_centers: np.ndarray, known_sizes: np.ndarray) -> list[int]:
    """Indices of the faces (centres, sizes) that are none of the known faces: no known face's centre lies within
    half of either face's size of theirs. Faces found twice in one list keep the first."""
    keep: list[int] = []
    kc, ks = [np.asarray(known_centers, np.float64).reshape(-1, 2)], [np.asarray(known_sizes, np.float64).reshape(-1)]
    for i, (c, s) in enumerate(zip(np.asarray(centers, np.float64).reshape(-1, 2), np.asarray(sizes, np.float64))):
        cs, ss = np.concatenate(kc), np.concatenate(ks)
        if len(cs) == 0 or (np.linalg.norm(cs - c, axis=1) >= 0.5 * np.maximum(ss, s)).all():
            keep.append(i)
            kc.append(c[None])
            ks.append(np.array([s]))
    return keep
