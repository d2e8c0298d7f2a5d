"""Custom-node folder used only by smoke runs and tests: registers the tiny random model families in the
ComfyUI process (see ../tiny_models.py): the tiny SD1.5 / SDXL checkpoints and, on a ComfyUI with Flux, the tiny
clip_l + T5 pair that DualCLIPLoader (type flux) then builds at their size, and on a ComfyUI with Z-Image the tiny
Z-Image model config, Qwen3 text encoder and Fun ControlNets (tiny_models.register_zimage). Provides no nodes.

With MEGAPORTRAIT_MODELS_FIRST=<dir> set, model folders under <dir> are moved to the front of ComfyUI's search
lists, so files the pack writes (identity LoRAs) land in that scratch folder instead of ComfyUI/models."""
import os
import sys

_tools = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if _tools not in sys.path:
    sys.path.insert(0, _tools)
import tiny_models  # noqa: E402

tiny_models.register()

_first = os.environ.get("MEGAPORTRAIT_MODELS_FIRST")
if _first:
    import folder_paths
    root = os.path.realpath(_first)
    for _kind, (_paths, _exts) in folder_paths.folder_names_and_paths.items():
        ours = [p for p in _paths if os.path.realpath(p).startswith(root + os.sep)]
        _paths[:] = ours + [p for p in _paths if p not in ours]

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
