"""Identity LoRA trainer vs a plain peft training loop on the same tiny UNet (same data, targets, rank, optimizer,
batch, steps), each in its own process: steps/s and peak memory.

    python bench_trainer.py [--steps N] [--resolution PX]          # runs both variants, prints one RESULT line

Speed: both loops in one process, interleaved, best of 3 each (median step time of each run). Memory: peak RSS
of one fresh process per loop.
"""
from __future__ import annotations

import argparse
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


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def steps_per_s(stamps: list) -> float:
    """1 / the median step time (step times from consecutive timestamps after the first 10% as warm-up): robust to a
    shared machine's hiccups, which a mean over the run is not."""
    dts = [b - a for a, b in zip(stamps, stamps[1:])][len(stamps) // 10:] or [float("nan")]
    return 1.0 / statistics.median(dts)


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


def run_ours(steps: int, resolution: int, batch: int) -> dict:
    m, c, v, photos = setup(resolution)
    from comfyui_megaportrait.nodes import lora_comfy as lc
    from comfyui_megaportrait.nodes import lora_training as lt
    base_rss = rss_mb()
    stamps = []
    cfg = lt.TrainConfig(steps=steps, learning_rate=1e-4, rank=8, alpha=8, batch_size=batch, resolution=resolution,
                         flip=False)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mp-bench-{os.getpid()}.safetensors")
    with torch.inference_mode():
        lc.train_identity_lora("bench", m, c, v, photos, "photo of sks person", cfg, path, resume="off",
                               checkpoint_every=0, on_progress=lambda s, l, ls: stamps.append(time.perf_counter()))
    return {"steps_per_s": steps_per_s(stamps), "rss_base_mb": base_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_peft(steps: int, resolution: int, batch: int) -> dict:
    """The textbook loop: UNet copy + peft LoRA, DDPM noise at uniform timesteps, epsilon MSE, AdamW."""
    m, c, v, photos = setup(resolution)
    from comfyui_megaportrait.nodes import comfy_compat
    from comfyui_megaportrait.nodes import lora_training as lt
    base_rss = rss_mb()
    with torch.inference_mode(False), torch.enable_grad():
        unet = copy.deepcopy(m.model.diffusion_model)     # the textbook way: a trainable copy of the UNet
        lt.clone_norm_inputs(unet, comfy_compat.residual_inplace_norms())   # in-place residuals (CLIP, early 2024)
        unet.requires_grad_(False)
        lt.inject_lora(unet, lt.UNET_TARGETS["attention"], 8, 8, 0)
        params = lt.lora_parameters(unet)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
        with torch.no_grad():
            lat = (v.encode(photos) * 0.18215).detach().clone()
            cond = c.encode_from_tokens(c.tokenize("photo of sks person")).detach().clone()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        acp = torch.cumprod(1 - betas, 0).float()
        gen = torch.Generator().manual_seed(1)
        stamps = []
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
            stamps.append(time.perf_counter())
    return {"steps_per_s": steps_per_s(stamps), "rss_base_mb": base_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_speed(steps: int, resolution: int, batch: int, rounds: int = 3) -> dict:
    """Both loops in one process, interleaved, best of ``rounds`` each: separate processes differ by up to 30% on a
    shared machine (memory layout, neighbours), which would swamp a comparison of two equal loops."""
    best = {"ours": 0.0, "peft": 0.0}
    for r in range(rounds):
        for variant in (("peft", "ours") if r % 2 == 0 else ("ours", "peft")):
            fn = run_ours if variant == "ours" else run_peft
            best[variant] = max(best[variant], fn(steps, resolution, batch)["steps_per_s"])
    return best


def _subprocess(args, variant: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                          "--resolution", str(args.resolution), "--batch", str(args.batch)],
                         capture_output=True, text=True, env=dict(os.environ))
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("VARIANT:")]
    if not line:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(line[0][8:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=("ours", "peft", "speed"))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    if args.variant:
        if args.variant == "speed":
            res = run_speed(args.steps, args.resolution, args.batch)
        else:
            res = (run_ours if args.variant == "ours" else run_peft)(args.steps, args.resolution, args.batch)
        print("VARIANT:" + json.dumps(res), flush=True)
        return
    from common import emit, machine
    mem = {v: _subprocess(args, v) for v in ("peft", "ours")}     # peak memory: one fresh process each
    speed = _subprocess(args, "speed")
    ours, peft = mem["ours"], mem["peft"]
    emit({"section": "trainer", "machine": machine(), "config": vars(args),
          "rows": [{"op": f"identity LoRA training, tiny SD1.5-shaped UNet, {args.resolution} px, batch {args.batch}, "
                          f"rank 8 attention",
                    "ours_steps_per_s": speed["ours"], "peft_steps_per_s": speed["peft"],
                    "speed_ratio": speed["ours"] / speed["peft"],
                    "ours_peak_rss_mb": ours["peak_rss_mb"], "peft_peak_rss_mb": peft["peak_rss_mb"],
                    "ours_train_mb": ours["peak_rss_mb"] - ours["rss_base_mb"],
                    "peft_train_mb": peft["peak_rss_mb"] - peft["rss_base_mb"],
                    "memory_ratio": ours["peak_rss_mb"] / peft["peak_rss_mb"]}]})


if __name__ == "__main__":
    main()
