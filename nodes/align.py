"""Alignment geometry shared by Face Crop and Paste Back: templates, similarity fits, warps, crop <-> image transforms.

Pure numpy/OpenCV: no models, no ComfyUI. Transforms are 2x3 float64 matrices mapping pixel coordinates
(pixel centres at integer coordinates, as OpenCV's ``warpAffine``) of one frame into another.

The crop frame is ArcFace's 112x112 alignment frame, scaled so that its 112-unit box fills
``1 / (1 + 2 * context)`` of the square crop and centred on :data:`TEMPLATE_CENTER`. Every landmark kind has a
template in that frame with one point per landmark, and a crop is the least-squares similarity of *all* the
landmarks onto their template (5 or 68 points; sub-pixel, no outlier rejection).
"""
from __future__ import annotations

import math

import numpy as np

TEMPLATE_SIZE = 112.0
TEMPLATE_CENTER = np.array([56.0, 62.0])          # crop centre in template units (a little below the eyes)
FACE_ELLIPSE = (np.array([56.0, 70.0]), np.array([39.0, 50.0]))   # centre, semi-axes in template units
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

# ArcFace's 112x112 alignment template (image-left eye, image-right eye, nose tip, left/right mouth corner):
# the insightface "kps5" landmarks, in their order
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
# dlib's 5 points (image-right eye outer, inner; image-left eye outer, inner; nose base) in the same frame.
# Measured: the shipped portraits and their mirror images, dlib's refined 5 points mapped into the frame by
# the eye centres and nose base, averaged and made left/right symmetric about x = 56.
DLIB5_TEMPLATE = np.array([[80.46, 51.34], [66.79, 51.88], [31.54, 51.34], [45.21, 51.88], [56.00, 76.98]])
# dlib's 68 points (iBUG 300-W order) in the same frame. Measured as DLIB5_TEMPLATE, with the 68-point
# predictor, mapped by the five ArcFace points (eye centres, nose tip, mouth corners).
DLIB68_TEMPLATE = np.array([
    [14.70, 56.00], [15.46, 66.56], [17.05, 76.62], [18.79, 86.95], [22.34, 96.55], [28.29, 104.84],
    [36.15, 111.23], [45.53, 116.22], [56.00, 117.49], [66.47, 116.22], [75.85, 111.23], [83.71, 104.84],
    [89.66, 96.55], [93.21, 86.95], [94.95, 76.62], [96.54, 66.56], [97.30, 56.00],            # jaw 0-16
    [20.99, 48.30], [25.65, 42.71], [32.85, 40.75], [40.34, 41.63], [47.27, 44.48],            # brows 17-26
    [64.73, 44.48], [71.66, 41.63], [79.15, 40.75], [86.35, 42.71], [91.01, 48.30],
    [56.00, 53.03], [56.00, 60.47], [56.00, 67.47], [56.00, 74.45],                            # nose 27-35
    [46.89, 78.23], [51.20, 79.49], [56.00, 80.92], [60.80, 79.49], [65.11, 78.23],
    [29.88, 54.22], [34.08, 51.60], [39.59, 51.59], [44.34, 54.98], [39.37, 55.60], [34.20, 55.81],  # eyes 36-47
    [67.66, 54.98], [72.41, 51.59], [77.92, 51.60], [82.12, 54.22], [77.80, 55.81], [72.63, 55.60],
    [37.79, 88.56], [44.40, 87.23], [51.04, 87.11], [56.00, 88.21], [60.96, 87.11], [67.60, 87.23],  # mouth 48-67
    [74.21, 88.56], [67.82, 94.89], [61.17, 97.64], [56.00, 98.42], [50.83, 97.64], [44.18, 94.89],
    [40.03, 88.94], [51.05, 89.96], [56.00, 90.62], [60.95, 89.96], [71.97, 88.94], [61.01, 93.30],
    [56.00, 93.70], [50.99, 93.30]])
