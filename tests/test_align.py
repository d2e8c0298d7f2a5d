"""The alignment geometry (nodes/align.py) and the detection search plan (nodes/face_search.py), on synthetic
points: pure numpy/OpenCV, no models."""
import math

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def A(pack):
    from comfyui_megaportrait.nodes import align, face_search

    class NS:
        al, fs = align, face_search
    return NS


def known(angle, scale, dx, dy):
    m = cv2.getRotationMatrix2D((0.0, 0.0), angle, scale)
    m[:, 2] += (dx, dy)
    return m


@pytest.mark.parametrize("kind", ["kps5", "dlib5", "dlib68"])
@pytest.mark.parametrize("angle,scale,dx,dy", [(0, 1, 0, 0), (17.5, 2.37, 103.25, -41.6), (-33, 0.41, -7.125, 260.5),
                                               (179, 5.0, 0.3, 0.7)])
def test_similarity_recovers_a_known_transform_exactly(A, kind, angle, scale, dx, dy):
    tpl = A.al.template(kind)
    m = known(angle, scale, dx, dy)
    pts = A.al.transform_points(m, tpl)
    got = A.al.similarity(tpl, pts)
    assert np.abs(got - m).max() < 1e-9
    # and the crop matrix inverts it: the landmarks land on the template (sub-pixel: to 1e-9 px)
    c = A.al.crop_matrix(pts, kind, 512, 0.25)
    assert np.abs(A.al.transform_points(c, pts) - A.al.template_to_crop(tpl, 512, 0.25)).max() < 1e-9


@pytest.mark.parametrize("kind,n", [("kps5", 5), ("dlib5", 5), ("dlib68", 68)])
def test_similarity_is_least_squares_over_every_point(A, kind, n):
    """With noise the fit is the least-squares one: the residual is orthogonal to the model (no point is dropped
    as an outlier), and the error of the recovered transform shrinks with the number of points."""
    rng = np.random.default_rng(0)
    tpl = A.al.template(kind)
    assert tpl.shape == (n, 2)
    m = known(12.0, 3.1, 400.0, 250.0)
    errs = []
    for _ in range(200):
        noisy = A.al.transform_points(m, tpl) + rng.normal(0, 1.0, (n, 2))
        got = A.al.similarity(tpl, noisy)
        r = noisy - A.al.transform_points(got, tpl)
        # normal equations: the residual is orthogonal to every parameter's column
        assert abs(r.sum(0)).max() < 1e-6
        assert abs((r[:, 0] * tpl[:, 0] + r[:, 1] * tpl[:, 1]).sum()) < 1e-6
        assert abs((-r[:, 0] * tpl[:, 1] + r[:, 1] * tpl[:, 0]).sum()) < 1e-6
        errs.append(np.abs(A.al.transform_points(got, tpl) - A.al.transform_points(m, tpl)).mean())
    mean_err = float(np.mean(errs))
    assert mean_err < (0.75 if n == 5 else 0.25), mean_err     # below the 1 px noise: every point averages in


def test_three_points_are_all_used(A):
    """The old LMedS estimator fitted 2 of 3 points exactly and left the third as an 'outlier'; least squares
    spreads the error over all three."""
    src = np.array([[0.0, 0.0], [100.0, 0.0], [50.0, 80.0]])
    dst = src + [[0, 0], [0, 0], [0, 6.0]]
    r = np.linalg.norm(dst - A.al.transform_points(A.al.similarity(src, dst), src), axis=1)
    assert (r > 0.5).all() and r.max() < 6.0


