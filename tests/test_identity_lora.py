"""Identity LoRA trainer and loader inside a real ComfyUI with tiny SD1.5- and SDXL-shaped models."""
import gc
import os
import shutil

import numpy as np
import pytest
import safetensors
import safetensors.torch as st
import torch
from conftest import EXAMPLES, assert_cancel_and_resume_is_exact, image_tensor, load_png

SRC = "mp_source"


@pytest.fixture(scope="module")
def il(pack):
    """The trainer's API across its modules (kohya files, pure training, ComfyUI glue, nodes)."""
    import types

    from comfyui_megaportrait.nodes import identity_lora, lora_comfy, lora_files, lora_training
    ns = {}
    for mod in (lora_files, lora_training, lora_comfy, identity_lora):
        ns.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
    return types.SimpleNamespace(**ns)


@pytest.fixture(scope="module")
def source_folder(comfy):
    d = os.path.join(comfy.input_dir, SRC)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(EXAMPLES, "astronaut.png"), d)
    return d


@pytest.fixture(scope="module")
def photos():
    a = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    a = torch.nn.functional.interpolate(a.permute(0, 3, 1, 2), size=(64, 64), mode="area").permute(0, 2, 3, 1)
    return torch.cat([a, a.flip(2), (a * 0.9).clamp(0, 1), (a * 1.1).clamp(0, 1)])


def loaders(comfy, name="tiny_sd15.safetensors"):
    with torch.inference_mode():           # as ComfyUI's executor runs nodes
        return comfy.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]


def train(il, model, clip, vae, images, **kw):
    args = dict(trigger_word="sks", class_word="person", prompt_template="photo of {trigger} {class}", steps=12,
                learning_rate=1e-3, rank=4, alpha=4.0, batch_size=2, resolution=64, seed=0, save_name="test/x",
                if_exists="overwrite", checkpoint_every=0, if_trained="train again")
    args.update(kw)
    with torch.inference_mode():
        out = il.IdentityLoraTrainer().train(model, clip, vae, images, **args)
    return out["result"], out["ui"]


def same_bits(a, b):
    """Bitwise equality (tiny checkpoints leave some weights uninitialised, and NaN != NaN)."""
    a, b = a.reshape(-1).contiguous(), b.reshape(-1).contiguous()
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def lora_path(comfy, name):
    return comfy.folder_paths.get_full_path("loras", name)


