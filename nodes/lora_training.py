"""Identity LoRA training, the pure torch part (no ComfyUI import): the private twin of a frozen network,
peft LoRA layers on it, the loss in the model's own parameterisation, the training loop and its resume files.

The loop is deterministic: every random number (batch, noise, sigma) comes from one CPU generator whose state,
with the optimizer's and the GradScaler's, is part of the resume checkpoint, so an interrupted run that is
resumed follows the uninterrupted run's loss trajectory exactly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from .common import MegaPortraitError, import_optional, log
from .families import FAMILIES
from .lora_files import ADAPTER, atomic_save, lora_parameters

UNET_TARGETS = FAMILIES[0].lora_targets        # the SD UNet's (SD1.x, SD2.x and SDXL share them)
TE_TARGETS = FAMILIES[0].te_lora_targets
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORMAT_VERSION = "3"


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
    background_weight: float = 1.0       # face-weighted loss: the weight of pixels outside the face mask

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------- the private twin
def _alias(t: torch.Tensor | None, parameter: bool):
    """A frozen tensor sharing ``t``'s memory. Weights loaded inside ComfyUI's executor are inference tensors,
    which autograd may not save for backward; a normal tensor set onto the same storage may be (no copy)."""
    if t is None:
        return None
    a = t.detach()
    if a.is_inference():
        b = torch.empty(0, dtype=t.dtype, device=t.device)
        b.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
        a = b
    return torch.nn.Parameter(a, requires_grad=False) if parameter else a


def shadow_module(module: torch.nn.Module) -> torch.nn.Module:
    """A private twin of ``module``: new Module objects of the same classes that share every plain attribute and
    whose parameters and buffers are frozen aliases of the same memory. No tensor is copied and nothing of
    ``module`` changes; adapters, wrappers and hooks added to the twin stay in the twin."""
    memo: dict[int, torch.nn.Module] = {}

    def twin(m: torch.nn.Module) -> torch.nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        t = object.__new__(type(m))
        d = dict(m.__dict__)
        d["_parameters"] = OrderedDict((k, _alias(v, True)) for k, v in m._parameters.items())
        d["_buffers"] = OrderedDict((k, _alias(v, False)) for k, v in m._buffers.items())
        for k, v in m.__dict__.items():              # hook tables: our own, so hooks on the twin stay private
            if "hook" in k and isinstance(v, dict):
                d[k] = type(v)(v)
        d["_modules"] = OrderedDict()
        t.__dict__.update(d)
        memo[id(m)] = t
        for k, v in m._modules.items():
            t._modules[k] = twin(v) if v is not None else None
        return t
    return twin(module)


class _CloneIn(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.clone())


def clone_norm_inputs(module: torch.nn.Module, norms: dict[str, tuple[str, ...]]) -> int:
    """Blocks that add residuals in place (``x += f(norm(x))``) after a norm saved x for backward break autograd.
    In a twin, the norms named in ``norms`` ({block class name: norm attributes}) get a clone of their input."""
    n = 0
    for m in list(module.modules()):
        for attr in norms.get(type(m).__name__, ()):
            sub = m._modules.get(attr)
            if isinstance(sub, torch.nn.Module) and not isinstance(sub, _CloneIn):
                m._modules[attr] = _CloneIn(sub)
                n += 1
    return n


def enable_checkpointing(module: torch.nn.Module, blocks: tuple = ("BasicTransformerBlock", "ResBlock")) -> int:
    """Gradient checkpointing on a twin's blocks whose class names are in ``blocks`` (recompute in backward). Each
    block gets copies of its tensor inputs: blocks that add residuals to their input in place (Flux's, the early
    SD transformer blocks) would otherwise change what the recompute starts from."""
    from torch.utils.checkpoint import checkpoint
    n = 0
    for m in module.modules():
        if type(m).__name__ in blocks and not m.__dict__.get("_mp_ckpt", False):
            orig = m.forward

            def fresh(*args, _orig=orig, **kwargs):
                args = [a.clone() if torch.is_tensor(a) else a for a in args]
                kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
                return _orig(*args, **kwargs)

            def fwd(*args, _fresh=fresh, **kwargs):
                return checkpoint(_fresh, *args, use_reentrant=False, **kwargs)
            m.forward = fwd
            m._mp_ckpt = True
            n += 1
    return n


def _is_linear_like(m: torch.nn.Module) -> bool:
    """A Linear layer, or a layer that computes like one without being a ``torch.nn.Linear``: ComfyUI's quantized
    ``mixed_precision_ops`` Linear (fp8 / nvfp4 / mxfp8 / int8 checkpoints) has a weight, in/out features and a
    forward, and dequantizes in it."""
    if isinstance(m, torch.nn.Linear):
        return True
    return (type(m).__name__ == "Linear" and isinstance(getattr(m, "in_features", None), int)
            and isinstance(getattr(m, "out_features", None), int) and getattr(m, "weight", None) is not None)


def inject_lora(module: torch.nn.Module, pattern: str, rank: int, alpha: float, seed: int,
                device: torch.device | None = None) -> list[str]:
    """Add peft LoRA layers (adapter ``megaportrait``) to every Linear-like layer whose full name matches ``pattern``
    (plain ``nn.Linear`` and ComfyUI's quantized Linear layers alike: the base layer computes as it always does).

    A-matrices are initialised from ``seed`` (kaiming-uniform, peft's own init) with a private generator, B-matrices
    with zeros, so the adapted module starts out equal to the original; no global random generator is seeded or
    advanced. The LoRA weights are fp32 on ``device`` (the compute device; default: where each layer's weight is),
    also for layers whose weights a partial load left on the offload device. Returns the adapted module names.
    Raises MissingPackage without peft (the trainer node checks for it before any work)."""
    peft = import_optional("peft", "peft", "identity LoRA training")
    from peft.tuners.lora.layer import Linear as LoraLinear
    names = [n for n, m in module.named_modules() if _is_linear_like(m) and re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"no Linear layer matches {pattern!r}")
    module.requires_grad_(False)
    cfg = peft.LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=names, lora_dropout=0.0, bias="none",
                          init_lora_weights=True)
    custom = {type(m) for n, m in module.named_modules() if n in set(names) and not isinstance(m, torch.nn.Linear)}
    if custom:
        cfg._register_custom_module({t: LoraLinear for t in custom})
    with torch.random.fork_rng(devices=[]):      # peft's own init draws from the CPU generator: put it back after
        peft.inject_adapter_in_model(cfg, module, adapter_name=ADAPTER)
    gen = torch.Generator().manual_seed(int(seed))
    from .lora_files import lora_layers
    for _, layer in lora_layers(module):
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        dev = device if device is not None else a.device
        init = torch.empty(a.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=gen)     # what peft does, from our generator
        a.data = init.to(dev)
        b.data = torch.zeros(b.shape, dtype=torch.float32, device=dev)
    for p in lora_parameters(module):
        p.requires_grad_(True)
    return names


# -------------------------------------------------------------------------------- frozen layers, streamed
class _FrozenRecompute(torch.autograd.Function):
    """A frozen layer whose weight is made per call (cast to the compute dtype, dequantized, streamed from the
    offload device): the forward keeps nothing of it for backward; backward makes it again and takes the input
    gradient through it. Only the input is saved (the LoRA beside the layer saves the same tensor anyway)."""

    @staticmethod
    def forward(ctx, x, fwd):
        ctx.fwd = fwd
        ctx.save_for_backward(x)
        with torch.no_grad():
            y = fwd(x)
        return y.clone() if y._is_view() or y is x else y    # autograd forbids in-place changes of a view made here

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            y = ctx.fwd(xd)
            grad_x, = torch.autograd.grad(y, xd, grad_out)
        return grad_x, None


def stream_frozen_layers(module: torch.nn.Module, casts_per_call: Callable[[torch.nn.Module], bool]) -> int:
    """Make every frozen layer of a twin for which ``casts_per_call(layer)`` holds (its weight copied, cast or
    dequantized in each forward: layers a partial load left on the offload device, fp8/quantized weights, weights
    cast to the training precision) keep no weight copy for backward (see :class:`_FrozenRecompute`). Calls with
    more than one argument, or whose input needs no gradient, run as before. Returns the layers changed."""
    n = 0
    for m in module.modules():
        if m.__dict__.get("_mp_stream") or not casts_per_call(m):
            continue
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            continue
        orig = m.forward

        def fwd(*args, _orig=orig, **kwargs):
            if len(args) == 1 and not kwargs and torch.is_tensor(args[0]) and args[0].requires_grad \
                    and torch.is_grad_enabled():
                return _FrozenRecompute.apply(args[0], _orig)
            return _orig(*args, **kwargs)
        m.forward = fwd
        m._mp_stream = True
        n += 1
    return n


@contextlib.contextmanager
def saved_for_backward(exclude: Iterable[torch.Tensor] = ()):
    """Count the bytes autograd saves for backward inside the block (each storage once), leaving out the storages
    of ``exclude`` (the model's own weights, resident anyway). Yields a dict whose "bytes" is filled as it runs."""
    skip = {t.untyped_storage().data_ptr() for t in exclude if t is not None and t.device.type != "meta"}
    seen: set[int] = set()
    out = {"bytes": 0}

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in skip and ptr not in seen and t.device.type != "meta":
                seen.add(ptr)
                out["bytes"] += st.nbytes()
        except RuntimeError:     # tensor subclasses without a plain storage
            out["bytes"] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


# -------------------------------------------------------------------------------- precision, loss
def training_precision(device: torch.device, requested: str, model_dtype: torch.dtype,
                       bf16_supported: bool) -> tuple[torch.dtype, bool]:
    """(compute dtype, use a GradScaler). The CPU trains in fp32. On a GPU: fp32 = fp32 compute (the frozen
    weights are upcast layer by layer, no copy); bf16 = bf16 autocast; fp16 = fp16 autocast with loss scaling;
    auto = the dtype the model is loaded in (fp32 models: bf16 where supported, else fp16)."""
    if device.type != "cuda" or requested == "fp32":
        return torch.float32, False
    if requested == "auto":
        if model_dtype == torch.float16:
            requested = "fp16"
        else:
            requested = "bf16" if bf16_supported else "fp16"
    if requested == "bf16" and not bf16_supported:
        log.warning("MegaPortrait: this GPU has no bf16; training in fp16 with loss scaling")
        requested = "fp16"
    return (torch.bfloat16, False) if requested == "bf16" else (torch.float16, True)


def autocast(device: torch.device, dtype: torch.dtype):
    if device.type != "cuda" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def native_loss(denoised: torch.Tensor, latent: torch.Tensor, sigma: torch.Tensor, kind: str,
                sigma_data: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE in the model's native target space, computed from its x0 prediction.

    eps: ((x0 - x0_hat) / sigma)^2 == (eps_hat - eps)^2;  v: the same times (sigma^2 + sd^2) / sd^2;
    flow (x = sigma * eps + (1 - sigma) * x0, velocity u = eps - x0, x0_hat = x - sigma * u_hat):
    ((x0 - x0_hat) / sigma)^2 == (u_hat - u)^2, the rectified-flow loss.
    ``weight`` ([B, 1, h, w] in the latent's size, see :func:`latent_weight`) weights each latent pixel (the
    face-weighted loss): the mean of weight x squared error, so a pixel of weight w gets w times its gradient."""
    s = sigma.view(-1, *([1] * (latent.ndim - 1))).float()
    w = 1.0 / s ** 2
    if kind == "v":
        w = w * (s ** 2 + sigma_data ** 2) / sigma_data ** 2
    err = w * (denoised.float() - latent.float()) ** 2
    if weight is not None:
        err = err * weight.float()
    return err.mean()


def latent_weight(masks: torch.Tensor, latent_hw: tuple[int, int], background_weight: float) -> torch.Tensor:
    """Per-latent-pixel loss weights [N, 1, h, w] from face masks [N, H, W] (1 = face and hair, 0 = background):
    ``background_weight`` outside the face, 1 inside, the mask's feathered edge in between (area-averaged to the
    latent grid, where one latent pixel is 8x8 or 16x16 image pixels)."""
    m = torch.nn.functional.interpolate(masks.float().clamp(0, 1)[:, None], size=latent_hw, mode="area")
    return background_weight + (1.0 - background_weight) * m


# -------------------------------------------------------------------------------- the loop
@dataclass
class TrainState:
    step: int = 0
    losses: list = field(default_factory=list)
    generator_state: torch.Tensor | None = None
    optimizer_state: dict | None = None
    scaler_state: dict | None = None


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
    part of ``state``, so a run resumed from a checkpoint repeats the uninterrupted run exactly. ``scaler`` (a
    ``torch.amp.GradScaler``) scales the loss for fp16; its state is restored from and saved to ``state`` too.
    An exception from ``check_interrupt``, or raised anywhere inside a step (ComfyUI 0.33 checks for Cancel in every
    layer's forward), leaves ``state`` at the last completed step with the generator as it was before that step, so
    the resumed run draws the same batch, noise and sigmas again (for the caller to save)."""
    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    if state.optimizer_state is not None:
        opt.load_state_dict(state.optimizer_state)
    if scaler is not None and state.scaler_state:
        scaler.load_state_dict(state.scaler_state)
    gen = torch.Generator()
    if state.generator_state is not None:
        gen.set_state(state.generator_state)
    else:
        gen.manual_seed(int(cfg.seed) + 1)
    params = [p for g in param_groups for p in g["params"]]

    def snapshot():           # optimizer, scaler and generator state are copied only when a checkpoint needs them
        state.generator_state = gen.get_state()
        state.optimizer_state = opt.state_dict()
        state.scaler_state = dict(scaler.state_dict()) if scaler is not None else None
    try:
        while state.step < cfg.steps:
            check_interrupt()
            gen_before = gen.get_state()
            try:       # a Cancel inside the forward or backward (ComfyUI checks in every layer) undoes the step's draws
                loss = loss_fn(gen)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(f"the loss became {loss_value} at step {state.step + 1}")
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
            except BaseException:
                gen.set_state(gen_before)
                opt.zero_grad(set_to_none=True)
                raise
            del loss
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


# -------------------------------------------------------------------------------- resume files
def save_resume(path: str, lora_sd: dict, state: TrainState, cfg: TrainConfig, family: dict, data_key: str) -> None:
    """LoRA, optimizer, GradScaler and generator state and the loss history in one safetensors file."""
    opt_tensors, opt_meta = optimizer_to_tensors(state.optimizer_state or {"state": {}, "param_groups": []})
    tensors = {f"lora.{k}": v for k, v in lora_sd.items()}
    tensors.update(opt_tensors)
    gen = state.generator_state
    tensors["rng.generator"] = gen.clone() if gen is not None else torch.zeros(0, dtype=torch.uint8)
    tensors["losses"] = torch.tensor(state.losses, dtype=torch.float64)
    meta = {"format": "megaportrait-resume", "version": FORMAT_VERSION, "step": state.step, "config": json.dumps(asdict(cfg)),
            "config_key": cfg.key(), "family": json.dumps(family), "data_key": data_key, "optimizer": opt_meta,
            "grad_scaler": json.dumps(state.scaler_state or {})}
    atomic_save(tensors, path, meta)


def load_resume(node: str, path: str, cfg: TrainConfig, family: dict, data_key: str) -> tuple[dict, TrainState]:
    import safetensors
    import safetensors.torch as st
    try:
        with safetensors.safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise MegaPortraitError(node, f"the resume checkpoint {os.path.basename(path)} cannot be read ({e}).",
                                "delete it or set resume to off.") from e
    if meta.get("format") != "megaportrait-resume":
        raise MegaPortraitError(node, f"{path} is not a MegaPortrait resume checkpoint.", "delete it or set resume to off.")
    fam = json.loads(meta.get("family", "{}"))
    # the text widths; 0 is unknown (resume files of Flux runs written before the trainer read Flux's width stored 0)
    widths = (fam.get("context_dim") or 0, family["context_dim"] or 0)
    if fam.get("family") != family["family"] or (all(widths) and widths[0] != widths[1]):
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
                       optimizer_state=optimizer_from_tensors(tensors, meta["optimizer"]),
                       scaler_state=json.loads(meta.get("grad_scaler", "{}")) or None)
    return lora_sd, state


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
