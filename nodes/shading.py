"""Stage 3 of MegaPortrait: the Shading Net.

Off-the-shelf ControlNets re-render the face: one conditioned on the light map (the reference's shading, e.g. a
tile/blur ControlNet), one on the HF map (the source identity's detail, e.g. a lineart/softedge/tile ControlNet).
The ControlNets are applied with the stock ControlNetApplyAdvanced logic and sampled with ComfyUI's KSampler
machinery; strength 0 on both is plain sampling, exactly. Families whose ControlNets are model patches (the family
table's MODEL_PATCH: Z-Image's Fun ControlNets) have their own node with MODEL_PATCH inputs, which patches the MODEL
with the family's stock node (ZImageFunControlnet) instead; the CONTROL_NET node is the same for the others.
"""
from __future__ import annotations

import torch

from . import comfy_compat, families
from . import people as people_mod
from .common import CATEGORY, TITLES, MegaPortraitError, check_choice, check_image, check_number
from .sampling import (
    apply_controlnet,
    apply_model_patch,
    check_controlnet,
    check_model_patch,
    decode,
    encode,
    latent_zeros,
    sampling_inputs,
)


def _net_inputs(prefix: str, what: str, strength: float, start: float, end: float) -> dict:
    return {
        f"{prefix}_strength": ("FLOAT", {"default": strength, "min": 0.0, "max": 10.0, "step": 0.01,
                                         "tooltip": f"Strength of the {what} ControlNet (0 = off)."}),
        f"{prefix}_start": ("FLOAT", {"default": start, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": f"Where the {what} ControlNet starts (fraction of the schedule)."}),
        f"{prefix}_end": ("FLOAT", {"default": end, "min": 0.0, "max": 1.0, "step": 0.001,
                                    "tooltip": f"Where the {what} ControlNet stops (fraction of the schedule)."}),
    }


def shading_sample(node: str, model, positive, negative, vae, light_map: torch.Tensor, hf_map: torch.Tensor,
                   light_net, hf_net, light: tuple, hf: tuple, seed: int, steps: int, cfg: float, sampler_name: str,
                   scheduler: str, denoise: float, latent: dict) -> dict:
    for name, net, params in (("light_control_net", light_net, light), ("hf_control_net", hf_net, hf)):
        if net is not None and params[0] > 0:
            check_controlnet(node, name, net, model)
    if light_net is not None:
        positive, negative = apply_controlnet(positive, negative, light_net, light_map, *light, vae)[:2]
    if hf_net is not None:
        positive, negative = apply_controlnet(positive, negative, hf_net, hf_map, *hf, vae)[:2]
    if denoise <= 0:
        return latent.copy()
    import nodes as comfy_nodes  # ComfyUI's own KSampler path: seeds, noise, previews, model management
    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                       denoise=denoise)[0]


class ShadingSampler:
    DESCRIPTION = ("MegaPortrait Shading Net: re-renders the face with two off-the-shelf ControlNets, one on the light map "
                   "(reference shading) and one on the HF map (source identity detail). With an init image/latent and "
                   "denoise < 1 it refines that image; otherwise it samples from noise at the maps' size.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "image")
    OUTPUT_TOOLTIPS = ("The re-rendered face (latent).", "The re-rendered face: feed it to Paste Back.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "model": ("MODEL", {"tooltip": "The identity model (checkpoint + identity LoRA) or the base checkpoint."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt (with the trigger word when the identity LoRA is used)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
            "vae": ("VAE", {"tooltip": "Encodes the init image and decodes the result."}),
            "light_map": ("IMAGE", {"tooltip": "From the Light Map node (low-pass of the reference-like image)."}),
            "hf_map": ("IMAGE", {"tooltip": "From the HF Map node (high-pass of the source-like image); same size."}),
            "light_control_net": ("CONTROL_NET", {"tooltip": "ControlNet for the light map, e.g. a tile/blur ControlNet."}),
            "hf_control_net": ("CONTROL_NET", {"tooltip": "ControlNet for the HF map, e.g. lineart/softedge or tile."}),
        }
        req.update(_net_inputs("light", "light-map", 0.6, 0.0, 1.0))
        req.update(_net_inputs("hf", "HF-map", 0.5, 0.0, 0.7))
        req.update(sampling_inputs(steps=25, cfg=5.0, sampler="euler", scheduler="karras"))
        req["denoise"] = ("FLOAT", {"default": 0.75, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                          "With an init image/latent: how much to redraw (1 = ignore it). Without one, sampling starts "
                          "from noise whatever this is."})
        return {"required": req, "optional": {
            "init_image": ("IMAGE", {"tooltip": "Optional start image (e.g. the source-like image or the recombined maps); "
                                                "same size as the maps."}),
            "init_latent": ("LATENT", {"tooltip": "Optional start latent instead of init_image."}),
            "people": people_mod.PEOPLE_INPUT,
        }}

    def sample(self, model, positive, negative, vae, light_map, hf_map, light_control_net, hf_control_net,
               light_strength, light_start, light_end, hf_strength, hf_start, hf_end, seed, steps, cfg, sampler_name,
               scheduler, denoise, init_image=None, init_latent=None, people=None):
        node = TITLES["MegaPortraitShadingSampler"]
        light, hf, cfg, denoise = _check_numbers(node, light_strength, light_start, light_end, hf_strength, hf_start,
                                                 hf_end, cfg, denoise)
        _check_people(node, people, light_map, hf_map)
        light_map, hf_map, latent, denoise = _start_latent(node, model, vae, light_map, hf_map, denoise, init_image,
                                                           init_latent)
        out = _per_person(node, people, model, positive, light_map, hf_map, latent, lambda m, pos, lmap, hmap, lat:
                          shading_sample(node, m, pos, negative, vae, lmap, hmap, light_control_net, hf_control_net,
                                         light, hf, seed, steps, cfg, sampler_name, scheduler, denoise, lat))
        out.pop("noise_mask", None)
        return (out, decode(vae, out["samples"]))


def _check_people(node: str, people, light_map, hf_map) -> None:
    """With ``people``: its faces must be the maps' batch (checked before any work)."""
    if people is not None:
        people_mod.groups(node, people, max(check_image(node, light_map, "light_map").shape[0],
                                            check_image(node, hf_map, "hf_map").shape[0]), "the maps")


def _per_person(node: str, people, model, positive, light_map, hf_map, latent: dict, sample_one) -> dict:
    """``sample_one(model, positive, light_map, hf_map, latent) -> LATENT`` on the whole batch, or, with ``people``,
    on each person's faces with their own MODEL (and prompt), put back together in the batch's order."""
    samples, = people_mod.per_person(node, people, model, positive, latent["samples"].shape[0], "the maps",
                                     lambda *args: (sample_one(*args)["samples"],), light_map, hf_map, latent)
    return {**latent, "samples": samples}


def _check_numbers(node: str, light_strength, light_start, light_end, hf_strength, hf_start, hf_end, cfg, denoise):
    """((light strength, start, end), (hf strength, start, end), cfg, denoise), each checked."""
    nums = {k: check_number(node, k, v, 0.0, hi) for k, v, hi in (
        ("light_strength", light_strength, 10.0), ("light_start", light_start, 1.0), ("light_end", light_end, 1.0),
        ("hf_strength", hf_strength, 10.0), ("hf_start", hf_start, 1.0), ("hf_end", hf_end, 1.0),
        ("cfg", cfg, 100.0), ("denoise", denoise, 1.0))}
    return ((nums["light_strength"], nums["light_start"], nums["light_end"]),
            (nums["hf_strength"], nums["hf_start"], nums["hf_end"]), nums["cfg"], nums["denoise"])


def _start_latent(node: str, model, vae, light_map, hf_map, denoise: float, init_image=None, init_latent=None):
    """(light_map, hf_map, the latent to start from, denoise): the init latent, the encoded init image, or an empty
    latent at the maps' size (denoise 1), after checking sizes and batches."""
    light_map = check_image(node, light_map, "light_map")
    hf_map = check_image(node, hf_map, "hf_map")
    if light_map.shape[1:3] != hf_map.shape[1:3]:
        raise MegaPortraitError(node, f"light_map is {light_map.shape[2]}x{light_map.shape[1]} but hf_map is "
                                      f"{hf_map.shape[2]}x{hf_map.shape[1]}.",
                                "make both maps from the same face crop (same size).")
    h, w = light_map.shape[1], light_map.shape[2]
    if init_latent is not None:
        if not isinstance(init_latent, dict) or "samples" not in init_latent:
            raise MegaPortraitError(node, "'init_latent' is not a LATENT.", "connect a LATENT output.")
        latent = init_latent
        lh, lw = latent["samples"].shape[-2] * 8, latent["samples"].shape[-1] * 8
        if (lh, lw) != (h, w):
            raise MegaPortraitError(node, f"init_latent is {lw}x{lh} px but the maps are {w}x{h}.",
                                    "use maps and an init latent of the same face crop.")
    elif init_image is not None:
        init_image = check_image(node, init_image, "init_image")
        if init_image.shape[1:3] != light_map.shape[1:3]:
            raise MegaPortraitError(node, f"init_image is {init_image.shape[2]}x{init_image.shape[1]} but the maps are "
                                          f"{w}x{h}.", "use the same face crop size for the maps and the init image.")
        latent = {"samples": encode(node, vae, init_image)}
    else:
        if h % 8 or w % 8:
            raise MegaPortraitError(node, f"the maps are {w}x{h}; sides must be multiples of 8.", "use Face Crop sizes.")
        b = max(light_map.shape[0], hf_map.shape[0])
        latent = {"samples": latent_zeros(model, b, h, w)}
        denoise = 1.0
    nb, mb = latent["samples"].shape[0], max(light_map.shape[0], hf_map.shape[0])
    for name, t in (("light_map", light_map), ("hf_map", hf_map)):
        if t.shape[0] not in (1, nb):
            raise MegaPortraitError(node, f"{name} has a batch of {t.shape[0]} but there are {nb} latents.",
                                    "use one map or one per image.")
    if mb > nb and nb != 1:
        raise MegaPortraitError(node, f"maps batch {mb} vs {nb} latents.", "use matching batches.")
    return light_map, hf_map, latent, denoise


# ------------------------------------------------------------------------------------------ model-patch controls
_PATCH_FAMILIES = families.patch_families()
_PATCH_NAMES = ", ".join(f.name for f in _PATCH_FAMILIES)
_PATCH_DEFAULTS = _PATCH_FAMILIES[0].sampling


def patch_shading_sample(node: str, model, positive, negative, vae, light_map: torch.Tensor, hf_map: torch.Tensor,
                         light_patch, hf_patch, light: tuple, hf: tuple, seed: int, steps: int, cfg: float,
                         sampler_name: str, scheduler: str, denoise: float, latent: dict) -> dict:
    """The Shading Net with model-patch controls: the MODEL patched by the family's stock node (ZImageFunControlnet)
    with the light map through one control and the HF map through the other, then ComfyUI's KSampler path.
    Strength 0 on both is plain sampling, exactly."""
    for name, patch, params in (("light_model_patch", light_patch, light), ("hf_model_patch", hf_patch, hf)):
        if patch is not None and params[0] > 0:
            check_model_patch(node, name, patch, model)
    patched = apply_model_patch(node, model, light_patch, vae, light_map, *light)
    patched = apply_model_patch(node, patched, hf_patch, vae, hf_map, *hf)
    if denoise <= 0:
        return latent.copy()
    import nodes as comfy_nodes
    return comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                       denoise=denoise)[0]


class ShadingSamplerModelPatch:
    DESCRIPTION = (f"MegaPortrait Shading Net for model families whose ControlNets are model patches ({_PATCH_NAMES}: "
                   "the Fun ControlNets, loaded with ModelPatchLoader): re-renders the face with one control on the "
                   "light map (e.g. the tile Fun ControlNet) and one on the HF map (e.g. the union Fun ControlNet, "
                   "which reads edges/soft edges), each with its strength and schedule window, as the stock "
                   "ZImageFunControlnet node applies them. Other families: the Shading ControlNet Sampler.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "image")
    OUTPUT_TOOLTIPS = ("The re-rendered face (latent).", "The re-rendered face: feed it to Paste Back.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        base = ShadingSampler.INPUT_TYPES()
        req = {k: v for k, v in base["required"].items() if k not in ("light_control_net", "hf_control_net")}
        req["model"] = ("MODEL", {"tooltip": f"The identity model or the base model ({_PATCH_NAMES})."})
        ordered = {}
        for k, v in req.items():
            ordered[k] = v
            if k == "hf_map":
                ordered["light_model_patch"] = ("MODEL_PATCH", {"tooltip": "Control for the light map, from "
                                                "ModelPatchLoader (e.g. a tile Fun ControlNet)."})
                ordered["hf_model_patch"] = ("MODEL_PATCH", {"tooltip": "Control for the HF map, from ModelPatchLoader "
                                             "(e.g. the union Fun ControlNet)."})
        ordered.update(sampling_inputs(steps=_PATCH_DEFAULTS.steps, cfg=_PATCH_DEFAULTS.cfg,
                                       sampler=_PATCH_DEFAULTS.sampler_name, scheduler=_PATCH_DEFAULTS.scheduler))
        ordered["denoise"] = req["denoise"]
        return {"required": ordered, "optional": base["optional"]}

    def sample(self, model, positive, negative, vae, light_map, hf_map, light_model_patch, hf_model_patch,
               light_strength, light_start, light_end, hf_strength, hf_start, hf_end, seed, steps, cfg, sampler_name,
               scheduler, denoise, init_image=None, init_latent=None, people=None):
        node = TITLES["MegaPortraitShadingSamplerModelPatch"]
        light, hf, cfg, denoise = _check_numbers(node, light_strength, light_start, light_end, hf_strength, hf_start,
                                                 hf_end, cfg, denoise)
        _check_people(node, people, light_map, hf_map)
        models = [model] + ([p.model for p in people.persons] if people is not None else [])
        for name, patch in (("light_model_patch", light_model_patch), ("hf_model_patch", hf_model_patch)):
            for m in models:
                check_model_patch(node, name, patch, m)
        light_map, hf_map, latent, denoise = _start_latent(node, model, vae, light_map, hf_map, denoise, init_image,
                                                           init_latent)
        out = _per_person(node, people, model, positive, light_map, hf_map, latent, lambda m, pos, lmap, hmap, lat:
                          patch_shading_sample(node, m, pos, negative, vae, lmap, hmap, light_model_patch,
                                               hf_model_patch, light, hf, seed, steps, cfg, sampler_name, scheduler,
                                               denoise, lat))
        out.pop("noise_mask", None)
        return (out, decode(vae, out["samples"]))


# ------------------------------------------------------------------------------------------ union ControlNets
# Mode numbers of the union ControlNets people use, per kind (the family table's, from their model cards). ComfyUI's
# own SetUnionControlNetType numbers modes the SDXL (xinsir) way, which picks the wrong mode on the Flux ones.
UNION_MODES = families.union_kinds()
MODE_NAMES = ("blur", "tile", "canny", "lineart", "softedge", "depth", "pose", "gray", "low quality", "normal",
              "segment", "repaint")


def union_kind(control_net) -> tuple[str, int] | None:
    """(kind, number of modes) of a union ControlNet, None for a single-purpose one: a ControlNet of a family with
    its own control classes (Flux.1) counts its modes (``num_union_modes``), an SD UNet one its task embeddings."""
    cm = getattr(control_net, "control_model", None)
    fam = families.of_control(cm)
    if fam is not None and fam.union_kind and int(getattr(cm, "num_union_modes", 0) or 0) > 0:
        return fam.union_kind, int(cm.num_union_modes)
    te = getattr(cm, "task_embedding", None)
    if fam is None and isinstance(te, torch.Tensor):
        return next(f.union_kind for f in families.FAMILIES if f.union_kind and not f.control_classes), int(te.shape[0])
    return None


def union_mode_index(kind: str, mode: str) -> int:
    """The mode number for a mode name on a kind of union ControlNet (ValueError naming the modes it has)."""
    modes = UNION_MODES[kind]
    if mode not in modes:
        raise ValueError(f"a {kind} ControlNet has no '{mode}' mode; it has: {', '.join(modes)}")
    return modes[mode]


class UnionControlNetMode:
    DESCRIPTION = ("Sets the control mode of a union ControlNet (one model, several control types) by name, with the "
                   "right number for its kind: Flux.1 union models (InstantX, Shakker-Labs Union Pro) and SDXL union "
                   "models (xinsir) number their modes differently. For MegaPortrait's Shading Net: 'blur' (Flux) or "
                   "'tile' (SDXL) for the light map, 'canny' (Flux) or 'softedge'/'lineart' (SDXL) for the HF map.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("A copy of the ControlNet set to that mode (the loaded one is unchanged).",)
    FUNCTION = "set_mode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "control_net": ("CONTROL_NET", {"tooltip": "A union ControlNet from ControlNetLoader (e.g. "
                                                       "FLUX.1-dev-ControlNet-Union-Pro)."}),
            "mode": (list(MODE_NAMES), {"default": "blur", "tooltip": "The control type. Flux.1 union: canny, tile, "
                                        "depth, blur, pose, gray, low quality. SDXL union: pose, depth, softedge, "
                                        "canny/lineart, normal, segment, tile, repaint."}),
        }}

    def set_mode(self, control_net, mode):
        node = TITLES["MegaPortraitUnionControlNetMode"]
        check_choice(node, "mode", mode, MODE_NAMES)
        kind = union_kind(control_net)
        if kind is None:
            raise MegaPortraitError(node, "this ControlNet is not a union ControlNet (it has one control type).",
                                    "connect it to the sampler directly, or load a union ControlNet here.")
        try:
            index = union_mode_index(kind[0], mode)
        except ValueError as e:
            raise MegaPortraitError(node, str(e) + ".", "pick one of those modes.") from e
        if index >= kind[1]:
            raise MegaPortraitError(node, f"this {kind[0]} ControlNet has {kind[1]} modes, not mode {mode} ({index}).",
                                    "pick another mode.")
        try:
            return (comfy_compat.set_union_control_type(control_net, index),)
        except RuntimeError as e:
            raise MegaPortraitError(node, str(e) + ".", "update ComfyUI to use union ControlNets.") from e


NODE_CLASS_MAPPINGS = {"MegaPortraitShadingSampler": ShadingSampler, "MegaPortraitUnionControlNetMode": UnionControlNetMode,
                       "MegaPortraitShadingSamplerModelPatch": ShadingSamplerModelPatch}
