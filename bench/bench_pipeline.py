"""Glue overhead: the shipped MegaPortrait workflow (with an identity LoRA; training is benchmarked separately)
against a stock-node graph that runs the same sampler, ControlNet and VAE passes (KSampler x4, VAEEncode/Decode,
ControlNetApplyAdvanced, SetLatentNoiseMask, image crop/scale/composite), in the real host ComfyUI, tiny models,
CPU. The difference is what the pack adds: face analysis, alignment, maps, masks, colour matching. The workflow's
previews of intermediate images are left out (stock nodes, which the stock graph does not have)."""
from __future__ import annotations

import json
import os

from common import REPO, comfy, emit, machine, pack, ratio, size_workflow, timeit_pair

SIZE = 256        # face crop / working resolution
STEPS = 10


def ours_prompt() -> dict:
    import runner
    with open(os.path.join(REPO, "workflows", "api", "megaportrait_with_lora.json")) as f:
        p = size_workflow(runner.smoke_workflow(json.load(f)), SIZE, STEPS)
    # the workflow's previews of intermediate images are stock nodes the stock graph does not have: not glue
    return {k: n for k, n in p.items() if n["class_type"] != "PreviewImage"}


def stock_prompt() -> dict:
    """The same model work with stock nodes only (the face region is a fixed crop)."""
    ks = {"seed": 1, "steps": STEPS, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    p = {
        "1": ("CheckpointLoaderSimple", {"ckpt_name": "tiny_sd15.safetensors"}),
        "2": ("LoraLoader", {"model": ["1", 0], "clip": ["1", 1], "lora_name": "tiny_lora.safetensors",
                             "strength_model": 1.0, "strength_clip": 1.0}),
        "3": ("VAELoader", {"vae_name": "tiny_vae.safetensors"}),
        "4": ("ControlNetLoader", {"control_net_name": "tiny_controlnet.safetensors"}),
        "5": ("CLIPTextEncode", {"text": "photo of sks person", "clip": ["2", 1]}),
        "6": ("CLIPTextEncode", {"text": "blurry", "clip": ["2", 1]}),
        "7": ("LoadImage", {"image": "grace_hopper.jpg"}),
        "8": ("ImageCrop", {"image": ["7", 0], "width": 240, "height": 240, "x": 140, "y": 110}),
        "9": ("ImageScale", {"image": ["8", 0], "upscale_method": "bicubic", "width": SIZE, "height": SIZE,
                             "crop": "disabled"}),
        # Identity Net: two img2img runs with the geometry ControlNet
        "10": ("ControlNetApplyAdvanced", {"positive": ["5", 0], "negative": ["6", 0], "control_net": ["4", 0],
                                           "image": ["9", 0], "strength": 0.4, "start_percent": 0.0, "end_percent": 1.0}),
        "11": ("VAEEncode", {"pixels": ["9", 0], "vae": ["3", 0]}),
        "12": ("KSampler", dict(ks, model=["2", 0], positive=["10", 0], negative=["10", 1], latent_image=["11", 0], denoise=0.35)),
        "13": ("KSampler", dict(ks, model=["2", 0], positive=["10", 0], negative=["10", 1], latent_image=["11", 0], denoise=0.7)),
        "14": ("VAEDecode", {"samples": ["12", 0], "vae": ["3", 0]}),
        "15": ("VAEDecode", {"samples": ["13", 0], "vae": ["3", 0]}),
        # Shading Net: two ControlNets + img2img
        "16": ("ControlNetApplyAdvanced", {"positive": ["5", 0], "negative": ["6", 0], "control_net": ["4", 0],
                                           "image": ["14", 0], "strength": 0.6, "start_percent": 0.0, "end_percent": 1.0}),
        "17": ("ControlNetApplyAdvanced", {"positive": ["16", 0], "negative": ["16", 1], "control_net": ["4", 0],
                                           "image": ["15", 0], "strength": 0.5, "start_percent": 0.0, "end_percent": 0.7}),
        "18": ("VAEEncode", {"pixels": ["15", 0], "vae": ["3", 0]}),
        "19": ("KSampler", dict(ks, model=["2", 0], positive=["17", 0], negative=["17", 1], latent_image=["18", 0],
                                denoise=0.75)),
        "20": ("VAEDecode", {"samples": ["19", 0], "vae": ["3", 0]}),
        # paste (a plain composite) and the Harmonization Net on a box around the face
        "21": ("ImageScale", {"image": ["20", 0], "upscale_method": "bicubic", "width": 240, "height": 240, "crop": "disabled"}),
        "22": ("ImageCompositeMasked", {"destination": ["7", 0], "source": ["21", 0], "x": 140, "y": 110,
                                        "resize_source": False}),
        "23": ("SolidMask", {"value": 1.0, "width": SIZE, "height": SIZE}),
        "24": ("ImageCrop", {"image": ["22", 0], "width": 240, "height": 240, "x": 140, "y": 110}),
        "25": ("ImageScale", {"image": ["24", 0], "upscale_method": "bicubic", "width": SIZE, "height": SIZE,
                              "crop": "disabled"}),
        "26": ("VAEEncode", {"pixels": ["25", 0], "vae": ["3", 0]}),
        "27": ("SetLatentNoiseMask", {"samples": ["26", 0], "mask": ["23", 0]}),
        "28": ("ControlNetApplyAdvanced", {"positive": ["5", 0], "negative": ["6", 0], "control_net": ["4", 0],
                                           "image": ["25", 0], "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}),
        "29": ("KSampler", dict(ks, model=["2", 0], positive=["28", 0], negative=["28", 1], latent_image=["27", 0], denoise=0.5)),
        "30": ("VAEDecode", {"samples": ["29", 0], "vae": ["3", 0]}),
        "31": ("ImageScale", {"image": ["30", 0], "upscale_method": "bicubic", "width": 240, "height": 240, "crop": "disabled"}),
        "32": ("ImageCompositeMasked", {"destination": ["22", 0], "source": ["31", 0], "x": 140, "y": 110,
                                        "resize_source": False}),
        "33": ("SaveImage", {"images": ["32", 0], "filename_prefix": "bench_stock"}),
    }
    return {k: {"class_type": ct, "inputs": inp} for k, (ct, inp) in p.items()}


def main():
    h = comfy()
    pack()
    ours, stock = ours_prompt(), stock_prompt()
    h.run(ours)
    h.run(stock)                      # warm caches of both (models loaded, face models read)
    t_ours, t_stock = timeit_pair(lambda: h.run(ours), lambda: h.run(stock), repeat=5, warmup=0)
    emit({"section": "pipeline", "machine": machine(),
          "rows": [{"op": f"MegaPortrait workflow with identity LoRA (crop {SIZE} px, {STEPS} steps per sampler, "
                          "tiny SD1.5-shaped models)", "ours_s": t_ours["min_s"], "stock_s": t_stock["min_s"],
                    "ratio": ratio(t_ours, t_stock),
                    "stock": "the same sampler/ControlNet/VAE passes as stock nodes (4 KSamplers)"}]})


if __name__ == "__main__":
    main()
