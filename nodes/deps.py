"""Which optional dependencies are importable, checked without importing them (cheap at ComfyUI start-up).

The pack always loads; a feature whose packages are missing says so once in the log here and, when used,
raises an error that names the package to install (``common.require``).
"""
from __future__ import annotations

import importlib.util

from .common import log

# feature -> (python modules, pip names)
FEATURES = {
    "dlib face backend": (("dlib", "face_recognition_models"), ("dlib-bin", "face-recognition-models==0.3.0")),
    "insightface face backend": (("insightface", "onnxruntime"), ("insightface", "onnxruntime-gpu (or onnxruntime)")),
    "identity LoRA training": (("peft",), ("peft",)),
    "OpenCV image ops": (("cv2",), ("opencv-python",)),
    "kornia image ops": (("kornia",), ("kornia",)),
}


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_features() -> dict[str, list[str]]:
    """feature -> pip names to install, for every feature with a missing module."""
    out = {}
    for feature, (modules, pips) in FEATURES.items():
        missing = [pip for mod, pip in zip(modules, pips) if not available(mod)]
        if missing:
            out[feature] = missing
    return out


def report() -> dict[str, list[str]]:
    missing = missing_features()
    if missing:
        parts = [f"{feature} (pip install {' '.join(p.split(' ')[0] for p in pips)})" for feature, pips in missing.items()]
        log.warning("MegaPortrait: loaded; unavailable until installed: %s", "; ".join(parts))
    return missing
