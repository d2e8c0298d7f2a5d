"""The pipeline's stages on Z-Image (tiny Z-Image-shaped models loaded by ComfyUI 0.33's own loaders, see the
``zimage`` fixture): the family row read from the loaded model, the identity LoRA's targets and key format as the
stock LoraLoader applies them, the dual-strength sampler (exactly two KSampler runs, with and without a Fun
ControlNet patch), and the ControlNet family checks. Skipped on the early-2024 host (no Z-Image)."""
import os
import re

import pytest
import torch
from conftest import EXAMPLES, image_tensor


@pytest.fixture(scope="module")
def P(pack):
    import types

    import comfyui_megaportrait.nodes as N
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    return types.SimpleNamespace(fam=N.families, ids=N.identity_sampler, lf=N.lora_files, shd=N.shading,
                                 pp=N.people, Error=MegaPortraitError)


@pytest.fixture(scope="module")
def face():
    a = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    return torch.nn.functional.interpolate(a.permute(0, 3, 1, 2), size=(64, 64), mode="area").permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def conds(comfy, zimage):
    """(positive, negative = ConditioningZeroOut), as ComfyUI's Z-Image-Turbo blueprints make them."""
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        enc = comfy.nodes.CLIPTextEncode().encode(zimage["clip"], "photo of sks person")[0]
        neg = n["ConditioningZeroOut"]().zero_out(enc)
    return enc, (neg[0] if isinstance(neg, tuple) else neg.result[0])


def ksampler(comfy, m, pos, neg, latent, seed, steps, denoise, cfg=1.0, sampler="euler", scheduler="simple"):
    with torch.inference_mode():
        return comfy.nodes.KSampler().sample(m, seed, steps, cfg, sampler, scheduler, pos, neg, latent, denoise)[0]["samples"]


def fun_patch(comfy, zimage, image, strength=0.8):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS["ZImageFunControlnet"]
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(model=zimage["model"], model_patch=zimage["tile"], vae=zimage["vae"],
                                            strength=strength, image=image)[0]


# ------------------------------------------------------------------------------------------- the family table
def test_z_image_is_a_row_of_the_family_table(P, zimage):
    m = zimage["model"]
    fam = P.fam.of_model(m)
    assert fam.name == "Z-Image" and fam.latent_channels == 16 and fam.target == "flow" and fam.guidance == "cfg"
    import tiny_models as tm
    assert fam.control == P.fam.MODEL_PATCH and P.fam.text_width(m) == tm.ZIMAGE_TE_WIDTH     # cap_feat_dim
    from comfyui_megaportrait.nodes import comfy_compat, sampling
    assert not comfy_compat.is_inpaint_model(m) and comfy_compat.latent_channels(m) == 16
    assert sampling.latent_zeros(m, 1, 64, 64).shape == (1, 16, 8, 8)
    assert sampling.sampling_kind(m.get_model_object("model_sampling")) == "flow"
    # the LoRA targets: the main layers' fused qkv / out (+ SwiGLU w1..w3), never the refiners or the embedders
    dm = m.model.diffusion_model
    names = [n for n, mod in dm.named_modules() if isinstance(mod, torch.nn.Linear)]
    att = [n for n in names if re.fullmatch(fam.lora_targets["attention"], n)]
    ff = [n for n in names if re.fullmatch(fam.lora_targets["attention + feed-forward"], n)]
    assert sorted(att) == sorted(f"layers.{i}.attention.{p}" for i in range(len(dm.layers)) for p in ("qkv", "out"))
    assert set(att) < set(ff) and len(ff) == 5 * len(dm.layers)
    blocks = {type(b).__name__ for b in dm.modules()} & set(fam.checkpoint_blocks)
    assert blocks == {"JointTransformerBlock"}
    # the text encoder the table names is the CLIP's, and its LoRA targets are Linear layers there
    te = getattr(zimage["clip"].cond_stage_model, fam.text_encoders[0][0]).transformer
    assert [n for n, mod in te.named_modules() if isinstance(mod, torch.nn.Linear) and re.fullmatch(fam.te_lora_targets, n)]


