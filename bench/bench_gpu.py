"""GPU mode: full-size SD1.5- and SDXL-shaped models with random weights (speed does not depend on weight values;
nothing can be downloaded on the benchmark machines), written as checkpoints and loaded through ComfyUI's own
loaders. Measures KSampler it/s at 512 px (SD1.5), the dual-strength sampler against two KSamplers, the whole
with-LoRA workflow at 512 px (SD1.5) and 1024 px (SDXL), trainer it/s and peak VRAM.

Runs only where CUDA is available (otherwise reports that it was skipped). ``--cpu-dry-run`` exercises the same
code on the CPU with tiny step counts, to check it without a GPU.
Published anchors: ComfyUI SD1.5 512 px ~24 it/s on a fast consumer GPU; diffusers on an A100 31.4 it/s.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from common import GpuRows, emit, ksampler_rate, machine, shipped_workflow, training_rate, workflow_seconds

# the public SD1.5 / SDXL UNet architectures, as ComfyUI's model detection describes them
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
             "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
             "use_temporal_resblock": False}
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}


# the SD1.x / SDXL VAE (AutoencoderKL), as ComfyUI builds it for those checkpoints
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


@torch.no_grad()
def write_random_models(family: str, models: str, tiny: bool = False) -> dict:
    """Random checkpoint (fp16), ControlNet, VAE and a rank-8 LoRA for ``family`` under ``models``: full size, or
    with ``tiny`` (the CPU dry run) the test suite's tiny SD1.5 UNet and text encoder around the full-size VAE."""
    import comfy.supported_models as sm
    import safetensors.torch as st
    import tiny_models
    from comfy.ldm.models.autoencoder import AutoencoderKL
    if tiny:
        config_class, cfg = tiny_models.register()[0], dict(tiny_models.TINY_UNET_CONFIG)
        cn_extra = {"num_heads": tiny_models.HEADS, "num_head_channels": -1}
    else:
        config_class, cfg = (sm.SD15, SD15_UNET) if family == "sd15" else (sm.SDXL, SDXL_UNET)
        cn_extra = {}
    mc = config_class(dict(cfg))
    mc.set_inference_dtype(torch.float16, None)
    base = mc.get_model({}, "")
    tiny_models._reinit(base.diffusion_model, 0)
    clip_model = tiny_models._reinit(mc.clip_target().clip(device="cpu", dtype=torch.float32), 1)
    vae = tiny_models._reinit(AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4), 2)
    sd = tiny_models._compat().checkpoint_state_dict(base, base.diffusion_model.state_dict(), clip_model.state_dict(),
                                                     vae.state_dict())
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    for sub in ("checkpoints", "controlnet", "vae", "loras"):
        os.makedirs(os.path.join(models, sub), exist_ok=True)
    names = {"ckpt": f"random_{family}.safetensors", "cn": f"random_{family}_controlnet.safetensors",
             "vae": f"random_{family}_vae.safetensors", "lora": f"random_{family}_lora.safetensors"}
    st.save_file(sd, os.path.join(models, "checkpoints", names["ckpt"]))
    pre = "first_stage_model."
    st.save_file({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, os.path.join(models, "vae", names["vae"]))
    st.save_file(tiny_models.build_lora_sd(sd, rank=8), os.path.join(models, "loras", names["lora"]))
    cn = tiny_models._build_controlnet(cfg, 3, hint_channels=3, **cn_extra)
    st.save_file({k: v.half().contiguous() for k, v in cn.items()}, os.path.join(models, "controlnet", names["cn"]))
    del base, clip_model, vae, cn, sd
    return names


def pipeline_prompt(names: dict, size: int, steps: int) -> dict:
    return shipped_workflow("megaportrait_with_lora", size, steps, {
        "CheckpointLoaderSimple": {"ckpt_name": names["ckpt"]},
        "VAELoader": {"vae_name": names["vae"]},
        "ControlNetLoader": {"control_net_name": names["cn"]},
        "MegaPortraitLoadIdentityLora": {"lora_name": names["lora"]},
    })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry_run:
        emit({"section": "gpu", "machine": machine(), "skipped": "No GPU on this machine: GPU mode skipped (it runs "
                                                                 "whenever CUDA is available).", "rows": []})
        return
    from common import comfy, pack
    h = comfy()
    pack()
    from comfyui_megaportrait.nodes import identity_sampler
    from comfyui_megaportrait.nodes import lora_comfy as lc
    from comfyui_megaportrait.nodes import lora_training as lt

    import nodes
    dry = args.cpu_dry_run and not cuda
    models = os.path.join(h.work, "models")
    out = GpuRows(cuda)
    add, peak_reset, peak_gb, rows = out.add, out.peak_reset, out.peak_gb, out.rows

    families = ("sd15",) if dry else ("sd15", "sdxl")
    for fam in families:
        size = 512 if fam == "sd15" else 1024
        if dry:
            size = 128
        names = write_random_models(fam, models, tiny=dry)
        for kind, sub in (("checkpoints", "checkpoints"), ("controlnet", "controlnet"), ("vae", "vae"), ("loras", "loras")):
            h.folder_paths.add_model_folder_path(kind, os.path.join(models, sub))
        label = "tiny SD1.5 (dry run)" if dry else "SD1.5-shaped" if fam == "sd15" else "SDXL-shaped"
        with torch.inference_mode():
            m, c, v = nodes.CheckpointLoaderSimple().load_checkpoint(names["ckpt"])[:3]
            pos = nodes.CLIPTextEncode().encode(c, "photo of sks person")[0]
            neg = nodes.CLIPTextEncode().encode(c, "blurry")[0]
            steps = 2 if dry else 20
            lat = nodes.EmptyLatentImage().generate(size, size, 1)[0]
            rate = ksampler_rate(out, m, pos, neg, lat, steps, "euler", cfg=7.0, scheduler="normal")
            add(f"{label}: KSampler {size}x{size}, cfg 7, euler ({steps} steps)", f"{rate:.2f} it/s, peak VRAM {peak_gb()}")
            img = torch.rand(1, size, size, 3)
            enc = {"samples": v.encode(img)}
            t0 = time.perf_counter()
            identity_sampler.dual_sample("b", m, pos, neg, enc, 1, steps, 5.0, "dpmpp_2m", "karras", 0.35, 0.7)
            t_dual = time.perf_counter() - t0
            t0 = time.perf_counter()
            nodes.KSampler().sample(m, 1, steps, 5.0, "dpmpp_2m", "karras", pos, neg, enc, 0.35)
            nodes.KSampler().sample(m, 1, steps, 5.0, "dpmpp_2m", "karras", pos, neg, enc, 0.7)
            t_two = time.perf_counter() - t0
            add(f"{label}: dual-strength sampler vs two KSamplers ({size} px, {steps} steps)",
                f"{t_dual:.2f} s vs {t_two:.2f} s = {t_dual / t_two:.2f}x")
        # the whole workflow (with an identity LoRA)
        wf_steps = 2 if dry else 25
        seconds = workflow_seconds(h, pipeline_prompt(names, size, wf_steps), out)
        add(f"{label}: whole with-LoRA workflow at {size} px ({wf_steps} steps per sampler)",
            f"{seconds:.1f} s, peak VRAM {peak_gb()}")
        # trainer
        tsteps = 3 if dry else 40
        cfg = lt.TrainConfig(steps=tsteps, learning_rate=1e-4, rank=8, alpha=8, batch_size=1, resolution=size, flip=False)
        photos = torch.rand(4, size, size, 3)
        peak_reset()
        with torch.inference_mode():
            rate = training_rate(lc.train_identity_lora, "bench", m, c, v, photos, "photo of sks person", cfg,
                                 os.path.join(models, "loras", f"bench_{fam}.safetensors"), resume="off",
                                 checkpoint_every=0, gradient_checkpointing=(fam == "sdxl"))
        add(f"{label}: identity LoRA training at {size} px, batch 1, rank 8"
            + (", gradient checkpointing" if fam == "sdxl" else ""),
            f"{rate:.2f} it/s, 1000 steps = {1000 / rate / 60:.1f} min, peak VRAM {peak_gb()}")
        del m, c, v
    emit({"section": "gpu", "machine": machine(), "rows": rows, "dry_run": dry})


if __name__ == "__main__":
    main()
