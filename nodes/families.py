"""The model families the pack knows, in one table: every stage reads its facts from here.

A row holds what differs between families: how ComfyUI's objects of the family are recognised (BaseModel class,
model-config class, control-model classes, LoRA keys), latent shape, text encoders and their kohya LoRA prefixes,
the text width, the LoRA target layers, the default resolution, the training target (eps / v / flow), how guidance
is given, the training conditions, the blocks to checkpoint, the control mechanism and the sampler defaults.
Adding a family (Flux.2 Klein, Qwen-Image, ...) means adding a row, the rule that recognises it, and tests.
Pure data and lookups: no ComfyUI import (objects are read by their class names and attributes).
"""
from __future__ import annotations

import re
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
# Z-Image (ComfyUI's NextDiT module names, as in the released files): the main transformer layers' fused qkv and
# output projection / + their SwiGLU feed-forward (w1, w2, w3); the noise and context refiners are left alone
_ZIMAGE_TARGETS = {
    "attention": r"layers\.\d+\.attention\.(qkv|out)",
    "attention + feed-forward": r"layers\.\d+\.(attention\.(qkv|out)|feed_forward\.w[123])",
}
_QWEN_TE_TARGETS = r".*self_attn\.(q_proj|k_proj|v_proj|o_proj)"

# the keys of the diffusion model's config (ComfyUI ``unet_config``) that hold the width of the text condition
TEXT_WIDTH_KEYS = ("context_dim", "context_in_dim", "cap_feat_dim")   # SD UNets, Flux (DiT), Z-Image (NextDiT)

CONTROL_NET, MODEL_PATCH = "CONTROL_NET", "MODEL_PATCH"

# blocks that add their residual to their input in place (``x += f(norm(x))``) in some ComfyUI versions, which breaks
# backward through a norm that saved x: (ComfyUI module, class, its norm layers, the source text of the in-place add,
# or None: in place in every version the pack supports). comfy_compat.residual_inplace_norms reads which of them do
# so in the running ComfyUI.
_SD_INPLACE = (("comfy.ldm.modules.attention", "BasicTransformerBlock", ("norm1", "norm2", "norm3"), "x += n"),)
_FLUX_INPLACE = (("comfy.ldm.flux.layers", "DoubleStreamBlock", ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2"),
                  "img +="),
                 ("comfy.ldm.flux.layers", "SingleStreamBlock", ("pre_norm",), "x +="))
_CLIP_INPLACE = (("comfy.clip_model", "CLIPLayer", ("layer_norm1", "layer_norm2"), None),)   # CLIP text encoders


@dataclass(frozen=True)
class Sampling:
    """Sampler defaults of a family (what its reference workflows use)."""
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str

    def widgets(self) -> dict:
        """cfg / sampler_name / scheduler as KSampler's inputs are named (steps differ per stage)."""
        return {"cfg": self.cfg, "sampler_name": self.sampler_name, "scheduler": self.scheduler}


_SD_SAMPLING = Sampling(25, 5.0, "dpmpp_2m", "karras")