def test_lora_on_the_table_targets_loads_fully_in_the_stock_loraloader(P, comfy, zimage, conds):
    """A kohya LoRA on the family's targets (lora_unet_<module name>, the trainer's format) is recognised as
    Z-Image by the table and applied by the stock LoraLoader to every targeted layer; strength 0 == base."""
    import tiny_models as tm
    m = zimage["model"]
    fam = P.fam.of_model(m)
    dm = m.model.diffusion_model
    layers = [(n, tuple(mod.weight.shape)) for n, mod in dm.named_modules() if isinstance(mod, torch.nn.Linear)
              and re.fullmatch(fam.lora_targets["attention + feed-forward"], n)]
    lora = tm.random_kohya_lora(layers, 4, 7)
    assert P.fam.of_lora_keys(lora) is fam
    assert P.lf.lora_fit_problem(lora, {"ss_base_model_version": fam.base_model_version}, fam, P.fam.text_width(m),
                                 "ZImage") is None
    import comfy.sd as comfy_sd
    with torch.inference_mode():      # what the stock LoraLoader does with the file's tensors
        patched = comfy_sd.load_lora_for_models(m, None, lora, 1.0, 0.0)[0]
        zero = comfy_sd.load_lora_for_models(m, None, lora, 0.0, 0.0)[0]
    assert len(patched.patches) == len(layers)
    pos, neg = conds
    with torch.inference_mode():
        lat = {"samples": torch.zeros(1, 16, 8, 8)}
    base = ksampler(comfy, m, pos, neg, lat, 3, 3, 1.0)
    assert torch.equal(ksampler(comfy, zero, pos, neg, lat, 3, 3, 1.0), base)
    assert not torch.allclose(ksampler(comfy, patched, pos, neg, lat, 3, 3, 1.0), base)


# ------------------------------------------------------------------------------------------- dual-strength sampler
@pytest.mark.parametrize("sampler,scheduler", [("euler", "simple"), ("res_multistep", "simple")])
def test_zimage_branches_equal_separate_ksampler_runs(P, zimage, comfy, face, conds, sampler, scheduler):
    m, v = zimage["model"], zimage["vae"]
    pos, neg = conds
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        ref, src, mode = P.ids.dual_sample("t", m, pos, neg, lat, 4, 6, 1.0, sampler, scheduler, 0.35, 0.7)
    assert mode == "sequential"            # flow models: CONST noise scaling cannot share passes exactly
    assert torch.equal(ref, ksampler(comfy, m, pos, neg, lat, 4, 6, 0.35, sampler=sampler, scheduler=scheduler))
    assert torch.equal(src, ksampler(comfy, m, pos, neg, lat, 4, 6, 0.7, sampler=sampler, scheduler=scheduler))
    assert not torch.equal(ref, src)


def test_zimage_dual_strength_node_with_a_fun_controlnet_patch(P, zimage, comfy, face, conds):
    """Geometry held by a Z-Image Fun ControlNet: the stock ZImageFunControlnet patches the MODEL upstream and the
    node's two branches are still exactly two KSampler runs of that MODEL."""
    pos, neg = conds
    v = zimage["vae"]
    s = P.fam.by_name("Z-Image").sampling
    patched = fun_patch(comfy, zimage, face)
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        out = P.ids.DualStrengthIdentitySampler().sample(patched, pos, neg, v, face, 5, s.steps, s.cfg, s.sampler_name,
                                                         s.scheduler, 0.35, 0.7)
    assert out[0]["samples"].shape == (1, 16, 8, 8) and out[1].shape == (1, 64, 64, 3)
    ref = ksampler(comfy, patched, pos, neg, lat, 5, s.steps, 0.35, s.cfg, s.sampler_name, s.scheduler)
    src = ksampler(comfy, patched, pos, neg, lat, 5, s.steps, 0.7, s.cfg, s.sampler_name, s.scheduler)
    assert torch.equal(out[0]["samples"], ref) and torch.equal(out[2]["samples"], src)
    plain = ksampler(comfy, zimage["model"], pos, neg, lat, 5, s.steps, 0.7, s.cfg, s.sampler_name, s.scheduler)
    assert not torch.allclose(src, plain)                                # the patch is applied in the branches


