"""Peak memory of the map nodes on a huge image (8000x8000 RGB by default): each operation in a fresh process,
peak RSS (VmHWM, reset after the input is made) minus the RSS then, i.e. the memory the node adds, as a multiple
of the input's float32 size (8000x8000x3: 732 MiB), as bench_face_memory.py measures. Goal (issue 12): at most 3x.
The light map's floor is 1x (its output), the HF map's 2x (hf_map and detail)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE = int(os.environ.get("MEGAPORTRAIT_BENCH_MEMORY_SIDE", "8000"))
OPS = ("light map", "HF map (signed) + detail", "light map with a mask")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(op: str, side: int) -> dict:
    import torch
    from common import pack
    torch.set_num_threads(1)
    pack()
    import cv2  # noqa: F401  (the library's code is loaded once per process, not per image)
    from comfyui_megaportrait.nodes import maps
    before = _status("VmRSS")
    img = torch.empty(1, side, side, 3).uniform_()
    mask = torch.zeros(1, side, side) if op == OPS[2] else None
    if mask is not None:
        mask[:, side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 1
    with open("/proc/self/clear_refs", "w") as f:     # VmHWM := the current RSS
        f.write("5")
    node_in = _status("VmRSS") - before
    if op == OPS[0]:
        out = maps.LightMap().run(img, 8.0, maps.SIGMA_MODES[0], "gaussian")
    elif op == OPS[1]:
        out = maps.HFMap().run(img, 8.0, maps.SIGMA_MODES[0], "gaussian", 1.0)
    else:
        out = maps.LightMap().run(img, 8.0, maps.SIGMA_MODES[0], "gaussian", mask=mask)
    peak = _status("VmHWM") - before - node_in
    image_bytes = img.numel() * 4
    del out
    return {"op": op, "size": f"{side}x{side}", "image_mb": image_bytes / 2**20, "inputs_mb": node_in / 2**20,
            "peak_delta_mb": peak / 2**20, "ratio": peak / image_bytes}


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print("ROW:" + json.dumps(child(sys.argv[2], SIDE)))
        return
    from common import emit, machine
    rows = []
    for op in OPS:
        p = subprocess.run([sys.executable, __file__, "--child", op], capture_output=True, text=True, cwd=HERE)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW:")]
        if p.returncode or not line:
            raise SystemExit(f"{op}: {p.stderr[-2000:]}")
        rows.append(json.loads(line[-1][4:]))
    emit({"section": "maps_memory", "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