def training_graph(min_photos: int, **trainer) -> dict:
    """API nodes 1-3: tiny checkpoint -> Load Source Photos (SRC at 64 px) -> Identity LoRA Trainer (rank 4, 64 px,
    overwriting; ``trainer`` sets the rest of its inputs)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "MegaPortraitLoadSourcePhotos", "inputs": {"folder": SRC, "filenames": "", "resolution": 64,
                                                                       "face_scale": 2.2, "min_photos": min_photos,
                                                                       "seed": 0}},
        "3": {"class_type": "MegaPortraitIdentityLoraTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "trigger_word": "sks",
            "class_word": "person", "prompt_template": "photo of {trigger} {class}", "rank": 4, "alpha": 4.0,
            "resolution": 64, "seed": 0, "if_exists": "overwrite", **trainer}},
    }


def sample(comfy, model, clip, vae, seed=1, text="photo of sks person"):
    n = comfy.nodes
    with torch.inference_mode():
        pos = n.CLIPTextEncode().encode(clip, text)[0]
        neg = n.CLIPTextEncode().encode(clip, "")[0]
        lat = n.EmptyLatentImage().generate(64, 64, 1)[0]
        out = n.KSampler().sample(model, seed, 4, 5.0, "euler", "normal", pos, neg, lat)[0]
        return vae.decode(out["samples"]).clone()


def test_training_graph_and_stock_lora_loader(comfy, source_folder):
    """Train in a graph (Load Source Photos -> trainer -> KSampler), then load the file with the stock LoraLoader:
    same images as the trainer's MODEL; strength 0 equals the base model."""
    def sampler_nodes(model_ref, clip_ref, prefix):
        return {
            f"{prefix}4": {"class_type": "CLIPTextEncode", "inputs": {"text": "photo of sks person", "clip": clip_ref}},
            f"{prefix}5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip_ref}},
            f"{prefix}6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            f"{prefix}7": {"class_type": "KSampler", "inputs": {"model": model_ref, "seed": 3, "steps": 4, "cfg": 5.0,
                                                                "sampler_name": "euler", "scheduler": "normal",
                                                                "positive": [f"{prefix}4", 0], "negative": [f"{prefix}5", 0],
                                                                "latent_image": [f"{prefix}6", 0], "denoise": 1.0}},
            f"{prefix}8": {"class_type": "VAEDecode", "inputs": {"samples": [f"{prefix}7", 0], "vae": ["1", 2]}},
            f"{prefix}9": {"class_type": "SaveImage", "inputs": {"images": [f"{prefix}8", 0],
                                                                 "filename_prefix": f"lora_{prefix}"}},
        }
    g = training_graph(min_photos=4, steps=20, learning_rate=1e-2, batch_size=2, save_name="test/graph_id")
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 3], "filename_prefix": "loss_curve"}}
    g.update(sampler_nodes(["3", 0], ["3", 1], "t"))     # trained
    g.update(sampler_nodes(["1", 0], ["1", 1], "b"))     # base
    res = comfy.run(g)
    assert "saved test/graph_id.safetensors" in res.outputs["3"]["text"][0]
    trained = load_png(comfy.output_files(res, "t9")[0]).astype(int)
    base = load_png(comfy.output_files(res, "b9")[0]).astype(int)
    assert (trained != base).mean() > 0.05          # the LoRA changes the sampler's output
    assert load_png(comfy.output_files(res, "10")[0]).shape == (256, 512, 3)
    assert os.path.isfile(lora_path(comfy, "test/graph_id.safetensors"))

    g2 = {"1": g["1"], "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                    "lora_name": "test/graph_id.safetensors",
                                                                    "strength_model": 1.0, "strength_clip": 1.0}},
          "3": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                       "lora_name": "test/graph_id.safetensors",
                                                       "strength_model": 0.0, "strength_clip": 0.0}}}
    g2.update(sampler_nodes(["2", 0], ["2", 1], "l"))
    g2.update(sampler_nodes(["3", 0], ["3", 1], "z"))
    res2 = comfy.run(g2)
    assert np.abs(load_png(comfy.output_files(res2, "l9")[0]).astype(int) - trained).max() <= 1
    assert np.abs(load_png(comfy.output_files(res2, "z9")[0]).astype(int) - base).max() <= 1


def test_input_model_unchanged_and_memory_released(comfy, il, photos):
    from peft.tuners.lora import LoraLayer
    m, c, v = loaders(comfy)
    unet_before = {k: t.clone() for k, t in m.model.diffusion_model.state_dict().items()}
    clip_before = {k: t.clone() for k, t in c.cond_stage_model.state_dict().items()}
    img_before = sample(comfy, m, c, v)
    (tm, tc, name, curve), _ = train(il, m, c, v, photos, train_text_encoder=True, steps=6, save_name="test/unchanged")
    assert tm is not m and tc is not c
    assert all(same_bits(unet_before[k], t) for k, t in m.model.diffusion_model.state_dict().items())
    assert all(same_bits(clip_before[k], t) for k, t in c.cond_stage_model.state_dict().items())
    assert not any(isinstance(mod, LoraLayer) for mod in m.model.diffusion_model.modules())
    assert torch.equal(sample(comfy, m, c, v), img_before)
    assert not torch.equal(sample(comfy, tm, tc, v), img_before)
    del tm, tc
    gc.collect()
    assert not any(isinstance(o, LoraLayer) for o in gc.get_objects()), "training copies are still alive"


