"""Identity LoRA trainer: the pure parts (peft injection, kohya export/import, loss, optimizer state, training
loop, checkpoints, file names), on toy modules, without ComfyUI."""
import os

import pytest
import torch


@pytest.fixture(scope="module")
def il(pack):
    """The trainer's API across its modules (kohya files, pure training, ComfyUI glue, nodes)."""
    import types

    from comfyui_megaportrait.nodes import identity_lora, lora_comfy, lora_files, lora_training
    ns = {}
    for mod in (lora_files, lora_training, lora_comfy, identity_lora):
        ns.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
    return types.SimpleNamespace(**ns)


class Block(torch.nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.attn1 = torch.nn.Module()
        self.attn1.to_q = torch.nn.Linear(d, d)
        self.attn1.to_k = torch.nn.Linear(d, d)
        self.attn1.to_v = torch.nn.Linear(d, d)
        self.attn1.to_out = torch.nn.ModuleList([torch.nn.Linear(d, d)])
        self.ff = torch.nn.Module()
        geglu = torch.nn.Module()          # like ComfyUI's GEGLU: a .proj Linear inside ff.net.0
        geglu.proj = torch.nn.Linear(d, d)
        self.ff.net = torch.nn.ModuleList([geglu, torch.nn.GELU(), torch.nn.Linear(d, d)])

    def forward(self, x):
        a = self.attn1.to_out[0](torch.tanh(self.attn1.to_q(x) + self.attn1.to_k(x)) * self.attn1.to_v(x))
        return self.ff.net[2](self.ff.net[1](self.ff.net[0].proj(x + a)))


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.input_blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for b in self.input_blocks:
            x = x + b(x)
        return x


def test_inject_starts_equal_and_only_lora_trains(il):
    m = Toy()
    x = torch.randn(4, 16)
    before = m(x).detach()
    names = il.inject_lora(m, il.UNET_TARGETS["attention"], rank=4, alpha=4, seed=1)
    assert sorted(names) == sorted(f"input_blocks.{i}.attn1.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0"))
    assert torch.allclose(m(x), before)                       # B = 0: the adapted model starts equal
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    m2 = Toy()
    il.inject_lora(m2, il.UNET_TARGETS["attention + feed-forward"], rank=4, alpha=4, seed=1)
    assert len(list(il.lora_layers(m2))) == 12
    with pytest.raises(ValueError, match="no Linear layer"):
        il.inject_lora(Toy(), r".*nothing_here", 4, 4, 0)


def test_kohya_export_import_round_trip(il):
    m = Toy()
    il.inject_lora(m, il.UNET_TARGETS["attention"], rank=4, alpha=2.0, seed=3)
    for p in il.lora_parameters(m):
        torch.nn.init.normal_(p)
    sd = il.export_kohya(m, "lora_unet", 2.0)
    assert "lora_unet_input_blocks_0_attn1_to_q.lora_down.weight" in sd
    assert sd["lora_unet_input_blocks_0_attn1_to_out_0.lora_up.weight"].shape == (16, 4)
    assert sd["lora_unet_input_blocks_1_attn1_to_v.lora_down.weight"].shape == (4, 16)
    assert float(sd["lora_unet_input_blocks_0_attn1_to_q.alpha"]) == 2.0
    x = torch.randn(3, 16)
    # the kohya delta (up @ down * alpha/rank) is what peft adds
    base = Toy()
    with torch.no_grad():
        for i in range(2):
            for p in ("to_q", "to_k", "to_v", "to_out.0"):
                key = f"lora_unet_input_blocks_{i}_attn1_{p.replace('.', '_')}"
                mod = base.get_submodule(f"input_blocks.{i}.attn1.{p}")
                mod.weight += sd[key + ".lora_up.weight"] @ sd[key + ".lora_down.weight"] * (2.0 / 4)
    assert torch.allclose(base(x), m(x), rtol=1e-4, atol=1e-4)
    m3 = Toy()
    il.inject_lora(m3, il.UNET_TARGETS["attention"], rank=4, alpha=2.0, seed=99)
    assert il.import_kohya(m3, "lora_unet", sd) == 8
    assert torch.allclose(m3(x), m(x))
    bad = dict(sd)
    bad.pop("lora_unet_input_blocks_0_attn1_to_q.lora_down.weight")
    with pytest.raises(KeyError):
        il.import_kohya(m3, "lora_unet", bad)


