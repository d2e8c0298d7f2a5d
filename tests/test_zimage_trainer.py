"""The identity LoRA trainer on Z-Image (tiny Z-Image-shaped models loaded by ComfyUI 0.33's own loaders, see the
``zimage`` fixture): the flow-matching loss through the model's own model_sampling with the text encoder's attention
mask, a kohya LoRA on the main layers' attention and feed-forward that the stock LoraLoader applies fully, exact
resume, train-once, fp8 weights, and the Turbo practice: the training adapter on the trained MODEL only, the samplers'
MODEL without it (``output_model``). Skipped on the early-2024 host (no Z-Image)."""
import os
import re

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_cancel_and_resume_is_exact, image_tensor

PROMPT = "photo of sks person"


@pytest.fixture(scope="module")
def P(pack):
    import types

    import comfyui_megaportrait.nodes as N
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    return types.SimpleNamespace(fam=N.families, il=N.identity_lora, lc=N.lora_comfy, lf=N.lora_files,
                                 lt=N.lora_training, compat=N.comfy_compat, Error=MegaPortraitError)


@pytest.fixture(scope="module")
def face():
    a = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    return torch.nn.functional.interpolate(a.permute(0, 3, 1, 2), size=(64, 64), mode="area").permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def photos(face):
    return torch.cat([face, face.flip(2), (face * 0.9).clamp(0, 1), (face * 1.1).clamp(0, 1)])


@pytest.fixture(scope="module")
def conds(comfy, zimage):
    n = comfy.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        enc = comfy.nodes.CLIPTextEncode().encode(zimage["clip"], PROMPT)[0]
        neg = n["ConditioningZeroOut"]().zero_out(enc)
    return enc, (neg[0] if isinstance(neg, tuple) else neg.result[0])


@pytest.fixture(scope="module")
def adapted(comfy, zimage):
    """The MODEL with the (tiny) Z-Image-Turbo training adapter, as a stock LoraLoaderModelOnly makes it."""
    with torch.inference_mode():
        return comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(zimage["model"], zimage["adapter_name"], 1.0)[0]


def ksampler(comfy, m, pos, neg, latent, seed=3, steps=3, denoise=1.0):
    with torch.inference_mode():
        return comfy.nodes.KSampler().sample(m, seed, steps, 1.0, "euler", "simple", pos, neg, latent, denoise)[0]["samples"]


def _train(P, zimage, photos, path, steps, model=None, **kw):
    cfg = P.lt.TrainConfig(steps=steps, learning_rate=kw.pop("lr", 1e-3), rank=4, alpha=4, batch_size=2, resolution=64,
                           **kw)
    with torch.inference_mode():
        return P.lc.train_identity_lora("T", model or zimage["model"], zimage["clip"], zimage["vae"], photos, PROMPT,
                                        cfg, path, resume="off", checkpoint_every=0)


def _lora_path(comfy, name):
    return os.path.join(comfy.models_dir, "loras", "test", name)


# ------------------------------------------------------------------------------------------- the family row
def test_zimage_is_trainable_with_its_text_width_and_attention_mask(P, zimage):
    m, clip = zimage["model"], zimage["clip"]
    fam = P.fam.of_model(m)
    assert fam.name == "Z-Image" and fam.trainable and fam.target == "flow"
    P.lc.check_trainable("T", m)                                   # no error
    import tiny_models as tm
    info = P.lc.model_family(m)
    assert info["context_dim"] == tm.ZIMAGE_TE_WIDTH == P.fam.text_width(m) and info["name"] == "Z-Image"
    with torch.inference_mode():
        cond, pooled, extras = P.compat.encode_tokens(clip, clip.tokenize(PROMPT))
    assert cond.shape[-1] == tm.ZIMAGE_TE_WIDTH and "attention_mask" in extras
    kw = P.fam.training_conditions(fam, extras, 3)
    assert set(kw) == {"attention_mask"} and kw["attention_mask"].shape == (3, cond.shape[1])
    # Z-Image's extra_conds reads it: a mask that masks padding reaches the model, one row per sample
    padded = dict(extras, attention_mask=extras["attention_mask"].clone())
    padded["attention_mask"][:, -1] = 0
    with torch.inference_mode():
        ex = m.model.extra_conds(cross_attn=cond.expand(3, *cond.shape[1:]), noise=torch.zeros(3, 16, 8, 8),
                                 device=cond.device, **P.fam.training_conditions(fam, padded, 3))
    assert "num_tokens" in ex and ex["attention_mask"].cond.shape == (3, cond.shape[1])
    assert (ex["attention_mask"].cond[:, -1] == 0).all() and (ex["attention_mask"].cond[:, :-1] == 1).all()