def test_loss_decreases_and_metadata(comfy, il, photos):
    m, c, v = loaders(comfy)
    cfg = il.TrainConfig(steps=200, learning_rate=1e-2, rank=8, alpha=8, batch_size=4, resolution=64,
                         target="attention + feed-forward")
    with torch.inference_mode():
        sd, state, meta = il.train_identity_lora("T", m, c, v, photos, "photo of sks person", cfg,
                                                 os.path.join(comfy.models_dir, "loras", "test", "decrease.safetensors"),
                                                 resume="off", checkpoint_every=0)
    L = np.array(state.losses)
    assert len(L) == 200
    assert L[-40:].mean() < 0.75 * L[:40].mean(), (L[:40].mean(), L[-40:].mean())
    assert meta["ss_network_dim"] == 8 and meta["ss_base_model_version"] == "sd_v1"
    assert any(k.startswith("lora_unet_") and "ff_net_2" in k for k in sd)


def test_same_seed_same_lora(comfy, il, photos):
    m, c, v = loaders(comfy)
    train(il, m, c, v, photos, save_name="test/seed_a", seed=7)
    train(il, m, c, v, photos, save_name="test/seed_b", seed=7)
    train(il, m, c, v, photos, save_name="test/seed_c", seed=8)
    a, b, c2 = (st.load_file(lora_path(comfy, f"test/seed_{x}.safetensors")) for x in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c2[k]) for k in a if k.endswith("lora_up.weight"))
    with safetensors.safe_open(lora_path(comfy, "test/seed_a.safetensors"), "pt") as f:
        meta = f.metadata()
    for key in ("ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_steps", "ss_resolution",
                "megaportrait.trigger_word", "megaportrait.prompt", "megaportrait.family"):
        assert meta.get(key), key
    assert meta["megaportrait.trigger_word"] == "sks" and meta["megaportrait.prompt"] == "photo of sks person"
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "12" and meta["megaportrait.family"] == "TinySD15"


def test_interrupt_keeps_checkpoint_and_resume_matches(comfy, il, photos):
    import comfy.model_management as mm
    import comfy.utils as cu
    m, c, v = loaders(comfy)
    kw = dict(steps=30, save_name="test/resume_ref")
    train(il, m, c, v, photos, **kw)
    ref = st.load_file(lora_path(comfy, "test/resume_ref.safetensors"))

    def hook(value, total, preview, **kw):
        if value == 11:
            mm.interrupt_current_processing(True)
    cu.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(il, m, c, v, photos, steps=30, save_name="test/resume_run")
    finally:
        cu.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    loras = os.path.join(comfy.models_dir, "loras", "test")
    assert os.path.isfile(os.path.join(loras, "resume_run.megaportrait-resume"))
    assert not os.path.exists(os.path.join(loras, "resume_run.safetensors"))
    with safetensors.safe_open(os.path.join(loras, "resume_run.megaportrait-resume"), "pt") as f:
        assert f.metadata()["step"] == "11"
    # other settings: refused, the checkpoint stays
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    with pytest.raises(MegaPortraitError, match="settings differ \\(steps\\)"):
        train(il, m, c, v, photos, steps=31, save_name="test/resume_run")
    # an SDXL model cannot continue an SD1.5 run
    mx, cx, vx = loaders(comfy, "tiny_sdxl.safetensors")
    with pytest.raises(MegaPortraitError, match="trained on a TinySD15 model but this MODEL is TinySDXL"):
        train(il, mx, cx, vx, photos, steps=30, save_name="test/resume_run")
    # same settings: continues from step 11 and ends exactly where the uninterrupted run ended
    (_, _, name, _), ui = train(il, m, c, v, photos, steps=30, save_name="test/resume_run")
    got = st.load_file(lora_path(comfy, name))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    assert not os.path.exists(os.path.join(loras, "resume_run.megaportrait-resume"))


