"""Custom-node folder used only by smoke runs and tests: registers the tiny random model family in the
ComfyUI process (see ../tiny_models.py). Provides no nodes."""
import os
import sys

_tools = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if _tools not in sys.path:
    sys.path.insert(0, _tools)
import tiny_models  # noqa: E402

tiny_models.register()
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
