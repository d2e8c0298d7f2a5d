"""The tiny Z-Image-shaped test models (tools/tiny_models.py) written by the test setup and loaded through ComfyUI's
own loaders: UNETLoader (NextDiT), CLIPLoader type lumina2 (Qwen3), VAELoader (16 channels), ModelPatchLoader (the
Z-Image Fun ControlNets, applied by ZImageFunControlnet); the stock nodes run on them and a stock Z-Image graph runs
in ComfyUI's executor. ComfyUI 0.33 only: the early-2024 host has no Z-Image and skips (the ``zimage`` fixture)."""
import os

import pytest
import safetensors.torch as st
import tiny_models as tm
import torch
from conftest import EXAMPLES, image_tensor

SIZE = 64           # pixels; 8x8 latent cells, 4x4 NextDiT tokens


def node(comfy, name, *args, **kwargs):
    """Run a stock node's function as the executor does (under inference mode); V1 and V3 (io.ComfyNode) nodes."""
    cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
    with torch.inference_mode():
        if hasattr(cls, "define_schema"):
            return tuple(cls.execute(*args, **kwargs).args)
        return getattr(cls(), cls.FUNCTION)(*args, **kwargs)


@pytest.fixture(scope="module")
def face():
    a = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    return torch.nn.functional.interpolate(a.permute(0, 3, 1, 2), size=(SIZE, SIZE), mode="area").permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def conds(comfy, zimage):
    """(positive, negative) from CLIPTextEncode on the tiny Qwen3 (the Turbo recipe: cfg 1, the negative unused)."""
    pos = node(comfy, "CLIPTextEncode", zimage["clip"], "portrait photo of a person")[0]
    neg = node(comfy, "CLIPTextEncode", zimage["clip"], "")[0]
    return pos, neg


def sample(comfy, model, pos, neg, latent, seed=1, steps=3, cfg=1.0):
    return node(comfy, "KSampler", model, seed, steps, cfg, "euler", "simple", pos, neg, latent, 1.0)[0]["samples"]


def empty_latent(comfy):
    return node(comfy, "EmptySD3LatentImage", SIZE, SIZE, 1)[0]


def read(comfy, name) -> dict:
    return st.load_file(os.path.join(comfy.models_dir, tm.ZIMAGE_FOLDERS[name], name))


def fun(comfy, zimage, patch, strength=1.0, **images):
    return node(comfy, "ZImageFunControlnet", model=zimage["model"], model_patch=zimage[patch], vae=zimage["vae"],
                strength=strength, **images)[0]


# ------------------------------------------------------------------------------------------- files and loaders
def test_files_are_written_small_and_listed_by_the_stock_loaders(comfy, zimage):
    fp = comfy.folder_paths
    total = 0
    for name, folder in tm.ZIMAGE_FOLDERS.items():
        path = os.path.join(comfy.models_dir, folder, name)
        assert os.path.isfile(path), path
        total += os.path.getsize(path) if name != tm.FLUX_VAE_NAME else 0      # (the VAE is the Flux one)
        assert name in fp.get_filename_list(folder), (name, folder)
    assert total < 45 * 2 ** 20
    names = ("unet_name", "te_name", "vae_name", "union_name", "tile_name", "adapter_name")
    assert {zimage[k] for k in names} == set(tm.ZIMAGE_FOLDERS)


def test_diffusion_model_is_z_image_shaped(comfy, zimage):
    import comfy.model_base as model_base
    import comfy.supported_models as supported
    from comfyui_megaportrait.nodes import families
    m = zimage["model"].model
    assert type(m) is model_base.Lumina2 and isinstance(m.model_config, supported.ZImage)
    assert m.model_type == model_base.ModelType.FLOW and m.latent_format.latent_channels == 16
    assert float(m.model_sampling.shift) == 3.0                          # Z-Image's, not Lumina 2's 6.0
    cfg = m.model_config.unet_config
    assert cfg["dim"] == tm.ZIMAGE_DIM and cfg["cap_feat_dim"] == tm.ZIMAGE_TE_WIDTH and cfg["z_image_modulation"]
    dm = m.diffusion_model
    assert len(dm.layers) == tm.ZIMAGE_LAYERS and dm.layers[0].attention.qkv.weight.shape == (3 * tm.ZIMAGE_DIM,
                                                                                               tm.ZIMAGE_DIM)
    # the family table: Z-Image (not Lumina 2), text width from cap_feat_dim, MODEL_PATCH controls
    fam = families.of_model(zimage["model"])
    assert fam.name == "Z-Image" and families.text_width(zimage["model"]) == tm.ZIMAGE_TE_WIDTH
    assert fam.control == families.MODEL_PATCH
    # ComfyUI loaded exactly the file's weights
    sd = read(comfy, zimage["unet_name"])
    assert "cap_embedder.1.weight" in sd and "noise_refiner.0.attention.k_norm.weight" in sd and "cap_pad_token" in sd
    loaded = dm.state_dict()
    for k in ("layers.1.attention.qkv.weight", "layers.0.feed_forward.w2.weight", "cap_pad_token"):
        assert sd[k].dtype == torch.bfloat16 and torch.equal(loaded[k].cpu().to(torch.bfloat16), sd[k]), k


