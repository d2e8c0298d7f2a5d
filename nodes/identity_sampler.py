"""Stage 1 of MegaPortrait, inference: the dual-strength identity sampler.

The identity-LoRA model re-renders the reference face crop twice (image-to-image), with KSampler semantics:
* reference-like = KSampler(steps, denoise=reference_denoise): low denoise (optionally with a model that has less
  identity, e.g. the LoRA at lower strength) keeps the reference's shading and colours; its low-pass becomes
  the light map;
* source-like = KSampler(steps, denoise=source_denoise): high denoise with the full identity; its high-pass
  becomes the HF map.

Both branches have the same number of steps, so when they use the same MODEL they run in lock-step as one batch:
every model pass (CFG, ControlNets and model patches all ComfyUI's own) serves both, each sample at its own
sigma. The per-step update is that of ComfyUI's euler / heun / dpmpp_2m (ddim is euler in ComfyUI), so each
result equals its separate KSampler run with the same seed up to float rounding. Other samplers, a different
reference model, a latent noise mask, or ControlNets limited to part of the schedule run the two branches one
after the other with the stock KSampler code instead.
"""
from __future__ import annotations

import math

import torch

from . import comfy_compat
from . import people as people_mod
from .common import CATEGORY, TITLES, MegaPortraitError, check_bool, check_image, check_number
from .sampling import Progress, apply_controlnet, check_controlnet, decode, encode, prepare_noise, sampling_inputs, sampling_kind

LOCKSTEP_SAMPLERS = ("euler", "ddim", "heun", "dpmpp_2m")


def ksampler_sigmas(model, sampler_name: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """Exactly the sigmas KSampler(steps, denoise) samples along."""
    import comfy.samplers
    ks = comfy.samplers.KSampler(comfy_compat.ksampler_model(model), steps=steps, device=model.load_device,
                                 sampler=sampler_name, scheduler=scheduler,
                                 denoise=denoise, model_options=model.model_options)
    return ks.sigmas.detach().float().cpu()


def _model_sampling(model):
    return comfy_compat.model_object(model, "model_sampling")


def _partial_controlnets(conditioning) -> bool:
    """True when a ControlNet in the conditioning acts on only part of the schedule (its window is tested on the
    first sample's sigma, which would differ between lock-stepped branches)."""
    for _, d in conditioning:
        c = d.get("control")
        while c is not None:
            rng = getattr(c, "timestep_percent_range", (0.0, 1.0))
            if tuple(rng) != (0.0, 1.0):
                return True
            c = getattr(c, "previous_controlnet", None)
    return False


def _partial_conditioning(conditioning) -> bool:
    """True when a conditioning applies to only part of the schedule (ConditioningSetTimestepRange): ComfyUI picks
    conds by the first sample's sigma, which would differ between lock-stepped branches."""
    return any((d.get("start_percent", 0.0), d.get("end_percent", 1.0)) != (0.0, 1.0) for _, d in conditioning)


def lockstep_function(kind: str, sig: torch.Tensor, noise: torch.Tensor, model_sampling, max_denoise: list, b: int):
    """A ComfyUI sampler function that runs two branches (batch halves) in lock-step, each along its own column
    of ``sig`` [steps + 1, 2b]. It receives the (processed) latents of both branches with zero noise and adds each
    branch's noise at its own first sigma, as KSAMPLER does for a single run."""
    def to_d(x, sigma, denoised):
        return (x - denoised) / sigma.view(-1, *([1] * (x.ndim - 1)))

    def col(v, x):
        return v.view(-1, *([1] * (x.ndim - 1)))

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        sg = sig.to(x.device, x.dtype)
        parts = []
        for k in range(2):
            sl = slice(k * b, (k + 1) * b)
            parts.append(model_sampling.noise_scaling(sg[0, k * b], noise[sl].to(x.device, x.dtype), x[sl], max_denoise[k]))
        x = torch.cat(parts)
        n = sg.shape[0] - 1
        old_denoised = None
        for i in range(n):
            sigma, sigma_next = sg[i], sg[i + 1]
            denoised = model(x, sigma, **extra_args)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
            last = bool((sigma_next == 0).all())
            if kind in ("euler", "ddim"):
                x = x + to_d(x, sigma, denoised) * col(sigma_next - sigma, x)
            elif kind == "heun":
                d = to_d(x, sigma, denoised)
                dt = col(sigma_next - sigma, x)
                if last:
                    x = x + d * dt
                else:
                    x_2 = x + d * dt
                    d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next, **extra_args))
                    x = x + (d + d_2) / 2 * dt
            elif kind == "dpmpp_2m":
                t, t_next = -sigma.log(), -sigma_next.log()
                h = t_next - t
                if old_denoised is None or last:
                    x = col((-t_next).exp() / (-t).exp(), x) * x - col((-h).expm1(), x) * denoised
                else:
                    h_last = t - (-sg[i - 1].log())
                    r = h_last / h
                    denoised_d = col(1 + 1 / (2 * r), x) * denoised - col(1 / (2 * r), x) * old_denoised
                    x = col((-t_next).exp() / (-t).exp(), x) * x - col((-h).expm1(), x) * denoised_d
                old_denoised = denoised
            else:
                raise ValueError(kind)
        return x
    return fn


