"""Identity LoRA files: kohya-format tensors on the family's original (LDM) keys, their metadata, safe names.

A trained LoRA is ``lora_unet_<ldm key, '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (and
``lora_te[1|2]_...`` for text encoders): what the stock LoraLoader of every ComfyUI since 2023 and A1111 load.
Files are written atomically and never overwrite anything unless the user asked. No ComfyUI import here.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable

import torch

from . import families
from .common import TITLES, MegaPortraitError

ADAPTER = "megaportrait"           # the peft adapter name of the layers we train
TRAIN_KEY = "megaportrait.train_key"


# ------------------------------------------------------------------------------------- peft <-> kohya
def lora_layers(module: torch.nn.Module):
    """(name, layer) for every peft LoRA layer of our adapter in ``module``."""
    from peft.tuners.lora import LoraLayer
    for name, m in module.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in m.lora_A:
            yield name, m


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    ps = []
    for _, m in lora_layers(module):
        ps += [m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight]
    return ps


def kohya_key(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name.replace('.', '_')}"


def export_kohya(module: torch.nn.Module, prefix: str, alpha: float, dtype=torch.float32,
                 name_map: Callable[[str], str] = lambda n: n) -> dict:
    """The module's LoRA as kohya tensors: <prefix>_<key>.lora_down.weight / .lora_up.weight / .alpha."""
    out = {}
    for name, m in lora_layers(module):
        key = kohya_key(prefix, name_map(name))
        out[key + ".lora_down.weight"] = m.lora_A[ADAPTER].weight.detach().to("cpu", dtype).contiguous()
        out[key + ".lora_up.weight"] = m.lora_B[ADAPTER].weight.detach().to("cpu", dtype).contiguous()
        out[key + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def import_kohya(module: torch.nn.Module, prefix: str, sd: dict, name_map: Callable[[str], str] = lambda n: n) -> int:
    """Load kohya LoRA tensors back into the module's peft layers (for resuming). Returns layers loaded."""
    n = 0
    for name, m in lora_layers(module):
        key = kohya_key(prefix, name_map(name))
        down, up = sd.get(key + ".lora_down.weight"), sd.get(key + ".lora_up.weight")
        if down is None or up is None:
            raise KeyError(key)
        a, b = m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight
        if tuple(a.shape) != tuple(down.shape) or tuple(b.shape) != tuple(up.shape):
            raise ValueError(f"{key}: checkpoint shapes {tuple(down.shape)}/{tuple(up.shape)} "
                             f"!= {tuple(a.shape)}/{tuple(b.shape)}")
        with torch.no_grad():
            a.copy_(down)
            b.copy_(up)
        n += 1
    return n


# ------------------------------------------------------------------------------------- names and files
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-. /]+$")


def resolve_save_path(node: str, loras_dir: str, save_name: str, if_exists: str) -> tuple[str, str]:
    """(absolute path, name relative to loras_dir) for ``save_name``; never outside loras_dir, never
    overwriting unless ``if_exists`` says so."""
    name = (save_name or "").strip().replace("\\", "/")
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    bad = (not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or not _NAME_RE.match(name)
           or any(part in ("", ".", "..") or part.startswith(".") for part in name.split("/")))
    if bad:
        raise MegaPortraitError(node, f"save name {save_name!r} is not allowed.",
                                "use letters, digits, '_', '-', '.', spaces and '/' for subfolders of models/loras "
                                "(no absolute paths, no '..', no hidden names), e.g. 'megaportrait/alice'.")
    reserved = [part for part in name.split("/") if part.split(".")[0].upper() in _RESERVED]
    if reserved:
        raise MegaPortraitError(node, f"save name {save_name!r} uses the reserved name {reserved[0]!r} (Windows "
                                      "cannot create such files).", "choose another name.")
    root = os.path.realpath(loras_dir)
    _check_lengths(node, root, name)
    path = os.path.realpath(os.path.join(root, name + ".safetensors"))
    if os.path.commonpath([path, root]) != root:
        raise MegaPortraitError(node, f"save name {save_name!r} points outside models/loras.", "use a plain name.")
    if os.path.exists(path):
        if if_exists == "error":
            raise MegaPortraitError(node, f"{name}.safetensors already exists in {root}.",
                                    "choose another save_name, set if_exists to 'increment name' or 'overwrite', or load "
                                    f"it with '{TITLES['MegaPortraitLoadIdentityLora']}' to skip training.")
        if if_exists == "increment name":
            i = 1
            while os.path.exists(os.path.join(root, f"{name}_{i:05d}.safetensors")):
                i += 1
            name = f"{name}_{i:05d}"
            path = os.path.join(root, name + ".safetensors")
    return path, name + ".safetensors"


