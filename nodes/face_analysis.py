"""Face analysis: detection, landmarks, identity embeddings, and the FACE_ANALYSIS type.

Backends
--------
* ``dlib`` (default, offline): ``dlib-bin`` + the ``face-recognition-models`` package. HOG detector run at full
  resolution (enlarged so that faces down to ``min_face`` px are found, see :mod:`.face_search`), 5-point
  landmarks (optionally 68-point), 128-d identity descriptors compared by Euclidean distance (the usual
  threshold is 0.6). The 5-point landmarks are refined for sub-pixel stability by averaging the shape
  predictor over horizontally flipped and slightly shifted/scaled face boxes.
* ``insightface``: the model packs ComfyUI users already have in ``ComfyUI/models/insightface/models/<pack>/``
  (buffalo_l, antelopev2), run with onnxruntime on CPU or CUDA. SCRFD detector (on the whole image at
  ``det_size`` and, when small faces would be lost there, on ``det_size`` tiles at full resolution), 5 keypoints,
  ArcFace 512-d embeddings compared by cosine distance.

Every backend is one :class:`BackendSpec` in :data:`BACKEND_SPECS`: its :class:`Capabilities` (detection,
landmarks, identity embeddings), the configuration that selects a model instance, how to build it and how to
describe it. A backend object follows :class:`FaceBackend` (and :class:`IdentityBackend` when it has embeddings);
the identity features (Face Similarity, Select Best Identity, Face Crop's identity selections, Load Source Photos'
identity check) refuse a backend without embeddings with a message before any work.

FACE_ANALYSIS is a :class:`FaceAnalyzer`: a plain, picklable Python object holding the backend configuration;
models load lazily on first use and are shared between analyzers with the same configuration.
Images enter as HxWx3 uint8 RGB numpy arrays (see :func:`to_uint8_rgb`).
"""
from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch

from . import face_search
from .align import invert, transform_points
from .common import (
    CATEGORY,
    TITLES,
    MegaPortraitError,
    check_bool,
    check_choice,
    check_image,
    check_int,
    check_number,
    log,
    require,
)
from .image_ops import to_uint8_rgb

BACKENDS = ("dlib", "insightface")
PROVIDERS = ("auto", "CUDA", "CPU")
INSIGHTFACE_PACKS = ("buffalo_l", "antelopev2")
DLIB_FILES = {
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}
# dlib's CNN face detector (MMOD), the optional second pass for faces turned three-quarter or looking down, which the
# frontal HOG detector misses: it finds faces from about CNN_WINDOW px at scale 1 (measured: 80 px boxes), so it runs
# on the image shrunk (never enlarged) so that faces of max(min_face, CNN_WINDOW) fill its window; ~20 s per Mpx on
# one slow CPU core (bench/bench_faces.py), hence off by default.
TURNED_FACES = ("HOG only", "HOG + CNN (turned faces)")
CNN_WINDOW = 80.0
CNN_MIN_CONFIDENCE = 0.3
CNN_MAX_PASS_PX = 4e6      # one CNN run on 4.5 Mpx peaks at ~4.7 GB of RAM: larger images run in tiles
DLIB_WINDOW = 72.0       # the smallest face box dlib's HOG detector finds at scale 1 (measured: 73 px)
SCRFD_WINDOW = 16.0      # the same for insightface's SCRFD, in pixels of its det_size input
MAX_PASS_PX = 16e6       # the largest (enlarged) image one detector run takes; larger searches run in tiles
DEFAULT_MIN_FACE = 32    # detector box side; the box is about 0.8 of the face width a person sees
# dlib's HOG detector finds heads tilted up to about 35 degrees (measured on the shipped portraits); passes on the
# image turned by these angles find heads tilted up to 45 degrees and beyond, from TILT_MIN_FACE_FACTOR x min_face,
# at a detection threshold TILT_THRESHOLD_MARGIN higher (two more images searched: more chances of a false face;
# measured on the shipped portraits turned by up to 50 degrees: faces scored 0.46 and more, false faces 0.38 at most)
TILT_ANGLES = (30.0, -30.0)
TILT_MIN_FACE_FACTOR = 2.0
TILT_THRESHOLD_MARGIN = 0.1
TILT_CONFIRM = (-15.0, 15.0)   # a face found on a turned image must be found again turned by these angles more
_DLIB5_FLIP = [2, 3, 0, 1, 4]        # dlib 5-point order: image-right eye (outer, inner), image-left eye, nose base


@dataclass
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""
    bbox: np.ndarray                  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray             # (N, 2) float, backend-native order ("dlib5", "dlib68" or "kps5")
    kind: str
    embedding: np.ndarray | None = None

    @property
    def size(self) -> float:
        return float(min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2])


