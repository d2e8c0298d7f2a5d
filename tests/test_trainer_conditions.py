"""The identity trainer under the conditions users' GPUs create, reproduced on the CPU with honest proxies (issue 18):
a Cancel raised inside a layer's forward, a model ComfyUI loaded only partly (layers streamed per call), a ComfyUI
whose default device is another one than the MODEL's, and the face-weighted loss."""
import os

import pytest
import test_identity_lora as _til
import torch
from partial_load import forced_partial_load
from test_identity_lora import loaders, same_bits

il, photos = _til.il, _til.photos          # the trainer's fixtures, shared with test_identity_lora

PROMPT = "photo of sks person"


def _cfg(il, **kw):
    args = dict(steps=6, learning_rate=1e-3, rank=4, alpha=4, batch_size=2, resolution=64, flip=False)
    args.update(kw)
    return il.TrainConfig(**args)


def _train(il, comfy, m, c, v, images, cfg, name, **kw):
    path = os.path.join(comfy.models_dir, "loras", "test", name + ".safetensors")
    with torch.inference_mode():
        return il.train_identity_lora("T", m, c, v, images, PROMPT, cfg, path, checkpoint_every=0, **kw)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


def test_cancel_inside_a_forward_resumes_to_the_uninterrupted_lora(comfy, il, photos):
    """ComfyUI 0.33 checks for Cancel in every layer: a Cancel raised inside step 3's forward (after its batch, noise
    and sigmas were drawn) leaves a checkpoint at step 2 whose resumed run equals the uninterrupted run, bit for bit."""
    import comfy.model_management as mm
    m, c, v = loaders(comfy)
    cfg = _cfg(il)
    ref_sd, ref, _ = _train(il, comfy, m, c, v, photos, cfg, "cancel_ref", resume="off")
    layer = m.model.diffusion_model.out        # the last layers of the forward: the step's draws are all made
    calls = {"n": 0}

    def cancel_in_step_3(module, args):
        calls["n"] += 1
        if calls["n"] == 3:                                   # one forward per step (no checkpointing)
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()    # what every comfy op does on 0.33
    handle = layer.register_forward_pre_hook(cancel_in_step_3)   # the twin copies the hook table
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _train(il, comfy, m, c, v, photos, cfg, "cancel_run", resume="off")
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
    assert calls["n"] == 3
    resume = os.path.join(comfy.models_dir, "loras", "test", "cancel_run.megaportrait-resume")
    import safetensors
    with safetensors.safe_open(resume, "pt") as f:
        assert f.metadata()["step"] == "2"
    sd, resumed, _ = _train(il, comfy, m, c, v, photos, cfg, "cancel_run", resume="auto")
    assert resumed.losses == ref.losses
    assert _equal(sd, ref_sd)
    os.unlink(resume)


def test_no_global_generator_is_seeded(comfy, il, photos):
    m, c, v = loaders(comfy)
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    _train(il, comfy, m, c, v, photos, _cfg(il, steps=2), "rng", resume="off")
    assert torch.equal(torch.rand(4), expected)


def _saved_bytes(il, comfy, m, c, v, photos, name):
    weights = list(m.model.parameters()) + list(m.model.buffers())
    with il.saved_for_backward(exclude=weights) as saved:
        _train(il, comfy, m, c, v, photos, _cfg(il, steps=1), name, resume="off")
    return saved["bytes"]


