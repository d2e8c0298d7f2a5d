"""GPU mode for Flux.1: a full-size FLUX.1 [dev]-shaped diffusion model, its Fill variant, the T5-XXL + CLIP-L text
encoders and an InstantX-shaped union ControlNet, all with random weights (speed and memory do not depend on weight
values; nothing can be downloaded on the benchmark machines), written as files and loaded through ComfyUI's own
loaders the way the shipped ``megaportrait_full_flux`` workflow loads them (fp8_e4m3fn weights). The VAE is the
16-channel tiny one (taef1-sized; the real ae is ~84 M parameters, a small share of a run).

Measures KSampler it/s at 1024 px, identity LoRA training it/s and peak VRAM at the workflow's settings (512 px,
rank 16, gradient checkpointing), and the whole shipped Flux workflow at 1024 px once its LoRA is trained (the
second run, which reuses it). Runs only where CUDA is available (otherwise it says it was not measured);
``--cpu-dry-run`` runs the same code with the tiny Flux models and tiny sizes on the CPU.
"""
from __future__ import annotations

import os
import shutil

import torch
from common import EXAMPLES, emit, gpu_section, ksampler_rate, machine, shipped_workflow, training_rate, workflow_seconds

# FLUX.1 [dev] as ComfyUI's model detection describes the public file (comfy.ldm.flux.model.Flux arguments)
FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
            "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
            "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
            "txt_ids_dims": []}
UNION_DEPTH = (5, 10)      # double / single blocks of InstantX / Shakker-Labs FLUX.1-dev-ControlNet-Union(-Pro)
FOLDERS = ("diffusion_models", "text_encoders", "vae", "controlnet", "loras")


def _fp8(sd: dict) -> dict:
    """The large matrices in fp8_e4m3fn (as the fp8 files people download), the rest as it is."""
    return {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and v.numel() >= 2 ** 20 else v).contiguous()
            for k, v in sd.items()}


@torch.no_grad()
def write_models(models: str, cfg: dict, te_options: dict, union_depth: tuple, prefix: str) -> dict:
    """Random Flux files of the architecture ``cfg`` (diffusion model, Fill variant, clip_l + T5 with ComfyUI's
    configs updated by ``te_options``, union ControlNet) under ``models``; GPU mode writes the full-size ones, the
    dry run the same code at the tiny test sizes."""
    import comfy.ldm.flux.controlnet
    import comfy.ldm.flux.model
    import comfy.ops
    import comfy.text_encoders.flux
    import safetensors.torch as st
    import tiny_models as tm
    ops, bf16 = comfy.ops.disable_weight_init, torch.bfloat16
    names = {k: f"{prefix}_{k}.safetensors" for k in ("unet", "fill", "clip_l", "t5", "union")}
    names["vae"] = tm.FLUX_VAE_NAME
    for key, in_ch in (("unet", 16), ("fill", tm.FLUX_FILL_IN_CHANNELS)):
        m = comfy.ldm.flux.model.Flux(dtype=bf16, device="cpu", operations=ops, **dict(cfg, in_channels=in_ch))
        st.save_file(_fp8(tm._bfl_keys(tm._reinit_all(m, 0).state_dict())),
                     os.path.join(models, "diffusion_models", names[key]))
        del m
    te = comfy.text_encoders.flux.FluxClipModel(device="cpu", dtype=bf16, dtype_t5=bf16, model_options=te_options)
    st.save_file({k: v.contiguous() for k, v in tm._reinit_all(te.clip_l.transformer, 1).state_dict().items()},
                 os.path.join(models, "text_encoders", names["clip_l"]))
    st.save_file(_fp8(tm._reinit_all(te.t5xxl.transformer, 2).state_dict()),
                 os.path.join(models, "text_encoders", names["t5"]))
    del te
    cn = comfy.ldm.flux.controlnet.ControlNetFlux(
        latent_input=True, num_union_modes=tm.FLUX_UNION_MODES, control_latent_channels=16, dtype=bf16, device="cpu",
        operations=ops, **dict(cfg, depth=union_depth[0], depth_single_blocks=union_depth[1]))
    st.save_file(_fp8(tm._diffusers_flux_names(tm._reinit_all(cn, 3).state_dict(), cfg["hidden_size"])),
                 os.path.join(models, "controlnet", names["union"]))
    del cn
    st.save_file(tm.build_flux_vae_sd(), os.path.join(models, "vae", names["vae"]))
    return names


