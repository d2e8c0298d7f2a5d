"""Stage 1 of MegaPortrait, training: the Identity Net, a LoRA trained on a few photos of the source person.

The trainer works on the MODEL/CLIP the user loaded (SD1.x/2.x and SDXL UNets, any upstream patches such as
other LoRAs baked in) through ComfyUI's own parameterisation: noisy latents at sigmas from the model's
``model_sampling``, predictions from ``BaseModel.apply_model`` and the loss in the model's native target space
(epsilon for EPS models, v for v-prediction). It never touches the given MODEL/CLIP: it trains on a private
copy of the weights with peft LoRA layers, saves the LoRA in kohya format on LDM keys
(``lora_unet_<key>.lora_down/lora_up.weight`` + ``.alpha``; ``lora_te[1|2]_...`` for text encoders) to
``models/loras`` and returns clones of MODEL/CLIP with that file applied exactly as LoraLoader would.

Interrupting (ComfyUI's Cancel) writes a resume checkpoint (LoRA, optimizer and random-generator state, loss
history; safetensors) next to the LoRA; the next run with the same settings continues from it and follows
the same loss trajectory as an uninterrupted run.
"""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .common import CATEGORY, MegaPortraitError, check_choice, check_image, log, require

ADAPTER = "megaportrait"
UNET_TARGETS = {
    "attention": r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    "attention + feed-forward": r".*(\.attn[12]\.(to_q|to_k|to_v|to_out\.0)|\.ff\.net\.0\.proj|\.ff\.net\.2)",
}
TE_TARGETS = r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
IF_EXISTS = ("increment name", "overwrite", "error")
RESUME = ("auto", "off")
RESUME_SUFFIX = ".megaportrait-resume"
FORMAT_VERSION = "1"


@dataclass
class TrainConfig:
    """Everything that determines the result of a training run (hashed to match resume checkpoints)."""
    steps: int = 800
    learning_rate: float = 1e-4
    text_learning_rate: float = 5e-5
    rank: int = 8
    alpha: float = 8.0
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    train_text_encoder: bool = False
    flip: bool = True
    target: str = "attention"
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- LoRA
def inject_lora(module: torch.nn.Module, pattern: str, rank: int, alpha: float, seed: int) -> list[str]:
    """Add peft LoRA layers (adapter ``megaportrait``) to every Linear whose full name matches ``pattern``.

    A-matrices are initialised from ``seed`` (kaiming-uniform), B-matrices with zeros, so the adapted module
    starts out equal to the original. Returns the adapted module names. Only the LoRA weights are trainable."""
    peft = require("peft", "Identity LoRA Trainer", "peft", "identity LoRA training")
    names = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"no Linear layer matches {pattern!r}")
    module.requires_grad_(False)
    cfg = peft.LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=names, lora_dropout=0.0, bias="none",
                          init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        peft.inject_adapter_in_model(cfg, module, adapter_name=ADAPTER)
    for p in lora_parameters(module):
        p.data = p.data.float()
        p.requires_grad_(True)
    return names


def lora_layers(module: torch.nn.Module):
    from peft.tuners.lora import LoraLayer
    for name, m in module.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in m.lora_A:
            yield name, m


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    ps = []
    for _, m in lora_layers(module):
        ps += [m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight]
    return ps


def kohya_key(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name.replace('.', '_')}"


