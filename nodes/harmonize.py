"""Stage 5 of MegaPortrait: the Harmonization Net.

Inpainting with the (identity) model fuses the pasted face with the body: the seam (or face) mask is grown and
feathered, optionally only a padded box around it is sampled at a working resolution (fast on 2048 px images),
the result is stitched back with the feathered mask, and every pixel where that mask is 0 is exactly the input's.
A mask of several separate parts (the union of the seams of every face of a group photo) is sampled part by part,
each in its own box, left to right, so each face keeps the working resolution.
"""
from __future__ import annotations

import math

import torch

from . import comfy_compat, families
from . import people as people_mod
from .common import CATEGORY, TITLES, MegaPortraitError, check_bool, check_image, check_int, check_mask, check_number
from .image_ops import mask_box, mask_parts, pad_mask_to_multiple, pad_to_multiple, prepare_mask, resize, resize_mask
from .lora_files import load_lora_file, lora_fit_problem
from .sampling import (
    apply_controlnet,
    apply_model_patch,
    check_controlnet,
    check_model_patch,
    decode,
    model_context_dim,
    sampling_inputs,
)


def working_size(bw: int, bh: int, resolution: int) -> tuple[int, int]:
    """Size (multiples of 8) of a bw x bh box scaled so that its longer side is ``resolution``."""
    s = resolution / max(bw, bh)
    return max(8, int(round(bw * s / 8)) * 8), max(8, int(round(bh * s / 8)) * 8)


