"""Identity LoRA trainer vs a plain peft training loop and vs ComfyUI's own TrainLoraNode (ComfyUI >= 0.3.x with
comfy_extras/nodes_train.py; "not available" on the early-2024 host) on the same tiny SD1.5 checkpoint, photos,
prompt, rank, batch and steps: seconds per step and peak memory.

    python bench_trainer.py [--steps N] [--resolution PX] [--rounds R]   # every variant, prints one RESULT line
    python bench_trainer.py --dry-run                                   # the same code in one process, tiny sizes

Speed: the variants in one process, interleaved, best of ``rounds`` each (median step time of each run, step times
from an optimizer step hook), by the wall clock and by the process's CPU time (what a loaded machine disturbs least). Memory: peak RSS of one fresh process per variant. The TrainLoraNode runs with fp32
weights and LoRA (a CPU has no fast bf16), its default LoRA algorithm, no gradient checkpointing (our default);
it puts a LoRA on every layer and trains the norms and biases too (it has no choice of layers), ours and the peft
loop on the attention projections: the "trainable parameters" row says how many each trains.

Rows ({"op", "unit", "ours", "refs": [{"name", "value", "ratio"} or {"name", "note"}]}) are rendered by run.py
(one column per reference name), so a new measurement is one more row.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

PROMPT = "photo of sks person"
RANK = 8
VARIANTS = ("peft", "ours", "comfy")
NAMES = {"peft": "plain peft loop", "comfy": "ComfyUI TrainLoraNode"}
NOT_AVAILABLE = "not available on this ComfyUI"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def steps_per_s(stamps: list, clock: int = 0) -> float:
    """1 / the median step time (step times from consecutive timestamps after the first 10% as warm-up): robust to a
    shared machine's hiccups, which a mean over the run is not. ``clock`` 0: wall time, 1: the process's CPU time."""
    dts = [b[clock] - a[clock] for a, b in zip(stamps, stamps[1:])][len(stamps) // 10:] or [float("nan")]
    return 1.0 / statistics.median(dts)


def speeds(stamps: list) -> dict:
    """Steps per second of wall time, and of the process's CPU time (all its threads): on a loaded machine the wall
    clock also counts the time other processes hold the cores, the CPU clock only the loop's own work."""
    return {"steps_per_s": steps_per_s(stamps, 0), "cpu_steps_per_s": steps_per_s(stamps, 1)}


@contextlib.contextmanager
def step_stamps(steps: int):
    """(wall, CPU) timestamps of every optimizer step taken inside the block (torch's global step hook: the same
    clocks for all three loops, none of them changed to be timed)."""
    stamps = []
    handle = register_optimizer_step_post_hook(lambda *a: stamps.append((time.perf_counter(), time.process_time())))
    try:
        yield stamps
    finally:
        handle.remove()
    if len(stamps) != steps:
        raise RuntimeError(f"{len(stamps)} optimizer steps for {steps} training steps")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def numel(tensors) -> int:
    return sum(int(t.numel()) for t in tensors)


@functools.cache      # read only: the speed run's rounds share one ComfyUI, model and photos
def setup(resolution: int):
    from common import comfy, pack
    h = comfy()
    pack()
    with torch.inference_mode():
        m, c, v = h.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
    g = torch.Generator().manual_seed(0)
    photos = torch.rand(6, resolution, resolution, 3, generator=g)
    return m, c, v, photos


def comfy_trainer():
    """ComfyUI's own TrainLoraNode class, or None on a ComfyUI without it (early 2024)."""
    from common import comfy
    return comfy().nodes.NODE_CLASS_MAPPINGS.get("TrainLoraNode")


def run_ours(steps: int, resolution: int, batch: int) -> dict:
    m, c, v, photos = setup(resolution)
    from comfyui_megaportrait.nodes import lora_comfy as lc
    from comfyui_megaportrait.nodes import lora_training as lt
    base_rss = rss_mb()
    cfg = lt.TrainConfig(steps=steps, learning_rate=1e-4, rank=RANK, alpha=RANK, batch_size=batch,
                         resolution=resolution, flip=False)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mp-bench-{os.getpid()}.safetensors")
    with torch.inference_mode(), step_stamps(steps) as stamps:
        lora_sd = lc.train_identity_lora("bench", m, c, v, photos, PROMPT, cfg, path, resume="off",
                                         checkpoint_every=0)[0]
    return {**speeds(stamps), "rss_base_mb": base_rss, "peak_rss_mb": peak_rss_mb(),
            "params": numel(t for k, t in lora_sd.items() if not k.endswith(".alpha"))}


