"""Stage 1 of MegaPortrait, training: the Identity Net, a LoRA trained on a few photos of the source person.

The nodes: Identity LoRA Trainer and Load Identity LoRA. The work is done in
    lora_files     kohya LoRA files (keys, metadata, safe names, finding a LoRA trained earlier)
    lora_training  the pure torch training loop, the model twin, resume checkpoints
    lora_comfy     the glue to ComfyUI's MODEL/CLIP/VAE (loading, sampling schedule, metadata)

Train once: a LoRA trained from the same photos, base model (its effective weights), prompt and settings carries
that key in its metadata and is reused instead of retrained (after a restart, from the runner, or when a graph
is queued again); ``if_trained`` = "train again" retrains. Interrupting (Cancel) writes a resume checkpoint next to
the LoRA; the next run with the same settings continues from it along the uninterrupted run's loss trajectory.
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import lora_comfy as lc
from . import lora_files as lf
from . import lora_training as lt
from .common import (
    CATEGORY,
    TITLES,
    MegaPortraitError,
    check_bool,
    check_choice,
    check_image,
    check_int,
    check_mask,
    check_number,
    log,
    require,
)

IF_EXISTS = ("increment name", "overwrite", "error")
IF_TRAINED = ("reuse", "train again")
RESUME = ("auto", "off")
# The loss weight outside the face masks: a quarter keeps the background and clothes anchored to the base model (at 0
# nothing holds them, and a LoRA that never saw them drifts them) while a face of a third of the photo gets about two
# thirds of the loss instead of a third (README, "Face-weighted loss").
BACKGROUND_WEIGHT = 0.25


def _folder_loras(node: str) -> str:
    import folder_paths
    paths = folder_paths.get_folder_paths("loras")
    if not paths:
        raise MegaPortraitError(node, "ComfyUI has no 'loras' model folder configured.",
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
            img = (lt.loss_curve_image(losses)[0].numpy() * 255).astype(np.uint8)
            preview = ("JPEG", Image.fromarray(img), 512)
        if step % max(1, self.total // 10) == 0 or step == self.total:
            rate = step / max(time.time() - self.t0, 1e-6)
            log.info("MegaPortrait identity LoRA: step %d/%d loss %.4f (%.2f it/s)", step, self.total, loss, rate)
        self.pbar.update_absolute(step, self.total, preview)


def _lora_candidates(loras_dir: str, preferred: str):
    """(name, path) of every LoRA ComfyUI lists, the save_name's own file (and its numbered versions) first."""
    import folder_paths
    stem = preferred[: -len(".safetensors")]
    names = folder_paths.get_filename_list("loras")
    first = [n for n in names if n.replace("\\", "/") == preferred or n.replace("\\", "/").startswith(stem + "_")]
    for n in first + [n for n in names if n not in first]:
        path = folder_paths.get_full_path("loras", n)
        if path:
            yield n.replace("\\", "/"), path


def _output_model(node: str, model, output_model):
    """The MODEL the trainer returns with the LoRA: ``output_model`` when connected (it must be of the trained
    MODEL's family: the LoRA's layers are that family's), else the trained ``model``."""
    if output_model is None:
        return model
    trained, other = lc.family_of(model), lc.family_of(output_model)
    if other is not trained:
        raise MegaPortraitError(node, f"'output_model' is {other.name} but the LoRA trains on 'model', which is "
                                      f"{trained.name}.",
                                "connect a MODEL of the same family to output_model (e.g. the same checkpoint without "
                                "its training adapter), or leave it empty.")
    return output_model