@dataclass(frozen=True)
class Family:
    name: str                      # what users call it
    base_model_version: str        # kohya / A1111 ``ss_base_model_version``
    modelspec_architecture: str    # ``modelspec.architecture`` of a LoRA for it
    model_classes: tuple           # ComfyUI BaseModel class names (any in the MRO) that mean this family
    latent_channels: int
    latent_scale: int              # pixels per latent cell
    context_dim: int               # width of the text condition the diffusion model reads (TEXT_WIDTH_KEYS)
    text_encoders: tuple           # ((ComfyUI CLIP attribute, kohya LoRA prefix), ...)
    unet_lora_prefix: str
    lora_targets: dict = field(default_factory=dict)    # target name -> regex over diffusion-model module names
    te_lora_targets: str = _CLIP_TE_TARGETS
    default_resolution: int = 512
    target: str = "eps"            # training target by default: eps | v | flow (the MODEL's model_sampling decides)
    guidance: str = "cfg"          # cfg (classifier-free) | embedded (guidance-distilled: a guidance input)
    trainable: bool = True         # the identity LoRA trainer supports it
    train_guidance: float | None = None   # guidance input while training (guidance-distilled models)
    train_conds: tuple = ()        # text-encoder outputs besides the condition that the model's extra_conds takes
    te_trainable: tuple = ()       # ComfyUI CLIP attributes whose LoRA the trainer can train (() = all of them)
    checkpoint_blocks: tuple = ("BasicTransformerBlock", "ResBlock")   # block classes for gradient checkpointing
    exact_class: bool = False      # only the BaseModel class itself: ComfyUI derives other families from it
    config_classes: tuple = ()     # model-config (comfy.supported_models) class names required besides the BaseModel
    control: str = CONTROL_NET     # how its ControlNets reach sampling: CONTROL_NET (conditioning) | MODEL_PATCH
    control_classes: tuple = ()    # class names of its control models (() = SD UNet ControlNets, told by width)
    control_node: str = ""         # MODEL_PATCH families: the stock node that patches a MODEL with one of them
    lora_keys: str = ""            # regex matching a key only this family's LoRAs have ("" = SD UNet keys, by width)
    union_kind: str = ""           # its union ControlNets: what they are called ...
    union_modes: dict = field(default_factory=dict)     # ... and their mode numbers (from the model cards)
    sampling: Sampling = _SD_SAMPLING
    inplace_blocks: tuple = _SD_INPLACE + _CLIP_INPLACE    # its blocks that may add residuals in place (see above)