def test_a_controlnet_of_another_family_is_refused_on_zimage(P, zimage, comfy, face, conds):
    pos, neg = conds
    with torch.inference_mode():
        sd_net = comfy.nodes.ControlNetLoader().load_controlnet("tiny_controlnet.safetensors")[0]
    with pytest.raises(P.Error, match="'control_net' is a ControlNet for SD/SDXL but the MODEL is Z-Image"):
        with torch.inference_mode():
            P.ids.DualStrengthIdentitySampler().sample(zimage["model"], pos, neg, zimage["vae"], face, 1, 2, 1.0,
                                                       "euler", "simple", 0.35, 0.7, control_net=sd_net)


# ------------------------------------------------------------------------------------------- shading
def test_zimage_shading_with_fun_controlnets(P, zimage, comfy, face, conds):
    """The Shading Net on Z-Image: the light map through the tile Fun ControlNet, the HF map through the union one
    (MODEL_PATCH controls, applied by the stock ZImageFunControlnet). Strength 0 on both == plain sampling; each map
    changes the result; swapping the maps changes it differently; a schedule window outside the run == plain."""
    m, v = zimage["model"], zimage["vae"]
    pos, neg = conds
    node = P.shd.ShadingSamplerModelPatch()
    light, hf = (face * 0.8).clamp(0, 1), torch.full_like(face, 0.5) + 0.2 * (face - face.mean())

    def run(lmap, hmap, s1, s2, window=(0.0, 1.0, 0.0, 0.7), seed=4, **kw):
        with torch.inference_mode():
            return node.sample(m, pos, neg, v, lmap, hmap, zimage["tile"], zimage["union"], s1, window[0], window[1],
                               s2, window[2], window[3], seed, 4, 1.0, "euler", "simple", 0.6, init_image=face,
                               **kw)[0]["samples"]
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
    plain = ksampler(comfy, m, pos, neg, lat, 4, 4, 0.6)
    assert torch.equal(run(light, hf, 0.0, 0.0), plain)                       # strength 0 == plain sampling
    only_light, only_hf, both = run(light, hf, 0.8, 0.0), run(light, hf, 0.0, 0.8), run(light, hf, 0.8, 0.8)
    swapped = run(hf, light, 0.8, 0.8)
    for x in (only_light, only_hf, both, swapped):
        assert torch.isfinite(x).all() and not torch.equal(x, plain)
    assert not torch.equal(only_light, only_hf) and not torch.equal(both, only_light) and not torch.equal(both, swapped)
    # the same as the stock nodes wired by hand: ZImageFunControlnet twice, then KSampler
    by_hand = fun_patch(comfy, zimage, light, 0.8)
    cls = comfy.nodes.NODE_CLASS_MAPPINGS["ZImageFunControlnet"]
    with torch.inference_mode():
        by_hand = getattr(cls(), cls.FUNCTION)(model=by_hand, model_patch=zimage["union"], vae=v, image=hf,
                                               strength=0.8)[0]
    assert torch.equal(run(light, hf, 0.8, 0.8, window=(0.0, 1.0, 0.0, 1.0)), ksampler(comfy, by_hand, pos, neg, lat,
                                                                                          4, 4, 0.6))
    # schedule windows: a window no step falls in is plain sampling; a partial one differs from the full one
    assert torch.equal(run(light, hf, 0.8, 0.8, window=(1.0, 1.0, 1.0, 1.0)), plain)
    assert not torch.equal(run(light, hf, 0.8, 0.8, window=(0.5, 1.0, 0.5, 1.0)),
                           run(light, hf, 0.8, 0.8, window=(0.0, 1.0, 0.0, 1.0)))
    # from noise (no init image): the family's empty latent
    with torch.inference_mode():
        out = node.sample(m, pos, neg, v, light, hf, zimage["tile"], zimage["union"], 0.5, 0, 1, 0.5, 0, 1, 4, 3, 1.0,
                          "euler", "simple", 0.6)
    assert out[0]["samples"].shape == (1, 16, 8, 8) and out[1].shape == (1, 64, 64, 3)
    assert not m.model_options.get("transformer_options", {}).get("patches")     # the loaded MODEL is not patched