def test_text_encoder_is_a_tiny_qwen3(comfy, zimage):
    import comfy.sd as sd_mod
    import comfy.text_encoders.z_image as z_te
    clip = zimage["clip"]
    assert isinstance(clip, sd_mod.CLIP) and isinstance(clip.tokenizer, z_te.ZImageTokenizer)
    te = clip.cond_stage_model
    assert isinstance(te, z_te.ZImageTEModel)
    emb = te.qwen3_4b.transformer.model.embed_tokens.weight
    assert emb.shape == (151936, tm.ZIMAGE_TE_WIDTH)                     # Qwen3's vocabulary: the real tokenizer
    a = node(comfy, "CLIPTextEncode", clip, "portrait photo of a person")[0]
    b = node(comfy, "CLIPTextEncode", clip, "portrait photo of a person")[0]
    c = node(comfy, "CLIPTextEncode", clip, "a landscape at dusk")[0]
    cond = a[0][0]
    assert cond.shape[0] == 1 and cond.shape[2] == tm.ZIMAGE_TE_WIDTH and torch.isfinite(cond).all()
    assert torch.equal(cond, b[0][0]) and not torch.equal(cond, c[0][0])
    sd = read(comfy, zimage["te_name"])
    assert torch.equal(emb.detach().cpu().to(sd["model.embed_tokens.weight"].dtype), sd["model.embed_tokens.weight"])


def test_registration_is_idempotent_and_only_takes_the_tiny_files(comfy, zimage):
    import comfy.ldm.lumina.controlnet as zcn
    import comfy.sd as sd_mod
    import comfy.text_encoders.z_image as z_te
    import comfy.utils as utils
    assert tm.register_zimage() is True and tm.register_zimage() is True
    tm.register()
    for wrapped in (sd_mod.detect_te_model, z_te.te, utils.load_torch_file):
        assert wrapped._megaportrait_tiny_zimage and not getattr(wrapped.__wrapped__, "_megaportrait_tiny_zimage", False)
    assert zcn.ZImage_Control._megaportrait_tiny and not getattr(zcn.ZImage_Control.__mro__[1], "_megaportrait_tiny", 0)
    te = read(comfy, zimage["te_name"])
    assert tm._is_tiny_qwen3(te) and sd_mod.detect_te_model(te) == sd_mod.TEModel.QWEN3_4B
    full = {"model.layers.0.post_attention_layernorm.weight": torch.empty(2560, device="meta"),
            "model.layers.0.self_attn.q_norm.weight": torch.empty(128, device="meta")}
    assert not tm._is_tiny_qwen3(full) and sd_mod.detect_te_model(full) == sd_mod.TEModel.QWEN3_4B   # stock rule
    assert tm._is_tiny_zimage_control(read(comfy, zimage["union_name"]))
    assert not tm._is_tiny_zimage_control({"control_all_x_embedder.2-1.weight": torch.empty(3840, 132, device="meta")})


def test_vae_has_16_latent_channels(comfy, zimage, face):
    """Z-Image decodes with the Flux VAE (ae.safetensors): the tiny one is the same 16-channel file."""
    assert tm.ZIMAGE_VAE_NAME == tm.FLUX_VAE_NAME
    vae = zimage["vae"]
    assert vae.latent_channels == 16
    lat = node(comfy, "VAEEncode", vae, face)[0]
    assert lat["samples"].shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(lat["samples"]).all()


def test_fun_controlnets_are_the_released_formats(comfy, zimage):
    """ModelPatchLoader recognised both files as Z-Image Fun ControlNets: the union one with the inpaint channels
    (3 control layers, control refiner blocks), the tile one in the 6-layer format without them."""
    import comfy.ldm.lumina.controlnet as zcn
    from comfyui_megaportrait.nodes import families
    union, tile = zimage["union"].model, zimage["tile"].model
    for net in (union, tile):
        assert isinstance(net, zcn.ZImage_Control) and families.of_control(net).name == "Z-Image"
        assert net.control_all_x_embedder["2-1"].weight.shape[0] == tm.ZIMAGE_DIM
    assert union.n_control_layers == tm.ZIMAGE_UNION_LAYERS and union.additional_in_dim == 17 and union.refiner_control
    assert union.control_all_x_embedder["2-1"].weight.shape[1] == 4 * (16 + 17)
    assert tile.n_control_layers == tm.ZIMAGE_TILE_LAYERS and tile.additional_in_dim == 0 and not tile.refiner_control
    sd = read(comfy, zimage["union_name"])      # the released names: split q/k/v, to_out.0, norm_q / norm_k
    assert "control_layers.0.attention.to_q.weight" in sd and "control_layers.0.attention.qkv.weight" not in sd
    assert "control_layers.4.adaLN_modulation.0.weight" not in sd and "control_noise_refiner.1.after_proj.weight" in sd
    qkv = torch.cat([sd[f"control_layers.1.attention.to_{x}.weight"] for x in "qkv"])
    assert torch.equal(union.control_layers[1].attention.qkv.weight.cpu().to(qkv.dtype), qkv)