TEMPLATES = {"kps5": ARCFACE_TEMPLATE, "dlib5": DLIB5_TEMPLATE, "dlib68": DLIB68_TEMPLATE}


def template(kind: str) -> np.ndarray:
    """The (N, 2) template of a landmark kind, one point per landmark, in the 112-unit frame."""
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise ValueError(f"unknown landmark kind {kind!r} (known: {', '.join(TEMPLATES)})") from None


def eye_centres(landmarks: np.ndarray, kind: str) -> np.ndarray:
    """(2, 2): the image-left and image-right eye centres of any landmark kind."""
    p = np.asarray(landmarks, dtype=np.float64)
    if kind == "kps5":
        return p[:2]
    if kind == "dlib5":
        return np.stack([(p[2] + p[3]) / 2, (p[0] + p[1]) / 2])
    if kind == "dlib68":
        return np.stack([p[36:42].mean(0), p[42:48].mean(0)])
    raise ValueError(f"unknown landmark kind {kind!r}")


def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; 2x3) mapping ``src`` onto ``dst``.

    Every point counts (no outlier rejection, so 3 points are never cut to 2); sub-pixel. A similarity is
    linear in (a, b, tx, ty) with ``u = a x - b y + tx``, ``v = b x + a y + ty``, so this is one linear
    least-squares solve (OpenCV's estimateAffinePartial2D only offers the robust RANSAC/LMedS estimators).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"a similarity needs two matching sets of at least 2 points, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64).reshape(-1))
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    a = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    b = np.concatenate([dst[:, 0], dst[:, 1]])
    ww = np.concatenate([w, w])
    sol, _, rank, _ = np.linalg.lstsq(a * ww[:, None], b * ww, rcond=None)
    if rank < 4:
        raise ValueError("the landmarks are degenerate (all at one point): no similarity transform")
    ca, sb, tx, ty = sol
    return np.array([[ca, -sb, tx], [sb, ca, ty]])


def template_to_crop(pts: np.ndarray, crop_size: int, context: float) -> np.ndarray:
    """Template-frame points -> crop pixels."""
    face_px = crop_size / (1.0 + 2.0 * context)
    return (np.asarray(pts, dtype=np.float64) - TEMPLATE_CENTER) * (face_px / TEMPLATE_SIZE) + crop_size / 2.0


def crop_matrix(landmarks: np.ndarray, kind: str, crop_size: int, context: float) -> np.ndarray:
    """Image pixel -> crop pixel: all landmarks onto their template, least squares."""
    return similarity(landmarks, template_to_crop(template(kind), crop_size, context))


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine ``a`` after ``b`` (apply b first)."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def invert(m: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def scale_of(m: np.ndarray) -> float:
    """Uniform scale of a similarity (destination pixels per source pixel)."""
    return float(math.sqrt(abs(np.linalg.det(np.asarray(m)[:, :2]))))


def angle_of(m: np.ndarray) -> float:
    """Rotation of a similarity in degrees."""
    return float(math.degrees(math.atan2(m[1, 0], m[0, 0])))


def resize_matrix(src_size: tuple, dst_size: tuple) -> np.ndarray:
    """(width, height) -> (width, height) rescale of whole images (pixel centres kept aligned)."""
    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]], dtype=np.float64)