def test_zimage_training_loss_falls_on_a_fixed_batch(P, zimage, face):
    """Flow-matching loss through the model's model_sampling, with the text encoder's extras: training the LoRA on
    one fixed batch at fixed sigmas lowers it."""
    m, clip = zimage["model"], zimage["clip"]
    fam = P.fam.of_model(m)
    ms = m.get_model_object("model_sampling")
    with torch.inference_mode():
        x0 = m.get_model_object("latent_format").process_in(zimage["vae"].encode(face))
        cond, _, extras = P.compat.encode_tokens(clip, clip.tokenize(PROMPT))
    with torch.inference_mode(False), torch.enable_grad():
        x0, cond = x0.clone().repeat(2, 1, 1, 1), cond.clone()
        extras = {k: v.clone() if torch.is_tensor(v) else v for k, v in extras.items()}
        base = P.lt.shadow_module(m.model)
        base.manual_cast_dtype = torch.float32
        for mod in base.diffusion_model.modules():
            if hasattr(type(mod), "comfy_cast_weights"):
                mod.comfy_cast_weights = True
        P.lt.inject_lora(base.diffusion_model, fam.lora_targets["attention + feed-forward"], 8, 8, 0)
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.tensor([0.3, 0.8])
        x = P.lc.noisy_latent(ms, "flow", x0, noise, sigma)
        assert torch.allclose(x, sigma.view(-1, 1, 1, 1) * noise + (1 - sigma.view(-1, 1, 1, 1)) * x0)
        extra = base.extra_conds(noise=x0, device=x0.device, cross_attn=cond.expand(2, *cond.shape[1:]),
                                 **P.fam.training_conditions(fam, extras, 2))
        args = {k: v.cond for k, v in extra.items()}
        opt = torch.optim.AdamW(P.lf.lora_parameters(base.diffusion_model), lr=3e-3)
        losses = []
        for _ in range(40):
            with P.compat.training_mode():
                den = base.apply_model(x, sigma, **args)
            loss = P.lt.native_loss(den, x0, sigma, "flow")
            v = (x - den) / sigma.view(-1, 1, 1, 1)          # the velocity against noise - x0
            assert torch.allclose(loss, ((v - (noise - x0)) ** 2).mean(), rtol=1e-4, atol=1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


# ------------------------------------------------------------------------------------------- the LoRA file
def test_zimage_lora_trains_saves_kohya_and_loads_fully_in_the_stock_loader(P, zimage, comfy, photos, conds):
    from comfy import lora as clora
    m, clip = zimage["model"], zimage["clip"]
    path = _lora_path(comfy, "zimage_id.safetensors")
    sd, state, meta = _train(P, zimage, photos, path, 30, lr=5e-3, target="attention + feed-forward")
    L = np.array(state.losses)
    assert len(L) == 30 and np.isfinite(L).all() and L[-10:].mean() < L[:10].mean()
    assert meta["ss_base_model_version"] == "zimage" and meta["modelspec.architecture"] == "z-image/lora"
    assert meta["megaportrait.family"].endswith("ZImage")      # the model config (TinyZImage in the tests)
    dm = m.model.diffusion_model
    fam = P.fam.of_model(m)
    targets = [n for n, mod in dm.named_modules() if isinstance(mod, torch.nn.Linear)
               and re.fullmatch(fam.lora_targets["attention + feed-forward"], n)]
    assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in sd} == \
        {"lora_unet_" + n.replace(".", "_") for n in targets}
    assert P.fam.of_lora_keys(sd) is fam
    P.lf.atomic_save(sd, path, meta)
    # every tensor maps onto the model in the stock loader: no key left unloaded
    key_map = clora.model_lora_keys_unet(m.model, {})
    key_map = clora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    loaded = clora.load_lora(sd, key_map)
    assert len(loaded) == len(sd) // 3 == len(targets)
    pos, neg = conds
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    base = ksampler(comfy, m, pos, neg, lat)
    with torch.inference_mode():
        zero = comfy.nodes.LoraLoader().load_lora(m, clip, "test/zimage_id.safetensors", 0.0, 0.0)[0]
        one = comfy.nodes.LoraLoader().load_lora(m, clip, "test/zimage_id.safetensors", 1.0, 1.0)[0]
    assert len(one.patches) == len(targets)
    assert torch.equal(ksampler(comfy, zero, pos, neg, lat), base)           # strength 0 == base
    assert not torch.equal(ksampler(comfy, one, pos, neg, lat), base)
    # Load Identity LoRA checks it against the Z-Image MODEL's text width and accepts it
    with torch.inference_mode():
        out = P.il.LoadIdentityLora().load(m, clip, "test/zimage_id.safetensors", 1.0, 1.0)
    assert out[2] == PROMPT


