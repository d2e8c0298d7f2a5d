"""The three diffusion stages (dual-strength identity sampler, shading ControlNet sampler, harmonizer) inside a real
ComfyUI with tiny SD1.5- and SDXL-shaped models: in-process and through the server's /prompt."""
import io
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor, load_png
from PIL import Image

MODELS = {"sd15": ("tiny_sd15.safetensors", "tiny_controlnet.safetensors"),
          "sdxl": ("tiny_sdxl.safetensors", "tiny_sdxl_controlnet.safetensors")}


@pytest.fixture(scope="module")
def S(pack):
    from comfyui_megaportrait.nodes import harmonize, identity_sampler, shading
    from comfyui_megaportrait.nodes.common import MegaPortraitError

    class NS:
        ids, shd, hrm, Error = identity_sampler, shading, harmonize, MegaPortraitError
    return NS


@pytest.fixture(scope="module")
def face():
    a = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    return torch.nn.functional.interpolate(a.permute(0, 3, 1, 2), size=(64, 64), mode="area").permute(0, 2, 3, 1).contiguous()


_cache = {}


@pytest.fixture(scope="module", autouse=True)
def _drop_cached_models():
    """Release the cached models with the module: a ModelPatcher still alive at interpreter exit prints a traceback
    from its __del__ on current ComfyUI (its modules are gone by then)."""
    yield
    _cache.clear()


def kit(comfy, family):
    """(model, clip, vae, controlnet, positive, negative) for a tiny family, loaded once."""
    if family not in _cache:
        n = comfy.nodes
        ck, cn = MODELS[family]
        with torch.inference_mode():
            m, c, v = n.CheckpointLoaderSimple().load_checkpoint(ck)[:3]
            net = n.ControlNetLoader().load_controlnet(cn)[0]
            pos = n.CLIPTextEncode().encode(c, "photo of sks person")[0]
            neg = n.CLIPTextEncode().encode(c, "blurry")[0]
        _cache[family] = (m, c, v, net, pos, neg)
    return _cache[family]


def ksampler(comfy, m, pos, neg, latent, seed, steps, sampler, denoise, scheduler="karras", cfg=5.0):
    with torch.inference_mode():
        return comfy.nodes.KSampler().sample(m, seed, steps, cfg, sampler, scheduler, pos, neg, latent, denoise)[0]["samples"]


def close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


# ------------------------------------------------------------------------------------------- identity sampler
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_branches_equal_separate_ksampler_runs(comfy, S, face, family, sampler):
    m, c, v, net, pos, neg = kit(comfy, family)
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        ref, src, mode = S.ids.dual_sample("t", m, pos, neg, lat, 11, 8, 5.0, sampler, "karras", 0.35, 0.7)
    assert mode == ("sequential" if sampler == "euler_ancestral" else "batched")
    kr = ksampler(comfy, m, pos, neg, lat, 11, 8, sampler, 0.35)
    ks = ksampler(comfy, m, pos, neg, lat, 11, 8, sampler, 0.7)
    assert close(ref, kr) and close(src, ks)
    assert (ref - src).abs().mean() > 0.05 * ks.abs().mean()       # the two branches differ


def test_node_outputs_determinism_and_stock_latents(comfy, S, face):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    node = S.ids.DualStrengthIdentitySampler()
    with torch.inference_mode():
        a = node.sample(m, pos, neg, v, face, 5, 6, 5.0, "euler", "karras", 0.3, 0.7)
        b = node.sample(m, pos, neg, v, face, 5, 6, 5.0, "euler", "karras", 0.3, 0.7)
        c2 = node.sample(m, pos, neg, v, face, 6, 6, 5.0, "euler", "karras", 0.3, 0.7)
        # a stock latent (VAEEncode) feeds ours and gives the same result as encoding the image ourselves
        stock = comfy.nodes.VAEEncode().encode(v, face)[0]
        d = node.sample(m, pos, neg, v, face, 5, 6, 5.0, "euler", "karras", 0.3, 0.7, latent=stock)
    rl, ri, sl, si = a
    assert ri.shape == si.shape == (1, 64, 64, 3) and rl["samples"].shape == (1, 4, 8, 8)
    assert torch.equal(a[0]["samples"], b[0]["samples"]) and torch.equal(a[2]["samples"], b[2]["samples"])
    assert not torch.equal(a[2]["samples"], c2[2]["samples"])
    assert torch.equal(d[0]["samples"], a[0]["samples"])
    # our latents feed the stock KSampler / VAEDecode
    with torch.inference_mode():
        more = comfy.nodes.KSampler().sample(m, 1, 3, 5.0, "euler", "normal", pos, neg, rl, 0.3)[0]
        img = comfy.nodes.VAEDecode().decode(v, more)[0]
    assert img.shape == (1, 64, 64, 3)