def dlib_model_dir() -> str | None:
    """Where the dlib model files are: ComfyUI/models/dlib/ if the user put them there, else the
    face-recognition-models package (located without importing it: its __init__ needs pkg_resources)."""
    try:
        import folder_paths
        for d in _folder_candidates(folder_paths, "dlib"):
            if os.path.isfile(os.path.join(d, DLIB_FILES["shape5"])):
                return d
    except ImportError:
        pass
    import importlib.util
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        return None
    d = os.path.join(os.path.dirname(spec.origin), "models")
    return d if os.path.isdir(d) else None


def _folder_candidates(folder_paths, name: str) -> list[str]:
    try:
        paths = list(folder_paths.get_folder_paths(name))
    except (KeyError, AttributeError):
        paths = []
    default = os.path.join(folder_paths.models_dir, name)
    return paths + ([default] if default not in paths else [])


def insightface_roots() -> list[str]:
    """Candidate ``models/insightface`` folders (ComfyUI's folder_paths when available)."""
    try:
        import folder_paths
    except ImportError:
        return [os.path.expanduser("~/.insightface")]
    return _folder_candidates(folder_paths, "insightface")


def find_insightface_pack(pack: str) -> str | None:
    for root in insightface_roots():
        d = os.path.join(root, "models", pack)
        if glob.glob(os.path.join(d, "*.onnx")):
            return d
    return None


def list_insightface_packs() -> list[str]:
    found = []
    for root in insightface_roots():
        for d in sorted(glob.glob(os.path.join(root, "models", "*"))):
            if os.path.isdir(d) and glob.glob(os.path.join(d, "*.onnx")):
                found.append(os.path.basename(d))
    return sorted(set(found) | set(INSIGHTFACE_PACKS))


# ------------------------------------------------------------------------------------------------ backends
@dataclass(frozen=True)
class Capabilities:
    """What a face backend can do: find faces, give the landmarks crops align on, give identity embeddings."""
    detect: bool = True
    landmarks: bool = True
    embeddings: bool = False

    def describe(self) -> str:
        can = [w for w, ok in (("detection", self.detect), ("landmarks", self.landmarks),
                               ("identity embeddings", self.embeddings)) if ok]
        return ", ".join(can) or "nothing"


class FaceBackend(Protocol):
    """A loaded face backend: detection with landmarks of one ``kind`` (see :mod:`.align`'s templates)."""
    can: ClassVar[Capabilities]
    kind: str

    def detect(self, img: np.ndarray, threshold: float, det_size: int, min_face: float) -> list[Face]: ...


class IdentityBackend(FaceBackend, Protocol):
    """A backend with identity embeddings (``can.embeddings``): a descriptor per face, a distance between two
    descriptors and the distance below which two faces are the same person."""
    metric: str
    threshold: float
    embedding_size: int

    def embed(self, img: np.ndarray, face: Face) -> np.ndarray: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float: ...


_MODEL_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


