"""Shared benchmark plumbing: a real ComfyUI in-process with this pack and the tiny models, timers, machine facts."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(REPO, "tests"), os.path.join(REPO, "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)
COMFY_ROOT = os.path.abspath(os.environ.get("MEGAPORTRAIT_COMFYUI") or os.path.join(REPO, ".host", "ComfyUI"))
EXAMPLES = os.path.join(REPO, "example_inputs")


def machine() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "comfyui": COMFY_ROOT}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timeit(fn, repeat: int = 7, warmup: int = 1) -> dict:
    """Wall time of fn() in seconds after warm-up runs: min (best of ``repeat``, what the tables report: the least
    disturbed by other work on a shared machine) and median."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeat}


def timeit_pair(ours, reference, repeat: int = 7, warmup: int = 1) -> tuple[dict, dict]:
    """timeit() for two functions run alternately (A B B A ...), so that a burst of other work on a shared machine
    hits both sides of a ratio instead of one. Each result also carries the run times ("times_s"); ratio() of the
    two is the median of the ratios of neighbouring runs, which cancels the machine's drift between them."""
    for _ in range(warmup):
        ours()
        reference()
    times = ([], [])
    fns = (ours, reference)
    for i in range(repeat):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return tuple({"median_s": statistics.median(t), "min_s": min(t), "runs": repeat, "times_s": t} for t in times)


def ratio(ours: dict, reference: dict) -> float:
    """ours / reference: the median of the paired run ratios when both come from timeit_pair, else of the best times."""
    a, b = ours.get("times_s"), reference.get("times_s")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return ours["min_s"] / reference["min_s"]


def size_workflow(prompt: dict, size: int, steps: int) -> dict:
    """Set an API workflow's face-crop / harmonizer working size and its three samplers' steps (in place)."""
    for n in prompt.values():
        ct, inp = n["class_type"], n["inputs"]
        if ct == "MegaPortraitFaceCrop":
            inp["crop_size"] = size
        elif ct in ("MegaPortraitDualStrengthIdentitySampler", "MegaPortraitShadingSampler",
                    "MegaPortraitShadingSamplerModelPatch", "MegaPortraitHarmonize"):
            inp["steps"] = steps
            if ct == "MegaPortraitHarmonize":
                inp["working_resolution"] = size
    return prompt


def shipped_workflow(name: str, size: int, steps: int, inputs: dict) -> dict:
    """The shipped API workflow ``name`` with each node's inputs updated from ``inputs[class_type]`` (a dict, or a
    function of the node's inputs that returns one), sized by size_workflow()."""
    with open(os.path.join(REPO, "workflows", "api", name + ".json")) as f:
        prompt = json.load(f)
    for n in prompt.values():
        new = inputs.get(n["class_type"])
        if new is not None:
            n["inputs"].update(new(n["inputs"]) if callable(new) else new)
    return size_workflow(prompt, size, steps)


_h = None


