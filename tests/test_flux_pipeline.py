"""The pipeline's stages on Flux.1 (tiny Flux-shaped models loaded by ComfyUI's own loaders, see the ``flux``
fixture): identity LoRA training with the flow-matching loss, the dual-strength sampler, shading with a union
ControlNet and harmonization with a Fill model or masked img2img. Skipped on the early-2024 host (no Flux)."""
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_cancel_and_resume_is_exact, image_tensor

LORA = "tiny_flux_lora.safetensors"   # the tiny kohya Flux LoRA the test setup writes


@pytest.fixture(scope="module")
def P(pack):
    import types

    import comfyui_megaportrait.nodes as N
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    return types.SimpleNamespace(fam=N.families, hrm=N.harmonize, il=N.identity_lora, ids=N.identity_sampler,
                                 lc=N.lora_comfy, lf=N.lora_files, lt=N.lora_training, shd=N.shading, Error=MegaPortraitError)


@pytest.fixture(scope="module")
def face():
    a = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    return torch.nn.functional.interpolate(a.permute(0, 3, 1, 2), size=(64, 64), mode="area").permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def conds(comfy, flux):
    """(positive with FluxGuidance 3.5, negative = ConditioningZeroOut), as the Flux workflow makes them."""
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        enc = comfy.nodes.CLIPTextEncode().encode(flux["clip"], "photo of sks person")[0]
        pos = n["FluxGuidance"]().append(enc, 3.5)
        neg = n["ConditioningZeroOut"]().zero_out(enc)
    first = lambda out: out[0] if isinstance(out, tuple) else out.result[0]  # noqa: E731  (V1 tuple / V3 NodeOutput)
    return first(pos), first(neg)


def ksampler(comfy, m, pos, neg, latent, seed, steps, denoise, cfg=1.0, sampler="euler", scheduler="simple"):
    with torch.inference_mode():
        return comfy.nodes.KSampler().sample(m, seed, steps, cfg, sampler, scheduler, pos, neg, latent, denoise)[0]["samples"]


def close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


# ------------------------------------------------------------------------------------------- the family table
def test_flux_is_a_trainable_row_of_the_family_table(P, flux):
    fam = P.fam.of_model(flux["model"])
    assert fam.name == "Flux.1" and fam.latent_channels == 16 and fam.target == "flow" and fam.guidance == "embedded"
    assert P.lc.loss_kind(flux["model"].get_model_object("model_sampling")) == "flow"
    names = [n for n, m in flux["model"].model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)]
    import re
    hit = [n for n in names if re.fullmatch(fam.lora_targets["attention"], n)]
    assert any(".img_attn.qkv" in n for n in hit) and any(".txt_attn.proj" in n for n in hit)
    assert any(n.startswith("single_blocks.") and n.endswith("linear1") for n in hit)
    assert not any("_mlp." in n or "mod" in n.split(".")[-2:][0] for n in hit)
    ff = [n for n in names if re.fullmatch(fam.lora_targets["attention + feed-forward"], n)]
    assert set(hit) < set(ff) and any(".img_mlp.2" in n for n in ff)
    from comfyui_megaportrait.nodes import comfy_compat
    assert comfy_compat.is_inpaint_model(flux["fill"]) and not comfy_compat.is_inpaint_model(flux["model"])
    assert comfy_compat.latent_channels(flux["model"]) == 16 == fam.latent_channels


# ------------------------------------------------------------------------------------------- identity LoRA
def _train(P, flux, photos, path, steps, **kw):
    cfg = P.lt.TrainConfig(steps=steps, learning_rate=kw.pop("lr", 1e-3), rank=4, alpha=4, batch_size=2, resolution=64,
                           **kw)
    with torch.inference_mode():
        return P.lc.train_identity_lora("T", flux["model"], flux["clip"], flux["vae"], photos, "photo of sks person", cfg,
                                        path, resume="off", checkpoint_every=0)


@pytest.fixture(scope="module")
def photos(face):
    return torch.cat([face, face.flip(2), (face * 0.9).clamp(0, 1), (face * 1.1).clamp(0, 1)])