class _DlibBackend:
    can = Capabilities(detect=True, landmarks=True, embeddings=True)
    metric = "euclidean"
    threshold = 0.6
    embedding_size = 128

    def __init__(self, node: str, landmarks: str, refine: bool, cnn: bool = False):
        dlib = require("dlib", node, "dlib-bin", "the dlib face backend")
        d = dlib_model_dir()
        if d is None:
            raise MegaPortraitError(node, "the dlib face models were not found.",
                                    "python -m pip install face-recognition-models==0.3.0 (or put "
                                    f"{DLIB_FILES['shape5']} and {DLIB_FILES['recognition']} in ComfyUI/models/dlib/).")
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        want = "shape68" if landmarks == "68-point" else "shape5"
        for key in (want, "recognition"):
            if not os.path.isfile(os.path.join(d, DLIB_FILES[key])):
                raise MegaPortraitError(node, f"{DLIB_FILES[key]} is missing from {d}.",
                                        "reinstall face-recognition-models==0.3.0 or copy the file there.")
        try:
            self.predictor = dlib.shape_predictor(os.path.join(d, DLIB_FILES[want]))
            self.recognizer = dlib.face_recognition_model_v1(os.path.join(d, DLIB_FILES["recognition"]))
        except RuntimeError as e:           # dlib's deserialization error: an empty, truncated or other model file
            raise MegaPortraitError(node, f"a dlib model file in {d} cannot be loaded ({str(e).strip()[:200]}).",
                                    "reinstall face-recognition-models==0.3.0 (or copy complete "
                                    f"{DLIB_FILES[want]} and {DLIB_FILES['recognition']} files there).") from e
        self.kind = "dlib68" if want == "shape68" else "dlib5"
        self.refine = refine
        self.lock = threading.Lock()
        self.cnn = None
        if cnn:
            path = os.path.join(d, DLIB_FILES["cnn"])
            try:
                self.cnn = dlib.cnn_face_detection_model_v1(path)
            except RuntimeError as e:       # missing, empty or truncated file
                raise MegaPortraitError(node, f"dlib's CNN face detector {path} cannot be loaded "
                                              f"({str(e).strip()[:200]}).",
                                        "reinstall face-recognition-models==0.3.0 (it ships "
                                        f"{DLIB_FILES['cnn']}), or set turned_faces to 'HOG only'.") from e

    def detect(self, img: np.ndarray, threshold: float, det_size: int, min_face: float,
               tilt: bool = True) -> list[Face]:
        """Every face of at least ``min_face`` px: the HOG detector on the image enlarged (or shrunk) so that
        such a face fills its window, in tiles when that is large; landmarks on the full-resolution image. With
        ``tilt``, the image turned by each of TILT_ANGLES is searched too (faces from TILT_MIN_FACE_FACTOR x
        ``min_face``, threshold + TILT_THRESHOLD_MARGIN), which finds heads tilted further than the detector's own
        reach (about 35 degrees). With the CNN pass (turned_faces), dlib's CNN detector adds the faces the HOG
        passes lack (faces turned three-quarter or looking down)."""
        boxes, scores = self._hog_search(img, threshold, min_face)
        faces = [Face(b, float(s), self.landmarks(img, b), self.kind) for b, s in zip(boxes, scores)]
        if tilt:
            faces += self._tilted(img, threshold + TILT_THRESHOLD_MARGIN, min_face * TILT_MIN_FACE_FACTOR, faces)
        if self.cnn is not None:
            faces += self._cnn_faces(img, min_face, faces)
        return faces

    def _cnn_faces(self, img: np.ndarray, min_face: float, found: list[Face]) -> list[Face]:
        """The faces dlib's CNN detector finds that ``found`` lacks (from max(min_face, CNN_WINDOW) px; the image
        is shrunk for larger faces, never enlarged), with landmarks predicted on their boxes."""
        h, w = img.shape[:2]
        passes = face_search.plan(h, w, CNN_WINDOW, max(min_face, CNN_WINDOW), CNN_MAX_PASS_PX)

        def cnn(region):
            with self.lock:
                dets = self.cnn(region, 0)
            keep = [d for d in dets if d.confidence >= CNN_MIN_CONFIDENCE]
            return ([(d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1) for d in keep],
                    [float(d.confidence) for d in keep], None)
        boxes, scores, _ = face_search.run(img, passes, cnn)
        if len(boxes) == 0:
            return []
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        new = face_search.new_faces(centers, sizes, [f.center for f in found], [f.size for f in found])
        return [Face(boxes[i], float(scores[i]), self.landmarks(img, boxes[i]), self.kind) for i in new]

    def _hog_search(self, img: np.ndarray, threshold: float, min_face: float):
        h, w = img.shape[:2]
        passes = face_search.plan(h, w, DLIB_WINDOW, min_face, MAX_PASS_PX)

        def hog(region):
            with self.lock:
                rects, scores, _ = self.detector.run(region, 0, threshold)
            return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in rects], scores, None
        boxes, scores, _ = face_search.run(img, passes, hog)
        return boxes, scores

    def _tilted(self, img: np.ndarray, threshold: float, min_face: float, found: list[Face]) -> list[Face]:
        """The faces the turned images show that ``found`` lacks; their landmarks are predicted on the turned image
        (where the face is upright) and mapped back, their boxes are the same size about the mapped centre."""
        out: list[Face] = []
        for angle in TILT_ANGLES:
            turned, m = face_search.rotate(img, angle)
            boxes, scores = self._hog_search(turned, threshold, min_face)
            if len(boxes) == 0:
                continue
            back = invert(m)
            centers = transform_points(back, (boxes[:, :2] + boxes[:, 2:]) / 2.0 - 0.5) + 0.5
            sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            known = found + out
            for i in face_search.new_faces(centers, sizes, [f.center for f in known], [f.size for f in known]):
                if not self._confirmed(img, centers[i], sizes[i], angle, threshold):
                    continue
                half = (boxes[i, 2] - boxes[i, 0]) / 2.0, (boxes[i, 3] - boxes[i, 1]) / 2.0
                bbox = np.array([centers[i][0] - half[0], centers[i][1] - half[1], centers[i][0] + half[0],
                                 centers[i][1] + half[1]])
                lm = transform_points(back, self.landmarks(turned, boxes[i]))
                out.append(Face(bbox, float(scores[i]), lm, self.kind))
        return out

    def _confirmed(self, img: np.ndarray, center: np.ndarray, size: float, angle: float, threshold: float) -> bool:
        """True when the face of ``size`` px at ``center`` (found on the image turned by ``angle``) is found again
        on a patch around it turned by ``angle`` + each of TILT_CONFIRM: a face stays a face when turned a little
        more or less, the texture a detector takes for one by chance does not."""
        import cv2
        k = 1.3 * DLIB_WINDOW / max(size, 1.0)                     # the face about 1.3 detector windows wide
        side = int(round(3 * size * k))
        for delta in TILT_CONFIRM:
            m = cv2.getRotationMatrix2D((float(center[0]) - 0.5, float(center[1]) - 0.5), angle + delta, k)
            m[:, 2] += side / 2.0 - (np.asarray(center, np.float64) - 0.5)
            patch = cv2.warpAffine(img, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            with self.lock:
                rects, _, _ = self.detector.run(patch, 0, threshold)
            if any(abs((r.left() + r.right()) / 2 - side / 2) < 0.5 * size * k and
                   abs((r.top() + r.bottom()) / 2 - side / 2) < 0.5 * size * k for r in rects):
                return True
        return False

    def _rect(self, cx, cy, half):
        return self.dlib.rectangle(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))

    def landmarks(self, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1]) / 2
        with self.lock:
            if not self.refine or self.kind != "dlib5":
                shape = self.predictor(img, self._rect(cx, cy, half))
                return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            # sub-pixel refinement: average over flipped and slightly shifted/scaled boxes
            w = img.shape[1]
            flipped = np.ascontiguousarray(img[:, ::-1])
            acc = []
            for im, flip in ((img, False), (flipped, True)):
                fcx = (w - 1 - cx) if flip else cx
                for dx in (-0.04, 0.0, 0.04):
                    for dy in (-0.04, 0.0, 0.04):
                        for s in (0.96, 1.0, 1.04):
                            shape = self.predictor(im, self._rect(fcx + dx * 2 * half, cy + dy * 2 * half, half * s))
                            q = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
                            if flip:
                                q[:, 0] = w - 1 - q[:, 0]
                                q = q[_DLIB5_FLIP]
                            acc.append(q)
            return np.mean(acc, axis=0)

    def embed(self, img: np.ndarray, face: Face) -> np.ndarray:
        # the recognizer's own chip extraction takes the 5 or 68 landmark points
        parts = [self.dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
        b = face.bbox
        rect = self.dlib.rectangle(int(b[0]), int(b[1]), int(b[2]), int(b[3]))
        shape = self.dlib.full_object_detection(rect, parts)
        with self.lock:
            return np.asarray(self.recognizer.compute_face_descriptor(img, shape), dtype=np.float64)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


class _InsightFaceBackend:
    can = Capabilities(detect=True, landmarks=True, embeddings=True)
    metric = "cosine"
    threshold = 0.65       # cosine distance (1 - cosine similarity); ~0.35 similarity is the usual ArcFace cut-off
    embedding_size = 512
    kind = "kps5"

    def __init__(self, node: str, pack: str, provider: str, det_size: int):
        pack_dir = find_insightface_pack(pack)
        if pack_dir is None:
            roots = insightface_roots()
            where = os.path.join(roots[0], "models", pack) if roots else f"ComfyUI/models/insightface/models/{pack}"
            raise MegaPortraitError(
                node, f"the insightface model pack '{pack}' was not found (looked in: "
                      f"{', '.join(os.path.join(r, 'models', pack) for r in roots)}).",
                f"put the pack's .onnx files (for buffalo_l: det_10g.onnx, w600k_r50.onnx, 1k3d68.onnx, 2d106det.onnx, "
                f"genderage.onnx) in {where}/, or use the dlib backend.")
        require("onnxruntime", node, "onnxruntime-gpu (or onnxruntime)", "the insightface face backend")
        insightface_app = require("insightface.app", node, "insightface", "the insightface face backend")
        import onnxruntime
        available = onnxruntime.get_available_providers()
        if provider == "CUDA":
            if "CUDAExecutionProvider" not in available:
                raise MegaPortraitError(node, "onnxruntime has no CUDA provider here (available: "
                                              f"{', '.join(available)}).",
                                        "pip install onnxruntime-gpu, or choose provider CPU.")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif provider == "CPU":
            providers = ["CPUExecutionProvider"]
        else:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        root = os.path.dirname(os.path.dirname(pack_dir))
        # name + root of an existing folder: insightface loads it and never downloads
        try:
            self.app = insightface_app.FaceAnalysis(name=pack, root=root, providers=providers,
                                                    allowed_modules=["detection", "recognition"])
        except AssertionError as e:
            raise MegaPortraitError(node, f"no detection model was recognised in {pack_dir}.",
                                    "check that the pack's detector (e.g. det_10g.onnx / scrfd_10g_bnkps.onnx) is there.") from e
        except Exception as e:       # onnxruntime / onnx: an empty, truncated or non-ONNX file in the pack
            files = ", ".join(sorted(os.path.basename(f) for f in glob.glob(os.path.join(pack_dir, "*.onnx"))))
            raise MegaPortraitError(node, f"the insightface pack in {pack_dir} cannot be loaded: a model file "
                                          f"({files}) is damaged or not an ONNX model ({type(e).__name__}: "
                                          f"{str(e)[:200]}).",
                                    "download the pack again (complete .onnx files), or use the dlib backend.") from e
        if "recognition" not in self.app.models:
            raise MegaPortraitError(node, f"the insightface pack in {pack_dir} has no recognition (ArcFace) model.",
                                    "use a complete pack (buffalo_l: w600k_r50.onnx; antelopev2: glintr100.onnx).")
        self.app.prepare(ctx_id=0 if providers[0].startswith("CUDA") else -1, det_size=(det_size, det_size))
        self.models = sorted(self.app.models)
        self.pack_dir = pack_dir
        self.lock = threading.Lock()

    def detect(self, img: np.ndarray, threshold: float, det_size: int, min_face: float) -> list[Face]:
        """SCRFD on the whole image (shrunk to det_size) and, when a ``min_face`` face would be smaller than the
        detector sees there, on det_size tiles at full resolution too; hits merged by non-maximum suppression."""
        h, w = img.shape[:2]
        det = self.app.det_model
        det.det_thresh = threshold
        passes = [face_search.Pass(0, 0, w, h, 1.0)]           # (SCRFD resizes to det_size itself)
        if min_face * det_size / max(h, w) < SCRFD_WINDOW:
            passes += [face_search.Pass(*t, 1.0) for t in face_search.tile_grid(h, w, det_size, det_size // 4)]

        def scrfd(region):
            with self.lock:
                bboxes, kpss = det.detect(np.ascontiguousarray(region[:, :, ::-1]), max_num=0)
            kps = [None] * len(bboxes) if kpss is None else list(kpss)
            return bboxes[:, :4], bboxes[:, 4], kps
        boxes, scores, kps = face_search.run(img, passes, scrfd)
        return [Face(b, float(s), k, "kps5") for b, s, k in zip(boxes, scores, kps) if k is not None]

    def embed(self, img: np.ndarray, face: Face) -> np.ndarray:
        rec = self.app.models.get("recognition")
        if rec is None:
            raise RuntimeError(f"the pack in {self.pack_dir} has no recognition model")
        from insightface.app.common import Face as IFace
        f = IFace(bbox=face.bbox, kps=face.landmarks.astype(np.float32), det_score=face.score)
        with self.lock:
            rec.get(np.ascontiguousarray(img[:, :, ::-1]), f)
        e = np.asarray(f.embedding, dtype=np.float64)
        return e / max(np.linalg.norm(e), 1e-12)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(1.0 - a.dot(b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


@dataclass(frozen=True)
class BackendSpec:
    """One face backend: its name (the loader's choice), what it can do, the part of a FACE_ANALYSIS that selects a
    model instance (instances are cached by it), how to build one and how to describe it."""
    name: str
    can: Capabilities
    config: Callable[[FaceAnalyzer], tuple]
    build: Callable[[FaceAnalyzer], FaceBackend]
    describe: Callable[[FaceAnalyzer, FaceBackend], str]


BACKEND_SPECS: dict[str, BackendSpec] = {
    "dlib": BackendSpec(
        "dlib", _DlibBackend.can, lambda fa: (fa.landmarks, fa.refine_landmarks, fa.turned_faces),
        lambda fa: _DlibBackend(fa.node, fa.landmarks, fa.refine_landmarks, fa.turned_faces == TURNED_FACES[1]),
        lambda fa, b: f"dlib ({fa.landmarks} landmarks, faces from {fa.min_face} px"
                      f"{', CNN pass for turned faces' if b.cnn is not None else ''}, Euclidean distance, "
                      f"threshold {b.threshold})"),
    "insightface": BackendSpec(
        "insightface", _InsightFaceBackend.can, lambda fa: (fa.insightface_pack, fa.provider, fa.det_size),
        lambda fa: _InsightFaceBackend(fa.node, fa.insightface_pack, fa.provider, fa.det_size),
        lambda fa, b: f"insightface {fa.insightface_pack} ({fa.provider}, cosine distance, threshold {b.threshold})"),
}


def register_backend(spec: BackendSpec) -> None:
    """Add (or replace) a face backend by name (for backends other packs or tests bring)."""
    BACKEND_SPECS[spec.name] = spec


@dataclass
class FaceAnalyzer:
    """FACE_ANALYSIS: backend configuration + lazily loaded, shared models. Picklable (models are not pickled)."""
    backend: str = "dlib"
    det_threshold: float = 0.3
    det_size: int = 640
    landmarks: str = "5-point"              # dlib only: "5-point" or "68-point"
    min_face: int = DEFAULT_MIN_FACE        # smallest face searched for (detector box side, full-resolution px)
    refine_landmarks: bool = True           # dlib only: sub-pixel averaging
    insightface_pack: str = "buffalo_l"
    provider: str = "auto"
    turned_faces: str = TURNED_FACES[0]     # dlib only: also dlib's CNN detector (faces turned three-quarter)
    node: str = field(default="Face Analysis", compare=False)

    @property
    def spec(self) -> BackendSpec:
        spec = BACKEND_SPECS.get(self.backend)
        if spec is None:
            raise MegaPortraitError(self.node, f"unknown face backend {self.backend!r}.", f"use one of {list(BACKEND_SPECS)}.")
        return spec

    @property
    def can(self) -> Capabilities:
        """What this FACE_ANALYSIS's backend can do (known without loading its models)."""
        return self.spec.can

    @property
    def impl(self) -> FaceBackend:
        spec = self.spec
        key = (spec.name, *spec.config(self))
        with _CACHE_LOCK:
            impl = _MODEL_CACHE.get(key)
            if impl is None:
                impl = _MODEL_CACHE[key] = spec.build(self)
        return impl

    def load(self) -> FaceAnalyzer:
        self.impl  # noqa: B018  (loads the models now, so a broken install fails in the loader node)
        return self

    def require_embeddings(self, node: str, purpose: str) -> None:
        """Refuse, naming ``node``, a backend that has no identity embeddings for ``purpose`` (an identity feature)."""
        if not self.can.embeddings:
            usable = [n for n, s in BACKEND_SPECS.items() if s.can.embeddings]
            raise MegaPortraitError(node, f"{purpose} needs identity embeddings, but the face backend '{self.backend}' "
                                          f"has none (it can do: {self.can.describe()}).",
                                    f"choose a backend with identity embeddings ({', '.join(usable)}) in the Face "
                                    "Analysis Loader feeding this node, or do without the identity feature.")

    def _identity(self) -> IdentityBackend:
        self.require_embeddings(self.node, "comparing faces by identity")
        return self.impl

    @property
    def threshold(self) -> float:
        return self._identity().threshold

    @property
    def metric(self) -> str:
        return self._identity().metric

    def detect(self, img: np.ndarray, min_face: float | None = None) -> list[Face]:
        """All faces of at least ``min_face`` px (default: the loader's) in an HxWx3 uint8 RGB image, searched at
        full resolution, sorted left to right."""
        mf = float(min_face if min_face is not None else getattr(self, "min_face", DEFAULT_MIN_FACE))
        faces = self.impl.detect(img, self.det_threshold, self.det_size, max(mf, 8.0))
        return sorted(faces, key=lambda f: (f.center[0], f.center[1]))

    def embed(self, img: np.ndarray, face: Face) -> np.ndarray:
        if face.embedding is None:
            face.embedding = self._identity().embed(img, face)
        return face.embedding

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return self._identity().distance(a, b)

    def describe(self) -> str:
        return self.spec.describe(self, self.impl)


def largest_face(node: str, analyzer: FaceAnalyzer, img: np.ndarray, what: str) -> tuple[Face, int]:
    faces = analyzer.detect(img)
    if not faces:
        raise MegaPortraitError(node, f"no face was found in {what}.",
                                "use a photo where the face is clearly visible and at least ~40 px wide, or lower "
                                "det_threshold / min_face in the Face Analysis Loader.")
    return max(faces, key=lambda f: f.area), len(faces)


def identity_embedding(node: str, analyzer: FaceAnalyzer, images: torch.Tensor, what: str) -> np.ndarray:
    """Mean embedding of the largest face of every image of a batch (an identity from several photos)."""
    analyzer.require_embeddings(node, f"the identity of '{what}'")
    images = check_image(node, images, what)
    embs = []
    for i in range(images.shape[0]):
        img = to_uint8_rgb(images[i])
        face, _ = largest_face(node, analyzer, img, f"{what} (batch item {i})")
        embs.append(analyzer.embed(img, face))
    e = np.mean(embs, axis=0)
    if analyzer.metric == "cosine":
        e = e / max(np.linalg.norm(e), 1e-12)
    return e


# ----------------------------------------------------------------------------------------------- nodes
class FaceAnalysisLoader:
    DESCRIPTION = ("Loads a face analysis backend (detector, landmarks, identity embeddings) for the face crop, "
                   "paste-back and identity nodes. dlib works offline out of the box; insightface uses the packs in "
                   "ComfyUI/models/insightface/models/<pack>/.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("FACE_ANALYSIS",)
    RETURN_NAMES = ("face_analysis",)
    OUTPUT_TOOLTIPS = ("Face analysis models for the MegaPortrait face nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backend": (list(BACKENDS), {"default": "dlib", "tooltip":
                        "dlib: HOG detector + 5-point landmarks + 128-d descriptors, offline (pip: dlib-bin, "
                        "face-recognition-models). insightface: SCRFD + ArcFace from a model pack (non-commercial "
                        "licence), needs insightface + onnxruntime."}),
            "det_threshold": ("FLOAT", {"default": 0.3, "min": -2.0, "max": 1.0, "step": 0.05, "tooltip":
                              "Detection threshold. dlib: HOG score (0.3 default; lower finds harder faces and more false "
                              "ones). insightface: confidence 0..1 (0.5 is usual)."}),
            "det_size": ("INT", {"default": 640, "min": 160, "max": 2048, "step": 32, "tooltip":
                         "insightface only: the detector's input size. The whole image is searched at this size, and "
                         "in tiles of this size at full resolution when min_face faces would be too small there. "
                         "(dlib searches the full-resolution image, see min_face.)"}),
        }, "optional": {
            "landmarks": (["5-point", "68-point"], {"default": "5-point", "tooltip":
                          "dlib only. 5-point (default; CC0 training data) or 68-point (its training data excludes "
                          "commercial use)."}),
            "refine_landmarks": ("BOOLEAN", {"default": True, "tooltip":
                                 "dlib 5-point only: average the landmark predictor over flipped and slightly shifted "
                                 "boxes for sub-pixel stable landmarks (~50 ms a face). Paste-back alignment needs this."}),
            "insightface_pack": (list_insightface_packs(), {"default": "buffalo_l", "tooltip":
                                 "insightface only: the folder name under ComfyUI/models/insightface/models/."}),
            "provider": (list(PROVIDERS), {"default": "auto", "tooltip":
                         "insightface only: onnxruntime execution provider (auto = CUDA when available, else CPU)."}),
            "min_face": ("INT", {"default": DEFAULT_MIN_FACE, "min": 16, "max": 1024, "step": 4, "tooltip":
                         "Smallest face searched for, in pixels of the full-resolution image (the detector's box, "
                         "about 0.8 of the face's width: 32 finds faces ~40 px wide). dlib enlarges the image by "
                         "72/min_face for the search, so halving it costs ~4x the time; raise it for speed on large "
                         "photos of big faces."}),
            "turned_faces": (list(TURNED_FACES), {"default": TURNED_FACES[0], "tooltip":
                             "dlib only. HOG + CNN: also run dlib's CNN face detector, which finds faces turned "
                             "three-quarter or looking down that the frontal HOG detector misses (from 80 px; about "
                             "20 s per Mpx on one CPU core, so off by default)."}),
        }}

    def load(self, backend, det_threshold, det_size, landmarks="5-point", refine_landmarks=True,
             insightface_pack="buffalo_l", provider="auto", min_face=DEFAULT_MIN_FACE, turned_faces=TURNED_FACES[0]):
        node = TITLES["MegaPortraitFaceAnalysisLoader"]
        check_choice(node, "backend", backend, BACKENDS)
        check_choice(node, "turned_faces", turned_faces, TURNED_FACES)
        check_choice(node, "landmarks", landmarks, ("5-point", "68-point"))
        check_choice(node, "provider", provider, PROVIDERS)
        det_threshold = check_number(node, "det_threshold", det_threshold, -2.0, 1.0)
        det_size = check_int(node, "det_size", det_size, 160, 2048)
        min_face = check_int(node, "min_face", min_face, 16, 1024)
        pack = str(insightface_pack)
        if not pack or pack in (".", "..") or any(c in pack for c in "/\\:") or pack.startswith("."):
            raise MegaPortraitError(node, f"insightface_pack {pack!r} is not a folder name.",
                                    "choose a pack folder under ComfyUI/models/insightface/models/ (e.g. buffalo_l); "
                                    "paths are not allowed.")
        fa = FaceAnalyzer(backend=backend, det_threshold=det_threshold, det_size=det_size,
                          landmarks=landmarks, refine_landmarks=check_bool(node, "refine_landmarks", refine_landmarks),
                          insightface_pack=insightface_pack, provider=provider, node=node, min_face=min_face,
                          turned_faces=turned_faces)
        fa.load()
        log.info("MegaPortrait: face analysis ready: %s", fa.describe())
        return (fa,)


class FaceSimilarity:
    DESCRIPTION = ("Identity distance between the face in image_a (several images = one identity, averaged) and the "
                   "face in each image of image_b, with the backend's usual same-person threshold.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("FLOAT", "FLOAT", "BOOLEAN", "STRING")
    RETURN_NAMES = ("distance", "threshold", "same_person", "report")
    OUTPUT_TOOLTIPS = ("Mean distance over image_b's batch (lower = more alike).",
                       "The backend's usual threshold (dlib 0.6 Euclidean; insightface 0.65 cosine distance).",
                       "True when the mean distance is below the threshold.",
                       "Readable per-item distances.")
    FUNCTION = "compare"
    OUTPUT_NODE = True      # shows the report on the node (and in /history) even when nothing is connected

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From the Face Analysis Loader."}),
            "image_a": ("IMAGE", {"tooltip": "The identity: one photo, or several of the same person (embeddings averaged)."}),
            "image_b": ("IMAGE", {"tooltip": "Image(s) to compare; the largest face of each is used."}),
        }, "optional": {
            "on_no_face": (["error", "report"], {"default": "error", "tooltip":
                           "When an image_b item has no face: stop with an error, or just say so in the report (the "
                           "item is left out of the mean; with no face at all the distance is infinite)."}),
        }}

    def compare(self, face_analysis, image_a, image_b, on_no_face="error"):
        node = TITLES["MegaPortraitFaceSimilarity"]
        check_choice(node, "on_no_face", on_no_face, ("error", "report"))
        ref = identity_embedding(node, face_analysis, image_a, "image_a")
        image_b = check_image(node, image_b, "image_b")
        distances, lines, notes = [], [], []
        thr = face_analysis.threshold
        for i in range(image_b.shape[0]):
            img = to_uint8_rgb(image_b[i])
            faces = face_analysis.detect(img)
            if not faces and on_no_face == "report":
                lines.append(f"item {i}: no face found")
                continue
            face, n = largest_face(node, face_analysis, img, f"image_b (batch item {i})")
            if n > 1:
                notes.append(f"item {i}: {n} faces found, the largest was used")
            d = face_analysis.distance(ref, face_analysis.embed(img, face))
            distances.append(d)
            lines.append(f"item {i}: distance {d:.4f} -> {'same person' if d < thr else 'different person'}")
        mean = float(np.mean(distances)) if distances else float("inf")
        report = [f"backend: {face_analysis.describe()}"] + lines + notes
        report.append(f"mean distance {mean:.4f} (threshold {thr})" if distances else "no face to compare")
        text = "\n".join(report)
        return {"ui": {"text": [text]}, "result": (mean, float(thr), bool(mean < thr), text)}


class SelectBestIdentity:
    DESCRIPTION = "Returns the image of a batch whose face is most similar to the source identity."
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT", "STRING")
    RETURN_NAMES = ("best_image", "index", "distance", "report")
    OUTPUT_TOOLTIPS = ("The most similar batch item.", "Its index in the batch.", "Its identity distance.",
                       "Readable per-item distances.")
    FUNCTION = "select"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From the Face Analysis Loader."}),
            "source": ("IMAGE", {"tooltip": "Photo(s) of the source person (embeddings averaged)."}),
            "candidates": ("IMAGE", {"tooltip": "Batch to choose from; items without a face are skipped."}),
        }}

    def select(self, face_analysis, source, candidates):
        node = TITLES["MegaPortraitSelectBestIdentity"]
        ref = identity_embedding(node, face_analysis, source, "source")
        candidates = check_image(node, candidates, "candidates")
        distances = []
        for i in range(candidates.shape[0]):
            img = to_uint8_rgb(candidates[i])
            faces = face_analysis.detect(img)
            if not faces:
                distances.append(float("inf"))
                continue
            face = max(faces, key=lambda f: f.area)
            distances.append(face_analysis.distance(ref, face_analysis.embed(img, face)))
        if all(d == float("inf") for d in distances):
            raise MegaPortraitError(node, "no face was found in any candidate image.",
                                    "check the candidates (e.g. preview them) or lower det_threshold.")
        best = int(np.argmin(distances))
        thr = face_analysis.threshold
        lines = [f"backend: {face_analysis.describe()}"]
        for i, d in enumerate(distances):
            desc = "no face" if d == float("inf") else f"distance {d:.4f} ({'same' if d < thr else 'different'} person)"
            lines.append(f"item {i}: {desc}" + (" <- best" if i == best else ""))
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (candidates[best:best + 1].clone(), best, float(distances[best]), text)}


NODE_CLASS_MAPPINGS = {
    "MegaPortraitFaceAnalysisLoader": FaceAnalysisLoader,
    "MegaPortraitFaceSimilarity": FaceSimilarity,
    "MegaPortraitSelectBestIdentity": SelectBestIdentity,
}