def run_peft(steps: int, resolution: int, batch: int) -> dict:
    """The textbook loop: UNet copy + peft LoRA, DDPM noise at uniform timesteps, epsilon MSE, AdamW."""
    m, c, v, photos = setup(resolution)
    from comfyui_megaportrait.nodes import comfy_compat
    from comfyui_megaportrait.nodes import lora_training as lt
    base_rss = rss_mb()
    with torch.inference_mode(False), torch.enable_grad(), step_stamps(steps) as stamps:
        unet = copy.deepcopy(m.model.diffusion_model)     # the textbook way: a trainable copy of the UNet
        lt.clone_norm_inputs(unet, comfy_compat.residual_inplace_norms())   # in-place residuals (CLIP, early 2024)
        unet.requires_grad_(False)
        lt.inject_lora(unet, lt.UNET_TARGETS["attention"], RANK, RANK, 0)
        params = lt.lora_parameters(unet)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
        with torch.no_grad():
            lat = (v.encode(photos) * 0.18215).detach().clone()
            cond = c.encode_from_tokens(c.tokenize(PROMPT)).detach().clone()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        acp = torch.cumprod(1 - betas, 0).float()
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            idx = torch.randint(0, lat.shape[0], (batch,), generator=gen)
            x0 = lat[idx]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, 1000, (batch,), generator=gen)
            a = acp[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            eps = unet(xt, t.float(), context=cond.expand(batch, -1, -1))
            loss = torch.nn.functional.mse_loss(eps.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    return {**speeds(stamps), "rss_base_mb": base_rss, "peak_rss_mb": peak_rss_mb(),
            "params": numel(params)}


def run_comfy(steps: int, resolution: int, batch: int) -> dict | None:
    """ComfyUI's TrainLoraNode as a graph runs it: VAE Encode and CLIP Text Encode of the same photos and prompt,
    then the node (inputs as lists: it is an input-list node). None where this ComfyUI has no such node."""
    node = comfy_trainer()
    if node is None:
        return None
    from common import comfy
    n = comfy().nodes
    m, c, v, photos = setup(resolution)
    base_rss = rss_mb()
    with torch.inference_mode():        # as ComfyUI's executor runs nodes
        latents = n.VAEEncode().encode(v, photos)[0]
        positive = n.CLIPTextEncode().encode(c, PROMPT)[0]
        args = {"model": m, "latents": latents, "positive": positive, "batch_size": batch, "steps": steps,
                "grad_accumulation_steps": 1, "learning_rate": 1e-4, "rank": RANK, "optimizer": "AdamW",
                "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32",
                "quantized_backward": False, "algorithm": "LoRA", "gradient_checkpointing": False,
                "checkpoint_depth": 1, "offloading": False, "existing_lora": "[None]", "bucket_mode": False,
                "bypass_mode": False}
        with step_stamps(steps) as stamps:
            out = node.execute(**{k: [x] for k, x in args.items()})
    lora = (out.result if hasattr(out, "result") else out)[0]
    return {**speeds(stamps), "rss_base_mb": base_rss, "peak_rss_mb": peak_rss_mb(),
            "params": numel(lora.values())}


RUNS = {"ours": run_ours, "peft": run_peft, "comfy": run_comfy}


def run_saved_bytes(resolution: int, batch: int, fraction: float = 0.4) -> dict:
    """Bytes autograd keeps for backward in one training step (each storage once, the model's own weights left out),
    fully loaded and with ComfyUI's own low-VRAM load forced at ``fraction`` of the model (the CPU never loads partly
    by itself): a layer left out casts its weight per call, and the trainer must keep no copy of it."""
    m, c, v, photos = setup(resolution)
    import comfy.model_management as mm
    from comfyui_megaportrait.nodes import lora_comfy as lc
    from comfyui_megaportrait.nodes import lora_training as lt
    from partial_load import forced_partial_load
    cfg = lt.TrainConfig(steps=1, learning_rate=1e-4, rank=RANK, alpha=RANK, batch_size=batch, resolution=resolution,
                         flip=False)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mp-bench-bytes-{os.getpid()}.safetensors")
    out = {"weights": sum(t.numel() * t.element_size() for t in m.model.diffusion_model.parameters())}
    for name in ("full", "partial"):
        mm.unload_all_models()
        load = forced_partial_load(fraction) if name == "partial" else contextlib.nullcontext()
        with load, lt.saved_for_backward(exclude=list(m.model.parameters()) + list(m.model.buffers())) as saved, \
                torch.inference_mode():
            lc.train_identity_lora("bench", m, c, v, photos[:batch], PROMPT, cfg, path, resume="off",
                                   checkpoint_every=0)
        out[name] = saved["bytes"]
    mm.unload_all_models()
    return out


def run_speed(steps: int, resolution: int, batch: int, rounds: int = 3) -> dict:
    """The loops in one process, interleaved, best of ``rounds`` each (wall and CPU clock): separate processes differ
    by up to 30% on a shared machine (memory layout, neighbours), which would swamp a comparison of two equal loops."""
    best = {clock: {v: 0.0 for v in VARIANTS} for clock in ("steps_per_s", "cpu_steps_per_s")}
    for r in range(rounds):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            res = RUNS[variant](steps, resolution, batch)
            for clock, b in best.items():
                b[variant] = None if res is None else max(b[variant], res[clock])
    return best


def _subprocess(args, variant: str) -> dict | None:
    out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                          "--resolution", str(args.resolution), "--batch", str(args.batch),
                          "--rounds", str(args.rounds)],
                         capture_output=True, text=True, env=dict(os.environ))
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("VARIANT:")]
    if not line:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(line[0][8:])