def test_reference_model_and_share_passes_off(comfy, S, face):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    with torch.inference_mode():
        lora = comfy.nodes.LoraLoader().load_lora(m, c, "tiny_lora.safetensors", 0.5, 0.5)[0]
        lat = {"samples": v.encode(face)}
        ref, src, mode = S.ids.dual_sample("t", m, pos, neg, lat, 2, 6, 5.0, "euler", "karras", 0.35, 0.7,
                                           reference_model=lora)
        _, src_b, mode_b = S.ids.dual_sample("t", m, pos, neg, lat, 2, 6, 5.0, "euler", "karras", 0.35, 0.7)
        _, src_off, mode_off = S.ids.dual_sample("t", m, pos, neg, lat, 2, 6, 5.0, "euler", "karras", 0.35, 0.7,
                                                 share_passes=False)
    assert mode == "sequential" and mode_b == "batched" and mode_off == "sequential"
    assert close(ref, ksampler(comfy, lora, pos, neg, lat, 2, 6, "euler", 0.35))
    assert close(src, ksampler(comfy, m, pos, neg, lat, 2, 6, "euler", 0.7))
    assert close(src_b, src_off)


def test_partial_schedule_conditioning_and_flow_models_run_sequentially(comfy, S, face):
    """A conditioning limited to part of the schedule (ConditioningSetTimestepRange) and a flow-matching
    model_sampling (CONST noise scaling) cannot share passes exactly: both branches then equal their KSampler runs."""
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        late = comfy.nodes.NODE_CLASS_MAPPINGS["ConditioningSetTimestepRange"]().set_range(pos, 0.5, 1.0)[0]
        partial = late + comfy.nodes.NODE_CLASS_MAPPINGS["ConditioningSetTimestepRange"]().set_range(neg, 0.0, 0.5)[0]
        ref, src, mode = S.ids.dual_sample("t", m, partial, neg, lat, 2, 6, 5.0, "euler", "karras", 0.35, 0.7)
    assert mode == "sequential"
    assert close(ref, ksampler(comfy, m, partial, neg, lat, 2, 6, "euler", 0.35))
    assert close(src, ksampler(comfy, m, partial, neg, lat, 2, 6, "euler", 0.7))
    flow_patch = comfy.nodes.NODE_CLASS_MAPPINGS.get("ModelSamplingSD3")
    if flow_patch is None:
        pytest.skip("this ComfyUI (early 2024) has no flow-matching model sampling")
    with torch.inference_mode():
        mf = flow_patch().patch(m, 3.0)[0]
        ref, src, mode = S.ids.dual_sample("t", mf, pos, neg, lat, 2, 6, 5.0, "euler", "simple", 0.35, 0.7)
    assert mode == "sequential"
    assert close(ref, ksampler(comfy, mf, pos, neg, lat, 2, 6, "euler", 0.35, scheduler="simple"))
    assert close(src, ksampler(comfy, mf, pos, neg, lat, 2, 6, "euler", 0.7, scheduler="simple"))


def test_identity_sampler_controlnet(comfy, S, face):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    node = S.ids.DualStrengthIdentitySampler()
    with torch.inference_mode():
        plain = node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.3, 0.7)
        off = node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.3, 0.7, control_net=net,
                          control_strength=0.0)
        on = node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.3, 0.7, control_net=net,
                         control_strength=0.8)
        # a partial ControlNet window runs the branches one after the other, still equal to stock KSampler runs
        lat = {"samples": v.encode(face)}
        p2, n2 = comfy.nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, net, face, 0.8, 0.0, 0.5)[:2]
        ref, src, mode = S.ids.dual_sample("t", m, p2, n2, lat, 3, 6, 5.0, "euler", "karras", 0.3, 0.7)
    assert torch.equal(off[2]["samples"], plain[2]["samples"])
    assert not torch.equal(on[2]["samples"], plain[2]["samples"])
    assert mode == "sequential" and close(src, ksampler(comfy, m, p2, n2, lat, 3, 6, "euler", 0.7))


