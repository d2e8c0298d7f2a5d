"""MegaPortrait nodes, one module per pipeline stage (see README):

    face_analysis     FACE_ANALYSIS (dlib / insightface), identity similarity
    face_crop         aligned reference face crop, FACE_CROP
    source_photos     the source person's photos as one square batch
    identity_lora     stage 1, training: the Identity Net LoRA
    identity_sampler  stage 1, inference: dual-strength (reference-like / source-like) sampler
    maps              stage 2: light map / HF map
    shading           stage 3: Shading Net (two ControlNets)
    paste_back        stage 4: landmark-aligned paste-back, face and seam masks
    harmonize         stage 5: Harmonization Net (masked inpainting)
    people            several people in one photo: PEOPLE, each face with its own person's model
    common, deps, sampling   shared helpers
    image_ops         the image operations every stage shares (masks, resizing, channels, colour)
    align, face_search       face geometry, and where the detectors look
"""
from __future__ import annotations

import importlib

from . import deps
from .common import display_name, log

STAGE_MODULES = ("face_analysis", "face_crop", "source_photos", "identity_lora", "identity_sampler", "maps",
                 "shading", "paste_back", "harmonize", "people")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
LOAD_ERRORS: dict = {}

for _name in STAGE_MODULES:
    try:
        _mod = importlib.import_module(f".{_name}", __name__)
    except ImportError as _e:   # a missing *required* package disables that stage's nodes, never the whole pack
        LOAD_ERRORS[_name] = str(_e)
        log.error("MegaPortrait: the '%s' nodes are disabled: %s (install the pack's requirements.txt into "
                  "ComfyUI's Python)", _name, _e)
        continue
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update({k: display_name(k) for k in _mod.NODE_CLASS_MAPPINGS})   # common.TITLES

MISSING_OPTIONAL = deps.report()
