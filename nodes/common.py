"""Shared helpers: the pack's error type, input checks and small tensor utilities.

Nothing here imports ComfyUI: node modules import ComfyUI lazily inside the functions that run in a graph,
so every pure function of the pack can be tested (and benchmarked) without a ComfyUI installation.
"""
from __future__ import annotations

import importlib
import logging
import math

import torch

CATEGORY = "MegaPortrait"
log = logging.getLogger("MegaPortrait")

# One title per node, keyed by node class: the UI shows "<title> (MegaPortrait)" (NODE_DISPLAY_NAME_MAPPINGS), errors
# say "[MegaPortrait <title>]" (the ``node`` of MegaPortraitError), and the help pages (web/docs/) and translations
# (locales/) are generated from the same table by tools/build_surfaces.py.
TITLES = {
    "MegaPortraitFaceAnalysisLoader": "Face Analysis Loader",
    "MegaPortraitFaceSimilarity": "Face Similarity",
    "MegaPortraitSelectBestIdentity": "Select Best Identity",
    "MegaPortraitFaceCrop": "Face Crop",
    "MegaPortraitAddPerson": "Add Person",
    "MegaPortraitAssignFacesToPeople": "Assign Faces to People",
    "MegaPortraitLoadSourcePhotos": "Load Source Photos",
    "MegaPortraitIdentityLoraTrainer": "Identity LoRA Trainer",
    "MegaPortraitLoadIdentityLora": "Load Identity LoRA",
    "MegaPortraitDualStrengthIdentitySampler": "Dual-Strength Identity Sampler",
    "MegaPortraitLightMap": "Light Map",
    "MegaPortraitHFMap": "HF Map",
    "MegaPortraitRecombineMaps": "Recombine Maps",
    "MegaPortraitShadingSampler": "Shading ControlNet Sampler",
    "MegaPortraitShadingSamplerModelPatch": "Shading Fun ControlNet Sampler",
    "MegaPortraitUnionControlNetMode": "Union ControlNet Mode",
    "MegaPortraitPasteBack": "Paste Back",
    "MegaPortraitHarmonize": "Harmonize",
}


def display_name(class_name: str) -> str:
    """The name ComfyUI shows for a node class (its title, marked as this pack's)."""
    return f"{TITLES[class_name]} (MegaPortrait)"


class MegaPortraitError(ValueError):
    """A user-facing error: names the node, says what is wrong and how to fix it.

    ComfyUI shows the message of the exception a node raises in its error dialog, so the message is
    written for the person looking at the graph.
    """

    def __init__(self, node: str, problem: str, fix: str = ""):
        self.node, self.problem, self.fix = node, problem, fix
        msg = f"[MegaPortrait {node}] {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class MissingPackage(ImportError):
    """An optional package is not installed: raised by the pure layers (no node name); ``require`` (or a node that
    catches it) turns it into a MegaPortraitError naming the node."""

    def __init__(self, module: str, pip_name: str, purpose: str, cause: Exception):
        self.module, self.pip_name, self.purpose, self.cause = module, pip_name, purpose, cause
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"the Python package '{pip_name}' is not installed or failed to import{what}: {cause}.")


def import_optional(module: str, pip_name: str | None = None, purpose: str = ""):
    """Import an optional dependency lazily, or raise MissingPackage (for the pure layers)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackage(module, pip_name or module, purpose, e) from e


def missing_package_error(node: str, e: MissingPackage) -> MegaPortraitError:
    """The node's error for a MissingPackage: what is missing and how to install it."""
    return MegaPortraitError(node, str(e), f"install it into ComfyUI's Python: python -m pip install {e.pip_name}, "
                                           "then restart ComfyUI.")


def require(module: str, node: str, pip_name: str | None = None, purpose: str = ""):
    """Import an optional dependency lazily, or raise a MegaPortraitError that says how to install it."""
    try:
        return import_optional(module, pip_name, purpose)
    except MissingPackage as e:
        raise missing_package_error(node, e) from e


def check_choice(node: str, name: str, value, allowed) -> None:
    """A combo value sent through the API must be one of the node's choices."""
    if value not in allowed:
        raise MegaPortraitError(node, f"unknown {name} {value!r}.", f"use one of {list(allowed)}.")