def test_flux_training_loss_falls_on_a_fixed_batch(P, flux, comfy, face):
    """Flow-matching loss through the model's model_sampling: training on one fixed batch at fixed sigmas lowers it."""
    m = flux["model"]
    fam = P.fam.of_model(m)
    ms = m.get_model_object("model_sampling")
    with torch.inference_mode():
        x0 = m.get_model_object("latent_format").process_in(flux["vae"].encode(face))
    with torch.inference_mode(False), torch.enable_grad():
        x0 = x0.clone()
        base = P.lt.shadow_module(m.model)
        from comfyui_megaportrait.nodes import comfy_compat
        P.lt.clone_norm_inputs(base.diffusion_model, comfy_compat.residual_inplace_norms())
        P.lt.inject_lora(base.diffusion_model, fam.lora_targets["attention + feed-forward"], 8, 8, 0)
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(x0.shape, generator=gen).repeat(2, 1, 1, 1)
        sigma = torch.tensor([0.3, 0.8])
        x0 = x0.repeat(2, 1, 1, 1)
        x = P.lc.noisy_latent(ms, "flow", x0, noise, sigma)
        assert torch.allclose(x, sigma.view(-1, 1, 1, 1) * noise + (1 - sigma.view(-1, 1, 1, 1)) * x0)
        with torch.inference_mode():
            enc = flux["clip"].encode_from_tokens(flux["clip"].tokenize("photo of sks person"), return_pooled=True)
        c, p = enc[0].clone(), enc[1].clone()
        extra = base.extra_conds(noise=x0, device=x0.device, cross_attn=c.expand(2, *c.shape[1:]),
                                 pooled_output=p.expand(2, *p.shape[1:]), guidance=fam.train_guidance)
        args = {k: v.cond for k, v in extra.items()}
        assert "guidance" in args and float(args["guidance"][0]) == 1.0
        opt = torch.optim.AdamW(P.lf.lora_parameters(base.diffusion_model), lr=3e-3)
        losses = []
        for _ in range(60):
            with comfy_compat.training_mode():
                den = base.apply_model(x, sigma, **args)
            loss = P.lt.native_loss(den, x0, sigma, "flow")
            # the flow loss is the velocity MSE: the model's output v = (x - denoised) / sigma against noise - x0
            v = (x - den) / sigma.view(-1, 1, 1, 1)
            assert torch.allclose(loss, ((v - (noise - x0)) ** 2).mean(), rtol=1e-4, atol=1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_flux_lora_trains_saves_kohya_and_loads_in_the_stock_loader(P, flux, comfy, photos, conds):
    import comfy.lora as clora
    m, clip = flux["model"], flux["clip"]
    path = os.path.join(comfy.models_dir, "loras", "test", "flux_id.safetensors")
    sd, state, meta = _train(P, flux, photos, path, 40, lr=5e-3, target="attention + feed-forward",
                             train_text_encoder=True)
    L = np.array(state.losses)
    assert len(L) == 40 and np.isfinite(L).all()
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1-dev/lora"
    prefixes = {"_".join(k.split("_")[:2]) for k in sd}
    assert prefixes == {"lora_unet", "lora_te1"}          # the Flux UNet and CLIP-L, as kohya names them (not T5)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in sd
    assert "lora_unet_single_blocks_0_linear2.alpha" in sd
    os.makedirs(os.path.dirname(path), exist_ok=True)
    P.lf.atomic_save(sd, path, {k: str(v) for k, v in meta.items()})
    # every tensor maps onto the model in the stock loader (nothing "not loaded")
    key_map = clora.model_lora_keys_unet(m.model, {})
    key_map = clora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    assert len(clora.load_lora(sd, key_map)) == len(sd) // 3
    pos, neg = conds
    with torch.inference_mode():
        lat = {"samples": torch.zeros(1, 16, 8, 8)}
        base = ksampler(comfy, m, pos, neg, lat, 3, 3, 1.0)
        zero = comfy.nodes.LoraLoader().load_lora(m, clip, "test/flux_id.safetensors", 0.0, 0.0)[0]
        one = comfy.nodes.LoraLoader().load_lora(m, clip, "test/flux_id.safetensors", 1.0, 1.0)[0]
    assert torch.equal(ksampler(comfy, zero, pos, neg, lat, 3, 3, 1.0), base)
    assert not torch.equal(ksampler(comfy, one, pos, neg, lat, 3, 3, 1.0), base)


def test_flux_resume_matches_an_uninterrupted_run(P, flux, comfy, photos):
    cfg = P.lt.TrainConfig(steps=10, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64)
    path = os.path.join(comfy.models_dir, "loras", "test", "flux_resume.safetensors")
    args = ("T", flux["model"], flux["clip"], flux["vae"], photos, "photo of sks person", cfg, path)
    assert_cancel_and_resume_is_exact(P.lc.train_identity_lora, args, stop_at=4)


def test_flux_train_once_and_fill_is_refused(P, flux, comfy, photos):
    node = P.il.IdentityLoraTrainer()
    args = dict(trigger_word="sks", class_word="person", prompt_template="photo of {trigger} {class}", steps=4,
                learning_rate=1e-3, rank=4, alpha=4.0, batch_size=2, resolution=64, seed=0, save_name="test/flux_once",
                if_exists="overwrite", checkpoint_every=0, if_trained="reuse")
    with torch.inference_mode():
        first = node.train(flux["model"], flux["clip"], flux["vae"], photos, **args)["result"]
        path = comfy.folder_paths.get_full_path("loras", first[2])
        stamp = os.stat(path).st_mtime_ns
        again = node.train(flux["model"], flux["clip"], flux["vae"], photos, **args)["result"]
    assert again[2] == first[2] and os.stat(path).st_mtime_ns == stamp          # reused, not trained again
    with pytest.raises(P.Error, match="inpainting model"):
        with torch.inference_mode():
            node.train(flux["fill"], flux["clip"], flux["vae"], photos, **dict(args, save_name="test/flux_fill"))
    assert comfy.folder_paths.get_full_path("loras", "test/flux_fill.safetensors") is None


# ------------------------------------------------------------------------------------------- dual-strength sampler
def test_flux_branches_equal_separate_ksampler_runs(P, flux, comfy, face, conds):
    m, v = flux["model"], flux["vae"]
    pos, neg = conds
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        ref, src, mode = P.ids.dual_sample("t", m, pos, neg, lat, 4, 6, 1.0, "euler", "simple", 0.35, 0.7)
    assert mode == "sequential"            # flow models: CONST noise scaling cannot share passes exactly
    assert close(ref, ksampler(comfy, m, pos, neg, lat, 4, 6, 0.35))
    assert close(src, ksampler(comfy, m, pos, neg, lat, 4, 6, 0.7))
    assert not torch.equal(ref, src)
    with torch.inference_mode():
        out = P.ids.DualStrengthIdentitySampler().sample(m, pos, neg, v, face, 4, 6, 1.0, "euler", "simple", 0.35, 0.7)
    assert out[0]["samples"].shape == (1, 16, 8, 8) and out[1].shape == (1, 64, 64, 3)


# ------------------------------------------------------------------------------------------- shading
def test_flux_shading_with_union_modes(P, flux, comfy, face, conds):
    m, v, union = flux["model"], flux["vae"], flux["union"]
    pos, neg = conds
    modes = P.shd.UnionControlNetMode()
    with torch.inference_mode():
        blur = modes.set_mode(union, "blur")[0]
        canny = modes.set_mode(union, "canny")[0]
    assert blur.extra_args.get("control_type") == [3] and canny.extra_args.get("control_type") == [0]
    assert "control_type" not in union.extra_args                          # the loaded ControlNet is unchanged
    node = P.shd.ShadingSampler()
    light, hf = face * 0.8, torch.full_like(face, 0.5)
    run = lambda a, b, s1, s2: node.sample(m, pos, neg, v, light, hf, a, b, s1, 0, 1, s2, 0, 1, 4, 4, 1.0,  # noqa: E731
                                           "euler", "simple", 0.6, init_image=face)[0]["samples"]
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        zero = run(blur, canny, 0.0, 0.0)
        on = run(blur, canny, 0.8, 0.6)
        swapped = run(canny, blur, 0.8, 0.6)
        noise_start = node.sample(m, pos, neg, v, light, hf, blur, canny, 0.5, 0, 1, 0.5, 0, 1, 4, 3, 1.0, "euler",
                                  "simple", 0.6)[0]["samples"]
    assert torch.equal(zero, ksampler(comfy, m, pos, neg, lat, 4, 4, 0.6))    # strength 0 == plain sampling
    assert not torch.equal(on, zero) and not torch.equal(on, swapped)       # the modes matter
    assert noise_start.shape == (1, 16, 8, 8) and torch.isfinite(noise_start).all()


def test_union_mode_errors_and_family_checks(P, flux, comfy, face, conds):
    node = P.shd.UnionControlNetMode()
    with pytest.raises(P.Error, match="has no 'softedge' mode; it has: canny, tile, depth, blur"):
        node.set_mode(flux["union"], "softedge")
    with torch.inference_mode():
        sd_net = comfy.nodes.ControlNetLoader().load_controlnet("tiny_controlnet.safetensors")[0]
        sd_m, sd_c, sd_v = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
    with pytest.raises(P.Error, match="not a union ControlNet"):
        node.set_mode(sd_net, "tile")
    assert P.shd.union_mode_index("SDXL union (xinsir ProMax)", "tile") == 6
    assert P.shd.union_mode_index("Flux.1 union (InstantX / Shakker-Labs Union Pro)", "tile") == 1
    pos, neg = conds
    shading = P.shd.ShadingSampler()
    with pytest.raises(P.Error, match="'light_control_net' is a ControlNet for SD/SDXL but the MODEL is Flux.1"):
        with torch.inference_mode():
            shading.sample(flux["model"], pos, neg, flux["vae"], face, face, sd_net, flux["union"], 0.5, 0, 1, 0.5, 0, 1,
                           1, 2, 1.0, "euler", "simple", 0.5, init_image=face)
    with torch.inference_mode():
        sd_pos = comfy.nodes.CLIPTextEncode().encode(sd_c, "x")[0]
    with pytest.raises(P.Error, match="'hf_control_net' is a ControlNet for Flux.1 but the MODEL is SD1.x"):
        with torch.inference_mode():
            shading.sample(sd_m, sd_pos, sd_pos, sd_v, face, face, sd_net, flux["union"], 0.5, 0, 1, 0.5, 0, 1,
                           1, 2, 5.0, "euler", "normal", 0.5, init_image=face)


# ------------------------------------------------------------------------------------------- harmonize
def _img_and_mask():
    img = torch.rand(1, 120, 96, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 120, 96)
    mask[:, 40:80, 30:70] = 1.0
    return img, mask


@pytest.mark.parametrize("with_fill", [False, True])
def test_flux_harmonize_keeps_outside_exact(P, flux, comfy, conds, with_fill):
    pos, neg = conds
    img, mask = _img_and_mask()
    node = P.hrm.Harmonize()
    extra = dict(inpaint_model=flux["fill"], lora_name=LORA, inpaint_lora_strength=1.0,
                 fill_guidance=30.0) if with_fill else {}
    with torch.inference_mode():
        out, lat = node.harmonize(flux["model"], pos, neg, flux["vae"], img, mask, 3, 3, 1.0, "euler", "simple", 0.6, 4, 6,
                                  True, 0.3, 64, **extra)
    fm = P.hrm.prepare_mask(mask[0], 4, 6)
    assert out.shape == img.shape and lat["samples"].shape[1] == 16
    assert torch.equal(out[0][fm == 0], img[0][fm == 0])
    assert (out - img)[0][fm > 0.99].abs().mean() > 0.01


def test_flux_fill_conditioning_lora_and_guidance(P, flux, comfy, conds):
    pos, neg = conds
    img, mask = _img_and_mask()
    node = P.hrm.Harmonize()
    run = lambda **kw: node.harmonize(flux["model"], pos, neg, flux["vae"], img, mask, 3, 3, 1.0, "euler",  # noqa: E731
                                      "simple", 0.6, 4, 6, True, 0.3, 64, **kw)[0]
    with torch.inference_mode():
        plain = run()
        fill = run(inpaint_model=flux["fill"])
        fill_lora = run(inpaint_model=flux["fill"], lora_name=LORA)
        fill_lora0 = run(inpaint_model=flux["fill"], lora_name=LORA, inpaint_lora_strength=0.0)
        fill_g = run(inpaint_model=flux["fill"], fill_guidance=3.5)
    assert not torch.equal(fill, plain) and not torch.equal(fill_lora, fill) and not torch.equal(fill_g, fill)
    assert torch.equal(fill_lora0, fill)
    assert P.hrm.with_guidance(pos, 30.0)[0][1]["guidance"] == 30.0 and pos[0][1]["guidance"] == 3.5
    with pytest.raises(P.Error, match="inpaint_model is not an inpainting model"):
        run(inpaint_model=flux["model"])
    with pytest.raises(P.Error, match="LoRA 'missing.safetensors' is not in the loras folder"):
        run(inpaint_model=flux["fill"], lora_name="missing.safetensors")


def test_lora_family_checks_between_sd_and_flux(P, flux, comfy, conds):
    """A Flux LoRA on an SD model and an SD LoRA on Flux are refused with the reason, with or without metadata."""
    with torch.inference_mode():
        sd_m, sd_c, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
    load = P.il.LoadIdentityLora()
    with pytest.raises(P.Error, match="tiny_flux_lora.safetensors is a LoRA for Flux.1 .* but this MODEL is SD1.x"):
        with torch.inference_mode():
            load.load(sd_m, sd_c, LORA, 1.0, 1.0)
    with pytest.raises(P.Error, match="tiny_lora.safetensors is a LoRA for an SD-family UNet .* but this MODEL is Flux.1"):
        with torch.inference_mode():
            load.load(flux["model"], flux["clip"], "tiny_lora.safetensors", 1.0, 1.0)
    with torch.inference_mode():
        m, c, _, info = load.load(flux["model"], flux["clip"], LORA, 1.0, 1.0)
    assert info == "no metadata" and m is not flux["model"]
    pos, neg = conds
    img, mask = _img_and_mask()
    with pytest.raises(P.Error, match="tiny_lora.safetensors is a LoRA for an SD-family UNet .*\\(inpaint_model\\)"):
        with torch.inference_mode():
            P.hrm.Harmonize().harmonize(flux["model"], pos, neg, flux["vae"], img, mask, 3, 2, 1.0, "euler", "simple", 0.6,
                                        4, 6, True, 0.3, 64, inpaint_model=flux["fill"], lora_name="tiny_lora.safetensors")


def test_flux_trains_on_fp8_weights(P, flux, comfy, photos):
    """The shipped Flux workflow loads the model with weight_dtype fp8_e4m3fn (it fits 16-24 GB cards): the trainer
    computes with the weights cast per layer (ComfyUI's own mechanism) and learns."""
    with torch.inference_mode():
        m8 = comfy.nodes.UNETLoader().load_unet(flux["unet_name"], "fp8_e4m3fn")[0]
    assert m8.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    cfg = P.lt.TrainConfig(steps=30, learning_rate=5e-3, rank=4, alpha=4, batch_size=2, resolution=64)
    path = os.path.join(comfy.models_dir, "loras", "test", "flux_fp8.safetensors")
    with torch.inference_mode():
        sd, state, _ = P.lc.train_identity_lora("T", m8, flux["clip"], flux["vae"], photos, "photo of sks person", cfg,
                                                path, resume="off", checkpoint_every=0)
    L = np.array(state.losses)
    assert np.isfinite(L).all() and L[-10:].mean() < L[:10].mean()
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in sd.items())
    assert m8.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn   # untouched


def test_flux_gradient_checkpointing_gives_the_same_lora(P, flux, comfy, photos):
    """Checkpointing Flux's double/single blocks (which add residuals to their inputs in place) recomputes exactly:
    the same LoRA as without it."""
    cfg = P.lt.TrainConfig(steps=4, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64)
    path = os.path.join(comfy.models_dir, "loras", "test", "flux_ckpt.safetensors")
    out = {}
    for ck in (False, True):
        with torch.inference_mode():
            out[ck] = P.lc.train_identity_lora("T", flux["model"], flux["clip"], flux["vae"], photos, "photo of sks person",
                                               cfg, path, resume="off", checkpoint_every=0, gradient_checkpointing=ck)
    (a, sa, _), (b, sb, _) = out[False], out[True]
    fam = P.fam.of_model(flux["model"])
    with torch.inference_mode(False):
        twin = P.lt.shadow_module(flux["model"].model.diffusion_model)
        dm = flux["model"].model.diffusion_model
        assert P.lt.enable_checkpointing(twin, fam.checkpoint_blocks) == len(dm.double_blocks) + len(dm.single_blocks)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert np.allclose(sa.losses, sb.losses, rtol=1e-5)
