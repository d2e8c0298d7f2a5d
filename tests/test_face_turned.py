"""Faces turned away (yaw): dlib's frontal HOG search misses a face turned 55 degrees; the optional CNN pass
(Face Analysis Loader turned_faces 'HOG + CNN') finds it. No public-domain photo of a turned face ships with an
installable package, so the proxy is the shipped portraits turned on a cylinder (the head as a cylinder about its
vertical axis: each column moves to where it would be seen after the turn)."""
import os

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES


@pytest.fixture(scope="module")
def fa_mod(pack):
    from comfyui_megaportrait.nodes import face_analysis
    return face_analysis


def yaw_warp(img: np.ndarray, cx: float, radius: float, degrees: float) -> np.ndarray:
    """``img`` with the cylinder of ``radius`` px about the vertical line x = ``cx`` turned by ``degrees``."""
    h, w = img.shape[:2]
    xs = np.arange(w, dtype=np.float64)
    inside = np.abs(xs - cx) < radius
    phi = np.arcsin(np.clip((xs - cx) / radius, -1, 1)) - np.radians(degrees)
    src = np.where(inside, cx + radius * np.sin(phi), xs).astype(np.float32)
    mapx = np.tile(src[None], (h, 1))
    mapy = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    return np.ascontiguousarray(cv2.remap(img, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def face_square(fa, name: str, side: int = 312) -> np.ndarray:
    """The portrait's face in a square 2.6 face boxes wide, at ``side`` px."""
    img = np.ascontiguousarray(cv2.imread(os.path.join(EXAMPLES, name))[..., ::-1])
    f = max(fa.detect(img), key=lambda f: f.area)
    (cx, cy), half = f.center, 1.3 * f.size
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    return np.ascontiguousarray(cv2.resize(img[y0:int(cy + half), x0:int(cx + half)], (side, side),
                                           interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
def test_cnn_pass_finds_a_face_turned_away(fa_mod, name):
    hog = fa_mod.FaceAnalyzer(refine_landmarks=False).load()
    both = fa_mod.FaceAnalyzer(refine_landmarks=False, turned_faces="HOG + CNN (turned faces)").load()
    assert "CNN pass" in both.describe() and "CNN" not in hog.describe()
    square = face_square(hog, name)
    # upright: one face either way (the CNN's hit is the HOG face, not a second one)
    assert len(hog.detect(square)) == 1 and len(both.detect(square)) == 1
    turned = yaw_warp(square, 156.0, 0.85 * 312 / 2.6, 55.0)
    assert hog.detect(turned) == []
    (face,) = both.detect(turned)
    assert face.kind == "dlib5" and face.size > 60
    x0, y0, x1, y1 = face.bbox
    assert 60 < (x0 + x1) / 2 < 250 and 60 < (y0 + y1) / 2 < 250                 # the face, in the middle
    assert ((face.landmarks >= [x0 - 10, y0 - 10]) & (face.landmarks <= [x1 + 10, y1 + 10])).all()


def test_turned_faces_choice_is_checked(fa_mod):
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    with pytest.raises(MegaPortraitError, match="unknown turned_faces 'CNN'"):
        fa_mod.FaceAnalysisLoader().load("dlib", 0.3, 640, turned_faces="CNN")
