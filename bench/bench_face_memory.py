"""Peak memory of Face Crop and Paste Back on a huge image (8000x8000 by default), against the image's float size.

Goal (issue 12): at most 3x the image's float32 size (8000x8000x3: 768 MB). Each measurement runs in a fresh
child process: the image is made first, then the peak resident size is reset (Linux: /proc/self/clear_refs) and
the node function runs; the peak minus the resident size before it is the node's memory. The picture is a gray
canvas with the Grace Hopper portrait enlarged so the face is about a sixth of the side; faces are searched from
``MIN_FACE`` px (the detector's own tiles are the same at any min_face; a smaller one only costs time).

    python bench/bench_face_memory.py                  # both nodes at 8000 px, RESULT: line for bench/run.py
    python bench/bench_face_memory.py --one crop --size 4000   # one measurement, JSON on stdout (the test uses it)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_FACE = 128
LIMIT = 3.0


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


class PeakRSS:
    """Peak resident size while the block runs: the kernel's high-water mark after a reset, or (where it cannot be
    reset) /proc/self/status sampled every millisecond."""

    def __enter__(self):
        self.before = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.sampler = None
        except OSError:
            self.samples = [self.before]
            self.stop = threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.samples.append(_status("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.sampler is None:
            self.peak = _status("VmHWM")
        else:
            self.stop.set()
            self.sampler.join()
            self.peak = max(self.samples + [_status("VmRSS")])
        self.delta = self.peak - self.before
        return False


def picture(size: int):
    """float32 [1, size, size, 3]: gray canvas, the portrait enlarged in the middle (made in place, no extra copy)."""
    import numpy as np
    import torch
    from PIL import Image
    img = torch.full((1, size, size, 3), 0.5, dtype=torch.float32)
    with Image.open(os.path.join(os.path.dirname(HERE), "example_inputs", "grace_hopper.jpg")) as im:
        w = size // 3
        p = np.asarray(im.convert("RGB").resize((w, round(im.height * w / im.width)), Image.BICUBIC))
    y0, x0 = size // 3, size // 3
    img[0, y0:y0 + p.shape[0], x0:x0 + w] = torch.from_numpy(p.astype(np.float32) / 255.0)
    return img


def measure(op: str, size: int) -> dict:
    """One measurement in this process: op 'crop' (Face Crop, 512 crop) or 'paste' (Paste Back of that crop)."""
    import torch
    sys.path.insert(0, HERE)
    from common import pack
    pack()
    from comfyui_megaportrait.nodes import face_analysis, face_crop, image_ops, paste_back
    torch.set_num_threads(1)
    fa = face_analysis.FaceAnalyzer(min_face=MIN_FACE).load()
    fa.detect(image_ops.to_uint8_rgb(torch.full((64, 64, 3), 0.5)))        # models loaded before measuring
    img = picture(size)
    float_bytes = img.numel() * 4
    t0 = time.perf_counter()
    with torch.inference_mode():
        if op == "crop":
            with PeakRSS() as p:
                crops, fc = face_crop.FaceCropNode().crop(fa, img, 512, 0.25, "largest", 0, 48)
            faces = len(fc)
        else:
            crops, fc = face_crop.FaceCropNode().crop(fa, img, 512, 0.25, "largest", 0, 48)
            t0 = time.perf_counter()
            with PeakRSS() as p:
                out = paste_back.PasteBackNode().paste(img, fc, crops, "landmarks", "face ellipse", 0, 24, 16, "mean (Lab)",
                                                       face_analysis=fa)
            faces = len(fc)
            assert out[0].shape == img.shape
    return {"op": op, "size": size, "faces": faces, "float_mb": float_bytes / 2 ** 20, "peak_delta_mb": p.delta / 2 ** 20,
            "ratio": p.delta / float_bytes, "seconds": time.perf_counter() - t0}


def run_child(op: str, size: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", op, "--size", str(size)], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{op} at {size} px failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=("crop", "paste"))
    ap.add_argument("--size", type=int, default=8000)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.size)))
        return
    from common import emit, machine
    rows = [run_child(op, args.size) for op in ("crop", "paste")]
    emit({"section": "face_memory", "machine": machine(), "rows": rows, "limit": LIMIT})


if __name__ == "__main__":
    main()