def export_kohya(module: torch.nn.Module, prefix: str, alpha: float, dtype=torch.float32,
                 name_map: Callable[[str], str] = lambda n: n) -> dict:
    """The module's LoRA as kohya tensors: <prefix>_<key>.lora_down.weight / .lora_up.weight / .alpha."""
    out = {}
    for name, m in lora_layers(module):
        key = kohya_key(prefix, name_map(name))
        out[key + ".lora_down.weight"] = m.lora_A[ADAPTER].weight.detach().to("cpu", dtype).contiguous()
        out[key + ".lora_up.weight"] = m.lora_B[ADAPTER].weight.detach().to("cpu", dtype).contiguous()
        out[key + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def import_kohya(module: torch.nn.Module, prefix: str, sd: dict, name_map: Callable[[str], str] = lambda n: n) -> int:
    """Load kohya LoRA tensors back into the module's peft layers (for resuming). Returns layers loaded."""
    n = 0
    for name, m in lora_layers(module):
        key = kohya_key(prefix, name_map(name))
        down, up = sd.get(key + ".lora_down.weight"), sd.get(key + ".lora_up.weight")
        if down is None or up is None:
            raise KeyError(key)
        a, b = m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight
        if tuple(a.shape) != tuple(down.shape) or tuple(b.shape) != tuple(up.shape):
            raise ValueError(f"{key}: checkpoint shapes {tuple(down.shape)}/{tuple(up.shape)} "
                             f"!= {tuple(a.shape)}/{tuple(b.shape)}")
        with torch.no_grad():
            a.copy_(down)
            b.copy_(up)
        n += 1
    return n


# ------------------------------------------------------------------------------------ training machinery
def loss_weight_kind(model_sampling) -> str:
    """'v' for v-prediction/EDM-style samplings (loss in v space), else 'eps' (epsilon / flow velocity space)."""
    names = {c.__name__ for c in type(model_sampling).__mro__}
    return "v" if names & {"V_PREDICTION", "EDM", "V_PREDICTION_EDM"} else "eps"


def native_loss(denoised: torch.Tensor, latent: torch.Tensor, sigma: torch.Tensor, kind: str,
                sigma_data: float = 1.0) -> torch.Tensor:
    """MSE in the model's native target space, computed from its x0 prediction.

    eps: ((x0 - x0_hat) / sigma)^2 == (eps_hat - eps)^2;  v: the same times (sigma^2 + sd^2) / sd^2."""
    s = sigma.view(-1, *([1] * (latent.ndim - 1))).float()
    w = 1.0 / s ** 2
    if kind == "v":
        w = w * (s ** 2 + sigma_data ** 2) / sigma_data ** 2
    return (w * (denoised.float() - latent.float()) ** 2).mean()


@dataclass
class TrainState:
    step: int = 0
    losses: list = None
    generator_state: torch.Tensor | None = None
    optimizer_state: dict | None = None

    def __post_init__(self):
        if self.losses is None:
            self.losses = []


def optimizer_to_tensors(opt_state: dict) -> tuple[dict, str]:
    """Flatten ``optimizer.state_dict()`` into tensors + JSON (safetensors holds no pickles)."""
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, st in opt_state["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                meta["state"][str(pid)][k] = "tensor"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, json.dumps(meta)


def optimizer_from_tensors(tensors: dict, meta_json: str) -> dict:
    meta = json.loads(meta_json)
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"optim.{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


class NonFiniteLoss(RuntimeError):
    pass


def train_loop(loss_fn: Callable[[torch.Generator], torch.Tensor], param_groups: list, cfg: TrainConfig,
               state: TrainState, *, device: torch.device, on_step: Callable[[int, float], None] = lambda s, l: None,
               check_interrupt: Callable[[], None] = lambda: None, checkpoint: Callable[[TrainState], None] = lambda s: None,
               checkpoint_every: int = 0, scaler=None) -> TrainState:
    """AdamW over ``param_groups`` for ``cfg.steps`` steps starting at ``state.step``.

    ``loss_fn(generator)`` draws its random numbers (batch, noise, sigmas) from the CPU generator whose state is
    part of ``state``, so a run resumed from a checkpoint repeats the uninterrupted run exactly. An exception
    from ``check_interrupt`` leaves ``state`` at the last completed step (for the caller to checkpoint)."""
    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    if state.optimizer_state is not None:
        opt.load_state_dict(state.optimizer_state)
    gen = torch.Generator()
    if state.generator_state is not None:
        gen.set_state(state.generator_state)
    else:
        gen.manual_seed(int(cfg.seed) + 1)
    params = [p for g in param_groups for p in g["params"]]

    def snapshot():           # optimizer and generator state are copied only when a checkpoint needs them
        state.generator_state = gen.get_state()
        state.optimizer_state = opt.state_dict()
    try:
        while state.step < cfg.steps:
            check_interrupt()
            gen_before = gen.get_state()
            loss = loss_fn(gen)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                gen.set_state(gen_before)
                raise NonFiniteLoss(f"the loss became {loss_value} at step {state.step + 1}")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            state.step += 1
            state.losses.append(loss_value)
            on_step(state.step, loss_value)
            if checkpoint_every and state.step % checkpoint_every == 0 and state.step < cfg.steps:
                snapshot()
                checkpoint(state)
    finally:
        snapshot()            # the state of the last completed step, also when interrupted
    return state


def loss_curve_image(losses: list, width: int = 512, height: int = 256, title: str = "identity LoRA loss") -> torch.Tensor:
    """A plot of the loss (raw and smoothed) as an IMAGE [1, H, W, 3], drawn with OpenCV."""
    import cv2
    img = np.full((height, width, 3), 255, np.uint8)
    l, r, t, b = 48, 12, 28, 28
    cv2.rectangle(img, (l, t), (width - r, height - b), (200, 200, 200), 1)
    vals = np.asarray(losses, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size:
        lo, hi = float(vals.min()), float(np.percentile(vals, 98))
        hi = hi if hi > lo else lo + 1e-6
        xs = np.linspace(l, width - r, num=max(vals.size, 2))[: vals.size]

        def ys(v):
            return (height - b) - (np.clip(v, lo, hi) - lo) / (hi - lo) * (height - b - t)
        pts = np.stack([xs, ys(vals)], 1).round().astype(np.int32)
        cv2.polylines(img, [pts], False, (170, 200, 240), 1, cv2.LINE_AA)
        k = max(1, vals.size // 20)
        smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
        sx = xs[k - 1:] if smooth.size == xs[k - 1:].size else np.linspace(l, width - r, smooth.size)
        cv2.polylines(img, [np.stack([sx, ys(smooth)], 1).round().astype(np.int32)], False, (200, 60, 20), 2, cv2.LINE_AA)
        cv2.putText(img, f"{hi:.3g}", (2, t + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{lo:.3g}", (2, height - b), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        last = f"step {vals.size}  loss {smooth[-1]:.4f} (avg)"
        cv2.putText(img, last, (l, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (l, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None]


# ------------------------------------------------------------------------------------ file names, saving
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-. /]+$")


def resolve_save_path(node: str, loras_dir: str, save_name: str, if_exists: str) -> tuple[str, str]:
    """(absolute path, name relative to loras_dir) for ``save_name``; never outside loras_dir, never
    overwriting unless ``if_exists`` says so."""
    name = (save_name or "").strip().replace("\\", "/")
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    bad = (not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or not _NAME_RE.match(name)
           or any(part in ("", ".", "..") or part.startswith(".") for part in name.split("/")))
    if bad:
        raise MegaPortraitError(node, f"save name {save_name!r} is not allowed.",
                                "use letters, digits, '_', '-', '.', spaces and '/' for subfolders of models/loras "
                                "(no absolute paths, no '..', no hidden names), e.g. 'megaportrait/alice'.")
    root = os.path.realpath(loras_dir)
    path = os.path.realpath(os.path.join(root, name + ".safetensors"))
    if os.path.commonpath([path, root]) != root:
        raise MegaPortraitError(node, f"save name {save_name!r} points outside models/loras.", "use a plain name.")
    if os.path.exists(path):
        if if_exists == "error":
            raise MegaPortraitError(node, f"{name}.safetensors already exists in {root}.",
                                    "choose another save_name, set if_exists to 'increment name' or 'overwrite', or load "
                                    "it with 'Load Identity LoRA' to skip training.")
        if if_exists == "increment name":
            i = 1
            while os.path.exists(os.path.join(root, f"{name}_{i:05d}.safetensors")):
                i += 1
            name = f"{name}_{i:05d}"
            path = os.path.join(root, name + ".safetensors")
    return path, name + ".safetensors"


def atomic_save(tensors: dict, path: str, metadata: dict) -> None:
    import safetensors.torch as st
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        st.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------------------------ ComfyUI model glue
def model_family(model) -> dict:
    """Base-model facts for metadata and compatibility checks."""
    base = model.model
    cfg_name = type(base.model_config).__name__
    names = {c.__name__ for c in type(base).__mro__}
    if "SDXL" in names:
        version = "sdxl_base_v1-0"
    elif "SD21UNCLIP" in names or cfg_name.startswith("SD2"):
        version = "sd_v2"
    else:
        version = "sd_v1"
    return {"family": cfg_name, "base_model_version": version, "model_class": type(base).__name__,
            "context_dim": int(base.model_config.unet_config.get("context_dim") or 0)}


_INPLACE_RESIDUAL_NORMS = {"BasicTransformerBlock": ("norm1", "norm2", "norm3"), "CLIPLayer": ("layer_norm1", "layer_norm2")}


def _clone_norm_inputs(module: torch.nn.Module) -> None:
    """ComfyUI's early-2024 transformer and CLIP blocks add residuals in place (``x += n``) after a norm saved x
    for backward, which autograd rejects. In our private copy, those norms get a clone of their input."""
    class _CloneIn(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.clone())

    for m in module.modules():
        for attr in _INPLACE_RESIDUAL_NORMS.get(type(m).__name__, ()):
            sub = getattr(m, attr, None)
            if isinstance(sub, torch.nn.Module) and not isinstance(sub, _CloneIn):
                setattr(m, attr, _CloneIn(sub))


def _enable_checkpointing(diffusion_model: torch.nn.Module) -> int:
    """Gradient checkpointing on the copy's transformer and residual blocks (recompute in backward)."""
    from torch.utils.checkpoint import checkpoint
    n = 0
    for m in diffusion_model.modules():
        if type(m).__name__ in ("BasicTransformerBlock", "ResBlock") and not getattr(m, "_mp_ckpt", False):
            orig = m.forward

            def fwd(*args, _orig=orig, **kwargs):
                return checkpoint(_orig, *args, use_reentrant=False, **kwargs)
            m.forward = fwd
            m._mp_ckpt = True
            n += 1
    return n


def _te_modules(te) -> dict:
    """Text encoders of a ComfyUI CLIP model: {kohya prefix: text transformer module}."""
    subs = {k: getattr(te, k) for k in ("clip_l", "clip_g", "clip_h") if isinstance(getattr(te, k, None), torch.nn.Module)}
    if "clip_l" in subs and "clip_g" in subs:
        return {"lora_te1": subs["clip_l"].transformer, "lora_te2": subs["clip_g"].transformer}
    if len(subs) == 1:
        return {"lora_te": next(iter(subs.values())).transformer}
    raise ValueError(f"unsupported text encoder layout: {sorted(subs)}")


def _autocast(device: torch.device, precision: str):
    import contextlib
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext(), None
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _resume_path(lora_path: str) -> str:
    return lora_path[: -len(".safetensors")] + RESUME_SUFFIX


def save_resume(path: str, lora_sd: dict, state: TrainState, cfg: TrainConfig, family: dict, data_key: str) -> None:
    opt_tensors, opt_meta = optimizer_to_tensors(state.optimizer_state or {"state": {}, "param_groups": []})
    tensors = {f"lora.{k}": v for k, v in lora_sd.items()}
    tensors.update(opt_tensors)
    gen = state.generator_state
    tensors["rng.generator"] = gen.clone() if gen is not None else torch.zeros(0, dtype=torch.uint8)
    tensors["losses"] = torch.tensor(state.losses, dtype=torch.float64)
    meta = {"format": "megaportrait-resume", "version": FORMAT_VERSION, "step": state.step, "config": json.dumps(asdict(cfg)),
            "config_key": cfg.key(), "family": json.dumps(family), "data_key": data_key, "optimizer": opt_meta}
    atomic_save(tensors, path, meta)


def load_resume(node: str, path: str, cfg: TrainConfig, family: dict, data_key: str) -> tuple[dict, TrainState]:
    import safetensors
    import safetensors.torch as st
    with safetensors.safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "megaportrait-resume":
        raise MegaPortraitError(node, f"{path} is not a MegaPortrait resume checkpoint.", "delete it or set resume to off.")
    fam = json.loads(meta.get("family", "{}"))
    if fam.get("family") != family["family"] or fam.get("context_dim") != family["context_dim"]:
        raise MegaPortraitError(node, f"the resume checkpoint {os.path.basename(path)} was trained on a {fam.get('family')} "
                                      f"model but this MODEL is {family['family']}.",
                                "connect the checkpoint it was trained on, use another save_name, or set resume to off "
                                "(the old checkpoint is then replaced).")
    old = json.loads(meta.get("config", "{}"))
    diffs = [k for k, v in asdict(cfg).items() if old.get(k) != v]
    if diffs or meta.get("data_key") != data_key:
        what = ", ".join(diffs + (["the photos"] if meta.get("data_key") != data_key else []))
        raise MegaPortraitError(node, f"an interrupted run left {os.path.basename(path)} but its settings differ ({what}).",
                                "restore those settings to continue it, or set resume to off to start over.")
    tensors = st.load_file(path)
    lora_sd = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    state = TrainState(step=int(meta["step"]), losses=tensors["losses"].tolist(),
                       generator_state=tensors["rng.generator"] if tensors["rng.generator"].numel() else None,
                       optimizer_state=optimizer_from_tensors(tensors, meta["optimizer"]))
    return lora_sd, state


def _data_key(images: torch.Tensor) -> str:
    x = images.detach().float().cpu().contiguous()
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16] + f"-{tuple(x.shape)}"


def _folder_loras() -> str:
    import folder_paths
    paths = folder_paths.get_folder_paths("loras")
    if not paths:
        raise MegaPortraitError("Identity LoRA Trainer", "ComfyUI has no 'loras' model folder configured.",
                                "check extra_model_paths.yaml or create ComfyUI/models/loras.")
    return paths[0]


class _ProgressHook:
    def __init__(self, total: int, every: int):
        import comfy.utils
        self.pbar = comfy.utils.ProgressBar(total)
        self.every = max(1, every)
        self.total = total
        self.t0 = time.time()

    def __call__(self, step: int, loss: float, losses: list) -> None:
        preview = None
        if step % self.every == 0 or step == self.total:
            from PIL import Image
            img = (loss_curve_image(losses)[0].numpy() * 255).astype(np.uint8)
            preview = ("JPEG", Image.fromarray(img), 512)
        if step % max(1, self.total // 10) == 0 or step == self.total:
            rate = step / max(time.time() - self.t0, 1e-6)
            log.info("MegaPortrait identity LoRA: step %d/%d loss %.4f (%.2f it/s)", step, self.total, loss, rate)
        self.pbar.update_absolute(step, self.total, preview)


def train_identity_lora(node: str, model, clip, vae, images: torch.Tensor, prompt: str, cfg: TrainConfig,
                        save_path: str, precision: str = "auto", gradient_checkpointing: bool = False,
                        resume: str = "auto", checkpoint_every: int = 100, metadata: dict | None = None,
                        on_progress=None) -> tuple[dict, TrainState, dict]:
    """Train on a private copy of ``model`` (and ``clip`` if ``cfg.train_text_encoder``); returns the kohya
    LoRA tensors, the final TrainState and the safetensors metadata. Writes nothing but the resume checkpoint."""
    import comfy.model_management as mm
    family = model_family(model)
    base_src = model.model
    if getattr(base_src, "inpaint_model", False) or getattr(base_src, "concat_keys", ()):
        raise MegaPortraitError(node, "this MODEL is an inpainting checkpoint (extra input channels).",
                                "train the identity LoRA on the base (non-inpainting) checkpoint.")
    data_key = _data_key(images)
    resume_file = _resume_path(save_path)
    device = mm.get_torch_device()
    ac, scaler = _autocast(device, precision)
    with torch.inference_mode(False), torch.enable_grad():
        state = TrainState()
        resumed_sd = None
        if resume == "auto" and os.path.exists(resume_file):   # loaded here: tensors made in inference mode can't train
            resumed_sd, state = load_resume(node, resume_file, cfg, family, data_key)
            log.info("MegaPortrait: resuming %s at step %d", os.path.basename(resume_file), state.step)
        # data: latents of the photos (and their mirror images), in the model's latent space, and the text condition;
        # made before the trainable copy exists, so the encoders' peak memory and the copy's do not add up
        with torch.no_grad():
            pix = images[..., :3].detach().float().cpu()      # read only: no copy
            lat = base_src.process_latent_in(vae.encode(pix).float().to(device))
            if cfg.flip:
                lat = torch.cat([lat, base_src.process_latent_in(vae.encode(pix.flip(2)).float().to(device))])
            lat = lat.detach().clone()
            tokens = clip.tokenize(prompt)
            if not cfg.train_text_encoder:
                cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
                cond = cond.detach().clone().to(device)
                pooled = pooled.detach().clone().to(device) if pooled is not None else None
        mm.load_models_gpu([model])
        base = copy.deepcopy(base_src)            # private, trainable (non-inference) copy; the input is never touched
        te = None
        if cfg.train_text_encoder:
            mm.load_model_gpu(clip.patcher)
            te = copy.deepcopy(clip.cond_stage_model)
        if device.type == "cuda":                 # the shared originals are not needed on the GPU while we train
            mm.unload_all_models()
            mm.soft_empty_cache()
        base.to(device).requires_grad_(False).eval()
        _clone_norm_inputs(base.diffusion_model)
        if gradient_checkpointing:
            _enable_checkpointing(base.diffusion_model)
        unet_names = inject_lora(base.diffusion_model, UNET_TARGETS[cfg.target], cfg.rank, cfg.alpha, cfg.seed)
        groups = [{"params": lora_parameters(base.diffusion_model), "lr": cfg.learning_rate}]
        te_mods = {}
        if te is not None:
            te.to(device).requires_grad_(False).eval()
            _clone_norm_inputs(te)
            te_mods = _te_modules(te)
            te_params = []
            for i, mod in enumerate(te_mods.values()):
                inject_lora(mod, TE_TARGETS, cfg.rank, cfg.alpha, cfg.seed + 101 + i)
                te_params += lora_parameters(mod)
            groups.append({"params": te_params, "lr": cfg.text_learning_rate})
        if resumed_sd is not None:
            try:
                import_kohya(base.diffusion_model, "lora_unet", resumed_sd)
                for prefix, mod in te_mods.items():
                    import_kohya(mod, prefix, resumed_sd)
            except (KeyError, ValueError) as e:
                raise MegaPortraitError(node, f"the resume checkpoint does not fit this model ({e}).",
                                        "set resume to off or use another save_name.") from e

        h, w = int(pix.shape[1]), int(pix.shape[2])
        ms = base.model_sampling
        kind = loss_weight_kind(ms)
        sigma_data = float(getattr(ms, "sigma_data", 1.0))
        discrete = hasattr(ms, "sigmas") and hasattr(ms, "sigma")

        def text_cond():
            if te is None:
                return cond, pooled
            out = te.encode_token_weights(tokens)
            c, p = out[0], out[1]
            return c.to(device), (p.to(device) if p is not None else None)

        cond_cache: dict = {}

        def model_args(bs: int, x0: torch.Tensor) -> dict:
            if te is None and bs in cond_cache:
                return cond_cache[bs]
            c, p = text_cond()
            kw = {"cross_attn": c.expand(bs, *c.shape[1:])}
            if p is not None:
                kw["pooled_output"] = p.expand(bs, *p.shape[1:])
            extra = base.extra_conds(width=w, height=h, crop_w=0, crop_h=0, target_width=w, target_height=h,
                                     device=device, noise=x0, **kw)
            args = {k: v.cond for k, v in extra.items()}
            if te is None:
                cond_cache[bs] = args
            return args

        def loss_fn(gen: torch.Generator) -> torch.Tensor:
            bs = cfg.batch_size
            idx = torch.randint(0, lat.shape[0], (bs,), generator=gen)
            x0 = lat[idx.to(device)]
            noise = torch.randn(x0.shape, generator=gen).to(device)
            if discrete:
                t = torch.randint(0, 1000, (bs,), generator=gen).float()
                sigma = ms.sigma(t.to(ms.sigmas.device)).to(device)
            else:
                u = torch.rand(bs, generator=gen).clamp(1e-3, 1 - 1e-3)
                sigma = torch.tensor([ms.percent_to_sigma(float(v)) for v in u], device=device)
            args = model_args(bs, x0)
            x_noisy = x0 + noise * sigma.view(-1, 1, 1, 1)
            with ac:
                denoised = base.apply_model(x_noisy, sigma, **args)
            return native_loss(denoised, x0, sigma, kind, sigma_data)

        def checkpoint(st):
            save_resume(resume_file, _export(base, te_mods, cfg), st, cfg, family, data_key)

        def check_interrupt():
            mm.throw_exception_if_processing_interrupted()

        progress = on_progress or (lambda s, l, ls: None)
        try:
            state = train_loop(loss_fn, groups, cfg, state, device=device, scaler=scaler,
                               on_step=lambda s, l: progress(s, l, state.losses),
                               check_interrupt=check_interrupt, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        except mm.InterruptProcessingException:
            if state.step > 0:
                checkpoint(state)
                log.warning("MegaPortrait: training interrupted at step %d/%d; checkpoint kept in %s (the next run with the "
                            "same settings resumes from it)", state.step, cfg.steps, resume_file)
            raise
        except NonFiniteLoss as e:
            raise MegaPortraitError(node, f"{e}; nothing was saved (the last resume checkpoint, if any, is kept).",
                                    "lower the learning rate, use precision fp32 or bf16, or check the photos.") from e
        lora_sd = _export(base, te_mods, cfg)
        base = te = te_mods = groups = lat = None      # drop the training copies (closures hold these cells)
    gc.collect()
    mm.soft_empty_cache()
    meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": cfg.rank, "ss_network_alpha": cfg.alpha,
        "ss_base_model_version": family["base_model_version"], "ss_steps": cfg.steps, "ss_max_train_steps": cfg.steps,
        "ss_learning_rate": cfg.learning_rate, "ss_text_encoder_lr": cfg.text_learning_rate if cfg.train_text_encoder else 0,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})", "ss_num_train_images": int(images.shape[0]),
        "ss_seed": cfg.seed, "ss_training_comment": "MegaPortrait identity LoRA",
        "modelspec.architecture": ("stable-diffusion-xl-v1-base/lora" if family["base_model_version"].startswith("sdxl")
                                   else "stable-diffusion-v1/lora"),
        "megaportrait.version": FORMAT_VERSION, "megaportrait.family": family["family"],
        "megaportrait.prompt": prompt, "megaportrait.unet_layers": len(unet_names),
        "megaportrait.text_encoder": int(cfg.train_text_encoder), "megaportrait.config": json.dumps(asdict(cfg)),
        "megaportrait.final_loss": f"{np.mean(state.losses[-max(1, len(state.losses) // 10):]):.6f}" if state.losses else "",
    }
    meta.update(metadata or {})
    return lora_sd, state, meta


def _export(base, te_mods: dict, cfg: TrainConfig) -> dict:
    sd = export_kohya(base.diffusion_model, "lora_unet", cfg.alpha)
    for prefix, mod in te_mods.items():
        sd.update(export_kohya(mod, prefix, cfg.alpha))
    return sd


def apply_lora(model, clip, lora_sd: dict, strength_model: float = 1.0, strength_clip: float = 1.0):
    """Clones of MODEL/CLIP with the LoRA as patches, exactly as the stock LoraLoader applies a file."""
    import comfy.sd
    return comfy.sd.load_lora_for_models(model, clip, lora_sd, strength_model, strength_clip)


def read_lora_metadata(path: str) -> dict:
    import safetensors
    with safetensors.safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


# ----------------------------------------------------------------------------------------------- nodes
class IdentityLoraTrainer:
    DESCRIPTION = ("MegaPortrait Identity Net: trains an identity LoRA on 3-20 photos of the source person, on the MODEL "
                   "(and optionally CLIP) you loaded, saves it to models/loras (kohya format: loads in LoraLoader and "
                   "A1111) and returns MODEL/CLIP with it applied. Cancel keeps a checkpoint; re-queue to resume.")
    CATEGORY = f"{CATEGORY}/Identity"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "IMAGE")
    RETURN_NAMES = ("model", "clip", "lora_name", "loss_curve")
    OUTPUT_TOOLTIPS = ("The input MODEL with the trained LoRA applied (a clone; the input is unchanged).",
                       "The input CLIP, with the text-encoder LoRA when trained (a clone).",
                       "File name of the LoRA in models/loras (for LoraLoader / Load Identity LoRA).",
                       "Loss per step (raw and smoothed).")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The checkpoint to personalise (SD1.5 or SDXL; other LoRAs applied upstream are "
                                           "baked into the training copy)."}),
            "clip": ("CLIP", {"tooltip": "Its text encoder(s): encodes the instance prompt (and is trained when "
                                         "train_text_encoder is on)."}),
            "vae": ("VAE", {"tooltip": "Its VAE: encodes the photos to latents."}),
            "images": ("IMAGE", {"tooltip": "3-20 photos of the person (e.g. from Load Source Photos). Cropped to squares "
                                            "(around the face when face_analysis is connected) and resized to resolution."}),
            "trigger_word": ("STRING", {"default": "sks", "tooltip": "A rare token that will mean this person in prompts."}),
            "class_word": ("STRING", {"default": "person", "tooltip": "What the subject is (person, woman, man...)."}),
            "prompt_template": ("STRING", {"default": "photo of {trigger} {class}", "tooltip":
                                "Instance prompt for every photo; {trigger} and {class} are replaced. Use the same words "
                                "when prompting the samplers."}),
            "steps": ("INT", {"default": 800, "min": 1, "max": 20000, "tooltip":
                      "Optimisation steps. Published identity-LoRA recipes use a few hundred to ~1500 (about 100 per "
                      "photo); too many overfits (reference pose/lighting ignored)."}),
            "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-6, "round": 1e-8, "tooltip":
                              "UNet LoRA learning rate (AdamW). 1e-4 is the usual value for rank 4-16."}),
            "rank": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip":
                     "LoRA rank (capacity). 4-16 is typical for a face; higher = bigger file, more overfitting."}),
            "alpha": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 512.0, "step": 0.1, "tooltip":
                      "LoRA alpha: the update is scaled by alpha/rank. alpha = rank (default) means scale 1."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Photos per step."}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip":
                           "Training resolution (512 for SD1.5, 1024 for SDXL)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip":
                     "Seed for LoRA initialisation, batches, noise and timesteps: same seed + settings = same LoRA."}),
            "save_name": ("STRING", {"default": "megaportrait/identity", "tooltip":
                          "File name under models/loras (subfolders with '/'); '.safetensors' is added."}),
        }, "optional": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Crop each photo around the face (recommended). Photos without "
                                                           "a face then raise an error naming them."}),
            "train_text_encoder": ("BOOLEAN", {"default": False, "tooltip":
                                   "Also train a text-encoder LoRA (lora_te keys). Stronger identity, more overfitting risk."}),
            "text_learning_rate": ("FLOAT", {"default": 5e-5, "min": 1e-7, "max": 1e-1, "step": 1e-6, "round": 1e-8,
                                             "tooltip": "Text-encoder LoRA learning rate (when trained)."}),
            "target": (list(UNET_TARGETS), {"default": "attention", "tooltip":
                       "UNet layers that get LoRA: attention projections (q, k, v, out) or also the feed-forward layers."}),
            "flip": ("BOOLEAN", {"default": True, "tooltip": "Also train on mirrored photos (doubles the data)."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip":
                                       "Recompute activations in the backward pass: much less memory, ~30% slower."}),
            "precision": (list(PRECISIONS), {"default": "auto", "tooltip":
                          "Mixed precision on a GPU (auto = bf16 where supported, else fp16 with loss scaling). The CPU "
                          "always trains in fp32."}),
            "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": 10000, "tooltip":
                                 "Write a resume checkpoint every N steps (0 = only when cancelled)."}),
            "resume": (list(RESUME), {"default": "auto", "tooltip":
                       "auto: continue an interrupted run of the same save_name and settings; off: start over."}),
            "if_exists": (list(IF_EXISTS), {"default": "increment name", "tooltip":
                          "When the LoRA file exists: add a counter (name_00001), overwrite it, or stop with an error."}),
        }}

    def train(self, model, clip, vae, images, trigger_word, class_word, prompt_template, steps, learning_rate, rank, alpha,
              batch_size, resolution, seed, save_name, face_analysis=None, train_text_encoder=False,
              text_learning_rate=5e-5, target="attention", flip=True, gradient_checkpointing=False, precision="auto",
              checkpoint_every=100, resume="auto", if_exists="increment name"):
        node = "Identity LoRA Trainer"
        from .source_photos import square_photos
        images = check_image(node, images, "images")
        n = images.shape[0]
        if n < 3:
            raise MegaPortraitError(node, f"{n} photo(s) given; an identity LoRA needs at least 3 (3-20 recommended).",
                                    "add photos of the person (different angles and lighting), or let Load Source Photos "
                                    "make augmented copies (min_photos).")
        if n > 20:
            log.warning("MegaPortrait: %d photos (3-20 recommended); training uses all of them", n)
        if resolution % 8:
            raise MegaPortraitError(node, f"resolution {resolution} is not a multiple of 8.", "use 512, 768 or 1024.")
        for name, val, allowed in (("precision", precision, PRECISIONS), ("resume", resume, RESUME),
                                   ("if_exists", if_exists, IF_EXISTS), ("target", target, tuple(UNET_TARGETS))):
            check_choice(node, name, val, allowed)
        prompt = prompt_template.replace("{trigger}", trigger_word).replace("{class}", class_word).strip()
        if not prompt:
            raise MegaPortraitError(node, "the instance prompt is empty.", "set trigger_word and prompt_template.")
        photos = square_photos(node, [images[i] for i in range(n)], int(resolution), face_analysis)
        cfg = TrainConfig(steps=int(steps), learning_rate=float(learning_rate), text_learning_rate=float(text_learning_rate),
                          rank=int(rank), alpha=float(alpha), batch_size=int(batch_size), resolution=int(resolution),
                          seed=int(seed), train_text_encoder=bool(train_text_encoder), flip=bool(flip), target=target)
        loras_dir = _folder_loras()
        final_path, lora_name = resolve_save_path(node, loras_dir, save_name, if_exists)
        resume_anchor = resolve_save_path(node, loras_dir, save_name, "overwrite")[0]
        hook = _ProgressHook(cfg.steps, max(1, cfg.steps // 50))
        lora_sd, state, meta = train_identity_lora(
            node, model, clip, vae, photos, prompt, cfg, resume_anchor, precision=precision,
            gradient_checkpointing=bool(gradient_checkpointing), resume=resume, checkpoint_every=int(checkpoint_every),
            metadata={"megaportrait.trigger_word": trigger_word, "megaportrait.class_word": class_word},
            on_progress=hook)
        atomic_save(lora_sd, final_path, meta)
        rp = _resume_path(resume_anchor)
        if os.path.exists(rp):
            os.unlink(rp)
        log.info("MegaPortrait: saved identity LoRA %s (%d tensors)", final_path, len(lora_sd))
        new_model, new_clip = apply_lora(model, clip, lora_sd, 1.0, 1.0)
        text = f"saved {lora_name}\nsteps {state.step}, final loss {meta['megaportrait.final_loss']}\nprompt: {prompt}"
        return {"ui": {"text": [text]}, "result": (new_model, new_clip, lora_name, loss_curve_image(state.losses))}


class LoadIdentityLora:
    DESCRIPTION = ("Applies a previously trained identity LoRA (skip training). Like LoraLoader, plus a check that the "
                   "LoRA fits the model and its trigger word / prompt from the file's metadata.")
    CATEGORY = f"{CATEGORY}/Identity"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "STRING")
    RETURN_NAMES = ("model", "clip", "prompt", "info")
    OUTPUT_TOOLTIPS = ("MODEL with the LoRA (a clone).", "CLIP with the LoRA (a clone).",
                       "The instance prompt it was trained with (e.g. 'photo of sks person'); empty if unknown.",
                       "What the file says about itself.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        try:
            import folder_paths
            names = folder_paths.get_filename_list("loras")
        except Exception:
            names = []
        return {"required": {
            "model": ("MODEL", {"tooltip": "The checkpoint the LoRA was trained on (same family)."}),
            "clip": ("CLIP", {"tooltip": "Its text encoder(s)."}),
            "lora_name": (names, {"tooltip": "A LoRA file in models/loras (e.g. the trainer's save_name)."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip":
                               "UNet LoRA strength (1 = as trained; 0 = off)."}),
            "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip":
                              "Text-encoder LoRA strength."}),
        }}

    def load(self, model, clip, lora_name, strength_model, strength_clip):
        node = "Load Identity LoRA"
        import comfy.utils
        import folder_paths
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None or not os.path.isfile(path):
            raise MegaPortraitError(node, f"LoRA {lora_name!r} was not found in models/loras.",
                                    "train one with the Identity LoRA Trainer or copy the file there.")
        if not path.endswith(".safetensors"):
            raise MegaPortraitError(node, f"{lora_name} is not a .safetensors file (pickled files are never loaded).",
                                    "convert it to safetensors.")
        meta = read_lora_metadata(path)
        fam = model_family(model)
        trained_on = meta.get("ss_base_model_version", "")
        if trained_on and trained_on.startswith("sdxl") != fam["base_model_version"].startswith("sdxl"):
            raise MegaPortraitError(node, f"{lora_name} was trained on {trained_on} but this MODEL is "
                                          f"{fam['base_model_version']} ({fam['family']}).",
                                    "load the checkpoint family the LoRA was trained on.")
        lora = comfy.utils.load_torch_file(path, safe_load=True)
        new_model, new_clip = apply_lora(model, clip, lora, strength_model, strength_clip)
        prompt = meta.get("megaportrait.prompt", "")
        info = "\n".join(f"{k}: {meta[k]}" for k in ("megaportrait.family", "ss_base_model_version", "ss_network_dim",
                                                     "ss_network_alpha", "ss_steps", "megaportrait.prompt",
                                                     "megaportrait.final_loss") if k in meta) or "no metadata"
        return (new_model, new_clip, prompt, info)


NODE_CLASS_MAPPINGS = {
    "MegaPortraitIdentityLoraTrainer": IdentityLoraTrainer,
    "MegaPortraitLoadIdentityLora": LoadIdentityLora,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MegaPortraitIdentityLoraTrainer": "Identity LoRA Trainer (MegaPortrait)",
    "MegaPortraitLoadIdentityLora": "Load Identity LoRA (MegaPortrait)",
}
