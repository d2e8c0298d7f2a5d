"""Stage 2 of MegaPortrait: the light map and the high-frequency (HF) map.

The light map is a low-pass of the reference-like face (it carries the reference's shading and colour but
not its identity details); the HF map is the matching high-pass of the source-like face (identity details,
no shading). Both come from one low-pass ``L``:

    light  = L(image)
    detail = image - L(image)                 (signed, in [-1, 1])
    hf     = 0.5 + detail * gain / 2          (an IMAGE in 0..1 that ControlNets can consume)

so ``light + (hf - 0.5) * 2 / gain == image``: recombining the light map and the HF map of the same image
gives the image back (exactly, up to float rounding, whenever ``gain <= 1``, because nothing is clipped).

All functions work on ComfyUI IMAGE tensors [B, H, W, C], any size and channel count, on the tensor's own
device, and are built on kornia's filters.
"""
from __future__ import annotations

import math

import torch

from .common import CATEGORY, TITLES, MegaPortraitError, check_choice, check_image, check_mask, check_number
from .image_ops import bchw_to_bhwc, bhwc_to_bchw

FILTERS = ("gaussian", "box")
SIGMA_MODES = ("relative to 512 px", "pixels")
REFERENCE_SIZE = 512
MAX_SIGMA = 4096.0


def effective_sigma(sigma: float, height: int, width: int, mode: str = SIGMA_MODES[0]) -> float:
    """Sigma in pixels. In the relative mode ``sigma`` is what it would be on a 512 px image and scales
    with the shorter side, so a 2048 px portrait is filtered like its 512 px downscale."""
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if mode == SIGMA_MODES[0]:
        return sigma * min(height, width) / REFERENCE_SIZE
    if mode == SIGMA_MODES[1]:
        return float(sigma)
    raise ValueError(f"unknown sigma mode {mode!r}; expected one of {SIGMA_MODES}")


def _kernel_size(sigma_px: float, filter_type: str, height: int, width: int) -> int:
    """Odd kernel size for the filter, capped so that reflect padding stays inside the image."""
    if filter_type == "gaussian":
        radius = math.ceil(3.0 * sigma_px)
    elif filter_type == "box":
        radius = math.ceil(sigma_px * math.sqrt(3.0))   # a box of this half-width has standard deviation ~ sigma
    else:
        raise ValueError(f"unknown filter {filter_type!r}; expected one of {FILTERS}")
    radius = min(radius, height - 1, width - 1)
    return 2 * max(radius, 0) + 1


BACKENDS = ("auto", "opencv", "kornia", "fft")
FFT_MIN_KERNEL = 151     # CPU Gaussians with kernels at least this wide go through the FFT (measured crossover)


STRIP_BYTES = 32 << 20   # working set of one strip of the FFT filter (rows, then columns): memory stays O(image)


