"""Stage 4 of MegaPortrait: paste the re-rendered face back onto the reference, landmark-aligned.

1. Landmarks are detected again on the re-rendered face and a similarity transform onto the landmarks of the
   reference crop (FACE_CROP) is estimated, which corrects pose drift of the generated face.
2. The face is warped back into the reference with the inverse crop transform (sub-pixel, cubic, anti-aliased
   when it shrinks).
3. It is blended with a soft mask built in the crop frame (face ellipse, landmark hull or the whole crop; grow
   or shrink, feather), optionally after matching its colour/luminance to the reference face.

Outputs: the composite, the face mask and a seam mask (a band around the mask edge) for the harmonization
inpainter. Pixels where the face mask is 0 are exactly the reference's. A FACE_CROP of several faces of one image
(Face Crop's 'every face' selections) puts all of them back into that one image in one pass, left to right; the
masks are then the union of the faces' masks and seams.
"""
from __future__ import annotations

import numpy as np
import torch

from . import align as geometry  # (the module; "align" is also the node input)
from .common import CATEGORY, TITLES, MegaPortraitError, check_choice, check_image, log
from .face_analysis import FaceAnalyzer
from .face_crop import CropInfo, FaceCrop
from .image_ops import (
    grow_and_feather,
    lab_to_rgb,
    redetect_min_face,
    rgb,
    rgb_numpy,
    rgb_to_lab,
    seam_band,
    to_uint8,
    union_into,
    with_channels,
)

MASK_TYPES = ("face ellipse", "landmark hull", "whole crop")
ALIGN_MODES = ("landmarks", "none")
COLOR_MODES = ("none", "luminance", "mean (Lab)", "mean+std (Lab)")
MAX_DRIFT_SCALE = 1.5          # a re-detected face further off than this is not trusted (see _drift_ok)
MAX_DRIFT_ANGLE = 30.0


def crop_mask(info: CropInfo, mask_type: str, grow: int, feather: int) -> np.ndarray:
    """Soft face mask in the crop frame (float32 SxS in 0..1)."""
    import cv2
    s = info.crop_size
    m = np.zeros((s, s), dtype=np.float32)
    if mask_type == "whole crop":
        m[:] = 1.0
    elif mask_type == "face ellipse":
        c = info.template_to_crop(geometry.FACE_ELLIPSE[0][None])[0]
        axes = geometry.FACE_ELLIPSE[1] * (s / (1.0 + 2.0 * info.context)) / geometry.TEMPLATE_SIZE
        shift = 4   # sub-pixel drawing
        cv2.ellipse(m, (int(round(c[0] * 2 ** shift)), int(round(c[1] * 2 ** shift))),
                    (int(round(axes[0] * 2 ** shift)), int(round(axes[1] * 2 ** shift))), 0, 0, 360, 1.0, -1,
                    lineType=cv2.LINE_AA, shift=shift)
    elif mask_type == "landmark hull":
        pts = np.asarray(info.landmarks_crop, dtype=np.float64)
        if info.kind == "dlib68":
            outline = np.concatenate([pts[0:17], pts[17:27] - [0, 0.12 * s / (1 + 2 * info.context)]])
        else:   # 5 points: eyes, nose, (mouth) -> widen about the centroid to cover the face
            ctr = pts.mean(0)
            outline = (pts - ctr) * 2.2 + ctr + [0, 0.05 * s]
        hull = cv2.convexHull(np.round(outline).astype(np.int32))
        cv2.fillConvexPoly(m, hull, 1.0, lineType=cv2.LINE_AA)
    else:
        raise ValueError(f"unknown mask type {mask_type!r}")
    return grow_and_feather(m, grow, feather)


def _drift_ok(t: np.ndarray, crop_size: int) -> bool:
    scale, angle = geometry.scale_of(t), geometry.angle_of(t)
    shift = np.linalg.norm(t[:, 2] + (t[:, :2] - np.eye(2)) @ np.array([crop_size / 2, crop_size / 2]))
    return (1 / MAX_DRIFT_SCALE < scale < MAX_DRIFT_SCALE and abs(angle) < MAX_DRIFT_ANGLE and shift < 0.35 * crop_size)


