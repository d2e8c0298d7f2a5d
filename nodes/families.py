"""The model families the pack knows, in one table: every stage reads its facts from here.

A row holds what differs between families: latent shape, text encoders and their kohya LoRA prefixes, the LoRA
target layers, the default resolution, the training target (eps / v / flow) and how guidance is given. Adding a
family (Flux.2 Klein, Z-Image, Qwen-Image, ...) means adding a row, the rule that recognises its BaseModel, and
tests. Pure data and lookups: no ComfyUI import.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# attention projections / + feed-forward of the SD UNet's transformer blocks (LDM module names)
_SD_TARGETS = {
    "attention": r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    "attention + feed-forward": r".*(\.attn[12]\.(to_q|to_k|to_v|to_out\.0)|\.ff\.net\.0\.proj|\.ff\.net\.2)",
}
_CLIP_TE_TARGETS = r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)"
# Flux.1 (BFL module names): the double blocks' attention (qkv + proj of the image and text streams) / + their MLPs;
# a single block's linear1 (qkv + MLP in) and linear2 (attention out + MLP out) are fused, so both count as attention
_FLUX_TARGETS = {
    "attention": r"(double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|single_blocks\.\d+\.linear[12])",
    "attention + feed-forward": r"(double_blocks\.\d+\.((img|txt)_attn\.(qkv|proj)|(img|txt)_mlp\.[02])"
                                r"|single_blocks\.\d+\.linear[12])",
}


@dataclass(frozen=True)
class Family:
    name: str                      # what users call it
    base_model_version: str        # kohya / A1111 ``ss_base_model_version``
    modelspec_architecture: str    # ``modelspec.architecture`` of a LoRA for it
    model_classes: tuple           # ComfyUI BaseModel class names (any in the MRO) that mean this family
    latent_channels: int
    latent_scale: int              # pixels per latent cell
    context_dim: int               # width of the text condition the diffusion model cross-attends to
    text_encoders: tuple           # ((ComfyUI CLIP attribute, kohya LoRA prefix), ...)
    unet_lora_prefix: str
    lora_targets: dict = field(default_factory=dict)    # target name -> regex over diffusion-model module names
    te_lora_targets: str = _CLIP_TE_TARGETS
    default_resolution: int = 512
    target: str = "eps"            # training target by default: eps | v | flow (the MODEL's model_sampling decides)
    guidance: str = "cfg"          # cfg (classifier-free) | embedded (guidance-distilled: a guidance input)
    trainable: bool = True         # the identity LoRA trainer supports it
    train_guidance: float | None = None   # guidance input while training (guidance-distilled models)
    te_trainable: tuple = ()       # ComfyUI CLIP attributes whose LoRA the trainer can train (() = all of them)
    checkpoint_blocks: tuple = ("BasicTransformerBlock", "ResBlock")   # block classes for gradient checkpointing
    exact_class: bool = False      # only the BaseModel class itself: ComfyUI derives other families from it


FAMILIES = (
    Family("SD1.x", "sd_v1", "stable-diffusion-v1/lora", ("BaseModel",), 4, 8, 768,
           (("clip_l", "lora_te"),), "lora_unet", _SD_TARGETS),
    Family("SD2.x", "sd_v2", "stable-diffusion-v2/lora", ("BaseModel", "SD21UNCLIP"), 4, 8, 1024,
           (("clip_h", "lora_te"),), "lora_unet", _SD_TARGETS, default_resolution=768, target="v"),
    Family("SDXL", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", ("SDXL", "SDXLRefiner"), 4, 8, 2048,
           (("clip_l", "lora_te1"), ("clip_g", "lora_te2")), "lora_unet", _SD_TARGETS, default_resolution=1024),
    Family("Flux.1", "flux1", "flux-1-dev/lora", ("Flux",), 16, 8, 4096,
           (("clip_l", "lora_te1"), ("t5xxl", "lora_te2")), "lora_unet", _FLUX_TARGETS, default_resolution=1024,
           target="flow", guidance="embedded", train_guidance=1.0, te_trainable=("clip_l",),
           checkpoint_blocks=("DoubleStreamBlock", "SingleStreamBlock"), exact_class=True),
)


def other_family(class_name: str) -> Family:
    """A row for a model family the table does not know (e.g. Flux.2, Chroma: ComfyUI derives their BaseModels from
    Flux): nothing is assumed about it, nothing is trained on it."""
    return Family(f"another family ({class_name})", "", "", (class_name,), 0, 8, 0, (), "lora_unet", {},
                  trainable=False)


def by_model_classes(class_names: set[str], context_dim: int, own_class: str | None = None) -> Family:
    """The family of a BaseModel from the class names in its MRO (``own_class``: its own class) and its UNet's text
    width: a family with its own BaseModel class (SDXL, Flux) by that class (for ``exact_class`` rows the class
    itself, not a subclass: those are other families); the plain BaseModel (SD1.x, SD2.x) by the width, SD1.x when
    the width is none of theirs (e.g. the tiny test models)."""
    for fam in FAMILIES:
        if "BaseModel" not in fam.model_classes and set(fam.model_classes) & class_names:
            if fam.exact_class and own_class is not None and own_class not in fam.model_classes:
                return other_family(own_class)
            return fam
    plain = [fam for fam in FAMILIES if "BaseModel" in fam.model_classes]
    if "SD21UNCLIP" in class_names:
        return next(fam for fam in plain if fam.name == "SD2.x")
    return next((fam for fam in plain if fam.context_dim == context_dim), plain[0])


def of_model(model) -> Family:
    """The row for a ComfyUI MODEL (a ModelPatcher), from its BaseModel's classes and text width (duck-typed)."""
    base = model.model
    cfg = base.model_config.unet_config
    width = int(cfg.get("context_dim") or cfg.get("context_in_dim") or 0)
    return by_model_classes({c.__name__ for c in type(base).__mro__}, width, type(base).__name__)


def by_context_dim(context_dim: int) -> Family | None:
    """The family whose diffusion model cross-attends to text of this width (LoRA and ControlNet checks)."""
    for fam in FAMILIES:
        if fam.context_dim == context_dim:
            return fam
    return None


def by_base_model_version(version: str) -> Family | None:
    for fam in FAMILIES:
        if fam.base_model_version == version:
            return fam
    return None


def describe_context_dim(context_dim: int) -> str:
    fam = by_context_dim(context_dim)
    return fam.name if fam is not None else "another family"