def test_zimage_resume_matches_an_uninterrupted_run(P, zimage, comfy, photos):
    cfg = P.lt.TrainConfig(steps=8, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64)
    path = _lora_path(comfy, "zimage_resume.safetensors")
    args = ("T", zimage["model"], zimage["clip"], zimage["vae"], photos, PROMPT, cfg, path)
    assert_cancel_and_resume_is_exact(P.lc.train_identity_lora, args, stop_at=3)


def test_resume_files_without_a_text_width_still_resume(P, tmp_path):
    """Flux resume files written before the trainer read Flux's text width stored context_dim 0: 0 means unknown,
    so they resume; a known, different width is refused."""
    cfg = P.lt.TrainConfig(steps=4, rank=4, alpha=4)
    state = P.lt.TrainState(step=2, losses=[0.5, 0.4])
    lora = {"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_x.alpha": torch.tensor(4.0)}
    path = str(tmp_path / "old.megaportrait-resume")
    old = {"family": "Flux", "name": "Flux.1", "context_dim": 0}
    P.lt.save_resume(path, lora, state, cfg, old, "data")
    sd, st = P.lt.load_resume("T", path, cfg, dict(old, context_dim=4096), "data")
    assert st.step == 2 and sd.keys() == lora.keys()
    P.lt.save_resume(path, lora, state, cfg, dict(old, context_dim=768), "data")
    with pytest.raises(P.Error, match="was trained on a Flux model"):
        P.lt.load_resume("T", path, cfg, dict(old, context_dim=4096), "data")


# ------------------------------------------------------------------------------------------- node: train once, Turbo
def _node_args(save_name, **kw):
    return dict(dict(trigger_word="sks", class_word="person", prompt_template="photo of {trigger} {class}", steps=4,
                     learning_rate=1e-3, rank=4, alpha=4.0, batch_size=2, resolution=64, seed=0, save_name=save_name,
                     if_exists="increment name", checkpoint_every=0, if_trained="reuse"), **kw)


