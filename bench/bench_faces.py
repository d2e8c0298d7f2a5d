"""Face detection at 1 and 4 Mpx: the full-resolution search (dlib HOG enlarged for faces from min_face px, in
tiles when large) against the old single shrunken pass (longer side to det_size 640, the detector's own 2x
upsampling only when that found nothing). The photos are copies of NASA's Group 15 photo (23 faces 30-45 px
wide each) on a grey canvas, so the number of faces to find is known."""
from __future__ import annotations

import cv2
import numpy as np
from common import EXAMPLES, emit, machine, pack, timeit

cv2.setNumThreads(1)
SIZES = {"1 Mpx": (1280, 800, 2), "4 Mpx": (2560, 1600, 8)}       # width, height, copies of the 640x280 photo


def canvas(w: int, h: int, copies: int) -> np.ndarray:
    from PIL import Image
    group = np.asarray(Image.open(f"{EXAMPLES}/nasa_astronaut_group15.jpg").convert("RGB"))
    out = np.full((h, w, 3), 128, np.uint8)
    gh, gw = group.shape[:2]
    per_row = w // (gw + 20)
    for k in range(copies):
        x, y = 10 + (k % per_row) * (gw + 20), 10 + (k // per_row) * (gh + 40)
        out[y:y + gh, x:x + gw] = group
    return out


def old_shrunken_pass(detector, img: np.ndarray, det_size: int = 640, threshold: float = 0.3) -> int:
    h, w = img.shape[:2]
    scale = min(1.0, det_size / max(h, w))
    small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    rects, _, _ = detector.run(small, 0, threshold)
    if len(rects) == 0:
        rects, _, _ = detector.run(small, 1, threshold)
    return len(rects)


def main():
    pk = pack()
    from comfyui_megaportrait.nodes import face_analysis
    fa = face_analysis.FaceAnalyzer(refine_landmarks=False).load()      # detection only: plain landmarks
    hog = fa.impl.detector
    rows = []
    for label, (w, h, copies) in SIZES.items():
        img = canvas(w, h, copies)
        found = len(fa.detect(img))
        ours = timeit(lambda: fa.detect(img), repeat=3)
        old_found = old_shrunken_pass(hog, img)
        old = timeit(lambda: old_shrunken_pass(hog, img), repeat=3)
        rows.append({"op": f"detect faces (min_face {fa.min_face} px)", "size": f"{label} ({w}x{h})",
                     "faces": copies * 23, "ours_found": found, "ours_s": ours["min_s"],
                     "old_found": old_found, "old_s": old["min_s"]})
    emit({"section": "faces", "machine": machine(), "rows": rows, "pack": pk.__name__})


if __name__ == "__main__":
    main()
