"""MegaPortrait for ComfyUI: portrait personalisation after "Revisiting Diffusion Control for High-fidelity
Portrait Generation" (arXiv 2411.04357). ComfyUI imports this file; the nodes live in ``nodes/``."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