def test_identity_sampler_bad_input(comfy, S, face):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    xl_net = kit(comfy, "sdxl")[3]
    node = S.ids.DualStrengthIdentitySampler()
    with pytest.raises(S.Error, match="ControlNet for a model with text context 64 .* MODEL has 32"):
        with torch.inference_mode():
            node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.3, 0.7, control_net=xl_net)
    with pytest.raises(S.Error, match="control_image has a batch of 3"):
        with torch.inference_mode():
            node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.3, 0.7, control_net=net,
                        control_image=torch.cat([face] * 3))
    with pytest.raises(S.Error, match="multiples of 8"):
        with torch.inference_mode():
            node.sample(m, pos, neg, v, face[:, :60, :60], 3, 6, 5.0, "euler", "karras", 0.3, 0.7)
    with pytest.raises(S.Error, match="not a LATENT"):
        with torch.inference_mode():
            node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.3, 0.7, latent=face)


def test_identity_sampler_denoise_zero_is_the_input(comfy, S, face):
    """reference_denoise (or source_denoise) 0 = that branch is the input unchanged, as the tooltip says; the other
    branch is its KSampler run."""
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    node = S.ids.DualStrengthIdentitySampler()
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        ref, _, src, _ = node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.0, 0.7, latent=lat)
        assert torch.equal(ref["samples"], lat["samples"])
        assert close(src["samples"], ksampler(comfy, m, pos, neg, lat, 3, 6, "euler", 0.7))
        ref, _, src, _ = node.sample(m, pos, neg, v, face, 3, 6, 5.0, "euler", "karras", 0.0, 0.0, latent=lat)
        assert torch.equal(ref["samples"], lat["samples"]) and torch.equal(src["samples"], lat["samples"])


# ------------------------------------------------------------------------------------------- shading sampler
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_shading_strength_zero_is_plain_sampling(comfy, S, face, family):
    m, c, v, net, pos, neg = kit(comfy, family)
    node = S.shd.ShadingSampler()
    light, hf = face * 0.8, torch.full_like(face, 0.5)
    with torch.inference_mode():
        lat = {"samples": v.encode(face)}
        zero = node.sample(m, pos, neg, v, light, hf, net, net, 0.0, 0, 1, 0.0, 0, 1, 4, 6, 5.0, "euler", "normal", 0.6,
                           init_image=face)
        on = node.sample(m, pos, neg, v, light, hf, net, net, 0.6, 0, 1, 0.5, 0, 0.7, 4, 6, 5.0, "euler", "normal", 0.6,
                         init_image=face)
        only_light = node.sample(m, pos, neg, v, light, hf, net, net, 0.6, 0, 1, 0.0, 0, 0.7, 4, 6, 5.0, "euler",
                                 "normal", 0.6, init_latent=lat)
    plain = ksampler(comfy, m, pos, neg, lat, 4, 6, "euler", 0.6, scheduler="normal")
    assert torch.equal(zero[0]["samples"], plain)
    assert not torch.equal(on[0]["samples"], plain) and not torch.equal(only_light[0]["samples"], plain)
    assert not torch.equal(on[0]["samples"], only_light[0]["samples"])
    assert zero[1].shape == (1, 64, 64, 3)


def test_shading_from_noise_and_bad_input(comfy, S, face):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    node = S.shd.ShadingSampler()
    with torch.inference_mode():
        out = node.sample(m, pos, neg, v, face, face, net, net, 0.0, 0, 1, 0.0, 0, 1, 4, 5, 5.0, "euler", "normal", 0.3)
        empty = comfy.nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    assert torch.equal(out[0]["samples"], ksampler(comfy, m, pos, neg, empty, 4, 5, "euler", 1.0, scheduler="normal"))
    xl_net = kit(comfy, "sdxl")[3]
    cases = [
        (dict(light_map=face, hf_map=face[:, :32, :32]), "light_map is 64x64 but hf_map is 32x32"),
        (dict(light_map=face, hf_map=face, init_image=torch.rand(1, 128, 128, 3)), "init_image is 128x128"),
        (dict(light_map=face, hf_map=face, light_control_net=xl_net), "'light_control_net' is a ControlNet for a model"),
        (dict(light_map=face, hf_map=face, init_latent={"samples": torch.zeros(1, 4, 16, 16)}), "init_latent is 128x128"),
        (dict(light_map=torch.cat([face] * 3), hf_map=face, init_image=torch.cat([face] * 2)), "light_map has a batch of 3"),
    ]
    for kw, msg in cases:
        args = dict(light_map=face, hf_map=face, light_control_net=net, hf_control_net=net, light_strength=0.5,
                    light_start=0, light_end=1, hf_strength=0.5, hf_start=0, hf_end=1, seed=1, steps=2, cfg=5.0,
                    sampler_name="euler", scheduler="normal", denoise=0.5)
        args.update(kw)
        with pytest.raises(S.Error, match=msg):
            with torch.inference_mode():
                node.sample(m, pos, neg, v, **args)