def test_partial_load_trains_the_same_lora_and_keeps_no_weight_copies(comfy, il, photos):
    """A partly loaded model (its left-out layers cast their weights per call) trains the LoRA of the fully loaded
    one, and keeps at most 1.2x the bytes for backward that the full load keeps."""
    import comfy.model_management as mm
    m, c, v = loaders(comfy)
    cfg = _cfg(il)
    full_sd, full, _ = _train(il, comfy, m, c, v, photos, cfg, "full", resume="off")
    full_bytes = _saved_bytes(il, comfy, m, c, v, photos, "full_bytes")
    mm.unload_all_models()
    m, c, v = loaders(comfy)
    with forced_partial_load(0.4) as state:                 # tools/partial_load.py (shared with the trainer bench)
        part_sd, part, _ = _train(il, comfy, m, c, v, photos, cfg, "partial", resume="off")
        assert state["cast"] > 10                            # the proxy really left layers out
        part_bytes = _saved_bytes(il, comfy, m, c, v, photos, "partial_bytes")
    mm.unload_all_models()
    assert part.losses == pytest.approx(full.losses, rel=1e-5, abs=1e-7)
    assert all(torch.allclose(part_sd[k], full_sd[k], rtol=1e-4, atol=1e-6) for k in full_sd)
    assert full_bytes > 0 and part_bytes <= 1.2 * full_bytes, (part_bytes, full_bytes)


def test_trainer_uses_the_models_device_not_comfys_default(comfy, il, photos, monkeypatch):
    """Proxy for a MODEL on another device than ComfyUI's default one (Select Model Device, several GPUs): ComfyUI's
    default device becomes ``meta`` while the MODEL stays on the CPU; a tensor put on the guessed device would meet
    the MODEL's real ones and fail. The LoRA is the one trained without the proxy."""
    import comfy.model_management as mm
    m, c, v = loaders(comfy)
    cfg = _cfg(il, steps=3)
    ref_sd, _, _ = _train(il, comfy, m, c, v, photos, cfg, "dev_ref", resume="off")
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("meta"))
    sd, _, _ = _train(il, comfy, m, c, v, photos, cfg, "dev_meta", resume="off")
    assert _equal(sd, ref_sd)


def test_face_weighted_loss(il):
    """The loss is the weighted MSE; a pixel outside the mask gets background_weight of its gradient."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    pred = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    sigma = torch.tensor([0.5, 2.0])
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 16:48] = 1.0
    w = il.latent_weight(masks, (8, 8), 0.25)
    assert w.shape == (2, 1, 8, 8) and float(w[0, 0, 0, 0]) == 0.25 and float(w[0, 0, 4, 4]) == 1.0
    loss = il.native_loss(pred, x0, sigma, "eps", weight=w)
    expected = (w / sigma.view(-1, 1, 1, 1) ** 2 * (pred - x0) ** 2).mean()
    assert torch.allclose(loss, expected)
    grad_w, = torch.autograd.grad(loss, pred)
    grad_1, = torch.autograd.grad(il.native_loss(pred, x0, sigma, "eps"), pred)
    assert torch.allclose(grad_w[0, :, 0, 0], 0.25 * grad_1[0, :, 0, 0])      # background
    assert torch.equal(grad_w[0, :, 4, 4], grad_1[0, :, 4, 4])                # face
    ones = il.latent_weight(masks, (8, 8), 1.0)
    assert torch.equal(il.native_loss(pred, x0, sigma, "eps", weight=ones), il.native_loss(pred, x0, sigma, "eps"))


def test_face_weighted_training(comfy, il, photos):
    """background_weight 1.0 with masks is today's LoRA exactly; 0.1 trains another one (and is another training)."""
    m, c, v = loaders(comfy)
    masks = torch.zeros(photos.shape[0], 64, 64)
    masks[:, 8:56, 12:52] = 1.0
    plain, _, _ = _train(il, comfy, m, c, v, photos, _cfg(il, steps=3), "fw_plain", resume="off")
    one, _, _ = _train(il, comfy, m, c, v, photos, _cfg(il, steps=3), "fw_one", resume="off", masks=masks)
    low, _, _ = _train(il, comfy, m, c, v, photos, _cfg(il, steps=3, background_weight=0.1), "fw_low", resume="off",
                       masks=masks)
    assert _equal(plain, one)
    assert not _equal(plain, low)
    with torch.inference_mode():
        k1 = il.training_key(m, c, v, photos, PROMPT, _cfg(il), masks)
        k2 = il.training_key(m, c, v, photos, PROMPT, _cfg(il, background_weight=0.1), masks)
        k3 = il.training_key(m, c, v, photos, PROMPT, _cfg(il, background_weight=0.1), 1 - masks)
    assert len({k1, k2, k3}) == 3


