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
            "model_class": type(base).__name__, "context_dim": int(base.model_config.unet_config.get("context_dim") or 0)}


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
                                "train on an SD1.x, SD2.x, SDXL or Flux.1 model (EDM and v-prediction SD ones included).")
    if flow != (fam.target == "flow"):
        raise MegaPortraitError(node, f"this MODEL ({fam.name}, {type(base.model_config).__name__}) samples with "
                                      f"{'flow matching' if flow else 'noise prediction'} (a model sampling patch such "
                                      f"as ModelSamplingSD3?), which the identity LoRA trainer does not support for "
                                      f"{fam.name}.",
                                "train on the model as its loader returns it (flow matching is supported for Flux.1).")


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
    parameter and buffer: cheap on multi-GB models, and it tells two checkpoints (or LoRA mixes) apart."""
    h = hashlib.sha256()
    for name, t in sorted(list(module.named_parameters()) + list(module.named_buffers()), key=lambda x: x[0]):
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).long().to(flat.device)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat[idx].float().cpu().numpy().tobytes())
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


def training_key(model, clip, vae, images: torch.Tensor, prompt: str, cfg: lt.TrainConfig) -> str:
    """What makes two trainings the same: photos, prompt, settings, the effective weights of the base model and VAE
    (sampled after loading, so upstream LoRAs count) and the text encoder's condition for the prompt."""
    try:
        patcher = compat.static_patcher(model)
    except RuntimeError as e:
        raise MegaPortraitError("Identity LoRA Trainer", str(e), "start ComfyUI with --disable-dynamic-vram.") from e
    import comfy.model_management as mm
    mm.load_models_gpu([patcher])
    parts = {"format": lt.FORMAT_VERSION, "config": json.loads(json.dumps(lt.asdict(cfg))), "prompt": prompt,
             "data": data_key(images), "unet": weights_fingerprint(patcher.model.diffusion_model),
             "unet_patches": compat.patch_summary(model), "clip": _condition_fingerprint(clip, prompt),
             "clip_patches": compat.patch_summary(clip.patcher), "vae": weights_fingerprint(vae.first_stage_model),
             "model_sampling": type(compat.model_object(model, "model_sampling")).__name__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------- training
def _memory_for_training(base, fam: families.Family, bs: int, h: int, w: int, checkpointing: bool) -> int:
    """Bytes training needs on the device beyond the weights: a few times what one inference pass needs (the
    activations are kept for backward), less with gradient checkpointing."""
    shape = (bs, fam.latent_channels, h // fam.latent_scale, w // fam.latent_scale)
    try:
        one = int(base.memory_required(shape))
    except Exception:
        one = bs * h * w * 4 * 64
    return one * (2 if checkpointing else 6)


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
                        on_progress=None, train_key: str = "") -> tuple[dict, lt.TrainState, dict]:
    """Train a LoRA on a twin of ``model`` (and of ``clip`` if ``cfg.train_text_encoder``); returns the kohya
    LoRA tensors, the final TrainState and the safetensors metadata. Writes nothing but the resume checkpoint."""
    import comfy.model_management as mm
    family = model_family(model)
    check_trainable(node, model)
    dkey = data_key(images)
    resume_file = save_path[: -len(".safetensors")] + RESUME_SUFFIX
    device = mm.get_torch_device()
    with torch.inference_mode(False), torch.enable_grad():
        state = lt.TrainState()
        resumed_sd = None
        if resume == "auto" and os.path.exists(resume_file):   # loaded here: tensors made in inference mode can't train
            resumed_sd, state = lt.load_resume(node, resume_file, cfg, family, dkey)
            log.info("MegaPortrait: resuming %s at step %d", os.path.basename(resume_file), state.step)
        latent_format = compat.model_object(model, "latent_format")    # (object patches included)
        with torch.no_grad():      # 1. data: latents of the photos (and mirror images) and the text condition
            pix = images[..., :3].detach().float().cpu()
            lat = latent_format.process_in(vae.encode(pix).float().to(device))
            if cfg.flip:
                lat = torch.cat([lat, latent_format.process_in(vae.encode(pix.flip(2)).float().to(device))])
            lat = lat.detach().clone()
            tokens = clip.tokenize(prompt)
            if not cfg.train_text_encoder:
                cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
                cond = cond.detach().clone().to(device)
                pooled = pooled.detach().clone().to(device) if pooled is not None else None
        h, w = int(pix.shape[1]), int(pix.shape[2])
        # 2. the model on the device once, as samplers load it
        try:
            patcher = compat.static_patcher(model)
            te_patcher = compat.static_patcher(clip.patcher) if cfg.train_text_encoder else None
        except RuntimeError as e:
            raise MegaPortraitError(node, str(e), "start ComfyUI with --disable-dynamic-vram, or load the "
                                                  "checkpoint with a stock loader node.") from e
        patchers = [patcher]
        if te_patcher is not None:
            patchers.append(te_patcher)
        # as samplers load: ComfyUI keeps the training memory free, unloading other models (or splitting these,
        # low-VRAM) only when it must; the twin's layers then cast their weights per call like ComfyUI's own
        fam = family_of(model)
        mm.load_models_gpu(patchers, memory_required=_memory_for_training(patcher.model, fam, cfg.batch_size, h, w,
                                                                           gradient_checkpointing))
        # 3. the twin, with the sampling the MODEL samples with (object patches included)
        base = lt.shadow_module(patcher.model)
        base.model_sampling = lt.shadow_module(compat.model_object(model, "model_sampling"))
        ms = base.model_sampling
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype, use_scaler = lt.training_precision(device, precision, base.get_dtype(), bf16)
        _use_compute_dtype(base, dtype)
        scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        norms = compat.residual_inplace_norms()
        lt.clone_norm_inputs(base.diffusion_model, norms)
        if gradient_checkpointing:
            lt.enable_checkpointing(base.diffusion_model, fam.checkpoint_blocks)
        unet_names = lt.inject_lora(base.diffusion_model, fam.lora_targets[cfg.target], cfg.rank, cfg.alpha, cfg.seed)
        groups = [{"params": lora_parameters(base.diffusion_model), "lr": cfg.learning_rate}]
        te, te_mods = None, {}
        if te_patcher is not None:
            te = lt.shadow_module(te_patcher.model)
            lt.clone_norm_inputs(te, norms)
            te.reset_clip_options()
            if getattr(clip, "layer_idx", None) is not None:
                te.set_clip_options({"layer": clip.layer_idx})
            te.set_clip_options({"execution_device": te_patcher.load_device})   # (ignored where unknown)
            te_mods = te_modules(model, te)
            te_params = []
            for i, mod in enumerate(te_mods.values()):
                lt.inject_lora(mod, fam.te_lora_targets, cfg.rank, cfg.alpha, cfg.seed + 101 + i)
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

        kind = loss_kind(ms)
        sigma_data = float(getattr(ms, "sigma_data", 1.0) or 1.0)
        cond_cache: dict = {}

        def model_args(bs: int, x0: torch.Tensor) -> dict:
            if te is None and bs in cond_cache:
                return cond_cache[bs]
            if te is None:
                c, p = cond, pooled
            else:
                out = te.encode_token_weights(tokens)
                c, p = out[0].to(device), (out[1].to(device) if out[1] is not None else None)
            kw = {"cross_attn": c.expand(bs, *c.shape[1:])}
            if p is not None:
                kw["pooled_output"] = p.expand(bs, *p.shape[1:])
            if fam.train_guidance is not None:     # guidance-distilled models (Flux.1 dev): the guidance input
                kw["guidance"] = fam.train_guidance
            extra = base.extra_conds(width=w, height=h, crop_w=0, crop_h=0, target_width=w, target_height=h,
                                     device=device, noise=x0, **kw)
            args = {k: (v.cond.to(device) if torch.is_tensor(v.cond) else v.cond) for k, v in extra.items()}
            if te is None:
                cond_cache[bs] = args
            return args

        def loss_fn(gen: torch.Generator) -> torch.Tensor:
            bs = cfg.batch_size
            idx = torch.randint(0, lat.shape[0], (bs,), generator=gen)
            x0 = lat[idx.to(device)]
            noise = torch.randn(x0.shape, generator=gen).to(device)
            sigma = draw_sigmas(ms, bs, gen).to(device)
            args = model_args(bs, x0)
            x_noisy = noisy_latent(ms, kind, x0, noise, sigma)
            with lt.autocast(device, dtype):
                denoised = base.apply_model(x_noisy, sigma, **args)
            return lt.native_loss(denoised, x0, sigma, kind, sigma_data)

        def export() -> dict:
            sd = export_kohya(base.diffusion_model, "lora_unet", cfg.alpha)
            for prefix, mod in te_mods.items():
                sd.update(export_kohya(mod, prefix, cfg.alpha))
            return sd

        progress = on_progress or (lambda s, l, ls: None)
        try:
            with compat.training_mode():
                state = lt.train_loop(loss_fn, groups, cfg, state, device=device, scaler=scaler,
                                      on_step=lambda s, l: progress(s, l, state.losses),
                                      check_interrupt=mm.throw_exception_if_processing_interrupted,
                                      checkpoint=lambda st: lt.save_resume(resume_file, export(), st, cfg, family, dkey),
                                      checkpoint_every=checkpoint_every)
        except mm.InterruptProcessingException:
            if state.step > 0:
                lt.save_resume(resume_file, export(), state, cfg, family, dkey)
                log.info("MegaPortrait: training interrupted at step %d/%d; resume checkpoint %s", state.step, cfg.steps,
                         resume_file)
            raise
        except lt.NonFiniteLoss as e:
            raise MegaPortraitError(node, f"{e} (photos with NaN/inf values, or a learning rate far too high).",
                                    "check the photos and lower learning_rate; precision fp32 rules out fp16 overflow."
                                    ) from e
        lora_sd = export()
    meta = lora_metadata(cfg, family, prompt, state, len(unet_names), int(images.shape[0]), train_key)
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
