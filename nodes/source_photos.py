"""The Identity Net's data: a few photos of the source person, any sizes, made into one square IMAGE batch.

Photos are never stretched: each is cropped to a square (around the face when a FACE_ANALYSIS is given, else
centred) and resized to the training resolution. When there are fewer photos than wanted, documented
augmentations (mirror, zoom/shift, small rotation, brightness/contrast) make up the difference.

Photos are cropped once: a photo that already is such a crop (square, at the resolution, its face where this
crop would put it: e.g. the output of Load Source Photos reaching the trainer) is passed through untouched. A
marker on the IMAGE cannot do this: ComfyUI hands nodes plain tensors, and slicing a batch drops attributes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .common import CATEGORY, TITLES, MegaPortraitError, check_choice, check_number, log
from .face_analysis import FaceAnalyzer
from .image_ops import ellipse, grow_and_feather, resize, rgb, to_uint8_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def square_box(h: int, w: int, center: tuple | None = None, side: float | None = None) -> tuple[int, int, int]:
    """A square (x0, y0, side) inside an HxW image, as close as possible to ``center`` / ``side``."""
    max_side = min(h, w)
    s = int(round(min(side if side else max_side, max_side)))
    cx, cy = center if center is not None else (w / 2, h / 2)
    x0 = int(round(min(max(cx - s / 2, 0), w - s)))
    y0 = int(round(min(max(cy - s / 2, 0), h - s)))
    return x0, y0, s


MAX_ENLARGE = 4.0           # a face crop enlarged more than this to reach the resolution is too small to train on
CROP_TOLERANCE = 0.08       # a photo is already a face crop when its face square is within this of the whole image


def face_box(face, face_scale: float) -> tuple[float, float, float]:
    """The wanted square around a face: centre x, centre y, side (unclamped)."""
    cx, cy = face.center
    return cx, cy - 0.1 * face.size, face.size * face_scale      # a little more forehead/hair than chin


def face_square(analyzer: FaceAnalyzer, img: np.ndarray, face_scale: float) -> tuple[int, int, int] | None:
    faces = analyzer.detect(img)
    if not faces:
        return None
    cx, cy, side = face_box(max(faces, key=lambda f: f.area), face_scale)
    return square_box(img.shape[0], img.shape[1], (cx, cy), side)


def is_face_crop(h: int, w: int, resolution: int, wanted: tuple[float, float, float]) -> bool:
    """True when an HxW photo is already the face crop ``wanted`` (centre x, centre y, side) would make at
    ``resolution``: square, that size, and the wanted square is the whole photo to within CROP_TOLERANCE."""
    if h != w or h != resolution:
        return False
    cx, cy, side = wanted
    tol = CROP_TOLERANCE * h
    return abs(min(side, h) - h) <= tol and abs(cx - w / 2) <= tol and abs(cy - h / 2) <= tol


IDENTITY_CHECKS = ("error if not one person", "warn and go on")


def identity_outliers(distances: np.ndarray, threshold: float) -> list[tuple[int, float, int]]:
    """The photos that do not show the person most photos show, from the pairwise identity distances [N, N]:
    (index, median distance to the others, nearest other photo) of each photo whose median distance to the
    other photos is at or above ``threshold``. Empty when every photo is closer than that to most others."""
    d = np.asarray(distances, dtype=np.float64)
    n = d.shape[0]
    out = []
    if n < 2:
        return out
    for i in range(n):
        others = np.delete(d[i], i)
        med = float(np.median(others))
        if med >= threshold:
            j = int(np.argmin(np.where(np.arange(n) == i, np.inf, d[i])))
            out.append((i, med, j))
    return out


def check_one_person(node: str, analyzer: FaceAnalyzer, embeddings: dict[int, np.ndarray], names: list[str],
                     mode: str) -> None:
    """Raise (``mode`` "error ...") or log a warning when the photos' faces are not all one person, naming each
    outlier photo (counted from 0, with its file name) and its median identity distance to the others."""
    idx = sorted(embeddings)
    if len(idx) < 2:
        return
    thr = float(analyzer.threshold)
    dist = np.array([[analyzer.distance(embeddings[a], embeddings[b]) for b in idx] for a in idx])
    outliers = identity_outliers(dist, thr)
    if not outliers:
        return

    def label(k):
        i = idx[k]
        return f"{i} ({names[i]})" if i < len(names) and names[i] else str(i)
    parts = [f"photo {label(k)}: median identity distance {med:.2f} to the others (nearest: photo {label(j)}, "
             f"{dist[k, j]:.2f})" for k, med, j in outliers]
    everyone = len(outliers) == len(idx)
    problem = ("the photos do not show one person: no photo is closer than the backend's threshold "
               f"({thr}, {analyzer.metric}) to most others; " if everyone else
               f"{len(outliers)} of {len(idx)} photos show another person than the rest (threshold {thr}, "
               f"{analyzer.metric}): ") + "; ".join(parts) + "."
    if mode == IDENTITY_CHECKS[0]:
        raise MegaPortraitError(node, problem, "remove the outlier photo(s) so that all photos show the person to train, "
                                               f"or set identity_check to '{IDENTITY_CHECKS[1]}' to train on them anyway.")
    log.warning("MegaPortrait %s: %s Going on (identity_check).", node, problem)


@dataclass
class SquareCrops:
    """What :func:`square_crops` made of the photos."""
    photos: torch.Tensor                             # [N, R, R, 3]
    boxes: list[tuple[int, int, int] | None]         # each photo's crop square (x0, y0, side); None: used as it is
    faces: list[np.ndarray | None]                   # each crop's face box (x0, y0, x1, y1) in crop pixels, or None


def square_photos(node: str, photos: list[torch.Tensor], resolution: int, analyzer: FaceAnalyzer | None = None,
                  face_scale: float = 2.2, require_face: bool = True, identity_check: str | None = None,
                  names: list[str] | None = None) -> torch.Tensor:
    """The square photos of :func:`square_crops`."""
    return square_crops(node, photos, resolution, analyzer, face_scale, require_face, identity_check, names).photos


def square_crops(node: str, photos: list[torch.Tensor], resolution: int, analyzer: FaceAnalyzer | None = None,
                 face_scale: float = 2.2, require_face: bool = True, identity_check: str | None = None,
                 names: list[str] | None = None) -> SquareCrops:
    """Crop every [H, W, C] photo to a square (around its largest face with ``analyzer``) and resize it to
    ``resolution``. A photo that already is that face crop is used as it is (cropped once). With ``analyzer``,
    photos without a usable face (none found, or so small that the crop would be enlarged more than
    MAX_ENLARGE times) raise an error naming them; with ``require_face=False`` they get a centred crop instead.
    Without ``analyzer``, photos whose centred square would be enlarged more than MAX_ENLARGE times are refused.
    With ``analyzer`` and ``identity_check`` (one of IDENTITY_CHECKS), photos whose face is not the person the
    others show are named (see :func:`check_one_person`); ``names`` labels the photos in messages."""
    if identity_check and analyzer is not None:
        analyzer.require_embeddings(node, f"identity_check ('{identity_check}': do the photos show one person?)")
    out, boxes, faces, missing, tiny, kept = [], [], [], [], [], 0
    embeddings: dict[int, np.ndarray] = {}
    for i, p in enumerate(photos):
        p = rgb(p.float())
        h, w = p.shape[:2]
        box, face = None, None
        if analyzer is not None:
            img = to_uint8_rgb(p)
            found = analyzer.detect(img)
            if not found:
                missing.append(i)
            else:
                face = max(found, key=lambda f: f.area)
                if identity_check:
                    embeddings[i] = analyzer.embed(img, face)
                wanted = face_box(face, face_scale)
                if is_face_crop(h, w, resolution, wanted):
                    out.append(p.clamp(0, 1))
                    boxes.append(None)
                    faces.append(np.asarray(face.bbox, dtype=np.float64))
                    kept += 1
                    continue
                box = square_box(h, w, wanted[:2], wanted[2])
                if resolution / box[2] > MAX_ENLARGE:
                    tiny.append(f"{i} ({box[2]} px)")
                    box, face = None, None
        if box is None:
            box = square_box(h, w)
            if analyzer is None and resolution / box[2] > MAX_ENLARGE:
                tiny.append(f"{i} ({w}x{h} px)")
        x0, y0, s = box
        out.append(resize(p[None, y0:y0 + s, x0:x0 + s], resolution, resolution)[0])   # area / bicubic
        boxes.append(box)
        faces.append(None if face is None else
                     (np.asarray(face.bbox, dtype=np.float64) - [x0, y0, x0, y0]) * (resolution / s))
    problems = []
    if missing:
        problems.append(f"no face was found in photo(s) {', '.join(map(str, missing))}")
    if tiny:
        problems.append(f"the face crop of photo(s) {', '.join(tiny)} would be enlarged more than {MAX_ENLARGE:.0f}x "
                        f"to {resolution} px")
    if tiny and analyzer is None:
        raise MegaPortraitError(node, f"photo(s) {', '.join(tiny)} are too small: their centred square would be enlarged "
                                      f"more than {MAX_ENLARGE:.0f}x to {resolution} px (of {len(photos)}, counted from 0).",
                                f"use photos at least {resolution / MAX_ENLARGE:.0f} px on their shorter side, or a lower "
                                "resolution.")
    if problems and require_face:
        raise MegaPortraitError(node, "; ".join(problems) + f" (of {len(photos)}, counted from 0).",
                                "remove or replace those photos (the face clearly visible, the face crop at least "
                                f"{resolution / MAX_ENLARGE:.0f} px), lower min_face in the Face Analysis Loader, or "
                                "disconnect face_analysis to use centred crops.")
    if identity_check:
        check_one_person(node, analyzer, embeddings, list(names or []), identity_check)
    if problems:
        log.warning("MegaPortrait %s: %s; centred crops used for them.", node, "; ".join(problems))
    if kept:
        log.info("MegaPortrait %s: %d of %d photo(s) already were face crops at %d px: used as they are",
                 node, kept, len(photos), resolution)
    batch = torch.stack(out) if out else torch.zeros(0, resolution, resolution, 3)
    return SquareCrops(batch, boxes, faces)


def crop_masks(masks: torch.Tensor, boxes: list[tuple[int, int, int] | None], resolution: int) -> torch.Tensor:
    """Cut [N, H, W] masks of the photos the way :func:`square_crops` cut the photos (``boxes``): [N, R, R]."""
    out = []
    for m, box in zip(masks.float(), boxes):
        if box is not None:
            x0, y0, s = box
            m = m[y0:y0 + s, x0:x0 + s]
        out.append(resize(m[None, :, :, None], resolution, resolution)[0, :, :, 0])   # as the photo: area / bicubic
    return torch.stack(out).clamp(0, 1)


# The face-and-hair region around a detected face box (bw x bh), as fractions of the box: the hair above it, a little
# of the chin below it, the hair beside it, and the feathered edge (MagiCapture weights its loss by such a region).
HAIR_ABOVE, CHIN_BELOW, HAIR_BESIDE, FACE_FEATHER = 0.7, 0.1, 0.25, 0.15


def face_hair_mask(bbox: np.ndarray | None, resolution: int) -> torch.Tensor:
    """A feathered [R, R] mask of the face and hair around ``bbox`` (x0, y0, x1, y1 in crop pixels): an ellipse from
    HAIR_ABOVE box heights above the box to CHIN_BELOW below it, HAIR_BESIDE box widths beyond each side, its edge
    feathered by FACE_FEATHER box widths. No face (None): the whole crop (1 everywhere)."""
    if bbox is None:
        return torch.ones(resolution, resolution)
    x0, y0, x1, y1 = (float(v) for v in bbox)
    bw, bh = x1 - x0, y1 - y0
    top, bottom = y0 - HAIR_ABOVE * bh, y1 + CHIN_BELOW * bh
    m = ellipse(resolution, resolution, ((x0 + x1) / 2, (top + bottom) / 2), ((0.5 + HAIR_BESIDE) * bw, (bottom - top) / 2))
    return torch.from_numpy(grow_and_feather(m, 0, max(1, round(FACE_FEATHER * bw))))


def augment(photos: torch.Tensor, target: int, seed: int = 0,
            masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make ``photos`` [N, R, R, 3] up to ``target`` items: copies with a mirror (every other copy), zoom 1.0-1.15
    with a shift of up to 4%, rotation of up to 4 degrees, brightness and contrast within 6%. Originals first.
    ``masks`` [N, R, R] of the photos get the same mirror, zoom, shift and rotation. Returns (photos, masks)."""
    import kornia.geometry.transform as kt
    n, r = photos.shape[0], photos.shape[1]
    if n == 0 or target <= n:
        return photos, masks
    g = torch.Generator().manual_seed(seed)
    extra, extra_masks = [], []
    for k in range(target - n):
        src = photos[k % n].permute(2, 0, 1)[None]
        msk = None if masks is None else masks[k % n][None, None].float()
        if (k // n) % 2 == 0:
            src = src.flip(-1)
            msk = None if msk is None else msk.flip(-1)
        u = torch.rand(6, generator=g)
        zoom = 1.0 + 0.15 * u[0]
        angle = (u[1] * 2 - 1) * 4.0
        shift = (u[2:4] * 2 - 1) * 0.04 * r
        center = torch.tensor([[r / 2, r / 2]])
        m = kt.get_rotation_matrix2d(center, angle[None], torch.stack([zoom, zoom])[None])
        m[0, :, 2] += shift
        warped = kt.warp_affine(src, m.to(src.device), (r, r), mode="bicubic", padding_mode="reflection")
        if msk is not None:
            extra_masks.append(kt.warp_affine(msk, m.to(msk.device), (r, r), mode="bilinear",
                                              padding_mode="reflection")[0, 0].clamp(0, 1))
        bright = 1.0 + (u[4] * 2 - 1) * 0.06
        contrast = 1.0 + (u[5] * 2 - 1) * 0.06
        mean = warped.mean()
        warped = ((warped - mean) * contrast + mean) * bright
        extra.append(warped.clamp(0, 1)[0].permute(1, 2, 0))
    out_masks = None if masks is None else torch.cat([masks.float(), torch.stack(extra_masks)])
    return torch.cat([photos, torch.stack(extra)]), out_masks


def safe_input_path(node: str, base: str, rel: str) -> str:
    """``rel`` inside ``base`` (ComfyUI's input folder); absolute paths and '..' are refused."""
    rel = (rel or "").strip()
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise MegaPortraitError(node, f"'{rel}' is not a folder inside ComfyUI's input directory.",
                                "give a subfolder of ComfyUI/input (e.g. 'megaportrait_source'); absolute paths and '..' "
                                "are not allowed.")
    path = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([path, os.path.realpath(base)]) != os.path.realpath(base):
        raise MegaPortraitError(node, f"'{rel}' points outside ComfyUI's input directory.", "use a subfolder of ComfyUI/input.")
    return path


def load_image_file(path: str) -> torch.Tensor:
    """An image file as [H, W, 3] float in 0..1 (EXIF orientation applied, alpha dropped, grayscale as RGB).
    Raises OSError/ValueError (PIL's) for a file that is not a complete image: see :func:`load_photos`."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        arr = np.array(im, dtype=np.uint8)   # a writable copy: torch.from_numpy warns on a read-only PIL buffer
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"it decodes to an empty image {arr.shape}")
    return torch.from_numpy(arr).float().div_(255.0)


def load_photos(node: str, paths: list[str], base: str) -> list[torch.Tensor]:
    """Every file of ``paths`` as an image; the files that are not readable images (damaged, truncated, another
    format, too large for PIL's decompression-bomb limit) are all named in one error before any work is done."""
    from PIL import Image
    photos, bad = [], []
    for p in paths:
        try:
            photos.append(load_image_file(p))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            bad.append(f"{os.path.relpath(p, base)} ({type(e).__name__}: {str(e)[:120]})")
    if bad:
        raise MegaPortraitError(node, f"{len(bad)} of {len(paths)} file(s) cannot be read as images: {'; '.join(bad)}.",
                                "replace them with complete PNG/JPG/WebP photos, or remove them from the folder / the "
                                "file list.")
    return photos


class LoadSourcePhotos:
    DESCRIPTION = ("Loads the photos of the source person (any sizes) from a folder in ComfyUI's input directory and/or "
                   "a list of file names, crops each to a square around the face (or the centre) and resizes it, giving "
                   "one IMAGE batch for the Identity LoRA Trainer. Never stretches a photo.")
    CATEGORY = f"{CATEGORY}/Identity"
    RETURN_TYPES = ("IMAGE", "INT", "MASK")
    RETURN_NAMES = ("photos", "count", "face_masks")
    OUTPUT_TOOLTIPS = ("Square photos, resolution x resolution, originals first, then augmented copies.",
                       "Number of photos in the batch.",
                       "With face_analysis: a feathered mask of each photo's face and hair (for the trainer's "
                       "face-weighted loss); without it, or where no face was found, 1 everywhere.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "megaportrait_source", "tooltip":
                       "Subfolder of ComfyUI/input holding the source photos (upload them there, e.g. with the runner "
                       "or by copying). Empty = only the files listed below."}),
            "filenames": ("STRING", {"default": "", "multiline": True, "tooltip":
                          "Extra files in ComfyUI/input, one per line (e.g. photos uploaded with Load Image)."}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip":
                           "Side of the square output (512 for SD1.5, 1024 for SDXL)."}),
            "face_scale": ("FLOAT", {"default": 2.2, "min": 1.0, "max": 8.0, "step": 0.1, "tooltip":
                           "With face_analysis: square side = face size x this (2.2 = head and a bit of shoulders)."}),
            "min_photos": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip":
                           "If fewer photos are found, add augmented copies (mirror, zoom/shift, small rotation, "
                           "brightness/contrast) up to this number. 0 = never augment."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Seed of the augmentations."}),
        }, "optional": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Crop around the face (recommended). Photos without a face "
                                                           "then raise an error naming them."}),
            "identity_check": (list(IDENTITY_CHECKS), {"default": IDENTITY_CHECKS[0], "tooltip":
                               "With face_analysis: the photos must show one person. A photo whose identity distance to "
                               "most others is above the backend's threshold (dlib 0.6, insightface 0.65) is named in an "
                               "error; 'warn and go on' only logs it."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder, filenames, **kw):
        """Re-run when the files change (ComfyUI otherwise caches by widget values)."""
        try:
            import folder_paths
            base = folder_paths.get_input_directory()
        except ImportError:
            return float("nan")
        paths = _list_files(base, folder, filenames, strict=False)
        return ";".join(f"{p}:{os.path.getmtime(p)}:{os.path.getsize(p)}" for p in paths)

    def load(self, folder, filenames, resolution, face_scale, min_photos, seed, face_analysis=None,
             identity_check=IDENTITY_CHECKS[0]):
        node = TITLES["MegaPortraitLoadSourcePhotos"]
        import folder_paths
        face_scale = check_number(node, "face_scale", face_scale, 1.0, 8.0)
        check_choice(node, "identity_check", identity_check, IDENTITY_CHECKS)
        base = folder_paths.get_input_directory()
        paths = _list_files(base, folder, filenames, strict=True)
        if not paths:
            raise MegaPortraitError(node, f"no photos found in ComfyUI/input/{folder} or in the file list.",
                                    f"put 3-20 photos of the person in {os.path.join(base, folder)} (PNG/JPG/WebP).")
        photos = load_photos(node, paths, base)
        crops = square_crops(node, photos, int(resolution), face_analysis, face_scale,
                             identity_check=identity_check if face_analysis is not None else None,
                             names=[os.path.basename(p) for p in paths])
        batch = crops.photos
        masks = torch.stack([face_hair_mask(f, int(resolution)) for f in crops.faces])
        if min_photos and batch.shape[0] < min_photos:
            log.info("MegaPortrait: %d photo(s) found, adding %d augmented copies", batch.shape[0], min_photos - batch.shape[0])
            batch, masks = augment(batch, int(min_photos), int(seed), masks)
        return (batch, int(batch.shape[0]), masks)


def _list_files(base: str, folder: str, filenames: str, strict: bool) -> list[str]:
    node = TITLES["MegaPortraitLoadSourcePhotos"]
    paths = []
    if folder and folder.strip():
        d = safe_input_path(node, base, folder)
        if os.path.isdir(d):
            paths += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif strict:
            raise MegaPortraitError(node, f"the folder ComfyUI/input/{folder} does not exist.",
                                    f"create {d} and put the source photos in it, or list files in 'filenames'.")
    for line in (filenames or "").splitlines():
        line = line.strip()
        if not line:
            continue
        p = safe_input_path(node, base, line)
        if not os.path.isfile(p):
            if strict:
                raise MegaPortraitError(node, f"'{line}' is not a file in ComfyUI/input.", "check the file name (one per line).")
            continue
        paths.append(p)
    return paths


NODE_CLASS_MAPPINGS = {"MegaPortraitLoadSourcePhotos": LoadSourcePhotos}