def test_zimage_shading_gives_each_face_its_persons_model(P, zimage, comfy, face, conds):
    """Several people on Z-Image: with a PEOPLE, each face of the batch is re-rendered by its own person's MODEL
    (here the base model and the base model with a LoRA), exactly as that face alone with that model."""
    import numpy as np
    m, v = zimage["model"], zimage["vae"]
    pos, neg = conds
    with torch.inference_mode():
        other = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(m, zimage["adapter_name"], 1.0)[0]
    e = np.zeros(128, np.float32)
    people = P.pp.People((P.pp.Person("base", m, e), P.pp.Person("lora", other, e)), faces=(1, 0),
                         places=((0, 16.0, 16.0), (0, 48.0, 48.0)))
    faces = torch.cat([face, face.flip(2)])
    node = P.shd.ShadingSamplerModelPatch()
    args = (zimage["tile"], zimage["union"], 0.8, 0.0, 1.0, 0.8, 0.0, 0.7, 4, 3, 1.0, "euler", "simple", 0.6)
    with torch.inference_mode():
        both = node.sample(m, pos, neg, v, faces, faces, *args, init_image=faces, people=people)[0]["samples"]
        plain = node.sample(m, pos, neg, v, faces, faces, *args, init_image=faces)[0]["samples"]
        for i, model in ((0, other), (1, m)):
            one = faces[i:i + 1]
            alone = node.sample(model, pos, neg, v, one, one, *args, init_image=one)[0]["samples"]
            assert torch.allclose(both[i:i + 1], alone, atol=1e-4), i
    assert (both[0] - plain[0]).abs().max() > 1e-3          # face 0: its person's LoRA, not the base model
    with pytest.raises(P.Error, match="assigns 2 face"):
        node.sample(m, pos, neg, v, face, face, *args, init_image=face, people=people)


def test_zimage_shading_refuses_controls_of_other_families(P, zimage, comfy, face, conds):
    pos, neg = conds
    node = P.shd.ShadingSamplerModelPatch()
    with torch.inference_mode():
        sd_m, sd_c, sd_v = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        sd_pos = comfy.nodes.CLIPTextEncode().encode(sd_c, "x")[0]
        sd_net = comfy.nodes.ControlNetLoader().load_controlnet("tiny_controlnet.safetensors")[0]
    with pytest.raises(P.Error, match="the MODEL is SD1.x, whose ControlNets are CONTROL_NETs"):
        with torch.inference_mode():
            node.sample(sd_m, sd_pos, sd_pos, sd_v, face, face, zimage["tile"], zimage["union"], 0.5, 0, 1, 0.5, 0, 1,
                        1, 2, 5.0, "euler", "normal", 0.5, init_image=face)
    with pytest.raises(P.Error, match="'hf_model_patch' is a ControlNet \\(CONTROL_NET\\), not a Z-Image model patch"):
        with torch.inference_mode():
            node.sample(zimage["model"], pos, neg, zimage["vae"], face, face, zimage["tile"], sd_net, 0.5, 0, 1, 0.5,
                        0, 1, 1, 2, 1.0, "euler", "simple", 0.5, init_image=face)
    # the CONTROL_NET sampler keeps refusing an SD ControlNet on Z-Image, naming the family
    with pytest.raises(P.Error, match="'light_control_net' is a ControlNet for SD/SDXL but the MODEL is Z-Image"):
        with torch.inference_mode():
            P.shd.ShadingSampler().sample(zimage["model"], pos, neg, zimage["vae"], face, face, sd_net, sd_net, 0.5, 0,
                                          1, 0.5, 0, 1, 1, 2, 1.0, "euler", "simple", 0.5, init_image=face)