def dual_sample(node: str, model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, reference_denoise: float, source_denoise: float, reference_model=None,
                share_passes: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Returns (reference-like samples, source-like samples, "batched" | "sequential")."""
    import comfy.sample
    import comfy.samplers

    import nodes as comfy_nodes
    ref_model = model if reference_model is None else reference_model
    if reference_denoise <= 0 or source_denoise <= 0:   # denoise 0 = that branch is the input, unchanged
        def branch(m, d):
            if d <= 0:
                return latent["samples"].clone()
            return comfy_nodes.common_ksampler(m, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                               denoise=d)[0]["samples"]
        return branch(ref_model, reference_denoise), branch(model, source_denoise), "sequential"
    mask = latent.get("noise_mask")
    lockstep = (share_passes and ref_model is model and sampler_name in LOCKSTEP_SAMPLERS and mask is None
                and sampling_kind(_model_sampling(model)) != "flow"     # (its noise scaling is not the lock-step one)
                and not any(_partial_controlnets(c) or _partial_conditioning(c) for c in (positive, negative)))
    if not lockstep:
        ref = comfy_nodes.common_ksampler(ref_model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                          denoise=reference_denoise)[0]["samples"]
        src = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                          denoise=source_denoise)[0]["samples"]
        return ref, src, "sequential"

    sig_r = ksampler_sigmas(model, sampler_name, scheduler, steps, reference_denoise)
    sig_s = ksampler_sigmas(model, sampler_name, scheduler, steps, source_denoise)
    latent_image = latent["samples"]
    b = latent_image.shape[0]
    noise = prepare_noise(latent, seed)
    sig = torch.cat([sig_r[:, None].expand(-1, b), sig_s[:, None].expand(-1, b)], dim=1)
    ms = _model_sampling(model)
    smax = float(ms.sigma_max)
    max_den = [math.isclose(smax, float(s[0]), rel_tol=1e-5) or float(s[0]) > smax for s in (sig_r, sig_s)]
    fn = lockstep_function(sampler_name, sig, torch.cat([noise, noise]), ms, max_den, b)
    sampler = comfy.samplers.KSAMPLER(fn)
    progress = Progress(model, steps)
    lat2 = torch.cat([latent_image, latent_image])
    out = comfy.sample.sample_custom(model, torch.zeros_like(lat2), cfg, sampler, sig_s, positive, negative, lat2,
                                     callback=progress.callback(), disable_pbar=True, seed=seed)
    return out[:b], out[b:], "batched"


class DualStrengthIdentitySampler:
    DESCRIPTION = ("MegaPortrait Identity Net inference: re-renders the reference face crop twice with the identity-LoRA "
                   "model: a reference-like result (low denoise: keeps the reference's shading) and a source-like result "
                   "(high denoise: strong identity). Shares model passes between the branches when it can.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("LATENT", "IMAGE", "LATENT", "IMAGE")
    RETURN_NAMES = ("reference_latent", "reference_image", "source_latent", "source_image")
    OUTPUT_TOOLTIPS = ("Reference-like result (latent).", "Reference-like result: feed its low-pass to the Light Map.",
                       "Source-like result (latent).", "Source-like result: feed its high-pass to the HF Map.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "model": ("MODEL", {"tooltip": "The identity model (checkpoint + identity LoRA), used for the source-like "
                                           "branch (and the reference-like one unless reference_model is connected)."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt with the trigger word, e.g. 'photo of sks person, ...'."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
            "vae": ("VAE", {"tooltip": "Encodes the face crop and decodes both results."}),
            "image": ("IMAGE", {"tooltip": "The aligned reference face crop (from Face Crop); sides multiple of 8."}),
        }
        req.update(sampling_inputs(steps=25, cfg=5.0, sampler="dpmpp_2m", scheduler="karras",
                                   steps_tip="Steps of each branch (as KSampler with denoise: both run this many steps)."))
        req.update({
            "reference_denoise": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "Reference-like branch: low denoise keeps the reference's shading and colours "
                                  "(0 = the input unchanged)."}),
            "source_denoise": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                               "Source-like branch: high denoise lets the identity LoRA redraw the face (1 = from noise)."}),
        })
        return {"required": req, "optional": {
            "reference_model": ("MODEL", {"tooltip": "Optional model for the reference-like branch with less identity "
                                                     "(e.g. the identity LoRA at strength 0.3-0.5, or the base "
                                                     "checkpoint). Different models run one after the other."}),
            "latent": ("LATENT", {"tooltip": "Optional: start from this latent instead of encoding 'image'."}),
            "control_net": ("CONTROL_NET", {"tooltip": "Optional ControlNet that holds the face geometry in both "
                                                       "branches (e.g. a tile, lineart or depth net); more can be applied "
                                                       "to the conditioning upstream with stock nodes."}),
            "control_image": ("IMAGE", {"tooltip": "Hint image for control_net (default: the face crop itself)."}),
            "control_strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                                 "ControlNet strength (0 = off)."}),
            "control_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                              "ControlNet start (fraction of the schedule)."}),
            "control_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                            "ControlNet end (fraction of the schedule). Below 1 (or start above 0) the branches run "
                            "one after the other."}),
            "share_passes": ("BOOLEAN", {"default": True, "tooltip":
                             "Run both branches in lock-step as one batch where possible (same result as two "
                             "KSamplers, half the model passes): samplers euler, ddim, heun, dpmpp_2m with one MODEL."}),
            "people": people_mod.PEOPLE_INPUT,
        }}

    def sample(self, model, positive, negative, vae, image, seed, steps, cfg, sampler_name, scheduler, reference_denoise,
               source_denoise, reference_model=None, latent=None, control_net=None, control_image=None,
               control_strength=0.5, control_start=0.0, control_end=1.0, share_passes=True, people=None):
        node = TITLES["MegaPortraitDualStrengthIdentitySampler"]
        cfg = check_number(node, "cfg", cfg, 0.0, 100.0)
        reference_denoise = check_number(node, "reference_denoise", reference_denoise, 0.0, 1.0)
        source_denoise = check_number(node, "source_denoise", source_denoise, 0.0, 1.0)
        control_strength = check_number(node, "control_strength", control_strength, 0.0, 10.0)
        control_start = check_number(node, "control_start", control_start, 0.0, 1.0)
        control_end = check_number(node, "control_end", control_end, 0.0, 1.0)
        share_passes = check_bool(node, "share_passes", share_passes)
        image = check_image(node, image)
        if people is not None and latent is None:       # (before any work)
            people_mod.groups(node, people, image.shape[0], "image")
        if latent is None:
            latent = {"samples": encode(node, vae, image)}
        elif not isinstance(latent, dict) or "samples" not in latent:
            raise MegaPortraitError(node, "'latent' is not a LATENT.", "connect a LATENT output (e.g. VAE Encode).")
        hint = None
        if control_net is not None and control_strength > 0:
            check_controlnet(node, "control_net", control_net, model)
            hint = check_image(node, control_image, "control_image") if control_image is not None else image
            hb, lb = hint.shape[0], latent["samples"].shape[0]
            if hb not in (1, lb):
                raise MegaPortraitError(node, f"control_image has a batch of {hb} but there are {lb} latents.",
                                        "use one hint image or one per image.")

        def run(m, pos, lat, hint_):
            neg = negative
            if hint_ is not None:
                pos, neg = apply_controlnet(pos, neg, control_net, hint_, control_strength, control_start, control_end,
                                            vae)[:2]
            return dual_sample(node, m, pos, neg, lat, seed, steps, cfg, sampler_name, scheduler, reference_denoise,
                               source_denoise, reference_model, share_passes)[:2]
        # several people: each person's faces with their own model (and prompt)
        ref, src = people_mod.per_person(node, people, model, positive, latent["samples"].shape[0], "image", run,
                                         latent, hint)
        out_ref, out_src = latent.copy(), latent.copy()
        out_ref["samples"], out_src["samples"] = ref, src
        for o in (out_ref, out_src):
            o.pop("noise_mask", None)
        return (out_ref, decode(vae, ref), out_src, decode(vae, src))


NODE_CLASS_MAPPINGS = {"MegaPortraitDualStrengthIdentitySampler": DualStrengthIdentitySampler}