def test_loss_trajectory_after_resume(comfy, il, photos):
    m, c, v = loaders(comfy)
    cfg = il.TrainConfig(steps=16, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64)
    path = os.path.join(comfy.models_dir, "loras", "test", "traj.safetensors")
    assert_cancel_and_resume_is_exact(il.train_identity_lora, ("T", m, c, v, photos, "photo of sks person", cfg, path),
                                      stop_at=5)


def test_sdxl_trains_unet_and_both_text_encoders(comfy, il, photos):
    import comfy.lora as clora
    m, c, v = loaders(comfy, "tiny_sdxl.safetensors")
    before = sample(comfy, m, c, v)
    (tm, tc, name, _), _ = train(il, m, c, v, photos, steps=8, train_text_encoder=True, save_name="test/xl")
    sd = st.load_file(lora_path(comfy, name))
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in sd}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    with safetensors.safe_open(lora_path(comfy, name), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    # every tensor maps onto the model (nothing "NOT LOADED" in the stock loader)
    key_map = clora.model_lora_keys_unet(m.model, {})
    key_map = clora.model_lora_keys_clip(c.cond_stage_model, key_map)
    loaded = clora.load_lora(sd, key_map)
    assert len(loaded) == len(sd) // 3
    assert not torch.equal(sample(comfy, tm, tc, v), before)


def test_train_once_reuses_the_same_training(comfy, il, photos):
    """Same photos, model, prompt and settings: the LoRA trained earlier is found by the key in its metadata and
    reused (whatever its file name); another seed, an upstream LoRA on the model or 'train again' trains."""
    m, c, v = loaders(comfy)
    (tm, tc, name, _), ui = train(il, m, c, v, photos, steps=6, save_name="test/once", if_trained="reuse")
    assert name == "test/once.safetensors" and ui["text"][0].startswith("saved")
    path = lora_path(comfy, name)
    with safetensors.safe_open(path, "pt") as f:
        key = f.metadata()[il.TRAIN_KEY]
    assert len(key) == 32
    stamp = os.stat(path).st_mtime_ns
    (rm, rc, rname, curve), ui = train(il, m, c, v, photos, steps=6, save_name="test/once_again", if_trained="reuse")
    assert rname == "test/once.safetensors" and ui["text"][0].startswith("reused test/once.safetensors")
    assert lora_path(comfy, "test/once_again.safetensors") is None and os.stat(path).st_mtime_ns == stamp
    assert torch.equal(sample(comfy, rm, rc, v), sample(comfy, tm, tc, v))
    assert curve.shape == (1, 256, 512, 3) and curve.min() < 0.5          # the stored loss history is drawn
    (_, _, n2, _), ui = train(il, m, c, v, photos, steps=6, seed=1, save_name="test/once_seed1", if_trained="reuse")
    assert n2 == "test/once_seed1.safetensors" and ui["text"][0].startswith("saved")
    with torch.inference_mode():                                   # the same checkpoint with a LoRA applied upstream
        pm, pc = comfy.nodes.LoraLoader().load_lora(m, c, "test/once_seed1.safetensors", 0.5, 0.5)
    (_, _, n3, _), ui = train(il, pm, pc, v, photos, steps=6, save_name="test/once_patched", if_trained="reuse")
    assert n3 == "test/once_patched.safetensors" and ui["text"][0].startswith("saved")
    (_, _, n4, _), ui = train(il, m, c, v, photos, steps=6, save_name="test/once_forced", if_trained="train again")
    assert n4 == "test/once_forced.safetensors" and ui["text"][0].startswith("saved")


def test_train_once_in_graphs_and_after_a_restart(comfy, source_folder):
    """The in-process harness runs every prompt with a new executor (no cache), as after a ComfyUI restart: the
    second run of the same training graph trains nothing and says so."""
    g = training_graph(min_photos=3, steps=5, learning_rate=1e-3, batch_size=1, save_name="test/graph_once")
    g["3"]["inputs"]["if_trained"] = "reuse"
    g["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 3], "filename_prefix": "once_loss"}}
    first = comfy.run(g)
    assert first.outputs["3"]["text"][0].startswith("saved test/graph_once.safetensors")
    path = lora_path(comfy, "test/graph_once.safetensors")
    stamp = os.stat(path).st_mtime_ns
    again = comfy.run(g)
    assert again.outputs["3"]["text"][0].startswith("reused test/graph_once.safetensors")
    assert os.stat(path).st_mtime_ns == stamp
    g["3"]["inputs"]["if_trained"] = "train again"
    assert comfy.run(g).outputs["3"]["text"][0].startswith("saved test/graph_once.safetensors")


@pytest.mark.parametrize("sampling", ["v_prediction", "eps"])
def test_edm_sampled_model_trains(comfy, il, photos, sampling):
    """A continuous-sigma (EDM) model: sigmas come from its own model_sampling (the DDPM timestep range would give
    sigma = inf there), the loss stays finite and falls."""
    from comfyui_megaportrait.nodes import comfy_compat
    m, c, v = loaders(comfy)
    with torch.inference_mode():
        me = comfy.nodes.NODE_CLASS_MAPPINGS["ModelSamplingContinuousEDM"]().patch(m, sampling, 120.0, 0.002)[0]
    ms = comfy_compat.model_object(me, "model_sampling")
    assert il.sampling_kind(ms) == "continuous" and il.loss_kind(ms) == ("v" if sampling == "v_prediction" else "eps")
    assert not torch.isfinite(ms.sigma(torch.tensor([999.0]))).all()      # what the old DDPM-timestep draw hit
    sig = il.draw_sigmas(ms, 2000, torch.Generator().manual_seed(0))
    assert torch.isfinite(sig).all() and sig.min() >= 0.002 and sig.max() <= 120.0
    assert (sig < 1).float().mean() > 0.3 and (sig > 10).float().mean() > 0.1   # log-uniform over the range
    cfg = il.TrainConfig(steps=150, learning_rate=1e-2, rank=8, alpha=8, batch_size=4, resolution=64)
    with torch.inference_mode():
        _, state, meta = il.train_identity_lora("T", me, c, v, photos, "photo of sks person", cfg,
                                                os.path.join(comfy.models_dir, "loras", "test", f"edm_{sampling}.safetensors"),
                                                resume="off", checkpoint_every=0)
    L = np.array(state.losses)
    assert len(L) == 150 and np.isfinite(L).all()
    assert L[-50:].mean() < L[:50].mean(), (L[:50].mean(), L[-50:].mean())


def test_flow_sampled_sd_models_are_refused(comfy, il, photos):
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    patch = comfy.nodes.NODE_CLASS_MAPPINGS.get("ModelSamplingSD3")
    if patch is None:
        pytest.skip("this ComfyUI (early 2024) has no flow-matching model sampling")
    m, c, v = loaders(comfy)
    with torch.inference_mode():
        mf = patch().patch(m, 3.0)[0]
    with pytest.raises(MegaPortraitError, match="samples with flow matching .* does not support for SD1.x"):
        train(il, mf, c, v, photos, steps=2, save_name="test/flow")
    assert lora_path(comfy, "test/flow.safetensors") is None


def test_load_identity_lora_node(comfy, il, photos):
    m, c, v = loaders(comfy)
    train(il, m, c, v, photos, save_name="test/loadme", steps=4)
    with torch.inference_mode():
        lm, lc, prompt, info = il.LoadIdentityLora().load(m, c, "test/loadme.safetensors", 1.0, 1.0)
    assert prompt == "photo of sks person" and "TinySD15" in info
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    mx, cx, vx = loaders(comfy, "tiny_sdxl.safetensors")
    with pytest.raises(MegaPortraitError, match="trained on sd_v1 but this MODEL is sdxl"):
        with torch.inference_mode():
            il.LoadIdentityLora().load(mx, cx, "test/loadme.safetensors", 1.0, 1.0)
    with pytest.raises(MegaPortraitError, match="was not found"):
        with torch.inference_mode():
            il.LoadIdentityLora().load(m, c, "test/nope.safetensors", 1.0, 1.0)
    # the same SD1.5 LoRA without metadata: its family is read from its keys
    loras = os.path.join(comfy.models_dir, "loras", "test")
    st.save_file(st.load_file(lora_path(comfy, "test/loadme.safetensors")), os.path.join(loras, "nometa.safetensors"))
    assert il.read_lora_metadata(os.path.join(loras, "nometa.safetensors")) == {}
    with pytest.raises(MegaPortraitError, match="is a LoRA for .* context 32\\) but this MODEL is TinySDXL"):
        with torch.inference_mode():
            il.LoadIdentityLora().load(mx, cx, "test/nometa.safetensors", 1.0, 1.0)
    with torch.inference_mode():
        assert il.LoadIdentityLora().load(m, c, "test/nometa.safetensors", 1.0, 1.0)[3] == "no metadata"
    # a damaged file and a file of another LoRA format: clear errors, the files stay as they are
    good = open(lora_path(comfy, "test/loadme.safetensors"), "rb").read()
    for fname, data in (("truncated", good[: len(good) // 2]), ("garbage", b"\xff" * 64), ("empty", b"")):
        with open(os.path.join(loras, fname + ".safetensors"), "wb") as f:
            f.write(data)
        with pytest.raises(MegaPortraitError, match=f"{fname}.safetensors is not a readable safetensors file"):
            with torch.inference_mode():
                il.LoadIdentityLora().load(m, c, f"test/{fname}.safetensors", 1.0, 1.0)
        assert open(os.path.join(loras, fname + ".safetensors"), "rb").read() == data
    st.save_file({"diffusion_model.x.lora_A.weight": torch.zeros(4, 8)}, os.path.join(loras, "peftish.safetensors"))
    with pytest.raises(MegaPortraitError, match="has no kohya LoRA keys"):
        with torch.inference_mode():
            il.LoadIdentityLora().load(m, c, "test/peftish.safetensors", 1.0, 1.0)


def test_bad_input(comfy, il, photos, pack):
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    from comfyui_megaportrait.nodes.face_analysis import FaceAnalyzer
    m, c, v = loaders(comfy)
    loras = os.path.join(comfy.models_dir, "loras")
    before = set(os.listdir(loras))
    with pytest.raises(MegaPortraitError, match=r"1 photo\(s\) given; an identity LoRA needs at least 3"):
        train(il, m, c, v, photos[:1])
    noise = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MegaPortraitError, match=r"no face was found in photo\(s\) 0, 1, 2"):
        train(il, m, c, v, noise, face_analysis=FaceAnalyzer().load())
    for bad in ("../escape", "/tmp/escape", "a/../../escape", "bad|name"):
        with pytest.raises(MegaPortraitError, match="not allowed"):
            train(il, m, c, v, photos, save_name=bad)
    # names the file system cannot hold are refused before step 1 (the resume file's temporary name is the longest)
    steps_run = []
    cu_hook = __import__("comfy.utils", fromlist=["x"])
    cu_hook.set_progress_bar_global_hook(lambda value, total, preview, **kw: steps_run.append(value))
    try:
        for bad, msg in (("x" * 240, "too long for this file system"), ("test/" + "y" * 230, "too long"),
                         ("test/CON", "reserved name 'CON'"), ("aux.v2", "reserved name 'aux.v2'")):
            with pytest.raises(MegaPortraitError, match=msg):
                train(il, m, c, v, photos, save_name=bad)
    finally:
        cu_hook.set_progress_bar_global_hook(None)
    assert steps_run == []
    (_, _, ok_name, _), _ = train(il, m, c, v, photos, steps=1, save_name="test/" + "z" * 200)
    assert os.path.isfile(lora_path(comfy, ok_name))                    # a long name that fits works end to end
    train(il, m, c, v, photos, steps=2, save_name="test/exists")
    existing = open(lora_path(comfy, "test/exists.safetensors"), "rb").read()
    with pytest.raises(MegaPortraitError, match="already exists"):
        train(il, m, c, v, photos, steps=3, seed=5, save_name="test/exists", if_exists="error")
    (_, _, name, _), _ = train(il, m, c, v, photos, steps=2, save_name="test/exists", if_exists="increment name")
    assert name == "test/exists_00001.safetensors"
    assert open(lora_path(comfy, "test/exists.safetensors"), "rb").read() == existing     # never overwritten
    with pytest.raises(MegaPortraitError, match="resolution 60 is not a multiple of 8"):
        train(il, m, c, v, photos, resolution=60)
    nan_photos = photos.clone()
    nan_photos[0, 10, 10, 0] = float("nan")
    with pytest.raises(MegaPortraitError, match="the loss became nan"):
        train(il, m, c, v, nan_photos, save_name="test/nan", steps=20, batch_size=4)
    assert not os.path.exists(os.path.join(loras, "test", "nan.safetensors"))
    # nothing was written outside models/loras (nor anywhere for the refused names)
    assert set(os.listdir(loras)) - before <= {"test"}
    top = os.path.dirname(comfy.models_dir)
    assert not [f for r, _, fs in os.walk(top) for f in fs if "escape" in f]
    assert not os.path.exists("/tmp/escape.safetensors")


@pytest.mark.server
def test_train_cancel_and_resume_via_server(server, models_dir):
    d = os.path.join(server.input_dir, SRC)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(EXAMPLES, "astronaut.png"), d)
    g = training_graph(min_photos=3, steps=60, learning_rate=1e-3, batch_size=1, save_name="srv/identity",
                       checkpoint_every=0)
    g["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 3], "filename_prefix": "srv_loss"}}
    sent = []

    def on_event(typ, data):
        if typ == "progress" and data.get("node") in ("3", None) and data.get("value", 0) >= 3 and not sent:
            sent.append(server.client.request("/interrupt", {})[0])
    events = []
    hist = server.client.run_with_progress(g, lambda t, d: (events.append(t), on_event(t, d)), timeout=300)
    assert sent == [200]
    assert "execution_interrupted" in events
    assert hist["status"]["status_str"] == "error"
    resume = os.path.join(models_dir, "loras", "srv", "identity.megaportrait-resume")
    assert os.path.isfile(resume)
    with safetensors.safe_open(resume, "pt") as f:
        step = int(f.metadata()["step"])
    assert 3 <= step < 60
    hist = server.client.run(g, timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    assert "saved srv/identity.safetensors" in hist["outputs"]["3"]["text"][0]
    assert os.path.isfile(os.path.join(models_dir, "loras", "srv", "identity.safetensors"))
    assert not os.path.exists(resume)


@pytest.mark.parametrize("ckpt_name", ["tiny_sd15.safetensors", "tiny_sdxl.safetensors"])
def test_gradient_checkpointing_gives_the_same_lora(comfy, il, photos, ckpt_name):
    m, c, v = loaders(comfy, ckpt_name)
    cfg = il.TrainConfig(steps=4, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64,
                         target="attention + feed-forward")
    path = os.path.join(comfy.models_dir, "loras", "test", "ckpt.safetensors")
    out = {}
    for ck in (False, True):
        with torch.inference_mode():
            out[ck] = il.train_identity_lora("T", m, c, v, photos, "photo of sks person", cfg, path, resume="off",
                                             checkpoint_every=0, gradient_checkpointing=ck)
    (a, sa, _), (b, sb, _) = out[False], out[True]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert np.allclose(sa.losses, sb.losses, rtol=1e-5)
