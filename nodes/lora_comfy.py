"""Identity LoRA training on ComfyUI models: the glue between the user's MODEL/CLIP/VAE and the pure training
loop in ``lora_training``.

How the base model is used (never deep-copied, pickled or mutated):
1. the photos are encoded with the VAE and the prompt with the CLIP first, so encoder and trainer peaks do not add;
2. the MODEL is loaded the way samplers load it (``load_models_gpu``: one copy on the device, its upstream
   patches such as other LoRAs applied; on ComfyUI 0.33's dynamic-VRAM patcher, through ComfyUI's own static
   delegate), telling ComfyUI how much memory training needs so it frees other models only when it must;
3. a *twin* of the loaded BaseModel is made: new module objects whose parameters alias the loaded weights (no
   tensor copied); peft LoRA layers go into the twin, and training runs ComfyUI's own ``apply_model`` on it,
   with sigmas drawn through the model's ``model_sampling`` and the loss in its native parameterisation.
The twin is dropped after training; the node returns ``model.clone()`` with the LoRA added as patches.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import comfy_compat as compat
from . import families
from . import lora_training as lt
from .common import MegaPortraitError, log
from .lora_files import TRAIN_KEY, export_kohya, import_kohya, lora_parameters
from .sampling import sampling_kind

RESUME_SUFFIX = ".megaportrait-resume"


# ------------------------------------------------------------------------------------------- the model
def family_of(model) -> families.Family:
    """The row of the family table for a MODEL."""
    return families.of_model(model)


def model_family(model) -> dict:
    """Base-model facts for metadata and compatibility checks (JSON-able)."""
    base = model.model
    fam = family_of(model)
    return {"family": type(base.model_config).__name__, "name": fam.name, "base_model_version": fam.base_model_version,
            "model_class": type(base).__name__, "context_dim": families.text_width(model)}


def loss_kind(model_sampling) -> str:
    """'v' for v-prediction and EDM models (loss in v space), 'flow' for rectified-flow models (loss in velocity
    space), else 'eps'."""
    if sampling_kind(model_sampling) == "flow":
        return "flow"
    names = {c.__name__ for c in type(model_sampling).__mro__}
    return "v" if names & {"V_PREDICTION", "EDM", "V_PREDICTION_EDM"} else "eps"


def noisy_latent(model_sampling, kind: str, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The training input at ``sigma``: x0 + sigma * noise (eps, v), or the model's own interpolation between
    data and noise for flow models (``noise_scaling``: sigma * noise + (1 - sigma) * x0)."""
    if kind == "flow":
        return model_sampling.noise_scaling(sigma, noise, x0)
    return x0 + noise * sigma.view(-1, *([1] * (x0.ndim - 1)))


def draw_sigmas(model_sampling, bs: int, gen: torch.Generator) -> torch.Tensor:
    """Training sigmas (float32, CPU) from the model's own schedule: uniform DDPM timesteps for discrete models,
    log-uniform over [sigma_min, sigma_max] (``percent_to_sigma``) for continuous ones. Never inf or 0."""
    if sampling_kind(model_sampling) == "discrete":
        n = int(model_sampling.sigmas.shape[0])
        t = torch.randint(0, n, (bs,), generator=gen).float()
        return model_sampling.sigma(t.to(model_sampling.sigmas.device)).float().cpu()
    u = torch.rand(bs, generator=gen).clamp(1e-3, 1 - 1e-3)
    return torch.tensor([float(model_sampling.percent_to_sigma(float(v))) for v in u], dtype=torch.float32)


def check_trainable(node: str, model) -> None:
    base = model.model
    if compat.is_inpaint_model(model):
        raise MegaPortraitError(node, "this MODEL is an inpainting model (extra input channels, e.g. an SD inpainting "
                                      "checkpoint or FLUX.1 Fill).",
                                "train the identity LoRA on the base model (e.g. FLUX.1-dev, not Fill); the LoRA "
                                "then also applies to the inpainting model in Harmonize.")
    fam = family_of(model)
    flow = sampling_kind(compat.model_object(model, "model_sampling")) == "flow"
    if not fam.trainable or not fam.lora_targets:
        raise MegaPortraitError(node, f"this MODEL ({fam.name}, {type(base.model_config).__name__}) is a model family "
                                      "the identity LoRA trainer does not support.",
                                f"train on {_trainable_names()} model (EDM and v-prediction SD ones included).")
    if flow != (fam.target == "flow"):
        raise MegaPortraitError(node, f"this MODEL ({fam.name}, {type(base.model_config).__name__}) samples with "
                                      f"{'flow matching' if flow else 'noise prediction'} (a model sampling patch such "
                                      f"as ModelSamplingSD3?), which the identity LoRA trainer does not support for "
                                      f"{fam.name}.",
                                "train on the model as its loader returns it (flow matching is supported for "
                                f"{' and '.join(f.name for f in families.FAMILIES if f.trainable and f.target == 'flow')}).")