def test_zimage_train_once_and_the_turbo_training_adapter(P, zimage, comfy, photos, conds, adapted):
    """The Turbo practice in the graph: LoraLoaderModelOnly puts the training adapter on the trainer's 'model' only;
    output_model (Turbo without it) is what the trainer returns with the identity LoRA. The adapter is part of what is
    trained on (other losses, another train-once key), never part of the exported LoRA or the returned MODEL."""
    node = P.il.IdentityLoraTrainer()
    m, clip, vae = zimage["model"], zimage["clip"], zimage["vae"]
    fp = comfy.folder_paths
    with torch.inference_mode():
        first = node.train(m, clip, vae, photos, **_node_args("test/zimage_once"))["result"]
        path = fp.get_full_path("loras", first[2])
        stamp = os.stat(path).st_mtime_ns
        again = node.train(m, clip, vae, photos, **_node_args("test/zimage_once"))["result"]
        assert again[2] == first[2] and os.stat(path).st_mtime_ns == stamp          # reused, not trained again
        turbo = node.train(adapted, clip, vae, photos, **_node_args("test/zimage_once"), output_model=m)["result"]
    assert turbo[2] != first[2]                       # the adapter is in the train-once key (patches fingerprint)
    from comfy.utils import load_torch_file
    plain_sd = load_torch_file(path, safe_load=True)
    turbo_sd = load_torch_file(fp.get_full_path("loras", turbo[2]), safe_load=True)
    assert plain_sd.keys() == turbo_sd.keys()                                   # the same layers: only the LoRA
    assert not all(torch.equal(plain_sd[k], turbo_sd[k]) for k in plain_sd)   # trained through the adapter's weights
    # the returned MODEL: output_model + the identity LoRA, exactly as the stock LoraLoader applies the file
    pos, neg = conds
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    with torch.inference_mode():
        by_loader = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(m, turbo[2], 1.0)[0]
    assert set(turbo[0].patches) == set(by_loader.patches)
    assert torch.equal(ksampler(comfy, turbo[0], pos, neg, lat), ksampler(comfy, by_loader, pos, neg, lat))
    assert not torch.equal(ksampler(comfy, turbo[0], pos, neg, lat), ksampler(comfy, adapted, pos, neg, lat))
    # reusing it returns it on output_model too
    with torch.inference_mode():
        reused = node.train(adapted, clip, vae, photos, **_node_args("test/zimage_once"), output_model=m)["result"]
    assert reused[2] == turbo[2] and set(reused[0].patches) == set(by_loader.patches)


def test_the_exported_lora_holds_only_the_trained_delta(P, zimage, comfy, photos, adapted):
    """LoRA B starts at zero: one step at a tiny learning rate on the adapter-patched MODEL exports a LoRA whose
    update is a vanishing fraction of the adapter's, so no adapter weight is baked into the file."""
    from comfy.utils import load_torch_file
    sd, _, _ = _train(P, zimage, photos, _lora_path(comfy, "zimage_delta.safetensors"), 1, model=adapted, lr=1e-7)
    adapter = load_torch_file(os.path.join(comfy.models_dir, "loras", zimage["adapter_name"]), safe_load=True)

    def delta(lora, key):
        up, down = lora[key + ".lora_up.weight"].float(), lora[key + ".lora_down.weight"].float()
        return (up @ down) * float(lora[key + ".alpha"]) / down.shape[0]
    keys = [k[: -len(".alpha")] for k in sd if k.endswith(".alpha")]
    assert keys and all(k + ".alpha" in adapter for k in keys)
    for k in keys:
        assert delta(sd, k).abs().max() < 1e-3 * delta(adapter, k).abs().max()


def test_output_model_of_another_family_is_refused(P, zimage, comfy, photos):
    with torch.inference_mode():
        sd_model = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[0]
    with pytest.raises(P.Error, match="'output_model' is SD1.x but the LoRA trains on 'model', which is Z-Image"):
        with torch.inference_mode():
            P.il.IdentityLoraTrainer().train(zimage["model"], zimage["clip"], zimage["vae"], photos,
                                             **_node_args("test/zimage_bad"), output_model=sd_model)
    assert comfy.folder_paths.get_full_path("loras", "test/zimage_bad.safetensors") is None