# ------------------------------------------------------------------------------------------- harmonization
@pytest.mark.parametrize("crop", [True, False])
def test_zimage_harmonize_masked_img2img_keeps_outside_exact(P, zimage, comfy, conds, crop):
    """Harmonize on Z-Image without an inpaint control (masked img2img with the MODEL): every pixel where the grown,
    feathered mask is 0 is the input's; inside it changes. With a Fun ControlNet patch on the MODEL too."""
    from comfyui_megaportrait.nodes import harmonize
    pos, neg = conds
    img = torch.rand(1, 120, 96, 3, generator=torch.Generator().manual_seed(1))   # not a multiple of 8
    mask = torch.zeros(1, 120, 96)
    mask[:, 40:80, 30:70] = 1.0
    node = harmonize.Harmonize()
    fm = harmonize.prepare_mask(mask[0], 4, 6)
    patched = fun_patch(comfy, zimage, img[:, :64, :64].contiguous(), 0.5)
    for m in (zimage["model"], patched):
        with torch.inference_mode():
            out, lat = node.harmonize(m, pos, neg, zimage["vae"], img, mask, 3, 4, 1.0, "euler", "simple", 0.5, 4, 6,
                                      crop, 0.3, 64)
        assert out.shape == img.shape and torch.isfinite(out).all()
        assert torch.equal(out[0][fm == 0], img[0][fm == 0])
        assert (out - img)[0][fm > 0.99].abs().mean() > 0.01
        assert lat["samples"].shape[1] == 16


@pytest.mark.parametrize("crop", [True, False])
def test_zimage_harmonize_with_the_fun_controlnet_inpaint_mode(P, zimage, comfy, conds, crop):
    """Harmonize on Z-Image with the Fun ControlNet union patch's inpaint mode (inpaint_model_patch) on the MODEL with
    an identity LoRA: outside the grown, feathered mask every pixel is the input's; the patch changes the result
    against masked img2img; control_strength 0 is masked img2img; a patch without an inpaint mode is refused."""
    import comfy.sd as comfy_sd
    import tiny_models as tm
    from comfyui_megaportrait.nodes import harmonize
    pos, neg = conds
    m = zimage["model"]
    fam = P.fam.of_model(m)
    dm = m.model.diffusion_model
    layers = [(n, tuple(mod.weight.shape)) for n, mod in dm.named_modules() if isinstance(mod, torch.nn.Linear)
              and re.fullmatch(fam.lora_targets["attention"], n)]
    with torch.inference_mode():
        ident = comfy_sd.load_lora_for_models(m, None, tm.random_kohya_lora(layers, 4, 9), 1.0, 0.0)[0]
    img = torch.rand(1, 120, 96, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 120, 96)
    mask[:, 40:80, 30:70] = 1.0
    fm = harmonize.prepare_mask(mask[0], 4, 6)
    node = harmonize.Harmonize()

    def run(strength=0.8, patch=zimage["union"]):
        with torch.inference_mode():
            return node.harmonize(ident, pos, neg, zimage["vae"], img, mask, 3, 4, 1.0, "euler", "simple", 0.6, 4, 6,
                                  crop, 0.3, 64, control_strength=strength, inpaint_model_patch=patch)
    out, lat = run()
    assert out.shape == img.shape and torch.isfinite(out).all() and lat["samples"].shape[1] == 16
    assert torch.equal(out[0][fm == 0], img[0][fm == 0])
    assert (out - img)[0][fm > 0.99].abs().mean() > 0.01
    plain = run(patch=None)[0]
    assert torch.equal(run(strength=0.0)[0], plain)                 # strength 0 == masked img2img
    assert not torch.equal(out, plain)                               # the inpaint mode guides the redraw
    assert not ident.model_options.get("transformer_options", {}).get("patches")    # the MODEL is not patched
    with pytest.raises(P.Error, match="'inpaint_model_patch' has no inpaint mode"):
        run(patch=zimage["tile"])


def test_harmonize_inpaint_model_patch_is_refused_on_other_families(P, zimage, comfy):
    from comfyui_megaportrait.nodes import harmonize
    with torch.inference_mode():
        sd_m, sd_c, sd_v = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        sd_pos = comfy.nodes.CLIPTextEncode().encode(sd_c, "x")[0]
    img, mask = torch.rand(1, 64, 64, 3), torch.zeros(1, 64, 64)
    mask[:, 20:40, 20:40] = 1
    with pytest.raises(P.Error, match="Harmonize.*the MODEL is SD1.x, whose ControlNets are CONTROL_NETs"):
        with torch.inference_mode():
            harmonize.Harmonize().harmonize(sd_m, sd_pos, sd_pos, sd_v, img, mask, 1, 2, 5.0, "euler", "normal", 0.5,
                                            4, 6, True, 0.3, 64, inpaint_model_patch=zimage["union"])
