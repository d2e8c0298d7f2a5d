"""The aligned face crop MegaPortrait works on, and the FACE_CROP type that lets paste-back undo it.

The crop is the least-squares similarity transform (rotation, uniform scale, translation) that puts all the
face's landmarks (5 or 68) on their template in ArcFace's 112x112 alignment frame, scaled so that the frame's
box fills ``1 / (1 + 2 * context)`` of the square crop (the geometry lives in :mod:`.align`). The transform,
the landmarks (in the original image and as detected again on the crop itself) and the original image size
travel in FACE_CROP, so paste-back can put the re-rendered face back exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import align
from .align import (  # noqa: F401  (the geometry's old home: these names stay importable from here)
    FACE_ELLIPSE,
    TEMPLATE_CENTER,
    TEMPLATE_SIZE,
    border_fraction,
    compose,
    crop_matrix,
    similarity,
    template_to_crop,
    transform_points,
    warp,
)
from .common import CATEGORY, MegaPortraitError, check_image
from .face_analysis import Face, FaceAnalyzer, identity_embedding, to_uint8_rgb

SELECTIONS = ("largest", "highest score", "index (left to right)", "most similar to identity", "single (error if several)")


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
    """FACE_CROP: one :class:`CropInfo` per image of the batch the crop node received. Picklable, holds no images."""
    items: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

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


def crop_one(node: str, analyzer: FaceAnalyzer, image: torch.Tensor, crop_size: int, context: float, selection: str,
             index: int, identity: np.ndarray | None, min_face_size: int, what: str) -> tuple[np.ndarray, CropInfo]:
    """Detect, choose and crop the face of one image [H, W, C]. Returns (crop float32 SxSx3, CropInfo)."""
    rgb8 = to_uint8_rgb(image)
    h, w = rgb8.shape[:2]
    faces = analyzer.detect(rgb8)
    face, i = choose_face(node, analyzer, rgb8, faces, selection, index, identity, what)
    if face.size < min_face_size:
        raise MegaPortraitError(node, f"the face in {what} is only {face.size:.0f} px wide (minimum {min_face_size} px).",
                                "use a larger or closer photo, or lower min_face_size (quality drops on tiny faces).")
    bx = face.bbox
    inside_w = max(0.0, min(bx[2], w) - max(bx[0], 0)) / max(bx[2] - bx[0], 1e-6)
    inside_h = max(0.0, min(bx[3], h) - max(bx[1], 0)) / max(bx[3] - bx[1], 1e-6)
    pts = face.landmarks[17:] if face.kind == "dlib68" else face.landmarks     # (the jaw line may touch the border)
    margin = 0.08 * face.size
    near_edge = (pts[:, 0] < margin).any() or (pts[:, 1] < margin).any() or (pts[:, 0] > w - margin).any() \
        or (pts[:, 1] > h - margin).any()
    if inside_w * inside_h < 0.9 or near_edge:
        raise MegaPortraitError(node, f"the face in {what} is cut by the image border "
                                      f"({100 * (1 - inside_w * inside_h):.0f}% of its box is outside the image).",
                                "use a photo where the whole face is inside the frame, or pad the image first "
                                "(e.g. 'Pad Image for Outpainting').")
    m = crop_matrix(face.landmarks, face.kind, crop_size, context)
    src = image.detach().float().cpu()
    if src.shape[-1] == 1:
        src = src.expand(*src.shape[:-1], 3)
    src = np.ascontiguousarray(src[..., :3].numpy())
    crop = np.clip(warp(src, m, (crop_size, crop_size)), 0.0, 1.0)
    # landmarks detected on the crop itself: paste-back compares like with like
    expected = transform_points(m, face.landmarks)
    crop8 = (crop * 255.0).round().astype(np.uint8)
    again = _nearest(analyzer.detect(crop8, min_face=crop_size // 5), transform_points(m, face.center[None])[0])
    lm_crop = expected
    if again is not None and again.kind == face.kind and np.abs(again.landmarks - expected).mean() < 0.1 * crop_size:
        lm_crop = again.landmarks
    info = CropInfo(matrix=m, crop_size=crop_size, image_size=(h, w), landmarks=face.landmarks.copy(),
                    landmarks_crop=np.asarray(lm_crop, dtype=np.float64), kind=face.kind, bbox=face.bbox.copy(),
                    context=context, face_index=i, faces_found=len(faces),
                    border_fraction=border_fraction(m, (h, w), crop_size))
    return crop.astype(np.float32), info


def face_crop(node: str, analyzer: FaceAnalyzer, images: torch.Tensor, crop_size: int = 512, context: float = 0.25,
              selection: str = "largest", index: int = 0, identity: torch.Tensor | None = None,
              min_face_size: int = 48) -> tuple[torch.Tensor, FaceCrop]:
    """Aligned square face crops [B, S, S, 3] of a batch and the FACE_CROP that undoes them."""
    images = check_image(node, images, "image")
    ident = identity_embedding(node, analyzer, identity, "identity") if identity is not None else None
    crops, infos = [], []
    for b in range(images.shape[0]):
        what = "the image" if images.shape[0] == 1 else f"image {b} of the batch"
        c, info = crop_one(node, analyzer, images[b], crop_size, context, selection, index, ident, min_face_size, what)
        crops.append(torch.from_numpy(c))
        infos.append(info)
    return torch.stack(crops), FaceCrop(infos)


class FaceCropNode:
    DESCRIPTION = ("Finds the face in the reference image and outputs an aligned square crop (eyes level, fixed scale) "
                   "plus a FACE_CROP that Paste Back uses to put the re-rendered face back exactly.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("IMAGE", "FACE_CROP")
    RETURN_NAMES = ("face", "face_crop")
    OUTPUT_TOOLTIPS = ("Aligned square face crop(s), RGB, crop_size x crop_size.",
                       "Transform, landmarks and image size for Paste Back.")
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From the Face Analysis Loader."}),
            "image": ("IMAGE", {"tooltip": "The reference portrait (batch: one face per image). Grayscale is used as RGB; "
                                           "alpha is ignored."}),
            "crop_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip":
                          "Side of the square crop in pixels (a multiple of 8 for the VAE). 512 for SD1.5, 1024 for SDXL."}),
            "context": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip":
                        "Margin around the face: the face template box fills 1/(1+2*context) of the crop. 0.25 keeps hair "
                        "and chin; larger includes more shoulders/background."}),
            "selection": (list(SELECTIONS), {"default": "largest", "tooltip":
                          "Which face when several are found: largest box, highest detector score, by index counted "
                          "left to right, most similar to the 'identity' photos, or exactly one (error otherwise)."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip":
                      "Face number (0 = leftmost) for selection 'index (left to right)'."}),
            "min_face_size": ("INT", {"default": 48, "min": 8, "max": 4096, "tooltip":
                              "Smallest accepted face (box side in pixels); smaller faces raise an error instead of "
                              "producing a blurry crop."}),
        }, "optional": {
            "identity": ("IMAGE", {"tooltip": "Photos of the person to pick for selection 'most similar to identity'."}),
        }}

    def crop(self, face_analysis, image, crop_size, context, selection, index, min_face_size, identity=None):
        node = "Face Crop"
        if crop_size % 8:
            raise MegaPortraitError(node, f"crop_size {crop_size} is not a multiple of 8.", "use e.g. 512, 768 or 1024.")
        if not isinstance(face_analysis, FaceAnalyzer):
            raise MegaPortraitError(node, "'face_analysis' is not a FACE_ANALYSIS.", "connect a Face Analysis Loader.")
        faces, fc = face_crop(node, face_analysis, image, int(crop_size), float(context), selection, int(index),
                              identity, int(min_face_size))
        return (faces, fc)


NODE_CLASS_MAPPINGS = {"MegaPortraitFaceCrop": FaceCropNode}
NODE_DISPLAY_NAME_MAPPINGS = {"MegaPortraitFaceCrop": "Face Crop (MegaPortrait)"}
