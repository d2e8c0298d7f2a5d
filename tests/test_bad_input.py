"""Bad input, through the real server (/prompt, /history): a matrix over every node and every kind of input.

Each case is one small graph. For each: the server keeps serving, no file the user owns (input/, output/,
models/loras/) changes, and the refusal names the node, the problem and the fix: our nodes raise
"[MegaPortrait <node>] <problem> Fix: <fix>"; what ComfyUI itself refuses before any node runs (a value beyond a
widget's min/max, a string for an INT, a link to the wrong type, a missing input) comes back in /prompt's
node_errors, which name the node, the input and the problem. Where a check can fail early it does: e.g. a
save_name that cannot be written is refused before the first training step (the case's graph would train for
10000 steps otherwise, and the whole matrix runs in well under two minutes).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import COMFY_ROOT, EXAMPLES, import_pack
from PIL import Image

pytestmark = pytest.mark.server
NAN = float("nan")

# ------------------------------------------------------------------------------------------------- graph helpers
CKPT = "tiny_sd15.safetensors"


def load(name):
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def empty(w, h, batch=1, color=0):
    return {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": batch, "color": color}}


def preview(src):
    return {"class_type": "PreviewImage", "inputs": {"images": src}}


def light(image, **kw):
    inputs = {"image": image, "sigma": 8.0, "sigma_mode": "relative to 512 px", "filter_type": "gaussian"}
    inputs.update(kw)
    return {"class_type": "MegaPortraitLightMap", "inputs": inputs}


def hf(image, **kw):
    inputs = {"image": image, "sigma": 8.0, "sigma_mode": "relative to 512 px", "filter_type": "gaussian", "gain": 1.0}
    inputs.update(kw)
    return {"class_type": "MegaPortraitHFMap", "inputs": inputs}


def fa(**kw):
    inputs = {"backend": "dlib", "det_threshold": 0.3, "det_size": 640}
    inputs.update(kw)
    return {"class_type": "MegaPortraitFaceAnalysisLoader", "inputs": inputs}


def g_maps(node, image_node=None, out=0):
    g = {"1": image_node or load("astronaut.png"), "2": node, "3": preview(["2", out])}
    return g


def g_fa(**kw):
    """Face Analysis Loader -> Face Similarity (an output node): the loader runs."""
    return {"1": load("astronaut.png"), "2": fa(**kw),
            "3": {"class_type": "MegaPortraitFaceSimilarity",
                  "inputs": {"face_analysis": ["2", 0], "image_a": ["1", 0], "image_b": ["1", 0]}}}


def g_similarity(image_b, on_no_face="error", image_a=None):
    return {"1": load("astronaut.png"), "2": fa(), "4": image_b, "5": image_a or load("astronaut.png"),
            "3": {"class_type": "MegaPortraitFaceSimilarity",
                  "inputs": {"face_analysis": ["2", 0], "image_a": ["5", 0], "image_b": ["4", 0],
                             "on_no_face": on_no_face}}}


def g_crop(image, **kw):
    inputs = {"face_analysis": ["2", 0], "image": ["1", 0], "crop_size": 128, "context": 0.25,
              "selection": "largest", "index": 0, "min_face_size": 48}
    inputs.update(kw)
    return {"1": image, "2": fa(), "3": {"class_type": "MegaPortraitFaceCrop", "inputs": inputs}, "4": preview(["3", 0])}


def g_photos(folder="", filenames="", with_fa=False, **kw):
    inputs = {"folder": folder, "filenames": filenames, "resolution": 64, "face_scale": 2.2, "min_photos": 0, "seed": 0}
    inputs.update(kw)
    g = {"1": {"class_type": "MegaPortraitLoadSourcePhotos", "inputs": inputs}, "3": preview(["1", 0])}
    if with_fa:
        g["2"] = fa()
        inputs["face_analysis"] = ["2", 0]
    return g


def model_nodes(g):
    g["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}
    g["11"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "photo of sks person", "clip": ["10", 1]}}
    g["12"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["10", 1]}}
    return g


def g_train(images=None, **kw):
    g = model_nodes({})
    g["1"] = images or {"class_type": "RepeatImageBatch", "inputs": {"image": ["5", 0], "amount": 3}}
    g["5"] = {"class_type": "ImageScale", "inputs": {"image": ["6", 0], "upscale_method": "area", "width": 64,
                                                     "height": 64, "crop": "disabled"}}
    g["6"] = load("astronaut.png")
    inputs = {"model": ["10", 0], "clip": ["10", 1], "vae": ["10", 2], "images": ["1", 0], "trigger_word": "sks",
              "class_word": "person", "prompt_template": "photo of {trigger} {class}", "steps": 10000,
              "learning_rate": 1e-4, "rank": 4, "alpha": 4.0, "batch_size": 1, "resolution": 64, "seed": 0,
              "save_name": "mp_bad/ok", "checkpoint_every": 0, "if_trained": "train again"}
    inputs.update(kw)
    g["2"] = {"class_type": "MegaPortraitIdentityLoraTrainer", "inputs": inputs}
    g["3"] = preview(["2", 3])
    return g


def g_load_lora(name, **kw):
    g = model_nodes({})
    inputs = {"model": ["10", 0], "clip": ["10", 1], "lora_name": name, "strength_model": 1.0, "strength_clip": 1.0}
    inputs.update(kw)
    g["1"] = {"class_type": "MegaPortraitLoadIdentityLora", "inputs": inputs}
    g["2"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["4"] = {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["11", 0],
                                                   "negative": ["12", 0], "latent_image": ["2", 0], "denoise": 1.0}}
    g["5"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["10", 2]}}
    g["3"] = preview(["5", 0])
    return g


def g_dual(image=None, **kw):
    g = model_nodes({})
    g["1"] = image or empty(64, 64, color=0x808080)
    inputs = {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "vae": ["10", 2], "image": ["1", 0],
              "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
              "reference_denoise": 0.35, "source_denoise": 0.7}
    inputs.update(kw)
    g["2"] = {"class_type": "MegaPortraitDualStrengthIdentitySampler", "inputs": inputs}
    g["3"] = preview(["2", 3])
    return g


def g_shading(hf_image=None, extra_nodes=None, **kw):
    g = model_nodes({})
    g.update(extra_nodes or {})
    g["1"] = empty(64, 64, color=0x808080)
    g["5"] = hf_image or empty(64, 64, color=0x808080)
    g["6"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny_controlnet.safetensors"}}
    inputs = {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "vae": ["10", 2], "light_map": ["1", 0],
              "hf_map": ["5", 0], "light_control_net": ["6", 0], "hf_control_net": ["6", 0], "light_strength": 0.6,
              "light_start": 0.0, "light_end": 1.0, "hf_strength": 0.5, "hf_start": 0.0, "hf_end": 0.7, "seed": 0,
              "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.75}
    inputs.update(kw)
    g["2"] = {"class_type": "MegaPortraitShadingSampler", "inputs": inputs}
    g["3"] = preview(["2", 1])
    return g


def g_shading_patch(patch_node=None, **kw):
    """Shading Fun ControlNet Sampler (model-patch controls) on the tiny SD1.5 model; ``patch_node`` feeds both
    MODEL_PATCH inputs (default: the ControlNetLoader's CONTROL_NET, a type ComfyUI refuses on every host)."""
    g = g_shading()
    g["7"] = patch_node or g["6"]
    inputs = {k: v for k, v in g["2"]["inputs"].items() if k not in ("light_control_net", "hf_control_net")}
    inputs.update(light_model_patch=["7", 0], hf_model_patch=["7", 0], **kw)
    g["2"] = {"class_type": "MegaPortraitShadingSamplerModelPatch", "inputs": inputs}
    return g


def g_harmonize(mask=None, image=None, **kw):
    g = model_nodes({})
    g["1"] = image or empty(64, 64, color=0x808080)
    g["5"] = mask or {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    inputs = {"model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "vae": ["10", 2], "image": ["1", 0],
              "mask": ["5", 0], "seed": 0, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
              "denoise": 0.5, "grow": 8, "feather": 16, "crop_to_mask": True, "padding": 0.3,
              "working_resolution": 64}
    inputs.update(kw)
    g["2"] = {"class_type": "MegaPortraitHarmonize", "inputs": inputs}
    g["3"] = preview(["2", 0])
    return g


def g_paste(face, reference=None, **kw):
    g = {"1": load("astronaut.png"), "2": fa(),
         "4": {"class_type": "MegaPortraitFaceCrop", "inputs": {"face_analysis": ["2", 0], "image": ["1", 0],
                                                                "crop_size": 128, "context": 0.25, "selection": "largest",
                                                                "index": 0, "min_face_size": 48}},
         "6": face, "7": reference or load("astronaut.png")}
    inputs = {"reference": ["7", 0], "face_crop": ["4", 1], "face": ["6", 0], "align": "none", "mask_type": "face ellipse",
              "grow": 0, "feather": 24, "seam_width": 16, "color_match": "none"}
    inputs.update(kw)
    g["5"] = {"class_type": "MegaPortraitPasteBack", "inputs": inputs}
    g["3"] = preview(["5", 0])
    return g


def g_people(name="astro", **kw):
    """Add Person (the tiny model, the astronaut's photo) -> Assign Faces to People on the astronaut's picture."""
    g = model_nodes({"1": load("astronaut.png"), "2": fa()})
    g["4"] = {"class_type": "MegaPortraitFaceCrop", "inputs": {"face_analysis": ["2", 0], "image": ["1", 0],
                                                               "crop_size": 64, "context": 0.25,
                                                               "selection": "every face (left to right)", "index": 0,
                                                               "min_face_size": 48}}
    g["20"] = {"class_type": "MegaPortraitAddPerson", "inputs": {"face_analysis": ["2", 0], "name": name,
                                                                 "model": ["10", 0], "photos": ["1", 0]}}
    inputs = {"face_analysis": ["2", 0], "people": ["20", 0], "image": ["1", 0], "face": ["4", 0],
              "face_crop": ["4", 1], "match": "by identity", "threshold": 0.0, "unknown_faces": "leave untouched",
              "default_person": "", "assignment": ""}
    inputs.update(kw)
    g["21"] = {"class_type": "MegaPortraitAssignFacesToPeople", "inputs": inputs}
    g["3"] = preview(["21", 0])
    return g


# ------------------------------------------------------------------------------------------------- the cases
OURS, INVALID, OK, CLEAR = "ours", "invalid", "ok", "clear"   # CLEAR: succeeds, or refuses with our message
REFUSED = "refused"    # ComfyUI refuses it (the early-2024 host does not validate optional combos) or our node does


@dataclass
class Case:
    id: str
    graph: object             # dict, or a callable (files) -> dict
    expect: str               # OURS / INVALID / OK / CLEAR
    node: str = ""            # OURS: the node's display name in "[MegaPortrait <node>]"; INVALID: the node id
    words: tuple = ()         # in the message (case-insensitive)
    xfail: str = ""           # a known finding in a file another engineer works on
    unchanged: tuple = ()     # extra files (relative to the loras folder) that must stay byte-identical
    extra: dict = field(default_factory=dict)


NEW_HOST = os.path.isfile(os.path.join(COMFY_ROOT, "utils", "__init__.py"))
# ComfyUI 0.33 converts BOOLEAN widget values with bool() during validation ("false" -> True) before a node sees
# them; the early-2024 host passes the string through, and our nodes refuse it.


def bool_string(node: str) -> tuple[str, str]:
    return (OK, "") if NEW_HOST else (OURS, node)



LONG = "x" * 300
CASES = [
    # --- maps: numbers, shapes, types
    Case("light_sigma_nan", g_maps(light(["1", 0], sigma=NAN)), OURS, "Light Map", ("sigma", "finite")),
    Case("light_sigma_negative", g_maps(light(["1", 0], sigma=-1.0)), INVALID, "2", ("sigma",)),
    Case("light_sigma_max", g_maps(light(["1", 0], sigma=4096.0)), OK),
    Case("light_sigma_beyond_max", g_maps(light(["1", 0], sigma=5000.0)), INVALID, "2", ("sigma",)),
    Case("light_sigma_string", g_maps(light(["1", 0], sigma="eight")), INVALID, "2", ("sigma",)),
    Case("light_sigma_zero", g_maps(light(["1", 0], sigma=0.0)), OK),
    Case("light_1x1_image", g_maps(light(["1", 0]), empty(1, 1)), OK),
    Case("light_huge_image", g_maps(light(["1", 0], sigma=2.0), empty(4000, 3000, color=0x336699)), OK),
    Case("light_grayscale_png", g_maps(light(["1", 0]), load("mp_bad_gray.png")), OK),
    Case("light_alpha_image", {**g_maps(light(["5", 0])), "4": {"class_type": "SolidMask", "inputs": {
        "value": 0.5, "width": 512, "height": 512}}, "5": {"class_type": "JoinImageWithAlpha", "inputs": {
            "image": ["1", 0], "alpha": ["4", 0]}}}, OK),
    Case("light_mask_wrong_size", {**g_maps(light(["1", 0], mask=["4", 0])), "4": {
        "class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}}, OURS, "Light Map", ("32x32",)),
    Case("light_unknown_filter", g_maps(light(["1", 0], filter_type="median")), INVALID, "2", ("filter_type",)),
    Case("light_link_wrong_type", model_nodes(g_maps(light(["10", 0])) | {}), INVALID, "2", ("image",)),
    Case("light_missing_image", g_maps({"class_type": "MegaPortraitLightMap", "inputs": {
        "sigma": 8.0, "sigma_mode": "pixels", "filter_type": "gaussian"}}), INVALID, "2", ("image",)),
    Case("light_link_to_missing_node", g_maps(light(["99", 0])), INVALID, "2", ()),
    Case("hf_gain_nan", g_maps(hf(["1", 0], gain=NAN)), OURS, "HF Map", ("gain", "finite")),
    Case("hf_gain_zero", g_maps(hf(["1", 0], gain=0.0)), INVALID, "2", ("gain",)),
    Case("hf_gain_max", g_maps(hf(["1", 0], gain=64.0, encoding="magnitude")), OK),
    Case("recombine_gain_nan", {**g_maps(light(["1", 0])), "4": hf(["1", 0]), "5": {
        "class_type": "MegaPortraitRecombineMaps", "inputs": {"light_map": ["2", 0], "hf_map": ["4", 0], "gain": NAN}},
        "3": preview(["5", 0])}, OURS, "Recombine Maps", ("gain",)),
    Case("recombine_mixed_sizes", {**g_maps(light(["1", 0])), "4": hf(["6", 0]), "6": empty(64, 64), "5": {
        "class_type": "MegaPortraitRecombineMaps", "inputs": {"light_map": ["2", 0], "hf_map": ["4", 0], "gain": 1.0}},
        "3": preview(["5", 0])}, OURS, "Recombine Maps", ("hf_map",)),
    # --- face analysis loader and its model files
    Case("fa_threshold_nan", g_fa(det_threshold=NAN), OURS, "Face Analysis Loader", ("det_threshold", "finite")),
    Case("fa_refine_string_false", g_fa(refine_landmarks="false"), *bool_string("Face Analysis Loader"), ("refine_landmarks",)),
    Case("fa_unknown_backend", g_fa(backend="opencv"), INVALID, "2", ("backend",)),
    Case("fa_pack_path", g_fa(backend="insightface", insightface_pack="../../etc"), REFUSED, "Face Analysis Loader",
         ("insightface_pack",)),
    Case("fa_pack_corrupt", g_fa(backend="insightface", insightface_pack="mp_bad_corrupt", provider="CPU"), OURS,
         "Face Analysis Loader", ("mp_bad_corrupt", "damaged")),
    Case("fa_pack_empty_files", g_fa(backend="insightface", insightface_pack="mp_bad_empty", provider="CPU"), OURS,
         "Face Analysis Loader", ("mp_bad_empty",)),
    Case("fa_pack_no_detector", g_fa(backend="insightface", insightface_pack="mp_bad_nodet", provider="CPU"), OURS,
         "Face Analysis Loader", ("no detection model",)),
    Case("fa_pack_no_recognition", g_fa(backend="insightface", insightface_pack="mp_bad_norec", provider="CPU"), OURS,
         "Face Analysis Loader", ("recognition",)),
    # --- identity nodes
    Case("similarity_no_face", g_similarity(empty(256, 256, color=0x808080)), OURS, "Face Similarity", ("no face",)),
    Case("similarity_1x1", g_similarity(empty(1, 1)), OURS, "Face Similarity", ("no face",)),
    Case("similarity_no_face_report", g_similarity(empty(64, 64), on_no_face="report"), OK),
    Case("similarity_grayscale", g_similarity(load("mp_bad_gray.png")), OK),
    Case("similarity_identity_no_face", g_similarity(load("astronaut.png"), image_a=empty(128, 128)), OURS,
         "Face Similarity", ("image_a",)),
    Case("select_best_no_face", {"1": load("astronaut.png"), "2": fa(), "4": empty(128, 128, 2), "3": {
        "class_type": "MegaPortraitSelectBestIdentity", "inputs": {"face_analysis": ["2", 0], "source": ["1", 0],
                                                                   "candidates": ["4", 0]}}},
         OURS, "Select Best Identity", ("no face",)),
    # --- face crop and paste back (nodes/face_crop.py, nodes/paste_back.py)
    Case("crop_no_face", g_crop(empty(256, 256, color=0x808080)), OURS, "Face Crop", ("no face",)),
    Case("crop_1x1", g_crop(empty(1, 1)), OURS, "Face Crop", ("no face",)),
    Case("crop_several_faces_single", g_crop(load("mp_bad_group.png"), selection="single (error if several)"), OURS,
         "Face Crop", ("faces",)),
    Case("crop_tiny_face", g_crop({"class_type": "ImageScale", "inputs": {"image": ["9", 0], "upscale_method": "area",
                                                                          "width": 48, "height": 48, "crop": "disabled"}})
         | {"9": load("astronaut.png")}, OURS, "Face Crop", ()),
    Case("crop_cut_face", g_crop({"class_type": "ImageCrop", "inputs": {"image": ["9", 0], "width": 200, "height": 512,
                                                                         "x": 0, "y": 0}}) | {"9": load("astronaut.png")},
         CLEAR, "Face Crop"),
    Case("crop_context_nan", g_crop(load("astronaut.png"), context=NAN), OURS, "Face Crop", ("context",)),
    Case("crop_index_beyond_max", g_crop(load("astronaut.png"), index=65), INVALID, "3", ("index",)),
    Case("paste_face_wrong_size", g_paste(empty(64, 64)), CLEAR, "Paste Back"),
    Case("paste_reference_other_size", g_paste(empty(128, 128), reference=empty(100, 100)), CLEAR, "Paste Back"),
    Case("paste_feather_beyond_max", g_paste(empty(128, 128), feather=100000), INVALID, "5", ("feather",)),
    # --- load source photos: files, names, numbers
    Case("photos_truncated_png", g_photos("mp_bad/truncated"), OURS, "Load Source Photos", ("truncated.png",)),
    Case("photos_text_as_png", g_photos("mp_bad/non_image"), OURS, "Load Source Photos", ("notes.png",)),
    Case("photos_corrupt_jpg", g_photos("mp_bad/corrupt"), OURS, "Load Source Photos", ("random.jpg",)),
    Case("photos_empty_file", g_photos("mp_bad/empty_file"), OURS, "Load Source Photos", ("zero.jpg",)),
    Case("photos_folder_dotdot", g_photos(".."), OURS, "Load Source Photos", ("..",)),
    Case("photos_folder_absolute", g_photos("/etc"), OURS, "Load Source Photos", ("/etc",)),
    Case("photos_folder_missing", g_photos("mp_bad/does_not_exist"), OURS, "Load Source Photos", ("does not exist",)),
    Case("photos_nothing", g_photos(""), OURS, "Load Source Photos", ("no photos",)),
    Case("photos_unicode_missing", g_photos("", "mp_bad/fötö_missing.png"), OURS, "Load Source Photos",
         ("fötö_missing.png",)),
    Case("photos_unicode_name", g_photos("", "mp_bad/fötö_ü.png"), OK),
    Case("photos_face_scale_nan", g_photos("mp_bad/mixed", face_scale=NAN), OURS, "Load Source Photos",
         ("face_scale", "finite")),
    Case("photos_resolution_zero", g_photos("mp_bad/mixed", resolution=0), INVALID, "1", ("resolution",)),
    Case("photos_seed_beyond_max", g_photos("mp_bad/mixed", seed=2 ** 32), INVALID, "1", ("seed",)),
    Case("photos_mixed_sizes", g_photos("mp_bad/mixed"), OK),
    Case("photos_max_augment", g_photos("mp_bad/mixed", min_photos=64, seed=0xFFFFFFFF), OK),
    Case("photos_1x1", g_photos("mp_bad/one_pixel"), OURS, "Load Source Photos", ("too small",)),
    Case("photos_no_face", g_photos("mp_bad/no_face", with_fa=True), OURS, "Load Source Photos", ("no face",)),
    Case("photos_tiny_face", g_photos("mp_bad/tiny_face", with_fa=True, resolution=512), OURS, "Load Source Photos",
         ("photo(s) 0",)),
    Case("photos_two_people", g_photos("mp_bad/people", with_fa=True), OURS, "Load Source Photos",
         ("grace.jpg", "another person", "warn and go on")),
    Case("photos_two_people_go_on", g_photos("mp_bad/people", with_fa=True, identity_check="warn and go on"), OK),
    Case("photos_identity_check_unknown", g_photos("mp_bad/people", with_fa=True, identity_check="maybe"), REFUSED,
         "Load Source Photos", ("identity_check",)),
    # --- identity LoRA trainer: names (refused before step 1 of 10000), numbers, files it reads
    Case("train_name_empty", g_train(save_name=""), OURS, "Identity LoRA Trainer", ("save name",)),
    Case("train_name_long", g_train(save_name=LONG), OURS, "Identity LoRA Trainer", ("too long",)),
    Case("train_name_unicode", g_train(save_name="ídentität/ñame"), OURS, "Identity LoRA Trainer", ("not allowed",)),
    Case("train_name_dotdot", g_train(save_name="../../escape"), OURS, "Identity LoRA Trainer", ("not allowed",)),
    Case("train_name_absolute", g_train(save_name="/tmp/escape"), OURS, "Identity LoRA Trainer", ("not allowed",)),
    Case("train_name_reserved", g_train(save_name="mp_bad/CON"), OURS, "Identity LoRA Trainer", ("reserved",)),
    Case("train_lr_nan", g_train(learning_rate=NAN), OURS, "Identity LoRA Trainer", ("learning_rate", "finite")),
    Case("train_alpha_nan", g_train(alpha=NAN), OURS, "Identity LoRA Trainer", ("alpha",)),
    Case("train_flip_string_false", g_train(flip="false", steps=1, save_name="mp_bad/flip"),
         *bool_string("Identity LoRA Trainer"), ("flip",)),
    Case("train_steps_zero", g_train(steps=0), INVALID, "2", ("steps",)),
    Case("train_rank_string", g_train(rank="eight"), INVALID, "2", ("rank",)),
    Case("train_two_photos", g_train(images={"class_type": "RepeatImageBatch", "inputs": {"image": ["5", 0],
                                                                                          "amount": 2}}),
         OURS, "Identity LoRA Trainer", ("at least 3",)),
    Case("train_1x1_photos", g_train(images=empty(1, 1, 3)), OURS, "Identity LoRA Trainer", ("too small",)),
    Case("train_images_wrong_type", g_train(images={"class_type": "EmptyLatentImage", "inputs": {
        "width": 64, "height": 64, "batch_size": 3}}), INVALID, "2", ("images",)),
    Case("train_resume_corrupt", g_train(save_name="mp_bad/corrupt_resume", resume="auto"), OURS,
         "Identity LoRA Trainer", ("resume checkpoint", "cannot be read"),
         unchanged=("mp_bad/corrupt_resume.megaportrait-resume",)),
    Case("train_resume_empty", g_train(save_name="mp_bad/empty_resume", resume="auto"), OURS,
         "Identity LoRA Trainer", ("resume checkpoint",), unchanged=("mp_bad/empty_resume.megaportrait-resume",)),
    Case("train_resume_not_ours", g_train(save_name="mp_bad/foreign_resume", resume="auto"), OURS,
         "Identity LoRA Trainer", ("not a MegaPortrait resume checkpoint",),
         unchanged=("mp_bad/foreign_resume.megaportrait-resume",)),
    Case("train_exists_error", g_train(save_name="mp_bad/exists", if_exists="error"), OURS, "Identity LoRA Trainer",
         ("already exists",), unchanged=("mp_bad/exists.safetensors",)),
    # --- load identity LoRA: the files it reads
    Case("lora_corrupt", g_load_lora("mp_bad/corrupt.safetensors"), OURS, "Load Identity LoRA", ("corrupt.safetensors",)),
    Case("lora_empty_file", g_load_lora("mp_bad/empty.safetensors"), OURS, "Load Identity LoRA", ("empty.safetensors",)),
    Case("lora_other_family_no_metadata", g_load_lora("mp_bad/sdxl_shaped.safetensors"), OURS, "Load Identity LoRA",
         ("context",)),
    Case("lora_wrong_keys", g_load_lora("mp_bad/wrong_keys.safetensors"), OURS, "Load Identity LoRA", ("kohya",)),
    Case("lora_pickle", g_load_lora("mp_bad/pickled.ckpt"), OURS, "Load Identity LoRA", ("safetensors",)),
    Case("lora_no_metadata_ok", g_load_lora("tiny_lora.safetensors"), OK),
    Case("lora_strength_nan", g_load_lora("tiny_lora.safetensors", strength_model=NAN), OURS, "Load Identity LoRA",
         ("strength_model",)),
    Case("lora_name_path", g_load_lora("../../../etc/passwd"), INVALID, "1", ("lora_name",)),
    # --- dual-strength sampler
    Case("dual_denoise_nan", g_dual(reference_denoise=NAN), OURS, "Dual-Strength Identity Sampler",
         ("reference_denoise",)),
    Case("dual_cfg_nan", g_dual(cfg=NAN), OURS, "Dual-Strength Identity Sampler", ("cfg",)),
    Case("dual_share_string_false", g_dual(share_passes="false"), *bool_string("Dual-Strength Identity Sampler"),
         ("share_passes",)),
    Case("dual_seed_max_batch_2", g_dual(image=empty(64, 64, 2, 0x808080), seed=2 ** 64 - 1), OK),
    Case("dual_seed_beyond_max", g_dual(seed=2 ** 64), INVALID, "2", ("seed",)),
    Case("dual_size_not_multiple_of_8", g_dual(image=empty(60, 60)), OURS, "Dual-Strength Identity Sampler",
         ("multiple",)),
    Case("dual_steps_string", g_dual(steps="ten"), INVALID, "2", ("steps",)),
    Case("dual_denoise_zero", g_dual(reference_denoise=0.0), OK),
    # --- shading sampler
    Case("shading_denoise_nan", g_shading(denoise=NAN), OURS, "Shading ControlNet Sampler", ("denoise",)),
    Case("shading_strength_nan", g_shading(light_strength=NAN), OURS, "Shading ControlNet Sampler", ("light_strength",)),
    Case("shading_maps_mixed_sizes", g_shading(hf_image=empty(128, 128)), OURS, "Shading ControlNet Sampler", ("hf_map",)),
    Case("union_mode_on_a_single_purpose_controlnet", g_shading(light_control_net=["7", 0], extra_nodes={
        "7": {"class_type": "MegaPortraitUnionControlNetMode", "inputs": {"control_net": ["6", 0], "mode": "tile"}}}),
        OURS, "Union ControlNet Mode", ("not a union ControlNet",)),
    Case("union_mode_unknown", g_shading(light_control_net=["7", 0], extra_nodes={
        "7": {"class_type": "MegaPortraitUnionControlNetMode", "inputs": {"control_net": ["6", 0], "mode": "sharpen"}}}),
        INVALID, "7", ("mode",)),
    # --- shading with model-patch controls (Z-Image Fun ControlNets; ModelPatchLoader is ComfyUI 0.33's)
    Case("shading_patch_given_a_controlnet", g_shading_patch(), INVALID, "2", ("mismatch",)),
    *([Case("shading_patch_on_an_sd_model", g_shading_patch({"class_type": "ModelPatchLoader", "inputs": {
        "name": "tiny_zimage_fun_tile.safetensors"}}), OURS, "Shading Fun ControlNet Sampler",
        ("sd1.x", "control_net", "shading controlnet sampler"))] if NEW_HOST else []),
    # --- harmonize (nodes/harmonize.py)
    Case("harmonize_inpaint_model_not_inpainting", g_harmonize(inpaint_model=["10", 0]), OURS, "Harmonize",
         ("inpaint_model", "not an inpainting model")),
    Case("harmonize_fill_guidance_nan", g_harmonize(fill_guidance=NAN), OURS, "Harmonize", ("fill_guidance",)),
    Case("harmonize_cfg_nan", g_harmonize(cfg=NAN), OURS, "Harmonize", ("cfg",)),
    Case("people_ok", g_people(), OK),
    Case("people_name_with_space", g_people(name="a b"), OURS, "Add Person", ("spaces",)),
    Case("people_assignment_of_nobody", g_people(assignment="0=carol"), OURS, "Assign Faces to People",
         ("carol", "not in 'people'")),
    Case("people_threshold_nan", g_people(threshold=NAN), OURS, "Assign Faces to People", ("threshold", "finite")),
    Case("people_default_of_nobody", g_people(unknown_faces="default person", default_person="carol"), OURS,
         "Assign Faces to People", ("default_person",)),
    # (the early-2024 host does not check the types of optional links: the node refuses it)
    Case("dual_people_wrong_type", g_dual(people=["10", 0]),
         *((INVALID, "2", ("people",)) if NEW_HOST else (OURS, "Dual-Strength Identity Sampler", ("not a people",)))),
    Case("harmonize_people_not_assigned", {**g_harmonize(people=["20", 0]), "31": load("astronaut.png"), "32": fa(),
                                           "20": {"class_type": "MegaPortraitAddPerson", "inputs": {
                                               "face_analysis": ["32", 0], "name": "astro", "model": ["10", 0],
                                               "photos": ["31", 0]}}},
         OURS, "Harmonize", ("no faces assigned",)),
    Case("harmonize_seed_max_batch_2", g_harmonize(image=empty(64, 64, 2, 0x808080), seed=2 ** 64 - 1), OK),
    Case("harmonize_mask_wrong_size", g_harmonize(mask={"class_type": "SolidMask", "inputs": {
        "value": 1.0, "width": 32, "height": 32}}), OURS, "Harmonize", ("32x32",)),
    # --- whole graphs
    Case("unknown_node_type", {"1": {"class_type": "NoSuchNode", "inputs": {}}, "3": preview(["1", 0])}, INVALID, ""),
    Case("no_output_node", {"1": light(["2", 0]), "2": load("astronaut.png")}, INVALID, ""),
]


# ------------------------------------------------------------------------------------------------- fixtures
def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _astronaut() -> Image.Image:
    return Image.open(os.path.join(EXAMPLES, "astronaut.png")).convert("RGB")


def _write_inputs(inp: str) -> None:
    import synthetic_group
    astro = _astronaut()
    d = os.path.join(inp, "mp_bad")
    good = np.asarray(astro)
    raw = open(os.path.join(EXAMPLES, "astronaut.png"), "rb").read()
    os.makedirs(os.path.join(d, "truncated"), exist_ok=True)
    with open(os.path.join(d, "truncated", "truncated.png"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    _png(os.path.join(d, "truncated", "good.png"), good)
    os.makedirs(os.path.join(d, "non_image"), exist_ok=True)
    with open(os.path.join(d, "non_image", "notes.png"), "w") as f:
        f.write("not an image, just notes\n")
    os.makedirs(os.path.join(d, "corrupt"), exist_ok=True)
    with open(os.path.join(d, "corrupt", "random.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(4000))
    os.makedirs(os.path.join(d, "empty_file"), exist_ok=True)
    open(os.path.join(d, "empty_file", "zero.jpg"), "wb").close()
    _png(os.path.join(d, "fötö_ü.png"), good)
    _png(os.path.join(d, "mixed", "a.png"), good)
    _png(os.path.join(d, "mixed", "b.png"), good[100:400, 50:250])
    _png(os.path.join(d, "mixed", "c.png"), np.pad(good, ((0, 0), (200, 200), (0, 0)), mode="edge"))
    for i in range(3):
        _png(os.path.join(d, "one_pixel", f"{i}.png"), good[256:257, 256:257])
        _png(os.path.join(d, "no_face", f"{i}.png"), np.full((256, 256, 3), 120 + i, np.uint8))
    _png(os.path.join(d, "tiny_face", "small.png"), np.asarray(astro.resize((100, 100), Image.LANCZOS)))
    _png(os.path.join(d, "people", "astro_a.png"), good)
    _png(os.path.join(d, "people", "astro_b.png"), np.ascontiguousarray(good[:, ::-1]))
    _png(os.path.join(d, "people", "astro_c.png"), np.asarray(astro.resize((400, 400), Image.LANCZOS)))
    shutil.copy(os.path.join(EXAMPLES, "grace_hopper.jpg"), os.path.join(d, "people", "grace.jpg"))
    astro.convert("L").save(os.path.join(inp, "mp_bad_gray.png"))
    canvas, _ = synthetic_group.group_canvas()
    _png(os.path.join(inp, "mp_bad_group.png"), canvas)


def _write_models(models_dir: str) -> None:
    import safetensors.torch as st
    import torch
    packs = os.path.join(models_dir, "insightface", "models")
    standin = os.path.join(packs, "buffalo_l")
    for name in ("mp_bad_corrupt", "mp_bad_empty", "mp_bad_nodet", "mp_bad_norec"):
        os.makedirs(os.path.join(packs, name), exist_ok=True)
    for f in ("det_10g.onnx", "w600k_r50.onnx"):
        with open(os.path.join(packs, "mp_bad_corrupt", f), "wb") as fh:
            fh.write(np.random.default_rng(1).bytes(2048))
        open(os.path.join(packs, "mp_bad_empty", f), "wb").close()
    shutil.copy(os.path.join(standin, "w600k_r50.onnx"), os.path.join(packs, "mp_bad_nodet"))
    shutil.copy(os.path.join(standin, "det_10g.onnx"), os.path.join(packs, "mp_bad_norec"))
    loras = os.path.join(models_dir, "loras", "mp_bad")
    os.makedirs(loras, exist_ok=True)
    with open(os.path.join(loras, "corrupt.safetensors"), "wb") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": oops" + np.random.default_rng(2).bytes(500))
    open(os.path.join(loras, "empty.safetensors"), "wb").close()
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    st.save_file({f"{key}.lora_down.weight": torch.zeros(4, 2048), f"{key}.lora_up.weight": torch.zeros(32, 4),
                  f"{key}.alpha": torch.tensor(4.0)}, os.path.join(loras, "sdxl_shaped.safetensors"))
    st.save_file({"model.layer.weight": torch.zeros(4, 4)}, os.path.join(loras, "wrong_keys.safetensors"))
    with open(os.path.join(loras, "pickled.ckpt"), "wb") as f:
        f.write(b"\x80\x04\x95not really a pickle")
    with open(os.path.join(loras, "corrupt_resume.megaportrait-resume"), "wb") as f:
        f.write(np.random.default_rng(3).bytes(1000))
    open(os.path.join(loras, "empty_resume.megaportrait-resume"), "wb").close()
    st.save_file({"x": torch.zeros(2)}, os.path.join(loras, "foreign_resume.megaportrait-resume"))
    shutil.copy(os.path.join(models_dir, "loras", "tiny_lora.safetensors"), os.path.join(loras, "exists.safetensors"))


@pytest.fixture(scope="module")
def bad_server(server, models_dir):
    _write_inputs(server.input_dir)
    _write_models(models_dir)
    return server


def snapshot(roots) -> dict:
    """Every file under ``roots``: size, mtime and a hash of its content."""
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                try:
                    st = os.stat(p)
                    with open(p, "rb") as fh:
                        digest = hashlib.sha1(fh.read()).hexdigest()
                except OSError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns, digest)
    return out


def submit(server, graph) -> tuple[str, object]:
    """("invalid", /prompt's answer) | ("error", message) | ("ok", history)."""
    import comfy_server
    code, body = server.client.request("/prompt", {"prompt": graph, "client_id": "bad-input"})
    if code != 200 or (isinstance(body, dict) and body.get("node_errors")):
        if code == 200:
            server.client.wait(body["prompt_id"], timeout=300)
        return "invalid", body
    hist = server.client.wait(body["prompt_id"], timeout=300)
    msg = comfy_server.status_error(hist)
    return ("error", msg) if msg else ("ok", hist)


def check_outcome(case: Case, kind: str, payload) -> None:
    words = [w.lower() for w in case.words]
    if case.expect == INVALID:
        assert kind == "invalid", f"{case.id}: expected ComfyUI to refuse the prompt, got {kind}: {payload}"
        errors = (payload.get("node_errors") if isinstance(payload, dict) else None) or {}
        if case.node:
            assert case.node in errors, f"{case.id}: node {case.node} not in node_errors: {payload}"
            text = str(errors[case.node]).lower()
            assert errors[case.node].get("class_type") and errors[case.node].get("errors")
        else:
            text = str(payload).lower()
            assert "error" in text or "invalid" in text, payload
        for w in words:
            assert w in text, f"{case.id}: {w!r} not in {text[:2000]}"
        return
    if case.expect == REFUSED and kind == "invalid":
        assert isinstance(payload, dict) and payload.get("node_errors"), payload
        for w in words:
            assert w in str(payload).lower(), f"{case.id}: {w!r} not in {payload}"
        return
    if case.expect == OK:
        assert kind == "ok", f"{case.id}: expected success, got {kind}: {payload}"
        return
    if case.expect == CLEAR and kind == "ok":
        return
    assert kind == "error", f"{case.id}: expected an error from {case.node}, got {kind}: {str(payload)[:2000]}"
    assert f"[MegaPortrait {case.node}]" in payload, f"{case.id}: not our message: {payload}"
    # the node that raised it (ComfyUI's execution_error names its class) is named by its one title, the canvas's
    TITLES = import_pack().nodes.common.TITLES
    node_type = payload.split(" (node ", 1)[0]
    assert node_type in TITLES, f"{case.id}: the error came from {node_type}, not a MegaPortrait node: {payload}"
    assert case.node == TITLES[node_type], (f"{case.id}: {node_type} raised an error naming {case.node!r}; its title is "
                                            f"{TITLES[node_type]!r} (nodes/common.py TITLES)")
    assert " Fix: " in payload, f"{case.id}: the message gives no fix: {payload}"
    for w in words:
        assert w in payload.lower(), f"{case.id}: {w!r} not in {payload}"


def test_matrix_is_large_and_covers_every_node(pack):
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)
    used = set()
    for c in CASES:
        g = c.graph
        used |= {n["class_type"] for n in g.values()}
    missing = set(pack.NODE_CLASS_MAPPINGS) - used
    assert not missing, f"no bad-input case for {sorted(missing)}"
    # errors say the node's one title (nodes/common.py TITLES: the UI's display name without " (MegaPortrait)")
    titles = set(pack.nodes.common.TITLES.values())
    assert not {c.node for c in CASES if c.expect in (OURS, CLEAR, REFUSED) and c.node} - titles


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad_server, models_dir, case, request):
    if case.xfail:
        request.node.add_marker(pytest.mark.xfail(reason=case.xfail, strict=False))
    server = bad_server
    loras = os.path.join(models_dir, "loras")
    roots = (server.input_dir, server.output_dir, loras)
    before = snapshot(roots)
    kind, payload = submit(server, case.graph)
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    assert server.client.alive(), "the server stopped answering"
    after = snapshot(roots)
    changed = [p for p, v in before.items() if after.get(p) != v]
    assert not changed, f"{case.id} changed or removed files the user owns: {changed}"
    for rel in case.unchanged:
        assert os.path.join(loras, rel) in before
    check_outcome(case, kind, payload)