def _trainable_names() -> str:
    """'an SD1.x, SD2.x, SDXL, Flux.1 or Z-Image': the families the trainer supports, from the family table."""
    names = [f.name for f in families.FAMILIES if f.trainable and f.lora_targets]
    return f"an {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else f"a {names[0]}"


def te_modules(model, te) -> dict:
    """Text encoders of a ComfyUI CLIP model: {kohya prefix: text transformer module}, per the family table."""
    fam = family_of(model)
    wanted = [(a, p) for a, p in fam.text_encoders if not fam.te_trainable or a in fam.te_trainable]
    mods = {prefix: getattr(te, attr).transformer for attr, prefix in wanted
            if isinstance(getattr(te, attr, None), torch.nn.Module)}
    if len(mods) != len(wanted):
        raise ValueError(f"the CLIP has not the text encoders of {fam.name} "
                         f"({', '.join(a for a, _ in fam.text_encoders)})")
    return mods


# ------------------------------------------------------------------------------------------- train once
def weights_fingerprint(module: torch.nn.Module, samples: int = 16) -> str:
    """A digest of a module's weights from the names, shapes, dtypes and ``samples`` evenly spaced values of every
    parameter and buffer: cheap on multi-GB models, and it tells two checkpoints (or LoRA mixes) apart. Reads the
    weights where they are (no loading; quantized weights by their stored data)."""
    h = hashlib.sha256()
    for name, t in sorted(list(module.named_parameters()) + list(module.named_buffers()), key=lambda x: x[0]):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(_sampled_bytes(compat.stored_data(t), samples))
    return h.hexdigest()


def _sampled_bytes(t: torch.Tensor, samples: int) -> bytes:
    if t.device.type == "meta":
        return b""
    flat = t.detach().reshape(-1)
    idx = torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).long().to(flat.device)
    return flat[idx].float().cpu().numpy().tobytes()


def patches_fingerprint(patcher, samples: int = 16) -> str:
    """A digest of the weight patches (LoRAs...) a ModelPatcher carries: keys, strengths and sampled values of every
    patch tensor, so two different LoRAs on the same layers at the same strengths differ."""
    h = hashlib.sha256(json.dumps(compat.patch_summary(patcher)).encode())
    for key in sorted(getattr(patcher, "patches", {}) or {}):
        for t in compat.patch_tensors(patcher.patches[key]):
            h.update(_sampled_bytes(t, samples))
    return h.hexdigest()


def data_key(images: torch.Tensor) -> str:
    x = images.detach().float().cpu().contiguous()
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16] + f"-{tuple(x.shape)}"


def _condition_fingerprint(clip, prompt: str) -> str:
    """A digest of what the text encoder makes of the prompt (rounded to fp16, so float noise of a GPU run does not
    count). Its weights are not hashed: checkpoints leave unused ones (e.g. SD1's text_projection) uninitialised."""
    with torch.no_grad():
        cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    h = hashlib.sha256(cond.detach().half().cpu().numpy().tobytes())
    if pooled is not None:
        h.update(pooled.detach().half().cpu().numpy().tobytes())
    return h.hexdigest()


