"""Run every benchmark section (each in its own process) and write results/results.json + results/results.md.

    python bench/run.py [--out bench/results] [--only image_ops,faces,face_memory,sampling,trainer,pipeline,gpu,gpu_flux,gpu_zimage]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = {
    "image_ops": ["bench_image_ops.py"],
    "faces": ["bench_faces.py"],
    "sampling": ["bench_sampling.py"],
    "trainer": ["bench_trainer.py"],
    "pipeline": ["bench_pipeline.py"],
    "gpu": ["bench_gpu.py"],
    "gpu_flux": ["bench_gpu_flux.py"],
    "gpu_zimage": ["bench_gpu_zimage.py"],
    "face_memory": ["bench_face_memory.py"],
    "maps_memory": ["bench_memory.py"],
    "batch": ["bench_batch.py"],
}
GOALS = {"image_ops": "<= 1.0x OpenCV", "faces": "every face found; time reported", "sampling": "no slower than stock; dual-strength <= 0.6x of two KSamplers",
         "trainer": "<= 1.0x the seconds per step and memory of a plain peft loop and of ComfyUI's TrainLoraNode", "pipeline": "<= 1.05x of the stock passes",
         "face_memory": "peak <= 3x the image's float size", "maps_memory": "peak <= 3x the image's float size",
         "batch": "--batch < 1.0x of one runner call per job"}


def run_section(name: str) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.join(HERE, SECTIONS[name][0])], capture_output=True, text=True,
                          env=env, cwd=HERE)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT:")]
    if proc.returncode != 0 or not lines:
        return {"section": name, "error": (proc.stderr or proc.stdout)[-2000:], "seconds": time.time() - t0}
    res = json.loads(lines[-1][len("RESULT:"):])
    res["seconds"] = time.time() - t0
    return res


def fmt_ms(s):
    return "-" if s is None else (f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s")


def fmt_value(v, unit: str) -> str:
    if unit == "s":
        return fmt_ms(v)
    if unit == "MB":
        return f"{v:.0f} MB"
    return f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 1000 else f"{v:.3g}"


def trainer_table(r: dict) -> list:
    """Rows {"op", "unit", "ours", "refs": [{"name", "value", "ratio"} | {"name", "note"}]}: a value and a ratio
    (ours / it) column per reference name, in the order they first appear ("-" where a row lacks one)."""
    names = list(dict.fromkeys(ref["name"] for x in r["rows"] for ref in x["refs"]))
    out = [f"{r['model']}" + (" (dry run: the code runs, the numbers mean nothing)" if r.get("dry_run") else ""), "",
           "| measurement | ours | " + " | ".join(f"{n} | ratio" for n in names) + " |",
           "|---|---|" + "---|---|" * len(names)]
    for x in r["rows"]:
        refs = {ref["name"]: ref for ref in x["refs"]}
        cells = []
        for n in names:
            ref = refs.get(n)
            if ref is None:
                cells += ["-", "-"]
            elif "note" in ref:
                cells += [ref["note"], "-"]
            else:
                cells += [fmt_value(ref["value"], x["unit"]), f"{ref['ratio']:.2f}x"]
        out.append(f"| {x['op']} | {fmt_value(x['ours'], x['unit'])} | " + " | ".join(cells) + " |")
    return out


def to_markdown(results: list, started: str) -> str:
    out = [f"# MegaPortrait benchmarks ({started})", ""]
    mach = next((r["machine"] for r in results if "machine" in r), {})
    out.append(f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores (benchmarks use "
               f"{mach.get('threads', '?')} thread(s)), torch {mach.get('torch', '?')}"
               + (f", GPU {mach['gpu']}" if mach.get("gpu") else ", no GPU") + f"; ComfyUI: {mach.get('comfyui', '?')}")
    out.append("")
    out.append("Times are the best of 5-7 runs after a warm-up (2 for the harmonizer rows); ours and the reference run "
               "alternately, and a ratio is the median of ours / reference over neighbouring runs (robust to the drift of "
               "a shared machine). Trainer: the loops in one process, best of 3 runs each (median step time); peak "
               "memory from one fresh process each; a ratio is ours / the reference.")
    out.append("")
    for r in results:
        name = r["section"]
        out.append(f"## {name} (goal: {GOALS.get(name, '-')})")
        out.append("")
        if "error" in r:
            out += ["```", r["error"].strip()[-1500:], "```", ""]
            continue
        if r.get("skipped"):
            out += [r["skipped"], ""]
            continue
        if name == "image_ops":
            out += ["| operation | size | ours | OpenCV reference | ratio |", "|---|---|---|---|---|"]
            for x in r["rows"]:
                ratio = "-" if x["ratio"] is None else f"{x['ratio']:.2f}x"
                out.append(f"| {x['op']} | {x['size']} px | {fmt_ms(x['ours_s'])} | {fmt_ms(x['reference_s'])} | {ratio} |")
        elif name == "faces":
            out += ["| operation | photo | faces in it | found | time | old shrunken pass: found | time | "
                    "without the tilted passes: found | time |", "|---|---|---|---|---|---|---|---|---|"]
            for x in r["rows"]:
                if x.get("error"):
                    out.append(f"| {x['op']} | {x['size']} | {x['faces']} | {x['error']} | | | | | |")
                    continue
                up = (f"{x['upright_found']} | {fmt_ms(x['upright_s'])}" if "upright_s" in x else "- | -")
                old = (f"{x['old_found']} | {fmt_ms(x['old_s'])}" if "old_s" in x else "- | -")
                out.append(f"| {x['op']} | {x['size']} | {x['faces']} | {x['ours_found']} | {fmt_ms(x['ours_s'])} | "
                           f"{old} | {up} |")
        elif name in ("sampling", "pipeline"):
            out += ["| operation | model | size | ours | stock nodes | ratio |", "|---|---|---|---|---|---|"]
            for x in r["rows"]:
                out.append(f"| {x['op']} | {x.get('model', 'tiny SD1.5-shaped')} | {x.get('size', '-')} | "
                           f"{fmt_ms(x['ours_s'])} | {fmt_ms(x['stock_s'])} ({x['stock']}) | {x['ratio']:.2f}x |")
        elif name == "trainer":
            out += trainer_table(r)
        elif name == "face_memory":
            out += ["| node | image | its float size | peak memory added | ratio | time |", "|---|---|---|---|---|---|"]
            for x in r["rows"]:
                op = {"crop": "Face Crop", "paste": "Paste Back"}.get(x["op"], x["op"])
                out.append(f"| {op} | {x['size']}x{x['size']} | {x['float_mb']:.0f} MiB | {x['peak_delta_mb']:.0f} MiB | "
                           f"{x['ratio']:.2f}x | {fmt_ms(x['seconds'])} |")
        elif name == "maps_memory":
            out += ["| node | image | its float size | peak memory added | ratio |", "|---|---|---|---|---|"]
            for x in r["rows"]:
                out.append(f"| {x['op']} | {x['size']} | {x['image_mb']:.0f} MiB | {x['peak_delta_mb']:.0f} MiB | "
                           f"{x['ratio']:.2f}x |")
        elif name == "batch":
            out += ["| measurement | ours | reference | ratio |", "|---|---|---|---|"]
            for x in r["rows"]:
                if "error" in x:
                    out.append(f"| {x['op']} | {x['error']} | | |")
                else:
                    out.append(f"| {x['op']} | {fmt_ms(x['ours_s'])} | {fmt_ms(x['reference_s'])} | {x['ratio']:.2f}x |")
        elif name in ("gpu", "gpu_flux", "gpu_zimage"):
            out += ["| measurement | value |", "|---|---|"]
            for x in r["rows"]:
                out.append(f"| {x['op']} | {x['value']} |")
        out.append("")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", default=",".join(SECTIONS))
    args = ap.parse_args()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = []
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        r = run_section(name)
        results.append(r)
        print(f"[bench] {name}: {'error' if 'error' in r else 'done'} in {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"started": started, "results": results}, f, indent=1)
    md = to_markdown(results, started)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
