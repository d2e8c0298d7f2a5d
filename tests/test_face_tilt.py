"""Tilted heads are found at default settings with the offline default backend (issue 21, item 2).

dlib's HOG detector alone finds heads tilted up to about 35 degrees; the dlib backend also searches the image
turned by +-30 degrees. Tested on the shipped public-domain portraits turned by up to 50 degrees on a canvas that
holds the whole picture (black corners, no mirrored copies of the face)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, load_png


@pytest.fixture(scope="module")
def F(pack):
    from comfyui_megaportrait.nodes import align, face_analysis, face_crop

    class NS:
        fa, fc, al = face_analysis, face_crop, align
    return NS


@pytest.fixture(scope="module")
def dlib_fa(F):
    return F.fa.FaceAnalyzer().load()


def turned(img: np.ndarray, degrees: float) -> np.ndarray:
    """``img`` turned counter-clockwise by ``degrees`` on a canvas that holds all of it."""
    import cv2
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    cw, ch = int(math.ceil(w * c + h * s)), int(math.ceil(w * s + h * c))
    m[:, 2] += (cw / 2 - w / 2, ch / 2 - h / 2)
    return cv2.warpAffine(img, m, (cw, ch), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def roll(F, face) -> float:
    """The head's tilt in degrees (counter-clockwise positive, as cv2 turns images) from its eye centres."""
    left, right = F.al.eye_centres(face.landmarks, face.kind)
    return -math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
@pytest.mark.parametrize("degrees", [-50, -45, -40, -20, 20, 40, 45, 50])
def test_tilted_heads_are_found_once_with_their_tilt(F, dlib_fa, name, degrees):
    img = load_png(os.path.join(EXAMPLES, name))
    upright = dlib_fa.detect(img)
    assert len(upright) == 1
    faces = dlib_fa.detect(turned(img, degrees))
    assert len(faces) == 1, [(f.center.round(), round(f.score, 2)) for f in faces]
    assert abs(roll(F, faces[0]) - (roll(F, upright[0]) + degrees)) < 6.0
    assert abs(faces[0].size - upright[0].size) < 0.25 * upright[0].size     # (dlib boxes come in pyramid steps)


def test_the_detector_alone_misses_them(F, dlib_fa):
    """Without the turned passes (the backend's tilt=False) a head tilted 45 degrees is not found: the passes are
    what finds it."""
    img = turned(load_png(os.path.join(EXAMPLES, "grace_hopper.jpg")), 45)
    assert dlib_fa.impl.detect(img, dlib_fa.det_threshold, dlib_fa.det_size, 32.0, tilt=False) == []
    assert len(dlib_fa.impl.detect(img, dlib_fa.det_threshold, dlib_fa.det_size, 32.0)) == 1


def test_a_tilted_head_gives_the_upright_crop(F, dlib_fa):
    """Face Crop levels the eyes: the crop of the portrait turned by 45 degrees is the crop of the portrait."""
    img = load_png(os.path.join(EXAMPLES, "grace_hopper.jpg"))
    t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[None]    # noqa: E731
    crop, _ = F.fc.face_crop("t", dlib_fa, t(img), 256)
    crop45, info = F.fc.face_crop("t", dlib_fa, t(turned(img, 45)), 256)
    assert abs(F.al.angle_of(info[0].matrix) - 45) < 6.0 or abs(F.al.angle_of(info[0].matrix) + 45) < 6.0
    assert (crop45 - crop).abs().mean() < 0.06


def yawed(img: np.ndarray, k: float) -> np.ndarray:
    """A planar stand-in for a head turned away: the perspective warp that narrows the picture's right side to
    1 - k/2 of the width and shortens it by k/2 (no public-domain photo of a turned face ships with a package)."""
    import cv2
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0, 0], [w * (1 - k / 2), h * k / 4], [w * (1 - k / 2), h * (1 - k / 4)], [0, h]])
    return cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_CONSTANT)


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
def test_the_turned_face_proxy_is_found_once(F, dlib_fa, name):
    img = load_png(os.path.join(EXAMPLES, name))
    for k in (0.5, 0.9):
        for side in (img, np.ascontiguousarray(img[:, ::-1])):     # turned either way
            faces = dlib_fa.detect(yawed(side, k))
            assert len(faces) == 1, (k, [(f.center.round(), round(f.score, 2)) for f in faces])


def test_a_tilted_head_next_to_an_upright_one(F, dlib_fa):
    """Two people side by side, one head upright and one tilted 45 degrees: both found, left to right, and the
    upright one only once."""
    import cv2
    left = load_png(os.path.join(EXAMPLES, "astronaut.png"))
    right = cv2.resize(turned(load_png(os.path.join(EXAMPLES, "grace_hopper.jpg")), -45), (512, 512),
                       interpolation=cv2.INTER_AREA)
    faces = dlib_fa.detect(np.ascontiguousarray(np.concatenate([left, right], axis=1)))
    assert len(faces) == 2, [(f.center.round(), round(f.score, 2)) for f in faces]
    assert faces[0].center[0] < 512 < faces[1].center[0]
    assert abs(roll(F, faces[1]) + 45) < 8.0 and abs(roll(F, faces[0])) < 10.0
