"""Thin helpers over ComfyUI's own sampling, shared by the three diffusion stages.

Everything goes through ComfyUI: the KSampler's sampler and scheduler lists, ``comfy.sample.prepare_noise`` for
seeded noise, the stock ControlNetApplyAdvanced node for ControlNets and ``latent_preview`` for previews, so seeds,
samplers, schedulers, previews and model management behave exactly as with KSampler.
"""
from __future__ import annotations

import torch

from . import comfy_compat, families
from .common import MegaPortraitError
from .families import describe_context_dim


def sampler_names() -> list[str]:
    import comfy.samplers
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    import comfy.samplers
    return list(comfy.samplers.KSampler.SCHEDULERS)


def sampling_inputs(steps: int = 20, cfg: float = 5.0, sampler: str = "euler", scheduler: str = "karras",
                    steps_tip: str = "Denoising steps.") -> dict:
    """The usual seed / steps / cfg / sampler / scheduler widgets, with tooltips."""
    samplers, schedulers = sampler_names(), scheduler_names()
    return {
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                         "tooltip": "Noise seed (same seed + settings = same image, as with KSampler)."}),
        "steps": ("INT", {"default": steps, "min": 1, "max": 10000, "tooltip": steps_tip}),
        "cfg": ("FLOAT", {"default": cfg, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                          "tooltip": "Classifier-free guidance scale."}),
        "sampler_name": (samplers, {"default": sampler if sampler in samplers else samplers[0],
                                    "tooltip": "ComfyUI sampler (the same list as KSampler)."}),
        "scheduler": (schedulers, {"default": scheduler if scheduler in schedulers else schedulers[0],
                                   "tooltip": "ComfyUI noise schedule (the same list as KSampler)."}),
    }


def sampling_kind(model_sampling) -> str:
    """'discrete' (DDPM timesteps), 'continuous' (EDM / continuous-v sigmas) or 'flow' (rectified flow) for a
    ComfyUI model_sampling object, from its class names."""
    names = {c.__name__ for c in type(model_sampling).__mro__}
    if "CONST" in names or any("Flow" in n for n in names):
        return "flow"
    return "discrete" if "ModelSamplingDiscrete" in names else "continuous"


def prepare_noise(latent: dict, seed: int) -> torch.Tensor:
    import comfy.sample
    return comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))


class Progress:
    """One progress bar with latent previews across several sampling segments."""

    def __init__(self, model, total: int):
        import comfy.utils
        import latent_preview
        self.pbar = comfy.utils.ProgressBar(total)
        self.total = max(1, total)
        self.done = 0
        try:
            self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        except Exception:  # previews are cosmetic; never fail a run for them
            self.previewer = None

    def callback(self):
        start = self.done

        def cb(step, x0, x, total_steps):
            preview = None
            if self.previewer is not None:
                try:
                    preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
                except Exception:
                    preview = None
            self.done = start + step + 1
            self.pbar.update_absolute(min(self.done, self.total), self.total, preview)
        return cb


def encode(node: str, vae, image: torch.Tensor) -> torch.Tensor:
    h, w = image.shape[1], image.shape[2]
    if h % 8 or w % 8:
        raise MegaPortraitError(node, f"the image is {w}x{h}; the VAE needs sides that are multiples of 8.",
                                "crop or resize it to multiples of 8 (Face Crop sizes always are).")
    return vae.encode(image[..., :3])


def decode(vae, samples: torch.Tensor) -> torch.Tensor:
    return vae.decode(samples).clamp(0, 1)


def apply_controlnet(positive, negative, control_net, image: torch.Tensor, strength: float, start: float, end: float,
                     vae=None):
    """The stock ControlNetApplyAdvanced (strength 0 returns the conditioning untouched)."""
    return comfy_compat.apply_controlnet_advanced(positive, negative, control_net, image, strength, start, end, vae)


def _context_dim_of_controlnet(control_net) -> int | None:
    cm = getattr(control_net, "control_model", None)
    if not isinstance(cm, torch.nn.Module):
        return None
    for name, mod in cm.named_modules():   # SD UNet ControlNets cross-attend (attn2), Flux ones read text (txt_in)
        if (name.endswith("attn2.to_k") or name == "txt_in") and hasattr(mod, "weight"):
            return int(mod.weight.shape[1])
    return None


def model_context_dim(model) -> int | None:
    cfg = getattr(model.model.model_config, "unet_config", {}) or {}
    cd = cfg.get("context_dim") or cfg.get("context_in_dim")
    return int(cd) if cd else None


def latent_zeros(model, batch: int, height: int, width: int) -> torch.Tensor:
    """An empty latent for ``model`` at a pixel size (4 channels for SD, 16 for Flux.1: the family table)."""
    fam = families.of_model(model)
    channels = fam.latent_channels or comfy_compat.latent_channels(model)     # a family the table does not know
    return torch.zeros(batch, channels, height // fam.latent_scale, width // fam.latent_scale)


def is_flux_controlnet(control_net) -> bool:
    """A Flux.1 ControlNet (XLabs, InstantX / Shakker-Labs union, Mistoline): ComfyUI loads all into ControlNetFlux."""
    return type(getattr(control_net, "control_model", None)).__name__ == "ControlNetFlux"


def check_controlnet(node: str, input_name: str, control_net, model) -> None:
    """Refuse a ControlNet made for another model family (e.g. an SDXL ControlNet on an SD1.5 MODEL) with a
    clear message, instead of a shape error deep inside sampling."""
    if control_net is None:
        return
    cn_flux, fam = is_flux_controlnet(control_net), families.of_model(model)
    if isinstance(getattr(control_net, "control_model", None), torch.nn.Module) and cn_flux != (fam.name == "Flux.1"):
        raise MegaPortraitError(node, f"'{input_name}' is a ControlNet for {'Flux.1' if cn_flux else 'SD/SDXL'} but the "
                                      f"MODEL is {fam.name}.",
                                "load a ControlNet made for the model's family.")
    cn_dim, m_dim = _context_dim_of_controlnet(control_net), model_context_dim(model)
    if cn_dim is not None and m_dim is not None and cn_dim != m_dim:
        raise MegaPortraitError(node, f"'{input_name}' is a ControlNet for a model with text context {cn_dim} "
                                      f"({describe_context_dim(cn_dim)}) but the MODEL has {m_dim} "
                                      f"({describe_context_dim(m_dim)}).",
                                "load a ControlNet made for the checkpoint's family.")