def check_number(node: str, name: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """A FLOAT widget's value as a finite float within [lo, hi]. ComfyUI's own min/max validation lets NaN through
    (every comparison with NaN is false), so every node checks its numbers itself before it spends any work."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise MegaPortraitError(node, f"{name} is {value!r}, not a number.", f"set {name} to a number.") from None
    v = float(value)
    if not math.isfinite(v):
        raise MegaPortraitError(node, f"{name} is {value}; it must be a finite number.",
                                f"set {name} to a number within its widget's range (NaN and infinity are not).")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"from {lo} to {hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise MegaPortraitError(node, f"{name} is {v}; it must be {rng}.", f"set {name} {rng}.")
    return v


def check_int(node: str, name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """An INT widget's value as an int within [lo, hi] (optional inputs reach nodes unvalidated on early-2024
    ComfyUI: anything a client sends arrives)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                         and not value.is_integer()):
        raise MegaPortraitError(node, f"{name} is {value!r}, not a whole number.", f"set {name} to a whole number.")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise MegaPortraitError(node, f"{name} is {v}; it must be from {lo} to {hi}.", f"set {name} from {lo} to {hi}.")
    return v


def check_bool(node: str, name: str, value) -> bool:
    """A BOOLEAN widget's value. Through the API any JSON value can arrive; a string such as "false" would be
    truthy, so anything but a boolean (or 0/1) is refused. (ComfyUI 0.33's validation converts with bool() before
    a node sees the value, so there "false" arrives as True and cannot be told apart.)"""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise MegaPortraitError(node, f"{name} is {value!r} ({type(value).__name__}), not a boolean.",
                            f"send {name} as JSON true or false (not a string or a number).")


def check_image(node: str, image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate a ComfyUI IMAGE: float tensor [batch, height, width, channels] with 1..4 channels."""
    if not isinstance(image, torch.Tensor):
        raise MegaPortraitError(node, f"'{name}' is a {type(image).__name__}, not an IMAGE tensor.",
                                "connect an IMAGE output (for example Load Image) to this input.")
    if image.ndim != 4:
        raise MegaPortraitError(
            node, f"'{name}' has shape {tuple(image.shape)}; an IMAGE must be [batch, height, width, channels].",
            "connect an IMAGE output; a MASK must be turned into an image first (Convert Mask to Image).")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise MegaPortraitError(node, f"'{name}' is empty (shape {tuple(image.shape)}).",
                                "feed a non-empty image batch.")
    if c not in (1, 3, 4):
        hint = " It looks channel-first [B, C, H, W]." if h in (1, 3, 4) else ""
        raise MegaPortraitError(node, f"'{name}' has {c} channels (shape {tuple(image.shape)}).{hint}",
                                "use an RGB (3), grayscale (1) or RGBA (4) IMAGE in ComfyUI's [B, H, W, C] layout.")
    if not image.is_floating_point():
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return image


def check_mask(node: str, mask: torch.Tensor | None, image: torch.Tensor, name: str = "mask") -> torch.Tensor | None:
    """Validate a ComfyUI MASK against an IMAGE and return it as float [B, H, W] on the image's device.

    A single mask is used for every image of the batch; otherwise batch sizes must match.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise MegaPortraitError(node, f"'{name}' is a {type(mask).__name__}, not a MASK.", "connect a MASK output.")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise MegaPortraitError(node, f"'{name}' has shape {tuple(mask.shape)}; a MASK must be [batch, height, width].",
                                "connect a MASK output (e.g. from Load Image's MASK or a mask node).")
    b, h, w = image.shape[0], image.shape[1], image.shape[2]
    if tuple(mask.shape[1:]) != (h, w):
        raise MegaPortraitError(
            node, f"'{name}' is {mask.shape[2]}x{mask.shape[1]} but the image is {w}x{h}.",
            "use a mask made for this image, or resize it to the image size first (e.g. an upscale/resize mask node).")
    if mask.shape[0] not in (1, b):
        raise MegaPortraitError(node, f"'{name}' has a batch of {mask.shape[0]} but the image batch is {b}.",
                                "use one mask for all images or one mask per image.")
    return mask.to(device=image.device, dtype=image.dtype).clamp(0.0, 1.0).expand(b, h, w)

