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


class ScheduleWindow:
    """A model patch (ComfyUI's ``transformer_options["patches"]`` protocol: called with the block's tensors, ``to``,
    ``models``) that runs the wrapped patch only while the current sigma is within [sigma_end, sigma_start], the way
    ComfyUI's ControlNets honour start_percent / end_percent; elsewhere the block's tensors pass unchanged."""

    def __init__(self, patch, sigma_start: float, sigma_end: float):
        self.patch, self.sigma_start, self.sigma_end = patch, float(sigma_start), float(sigma_end)

    def __call__(self, kwargs):
        sigmas = kwargs.get("transformer_options", {}).get("sigmas")
        if sigmas is not None and not (self.sigma_end <= float(sigmas.reshape(-1)[0]) <= self.sigma_start):
            return {k: v for k, v in kwargs.items() if k not in ("img", "txt")}
        return self.patch(kwargs)

    def to(self, device_or_dtype):
        if hasattr(self.patch, "to"):
            self.patch = self.patch.to(device_or_dtype)
        return self

    def models(self):
        return self.patch.models() if hasattr(self.patch, "models") else []


def apply_model_patch(node: str, model, model_patch, vae, image: torch.Tensor | None, strength: float, start: float,
                      end: float, inpaint_image: torch.Tensor | None = None, mask: torch.Tensor | None = None):
    """A clone of ``model`` patched with a MODEL_PATCH control (e.g. a Z-Image Fun ControlNet) by the family's stock
    node (ZImageFunControlnet), limited to [start, end] of the schedule (ScheduleWindow); strength 0 returns the
    MODEL untouched, as ControlNetApplyAdvanced returns the conditioning. ``inpaint_image`` and ``mask`` (1 = redraw):
    the control's inpaint mode (the Z-Image Fun union ControlNet's inpaint channels)."""
    if model_patch is None or strength == 0:
        return model
    import nodes as comfy_nodes
    fam = families.of_model(model)
    cls = comfy_nodes.NODE_CLASS_MAPPINGS.get(fam.control_node) if fam.control_node else None
    if cls is None:
        raise MegaPortraitError(node, f"this ComfyUI has no node to apply {fam.name} model-patch controls "
                                      f"({fam.control_node or 'none known'}).", "update ComfyUI (0.33 or newer).")
    images = {k: v for k, v in (("image", image), ("inpaint_image", inpaint_image), ("mask", mask)) if v is not None}
    patched = getattr(cls(), cls.FUNCTION)(model=model, model_patch=model_patch, vae=vae, strength=strength, **images)[0]
    if start <= 0 and end >= 1:
        return patched
    ms = comfy_compat.model_object(model, "model_sampling")
    hi, lo = float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))
    to = patched.model_options["transformer_options"]      # the clone's own options (set_model_patch made new lists)
    before = model.model_options.get("transformer_options", {}).get("patches", {})
    to["patches"] = {name: [p if any(p is q for q in before.get(name, ())) else ScheduleWindow(p, hi, lo) for p in ps]
                     for name, ps in to.get("patches", {}).items()}
    return patched


def check_model_patch(node: str, input_name: str, model_patch, model) -> None:
    """Refuse a MODEL_PATCH control made for another family (or a MODEL whose family takes CONTROL_NETs)."""
    if model_patch is None:
        return
    fam, net = families.of_model(model), getattr(model_patch, "model", None)
    if fam.control != families.MODEL_PATCH:
        why = ("whose ControlNets are CONTROL_NETs, not model patches" if fam.base_model_version else
               f"a family without model-patch controls the pack knows ({', '.join(f.name for f in families.patch_families())})")
        raise MegaPortraitError(node, f"the MODEL is {fam.name}, {why}.",
                                "use the Shading ControlNet Sampler with ControlNetLoader for this family.")
    if not isinstance(net, torch.nn.Module):
        what = "a ControlNet (CONTROL_NET)" if hasattr(model_patch, "control_model") else "not a model patch"
        raise MegaPortraitError(node, f"'{input_name}' is {what}, not a {fam.name} model patch.",
                                f"load a {fam.name} ControlNet with ModelPatchLoader.")
    if not families.control_fits(net, fam):
        made_for = families.of_control(net)
        raise MegaPortraitError(node, f"'{input_name}' is a model patch for "
                                      f"{made_for.name if made_for else 'another family'}, not a {fam.name} control.",
                                f"load a {fam.name} ControlNet with ModelPatchLoader.")


def _context_dim_of_controlnet(control_net) -> int | None:
    cm = getattr(control_net, "control_model", None)
    return families.control_text_width(cm) if isinstance(cm, torch.nn.Module) else None


def model_context_dim(model) -> int | None:
    """The MODEL's text width (the family table's one reading of it), None when it has none."""
    return families.text_width(model) or None


def latent_zeros(model, batch: int, height: int, width: int) -> torch.Tensor:
    """An empty latent for ``model`` at a pixel size (4 channels for SD, 16 for Flux.1: the family table)."""
    fam = families.of_model(model)
    channels = fam.latent_channels or comfy_compat.latent_channels(model)     # a family the table does not know
    return torch.zeros(batch, channels, height // fam.latent_scale, width // fam.latent_scale)


def check_controlnet(node: str, input_name: str, control_net, model) -> None:
    """Refuse a ControlNet made for another model family (e.g. an SDXL ControlNet on an SD1.5 MODEL) with a
    clear message, instead of a shape error deep inside sampling."""
    if control_net is None:
        return
    cm, fam = getattr(control_net, "control_model", None), families.of_model(model)
    if isinstance(cm, torch.nn.Module) and not families.control_fits(cm, fam):
        raise MegaPortraitError(node, f"'{input_name}' is a ControlNet for {families.describe_control(cm)} but the "
                                      f"MODEL is {fam.name}.",
                                "load a ControlNet made for the model's family.")
    cn_dim, m_dim = _context_dim_of_controlnet(control_net), model_context_dim(model)
    if cn_dim is not None and m_dim is not None and cn_dim != m_dim:
        raise MegaPortraitError(node, f"'{input_name}' is a ControlNet for a model with text context {cn_dim} "
                                      f"({describe_context_dim(cn_dim)}) but the MODEL has {m_dim} "
                                      f"({describe_context_dim(m_dim)}).",
                                "load a ControlNet made for the checkpoint's family.")
