"""Face detection at 1 and 4 Mpx: the full-resolution search (dlib HOG enlarged for faces from min_face px, in
tiles when large, plus the passes on the image turned by +-30 degrees that find tilted heads; also timed without
those) against the old single shrunken pass (longer side to det_size 640, the detector's own 2x
upsampling only when that found nothing). The pictures are the test suite's group picture (six people composed
from the two shipped public-domain portraits, faces 45-95 px wide, 1280x886) once and tiled 2x2, so the number of
faces to find is known."""
from __future__ import annotations

import cv2
import numpy as np
from common import emit, machine, pack, timeit

cv2.setNumThreads(1)
SIZES = {"1 Mpx": 1, "4 Mpx": 2}       # the 1280x886 group picture, tiled n x n


def canvas(n: int) -> tuple[np.ndarray, int]:
    from synthetic_group import PEOPLE, group_canvas
    img, _ = group_canvas()
    return np.ascontiguousarray(np.tile(img, (n, n, 1))), len(PEOPLE) * n * n


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
    for label, n in SIZES.items():
        img, n_faces = canvas(n)
        h, w = img.shape[:2]
        found = len(fa.detect(img))
        ours = timeit(lambda: fa.detect(img), repeat=3)
        upright_found = len(fa.impl.detect(img, fa.det_threshold, fa.det_size, float(fa.min_face), tilt=False))
        upright = timeit(lambda: fa.impl.detect(img, fa.det_threshold, fa.det_size, float(fa.min_face), tilt=False),
                         repeat=3)
        old_found = old_shrunken_pass(hog, img)
        old = timeit(lambda: old_shrunken_pass(hog, img), repeat=3)
        rows.append({"op": f"detect faces (min_face {fa.min_face} px)", "size": f"{label} ({w}x{h})",
                     "faces": n_faces, "ours_found": found, "ours_s": ours["min_s"],
                     "old_found": old_found, "old_s": old["min_s"],
                     "upright_found": upright_found, "upright_s": upright["min_s"]})
    # per backend: dlib with the CNN pass for turned faces (one run: it is slow), and insightface when a real model
    # pack is installed (it needs insightface + onnxruntime + a pack such as buffalo_l, none of which this project can
    # download for you)
    cnn = face_analysis.FaceAnalyzer(refine_landmarks=False, turned_faces=face_analysis.TURNED_FACES[1]).load()
    try:
        ins = face_analysis.FaceAnalyzer(backend="insightface").load()
        ins_error = None
    except Exception as e:      # no insightface package, onnxruntime or model pack here
        ins, ins_error = None, str(e).split(" Fix:")[0][:160]
    for label, n in SIZES.items():
        img, n_faces = canvas(n)
        h, w = img.shape[:2]
        size = f"{label} ({w}x{h})"
        found: list = []
        t = timeit(lambda: found.append(cnn.detect(img)), repeat=1, warmup=0)
        rows.append({"op": "detect faces, dlib HOG + CNN pass (turned faces)", "size": size, "faces": n_faces,
                     "ours_found": len(found[-1]), "ours_s": t["min_s"]})
        if ins is None:
            rows.append({"op": "detect faces, insightface", "size": size, "faces": n_faces, "error": ins_error})
        else:
            t = timeit(lambda: ins.detect(img), repeat=3)
            rows.append({"op": f"detect faces, insightface {ins.insightface_pack}", "size": size, "faces": n_faces,
                         "ours_found": len(ins.detect(img)), "ours_s": t["min_s"]})
    emit({"section": "faces", "machine": machine(), "rows": rows, "pack": pk.__name__})


if __name__ == "__main__":
    main()
