"""The image operations every stage shares: masks, resizing, channels, colour, and the crop geometry constants.

Masks are grown and feathered with OpenCV on the CPU (its elliptic dilation and Gaussian are exact and fast
there); every function that takes a tensor returns its result on that tensor's device, so a node fed IMAGEs on
the GPU (VAE Decode under ``--gpu-only``) never mixes devices. Nothing here imports ComfyUI.

Layouts: an IMAGE is [B, H, W, C] float in 0..1 with C = 1 (grayscale), 3 (RGB) or 4 (RGBA); a MASK [B, H, W].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------ crop geometry constants
FEATHER_SIGMAS = 2.5        # a feather of radius r is a Gaussian of sigma r / 2.5: it reaches 0 at r (2.5 sigma)
REDETECT_FRACTION = 5       # a face re-detected on its own square crop is at least 1/5 of the crop's side


def feather_sigma(radius: float) -> float:
    """The Gaussian sigma of a feather of ``radius`` pixels."""
    return radius / FEATHER_SIGMAS


def redetect_min_face(crop_size: int) -> int:
    """The smallest face searched for when a face is detected again on its square crop of ``crop_size`` px."""
    return crop_size // REDETECT_FRACTION


# ------------------------------------------------------------------------------------------------ layouts
def bhwc_to_bchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def bchw_to_bhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------------------------- channels
def rgb(x: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [..., 3]: grayscale replicated (a view), alpha dropped; on the input's device."""
    if x.shape[-1] == 1:
        return x.expand(*x.shape[:-1], 3)
    return x[..., :3]


def with_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """[..., 1] grayscale as [..., c] (a view); any other channel count as it is."""
    return x.expand(*x.shape[:-1], c) if x.shape[-1] == 1 else x


def rgb_numpy(x: torch.Tensor) -> np.ndarray:
    """One image [H, W, C] as a contiguous float32 HxWx3 RGB array (explicitly copied to the CPU, for OpenCV)."""
    return np.ascontiguousarray(rgb(x.detach().float().cpu()).numpy())


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI IMAGE [H, W, C] (float 0..1) -> HxWx3 uint8 RGB on the CPU (for the face detectors).
    Grayscale is replicated, alpha dropped."""
    x = rgb(image.detach().float().cpu())
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).contiguous().numpy()


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A float HxWxC array in 0..1 as uint8."""
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


