"""The tiny Flux.1-shaped test models (tools/tiny_models.py) written by the test setup and loaded through ComfyUI's
own loaders: each file is the kind of model it stands in for, and the stock nodes run on them (text encoding,
guidance, KSampler, union ControlNet modes, LoRA, Fill inpainting). ComfyUI >= 0.3 only: the early-2024 host
has no Flux and skips (the ``flux`` fixture)."""
import os

import pytest
import safetensors.torch as st
import tiny_models as tm
import torch
from conftest import EXAMPLES, image_tensor

SIZE = 64           # pixels; 8x8 latent cells, 4x4 Flux tokens


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
def conds(comfy, flux):
    """(positive with FluxGuidance 3.5, negative) from CLIPTextEncode on the tiny clip_l + T5."""
    pos = node(comfy, "CLIPTextEncode", flux["clip"], "portrait photo of a person")[0]
    pos = node(comfy, "FluxGuidance", pos, 3.5)[0]
    neg = node(comfy, "CLIPTextEncode", flux["clip"], "")[0]
    return pos, neg


def sample(comfy, model, pos, neg, latent, seed=1, steps=3):
    return node(comfy, "KSampler", model, seed, steps, 1.0, "euler", "simple", pos, neg, latent, 1.0)[0]["samples"]


def empty_latent(comfy):
    return node(comfy, "EmptySD3LatentImage", SIZE, SIZE, 1)[0]


def read(comfy, name) -> dict:
    return st.load_file(os.path.join(comfy.models_dir, tm.FLUX_FOLDERS[name], name))


# ------------------------------------------------------------------------------------------- files and loaders
def test_files_are_written_small_and_listed_by_the_stock_loaders(comfy, flux):
    fp = comfy.folder_paths
    total = 0
    for name, folder in tm.FLUX_FOLDERS.items():
        path = os.path.join(comfy.models_dir, folder, name)
        assert os.path.isfile(path), path
        total += os.path.getsize(path)
        assert name in fp.get_filename_list(folder), (name, folder)
    assert total < 120 * 2 ** 20
    assert {flux[k] for k in ("unet_name", "fill_name", "clip_l_name", "t5_name", "vae_name", "union_name",
                              "lora_name")} == set(tm.FLUX_FOLDERS)


def test_diffusion_model_is_flux_dev_shaped(comfy, flux):
    import comfy.model_base as model_base
    import comfy.supported_models as supported
    m = flux["model"].model
    assert isinstance(m, model_base.Flux)
    assert type(m.model_config) is supported.Flux                       # [dev]: not Fill, not Schnell
    p = m.diffusion_model.params
    assert p.guidance_embed and p.in_channels == p.out_channels == 16 and p.patch_size == 2
    assert (p.hidden_size, p.num_heads, p.depth, p.depth_single_blocks) == (tm.FLUX_HIDDEN, 2, tm.FLUX_DEPTH,
                                                                             tm.FLUX_SINGLE_DEPTH)
    assert p.context_in_dim == tm.FLUX_T5_WIDTH != tm.CTX and p.vec_in_dim == tm.FLUX_CLIP_WIDTH
    assert m.latent_format.latent_channels == 16 and m.model_type == model_base.ModelType.FLUX
    # the BFL file layout (QK norms saved as .scale) and ComfyUI loaded exactly the file's weights
    sd = read(comfy, flux["unet_name"])
    assert "double_blocks.0.img_attn.norm.key_norm.scale" in sd and "guidance_in.in_layer.weight" in sd
    loaded = m.diffusion_model.state_dict()
    assert torch.equal(loaded["double_blocks.1.img_attn.norm.key_norm.weight"].cpu(),
                       sd["double_blocks.1.img_attn.norm.key_norm.scale"])
    assert torch.equal(loaded["single_blocks.0.linear1.weight"].cpu(), sd["single_blocks.0.linear1.weight"])