def test_similarity_refuses_degenerate_points(A):
    with pytest.raises(ValueError, match="degenerate"):
        A.al.similarity(np.zeros((5, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="matching sets"):
        A.al.similarity(np.zeros((5, 2)), np.ones((4, 2)))


def test_templates_are_left_right_symmetric_and_share_the_frame(A):
    """Mirrored about x = 56 every template maps onto itself (with the mirror's point order); the eye centres of
    all kinds sit near ArcFace's (within 3 units of the 112 frame: the 68 points were fitted on five)."""
    f68 = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
           + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
           + [64, 63, 62, 61, 60, 67, 66, 65])
    for kind, perm in (("dlib5", [2, 3, 0, 1, 4]), ("dlib68", f68)):
        t = A.al.template(kind)
        mirrored = np.stack([112 - t[:, 0], t[:, 1]], 1)[perm]
        assert np.abs(mirrored - t).max() < 0.011, kind
    arc = A.al.eye_centres(A.al.ARCFACE_TEMPLATE, "kps5")
    for kind in ("dlib5", "dlib68"):
        assert np.abs(A.al.eye_centres(A.al.template(kind), kind) - arc).max() < 3.0, kind


def test_crop_transforms_round_trip(A):
    m = known(-9.0, 0.37, 30.0, -12.0)
    inv = A.al.invert(m)
    assert np.abs(A.al.compose(m, inv) - A.al.IDENTITY).max() < 1e-12
    assert math.isclose(A.al.scale_of(m), 0.37) and math.isclose(A.al.angle_of(m), 9.0)   # OpenCV: counter-clockwise
    # resizing whole images keeps pixel centres aligned, as torch's/OpenCV's resize do
    r = A.al.resize_matrix((512, 512), (256, 256))
    assert np.allclose(A.al.transform_points(r, [[0.5, 0.5], [510.5, 510.5]]), [[0, 0], [255, 255]])
    img = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    ours = A.al.warp(img, A.al.resize_matrix((64, 64), (128, 128)), (128, 128), interpolation="linear")
    ref = cv2.resize(img, (128, 128), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours - ref)[2:-2, 2:-2].max() < 1e-5
    m2 = known(0.0, 0.5, -100.0, -200.0)          # a crop of 100 px from the image square (200, 400)-(400, 600)
    assert A.al.crop_roi(A.al.invert(m2), 100, 1000, 1000) == (197, 397, 403, 603)     # (3 px margin)


def test_search_plan_covers_small_faces_at_full_resolution(A):
    # a 1280x886 photo, faces from 32 px: one pass at 72/32 = 2.25x, never a shrunken one
    (p,) = A.fs.plan(886, 1280, 72, 32, 16e6)
    assert (p.x1, p.y1) == (1280, 886) and math.isclose(p.scale, 2.25)
    # a 4000x3000 photo: tiles at 2.25x that overlap by more than the largest face they must hold whole,
    # plus one whole-image pass that sees every face larger than that overlap
    passes = A.fs.plan(3000, 4000, 72, 32, 16e6)
    tiles = [p for p in passes if p.scale > 1]
    (whole,) = [p for p in passes if p.scale <= 1]
    assert all((p.x1 - p.x0) * (p.y1 - p.y0) * p.scale ** 2 <= 16e6 for p in tiles)
    covered = np.zeros((3000, 4000), bool)
    for p in tiles:
        covered[p.y0:p.y1, p.x0:p.x1] = True
    assert covered.all()
    xs = sorted({(p.x0, p.x1) for p in tiles})
    assert all(a[1] - b[0] >= 108 for a, b in zip(xs, xs[1:]))          # overlap >= 1.5 windows
    assert (whole.x1, whole.y1) == (4000, 3000) and 72 / whole.scale <= 108
    # large faces only: shrink, as the old det_size did
    (p,) = A.fs.plan(3000, 4000, 72, 288, 16e6)
    assert math.isclose(p.scale, 0.25)


def test_merge_drops_duplicates_and_cut_faces(A):
    boxes = np.array([[0, 0, 100, 100], [5, 3, 104, 101], [300, 300, 340, 340], [0, 50, 60, 100.0]])
    scores = np.array([1.0, 0.8, -0.5, 0.2])
    keep = A.fs.merge(boxes, scores)
    assert list(keep) == [0, 2]                      # the near-duplicate and the half face inside box 0 go
    assert list(A.fs.merge(np.zeros((0, 4)), np.zeros(0))) == []