# -------------------------------------------------------------------------------------------------- masks
def grow(m: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a float32 HxW mask by ``pixels`` (an elliptic structuring element), or erode it when negative
    (the outside of the image counts as 0)."""
    import cv2
    if not pixels:
        return m
    r = abs(int(pixels))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(m, k) if pixels > 0 else cv2.erode(m, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def feather(m: np.ndarray, radius: int) -> np.ndarray:
    """Soften a float32 HxW mask with a Gaussian of ``radius`` pixels (sigma :func:`feather_sigma`); values stay
    exactly 0 beyond ``radius`` pixels from the mask (the outside of the image counts as 0)."""
    import cv2
    if radius <= 0:
        return m
    f = int(radius)
    return cv2.GaussianBlur(m, (2 * f + 1, 2 * f + 1), feather_sigma(f), borderType=cv2.BORDER_CONSTANT)


def grow_and_feather(m: np.ndarray, grow_px: int, feather_px: int) -> np.ndarray:
    """:func:`grow`, then :func:`feather`, clipped to 0..1 (float32 HxW)."""
    return np.clip(feather(grow(np.asarray(m, dtype=np.float32), grow_px), feather_px), 0.0, 1.0)


def ellipse(h: int, w: int, center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """A float32 HxW mask: 1 inside the axis-aligned ellipse of ``center`` (x, y) and ``radii`` (rx, ry), else 0
    (pixel centres at +0.5)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    rx, ry = max(float(radii[0]), 1e-3), max(float(radii[1]), 1e-3)
    return ((((x - center[0]) / rx) ** 2 + ((y - center[1]) / ry) ** 2) <= 1.0).astype(np.float32)


def prepare_mask(mask: torch.Tensor, grow_px: int, feather_px: int) -> torch.Tensor:
    """A MASK [H, W] grown and feathered (:func:`grow_and_feather`, on the CPU), returned on the mask's device."""
    m = mask.detach().float().cpu().numpy().astype(np.float32)
    return torch.from_numpy(grow_and_feather(m, grow_px, feather_px)).to(mask.device)


def seam_band(mask: np.ndarray, width: int, feather_px: int) -> np.ndarray:
    """Band of +-``width`` pixels around the 0.5 level of a float32 HxW ``mask``, feathered (float32 in 0..1)."""
    import cv2
    if width <= 0:
        return np.zeros_like(mask)
    b = (mask > 0.5).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    band = (cv2.dilate(b, k) - cv2.erode(b, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)).astype(np.float32)
    return np.clip(feather(band, feather_px), 0.0, 1.0)


def mask_box(m: torch.Tensor, padding: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) around a [H, W] mask's support, padded by ``padding`` x its size on each side, inside the
    image."""
    h, w = m.shape
    ys, xs = torch.nonzero(m > 0, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    px, py = int(math.ceil((x1 - x0) * padding)), int(math.ceil((y1 - y0) * padding))
    return max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)


def mask_parts(m: torch.Tensor) -> list[torch.Tensor]:
    """The separate parts (8-connected support) of a [H, W] mask, left to right: each the mask with the others
    zeroed, on the mask's device. One part (or an empty mask) gives the mask itself."""
    import cv2
    n, labels = cv2.connectedComponents((m > 0).cpu().numpy().astype(np.uint8), connectivity=8)
    if n <= 2:
        return [m]
    lab = torch.from_numpy(labels).to(m.device)
    parts = [torch.where(lab == k, m, torch.zeros_like(m)) for k in range(1, n)]
    return sorted(parts, key=lambda p: int(torch.nonzero(p > 0)[:, 1].min()))


def union_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst`` becomes the union (the maximum) of ``dst`` and ``src``, in place (``src`` moved to its device)."""
    torch.maximum(dst, src.to(dst.device, dst.dtype), out=dst)


# ----------------------------------------------------------------------------------------------- resizing
def resize(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """[N, H, W, C] -> [N, h, w, C]: area averaging when shrinking both sides, bicubic otherwise; clamped to 0..1.
    The same size gives a copy."""
    c = bhwc_to_bchw(x)
    if (h, w) == tuple(c.shape[-2:]):
        return x.clone()
    if h < c.shape[-2] and w < c.shape[-1]:
        out = F.interpolate(c, size=(h, w), mode="area")
    else:
        out = F.interpolate(c, size=(h, w), mode="bicubic", align_corners=False)
    return bchw_to_bhwc(out).clamp(0, 1)


def resize_mask(m: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """[H, W] -> [h, w], bilinear, clamped to 0..1."""
    return F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """[N, H, W, C] RGB(A) -> [N, H', W', 3] with H', W' the next multiples of ``multiple``, padded at the bottom
    and right with the edge pixels (what a VAE needs)."""
    h, w = x.shape[1], x.shape[2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x[..., :3]
    return bchw_to_bhwc(F.pad(bhwc_to_bchw(x[..., :3]), (0, pw, 0, ph), mode="replicate"))


def pad_mask_to_multiple(m: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """[H, W] -> [H', W'] as :func:`pad_to_multiple`, padded with 0 (outside the image nothing is masked)."""
    ph, pw = (-m.shape[0]) % multiple, (-m.shape[1]) % multiple
    return F.pad(m[None, None], (0, pw, 0, ph), mode="constant", value=0.0)[0, 0]


# ------------------------------------------------------------------------------------------------- colour
def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] sRGB 0..1 -> [3, H, W] CIE Lab on the input's device (OpenCV on the CPU, kornia elsewhere; the
    same conversion)."""
    if x.device.type == "cpu":
        import cv2
        lab = cv2.cvtColor(np.ascontiguousarray(x.float().clamp(0, 1).numpy()), cv2.COLOR_RGB2Lab)
        return torch.from_numpy(lab).permute(2, 0, 1)
    import kornia.color as kc
    return kc.rgb_to_lab(x.permute(2, 0, 1)[None].clamp(0, 1))[0]


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """[3, H, W] CIE Lab -> [H, W, 3] sRGB 0..1 on the input's device."""
    if lab.device.type == "cpu":
        import cv2
        out = cv2.cvtColor(np.ascontiguousarray(lab.permute(1, 2, 0).float().numpy()), cv2.COLOR_Lab2RGB)
        return torch.from_numpy(out).clamp(0, 1)
    import kornia.color as kc
    return kc.lab_to_rgb(lab[None])[0].permute(1, 2, 0).clamp(0, 1)