def comfy():
    """The in-process ComfyUI harness with this pack and tiny models (created once per process)."""
    global _h
    if _h is not None:
        return _h
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import comfy_harness
    comfy_harness.import_comfy(COMFY_ROOT)
    h = comfy_harness.Harness(COMFY_ROOT)
    import tiny_models
    tiny_models.register()
    work = tempfile.mkdtemp(prefix="mp-bench-")
    models = os.path.join(work, "models")
    tiny_models.write_all(models)
    for kind in ("checkpoints", "controlnet", "loras", "vae"):
        h.folder_paths.add_model_folder_path(kind, os.path.join(models, kind))
        paths = h.folder_paths.folder_names_and_paths[kind][0]
        paths.insert(0, paths.pop(paths.index(os.path.join(models, kind))))
    for sub in ("input", "output", "temp", "custom_nodes"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    h.folder_paths.set_output_directory(os.path.join(work, "output"))
    h.folder_paths.set_input_directory(os.path.join(work, "input"))
    h.folder_paths.set_temp_directory(os.path.join(work, "temp"))
    os.symlink(REPO, os.path.join(work, "custom_nodes", "comfyui-megaportrait"))
    h.load_custom_nodes(os.path.join(work, "custom_nodes"))
    import shutil
    for name in os.listdir(EXAMPLES):
        if name.endswith((".png", ".jpg")):
            shutil.copy(os.path.join(EXAMPLES, name), os.path.join(work, "input"))
    h.work = work
    _h = h
    return h


def pack():
    import conftest
    return conftest.import_pack()


class GpuRows:
    """Rows of a GPU section ({"op", "value"}) and peak VRAM between marks ("n/a (CPU)" without CUDA)."""

    def __init__(self, cuda: bool):
        self.cuda, self.rows = cuda, []

    def add(self, op: str, value: str) -> None:
        self.rows.append({"op": op, "value": value})

    def peak_reset(self) -> None:
        import torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> str:
        import torch
        return f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GB" if self.cuda else "n/a (CPU)"


def gpu_section(section: str, family: str, supported: str, folders: tuple) -> tuple | None:
    """Start a family's GPU section (bench_gpu_flux, bench_gpu_zimage): without CUDA and without ``--cpu-dry-run``,
    or on a ComfyUI where ``tiny_models.<supported>()`` is false, emit the skipped section and return None; else
    the harness, its models folder with ``folders`` registered first, whether this is the CPU dry run, and the
    section's GpuRows."""
    import argparse

    import torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-dry-run", action="store_true")
    cuda = torch.cuda.is_available()
    if not cuda and not ap.parse_args().cpu_dry_run:
        emit({"section": section, "machine": machine(), "rows": [], "skipped": f"No GPU on this machine: {family} "
              "GPU mode not measured (it runs whenever CUDA is available)."})
        return None
    h = comfy()
    pack()
    import tiny_models
    if not getattr(tiny_models, supported)():
        emit({"section": section, "machine": machine(), "rows": [], "skipped": f"this ComfyUI has no {family}"})
        return None
    models = os.path.join(h.work, "models")
    for sub in folders:
        os.makedirs(os.path.join(models, sub), exist_ok=True)
        h.folder_paths.add_model_folder_path(sub, os.path.join(models, sub), is_default=True)
    return h, models, not cuda, GpuRows(cuda)


def ksampler_rate(out: GpuRows, model, positive, negative, latent: dict, steps: int, sampler: str, cfg: float = 1.0,
                  scheduler: str = "simple") -> float:
    """KSampler it/s after a one-step warm-up that loads the model; the peak VRAM mark is reset after the warm-up."""
    import torch

    import nodes
    nodes.KSampler().sample(model, 0, 1, cfg, sampler, scheduler, positive, negative, latent)
    out.peak_reset()
    t0 = time.perf_counter()
    nodes.KSampler().sample(model, 0, steps, cfg, sampler, scheduler, positive, negative, latent)
    if out.cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def training_rate(train, *args, **kwargs) -> float:
    """Steps per second of ``train(*args, on_progress=..., **kwargs)`` (a training run, e.g. train_identity_lora),
    between its first and last progress call."""
    stamps = []
    train(*args, on_progress=lambda step, loss, losses: stamps.append(time.perf_counter()), **kwargs)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def workflow_seconds(h, prompt: dict, out: GpuRows) -> float:
    """Seconds of a shipped workflow's second run: the first trains its identity LoRA, the second reuses it (the
    pipeline itself); the peak VRAM mark is reset between them."""
    h.run(prompt)
    out.peak_reset()
    t0 = time.perf_counter()
    h.run(prompt)
    return time.perf_counter() - t0


def emit(result: dict) -> None:
    """Section scripts print one JSON line prefixed with RESULT: for bench/run.py."""
    print("RESULT:" + json.dumps(result), flush=True)