def test_fill_model_is_the_inpainting_flux(comfy, flux):
    import comfy.model_base as model_base
    import comfy.supported_models as supported
    m = flux["fill"].model
    assert isinstance(m, model_base.Flux) and type(m.model_config) is supported.FluxInpaint
    assert m.diffusion_model.img_in.weight.shape[1] == tm.FLUX_FILL_IN_CHANNELS * 4
    # the model asks for its extra input: masked-image latent (16) + the mask folded 8x8 (64)
    noise = torch.zeros(1, 16, 8, 8)
    with torch.inference_mode():
        concat = m.concat_cond(noise=noise, device=torch.device("cpu"), concat_latent_image=torch.zeros(1, 16, 8, 8),
                               concat_mask=torch.ones(1, 1, SIZE, SIZE))
        assert flux["model"].model.concat_cond(noise=noise, device=torch.device("cpu")) is None
    assert concat.shape == (1, 16 + 64, 8, 8)


def test_text_encoders_are_tiny_clip_l_and_t5(comfy, flux):
    import comfy.sd as sd_mod
    clip = flux["clip"]
    assert isinstance(clip, sd_mod.CLIP)
    te = clip.cond_stage_model
    assert te.clip_l.transformer.text_model.embeddings.token_embedding.weight.shape == (49408, tm.FLUX_CLIP_WIDTH)
    assert te.clip_l.num_layers >= 2 and te.t5xxl.num_layers == 2
    assert te.t5xxl.transformer.shared.weight.shape == (32128, tm.FLUX_T5_WIDTH)   # the real T5 tokenizer's vocab
    with torch.inference_mode():
        a = node(comfy, "CLIPTextEncode", clip, "portrait photo of a person")[0]
        b = node(comfy, "CLIPTextEncode", clip, "portrait photo of a person")[0]
        c = node(comfy, "CLIPTextEncode", clip, "a landscape at dusk")[0]
    cond, extra = a[0]
    assert cond.shape[0] == 1 and cond.shape[2] == tm.FLUX_T5_WIDTH and cond.shape[1] >= 256   # T5's min length
    assert extra["pooled_output"].shape == (1, tm.FLUX_CLIP_WIDTH) and torch.isfinite(cond).all()
    assert torch.equal(cond, b[0][0]) and not torch.equal(cond, c[0][0])
    assert not torch.equal(extra["pooled_output"], c[0][1]["pooled_output"])
    # ComfyUI loaded the files' weights (no fresh init); it keeps text encoders in its text-encoder dtype (float16
    # on a CPU too) and computes in float32
    sd = read(comfy, flux["t5_name"])
    w = te.t5xxl.transformer.shared.weight.detach().cpu()
    assert torch.equal(w, sd["shared.weight"].to(w.dtype))


def test_registration_is_idempotent_and_only_takes_the_tiny_pair(comfy, flux):
    import comfy.sd as sd_mod
    import comfy.text_encoders.flux as te_flux
    assert tm.register_flux() is tm.register_flux() is sd_mod.load_text_encoder_state_dicts
    tm.register()
    for wrapped in (sd_mod.load_text_encoder_state_dicts, te_flux.flux_clip):
        assert wrapped._megaportrait_tiny_flux and not getattr(wrapped.__wrapped__, "_megaportrait_tiny_flux", False)
    clip_l, t5 = read(comfy, flux["clip_l_name"]), read(comfy, flux["t5_name"])
    assert tm._is_tiny_flux_te([clip_l, t5]) and tm._is_tiny_flux_te([t5, clip_l])
    full_t5 = {"shared.weight": torch.empty(32128, 4096, device="meta")}
    full_l = {"text_model.embeddings.token_embedding.weight": torch.empty(49408, 768, device="meta")}
    assert not tm._is_tiny_flux_te([clip_l, full_t5]) and not tm._is_tiny_flux_te([full_l, t5])
    assert not tm._is_tiny_flux_te([clip_l]) and not tm._is_tiny_flux_te([t5])


def test_vae_has_16_latent_channels(comfy, flux, face):
    vae = flux["vae"]
    assert vae.latent_channels == 16
    lat = node(comfy, "VAEEncode", vae, face)[0]
    assert lat["samples"].shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(lat["samples"]).all()
    img = node(comfy, "VAEDecode", vae, lat)[0]
    assert img.shape == (1, SIZE, SIZE, 3) and torch.isfinite(img).all()