# ----------------------------------------------------------------------------------------------- nodes
class IdentityLoraTrainer:
    DESCRIPTION = ("MegaPortrait Identity Net: trains an identity LoRA on 3-20 photos of the source person, on the MODEL "
                   "(and optionally CLIP) you loaded, saves it to models/loras (kohya format: loads in LoraLoader and "
                   "A1111) and returns MODEL/CLIP with it applied. Cancel keeps a checkpoint; re-queue to resume.")
    CATEGORY = f"{CATEGORY}/Identity"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "IMAGE")
    RETURN_NAMES = ("model", "clip", "lora_name", "loss_curve")
    OUTPUT_TOOLTIPS = ("The input MODEL (or output_model) with the trained LoRA applied (a clone; the input is "
                       "unchanged).",
                       "The input CLIP, with the text-encoder LoRA when trained (a clone).",
                       "File name of the LoRA in models/loras (for LoraLoader / Load Identity LoRA).",
                       "Loss per step (raw and smoothed).")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The checkpoint to personalise (SD1.5, SDXL, Flux.1 or Z-Image; other LoRAs "
                                           "applied upstream are baked into the training copy)."}),
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
                           "Training resolution (512 for SD1.5 and Flux.1, 768 for Z-Image, 1024 for SDXL)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip":
                     "Seed for LoRA initialisation, batches, noise and timesteps: same seed + settings = same LoRA."}),
            "save_name": ("STRING", {"default": "megaportrait/identity", "tooltip":
                          "File name under models/loras (subfolders with '/'); '.safetensors' is added."}),
        }, "optional": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Crop each photo around the face (recommended). Photos without "
                                                           "a face then raise an error naming them."}),
            "face_masks": ("MASK", {"tooltip": "One mask per photo (1 = face and hair), e.g. Load Source Photos' "
                                               "face_masks: the loss outside it is weighted by background_weight, so "
                                               "the LoRA learns the face more than the photos' background, clothes and "
                                               "light. Cut with the photos when they are cropped here."}),
            "train_text_encoder": ("BOOLEAN", {"default": False, "tooltip":
                                   "Also train a text-encoder LoRA (lora_te keys). Stronger identity, more overfitting risk."}),
            "text_learning_rate": ("FLOAT", {"default": 5e-5, "min": 1e-7, "max": 1e-1, "step": 1e-6, "round": 1e-8,
                                             "tooltip": "Text-encoder LoRA learning rate (when trained)."}),
            "target": (list(lt.UNET_TARGETS), {"default": "attention", "tooltip":
                       "UNet layers that get LoRA: attention projections (q, k, v, out) or also the feed-forward layers."}),
            "flip": ("BOOLEAN", {"default": True, "tooltip": "Also train on mirrored photos (doubles the data)."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip":
                                       "Recompute activations in the backward pass: much less memory, ~30% slower."}),
            "precision": (list(lt.PRECISIONS), {"default": "auto", "tooltip":
                          "Mixed precision on a GPU (auto = bf16 where supported, else fp16 with loss scaling). The CPU "
                          "always trains in fp32."}),
            "checkpoint_every": ("INT", {"default": 100, "min": 0, "max": 10000, "tooltip":
                                 "Write a resume checkpoint every N steps (0 = only when cancelled)."}),
            "resume": (list(RESUME), {"default": "auto", "tooltip":
                       "auto: continue an interrupted run of the same save_name and settings; off: start over."}),
            "if_exists": (list(IF_EXISTS), {"default": "increment name", "tooltip":
                          "When the LoRA file exists: add a counter (name_00001), overwrite it, or stop with an error."}),
            "if_trained": (list(IF_TRAINED), {"default": "reuse", "tooltip":
                           "reuse: when a LoRA trained from the same photos, model, prompt and settings exists in "
                           "models/loras (found by the key in its metadata), use it instead of training; train again: "
                           "always train."}),
            "background_weight": ("FLOAT", {"default": BACKGROUND_WEIGHT, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "With face_masks: the loss weight of pixels outside the face and hair (1 "
                                             "inside). 1 = plain loss; 0 = face only (the background drifts); 0.25 "
                                             "keeps the background in check while the face counts most."}),
            "output_model": ("MODEL", {"tooltip":
                             "The MODEL to return with the identity LoRA instead of 'model' (same family): e.g. "
                             "Z-Image-Turbo without the training adapter a LoraLoaderModelOnly put on 'model' for "
                             "training only, or Turbo when 'model' is Z-Image Base. Empty: 'model'."}),
        }}

    def train(self, model, clip, vae, images, trigger_word, class_word, prompt_template, steps, learning_rate, rank, alpha,
              batch_size, resolution, seed, save_name, face_analysis=None, train_text_encoder=False,
              text_learning_rate=5e-5, target="attention", flip=True, gradient_checkpointing=False, precision="auto",
              checkpoint_every=100, resume="auto", if_exists="increment name", if_trained="reuse", face_masks=None,
              background_weight=BACKGROUND_WEIGHT, output_model=None):
        node = TITLES["MegaPortraitIdentityLoraTrainer"]
        from .source_photos import crop_masks, square_crops
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
        for name, val, allowed in (("precision", precision, lt.PRECISIONS), ("resume", resume, RESUME),
                                   ("if_exists", if_exists, IF_EXISTS), ("target", target, tuple(lt.UNET_TARGETS)),
                                   ("if_trained", if_trained, IF_TRAINED)):
            check_choice(node, name, val, allowed)
        learning_rate = check_number(node, "learning_rate", learning_rate, 1e-7, 1e-1)
        text_learning_rate = check_number(node, "text_learning_rate", text_learning_rate, 1e-7, 1e-1)
        alpha = check_number(node, "alpha", alpha, 0.1, 512.0)
        background_weight = check_number(node, "background_weight", background_weight, 0.0, 1.0)
        face_masks = check_mask(node, face_masks, images, "face_masks")
        checkpoint_every = check_int(node, "checkpoint_every", checkpoint_every, 0, 10000)
        for name, val in (("trigger_word", trigger_word), ("class_word", class_word),
                          ("prompt_template", prompt_template), ("save_name", save_name)):
            if not isinstance(val, str):
                raise MegaPortraitError(node, f"{name} is {val!r}, not text.", f"set {name} to text.")
        train_text_encoder, flip, gradient_checkpointing = (
            check_bool(node, k, v) for k, v in (("train_text_encoder", train_text_encoder), ("flip", flip),
                                                ("gradient_checkpointing", gradient_checkpointing)))
        prompt = prompt_template.replace("{trigger}", trigger_word).replace("{class}", class_word).strip()
        if not prompt:
            raise MegaPortraitError(node, "the instance prompt is empty.", "set trigger_word and prompt_template.")
        lc.check_trainable(node, model)
        out_model = _output_model(node, model, output_model)
        loras_dir = _folder_loras(node)        # names that cannot be written are refused before any work
        resume_anchor, anchor_name = lf.resolve_save_path(node, loras_dir, save_name, "overwrite")
        crops = square_crops(node, [images[i] for i in range(n)], int(resolution), face_analysis)
        photos = crops.photos
        masks = None if face_masks is None else crop_masks(face_masks.cpu(), crops.boxes, int(resolution))
        cfg = lt.TrainConfig(steps=int(steps), learning_rate=learning_rate,
                             text_learning_rate=text_learning_rate, rank=int(rank), alpha=alpha,
                             batch_size=int(batch_size), resolution=int(resolution), seed=int(seed),
                             train_text_encoder=train_text_encoder, flip=flip, target=target,
                             background_weight=background_weight if masks is not None else 1.0)
        if masks is not None and cfg.background_weight == 1.0:
            masks = None                   # weight 1 everywhere: the plain loss, and the plain train-once key
        key = lc.training_key(model, clip, vae, photos, prompt, cfg, masks)
        if if_trained == "reuse":
            found = lf.find_trained(_lora_candidates(loras_dir, anchor_name), key)
            if found is not None:
                name, path, meta = found
                import comfy.utils
                log.info("MegaPortrait: reusing identity LoRA %s (same photos, model, prompt and settings)", path)
                new_model, new_clip = lc.apply_lora(out_model, clip, comfy.utils.load_torch_file(path, safe_load=True))
                text = (f"reused {name} (trained earlier from the same photos, model, prompt and settings; set "
                        f"if_trained to 'train again' to retrain)\nprompt: {prompt}")
                curve = lt.loss_curve_image(lf.losses_from_metadata(meta))
                return {"ui": {"text": [text]}, "result": (new_model, new_clip, name, curve)}
        require("peft", node, "peft", "identity LoRA training")      # before any training work
        final_path, lora_name = lf.resolve_save_path(node, loras_dir, save_name, if_exists)
        hook = _ProgressHook(cfg.steps, max(1, cfg.steps // 50))
        lora_sd, state, meta = lc.train_identity_lora(
            node, model, clip, vae, photos, prompt, cfg, resume_anchor, precision=precision,
            gradient_checkpointing=gradient_checkpointing, resume=resume, checkpoint_every=int(checkpoint_every),
            metadata={"megaportrait.trigger_word": trigger_word, "megaportrait.class_word": class_word},
            on_progress=hook, train_key=key, masks=masks)
        lf.atomic_save(lora_sd, final_path, meta)
        rp = resume_anchor[: -len(".safetensors")] + lc.RESUME_SUFFIX
        if os.path.exists(rp):
            os.unlink(rp)
        log.info("MegaPortrait: saved identity LoRA %s (%d tensors)", final_path, len(lora_sd))
        new_model, new_clip = lc.apply_lora(out_model, clip, lora_sd, 1.0, 1.0)
        text = f"saved {lora_name}\nsteps {state.step}, final loss {meta['megaportrait.final_loss']}\nprompt: {prompt}"
        return {"ui": {"text": [text]}, "result": (new_model, new_clip, lora_name, lt.loss_curve_image(state.losses))}


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
        node = TITLES["MegaPortraitLoadIdentityLora"]
        import folder_paths
        strength_model = check_number(node, "strength_model", strength_model, -10.0, 10.0)
        strength_clip = check_number(node, "strength_clip", strength_clip, -10.0, 10.0)
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None or not os.path.isfile(path):
            raise MegaPortraitError(node, f"LoRA {lora_name!r} was not found in models/loras.",
                                    "train one with the Identity LoRA Trainer or copy the file there.")
        if not path.endswith(".safetensors"):
            raise MegaPortraitError(node, f"{lora_name} is not a .safetensors file (pickled files are never loaded).",
                                    "convert it to safetensors.")
        lora, meta = lf.load_lora_file(node, path)
        fam = lc.model_family(model)
        problem = lf.lora_fit_problem(lora, meta, lc.family_of(model), fam["context_dim"], fam["family"])
        if problem:
            raise MegaPortraitError(node, f"{lora_name} {problem}.", "load the model family the LoRA was trained on.")
        if not any(k.startswith(("lora_unet_", "lora_te")) for k in lora):
            raise MegaPortraitError(node, f"{lora_name} has no kohya LoRA keys (lora_unet_* / lora_te*_*).",
                                    "load it with the stock LoraLoader if it is another LoRA format.")
        new_model, new_clip = lc.apply_lora(model, clip, lora, strength_model, strength_clip)
        prompt = meta.get("megaportrait.prompt", "")
        info = "\n".join(f"{k}: {meta[k]}" for k in ("megaportrait.family", "ss_base_model_version", "ss_network_dim",
                                                     "ss_network_alpha", "ss_steps", "megaportrait.prompt",
                                                     "megaportrait.final_loss") if k in meta) or "no metadata"
        return (new_model, new_clip, prompt, info)


NODE_CLASS_MAPPINGS = {
    "MegaPortraitIdentityLoraTrainer": IdentityLoraTrainer,
    "MegaPortraitLoadIdentityLora": LoadIdentityLora,
}
