"""GPU mode for Z-Image: a full-size Z-Image-Turbo-shaped diffusion model (NextDiT, 6B), the Qwen3-4B text encoder,
the Fun ControlNet union 2.1 patch (15 control layers with the inpaint channels) and a training adapter LoRA of the
Turbo adapter's shape, all with random weights (speed and memory do not depend on weight values; nothing can be
downloaded on the benchmark machines), written as files and loaded through ComfyUI's own loaders the way the shipped
``megaportrait_full_zimage`` workflow loads them (bf16). The VAE is the 16-channel tiny one (the real ae is ~84 M
parameters, a small share of a run).

Measures KSampler it/s at 1024 px (8 steps, cfg 1, res_multistep: the Turbo settings), identity LoRA training it/s
and peak VRAM at the workflow's settings (768 px, rank 16, gradient checkpointing, the adapter on the trained MODEL),
and the whole shipped Z-Image workflow at 1024 px once its LoRA is trained (the second run, which reuses it). Runs
only where CUDA is available (otherwise it says it was not measured); ``--cpu-dry-run`` runs the same code with the
tiny Z-Image models and tiny sizes on the CPU.
"""
from __future__ import annotations

import os
import shutil

import torch
from common import EXAMPLES, emit, gpu_section, ksampler_rate, machine, shipped_workflow, training_rate, workflow_seconds

# Z-Image-Turbo as ComfyUI's model detection describes the public file (comfy.ldm.lumina.model.NextDiT arguments)
Z_IMAGE = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
           "n_layers": 30, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
           "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
           "pad_tokens_multiple": 32, "qk_norm": True}
UNION_2_1 = {"n_control_layers": 15, "additional_in_dim": 17, "refiner_control": True}   # ModelPatchLoader's config
FOLDERS = ("diffusion_models", "text_encoders", "vae", "model_patches", "loras")


@torch.no_grad()
def write_models(models: str, cfg: dict, te_options: dict, control: dict, prefix: str) -> dict:
    """Random Z-Image files of the architecture ``cfg`` (diffusion model, Qwen3 with ComfyUI's config updated by
    ``te_options``, the Fun ControlNet union patch of ``control`` arguments, a training adapter LoRA) under
    ``models``; GPU mode writes the full-size ones, the dry run the same code at the tiny test sizes."""
    import comfy.ldm.lumina.controlnet as zcn
    import comfy.ldm.lumina.model
    import comfy.ops
    import comfy.text_encoders.z_image
    import safetensors.torch as st
    import tiny_models as tm
    ops, bf16 = comfy.ops.disable_weight_init, torch.bfloat16
    names = {k: f"{prefix}_{k}.safetensors" for k in ("unet", "te", "union", "adapter")}
    names["vae"] = tm.FLUX_VAE_NAME
    m = tm._reinit_all(comfy.ldm.lumina.model.NextDiT(dtype=bf16, device="cpu", operations=ops, **cfg), 0)
    g = torch.Generator().manual_seed(0)
    for name, prm in m.named_parameters():      # torch.empty pad tokens (not Linear/Embedding): small random values
        if name.endswith("pad_token"):
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.02)
    unet = {k: v.contiguous() for k, v in m.state_dict().items()}
    del m
    st.save_file(unet, os.path.join(models, "diffusion_models", names["unet"]))
    st.save_file(tm.build_zimage_adapter_sd(unet, rank=16), os.path.join(models, "loras", names["adapter"]))
    del unet
    te = comfy.text_encoders.z_image.ZImageTEModel(device="cpu", dtype=bf16, model_options=te_options)
    st.save_file({k: v.contiguous() for k, v in tm._reinit_all(te.qwen3_4b.transformer, 1).state_dict().items()},
                 os.path.join(models, "text_encoders", names["te"]))
    del te
    cls = zcn.ZImage_Control.__mro__[1] if getattr(zcn.ZImage_Control, "_megaportrait_tiny", False) else zcn.ZImage_Control
    cn = cls(dtype=bf16, device="cpu", operations=ops, **control)
    st.save_file(tm._fun_controlnet_names(tm._reinit_all(cn, 3).state_dict(), control.get("dim", 3840)),
                 os.path.join(models, "model_patches", names["union"]))
    del cn
    st.save_file(tm.build_flux_vae_sd(), os.path.join(models, "vae", names["vae"]))
    return names