def test_union_controlnet_is_instantx_format(comfy, flux):
    import comfy.controlnet as controlnet
    import comfy.ldm.flux.controlnet as flux_controlnet
    cn = flux["union"]
    assert isinstance(cn, controlnet.ControlNet)
    net = cn.control_model
    assert isinstance(net, flux_controlnet.ControlNetFlux)
    assert net.num_union_modes == tm.FLUX_UNION_MODES and net.latent_input
    assert net.pos_embed_input.weight.shape[1] == 16 * 4                      # 16-channel control latents
    sd = read(comfy, flux["union_name"])                                     # diffusers names, as the public file
    assert "controlnet_x_embedder.weight" in sd and "transformer_blocks.0.attn.to_q.weight" in sd
    assert "single_transformer_blocks.0.proj_mlp.weight" in sd and "double_blocks.0.img_attn.qkv.weight" not in sd
    assert sd["controlnet_mode_embedder.weight"].shape == (tm.FLUX_UNION_MODES, tm.FLUX_HIDDEN)
    # ComfyUI's conversion fused q/k/v back to the file's weights; output blocks are non-zero
    qkv = torch.cat([sd[f"transformer_blocks.0.attn.to_{x}.weight"] for x in "qkv"])
    assert torch.equal(net.double_blocks[0].img_attn.qkv.weight.cpu(), qkv)
    lin1 = torch.cat([sd[f"single_transformer_blocks.0.attn.to_{x}.weight"] for x in "qkv"]
                     + [sd["single_transformer_blocks.0.proj_mlp.weight"]])
    assert torch.equal(net.single_blocks[0].linear1.weight.cpu(), lin1)
    for block in (net.controlnet_blocks[0], net.controlnet_single_blocks[0]):
        assert block.weight.detach().abs().sum() > 0


def test_union_file_names_are_the_diffusers_ones_comfyui_maps(flux):
    """Every name the writer gives is one ComfyUI's diffusers -> BFL map knows, or a ControlNet-only one."""
    import comfy.utils as utils
    sd = tm.build_flux_union_sd()
    cfg = {"depth": tm.FLUX_UNION_DEPTH, "depth_single_blocks": tm.FLUX_UNION_SINGLE_DEPTH, "hidden_size": tm.FLUX_HIDDEN}
    known = utils.flux_to_diffusers(cfg)
    extra = {k for k in sd if k not in known}
    assert all(k.startswith(("controlnet_blocks.", "controlnet_single_blocks.", "controlnet_mode_embedder.")) for k in extra)


# ------------------------------------------------------------------------------------------- sampling
def test_ksampler_is_finite_and_seed_deterministic(comfy, flux, conds):
    pos, neg = conds
    lat = empty_latent(comfy)
    a = sample(comfy, flux["model"], pos, neg, lat, seed=1)
    b = sample(comfy, flux["model"], pos, neg, lat, seed=1)
    c = sample(comfy, flux["model"], pos, neg, lat, seed=2)
    assert a.shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the guidance embedding is used: another FluxGuidance value gives another result
    pos_g = node(comfy, "FluxGuidance", pos, 1.0)[0]
    assert not torch.allclose(a, sample(comfy, flux["model"], pos_g, neg, lat, seed=1))
    img = node(comfy, "VAEDecode", flux["vae"], {"samples": a})[0]
    assert img.shape == (1, SIZE, SIZE, 3)


def test_union_modes_differ_and_strength_zero_is_no_controlnet(comfy, flux, conds, face):
    pos, neg = conds
    lat = empty_latent(comfy)
    base = sample(comfy, flux["model"], pos, neg, lat)

    def with_cn(cn, strength=1.0):
        p, n = node(comfy, "ControlNetApplyAdvanced", pos, neg, cn, face, strength, 0.0, 1.0, flux["vae"])
        return sample(comfy, flux["model"], p, n, lat)

    def mode(i):
        cn = flux["union"].copy()
        cn.set_extra_arg("control_type", [i])
        return cn

    out = {i: with_cn(mode(i)) for i in (0, 6, 9)}
    for i, x in out.items():
        assert torch.isfinite(x).all() and not torch.allclose(x, base), i
    assert not torch.allclose(out[0], out[6]) and not torch.allclose(out[6], out[9])
    # the stock SetUnionControlNetType node sets the same mode ("tile" is 6)
    tile = node(comfy, "SetUnionControlNetType", flux["union"], "tile")[0]
    assert torch.equal(with_cn(tile), out[6])
    assert torch.equal(with_cn(mode(0), strength=0.0), base)