# ------------------------------------------------------------------------------------------- weights
def test_zimage_trains_on_fp8_weights(P, zimage, comfy, photos):
    """UNETLoader with weight_dtype fp8_e4m3fn (how 16 GB cards load the 6B model): the trainer computes with the
    weights cast per layer and learns; the loaded weights stay fp8."""
    with torch.inference_mode():
        m8 = comfy.nodes.UNETLoader().load_unet(zimage["unet_name"], "fp8_e4m3fn")[0]
    w = lambda: m8.model.diffusion_model.layers[0].attention.qkv.weight.dtype  # noqa: E731
    assert w() == torch.float8_e4m3fn
    sd, state, _ = _train(P, zimage, photos, _lora_path(comfy, "zimage_fp8.safetensors"), 24, model=m8, lr=5e-3)
    L = np.array(state.losses)
    assert np.isfinite(L).all() and L[-8:].mean() < L[:8].mean()
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in sd.items())
    assert w() == torch.float8_e4m3fn


def test_zimage_gradient_checkpointing_gives_the_same_lora(P, zimage, comfy, photos):
    path = _lora_path(comfy, "zimage_ckpt.safetensors")
    cfg = P.lt.TrainConfig(steps=3, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64)
    out = {}
    for ck in (False, True):
        with torch.inference_mode():
            out[ck] = P.lc.train_identity_lora("T", zimage["model"], zimage["clip"], zimage["vae"], photos, PROMPT, cfg,
                                               path, resume="off", checkpoint_every=0, gradient_checkpointing=ck)
    (a, sa, _), (b, sb, _) = out[False], out[True]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert np.allclose(sa.losses, sb.losses, rtol=1e-5)


def test_zimage_trains_on_a_scaled_fp8_checkpoint(P, zimage, comfy, photos, conds):
    """A quantized (scaled fp8) Z-Image file, loaded by the stock UNETLoader into ComfyUI's mixed-precision layers:
    the LoRA trains on those layers, loads fully in the stock loader, and strength 0 is the quantized base."""
    import tiny_models as tm
    if not tm.has_quantized_checkpoints():
        pytest.skip("this ComfyUI loads no quantized (scaled fp8) checkpoints")
    name = "tiny_zimage_scaled_fp8.safetensors"
    dst = os.path.join(comfy.models_dir, "diffusion_models", name)
    if not os.path.exists(dst):
        n = tm.write_scaled_fp8(os.path.join(comfy.models_dir, "diffusion_models", zimage["unet_name"]), dst, "",
                                r"layers\.\d+\.(attention\.(qkv|out)|feed_forward\.w[123])\.weight")
        assert n == 5 * tm.ZIMAGE_LAYERS
    with torch.inference_mode():
        mq = comfy.nodes.UNETLoader().load_unet(name, "default")[0]
    quantized = [mod for mod in mq.model.diffusion_model.modules()
                 if type(mod).__name__ == "Linear" and not isinstance(mod, torch.nn.Linear)]
    assert len(quantized) >= 5 * tm.ZIMAGE_LAYERS                   # mixed-precision layers, not nn.Linear
    sd, state, _ = _train(P, zimage, photos, _lora_path(comfy, "zimage_q.safetensors"), 8, model=mq, lr=3e-3)
    assert len(state.losses) == 8 and np.isfinite(state.losses).all()
    assert any(float(t.abs().max()) > 0 for k, t in sd.items() if k.endswith("lora_up.weight"))
    from comfy import lora as clora
    from comfy import sd as comfy_sd
    assert len(clora.load_lora(sd, clora.model_lora_keys_unet(mq.model, {}))) == len(sd) // 3
    pos, neg = conds
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    with torch.inference_mode():
        zero = comfy_sd.load_lora_for_models(mq, None, sd, 0.0, 0.0)[0]
        one = comfy_sd.load_lora_for_models(mq, None, sd, 1.0, 0.0)[0]
    base = ksampler(comfy, mq, pos, neg, lat)
    assert torch.equal(ksampler(comfy, zero, pos, neg, lat), base)
    assert not torch.equal(ksampler(comfy, one, pos, neg, lat), base)