FAMILIES = (
    Family("SD1.x", "sd_v1", "stable-diffusion-v1/lora", ("BaseModel",), 4, 8, 768,
           (("clip_l", "lora_te"),), "lora_unet", _SD_TARGETS),
    Family("SD2.x", "sd_v2", "stable-diffusion-v2/lora", ("BaseModel", "SD21UNCLIP"), 4, 8, 1024,
           (("clip_h", "lora_te"),), "lora_unet", _SD_TARGETS, default_resolution=768, target="v"),
    Family("SDXL", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", ("SDXL", "SDXLRefiner"), 4, 8, 2048,
           (("clip_l", "lora_te1"), ("clip_g", "lora_te2")), "lora_unet", _SD_TARGETS, default_resolution=1024,
           union_kind="SDXL union (xinsir ProMax)",
           union_modes={"pose": 0, "depth": 1, "softedge": 2, "canny": 3, "lineart": 3, "normal": 4, "segment": 5,
                        "tile": 6, "repaint": 7}),
    Family("Flux.1", "flux1", "flux-1-dev/lora", ("Flux",), 16, 8, 4096,
           (("clip_l", "lora_te1"), ("t5xxl", "lora_te2")), "lora_unet", _FLUX_TARGETS, default_resolution=1024,
           target="flow", guidance="embedded", train_guidance=1.0, te_trainable=("clip_l",),
           checkpoint_blocks=("DoubleStreamBlock", "SingleStreamBlock"), exact_class=True,
           inplace_blocks=_FLUX_INPLACE + _CLIP_INPLACE,
           control_classes=("ControlNetFlux",), lora_keys=r"^lora_unet_(double|single)_blocks_",
           union_kind="Flux.1 union (InstantX / Shakker-Labs Union Pro)",
           union_modes={"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "low quality": 6},
           # guidance-distilled: the guidance goes in the conditioning (FluxGuidance), CFG stays off
           sampling=Sampling(25, 1.0, "euler", "simple")),
    # Z-Image shares the BaseModel class Lumina2 with Lumina 2 (and ComfyUI derives ZImagePixelSpace from it):
    # the model config ZImage tells them apart. Its text encoder is Qwen3-4B (width 2560); its Fun ControlNets are
    # model patches (ModelPatchLoader + ZImageFunControlnet). Sampling: ComfyUI's Z-Image-Turbo blueprint.
    Family("Z-Image", "zimage", "z-image/lora", ("Lumina2",), 16, 8, 2560,
           (("qwen3_4b", "lora_te"),), "lora_unet", _ZIMAGE_TARGETS, te_lora_targets=_QWEN_TE_TARGETS,
           default_resolution=1024, target="flow", train_conds=("attention_mask",), te_trainable=(),
           inplace_blocks=(),     # NextDiT's JointTransformerBlock and the Qwen3 layers add out of place (0.33)
           checkpoint_blocks=("JointTransformerBlock",), exact_class=True, config_classes=("ZImage",),
           control=MODEL_PATCH, control_classes=("ZImage_Control",), control_node="ZImageFunControlnet",
           lora_keys=r"^(lora_unet_|diffusion_model\.|transformer\.)?(layers|noise_refiner|context_refiner)[._]\d+[._]"
                     r"(attention|feed_forward)[._]",
           sampling=Sampling(8, 1.0, "res_multistep", "simple")),
)


def other_family(class_name: str) -> Family:
    """A row for a model family the table does not know (e.g. Flux.2, Chroma: ComfyUI derives their BaseModels from
    Flux; Lumina 2, which shares Z-Image's BaseModel): nothing is assumed about it, nothing is trained on it."""
    return Family(f"another family ({class_name})", "", "", (class_name,), 0, 8, 0, (), "lora_unet", {},
                  trainable=False)


def by_model_classes(class_names: set[str], context_dim: int, own_class: str | None = None,
                     config_names: set[str] | None = None) -> Family:
    """The family of a BaseModel from the class names in its MRO (``own_class``: its own class), its model config's
    class names (``config_names``: the MRO of ``model.model_config``) and its text width.

    A family with its own BaseModel class (SDXL, Flux, Lumina2) by that class (for ``exact_class`` rows the class
    itself, not a subclass: those are other families), and for rows with ``config_classes`` only when the model
    config is one of them (Z-Image vs Lumina 2); the plain BaseModel (SD1.x, SD2.x) by the width, SD1.x when the
    width is none of theirs (e.g. the tiny test models)."""
    config_names = config_names or set()
    for fam in FAMILIES:
        if "BaseModel" not in fam.model_classes and set(fam.model_classes) & class_names:
            if fam.config_classes and not set(fam.config_classes) & config_names:
                continue                     # the same BaseModel, another model config: another row or family
            if fam.exact_class and own_class is not None and own_class not in fam.model_classes:
                return other_family(own_class)
            return fam
    if any(set(fam.model_classes) & class_names for fam in FAMILIES if fam.config_classes):
        return other_family(own_class or "unknown")       # e.g. Lumina 2: Z-Image's BaseModel, another config
    plain = [fam for fam in FAMILIES if "BaseModel" in fam.model_classes]
    if "SD21UNCLIP" in class_names:
        return next(fam for fam in plain if fam.name == "SD2.x")
    return next((fam for fam in plain if fam.context_dim == context_dim), plain[0])


def _mro_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def text_width(model) -> int:
    """The width of the text condition a ComfyUI MODEL (a ModelPatcher) reads, from its diffusion model's config:
    ``context_dim`` (SD UNets), ``context_in_dim`` (Flux), ``cap_feat_dim`` (Z-Image); 0 when it has none."""
    cfg = getattr(model.model.model_config, "unet_config", {}) or {}
    return next((int(cfg[k]) for k in TEXT_WIDTH_KEYS if cfg.get(k)), 0)


def of_model(model) -> Family:
    """The row for a ComfyUI MODEL (a ModelPatcher), from its BaseModel's and model config's classes and its text
    width (duck-typed)."""
    base = model.model
    return by_model_classes(_mro_names(base), text_width(model), type(base).__name__, _mro_names(base.model_config))


def by_context_dim(context_dim: int) -> Family | None:
    """The family whose diffusion model reads text of this width (LoRA and ControlNet checks)."""
    for fam in FAMILIES:
        if fam.context_dim == context_dim:
            return fam
    return None


def by_base_model_version(version: str) -> Family | None:
    for fam in FAMILIES:
        if fam.base_model_version == version:
            return fam
    return None


def by_name(name: str) -> Family:
    return next(fam for fam in FAMILIES if fam.name == name)


def describe_context_dim(context_dim: int) -> str:
    fam = by_context_dim(context_dim)
    return fam.name if fam is not None else "another family"


# ------------------------------------------------------------------------------------------ controls
def of_control(control_model) -> Family | None:
    """The family a loaded control model (a CONTROL_NET's ``control_model``, a MODEL_PATCH's ``model``) is made for
    when its class says so (Flux.1's ControlNetFlux, Z-Image's ZImage_Control); None for SD UNet ControlNets (their
    text width tells SD1.x / SD2.x / SDXL apart) and unknown objects."""
    names = _mro_names(control_model)
    return next((fam for fam in FAMILIES if set(fam.control_classes) & names), None)


def control_fits(control_model, fam: Family) -> bool:
    """Whether a control model can drive a model of family ``fam``: one made for a family with its own control
    classes only that family; an SD UNet ControlNet only a family without them (the width check follows)."""
    made_for = of_control(control_model)
    return made_for is fam if made_for is not None else not fam.control_classes


# the layers of a ControlNet whose input is the text condition: SD UNet ControlNets cross-attend (attn2.to_k), Flux.1
# ones embed the text (txt_in); their weights' input width is the text width of the model the ControlNet is for
_CONTROL_TEXT_LAYERS = re.compile(r"(.*\.)?attn2\.to_k|txt_in")


def control_text_width(control_model) -> int | None:
    """The text width a loaded ControlNet (``control_model``) is made for, from its text-input layer; None when it
    has none (e.g. Z-Image's Fun ControlNets read the model's own caption tokens)."""
    if not hasattr(control_model, "named_modules"):
        return None
    for name, mod in control_model.named_modules():
        w = getattr(mod, "weight", None)
        if _CONTROL_TEXT_LAYERS.fullmatch(name) and w is not None and w.ndim == 2:
            return int(w.shape[1])
    return None


def control_inpaints(control_model) -> bool:
    """Whether a loaded model-patch control has an inpaint mode (a masked image and mask as extra inputs: the Z-Image
    Fun union ControlNets 2.0+, ``additional_in_dim`` > 0; the tile-only ones have none)."""
    return int(getattr(control_model, "additional_in_dim", 0) or 0) > 0


def describe_control(control_model) -> str:
    made_for = of_control(control_model)
    return made_for.name if made_for is not None else "SD/SDXL"


def patch_families() -> tuple:
    """The families whose controls are model patches (MODEL_PATCH: loaded by ModelPatchLoader, applied to the MODEL
    by a stock node), e.g. Z-Image's Fun ControlNets."""
    return tuple(fam for fam in FAMILIES if fam.control == MODEL_PATCH)


def union_kinds() -> dict:
    """{union kind: {mode name: number}} for the families that have union ControlNets."""
    return {fam.union_kind: fam.union_modes for fam in FAMILIES if fam.union_kind}


# ------------------------------------------------------------------------------------------ LoRA files
def of_lora_keys(keys) -> Family | None:
    """The family a LoRA is for when its keys say so (Flux.1's double/single blocks, Z-Image's layers); None for
    SD UNet LoRAs (their cross-attention width tells the family: ``by_context_dim``) and unknown ones."""
    for fam in FAMILIES:
        if fam.lora_keys:
            rx = re.compile(fam.lora_keys)
            if any(rx.match(k) for k in keys):
                return fam
    return None


# ------------------------------------------------------------------------------------------ training
def inplace_residual_blocks() -> tuple:
    """Every family's blocks that may add residuals in place (module, class, norms, marker), each once."""
    out = []
    for fam in FAMILIES:
        out += [b for b in fam.inplace_blocks if b not in out]
    return tuple(out)


def training_conditions(fam: Family, extras: dict, batch: int) -> dict:
    """The keyword arguments a family's ``BaseModel.extra_conds`` needs while training, besides the text condition
    and pooled output: the guidance input of guidance-distilled models (Flux.1 dev) and the text encoder's extra
    outputs the family reads (``train_conds``, e.g. Z-Image's attention mask), each expanded to ``batch``.
    ``extras``: what ``CLIP.encode_from_tokens(..., return_dict=True)`` returned besides cond and pooled_output."""
    kw = {}
    if fam.train_guidance is not None:
        kw["guidance"] = fam.train_guidance
    for name in fam.train_conds:
        v = extras.get(name)
        if v is not None:
            kw[name] = v.expand(batch, *v.shape[1:]) if hasattr(v, "expand") and v.ndim > 0 else v
    return kw