def rows(speed: dict, mem: dict) -> list[dict]:
    """One row per measurement: ours, and each reference with ours / reference (a missing variant: a note)."""
    def row(op, unit, value):
        refs = []
        for v in ("peft", "comfy"):
            ref = value(v)
            refs.append({"name": NAMES[v], "note": NOT_AVAILABLE} if ref is None else
                        {"name": NAMES[v], "value": ref, "ratio": value("ours") / ref})
        return {"op": op, "unit": unit, "ours": value("ours"), "refs": refs}
    m = {v: mem.get(v) for v in VARIANTS}
    return [row("seconds per step (wall clock)", "s", lambda v: speed["steps_per_s"][v] and 1.0 / speed["steps_per_s"][v]),
            row("CPU seconds per step (the process's own work)", "s",
                lambda v: speed["cpu_steps_per_s"][v] and 1.0 / speed["cpu_steps_per_s"][v]),
            row("peak RSS of the process", "MB", lambda v: m[v] and m[v]["peak_rss_mb"]),
            row("of which training (peak - RSS before it)", "MB",
                lambda v: m[v] and m[v]["peak_rss_mb"] - m[v]["rss_base_mb"]),
            row("trainable parameters", "", lambda v: m[v] and m[v]["params"])] + saved_rows(mem.get("saved_bytes"))


def saved_rows(saved: dict | None) -> list[dict]:
    if not saved:
        return []
    mb = 1024 ** 2
    return [{"op": "bytes saved for backward in one step, partly loaded (40% resident) vs fully loaded", "unit": "MB",
             "ours": saved["partial"] / mb, "refs": [{"name": "fully loaded", "value": saved["full"] / mb,
                                                      "ratio": saved["partial"] / max(saved["full"], 1)}]},
            {"op": "bytes saved for backward in one step, fully loaded, vs the UNet's weights", "unit": "MB",
             "ours": saved["full"] / mb, "refs": [{"name": "the weights", "value": saved["weights"] / mb,
                                                   "ratio": saved["full"] / max(saved["weights"], 1)}]}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=(*VARIANTS, "speed"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes, every variant once in this one process (tests: the code runs, no numbers)")
    args = ap.parse_args()
    if args.dry_run:
        args.steps, args.resolution, args.rounds = 3, 64, 1
    if args.variant:
        res = (run_speed(args.steps, args.resolution, args.batch, args.rounds) if args.variant == "speed"
               else RUNS[args.variant](args.steps, args.resolution, args.batch))
        print("VARIANT:" + json.dumps(res), flush=True)
        return
    from common import emit, machine
    if args.dry_run:
        mem = {v: RUNS[v](args.steps, args.resolution, args.batch) for v in VARIANTS}
        speed = {clock: {v: r and r[clock] for v, r in mem.items()} for clock in ("steps_per_s", "cpu_steps_per_s")}
    else:
        mem = {v: _subprocess(args, v) for v in VARIANTS}     # peak memory: one fresh process each
        speed = _subprocess(args, "speed")
    mem["saved_bytes"] = run_saved_bytes(args.resolution, args.batch)
    emit({"section": "trainer", "machine": machine(), "config": vars(args), "dry_run": args.dry_run,
          "model": f"tiny SD1.5-shaped checkpoint, 6 photos at {args.resolution} px, batch {args.batch}, rank {RANK}, "
                   f"{args.steps} steps (ours and peft: attention layers; TrainLoraNode: every layer, fp32)",
          "rows": rows(speed, mem)})


if __name__ == "__main__":
    main()