# ------------------------------------------------------------------------------------------- harmonizer
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("crop", [True, False])
def test_harmonize_keeps_outside_exact(comfy, S, family, crop):
    m, c, v, net, pos, neg = kit(comfy, family)
    img = torch.rand(1, 120, 96, 3, generator=torch.Generator().manual_seed(1))   # not a multiple of 8
    mask = torch.zeros(1, 120, 96)
    mask[:, 40:80, 30:70] = 1.0
    node = S.hrm.Harmonize()
    with torch.inference_mode():
        out, lat = node.harmonize(m, pos, neg, v, img, mask, 3, 4, 5.0, "euler", "normal", 0.5, 4, 6, crop, 0.3, 64)
        again, _ = node.harmonize(m, pos, neg, v, img, mask, 3, 4, 5.0, "euler", "normal", 0.5, 4, 6, crop, 0.3, 64)
    fm = S.hrm.prepare_mask(mask[0], 4, 6)
    assert out.shape == img.shape
    assert torch.equal(out[0][fm == 0], img[0][fm == 0])
    assert (out - img)[0][fm > 0.99].abs().mean() > 0.01
    assert torch.equal(out, again)                          # seeded
    if crop:
        assert lat["samples"].shape[-2:] == (8, 8)          # the box at the 64 px working resolution
    else:
        assert lat["samples"].shape[-2:] == (15, 12)        # the whole image, padded to multiples of 8


def test_harmonize_masks_and_controlnet(comfy, S):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    node = S.hrm.Harmonize()
    img = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    args = (3, 4, 5.0, "euler", "normal", 0.5, 0, 4, True, 0.3, 64)
    with torch.inference_mode():
        empty, _ = node.harmonize(m, pos, neg, v, img, torch.zeros(1, 64, 64), *args)
        ones, _ = node.harmonize(m, pos, neg, v, img, torch.ones(1, 64, 64), *args)
        mk = torch.zeros(1, 64, 64)
        mk[:, 20:40, 20:40] = 1
        plain, _ = node.harmonize(m, pos, neg, v, img, mk, *args)
        cn0, _ = node.harmonize(m, pos, neg, v, img, mk, *args, control_net=net, control_strength=0.0)
        cn1, _ = node.harmonize(m, pos, neg, v, img, mk, *args, control_net=net, control_strength=1.0)
    assert torch.equal(empty, img)                          # empty mask: nothing to do, documented pass-through
    assert (ones - img).abs().mean() > 0.02                 # all-ones: the whole image is redrawn
    assert torch.equal(cn0, plain) and not torch.equal(cn1, plain)
    assert not torch.equal(plain[0], plain[1])              # batch items are harmonized separately
    hint = S.hrm.inpaint_hint(img[0], mk[0])
    assert (hint[20:40, 20:40] == -1).all() and torch.equal(hint[:20], img[0, :20])


def test_harmonize_bad_input(comfy, S):
    m, c, v, net, pos, neg = kit(comfy, "sd15")
    xl_net = kit(comfy, "sdxl")[3]
    node = S.hrm.Harmonize()
    img = torch.rand(2, 64, 64, 3)
    args = (3, 2, 5.0, "euler", "normal", 0.5, 0, 4, True, 0.3, 64)
    with pytest.raises(S.Error, match="'mask' is 32x32 but the image is 64x64"):
        node.harmonize(m, pos, neg, v, img, torch.ones(1, 32, 32), *args)
    with pytest.raises(S.Error, match="'mask' has a batch of 3 but the image batch is 2"):
        node.harmonize(m, pos, neg, v, img, torch.ones(3, 64, 64), *args)
    with pytest.raises(S.Error, match="ControlNet for a model with text context 64"):
        node.harmonize(m, pos, neg, v, img, torch.ones(1, 64, 64), *args, control_net=xl_net)
    with pytest.raises(S.Error, match="working_resolution 60"):
        node.harmonize(m, pos, neg, v, img, torch.ones(1, 64, 64), *args[:-1], 60)
    # the widget's largest seed with a batch of 2: image i uses seed + i, wrapping round like a 64-bit counter
    top = 0xFFFFFFFFFFFFFFFF
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    with torch.inference_mode():
        out, _ = node.harmonize(m, pos, neg, v, img, mask, top, *args[1:])
        first, _ = node.harmonize(m, pos, neg, v, img[1:], mask, 0, *args[1:])
    assert out.shape == img.shape and torch.equal(out[1:], first)      # image 1 got seed (top + 1) mod 2**64 = 0