def workflow(names: dict, size: int, steps: int, train_steps: int, train_res: int) -> dict:
    """The shipped Flux workflow on these files, at ``size`` px with ``steps`` per sampler."""
    return shipped_workflow("megaportrait_full_flux", size, steps, {
        "UNETLoader": lambda inp: {"unet_name": names["fill" if "fill" in inp["unet_name"] else "unet"]},
        "DualCLIPLoader": {"clip_name1": names["clip_l"], "clip_name2": names["t5"]},
        "VAELoader": {"vae_name": names["vae"]},
        "ControlNetLoader": {"control_net_name": names["union"]},
        "MegaPortraitLoadSourcePhotos": {"folder": "megaportrait_bench", "min_photos": 4,   # augmented copies of one
                                         "resolution": train_res},
        "MegaPortraitIdentityLoraTrainer": {"steps": train_steps, "save_name": "bench/flux_identity",
                                            "checkpoint_every": 0, "resolution": train_res},
    })


def main():
    started = gpu_section("gpu_flux", "Flux", "has_flux", FOLDERS)
    if started is None:
        return
    h, models, dry, out = started
    import tiny_models as tm
    from comfyui_megaportrait.nodes import lora_comfy as lc
    from comfyui_megaportrait.nodes import lora_training as lt

    import nodes
    if dry:       # the tiny test architecture, text encoders included (the test registration knows their widths)
        tm.register_flux()
        names = write_models(models, dict(tm.TINY_FLUX_UNET_CONFIG), {"clip_l_model_config": tm.TINY_FLUX_CLIP_L_CONFIG,
                             "t5xxl_model_config": tm.TINY_FLUX_T5_CONFIG}, (1, 1), "dry_flux")
    else:
        names = write_models(models, FLUX_DEV, {}, UNION_DEPTH, "random_flux")

    size, train_res = (64, 64) if dry else (1024, 512)
    steps = 2 if dry else 20
    label = "tiny Flux (dry run)" if dry else "FLUX.1-dev-shaped, fp8 weights"
    with torch.inference_mode():
        m = nodes.UNETLoader().load_unet(names["unet"], "fp8_e4m3fn")[0]
        c = nodes.DualCLIPLoader().load_clip(names["clip_l"], names["t5"], "flux")[0]
        v = nodes.VAELoader().load_vae(names["vae"])[0]
        enc = nodes.CLIPTextEncode().encode(c, "photo of sks person")[0]
        pos = [[t, {**d, "guidance": 3.5}] for t, d in enc]
        neg = [[torch.zeros_like(t), dict(d)] for t, d in enc]
        lat = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
        rate = ksampler_rate(out, m, pos, neg, lat, steps, "euler")
        out.add(f"{label}: KSampler {size}x{size}, guidance 3.5, cfg 1, euler ({steps} steps)",
                f"{rate:.2f} it/s, peak VRAM {out.peak_gb()}")
    tsteps = 3 if dry else 30
    cfg = lt.TrainConfig(steps=tsteps, learning_rate=1e-4, rank=16, alpha=16, batch_size=1, resolution=train_res,
                         flip=False)
    out.peak_reset()
    with torch.inference_mode():
        rate = training_rate(lc.train_identity_lora, "bench", m, c, v, torch.rand(4, train_res, train_res, 3),
                             "photo of sks person", cfg, os.path.join(models, "loras", "bench_flux.safetensors"),
                             resume="off", checkpoint_every=0, gradient_checkpointing=True)
    out.add(f"{label}: identity LoRA training at {train_res} px, batch 1, rank 16, gradient checkpointing",
            f"{rate:.2f} it/s, 1000 steps = {1000 / rate / 60:.1f} min, peak VRAM {out.peak_gb()}")
    del m, c, v
    src = os.path.join(h.folder_paths.get_input_directory(), "megaportrait_bench")
    os.makedirs(src, exist_ok=True)
    shutil.copy(os.path.join(EXAMPLES, "grace_hopper.jpg"), src)
    wf_steps = 2 if dry else 25
    seconds = workflow_seconds(h, workflow(names, size, wf_steps, tsteps, train_res), out)
    out.add(f"{label}: whole megaportrait_full_flux workflow at {size} px, LoRA trained ({wf_steps} steps per sampler)",
            f"{seconds:.1f} s, peak VRAM {out.peak_gb()}")
    emit({"section": "gpu_flux", "machine": machine(), "rows": out.rows, "dry_run": dry})


if __name__ == "__main__":
    main()