def _fft_gaussian(x: torch.Tensor, sigma_px: float, k: int) -> torch.Tensor:
    """The same truncated, normalised Gaussian as OpenCV's GaussianBlur with reflect-101 borders, computed as two
    1-D FFT convolutions (O(log n) per pixel instead of O(k)); agrees with OpenCV to ~1e-6.

    Works on regions: the rows, then the columns, are filtered in strips of about STRIP_BYTES into the output, so
    the peak memory is the input, the output and one strip (no padded or complex copy of the whole frame)."""
    import cv2
    r = k // 2
    kern1d = torch.from_numpy(cv2.getGaussianKernel(k, sigma_px).astype("float32")[:, 0])
    b, h, w, c = x.shape
    out = torch.empty((b, h, w, c), dtype=torch.float32)
    spectra: dict[int, torch.Tensor] = {}

    def spectrum(n: int) -> torch.Tensor:
        if n not in spectra:
            kern = torch.zeros(n, dtype=torch.float32)
            kern[: r + 1] = kern1d[r:]
            kern[n - r:] = kern1d[:r]             # centred at index 0 (circular); wrap-around stays in the pad
            spectra[n] = torch.fft.rfft(kern)
        return spectra[n]

    def conv(a: torch.Tensor, dim: int) -> torch.Tensor:
        """Filter ``a`` along ``dim`` (reflect-101 borders); returns the unpadded result."""
        n = a.shape[dim]
        left = a.narrow(dim, 1, r).flip(dim)
        right = a.narrow(dim, n - 1 - r, r).flip(dim)
        ap = torch.cat([left, a, right], dim=dim)
        spec = torch.fft.rfft(ap, dim=dim)
        spec *= spectrum(n + 2 * r).view([-1 if d == dim % a.ndim else 1 for d in range(a.ndim)])
        return torch.fft.irfft(spec, n=n + 2 * r, dim=dim).narrow(dim, r, n)

    row_bytes = (w + 2 * r) * c * 4 * 4           # padded float row + its complex spectrum + the result
    rows = max(1, STRIP_BYTES // row_bytes)
    col_bytes = (h + 2 * r) * c * 4 * 4
    cols = max(1, STRIP_BYTES // col_bytes)
    for i in range(b):
        src, dst = x[i], out[i]
        for y0 in range(0, h, rows):              # 1. along the rows, strip by strip, into the output
            dst[y0:y0 + rows] = conv(src[y0:y0 + rows].float(), 1)
        for x0 in range(0, w, cols):              # 2. along the columns of the output, in place
            dst[:, x0:x0 + cols] = conv(dst[:, x0:x0 + cols].contiguous(), 0)
    return out.to(dtype=x.dtype)


def _filter_bhwc(x: torch.Tensor, sigma_px: float, filter_type: str, backend: str = "auto") -> torch.Tensor:
    """Filter [B, H, W, C] with reflect-101 borders. CPU tensors go through OpenCV (ComfyUI keeps IMAGEs on the
    CPU, and OpenCV's separable filters are ~10x faster there than conv2d), or for very wide Gaussians through
    an FFT convolution; tensors on an accelerator stay on it and use kornia. All compute the same kernel
    (agreement ~1e-6)."""
    h, w = x.shape[1], x.shape[2]
    k = _kernel_size(sigma_px, filter_type, h, w)
    if k < 3:
        return x.clone()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    cpu = x.device.type == "cpu"
    if filter_type == "gaussian" and (backend == "fft" or (backend == "auto" and cpu and k >= FFT_MIN_KERNEL)):
        return _fft_gaussian(x.detach().cpu(), sigma_px, k).to(x.device)
    if backend == "opencv" or (backend == "auto" and cpu):
        import cv2

        xs = x.detach().float().cpu().contiguous()
        border = cv2.BORDER_REFLECT_101

        def blur(src, dst=None):
            if filter_type == "gaussian":
                return cv2.GaussianBlur(src, (k, k), sigma_px, dst=dst, sigmaY=sigma_px, borderType=border)
            return cv2.blur(src, (k, k), dst=dst, borderType=border)
        if xs.shape[0] == 1:                         # one image: OpenCV allocates, the tensor wraps it (no copy)
            src = xs[0].numpy()
            out = torch.from_numpy(blur(src).reshape(src.shape))[None]
        else:
            out = torch.empty_like(xs)
            for i in range(xs.shape[0]):
                src, dst = xs[i].numpy(), out[i].numpy()
                if src.shape[-1] == 1:                 # OpenCV drops a trailing channel axis of 1
                    src, dst = src[..., 0], dst[..., 0]
                blur(src, dst)
        return out if (out.device, out.dtype) == (x.device, x.dtype) else out.to(device=x.device, dtype=x.dtype)
    import kornia.filters as kf

    xc = bhwc_to_bchw(x)
    if filter_type == "gaussian":
        y = kf.gaussian_blur2d(xc, (k, k), (sigma_px, sigma_px), border_type="reflect")
    else:
        y = kf.box_blur(xc, (k, k), border_type="reflect")
    return bchw_to_bhwc(y)


def low_pass(image: torch.Tensor, sigma: float, *, mode: str = SIGMA_MODES[0], filter_type: str = "gaussian",
             mask: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Low-pass filter an IMAGE [B, H, W, C].

    With a ``mask`` [B, H, W] (1 = region of interest) the filter is a normalised convolution inside the
    mask: pixels outside it do not bleed into the region (the background's colour does not tint the face's
    light map). Outside the mask the plain low-pass is used; soft masks blend the two.
    ``backend`` "auto" uses OpenCV for CPU tensors and kornia elsewhere (the output stays on the input's device).
    ``sigma`` = 0 returns a copy of the image. Kernels are capped at the image size (with reflection at the
    borders), so a huge sigma tends to a flat, mean-like image instead of failing.
    """
    h, w = image.shape[1], image.shape[2]
    sigma_px = effective_sigma(sigma, h, w, mode)
    if mask is None:
        return _filter_bhwc(image, sigma_px, filter_type, backend).contiguous()
    # in place where possible: the peak is about three images (input, inside, plain), not eight
    m = mask.to(image.dtype).unsqueeze(-1)
    inside = _filter_bhwc(torch.mul(image, m), sigma_px, filter_type, backend)
    den = _filter_bhwc(m, sigma_px, filter_type, backend)
    inside.div_(den.clamp_min(1e-6))
    plain = _filter_bhwc(image, sigma_px, filter_type, backend)
    inside.sub_(plain).mul_(m).masked_fill_(den <= 1e-6, 0.0)     # m * (inside - plain); plain where den ~ 0
    return plain.add_(inside).contiguous()


def light_map(image: torch.Tensor, sigma: float, **kw) -> torch.Tensor:
    """The light map: the low-pass of ``image`` (see :func:`low_pass`)."""
    return low_pass(image, sigma, **kw)


def hf_detail(image: torch.Tensor, sigma: float, **kw) -> torch.Tensor:
    """The signed high-frequency detail ``image - low_pass(image)``, in [-1, 1]."""
    low = low_pass(image, sigma, **kw)
    return torch.sub(image, low, out=low)          # in place: no extra full-size buffer


ENCODINGS = ("signed", "magnitude")


def encode_detail(detail: torch.Tensor, gain: float = 1.0, encoding: str = "signed") -> torch.Tensor:
    """Map signed detail to an IMAGE in 0..1.

    signed: ``0.5 + detail * gain / 2`` (mid-grey = no detail; invertible, clipped only when gain > 1);
    magnitude: ``|detail| * gain`` (black = no detail, white edges: the look of soft-edge / line-art ControlNet
    hints; not invertible)."""
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    if encoding == "signed":
        if detail.device.type == "cpu" and detail.dtype == torch.float32 and detail.is_contiguous():
            import cv2
            import numpy as np
            d = detail.numpy()
            hf = cv2.addWeighted(d, gain / 2.0, d, 0.0, 0.5)            # one pass: 0.5 + detail * gain / 2
            np.clip(hf, 0.0, 1.0, out=hf)
            return torch.from_numpy(hf.reshape(d.shape))
        return (detail * (gain / 2.0)).add_(0.5).clamp_(0.0, 1.0)
    if encoding == "magnitude":
        return (detail.abs().mul_(gain)).clamp_(0.0, 1.0)
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def decode_detail(hf: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Inverse of :func:`encode_detail`: ``(hf - 0.5) * 2 / gain``."""
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    return (hf - 0.5) * (2.0 / gain)


def hf_map(image: torch.Tensor, sigma: float, gain: float = 1.0, encoding: str = "signed",
           **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The HF map (encoded IMAGE in 0..1) and the raw signed detail of ``image``."""
    detail = hf_detail(image, sigma, **kw)
    return encode_detail(detail, gain, encoding), detail


def recombine(light: torch.Tensor, hf: torch.Tensor, gain: float = 1.0, clamp: bool = True) -> torch.Tensor:
    """``light + decode_detail(hf)``: the image whose light map is ``light`` and whose HF map is ``hf``."""
    out = light + decode_detail(hf, gain)
    return out.clamp(0.0, 1.0) if clamp else out


# ----------------------------------------------------------------------------------------------- nodes
_SIGMA_TIP = ("Low-pass strength (Gaussian sigma; for 'box' the box has the same spread). In 'relative to 512 px' "
              "mode this is the sigma on a 512 px image and scales with the image's shorter side, so 512 and 2048 px "
              "faces give alike maps. 0 = no filtering. Larger keeps only broad shading in the light map and moves "
              "more structure into the HF map. Default 8.")
_MODE_TIP = ("How sigma is measured: 'relative to 512 px' (scales with the image's shorter side) or 'pixels' "
             "(absolute).")
_FILTER_TIP = "Low-pass kernel: 'gaussian' (smooth, default) or 'box' (flat average, slightly faster on large sigmas)."
_GAIN_TIP = ("HF map contrast: hf = 0.5 + detail * gain / 2. 1.0 keeps the map exactly invertible (light map + HF map "
             "= image); larger values make faint detail more visible to the ControlNet but clip strong edges.")
_MASK_TIP = ("Optional region (e.g. the face mask). Inside it the low-pass only averages masked pixels, so the "
             "background does not bleed into the face's light map. Same size as the image; one mask or one per image.")


def _map_inputs(extra: dict | None = None) -> dict:
    req = {
        "image": ("IMAGE", {"tooltip": "The image to filter (any size, batch-aware)."}),
        "sigma": ("FLOAT", {"default": 8.0, "min": 0.0, "max": MAX_SIGMA, "step": 0.1, "tooltip": _SIGMA_TIP}),
        "sigma_mode": (list(SIGMA_MODES), {"default": SIGMA_MODES[0], "tooltip": _MODE_TIP}),
        "filter_type": (list(FILTERS), {"default": "gaussian", "tooltip": _FILTER_TIP}),
    }
    req.update(extra or {})
    return {"required": req, "optional": {"mask": ("MASK", {"tooltip": _MASK_TIP})}}


def _checked(node: str, image, sigma, sigma_mode, filter_type, mask):
    image = check_image(node, image)
    mask = check_mask(node, mask, image)
    sigma = check_number(node, "sigma", sigma)
    if sigma < 0:
        raise MegaPortraitError(node, f"sigma is {sigma}; it must be a number >= 0.", "set sigma to 0 or more.")
    if sigma > MAX_SIGMA:
        raise MegaPortraitError(node, f"sigma is {sigma}; the largest supported value is {MAX_SIGMA}.",
                                "use a smaller sigma: beyond the image size the light map is already flat.")
    check_choice(node, "sigma_mode", sigma_mode, SIGMA_MODES)
    check_choice(node, "filter_type", filter_type, FILTERS)
    return image, mask, sigma


class LightMap:
    DESCRIPTION = ("MegaPortrait light map: a low-pass of the (reference-like) face that keeps its lighting and colour "
                   "but not its identity details. Feed it to a tile/shading ControlNet.")
    CATEGORY = f"{CATEGORY}/Maps"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("light_map",)
    OUTPUT_TOOLTIPS = ("Low-pass image, same size and channels as the input.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return _map_inputs()

    def run(self, image, sigma, sigma_mode, filter_type, mask=None):
        image, mask, sigma = _checked(TITLES["MegaPortraitLightMap"], image, sigma, sigma_mode, filter_type, mask)
        return (light_map(image, sigma, mode=sigma_mode, filter_type=filter_type, mask=mask),)


class HFMap:
    DESCRIPTION = ("MegaPortrait high-frequency map: image minus the same low-pass as the Light Map, i.e. the "
                   "(source-like) face's identity details without its shading. Output as an IMAGE in 0..1: signed "
                   "hf = 0.5 + detail * gain / 2 (0.5 = no detail; Recombine Maps inverts it), or magnitude |detail| * gain "
                   "(edge-like hint for soft-edge / line-art ControlNets).")
    CATEGORY = f"{CATEGORY}/Maps"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("hf_map", "detail")
    OUTPUT_TOOLTIPS = ("Encoded HF map in 0..1 for ControlNets and previews.",
                       "Raw signed detail (image - low-pass), values in -1..1; for maths nodes, not for previews.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        types = _map_inputs({"gain": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 64.0, "step": 0.01,
                                                "tooltip": _GAIN_TIP})})
        types["optional"]["encoding"] = (list(ENCODINGS), {"default": "signed", "tooltip":
                                         "signed: 0.5 + detail*gain/2, invertible with Recombine Maps (default). magnitude: "
                                         "|detail|*gain, white edges on black, for soft-edge / line-art ControlNets."})
        return types

    def run(self, image, sigma, sigma_mode, filter_type, gain, mask=None, encoding="signed"):
        node = TITLES["MegaPortraitHFMap"]
        image, mask, sigma = _checked(node, image, sigma, sigma_mode, filter_type, mask)
        gain = check_number(node, "gain", gain)
        if gain <= 0:
            raise MegaPortraitError(node, f"gain is {gain}; it must be > 0.", "use a gain such as 1.0.")
        check_choice(node, "encoding", encoding, ENCODINGS)
        return hf_map(image, sigma, gain, encoding, mode=sigma_mode, filter_type=filter_type, mask=mask)


class RecombineMaps:
    DESCRIPTION = ("Light map + HF map -> image (light + (hf - 0.5) * 2 / gain). Recombining the maps of one image "
                   "returns it; mixing the light map of one face with the HF map of another is the Shading Net's target.")
    CATEGORY = f"{CATEGORY}/Maps"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Recombined image, clipped to 0..1.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "light_map": ("IMAGE", {"tooltip": "Output of the Light Map node."}),
            "hf_map": ("IMAGE", {"tooltip": "Output 'hf_map' of the HF Map node (same size as the light map)."}),
            "gain": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 64.0, "step": 0.01,
                               "tooltip": "The gain the HF map was made with."}),
        }}

    def run(self, light_map, hf_map, gain):
        node = TITLES["MegaPortraitRecombineMaps"]
        light = check_image(node, light_map, "light_map")
        hf = check_image(node, hf_map, "hf_map").to(light.device, light.dtype)
        if light.shape[1:] != hf.shape[1:]:
            raise MegaPortraitError(node, f"light_map is {tuple(light.shape[1:])} but hf_map is {tuple(hf.shape[1:])} "
                                          "(height, width, channels).", "make both maps from images of the same size.")
        if hf.shape[0] not in (1, light.shape[0]) and light.shape[0] != 1:
            raise MegaPortraitError(node, f"batch sizes differ: light_map {light.shape[0]}, hf_map {hf.shape[0]}.",
                                    "use equal batches, or a batch of 1 on either side.")
        gain = check_number(node, "gain", gain)
        if gain <= 0:
            raise MegaPortraitError(node, f"gain is {gain}; it must be > 0.", "use the HF map's gain.")
        return (recombine(light, hf, gain),)


NODE_CLASS_MAPPINGS = {
    "MegaPortraitLightMap": LightMap,
    "MegaPortraitHFMap": HFMap,
    "MegaPortraitRecombineMaps": RecombineMaps,
}