# ------------------------------------------------------------------------------------------- graphs
def pipeline_graph(prefix, family="sd15"):
    ck, cn = MODELS[family]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ck}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "photo of sks person", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "5": {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "upscale_method": "area", "width": 64, "height": 64,
                                                     "crop": "disabled"}},
        "6": {"class_type": "MegaPortraitDualStrengthIdentitySampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "image": ["5", 0], "seed": 1,
            "steps": 5, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras", "reference_denoise": 0.35,
            "source_denoise": 0.7}},
        "7": {"class_type": "MegaPortraitLightMap", "inputs": {"image": ["6", 1], "sigma": 8.0,
                                                                "sigma_mode": "relative to 512 px", "filter_type": "gaussian"}},
        "8": {"class_type": "MegaPortraitHFMap", "inputs": {"image": ["6", 3], "sigma": 8.0, "sigma_mode": "relative to 512 px",
                                                             "filter_type": "gaussian", "gain": 1.0}},
        "9": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": cn}},
        "10": {"class_type": "MegaPortraitShadingSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "light_map": ["7", 0],
            "hf_map": ["8", 0], "light_control_net": ["9", 0], "hf_control_net": ["9", 0], "light_strength": 0.6,
            "light_start": 0.0, "light_end": 1.0, "hf_strength": 0.5, "hf_start": 0.0, "hf_end": 0.7, "seed": 2, "steps": 4,
            "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 0.75, "init_image": ["6", 3]}},
        "11": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3, "steps": 3, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                    "negative": ["3", 0], "latent_image": ["10", 0], "denoise": 0.3}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 24, "height": 24}},
        "14": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
        "15": {"class_type": "MaskComposite", "inputs": {"destination": ["14", 0], "source": ["13", 0], "x": 20, "y": 20,
                                                         "operation": "add"}},
        "16": {"class_type": "MegaPortraitHarmonize", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "image": ["12", 0],
            "mask": ["15", 0], "seed": 4, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras",
            "denoise": 0.5, "grow": 2, "feather": 4, "crop_to_mask": True, "padding": 0.3, "working_resolution": 64}},
        "17": {"class_type": "SaveImage", "inputs": {"images": ["16", 0], "filename_prefix": f"{prefix}_harmonized"}},
        "18": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": f"{prefix}_shaded"}},
        "19": {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": f"{prefix}_reflike"}},
    }


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_stage_graph_in_process(comfy, family):
    res = comfy.run(pipeline_graph(f"inp_stages_{family}", family))
    harm = load_png(comfy.output_files(res, "17")[0]).astype(int)
    shaded = load_png(comfy.output_files(res, "18")[0]).astype(int)
    assert harm.shape == shaded.shape == (64, 64, 3)
    assert load_png(comfy.output_files(res, "19")[0]).shape == (64, 64, 3)
    # outside the grown + feathered square the harmonized image is the shaded one
    assert np.array_equal(harm[:10], shaded[:10]) and np.array_equal(harm[:, :10], shaded[:, :10])
    assert (harm[25:40, 25:40] != shaded[25:40, 25:40]).any()


@pytest.mark.server
def test_stage_graph_via_server(server, comfy):
    hist = server.client.run(pipeline_graph("srv_stages"), timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    res = comfy.run(pipeline_graph("inp_stages_cmp"))
    for node in ("17", "18", "19"):
        (entry,) = hist["outputs"][node]["images"]
        got = np.asarray(Image.open(io.BytesIO(server.client.view(entry["filename"], entry["subfolder"]))).convert("RGB"))
        want = load_png(comfy.output_files(res, node)[0])
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_union_mode_numbers_an_sdxl_union_controlnet_its_own_way(comfy, S):
    """The same mode names map to the xinsir SDXL union numbering (ComfyUI's own ControlNet object; the set mode is
    what the model's task embedding is indexed with)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import tiny_models
    if not hasattr(comfy.controlnet.ControlNet, "set_extra_arg"):
        pytest.skip("this ComfyUI (early 2024) has no union ControlNets")
    cfg = dict(tiny_models.TINY_SDXL_UNET_CONFIG)
    cfg.pop("out_channels")
    cfg.update(hint_channels=3, dtype=torch.float32, union_controlnet_num_control_type=8)
    cn = comfy.controlnet.ControlNet(comfy.cldm.cldm.ControlNet(**cfg))
    node = S.shd.UnionControlNetMode()
    assert node.set_mode(cn, "tile")[0].extra_args["control_type"] == [6]
    assert node.set_mode(cn, "softedge")[0].extra_args["control_type"] == [2]
    assert node.set_mode(cn, "lineart")[0].extra_args["control_type"] == [3]
    assert "control_type" not in cn.extra_args
    with pytest.raises(S.Error, match="has no 'blur' mode; it has: pose, depth, softedge"):
        node.set_mode(cn, "blur")