def test_native_loss_is_the_epsilon_and_v_loss(il):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    eps_hat = torch.randn(3, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    x = x0 + noise * sigma.view(-1, 1, 1, 1)
    denoised = x - eps_hat * sigma.view(-1, 1, 1, 1)         # ComfyUI's EPS.calculate_denoised
    assert torch.allclose(il.native_loss(denoised, x0, sigma, "eps"), ((eps_hat - noise) ** 2).mean(), rtol=1e-4)
    # v-prediction (sigma_data = 1): v = alpha * eps - s * x0 with alpha = 1/sqrt(1+s^2), s = sigma/sqrt(1+s^2)
    v_hat = torch.randn(3, 4, 8, 8, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    den = x / (s ** 2 + 1) - v_hat * s / (s ** 2 + 1).sqrt()  # ComfyUI's V_PREDICTION.calculate_denoised
    a, b = 1 / (1 + s ** 2).sqrt(), s / (1 + s ** 2).sqrt()
    v = a * noise - b * x0
    assert torch.allclose(il.native_loss(den, x0, sigma, "v"), ((v_hat - v) ** 2).mean(), rtol=1e-4)


def _toy_problem(il, seed=0):
    m = Toy()
    il.inject_lora(m, il.UNET_TARGETS["attention + feed-forward"], rank=4, alpha=4, seed=seed)
    data = torch.randn(32, 16, generator=torch.Generator().manual_seed(5))
    target = torch.sin(data * 2)

    def loss_fn(gen):
        idx = torch.randint(0, 32, (8,), generator=gen)
        return ((m(data[idx]) - target[idx]) ** 2).mean()
    return m, [{"params": il.lora_parameters(m), "lr": 1e-2}], loss_fn


def _interrupted_run(il, cfg, stop_after: int, scaler=None):
    """(module, state) of a toy run whose interrupt check raises after ``stop_after`` completed steps."""
    class Stop(Exception):
        pass
    m, g, f = _toy_problem(il)
    st = il.TrainState()
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise Stop()
    with pytest.raises(Stop):
        il.train_loop(f, g, cfg, st, device=torch.device("cpu"), check_interrupt=interrupt, scaler=scaler)
    return m, st


def test_train_loop_learns_and_is_deterministic(il):
    cfg = il.TrainConfig(steps=150, seed=0, learning_rate=1e-2)
    m1, g1, f1 = _toy_problem(il)
    s1 = il.train_loop(f1, g1, cfg, il.TrainState(), device=torch.device("cpu"))
    assert s1.step == 150 and len(s1.losses) == 150
    assert sum(s1.losses[-20:]) < 0.5 * sum(s1.losses[:20])
    m2, g2, f2 = _toy_problem(il)
    s2 = il.train_loop(f2, g2, cfg, il.TrainState(), device=torch.device("cpu"))
    assert s1.losses == s2.losses
    assert all(torch.equal(a, b) for a, b in zip(il.lora_parameters(m1), il.lora_parameters(m2)))


def test_interrupt_checkpoint_resume_matches_uninterrupted(il, tmp_path):
    cfg = il.TrainConfig(steps=60, seed=0, learning_rate=1e-2)
    ref_m, ref_g, ref_f = _toy_problem(il)
    ref = il.train_loop(ref_f, ref_g, cfg, il.TrainState(), device=torch.device("cpu"))

    m, st = _interrupted_run(il, cfg, 23)
    assert st.step == 23
    # checkpoint through the safetensors resume format, then continue in a fresh "process"
    path = str(tmp_path / "x.megaportrait-resume")
    family = {"family": "Toy", "context_dim": 16}
    il.save_resume(path, il.export_kohya(m, "lora_unet", 4), st, cfg, family, "data")
    sd, st2 = il.load_resume("Trainer", path, cfg, family, "data")
    m2, g2, f2 = _toy_problem(il, seed=123)          # other init: everything must come from the checkpoint
    il.import_kohya(m2, "lora_unet", sd)
    st2 = il.train_loop(f2, g2, cfg, st2, device=torch.device("cpu"))
    assert st2.losses == ref.losses
    for a, b in zip(il.lora_parameters(m2), il.lora_parameters(ref_m)):
        assert torch.equal(a, b)
    # a checkpoint for other settings / another model family is refused with a clear message
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    with pytest.raises(MegaPortraitError, match="settings differ \\(learning_rate\\)"):
        il.load_resume("Trainer", path, il.TrainConfig(steps=60, seed=0, learning_rate=1e-3), family, "data")
    with pytest.raises(MegaPortraitError, match="the photos"):
        il.load_resume("Trainer", path, cfg, family, "other data")
    with pytest.raises(MegaPortraitError, match="trained on a Toy model but this MODEL is SDXL"):
        il.load_resume("Trainer", path, cfg, {"family": "SDXL", "context_dim": 2048}, "data")


def _scaler():
    # a huge initial scale overflows the first steps (skipped, scale backed off), a short growth interval grows it
    # again: the scaler's state changes all through the run, so a resume that lost it would diverge
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 118, growth_interval=3)


def test_scaled_run_resume_matches_uninterrupted(il, tmp_path):
    """fp16-style loss scaling: the GradScaler's state is saved in the resume checkpoint and restored from it."""
    cfg = il.TrainConfig(steps=40, seed=0, learning_rate=1e-2)
    ref_m, ref_g, ref_f = _toy_problem(il)
    ref_scaler = _scaler()
    ref = il.train_loop(ref_f, ref_g, cfg, il.TrainState(), device=torch.device("cpu"), scaler=ref_scaler)
    assert ref_scaler.get_scale() != 2.0 ** 118                      # the scale did move
    assert sum(ref.losses[-5:]) < sum(ref.losses[:5])                # and it still learned

    m, st = _interrupted_run(il, cfg, 17, scaler=_scaler())
    assert st.step == 17 and st.scaler_state and st.scaler_state["scale"] != 2.0 ** 118
    path = str(tmp_path / "s.megaportrait-resume")
    family = {"family": "Toy", "context_dim": 16}
    il.save_resume(path, il.export_kohya(m, "lora_unet", 4), st, cfg, family, "data")
    sd, st2 = il.load_resume("Trainer", path, cfg, family, "data")
    assert st2.scaler_state == st.scaler_state
    m2, g2, f2 = _toy_problem(il, seed=99)
    il.import_kohya(m2, "lora_unet", sd)
    fresh = _scaler()
    st2 = il.train_loop(f2, g2, cfg, st2, device=torch.device("cpu"), scaler=fresh)
    assert st2.losses == ref.losses
    assert fresh.get_scale() == ref_scaler.get_scale()
    assert all(torch.equal(a, b) for a, b in zip(il.lora_parameters(m2), il.lora_parameters(ref_m)))
    # without the scaler state the resumed run ends elsewhere (so the checks above can fail)
    st3 = il.load_resume("Trainer", path, cfg, family, "data")[1]
    st3.scaler_state = None
    m3, g3, f3 = _toy_problem(il, seed=99)
    il.import_kohya(m3, "lora_unet", sd)
    lost = _scaler()
    st3 = il.train_loop(f3, g3, cfg, st3, device=torch.device("cpu"), scaler=lost)
    assert (st3.losses, lost.get_scale()) != (ref.losses, ref_scaler.get_scale())


def test_training_precision_policy(il):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    f32, f16, b16 = torch.float32, torch.float16, torch.bfloat16
    for req in il.PRECISIONS:                                       # the CPU always trains in fp32
        assert il.training_precision(cpu, req, f16, True) == (f32, False)
    assert il.training_precision(cuda, "fp32", f16, True) == (f32, False)   # fp32 = fp32 compute, also for fp16 models
    assert il.training_precision(cuda, "fp16", f32, True) == (f16, True)    # fp16 always with loss scaling
    assert il.training_precision(cuda, "bf16", f16, True) == (b16, False)
    assert il.training_precision(cuda, "bf16", f16, False) == (f16, True)   # no bf16 on this GPU
    assert il.training_precision(cuda, "auto", f16, True) == (f16, True)    # auto = the model's own dtype
    assert il.training_precision(cuda, "auto", b16, True) == (b16, False)
    assert il.training_precision(cuda, "auto", f32, True) == (b16, False)
    assert il.training_precision(cuda, "auto", f32, False) == (f16, True)


def test_shadow_module_shares_memory_and_stays_private(il):
    with torch.inference_mode():                                   # weights as ComfyUI's executor loads them
        m = Toy()
    twin = il.shadow_module(m)
    pairs = list(zip(m.parameters(), twin.parameters()))
    assert pairs and all(a.data_ptr() == b.data_ptr() and not b.is_inference() and not b.requires_grad
                         for a, b in pairs)
    il.inject_lora(twin, il.UNET_TARGETS["attention"], rank=4, alpha=4, seed=0)
    assert not list(il.lora_layers(m)) and len(list(il.lora_layers(twin))) == 8
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(twin(x), m(x))
    for p in il.lora_parameters(twin):                             # train the twin a little
        p.data.normal_()
    loss = twin(x).pow(2).mean()
    loss.backward()                                                 # inference weights would refuse this
    assert all(p.grad is not None for p in il.lora_parameters(twin))
    with torch.no_grad():
        assert not torch.allclose(twin(x), m(x))
    assert isinstance(m.input_blocks[0].attn1.to_q, torch.nn.Linear) and m.input_blocks[0].attn1.to_q.weight.is_inference()


def test_nan_loss_stops(il):
    m, g, f = _toy_problem(il)
    cfg = il.TrainConfig(steps=10)
    with pytest.raises(il.NonFiniteLoss, match="nan at step 1"):
        il.train_loop(lambda gen: f(gen) * float("nan"), g, cfg, il.TrainState(), device=torch.device("cpu"))


def test_optimizer_state_round_trip(il):
    m, g, f = _toy_problem(il)
    st = il.train_loop(f, g, il.TrainConfig(steps=3), il.TrainState(), device=torch.device("cpu"))
    tensors, meta = il.optimizer_to_tensors(st.optimizer_state)
    back = il.optimizer_from_tensors(tensors, meta)
    import json
    assert json.dumps(back["param_groups"]) == json.dumps(st.optimizer_state["param_groups"])   # (tuples become lists)
    for pid, s in st.optimizer_state["state"].items():
        for k, v in s.items():
            assert torch.equal(back["state"][pid][k], v)


def test_save_names(il, tmp_path):
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    d = str(tmp_path / "loras")
    os.makedirs(d)
    path, name = il.resolve_save_path("T", d, "megaportrait/alice", "error")
    assert path == os.path.join(os.path.realpath(d), "megaportrait", "alice.safetensors")
    assert name == "megaportrait/alice.safetensors"
    for bad in ("../evil", "/etc/evil", "a/../../b", "C:/x", "sub/.hidden", "", "   ", "bad|name", "semi;colon", "new\nline"):
        with pytest.raises(MegaPortraitError, match="is not allowed"):
            il.resolve_save_path("T", d, bad, "overwrite")
    il.atomic_save({"x": torch.zeros(1)}, path, {"a": "b"})
    with pytest.raises(MegaPortraitError, match="already exists"):
        il.resolve_save_path("T", d, "megaportrait/alice", "error")
    p2, n2 = il.resolve_save_path("T", d, "megaportrait/alice.safetensors", "increment name")
    assert n2 == "megaportrait/alice_00001.safetensors" and not os.path.exists(p2)
    p3, _ = il.resolve_save_path("T", d, "megaportrait/alice", "overwrite")
    assert p3 == path
    # a symlink pointing outside the folder is refused too
    os.symlink(str(tmp_path), os.path.join(d, "escape"))
    with pytest.raises(MegaPortraitError, match="outside models/loras"):
        il.resolve_save_path("T", d, "escape/x", "overwrite")
    assert sorted(os.listdir(str(tmp_path))) == ["loras"]


def test_loss_curve_image(il):
    img = il.loss_curve_image([1.0, 0.8, 0.9, 0.5, 0.4] * 20)
    assert img.shape == (1, 256, 512, 3) and 0 <= img.min() and img.max() <= 1
    assert (img < 0.9).any()             # something was drawn
    assert il.loss_curve_image([]).shape == (1, 256, 512, 3)