def training_key(model, clip, vae, images: torch.Tensor, prompt: str, cfg: lt.TrainConfig,
                 masks: torch.Tensor | None = None) -> str:
    """What makes two trainings the same: photos (and face masks), prompt, settings, the base model's weights plus
    the patches its MODEL carries (upstream LoRAs count), the VAE's weights and the text encoder's
    condition for the prompt. A dynamic-VRAM MODEL is read as stored (never built twice); a static one is loaded first,
    as samplers load it (see :func:`comfy_compat.load_to_read_weights`)."""
    compat.load_to_read_weights(model)
    parts = {"format": lt.FORMAT_VERSION, "config": json.loads(json.dumps(lt.asdict(cfg))), "prompt": prompt,
             "data": data_key(images), "masks": data_key(masks) if masks is not None else None,
             "unet": weights_fingerprint(model.model.diffusion_model), "unet_patches": patches_fingerprint(model),
             "clip": _condition_fingerprint(clip, prompt), "clip_patches": compat.patch_summary(clip.patcher),
             "vae": weights_fingerprint(vae.first_stage_model),
             "model_sampling": type(compat.model_object(model, "model_sampling")).__name__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------- training
@dataclass
class TrainingData:
    """What the loop samples from, on the training device: latents of the photos (and their mirror images), the
    per-latent-pixel loss weights (face-weighted loss; None = every pixel 1), the prompt's condition."""
    latents: torch.Tensor
    weights: torch.Tensor | None
    tokens: object
    cond: torch.Tensor | None
    pooled: torch.Tensor | None
    extras: dict              # the text encoder's other outputs (e.g. Z-Image's attention mask): training_conditions
    height: int
    width: int


@dataclass
class Twin:
    """The private twin of the loaded model with its LoRA layers, and how it computes."""
    base: torch.nn.Module
    te: torch.nn.Module | None
    te_mods: dict
    groups: list
    unet_names: list
    dtype: torch.dtype
    scaler: object


def encode_data(model, clip, vae, images: torch.Tensor, masks: torch.Tensor | None, prompt: str, cfg: lt.TrainConfig,
                device: torch.device) -> TrainingData:
    """Step 1: the photos through the VAE and the prompt through the text encoder (before the diffusion model is
    loaded, so encoder and trainer peaks do not add), every result moved to ``device``."""
    latent_format = compat.model_object(model, "latent_format")    # (object patches included)
    with torch.no_grad():
        pix = images[..., :3].detach().float()
        views = [pix, pix.flip(2)] if cfg.flip else [pix]
        lat = torch.cat([latent_format.process_in(vae.encode(v).float().to(device)) for v in views]).detach().clone()
        weights = None
        if masks is not None and cfg.background_weight != 1.0:
            m = masks.detach().float().to(device)
            m = torch.cat([m, m.flip(2)]) if cfg.flip else m
            weights = lt.latent_weight(m, tuple(lat.shape[-2:]), cfg.background_weight)
        tokens = clip.tokenize(prompt)
        cond = pooled = None
        extras: dict = {}
        if not cfg.train_text_encoder:
            cond, pooled, extras = compat.encode_tokens(clip, tokens)
            cond = cond.detach().clone().to(device)
            pooled = pooled.detach().clone().to(device) if pooled is not None else None
            extras = {k: (v.detach().clone().to(device) if torch.is_tensor(v) else v) for k, v in extras.items()}
    return TrainingData(lat, weights, tokens, cond, pooled, extras, int(pix.shape[1]), int(pix.shape[2]))


def training_memory(base, fam: families.Family, cfg: lt.TrainConfig, h: int, w: int, checkpointing: bool) -> int:
    """Bytes training needs on the device beyond the weights ComfyUI keeps loaded: the activations kept for backward
    (a few inference passes' worth, less with gradient checkpointing), the LoRA with its gradients and AdamW state
    (fp32, 4 copies), and two of the largest layer's weights made per call (streamed or cast, never kept)."""
    shape = (cfg.batch_size, fam.latent_channels, h // fam.latent_scale, w // fam.latent_scale)
    try:
        one = int(base.memory_required(shape))
    except Exception:
        one = cfg.batch_size * h * w * 4 * 64
    lora = largest = 0
    pattern = re.compile(fam.lora_targets[cfg.target])
    for name, m in base.diffusion_model.named_modules():
        weight = getattr(m, "weight", None)
        if not torch.is_tensor(weight) or weight.ndim < 2:
            continue
        largest = max(largest, weight.numel())
        if pattern.fullmatch(name):
            lora += cfg.rank * (int(weight.shape[0]) + int(weight.shape[1]))
    return one * (2 if checkpointing else 6) + lora * 4 * 4 + 2 * largest * 4


def load_for_training(node: str, model, clip, fam: families.Family, cfg: lt.TrainConfig, data: TrainingData,
                      checkpointing: bool) -> list:
    """Step 2: the MODEL (and the CLIP when its LoRA trains) on their devices the way samplers load them, telling
    ComfyUI what training needs: it unloads other models, or loads these partly (low VRAM: the layers left out
    stream their weights per call), only when it must; a dynamic-VRAM MODEL streams every layer. Stops with the
    numbers when even that leaves too little memory for training."""
    patchers = [model] + ([clip.patcher] if cfg.train_text_encoder else [])
    need = training_memory(model.model, fam, cfg, data.height, data.width, checkpointing)
    compat.load_models(patchers, need)
    device = model.load_device
    free = compat.free_memory(device)
    if free is not None and free < need:
        gb = 1024 ** 3
        raise MegaPortraitError(node, f"training needs about {need / gb:.1f} GB on {device} besides the weights "
                                      f"ComfyUI kept loaded, and {free / gb:.1f} GB are free after loading them as "
                                      f"far as they fit ({cfg.resolution} px, batch {cfg.batch_size}, gradient "
                                      f"checkpointing {'on' if checkpointing else 'off'}).",
                                "lower resolution or batch_size, turn gradient_checkpointing on, load the model with "
                                "weight_dtype fp8_e4m3fn (or an fp8 checkpoint), or close other programs using the GPU.")
    return patchers


def build_twin(node: str, model, clip, fam: families.Family, cfg: lt.TrainConfig, precision: str,
               checkpointing: bool) -> Twin:
    """Step 3: the twin of the loaded model (and text encoder), with the sampling the MODEL samples with (object
    patches included), its LoRA layers on the MODEL's device and its frozen layers keeping no weight copies."""
    device = model.load_device
    base = lt.shadow_module(model.model)
    base.model_sampling = lt.shadow_module(compat.model_object(model, "model_sampling"))
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype, use_scaler = lt.training_precision(device, precision, base.get_dtype(), bf16)
    compat.warn_training_precision(dtype)
    _use_compute_dtype(base, dtype)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    norms = compat.residual_inplace_norms()
    lt.clone_norm_inputs(base.diffusion_model, norms)
    if checkpointing:
        lt.enable_checkpointing(base.diffusion_model, fam.checkpoint_blocks)
    unet_names = lt.inject_lora(base.diffusion_model, fam.lora_targets[cfg.target], cfg.rank, cfg.alpha, cfg.seed,
                                device=device)
    lt.stream_frozen_layers(base.diffusion_model, compat.casts_per_call)
    groups = [{"params": lora_parameters(base.diffusion_model), "lr": cfg.learning_rate}]
    te, te_mods = None, {}
    if cfg.train_text_encoder:
        te = lt.shadow_module(clip.patcher.model)
        lt.clone_norm_inputs(te, norms)
        te.reset_clip_options()
        if getattr(clip, "layer_idx", None) is not None:
            te.set_clip_options({"layer": clip.layer_idx})
        te.set_clip_options({"execution_device": clip.patcher.load_device})   # (ignored where unknown)
        te_mods = te_modules(model, te)
        te_params = []
        for i, mod in enumerate(te_mods.values()):
            lt.inject_lora(mod, fam.te_lora_targets, cfg.rank, cfg.alpha, cfg.seed + 101 + i,
                           device=clip.patcher.load_device)
            lt.stream_frozen_layers(mod, compat.casts_per_call)
            te_params += lora_parameters(mod)
        groups.append({"params": te_params, "lr": cfg.text_learning_rate})
    return Twin(base, te, te_mods, groups, unet_names, dtype, scaler)


def make_loss_fn(twin: Twin, data: TrainingData, fam: families.Family, cfg: lt.TrainConfig, device: torch.device):
    """The loss of one step from the loop's generator: a batch of latents, noise and sigmas from the model's own
    schedule, the twin's prediction and the loss in the model's native parameterisation (face-weighted when the
    data has weights)."""
    base, ms = twin.base, twin.base.model_sampling
    kind, sigma_data = loss_kind(ms), float(getattr(ms, "sigma_data", 1.0) or 1.0)
    attention = compat.training_transformer_options()
    cond_cache: dict = {}

    def model_args(bs: int, x0: torch.Tensor) -> dict:
        if twin.te is None and bs in cond_cache:
            return cond_cache[bs]
        if twin.te is None:
            c, p, extras = data.cond, data.pooled, data.extras
        else:
            out = twin.te.encode_token_weights(data.tokens)
            c, p = out[0].to(device), (out[1].to(device) if out[1] is not None else None)
            extras = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in (out[2] if len(out) > 2 else {}).items()}
        kw = {"cross_attn": c.expand(bs, *c.shape[1:])}
        if p is not None:
            kw["pooled_output"] = p.expand(bs, *p.shape[1:])
        # the guidance input of guidance-distilled models (Flux.1 dev), the text encoder's extras the family reads
        kw.update(families.training_conditions(fam, extras, bs))
        extra = base.extra_conds(width=data.width, height=data.height, crop_w=0, crop_h=0, target_width=data.width,
                                 target_height=data.height, device=device, noise=x0, **kw)
        args = {k: (v.cond.to(device) if torch.is_tensor(v.cond) else v.cond) for k, v in extra.items()}
        if attention:
            args["transformer_options"] = attention
        if twin.te is None:
            cond_cache[bs] = args
        return args

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        bs = cfg.batch_size
        idx = torch.randint(0, data.latents.shape[0], (bs,), generator=gen).to(device)
        x0 = data.latents[idx]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        sigma = draw_sigmas(ms, bs, gen).to(device)
        args = model_args(bs, x0)
        x_noisy = noisy_latent(ms, kind, x0, noise, sigma)
        with lt.autocast(device, twin.dtype):
            denoised = base.apply_model(x_noisy, sigma, **args)
        weight = data.weights[idx] if data.weights is not None else None
        return lt.native_loss(denoised, x0, sigma, kind, sigma_data, weight)
    return loss_fn


def export_lora(twin: Twin, cfg: lt.TrainConfig) -> dict:
    sd = export_kohya(twin.base.diffusion_model, "lora_unet", cfg.alpha)
    for prefix, mod in twin.te_mods.items():
        sd.update(export_kohya(mod, prefix, cfg.alpha))
    return sd


def _use_compute_dtype(twin, dtype: torch.dtype) -> None:
    """Make the twin compute in ``dtype``: inputs are cast by ``apply_model`` (manual_cast_dtype) and every
    ComfyUI layer casts its frozen weight per call, ComfyUI's own low-VRAM mechanism (no weight copy)."""
    if twin.get_dtype() == dtype:
        return
    twin.manual_cast_dtype = dtype
    for m in twin.diffusion_model.modules():
        if hasattr(type(m), "comfy_cast_weights") or "comfy_cast_weights" in m.__dict__:
            m.comfy_cast_weights = True


def train_identity_lora(node: str, model, clip, vae, images: torch.Tensor, prompt: str, cfg: lt.TrainConfig,
                        save_path: str, precision: str = "auto", gradient_checkpointing: bool = False,
                        resume: str = "auto", checkpoint_every: int = 100, metadata: dict | None = None,
                        on_progress=None, train_key: str = "", masks: torch.Tensor | None = None
                        ) -> tuple[dict, lt.TrainState, dict]:
    """Train a LoRA on a twin of ``model`` (and of ``clip`` if ``cfg.train_text_encoder``), on the MODEL's own
    device; ``masks`` ([N, H, W] face masks of ``images``) weight the loss when ``cfg.background_weight`` != 1.
    Returns the kohya LoRA tensors, the final TrainState and the safetensors metadata. Writes nothing but the
    resume checkpoint (also when cancelled inside a step: it resumes to the uninterrupted run)."""
    import comfy.model_management as mm
    family = model_family(model)
    check_trainable(node, model)
    fam = family_of(model)
    dkey = data_key(images) + (f"+{data_key(masks)}" if masks is not None and cfg.background_weight != 1.0 else "")
    resume_file = save_path[: -len(".safetensors")] + RESUME_SUFFIX
    device = model.load_device
    with torch.inference_mode(False), torch.enable_grad():
        state, resumed_sd = lt.TrainState(), None
        if resume == "auto" and os.path.exists(resume_file):   # loaded here: tensors made in inference mode can't train
            resumed_sd, state = lt.load_resume(node, resume_file, cfg, family, dkey)
            log.info("MegaPortrait: resuming %s at step %d", os.path.basename(resume_file), state.step)
        data = encode_data(model, clip, vae, images, masks, prompt, cfg, device)
        with torch.inference_mode():     # as samplers load: what loading makes stays ComfyUI's inference tensors
            load_for_training(node, model, clip, fam, cfg, data, gradient_checkpointing)
        twin = build_twin(node, model, clip, fam, cfg, precision, gradient_checkpointing)
        if resumed_sd is not None:
            try:
                import_kohya(twin.base.diffusion_model, "lora_unet", resumed_sd)
                for prefix, mod in twin.te_mods.items():
                    import_kohya(mod, prefix, resumed_sd)
            except (KeyError, ValueError) as e:
                raise MegaPortraitError(node, f"the resume checkpoint does not fit this model ({e}).",
                                        "set resume to off or use another save_name.") from e
        progress = on_progress or (lambda s, l, ls: None)
        save = lambda st: lt.save_resume(resume_file, export_lora(twin, cfg), st, cfg, family, dkey)  # noqa: E731
        try:
            with compat.training_mode():
                state = lt.train_loop(make_loss_fn(twin, data, fam, cfg, device), twin.groups, cfg, state,
                                      device=device, scaler=twin.scaler,
                                      on_step=lambda s, l: progress(s, l, state.losses),
                                      check_interrupt=mm.throw_exception_if_processing_interrupted,
                                      checkpoint=save, checkpoint_every=checkpoint_every)
        except mm.InterruptProcessingException:
            if state.step > 0:
                save(state)
                log.info("MegaPortrait: training interrupted at step %d/%d; resume checkpoint %s", state.step, cfg.steps,
                         resume_file)
            raise
        except lt.NonFiniteLoss as e:
            raise MegaPortraitError(node, f"{e} (photos with NaN/inf values, or a learning rate far too high).",
                                    "check the photos and lower learning_rate; precision fp32 rules out fp16 overflow."
                                    ) from e
        lora_sd = export_lora(twin, cfg)
    meta = lora_metadata(cfg, family, prompt, state, len(twin.unet_names), int(images.shape[0]), train_key)
    meta.update(metadata or {})
    return lora_sd, state, meta


def lora_metadata(cfg: lt.TrainConfig, family: dict, prompt: str, state: lt.TrainState, unet_layers: int,
                  n_images: int, train_key: str) -> dict:
    """kohya/A1111 (ss_*, modelspec.*) and MegaPortrait metadata of a trained LoRA."""
    tail = state.losses[-max(1, len(state.losses) // 10):]
    step = max(1, len(state.losses) // 500)
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": cfg.rank, "ss_network_alpha": cfg.alpha,
        "ss_base_model_version": family["base_model_version"], "ss_steps": cfg.steps, "ss_max_train_steps": cfg.steps,
        "ss_learning_rate": cfg.learning_rate, "ss_text_encoder_lr": cfg.text_learning_rate if cfg.train_text_encoder else 0,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})", "ss_num_train_images": n_images,
        "ss_seed": cfg.seed, "ss_training_comment": "MegaPortrait identity LoRA",
        "modelspec.architecture": families.by_base_model_version(family["base_model_version"]).modelspec_architecture,
        "megaportrait.version": lt.FORMAT_VERSION, "megaportrait.family": family["family"],
        "megaportrait.prompt": prompt, "megaportrait.unet_layers": unet_layers,
        "megaportrait.text_encoder": int(cfg.train_text_encoder), "megaportrait.config": json.dumps(lt.asdict(cfg)),
        "megaportrait.final_loss": f"{np.mean(tail):.6f}" if state.losses else "",
        "megaportrait.losses": json.dumps([round(float(v), 6) for v in state.losses[::step]]),
        TRAIN_KEY: train_key,
    }


def apply_lora(model, clip, lora_sd: dict, strength_model: float = 1.0, strength_clip: float = 1.0):
    """Clones of MODEL/CLIP with the LoRA as patches, exactly as the stock LoraLoader applies a file."""
    import comfy.sd
    return comfy.sd.load_lora_for_models(model, clip, lora_sd, strength_model, strength_clip)