# ------------------------------------------------------------------------------------------- sampling
def test_ksampler_is_finite_and_seed_deterministic(comfy, zimage, conds):
    pos, neg = conds
    lat = empty_latent(comfy)
    a = sample(comfy, zimage["model"], pos, neg, lat, seed=1)
    b = sample(comfy, zimage["model"], pos, neg, lat, seed=1)
    c = sample(comfy, zimage["model"], pos, neg, lat, seed=2)
    assert a.shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the prompt is read: another prompt gives another result
    other = node(comfy, "CLIPTextEncode", zimage["clip"], "a landscape at dusk")[0]
    assert not torch.allclose(a, sample(comfy, zimage["model"], other, neg, lat, seed=1))
    img = node(comfy, "VAEDecode", zimage["vae"], {"samples": a})[0]
    assert img.shape == (1, SIZE, SIZE, 3)


def test_fun_controlnet_patches_change_sampling_and_strength_zero_is_plain(comfy, zimage, conds, face):
    pos, neg = conds
    lat = empty_latent(comfy)
    base = sample(comfy, zimage["model"], pos, neg, lat)
    tile = sample(comfy, fun(comfy, zimage, "tile", image=face), pos, neg, lat)
    union = sample(comfy, fun(comfy, zimage, "union", image=face), pos, neg, lat)
    for x in (tile, union):
        assert torch.isfinite(x).all() and not torch.allclose(x, base)
    assert not torch.allclose(tile, union)
    # another control image, another result; strength 0 adds nothing
    assert not torch.allclose(union, sample(comfy, fun(comfy, zimage, "union", image=face.flip(2)), pos, neg, lat))
    assert torch.equal(sample(comfy, fun(comfy, zimage, "tile", 0.0, image=face), pos, neg, lat), base)
    assert torch.equal(sample(comfy, zimage["model"], pos, neg, lat), base)      # the loaded MODEL is not patched


def test_union_inpaint_mode_reads_the_masked_image(comfy, zimage, conds, face):
    pos, neg = conds
    lat = empty_latent(comfy)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:48, 16:48] = 1.0
    a = sample(comfy, fun(comfy, zimage, "union", inpaint_image=face, mask=mask), pos, neg, lat)
    b = sample(comfy, fun(comfy, zimage, "union", inpaint_image=face.flip(1), mask=mask), pos, neg, lat)
    c = sample(comfy, fun(comfy, zimage, "union", inpaint_image=face, mask=1.0 - mask), pos, neg, lat)
    assert torch.isfinite(a).all() and not torch.allclose(a, b) and not torch.allclose(a, c)


# ------------------------------------------------------------------------------------------- through the executor
def stock_zimage_graph(z: dict, seed: int = 0) -> dict:
    """A stock Z-Image Turbo graph (API format, as ComfyUI's "ControlNet (Z-Image-Turbo)" blueprint) on the tiny
    files: ModelSamplingAuraFlow 3, the Fun union ControlNet patch, KSampler with the family's sampler defaults."""
    from comfyui_megaportrait.nodes import families
    s = families.by_name("Z-Image").sampling
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": z["unet_name"], "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": z["te_name"], "type": "lumina2", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": z["vae_name"]}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "portrait photo of a person", "clip": ["2", 0]}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "ModelPatchLoader", "inputs": {"name": z["union_name"]}},
        "8": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "9": {"class_type": "ImageScale", "inputs": {"image": ["8", 0], "upscale_method": "area", "width": SIZE,
                                                     "height": SIZE, "crop": "center"}},
        "10": {"class_type": "ZImageFunControlnet", "inputs": {"model": ["4", 0], "model_patch": ["7", 0],
                                                               "vae": ["3", 0], "strength": 0.8, "image": ["9", 0]}},
        "11": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "12": {"class_type": "KSampler", "inputs": {
            "model": ["10", 0], "seed": seed, "steps": 2, "cfg": s.cfg, "sampler_name": s.sampler_name,
            "scheduler": s.scheduler, "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["11", 0],
            "denoise": 1.0}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["3", 0]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "tiny_zimage"}},
    }


def test_stock_zimage_graph_runs_in_comfyui_executor(comfy, zimage):
    """The file names validate against the loaders' lists (diffusion_models, text_encoders, model_patches) and the
    graph runs in ComfyUI's PromptExecutor, with the registration in place."""
    from PIL import Image
    res = comfy.run(stock_zimage_graph(zimage))
    (path,) = comfy.output_files(res, "14")
    with Image.open(path) as im:
        assert im.size == (SIZE, SIZE)