# the longest names the trainer writes for a LoRA "<name>.safetensors": its resume checkpoint's temporary file
LONGEST_SUFFIX = ".megaportrait-resume.tmp-" + "9" * 10
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _check_lengths(node: str, root: str, name: str) -> None:
    """Refuse, before any work, a name whose files (LoRA, resume checkpoint, their temporary files) the file
    system cannot create: every path component within NAME_MAX bytes, the whole path within PATH_MAX."""
    try:
        name_max = os.pathconf(root if os.path.isdir(root) else os.path.dirname(root) or ".", "PC_NAME_MAX")
        path_max = os.pathconf(root if os.path.isdir(root) else os.path.dirname(root) or ".", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    parts = name.split("/")
    longest = "." + parts[-1] + LONGEST_SUFFIX
    too_long = [p for p in parts[:-1] + [longest] if len(p.encode()) > name_max]
    if too_long or len(os.path.join(root, *parts[:-1], longest).encode()) >= path_max:
        limit = name_max - len(LONGEST_SUFFIX.encode()) - 1
        raise MegaPortraitError(node, f"save name {name!r} is too long for this file system (the trainer's files "
                                      f"for it would exceed {name_max} bytes a name).",
                                f"use at most {limit} bytes for the file name (and shorter folder names).")


def atomic_save(tensors: dict, path: str, metadata: dict) -> None:
    """Write a safetensors file through a temporary file in the same folder, then rename (no half files)."""
    import safetensors.torch as st
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        st.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_lora_metadata(path: str) -> dict:
    """The safetensors header metadata (reads the header only)."""
    import safetensors
    with safetensors.safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def load_lora_file(node: str, path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a LoRA file, with a clear error for a file that is not a readable safetensors."""
    import safetensors.torch as st
    try:
        return st.load_file(path), read_lora_metadata(path)
    except Exception as e:
        raise MegaPortraitError(node, f"{os.path.basename(path)} is not a readable safetensors file ({e}).",
                                "the file is damaged or incomplete: download or train it again.") from e


def lora_fit_problem(lora: dict, meta: dict, fam: families.Family, model_width: int, model_label: str) -> str | None:
    """Why a kohya LoRA does not fit a model of family ``fam`` (text width ``model_width``), or None: from the
    metadata's base model version, else from its keys (the family table's key rules: Flux's double/single blocks,
    Z-Image's layers; SD UNet LoRAs by their cross-attention width)."""
    trained_on = meta.get("ss_base_model_version", "")
    tf = families.by_base_model_version(trained_on)
    if tf is not None and tf.name != fam.name:
        return f"was trained on {trained_on} but this MODEL is {fam.base_model_version or fam.name} ({model_label})"
    if not fam.base_model_version:      # a family the table does not know: its keys tell nothing we can check
        return None
    key_fam, lora_dim = families.of_lora_keys(lora), lora_context_dim(lora)
    if key_fam is not None and key_fam is not fam:
        return f"is a LoRA for {key_fam.name} (from its keys) but this MODEL is {fam.name} ({model_label})"
    if key_fam is None and lora_dim and fam.lora_keys:
        return f"is a LoRA for an SD-family UNet (from its keys) but this MODEL is {fam.name} ({model_label})"
    if lora_dim and model_width and lora_dim != model_width:
        return (f"is a LoRA for {families.describe_context_dim(lora_dim)} (text context {lora_dim}) but this MODEL is "
                f"{model_label} (context {model_width})")
    return None


def lora_context_dim(sd: dict) -> int | None:
    """The text-context width a UNet LoRA was trained for, read from its cross-attention key projections
    (768: SD1.x, 1024: SD2.x, 2048: SDXL); None when it has none."""
    for k, v in sd.items():
        if k.startswith("lora_unet_") and k.endswith("attn2_to_k.lora_down.weight") and v.ndim == 2:
            return int(v.shape[1])
    return None


def find_trained(candidates: Iterable[tuple[str, str]], train_key: str) -> tuple[str, str, dict] | None:
    """The first (name, path, metadata) among ``candidates`` ((name, path) pairs) whose metadata carries
    ``train_key``: a LoRA trained earlier from the same photos, base model and settings. Unreadable files are
    skipped (they are not ours to judge here)."""
    for name, path in candidates:
        if not path.endswith(".safetensors") or not os.path.isfile(path):
            continue
        try:
            meta = read_lora_metadata(path)
        except Exception:
            continue
        if meta.get(TRAIN_KEY) == train_key:
            return name, path, meta
    return None


def losses_from_metadata(meta: dict) -> list[float]:
    try:
        return [float(v) for v in json.loads(meta.get("megaportrait.losses", "[]"))]
    except (TypeError, ValueError):
        return []
