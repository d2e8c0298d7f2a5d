"""The aligned face crop MegaPortrait works on, and the FACE_CROP type that lets paste-back undo it.

The crop is the least-squares similarity transform (rotation, uniform scale, translation) that puts all the
face's landmarks (5 or 68) on their template in ArcFace's 112x112 alignment frame, scaled so that the frame's
box fills ``1 / (1 + 2 * context)`` of the square crop (the geometry lives in :mod:`.align`). The transform,
the landmarks (in the original image and as detected again on the crop itself) and the original image size
travel in FACE_CROP, so paste-back can put the re-rendered face back exactly.

One face per image, or every face of it (a batch of crops, left to right, optionally only the faces that match
the 'identity' photos): each crop's CropInfo records which image of the batch it came from, so Paste Back puts
every face of an image back into that one image. Only the region each crop samples is read from the image
(no copy of the whole frame).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import align
from .align import border_fraction, crop_matrix, transform_points, warp
from .common import CATEGORY, TITLES, MegaPortraitError, check_image, check_int, check_number, log
from .face_analysis import Face, FaceAnalyzer, identity_embedding
from .image_ops import redetect_min_face, rgb_numpy, to_uint8, to_uint8_rgb

EVERY_FACE = "every face (left to right)"
MATCHING = "every face matching identity"
SELECTIONS = ("largest", "highest score", "index (left to right)", "most similar to identity", "single (error if several)",
              EVERY_FACE, MATCHING)
MULTI = (EVERY_FACE, MATCHING)


@dataclass
class CropInfo:
    """How one image's face crop was made."""
    matrix: np.ndarray                 # 2x3, original image pixel -> crop pixel
    crop_size: int
    image_size: tuple                  # (height, width) of the original image
    landmarks: np.ndarray              # landmarks in the original image
    landmarks_crop: np.ndarray         # landmarks detected on the crop itself (paste-back aligns to these)
    kind: str                          # landmark kind ("dlib5", "dlib68", "kps5")
    bbox: np.ndarray                   # face box in the original image
    context: float
    face_index: int = 0
    faces_found: int = 1
    border_fraction: float = 0.0       # part of the crop that lies outside the original image
    image_index: int = 0               # which image of the batch given to Face Crop this crop came from

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel."""
        return align.scale_of(self.matrix)

    @property
    def inverse(self) -> np.ndarray:
        """Crop pixel -> original image pixel."""
        return align.invert(self.matrix)

    def template_to_crop(self, pts: np.ndarray) -> np.ndarray:
        return align.template_to_crop(pts, self.crop_size, self.context)


@dataclass
class FaceCrop:
    """FACE_CROP: one :class:`CropInfo` per crop, in the order of the crop batch. Picklable, holds no images.

    ``references``: how many images Face Crop received (0, as in FACE_CROPs made before per-face runs: one per
    crop); item ``i`` came from image ``items[i].image_index``."""
    items: list = field(default_factory=list)
    references: int = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_references(self) -> int:
        return self.references or len(self.items)

    def image_index(self, i: int) -> int:
        return int(getattr(self.items[i], "image_index", 0)) if self.references else i

    def __getitem__(self, i) -> CropInfo:
        return self.items[i]


def _nearest(faces: list[Face], point: np.ndarray) -> Face | None:
    if not faces:
        return None
    return min(faces, key=lambda f: float(np.linalg.norm(f.center - point)))


def choose_face(node: str, analyzer: FaceAnalyzer, img: np.ndarray, faces: list[Face], selection: str, index: int,
                identity: np.ndarray | None, what: str) -> tuple[Face, int]:
    if not faces:
        raise MegaPortraitError(node, f"no face was found in {what}.",
                                "use an image where the whole face is visible (frontal to three-quarter view, at least "
                                "~40 px wide, not cut by the border), or lower det_threshold / min_face in the Face "
                                "Analysis Loader.")
    if selection == "largest":
        i = int(np.argmax([f.area for f in faces]))
    elif selection == "highest score":
        i = int(np.argmax([f.score for f in faces]))
    elif selection == "index (left to right)":
        if not 0 <= index < len(faces):
            raise MegaPortraitError(node, f"face index {index} was asked for but {what} has {len(faces)} face(s).",
                                    f"use an index from 0 to {len(faces) - 1} (faces are counted left to right).")
        i = index
    elif selection == "most similar to identity":
        if identity is None:
            raise MegaPortraitError(node, "selection 'most similar to identity' needs the 'identity' image input.",
                                    "connect photos of the person to 'identity', or choose another selection.")
        d = [analyzer.distance(identity, analyzer.embed(img, f)) for f in faces]
        i = int(np.argmin(d))
    elif selection == "single (error if several)":
        if len(faces) > 1:
            where = ", ".join(f"{f.size:.0f} px at x={f.center[0]:.0f}" for f in faces)
            raise MegaPortraitError(node, f"{len(faces)} faces found in {what} ({where}); selection 'single (error if "
                                          "several)' needs exactly one.",
                                    "use selection 'largest', 'index (left to right)' (0 = leftmost) or 'most similar "
                                    "to identity', or crop the image to one person.")
        i = 0
    else:
        raise MegaPortraitError(node, f"unknown selection {selection!r}.", f"use one of {list(SELECTIONS)}.")
    return faces[i], i


def unusable(face: Face, h: int, w: int, min_face_size: int, what: str) -> tuple[str, str] | None:
    """(problem, fix) when a face is too small or cut by the image border; None when it can be cropped."""
    if face.size < min_face_size:
        return (f"the face in {what} is only {face.size:.0f} px wide (minimum {min_face_size} px).",
                "use a larger or closer photo, or lower min_face_size (quality drops on tiny faces).")
    bx = face.bbox
    inside_w = max(0.0, min(bx[2], w) - max(bx[0], 0)) / max(bx[2] - bx[0], 1e-6)
    inside_h = max(0.0, min(bx[3], h) - max(bx[1], 0)) / max(bx[3] - bx[1], 1e-6)
    pts = face.landmarks[17:] if face.kind == "dlib68" else face.landmarks     # (the jaw line may touch the border)
    margin = 0.08 * face.size
    near_edge = (pts[:, 0] < margin).any() or (pts[:, 1] < margin).any() or (pts[:, 0] > w - margin).any() \
        or (pts[:, 1] > h - margin).any()
    if inside_w * inside_h < 0.9 or near_edge:
        return (f"the face in {what} is cut by the image border "
                f"({100 * (1 - inside_w * inside_h):.0f}% of its box is outside the image).",
                "use a photo where the whole face is inside the frame, or pad the image first "
                "(e.g. 'Pad Image for Outpainting').")
    return None


def choose_faces(node: str, analyzer: FaceAnalyzer, img: np.ndarray, faces: list[Face], selection: str,
                 identity: np.ndarray | None, min_face_size: int, what: str) -> list[tuple[Face, int]]:
    """Every usable face (left to right), or those matching ``identity`` (distance below the backend's threshold).
    Faces too small or cut by the border are left out (logged); none left is an error."""
    h, w = img.shape[:2]
    if not faces:
        choose_face(node, analyzer, img, faces, "largest", 0, None, what)            # the no-face error
    if selection == MATCHING:
        if identity is None:
            raise MegaPortraitError(node, f"selection '{MATCHING}' needs the 'identity' image input.",
                                    "connect photos of the person to 'identity', or choose another selection.")
        d = [analyzer.distance(identity, analyzer.embed(img, f)) for f in faces]
        picked = [(f, i) for i, f in enumerate(faces) if d[i] < analyzer.threshold]
        if not picked:
            best = int(np.argmin(d))
            raise MegaPortraitError(node, f"none of the {len(faces)} face(s) in {what} matches the identity photos "
                                          f"(closest: the face at x={faces[best].center[0]:.0f}, distance {d[best]:.2f}; "
                                          f"threshold {analyzer.threshold}).",
                                    "connect photos of a person in the image, or use 'most similar to identity'.")
    else:
        picked = list(zip(faces, range(len(faces))))
    usable, skipped = [], []
    for f, i in picked:
        why = unusable(f, h, w, min_face_size, f"{what} (face {i}, x={f.center[0]:.0f})")
        (skipped if why else usable).append(why or (f, i))
    if not usable:
        problem, fix = skipped[0]
        raise MegaPortraitError(node, f"no usable face in {what}: {problem}", fix)
    for problem, _ in skipped:
        log.warning("MegaPortrait %s: left out: %s", node, problem)
    return usable


def crop_face(analyzer: FaceAnalyzer, image: torch.Tensor, face: Face, i: int, n_faces: int, crop_size: int,
              context: float) -> tuple[np.ndarray, CropInfo]:
    """The aligned crop of one detected face of ``image`` [H, W, C], read from the region it maps from only."""
    h, w = image.shape[:2]
    m = crop_matrix(face.landmarks, face.kind, crop_size, context)
    x0, y0, x1, y1 = align.source_roi(m, crop_size, h, w)
    src = rgb_numpy(image[y0:y1, x0:x1])                                # the region only, on the CPU (OpenCV)
    crop = np.clip(warp(src, align.from_region(m, x0, y0), (crop_size, crop_size)), 0.0, 1.0) \
        if src.size else np.zeros((crop_size, crop_size, 3), np.float32)
    # landmarks detected on the crop itself: paste-back compares like with like
    expected = transform_points(m, face.landmarks)
    again = _nearest(analyzer.detect(to_uint8(crop), min_face=redetect_min_face(crop_size)),
                     transform_points(m, face.center[None])[0])
    lm_crop = expected
    if again is not None and again.kind == face.kind and np.abs(again.landmarks - expected).mean() < 0.1 * crop_size:
        lm_crop = again.landmarks
    info = CropInfo(matrix=m, crop_size=crop_size, image_size=(h, w), landmarks=face.landmarks.copy(),
                    landmarks_crop=np.asarray(lm_crop, dtype=np.float64), kind=face.kind, bbox=face.bbox.copy(),
                    context=context, face_index=i, faces_found=n_faces,
                    border_fraction=border_fraction(m, (h, w), crop_size))
    return crop.astype(np.float32), info


def crop_image(node: str, analyzer: FaceAnalyzer, image: torch.Tensor, crop_size: int, context: float, selection: str,
               index: int, identity: np.ndarray | None, min_face_size: int, what: str) -> list[tuple[np.ndarray, CropInfo]]:
    """Detect, choose and crop the face(s) of one image [H, W, C]: [(crop float32 SxSx3, CropInfo)], left to right."""
    rgb8 = to_uint8_rgb(image)
    h, w = rgb8.shape[:2]
    faces = analyzer.detect(rgb8)
    if selection in MULTI:
        chosen = choose_faces(node, analyzer, rgb8, faces, selection, identity, min_face_size, what)
    else:
        face, i = choose_face(node, analyzer, rgb8, faces, selection, index, identity, what)
        why = unusable(face, h, w, min_face_size, what)
        if why:
            raise MegaPortraitError(node, *why)
        chosen = [(face, i)]
    del rgb8
    return [crop_face(analyzer, image, f, i, len(faces), crop_size, context) for f, i in chosen]


def face_crop(node: str, analyzer: FaceAnalyzer, images: torch.Tensor, crop_size: int = 512, context: float = 0.25,
              selection: str = "largest", index: int = 0, identity: torch.Tensor | None = None,
              min_face_size: int = 48) -> tuple[torch.Tensor, FaceCrop]:
    """Aligned square face crops [N, S, S, 3] of a batch (one per image, or every chosen face of each image, left
    to right) and the FACE_CROP that undoes them."""
    images = check_image(node, images, "image")
    if selection not in SELECTIONS:
        raise MegaPortraitError(node, f"unknown selection {selection!r}.", f"use one of {list(SELECTIONS)}.")
    ident = identity_embedding(node, analyzer, identity, "identity") if identity is not None else None
    crops, infos = [], []
    for b in range(images.shape[0]):
        what = "the image" if images.shape[0] == 1 else f"image {b} of the batch"
        for c, info in crop_image(node, analyzer, images[b], crop_size, context, selection, index, ident, min_face_size,
                                  what):
            info.image_index = b
            crops.append(torch.from_numpy(c))
            infos.append(info)
    return torch.stack(crops).to(images.device), FaceCrop(infos, references=int(images.shape[0]))


class FaceCropNode:
    DESCRIPTION = ("Finds the face (or every face) in the reference image and outputs aligned square crops (eyes level, "
                   "fixed scale) plus a FACE_CROP that Paste Back uses to put the re-rendered faces back exactly.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("IMAGE", "FACE_CROP")
    RETURN_NAMES = ("face", "face_crop")
    OUTPUT_TOOLTIPS = ("Aligned square face crop(s), RGB, crop_size x crop_size: one per image, or with an 'every "
                       "face' selection every chosen face of each image, left to right.",
                       "Transform, landmarks, image size and source image of every crop, for Paste Back.")
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From the Face Analysis Loader."}),
            "image": ("IMAGE", {"tooltip": "The reference portrait or group photo (a batch is cropped image by image). "
                                           "Grayscale is used as RGB; alpha is ignored."}),
            "crop_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip":
                          "Side of the square crop in pixels (a multiple of 8 for the VAE). 512 for SD1.5, 1024 for SDXL."}),
            "context": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip":
                        "Margin around the face: the face template box fills 1/(1+2*context) of the crop. 0.25 keeps hair "
                        "and chin; larger includes more shoulders/background."}),
            "selection": (list(SELECTIONS), {"default": "largest", "tooltip":
                          "Which face when several are found: largest box, highest detector score, by index counted "
                          "left to right, most similar to the 'identity' photos, exactly one (error otherwise); or "
                          "several: every face (a batch of crops, left to right; too small or border-cut faces are "
                          "left out), or every face matching the 'identity' photos."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip":
                      "Face number (0 = leftmost) for selection 'index (left to right)'."}),
            "min_face_size": ("INT", {"default": 48, "min": 8, "max": 4096, "tooltip":
                              "Smallest accepted face (box side in pixels); smaller faces raise an error instead of "
                              "producing a blurry crop."}),
        }, "optional": {
            "identity": ("IMAGE", {"tooltip": "Photos of the person to pick for the selections 'most similar to "
                                              "identity' and 'every face matching identity'."}),
        }}

    def crop(self, face_analysis, image, crop_size, context, selection, index, min_face_size, identity=None):
        node = TITLES["MegaPortraitFaceCrop"]
        context = check_number(node, "context", context, 0.0, 3.0)
        crop_size, index = check_int(node, "crop_size", crop_size, 64, 4096), check_int(node, "index", index, 0, 64)
        min_face_size = check_int(node, "min_face_size", min_face_size, 8, 4096)
        if crop_size % 8:
            raise MegaPortraitError(node, f"crop_size {crop_size} is not a multiple of 8.", "use e.g. 512, 768 or 1024.")
        if not isinstance(face_analysis, FaceAnalyzer):
            raise MegaPortraitError(node, "'face_analysis' is not a FACE_ANALYSIS.", "connect a Face Analysis Loader.")
        faces, fc = face_crop(node, face_analysis, image, int(crop_size), float(context), selection, int(index),
                              identity, int(min_face_size))
        return (faces, fc)


NODE_CLASS_MAPPINGS = {"MegaPortraitFaceCrop": FaceCropNode}