def drift_transform(analyzer: FaceAnalyzer | None, face_img: np.ndarray, info: CropInfo) -> tuple[np.ndarray, str]:
    """Similarity (2x3) from the re-rendered face's crop frame onto the reference crop's landmarks, and a note.

    Falls back to the identity (no correction) when no matching face is found on the re-rendered image."""
    eye = geometry.IDENTITY
    if analyzer is None:
        return eye, "no FACE_ANALYSIS: no drift correction"
    s = info.crop_size
    faces = [f for f in analyzer.detect(to_uint8(face_img), min_face=redetect_min_face(s)) if f.kind == info.kind]
    if not faces:
        return eye, "no face found on the re-rendered image: pasted without drift correction"
    expected = info.landmarks_crop.mean(0)
    face = min(faces, key=lambda f: float(np.linalg.norm(f.landmarks.mean(0) - expected)))
    t = geometry.similarity(face.landmarks, info.landmarks_crop)       # least squares over every landmark
    if not _drift_ok(t, s):
        return eye, "the re-rendered face is too far from the reference pose: pasted without drift correction"
    return t, "aligned on re-detected landmarks"


def color_match(pasted: torch.Tensor, reference: torch.Tensor, region: torch.Tensor, mode: str) -> torch.Tensor:
    """Match the statistics of ``pasted`` to ``reference`` inside ``region`` (HxW bool), in CIE Lab."""
    if mode == "none" or int(region.sum()) < 16:
        return pasted
    p = rgb_to_lab(pasted)
    r = rgb_to_lab(reference)
    pv, rv = p[:, region], r[:, region]
    mp, mr = pv.mean(1, keepdim=True), rv.mean(1, keepdim=True)
    chans = [0] if mode == "luminance" else [0, 1, 2]
    out = p.clone()
    flat = out.view(3, -1)
    for c in chans:
        if mode == "mean+std (Lab)":
            sp, sr = pv[c].std().clamp_min(1e-3), rv[c].std()
            flat[c] = (flat[c] - mp[c]) * (sr / sp) + mr[c]
        else:
            flat[c] = flat[c] - mp[c] + mr[c]
    return lab_to_rgb(out)