def workflow(names: dict, size: int, steps: int, train_steps: int, train_res: int) -> dict:
    """The shipped Z-Image workflow on these files, at ``size`` px with ``steps`` per sampler."""
    return shipped_workflow("megaportrait_full_zimage", size, steps, {
        "UNETLoader": {"unet_name": names["unet"]},
        "CLIPLoader": {"clip_name": names["te"]},
        "VAELoader": {"vae_name": names["vae"]},
        "ModelPatchLoader": {"name": names["union"]},
        "LoraLoaderModelOnly": {"lora_name": names["adapter"]},
        "MegaPortraitLoadSourcePhotos": {"folder": "megaportrait_bench", "min_photos": 4,   # augmented copies of one
                                         "resolution": train_res},
        "MegaPortraitIdentityLoraTrainer": {"steps": train_steps, "save_name": "bench/zimage_identity",
                                            "checkpoint_every": 0, "resolution": train_res},
    })


def main():
    started = gpu_section("gpu_zimage", "Z-Image", "has_zimage", FOLDERS)
    if started is None:
        return
    h, models, dry, out = started
    import tiny_models as tm
    from comfyui_megaportrait.nodes import lora_comfy as lc
    from comfyui_megaportrait.nodes import lora_training as lt

    import nodes
    if dry:       # the tiny test architecture (the test registration knows the tiny widths)
        tm.register_zimage()
        names = write_models(models, dict(tm.TINY_ZIMAGE_UNET_CONFIG), {"qwen3_4b_model_config": tm.TINY_QWEN3_CONFIG},
                             dict(UNION_2_1, n_control_layers=tm.ZIMAGE_UNION_LAYERS, dim=tm.ZIMAGE_DIM,
                                  n_heads=tm.ZIMAGE_HEADS, n_kv_heads=tm.ZIMAGE_HEADS, ffn_dim_multiplier=tm.ZIMAGE_FFN),
                             "dry_zimage")
    else:
        names = write_models(models, Z_IMAGE, {}, UNION_2_1, "random_zimage")

    size, train_res = (64, 64) if dry else (1024, 768)
    steps = 2 if dry else 8
    label = "tiny Z-Image (dry run)" if dry else "Z-Image-Turbo-shaped, bf16 weights"
    with torch.inference_mode():
        m = nodes.UNETLoader().load_unet(names["unet"], "default")[0]
        c = nodes.CLIPLoader().load_clip(names["te"], "lumina2")[0]
        v = nodes.VAELoader().load_vae(names["vae"])[0]
        pos = nodes.CLIPTextEncode().encode(c, "photo of sks person")[0]
        neg = [[torch.zeros_like(t), dict(d)] for t, d in pos]
        lat = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
        rate = ksampler_rate(out, m, pos, neg, lat, steps, "res_multistep")
        out.add(f"{label}: KSampler {size}x{size}, cfg 1, res_multistep ({steps} steps)",
                f"{rate:.2f} it/s, peak VRAM {out.peak_gb()}")
        adapted = nodes.LoraLoaderModelOnly().load_lora_model_only(m, names["adapter"], 1.0)[0]
    tsteps = 3 if dry else 30
    cfg = lt.TrainConfig(steps=tsteps, learning_rate=1e-4, rank=16, alpha=16, batch_size=1, resolution=train_res,
                         flip=False)
    out.peak_reset()
    with torch.inference_mode():
        rate = training_rate(lc.train_identity_lora, "bench", adapted, c, v, torch.rand(4, train_res, train_res, 3),
                             "photo of sks person", cfg, os.path.join(models, "loras", "bench_zimage.safetensors"),
                             resume="off", checkpoint_every=0, gradient_checkpointing=True)
    out.add(f"{label}: identity LoRA training at {train_res} px, batch 1, rank 16, gradient checkpointing, training "
            f"adapter", f"{rate:.2f} it/s, 1500 steps = {1500 / rate / 60:.1f} min, peak VRAM {out.peak_gb()}")
    del m, c, v, adapted
    src = os.path.join(h.folder_paths.get_input_directory(), "megaportrait_bench")
    os.makedirs(src, exist_ok=True)
    shutil.copy(os.path.join(EXAMPLES, "grace_hopper.jpg"), src)
    wf_steps = 2 if dry else 8
    seconds = workflow_seconds(h, workflow(names, size, wf_steps, tsteps, train_res), out)
    out.add(f"{label}: whole megaportrait_full_zimage workflow at {size} px, LoRA trained ({wf_steps} steps per sampler)",
            f"{seconds:.1f} s, peak VRAM {out.peak_gb()}")
    emit({"section": "gpu_zimage", "machine": machine(), "rows": out.rows, "dry_run": dry})


if __name__ == "__main__":
    main()
