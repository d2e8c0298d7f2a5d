"""A forced partial (low-VRAM) load of the MODEL the identity LoRA trainer trains on, for the tests and the bench.

The CPU never loads a model partly by itself; a GPU does when the model does not fit. This makes the trainer's load
(``comfy_compat.load_models``) end with ComfyUI's own low-VRAM load of the MODEL at a budget of ``fraction`` of its
size, the way ``load_models_gpu`` loads a model that does not fit: the layers left out cast their weights per call.
Used by tests/test_trainer_conditions.py and bench/bench_trainer.py (saved-for-backward bytes).
"""
from __future__ import annotations

import contextlib


def load_partly(patcher, fraction: float) -> int:
    """ComfyUI's own low-VRAM load of ``patcher`` with a budget of ``fraction`` of its size; returns how many of its
    modules cast their weights per call (the layers left out). ``ModelPatcher.load(lowvram_model_memory=)`` came
    in 2024; the early-2024 host has ``patch_model_lowvram``."""
    budget = int(patcher.model_size() * fraction)
    if hasattr(patcher, "patch_model_lowvram"):                 # early 2024
        patcher.patch_model_lowvram(patcher.load_device, budget)
    else:                                                       # since 2024
        patcher.load(patcher.load_device, lowvram_model_memory=budget)
    return sum(bool(getattr(m, "comfy_cast_weights", False)) for m in patcher.model.modules())


@contextlib.contextmanager
def forced_partial_load(fraction: float):
    """Within the block, the trainer's load of the MODEL (the first patcher it loads) ends partly loaded at
    ``fraction``; yields a dict whose ``cast`` is the number of layers the last such load left out."""
    from comfyui_megaportrait.nodes import comfy_compat
    real = comfy_compat.load_models
    state = {"cast": 0}

    def load(patchers, memory_required):
        real(patchers, memory_required)
        state["cast"] = load_partly(patchers[0], fraction)

    comfy_compat.load_models = load
    try:
        yield state
    finally:
        comfy_compat.load_models = real