def test_lora_strength(comfy, flux, conds):
    pos, neg = conds
    lat = empty_latent(comfy)
    m, clip = flux["model"], flux["clip"]
    base = sample(comfy, m, pos, neg, lat)
    n_modules = sum(k.endswith(".lora_down.weight") for k in read(comfy, flux["lora_name"]))
    assert n_modules == 4 * tm.FLUX_DEPTH + 2 * tm.FLUX_SINGLE_DEPTH    # (img|txt)_attn.(qkv|proj), linear1/2
    # strength 0 for the model (clip strength 1 so that the node does not return its inputs untouched)
    m0 = node(comfy, "LoraLoader", m, clip, flux["lora_name"], 0.0, 1.0)[0]
    m1 = node(comfy, "LoraLoader", m, clip, flux["lora_name"], 1.0, 1.0)[0]
    assert len(m1.patches) == n_modules                             # every LoRA module found its Flux layer
    assert torch.equal(sample(comfy, m0, pos, neg, lat), base)
    one = sample(comfy, m1, pos, neg, lat)
    assert torch.isfinite(one).all() and not torch.allclose(one, base)
    assert torch.equal(sample(comfy, m, pos, neg, lat), base)       # the base model is not patched


def test_fill_inpainting_runs(comfy, flux, conds, face):
    pos, neg = conds
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:48, 16:48] = 1.0
    p, n, lat = node(comfy, "InpaintModelConditioning", pos, neg, face, flux["vae"], mask, True)
    assert lat["samples"].shape == (1, 16, SIZE // 8, SIZE // 8)
    out = sample(comfy, flux["fill"], p, n, lat)
    assert out.shape == lat["samples"].shape and torch.isfinite(out).all()
    # outside the mask the latent is kept; inside it is new
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:6, 2:6] = False
    assert torch.allclose(out[..., keep], lat["samples"][..., keep], atol=1e-5)
    assert not torch.allclose(out[..., ~keep], lat["samples"][..., ~keep])
    # the masked-image latent and mask reach the model (its 80 extra input channels)
    plain = dict(lat)
    assert not torch.allclose(sample(comfy, flux["fill"], pos, neg, plain), out)


# ------------------------------------------------------------------------------------------- through the executor
def stock_flux_graph(f: dict, seed: int = 0) -> dict:
    """A stock Flux.1 [dev] graph (API format) on the tiny files: LoRA, FluxGuidance, union ControlNet (tile)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f["unet_name"], "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": f["clip_l_name"], "clip_name2": f["t5_name"],
                                                         "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": f["vae_name"]}},
        "4": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["2", 0], "lora_name": f["lora_name"],
                                                     "strength_model": 0.8, "strength_clip": 1.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "portrait photo of a person", "clip": ["4", 1]}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": 3.5}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "8": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": f["union_name"]}},
        "9": {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["8", 0], "type": "tile"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "11": {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "area", "width": SIZE,
                                                      "height": SIZE, "crop": "center"}},
        "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["9", 0], "image": ["11", 0], "strength": 0.7,
            "start_percent": 0.0, "end_percent": 1.0, "vae": ["3", 0]}},
        "13": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["12", 0], "negative": ["12", 1], "latent_image": ["13", 0], "denoise": 1.0}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["3", 0]}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "tiny_flux"}},
    }


def test_stock_flux_graph_runs_in_comfyui_executor(comfy, flux):
    """The file names validate against the loaders' lists (diffusion_models, text_encoders, ...) and the graph runs
    in ComfyUI's PromptExecutor, with the text-encoder registration in place."""
    from PIL import Image
    res = comfy.run(stock_flux_graph(flux))
    (path,) = comfy.output_files(res, "16")
    with Image.open(path) as im:
        assert im.size == (SIZE, SIZE)
