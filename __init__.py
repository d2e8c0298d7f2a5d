"""MegaPortrait for ComfyUI: portrait personalisation after "Revisiting Diffusion Control for High-fidelity
Portrait Generation" (arXiv 2411.04357). ComfyUI imports this file; the nodes live in ``nodes/``."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# Served at /extensions/<pack folder>/ (ComfyUI 0.3+): the node help pages, web/docs/<NodeClass>.md and
# web/docs/<NodeClass>/<locale>.md, that the frontend's node help panel asks for. No JavaScript lives there.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