def inpaint_hint(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hint for SD inpainting ControlNets (control_v11p_sd15_inpaint convention): masked pixels set to -1."""
    hint = image[..., :3].clone()
    hint[(mask > 0.5).expand(hint.shape[:-1])] = -1.0
    return hint


def harmonize_one(node: str, model, positive, negative, vae, image: torch.Tensor, mask: torch.Tensor, seed: int,
                  steps: int, cfg: float, sampler_name: str, scheduler: str, denoise: float, grow: int, feather: int,
                  crop_to_mask: bool, padding: float, resolution: int, control_net=None, control_strength: float = 1.0,
                  inpaint: bool = False, model_patch=None, choose=None):
    """One image [H, W, C] and mask [H, W] -> (image [H, W, C], [sampled latent dict per part]). With crop_to_mask,
    every separate part of the mask is sampled in its own box (the same seed), left to right. ``inpaint``: ``model``
    is an inpainting model (FLUX.1 Fill, SD inpainting), conditioned on the masked image as the stock
    InpaintModelConditioning does; otherwise masked img2img. ``model_patch``: a model-patch control with an inpaint
    mode (Z-Image's Fun union ControlNet) given each box's masked image and mask, on top of masked img2img.
    ``choose(box) -> (model, positive) | None``: the model and prompt of the mask part in ``box`` (several people:
    the person whose face the seam surrounds); every part is then sampled on its own."""
    m = prepare_mask(mask, grow, feather)
    if float(m.max()) <= 0.0 or denoise <= 0:
        return image.clone(), []
    out = image.clone()
    latents = []
    for part in (mask_parts(m) if crop_to_mask or choose is not None else [m]):
        mp = choose(mask_box(part, 0.0)) if choose is not None else None
        part_model, part_positive = mp if mp is not None else (model, positive)
        lat = _sample_part(node, part_model, part_positive, negative, vae, out, part, seed, steps, cfg, sampler_name,
                           scheduler, denoise, crop_to_mask, padding, resolution, control_net, control_strength, inpaint,
                           model_patch)
        latents.append(lat)
    return out, latents


def _sample_part(node: str, model, positive, negative, vae, out: torch.Tensor, m: torch.Tensor, seed, steps, cfg,
                 sampler_name, scheduler, denoise, crop_to_mask, padding, resolution, control_net, control_strength, inpaint,
                 model_patch=None) -> dict:
    """Inpaint where the prepared mask ``m`` [H, W] is > 0 and stitch the result into ``out`` [H, W, C] in place."""
    import nodes as comfy_nodes
    h, w = out.shape[:2]
    if crop_to_mask:
        x0, y0, x1, y1 = mask_box(m, padding)
        ww, wh = working_size(x1 - x0, y1 - y0, resolution)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
        ww, wh = int(math.ceil(w / 8) * 8), int(math.ceil(h / 8) * 8)
    box_img = out[y0:y1, x0:x1, :3][None].clone()
    box_m = m[y0:y1, x0:x1]
    if crop_to_mask:
        work = resize(box_img, ww, wh)
        work_m = resize_mask(box_m, ww, wh)
    else:   # pad to multiples of 8 with the edge pixels (the VAE needs them); cropped off again below
        work, work_m = pad_to_multiple(box_img, 8), pad_mask_to_multiple(box_m, 8)
    pos, neg = positive, negative
    if control_net is not None and control_strength > 0:
        pos, neg = apply_controlnet(pos, neg, control_net, inpaint_hint(work, work_m), control_strength, 0.0, 1.0, vae)[:2]
    if model_patch is not None and control_strength > 0:    # the stock ZImageFunControlnet's inpaint mode
        model = apply_model_patch(node, model, model_patch, vae, None, control_strength, 0.0, 1.0,
                                  inpaint_image=work, mask=work_m[None])
    if inpaint:     # the stock node: masked image + mask as the model's extra inputs, noise mask on the latent
        pos, neg, latent = comfy_nodes.InpaintModelConditioning().encode(pos, neg, work, vae, work_m[None])
    else:
        latent = {"samples": vae.encode(work), "noise_mask": work_m[None, None]}
    sampled = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, pos, neg, latent,
                                          denoise=denoise)[0]
    gen = decode(vae, sampled["samples"]).to(out.device)      # the VAE's output device may not be the image's
    gen = resize(gen, x1 - x0, y1 - y0) if crop_to_mask else gen[:, : y1 - y0, : x1 - x0]
    mb = box_m[..., None].to(out.dtype)
    blend = box_img[0] * (1 - mb) + gen[0].to(out.dtype) * mb
    keep = (box_m == 0)
    blend[keep] = box_img[0][keep]                  # exactly the input where the (feathered) mask is 0
    out[y0:y1, x0:x1, :3] = blend
    sampled.pop("noise_mask", None)
    return sampled


def with_guidance(conditioning: list, guidance: float) -> list:
    """A copy of a CONDITIONING with its guidance input set (what the stock FluxGuidance node does)."""
    return [[t, {**d, "guidance": guidance}] for t, d in conditioning]


def inpaint_setup(node: str, model, inpaint_model, positive, lora_name: str | None, strength: float, fill_guidance: float):
    """(the model to sample with, its positive conditioning) when an inpainting model is given: the inpainting model
    with the identity LoRA (``lora_name`` from the loras folder, as the stock LoraLoader applies it) and, for
    FLUX.1 Fill, its guidance."""
    if not comfy_compat.is_inpaint_model(inpaint_model):
        raise MegaPortraitError(node, "inpaint_model is not an inpainting model (it has no mask / masked-image inputs).",
                                "connect FLUX.1 Fill or an SD inpainting checkpoint, or leave inpaint_model empty to "
                                "inpaint with model (masked img2img).")
    fam, ifam = families.of_model(model), families.of_model(inpaint_model)
    if fam.name != ifam.name:
        raise MegaPortraitError(node, f"inpaint_model is {ifam.name} but model (and the prompt) is {fam.name}.",
                                f"use an inpainting model of the {fam.name} family.")
    if lora_name:
        import comfy.sd
        import folder_paths
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise MegaPortraitError(node, f"LoRA '{lora_name}' is not in the loras folder.",
                                    "wire the Identity LoRA Trainer's lora_name output, or train the LoRA first.")
        sd, meta = load_lora_file(node, path)
        problem = lora_fit_problem(sd, meta, ifam, model_context_dim(inpaint_model) or 0,
                                   type(inpaint_model.model.model_config).__name__)
        if problem:
            raise MegaPortraitError(node, f"{lora_name} {problem} (inpaint_model).",
                                    "wire the LoRA trained on this family, or leave lora_name unconnected.")
        inpaint_model = comfy.sd.load_lora_for_models(inpaint_model, None, sd, strength, 0.0)[0]
    if ifam.guidance == "embedded":
        positive = with_guidance(positive, fill_guidance)
    return inpaint_model, positive


def _chooser(people, per_person: dict, image_index: int):
    def choose(box):
        person = people_mod.person_of_part(people, image_index, box)
        return None if person is None else per_person[person.name]
    return choose


class Harmonize:
    DESCRIPTION = ("MegaPortrait Harmonization Net: inpaints around the pasted face's seam (or the whole face) so face and "
                   "body fuse, with model (masked img2img; on Z-Image guided by the Fun ControlNet union patch's "
                   "inpaint mode) or an inpainting model (FLUX.1 Fill, SD inpainting). "
                   "crop_to_mask samples only a padded box around the mask at a working resolution and stitches it back; "
                   "pixels outside the feathered mask are exactly the input's.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("image", "latent")
    OUTPUT_TOOLTIPS = ("The harmonized image, same size as the input.",
                       "The sampled latent of the region that was inpainted (the crop box at working resolution when "
                       "crop_to_mask is on; the whole image padded to multiples of 8 otherwise; the output image's "
                       "latent when the mask has several parts).")
    FUNCTION = "harmonize"

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "model": ("MODEL", {"tooltip": "The model to inpaint with (the identity model keeps the face consistent)."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt describing the portrait."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
            "vae": ("VAE", {"tooltip": "Encodes and decodes the region."}),
            "image": ("IMAGE", {"tooltip": "The composite from Paste Back (any size)."}),
            "mask": ("MASK", {"tooltip": "Where to inpaint: Paste Back's seam_mask (default use) or face_mask; same size "
                                         "as the image. Separate parts (the seams of several faces) are sampled one by "
                                         "one, each in its own box."}),
        }
        req.update(sampling_inputs(steps=20, cfg=5.0, sampler="euler", scheduler="karras"))
        req.update({
            "denoise": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                        "How much the masked region is redrawn (0.4-0.6 harmonizes without changing the face, as "
                        "FaceDetailer-style passes do)."}),
            "grow": ("INT", {"default": 8, "min": -512, "max": 512, "tooltip": "Grow (>0) or shrink (<0) the mask, in pixels."}),
            "feather": ("INT", {"default": 16, "min": 0, "max": 512, "tooltip":
                        "Soft edge of the stitch, in pixels; outside grow + feather the image is untouched."}),
            "crop_to_mask": ("BOOLEAN", {"default": True, "tooltip":
                             "Sample only a padded box around the mask at working_resolution (fast on large images); "
                             "one box per separate part of the mask."}),
            "padding": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 4.0, "step": 0.05, "tooltip":
                        "Context around the mask box, as a fraction of its size, when crop_to_mask is on."}),
            "working_resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip":
                                   "Longer side of the sampled box (512 for SD1.5, 1024 for SDXL)."}),
        })
        return {"required": req, "optional": {
            "control_net": ("CONTROL_NET", {"tooltip": "Optional inpainting ControlNet (e.g. control_v11p_sd15_inpaint): its "
                                                       "hint is the region with masked pixels set to -1."}),
            "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                                 "Strength of the inpainting ControlNet or inpaint model patch."}),
            "inpaint_model": ("MODEL", {"tooltip": "Optional inpainting model (FLUX.1 Fill, or an SD inpainting checkpoint "
                                                   "of model's family): when connected it inpaints instead of model, "
                                                   "conditioned on the masked image; otherwise model does masked img2img."}),
            "lora_name": ("STRING", {"forceInput": True, "tooltip": "Optional: the Identity LoRA Trainer's lora_name, "
                                     "applied to inpaint_model so the inpainted region keeps the identity."}),
            "inpaint_lora_strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.01, "tooltip":
                                      "Strength of lora_name on inpaint_model."}),
            "fill_guidance": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip":
                              "Guidance given to a FLUX.1 Fill inpaint_model (30 is its recommended value; the prompt's "
                              "FluxGuidance is for the dev model)."}),
            "inpaint_model_patch": ("MODEL_PATCH", {"tooltip":
                                    "Optional, Z-Image: the Fun ControlNet union patch (ModelPatchLoader) in its inpaint "
                                    "mode: each box's image and mask guide model (with the identity LoRA) while it "
                                    "redraws the masked region. Empty: masked img2img."}),
            "people": ("PEOPLE", {"tooltip": "Several people in one photo: Assign Faces to People's people. Each part "
                                             "of the mask is sampled with the model (and prompt; with inpaint_model, "
                                             "the LoRA) of the person whose face it surrounds."}),
        }}

    def harmonize(self, model, positive, negative, vae, image, mask, seed, steps, cfg, sampler_name, scheduler, denoise,
                  grow, feather, crop_to_mask, padding, working_resolution, control_net=None, control_strength=1.0,
                  inpaint_model=None, lora_name=None, inpaint_lora_strength=1.0, fill_guidance=30.0,
                  inpaint_model_patch=None, people=None):
        node = TITLES["MegaPortraitHarmonize"]
        inpaint_lora_strength = check_number(node, "inpaint_lora_strength", inpaint_lora_strength, -4.0, 4.0)
        fill_guidance = check_number(node, "fill_guidance", fill_guidance, 0.0, 100.0)
        cfg, denoise = check_number(node, "cfg", cfg, 0.0, 100.0), check_number(node, "denoise", denoise, 0.0, 1.0)
        padding = check_number(node, "padding", padding, 0.0, 4.0)
        crop_to_mask = check_bool(node, "crop_to_mask", crop_to_mask)
        control_strength = check_number(node, "control_strength", control_strength, 0.0, 10.0)
        grow, feather = check_int(node, "grow", grow, -512, 512), check_int(node, "feather", feather, 0, 512)
        steps = check_int(node, "steps", steps, 1, 10000)
        image = check_image(node, image)
        mask = check_mask(node, mask, image)
        if mask is None:
            raise MegaPortraitError(node, "no mask given.", "connect Paste Back's seam_mask or face_mask.")
        if working_resolution % 8:
            raise MegaPortraitError(node, f"working_resolution {working_resolution} is not a multiple of 8.", "use 512 or 1024.")
        per_person = {}
        if people is not None:      # several people: each seam with the model of the person whose face it surrounds
            for person, _ in people_mod.groups(node, people, len(getattr(people, "faces", ())), "people"):
                pm, pp = person.model, person.positive or positive
                if inpaint_model is not None:
                    pm, pp = inpaint_setup(node, pm, inpaint_model, pp, person.lora_name or lora_name,
                                           inpaint_lora_strength, fill_guidance)
                per_person[person.name] = (pm, pp)
        if inpaint_model is not None:
            model, positive = inpaint_setup(node, model, inpaint_model, positive, lora_name, inpaint_lora_strength,
                                            fill_guidance)
        if control_net is not None and control_strength > 0:
            check_controlnet(node, "control_net", control_net, model)
        if inpaint_model_patch is not None:
            check_model_patch(node, "inpaint_model_patch", inpaint_model_patch, model)
            if not families.control_inpaints(inpaint_model_patch.model):
                raise MegaPortraitError(node, "'inpaint_model_patch' has no inpaint mode (no masked-image inputs: e.g. a "
                                              "tile-only Fun ControlNet).",
                                        "load the Fun ControlNet union patch (2.0 or newer) with ModelPatchLoader, or "
                                        "leave inpaint_model_patch empty for masked img2img.")
        images, latents = [], []
        for i in range(image.shape[0]):
            out, lats = harmonize_one(node, model, positive, negative, vae, image[i], mask[i], (seed + i) % 2 ** 64, steps,
                                      cfg, sampler_name, scheduler, denoise, grow, feather, crop_to_mask, padding,
                                      working_resolution, control_net, control_strength, inpaint_model is not None,
                                      inpaint_model_patch,
                                      _chooser(people, per_person, i) if people is not None else None)
            images.append(out)
            latents.append(lats[0] if len(lats) == 1 else None)
        shapes = {tuple(lat["samples"].shape[1:]) for lat in latents if lat is not None}
        if any(lat is None for lat in latents) or len(shapes) != 1:
            # nothing sampled (empty mask / denoise 0), a mask of several parts or boxes of different sizes: the
            # latent of the output image
            lat_out = {"samples": vae.encode(pad_to_multiple(torch.stack(images), 8))}
        else:
            lat_out = {"samples": torch.cat([lat["samples"] for lat in latents])}
        return (torch.stack(images), lat_out)


NODE_CLASS_MAPPINGS = {"MegaPortraitHarmonize": Harmonize}