def paste_into(out: torch.Tensor, mask: torch.Tensor, seam: torch.Tensor, reference: torch.Tensor, info: CropInfo,
               face: np.ndarray, analyzer: FaceAnalyzer | None, align: str, mask_type: str, grow: int, feather: int,
               seam_width: int, color: str) -> str:
    """Paste one face (float32 HfxWfx3) into ``out`` [H, W, C] (a CPU copy of ``reference``, perhaps holding other
    pasted faces already), in place; its mask and seam join ``mask`` and ``seam`` [H, W] (union: the maximum). Returns a note.

    Only the region the crop square maps to is read and written (warped, colour-matched against ``reference``,
    blended); inside it pixels with mask 0 keep their values exactly (x * 1 + face * 0)."""
    import cv2
    h, w = info.image_size
    s = info.crop_size
    fh, fw = face.shape[:2]
    # the re-rendered face may come at another resolution than the crop: bring it to crop pixels
    to_crop = geometry.resize_matrix((fw, fh), (s, s))
    face_at_crop = face if (fh, fw) == (s, s) else geometry.warp(face, to_crop, (s, s))
    if align == "landmarks":
        t, note = drift_transform(analyzer, face_at_crop, info)
    else:
        t, note = geometry.IDENTITY, "alignment off"
    inv = info.inverse
    m_face = geometry.compose(inv, geometry.compose(t, to_crop))      # face pixel -> reference pixel
    x0, y0, x1, y1 = geometry.crop_roi(inv, s, h, w)
    if x1 <= x0 or y1 <= y0:
        return note
    rw, rh = x1 - x0, y1 - y0
    pasted = np.clip(geometry.warp(face, geometry.translate(m_face, -x0, -y0), (rw, rh)), 0.0, 1.0)
    mask_c = crop_mask(info, mask_type, grow, feather)
    inv_roi = geometry.translate(inv, -x0, -y0)
    mask_r = np.clip(cv2.warpAffine(mask_c, inv_roi, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=0), 0.0, 1.0)
    seam_c = seam_band(mask_c, seam_width, max(1, feather // 2) if feather else 0)
    seam_r = np.clip(cv2.warpAffine(seam_c, inv_roi, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=0), 0.0, 1.0)
    ref_rgb = rgb(reference[y0:y1, x0:x1])
    pasted_t = color_match(torch.from_numpy(pasted), ref_rgb.contiguous(), torch.from_numpy(mask_r > 0.5), color)
    mt = torch.from_numpy(mask_r)[..., None]
    region = out[y0:y1, x0:x1, :3]
    region.copy_(region * (1.0 - mt) + pasted_t * mt)
    union_into(mask[y0:y1, x0:x1], torch.from_numpy(mask_r))
    union_into(seam[y0:y1, x0:x1], torch.from_numpy(seam_r))
    return note


def paste_back(node: str, reference: torch.Tensor, face_crop: FaceCrop, face: torch.Tensor,
               analyzer: FaceAnalyzer | None = None, align: str = "landmarks", mask_type: str = "face ellipse",
               grow: int = 0, feather: int = 24, seam_width: int = 16, color: str = "none"):
    """Batch paste-back: face[i] goes back where crop i of the FACE_CROP was cut, into the reference image that
    crop came from, so every face of an image (Face Crop's 'every face' selections) lands in one composite; a
    FACE_CROP of one crop with a batch of faces gives one composite per face. Returns (images [B,H,W,C], masks
    [B,H,W], seams [B,H,W] (each the union over the image's faces), notes (one per face)).

    Memory: the outputs are allocated once and faces are pasted into them region by region (no other copy of a
    whole image is made). The work runs on the CPU (OpenCV); a reference on another device (a GPU) is copied to
    the CPU once and the outputs are returned on the reference's device."""
    reference = check_image(node, reference, "reference")
    face = check_image(node, face, "face")
    if not isinstance(face_crop, FaceCrop) or len(face_crop) == 0:
        raise MegaPortraitError(node, "'face_crop' is not a FACE_CROP.", "connect the face_crop output of Face Crop.")
    n_ref, n_face, n_crop = reference.shape[0], face.shape[0], len(face_crop)
    n_img = face_crop.n_references
    if n_ref != n_img:
        raise MegaPortraitError(node, f"the reference batch has {n_ref} image(s) but the FACE_CROP describes {n_img}.",
                                "connect the same reference image that went into Face Crop.")
    broadcast = n_crop == 1 and n_face > 1
    if n_face != n_crop and not broadcast:
        raise MegaPortraitError(node, f"{n_face} face(s) for {n_crop} crop(s): batch sizes must match.",
                                "feed one re-rendered face per crop of Face Crop (in its order), or a single crop with "
                                "any number of faces.")
    if face.shape[1] != face.shape[2]:
        raise MegaPortraitError(node, f"the face image is {face.shape[2]}x{face.shape[1]}, not square.",
                                "paste back the square face crop (or its re-rendering at any square size).")
    for info in face_crop.items:
        if tuple(info.image_size) != tuple(reference.shape[1:3]):
            raise MegaPortraitError(node, f"the reference is {reference.shape[2]}x{reference.shape[1]} but the FACE_CROP "
                                          f"was made from a {info.image_size[1]}x{info.image_size[0]} image.",
                                    "connect the image that went into Face Crop as 'reference'.")
    ref = reference.detach().float().cpu()     # warped and blended by OpenCV on the CPU; the outputs go back below
    _, h, w, c = ref.shape
    # output k: (reference image, [crop items pasted into it])
    jobs = [(0, [0])] * n_face if broadcast else \
        [(k, [i for i in range(n_crop) if face_crop.image_index(i) == k]) for k in range(n_img)]
    images = torch.empty((len(jobs), h, w, 3 if c == 1 else c), dtype=torch.float32)
    masks = torch.zeros((len(jobs), h, w), dtype=torch.float32)
    seams = torch.zeros((len(jobs), h, w), dtype=torch.float32)
    notes = []
    for j, (k, items) in enumerate(jobs):
        images[j].copy_(with_channels(ref[k], images.shape[-1]))
        for i in items:
            f = rgb_numpy(face[j if broadcast else i])
            notes.append(paste_into(images[j], masks[j], seams[j], ref[k], face_crop[i], f, analyzer, align, mask_type,
                                    int(grow), int(feather), int(seam_width), color))
    dev = reference.device
    return images.to(dev), masks.to(dev), seams.to(dev), notes


class PasteBackNode:
    DESCRIPTION = ("Pastes the re-rendered face back onto the reference: re-detects its landmarks and aligns them to "
                   "the reference crop's (corrects pose drift), warps it back with sub-pixel accuracy and blends it with "
                   "a soft mask. Outputs the composite, the face mask and a seam mask for the Harmonize node.")
    CATEGORY = f"{CATEGORY}/Face"
    RETURN_TYPES = ("IMAGE", "MASK", "MASK")
    RETURN_NAMES = ("image", "face_mask", "seam_mask")
    OUTPUT_TOOLTIPS = ("Reference with the new face(s); pixels outside face_mask are unchanged.",
                       "Soft mask of the pasted face(s) in the reference frame (the union over the image's faces).",
                       "Band around the face mask's edge (every face's): inpaint this to harmonize the seams.")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "reference": ("IMAGE", {"tooltip": "The full reference portrait that went into Face Crop."}),
            "face_crop": ("FACE_CROP", {"tooltip": "From Face Crop: how each crop was made and which image it came from."}),
            "face": ("IMAGE", {"tooltip": "The re-rendered face(s) (square; any size, e.g. the Shading sampler's output): "
                                          "one per crop, in Face Crop's order; all faces of one image go back into it."}),
            "align": (list(ALIGN_MODES), {"default": "landmarks", "tooltip":
                      "landmarks: re-detect the face and correct its pose drift (needs face_analysis). none: paste the "
                      "crop exactly where it was cut."}),
            "mask_type": (list(MASK_TYPES), {"default": "face ellipse", "tooltip":
                          "Blend region: an ellipse from the alignment template (forehead to chin), the hull of the "
                          "landmarks (68-point: the jaw line), or the whole crop square."}),
            "grow": ("INT", {"default": 0, "min": -256, "max": 256, "tooltip":
                     "Grow (>0) or shrink (<0) the mask, in crop pixels."}),
            "feather": ("INT", {"default": 24, "min": 0, "max": 256, "tooltip":
                        "Soft edge width in crop pixels (Gaussian)."}),
            "seam_width": ("INT", {"default": 16, "min": 0, "max": 256, "tooltip":
                           "Half-width of the seam band around the mask edge, in crop pixels."}),
            "color_match": (list(COLOR_MODES), {"default": "mean (Lab)", "tooltip":
                            "Match the pasted face's colour to the reference face before blending: none, luminance only, "
                            "Lab mean, or Lab mean and contrast."}),
        }, "optional": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Needed for align = landmarks (use the same loader as Face Crop)."}),
        }}

    def paste(self, reference, face_crop, face, align, mask_type, grow, feather, seam_width, color_match,
              face_analysis=None):
        node = TITLES["MegaPortraitPasteBack"]
        if align == "landmarks" and face_analysis is None:
            raise MegaPortraitError(node, "align = landmarks needs the face_analysis input.",
                                    "connect the Face Analysis Loader, or set align to none.")
        for name, val, allowed in (("align", align, ALIGN_MODES), ("mask_type", mask_type, MASK_TYPES),
                                   ("color_match", color_match, COLOR_MODES)):
            check_choice(node, name, val, allowed)
        img, mask, seam, notes = paste_back(node, reference, face_crop, face, face_analysis, align, mask_type, grow,
                                            feather, seam_width, color_match)
        for i, n in enumerate(notes):
            if "without" in n:
                log.warning("MegaPortrait Paste Back (item %d): %s", i, n)
        return (img, mask, seam)


NODE_CLASS_MAPPINGS = {"MegaPortraitPasteBack": PasteBackNode}