def _quantized(comfy, kind: str):
    """A tiny scaled-fp8 checkpoint of ``kind`` ("sd15": CheckpointLoaderSimple, "flux": UNETLoader), loaded by the
    stock loader."""
    import tiny_models
    if not tiny_models.has_quantized_checkpoints():
        pytest.skip("this ComfyUI (early 2024) loads no quantized (scaled fp8) checkpoints")
    if kind == "sd15":
        name = "tiny_sd15_scaled_fp8.safetensors"
        dst = os.path.join(comfy.models_dir, "checkpoints", name)
        if not os.path.exists(dst):
            n = tiny_models.write_scaled_fp8(os.path.join(comfy.models_dir, "checkpoints", tiny_models.CKPT_NAME), dst,
                                             "model.diffusion_model.")
            assert n > 20
        with torch.inference_mode():
            return comfy.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    name = "tiny_flux_scaled_fp8.safetensors"
    dst = os.path.join(comfy.models_dir, "diffusion_models", name)
    if not os.path.exists(dst):
        n = tiny_models.write_scaled_fp8(os.path.join(comfy.models_dir, "diffusion_models", tiny_models.FLUX_UNET_NAME),
                                         dst, "")
        assert n > 10
    with torch.inference_mode():
        return comfy.nodes.UNETLoader().load_unet(name, "default")[0]


def _quantized_layers(model) -> int:
    return sum(1 for mod in model.model.diffusion_model.modules()
               if type(mod).__name__ == "Linear" and not isinstance(mod, torch.nn.Linear))


def _check_lora_loads_fully(comfy, model, clip, sd):
    """Every tensor of the LoRA maps to the MODEL (and CLIP) in the stock loader's key map: nothing "not loaded"."""
    import comfy.lora
    keys = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, keys)
    stems = {k[: -len(".lora_down.weight")] if k.endswith(".lora_down.weight") else
             k[: -len(".lora_up.weight")] if k.endswith(".lora_up.weight") else k[: -len(".alpha")] for k in sd}
    assert stems <= set(keys), sorted(stems - set(keys))[:5]
    assert len(comfy.lora.load_lora(sd, keys)) == len(stems)


def test_scaled_fp8_sd15_trains_and_its_lora_loads_in_the_stock_loader(comfy, il, photos):
    m, c, v = _quantized(comfy, "sd15")
    assert _quantized_layers(m) > 20                         # mixed_precision_ops layers, not nn.Linear
    sd, state, _ = _train(il, comfy, m, c, v, photos, _cfg(il, steps=8, learning_rate=3e-3), "q_sd15", resume="off")
    assert len(state.losses) == 8 and all(map(lambda x: x == x, state.losses))
    assert any(float(t.abs().max()) > 0 for k, t in sd.items() if k.endswith("lora_up.weight"))    # it learned
    _check_lora_loads_fully(comfy, m, c, sd)
    from test_identity_lora import sample
    with torch.inference_mode():
        m0, c0 = il.apply_lora(m, c, sd, 0.0, 0.0)
        m1, c1 = il.apply_lora(m, c, sd, 1.0, 1.0)
    base = sample(comfy, m, c, v)
    assert torch.equal(sample(comfy, m0, c0, v), base)
    assert not torch.equal(sample(comfy, m1, c1, v), base)


def test_scaled_fp8_flux_trains_and_its_lora_loads_in_the_stock_loader(comfy, il, flux):
    m = _quantized(comfy, "flux")
    assert _quantized_layers(m) > 10
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 64, 64, 3, generator=g)
    sd, state, _ = _train(il, comfy, m, flux["clip"], flux["vae"], images, _cfg(il, steps=4, batch_size=1), "q_flux",
                          resume="off")
    assert len(state.losses) == 4 and all(x == x for x in state.losses)
    _check_lora_loads_fully(comfy, m, None, sd)