def warp(img: np.ndarray, m: np.ndarray, size: tuple, *, interpolation: str = "cubic", border: str = "replicate",
         antialias: bool = True) -> np.ndarray:
    """Warp a float32 HxWxC (or HxW) array with the 2x3 matrix ``m`` to ``size`` = (width, height).

    When the transform shrinks (scale < 1) the source is low-passed first (Gaussian, sigma = (1/scale - 1) / 2)
    so detail does not alias; only the region that maps into the output is filtered.
    """
    import cv2
    w_out, h_out = size
    scale = scale_of(m)
    src = img
    if antialias and scale < 0.99:
        sigma = 0.5 * (1.0 / scale - 1.0)
        pad = int(math.ceil(3 * sigma)) + 4
        corners = transform_points(invert(m), [[0, 0], [w_out, 0], [0, h_out], [w_out, h_out]])
        x0 = max(int(math.floor(corners[:, 0].min())) - pad, 0)
        y0 = max(int(math.floor(corners[:, 1].min())) - pad, 0)
        x1 = min(int(math.ceil(corners[:, 0].max())) + pad, img.shape[1])
        y1 = min(int(math.ceil(corners[:, 1].max())) + pad, img.shape[0])
        if x1 <= x0 or y1 <= y0:
            return np.zeros((h_out, w_out) + img.shape[2:], dtype=img.dtype)
        src = cv2.GaussianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        m = m.copy()
        m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    flags = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}[interpolation]
    bmode = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}[border]
    out = cv2.warpAffine(np.ascontiguousarray(src), m, (w_out, h_out), flags=flags, borderMode=bmode, borderValue=0)
    if out.ndim == 2 and img.ndim == 3:
        out = out[..., None]
    return out


def border_fraction(m: np.ndarray, image_size: tuple, crop_size: int) -> float:
    """Part of the crop's pixels whose source lies outside the image of ``image_size`` = (height, width).

    Row by row: along a crop row the source moves on a line, so the inside pixels are one interval (no image-sized
    buffer is made)."""
    h, w = image_size
    inv = invert(m)
    ys = np.arange(crop_size, dtype=np.float64)
    lo, hi = np.full(crop_size, 0.0), np.full(crop_size, crop_size - 1.0)
    for row, size in ((0, w), (1, h)):                 # source coordinate = a * x + (b * y + c), inside [-0.5, size - 0.5)
        a, b, c = inv[row]
        off = b * ys + c
        if abs(a) < 1e-12:
            out = (off < -0.5) | (off >= size - 0.5)
            hi[out] = -1.0
            continue
        t0, t1 = (-0.5 - off) / a, (size - 0.5 - off) / a
        lo, hi = np.maximum(lo, np.minimum(t0, t1)), np.minimum(hi, np.maximum(t0, t1) - 1e-9)
    inside = np.clip(np.floor(hi) - np.ceil(lo) + 1, 0, crop_size)
    return float(1.0 - inside.sum() / crop_size ** 2)


def source_roi(m: np.ndarray, crop_size: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Region (x0, y0, x1, y1) of an HxW image that :func:`warp` reads for the crop ``m`` (image -> crop): the crop
    square mapped back, grown by the interpolation support and the anti-aliasing blur's reach, clamped."""
    scale = scale_of(m)
    reach = (int(math.ceil(3 * 0.5 * (1.0 / scale - 1.0))) + 4 if scale < 0.99 else 0) + 4
    return crop_roi(invert(m), crop_size, h, w, margin=reach)


def from_region(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """``m`` (image -> anything) for the region of the image starting at (x0, y0)."""
    out = np.array(m, dtype=np.float64, copy=True)
    out[:, 2] += out[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return out


def crop_roi(m_crop_to_image: np.ndarray, crop_size: int, h: int, w: int, margin: int = 3) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) in the image of the crop square mapped back, clamped to the image."""
    s = crop_size
    c = transform_points(m_crop_to_image, [[0, 0], [s, 0], [0, s], [s, s]])
    x0, y0 = max(int(math.floor(c[:, 0].min())) - margin, 0), max(int(math.floor(c[:, 1].min())) - margin, 0)
    x1, y1 = min(int(math.ceil(c[:, 0].max())) + margin, w), min(int(math.ceil(c[:, 1].max())) + margin, h)
    return x0, y0, max(x1, x0), max(y1, y0)


def translate(m: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``m`` followed by a shift of (dx, dy) (e.g. into a region of interest starting at (-dx, -dy))."""
    out = np.array(m, dtype=np.float64, copy=True)
    out[:, 2] += (dx, dy)
    return out
