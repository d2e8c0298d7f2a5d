"""MegaPortrait nodes, one module per pipeline stage (see README):

    deps      optional-dependency report (logged once at load)
    maps      stage 2: light map / HF map
"""
from __future__ import annotations

import importlib

from . import deps
from .common import log

STAGE_MODULES = ("face_analysis", "face_crop", "source_photos", "identity_lora", "maps", "paste_back")

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
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

MISSING_OPTIONAL = deps.report()
