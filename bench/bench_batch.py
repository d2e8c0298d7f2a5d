"""Batch overhead: a 2 people x 4 references tiny (smoke) batch through tools/runner.py --batch against the same 8
jobs run one runner call (one process) at a time, on the same real host ComfyUI server after a warm-up call (each
mode with photos of its own, so both train their 2 LoRAs). Then the per-job overhead of the two back ends: the same batch again into
a fresh output folder over /prompt and over Comfy API v2 (comfy-sdk -> comfy-api-proxy -> the same server); the
overhead of a job is its wall time (upload, submit, waiting, download) minus the execution time ComfyUI records.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from types import SimpleNamespace

from common import COMFY_ROOT, EXAMPLES, REPO, emit, machine

REFS = 4


def photos(folder: str, tweak: float) -> dict:
    """Two people's photos (a brightness tweak per mode: new photos, new LoRAs) and 4 references."""
    from PIL import Image, ImageEnhance
    out = {}
    for person, name in (("collins", "astronaut.png"), ("hopper", "grace_hopper.jpg")):
        os.makedirs(os.path.join(folder, person), exist_ok=True)
        with Image.open(os.path.join(EXAMPLES, name)) as im:
            p = os.path.join(folder, person, "photo.png")
            ImageEnhance.Brightness(im.convert("RGB")).enhance(tweak).save(p)
        out[person] = p
    return out


def references(folder: str) -> list[str]:
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    refs = []
    for i, name in enumerate(("grace_hopper.jpg", "astronaut.png") * 2):
        with Image.open(os.path.join(EXAMPLES, name)) as im:
            im = im.convert("RGB")
            if i >= 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            p = os.path.join(folder, f"ref{i}.png")
            im.save(p)
            refs.append(p)
    return refs


def manifest(work: str, people: dict, refs: list[str]) -> str:
    text = "smoke: true\npeople:\n" + "".join(f"  - name: {k}\n    photos: {v}\n" for k, v in people.items())
    text += "references:\n" + "".join(f"  - name: r{i}\n    image: {r}\n" for i, r in enumerate(refs))
    path = os.path.join(work, f"batch_{len(os.listdir(work))}.yaml")
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def overhead(out: str, client) -> float | None:
    """Mean per-job time outside ComfyUI's execution: the job's wall time in the report (upload, submit, waiting,
    download) minus the execution_start -> execution_success time ComfyUI records (0.33; None where it does not)."""
    import json
    with open(os.path.join(out, "batch_report.json")) as f:
        report = json.load(f)
    extra = []
    for job in list(report["trainings"].values()) + list(report["jobs"].values()):
        hist = client.history(job["job_id"]) or {}
        ts = {ev: d.get("timestamp") for ev, d in (hist.get("status") or {}).get("messages", []) if isinstance(d, dict)}
        if ts.get("execution_start") is None or ts.get("execution_success") is None:
            return None
        extra.append(job["seconds"] - (ts["execution_success"] - ts["execution_start"]) / 1000.0)
    return sum(extra) / len(extra)


def run_batch(path: str, out: str, backend: str, server: str | None) -> float:
    import batch
    args = SimpleNamespace(batch=path, out=out, backend=backend, server=[server] if server else None, parallel=1,
                           timeout=3600.0, smoke=True, comfyui=None, cpu=True)
    t0 = time.perf_counter()
    report = batch.run_batch(args, log=lambda m: None)
    dt = time.perf_counter() - t0
    assert report["summary"]["ok"] == len(report["jobs"]) == 2 * REFS, report["summary"]
    return dt


def start_proxy(comfy_url: str):
    import comfy_server
    port = comfy_server.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "comfy_api_proxy.cli", "run", "--comfyui", comfy_url, "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/api/v2/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("comfy-api-proxy did not start")


def main():
    import comfy_server
    import conftest
    import insightface_standin  # noqa: F401  (the server fixture's models: tiny checkpoints, ControlNets, LoRA)
    work = tempfile.mkdtemp(prefix="mp-bench-batch-")
    models = os.path.join(work, "models")
    srv = conftest.start_server(os.path.join(work, "server"), models)
    rows = []
    try:
        refs = references(os.path.join(work, "refs"))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        # warm-up (models loaded, first-run costs paid) with photos of its own, so neither mode pays them
        warm = photos(os.path.join(work, "photos_warmup"), 1.0)["collins"]
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "runner.py"), "--server", srv.url, "--smoke",
                            "--source", warm, "--reference", refs[0], "--out", os.path.join(work, "out_warmup")],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        # the batch: 2 trainings + 8 jobs in one call
        people = photos(os.path.join(work, "photos_batch"), 1.02)
        t_batch = run_batch(manifest(work, people, refs), os.path.join(work, "out_batch"), "prompt", srv.url)
        # the same jobs, one runner process each (the first call per person trains its LoRA)
        people = photos(os.path.join(work, "photos_single"), 0.98)
        t0 = time.perf_counter()
        for person, photo in people.items():
            for i, ref in enumerate(refs):
                r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "runner.py"), "--server", srv.url,
                                    "--smoke", "--source", photo, "--reference", ref,
                                    "--out", os.path.join(work, "out_single", person, str(i))],
                                   capture_output=True, text=True, env=env)
                assert r.returncode == 0, r.stderr[-2000:]
        t_single = time.perf_counter() - t0
        jobs = 2 * REFS
        rows.append({"op": f"2 x {REFS} tiny batch (2 LoRAs trained + {jobs} jobs): --batch vs {jobs} runner calls",
                     "ours_s": t_batch, "reference_s": t_single, "ratio": t_batch / t_single})
        # per-job overhead of each back end: the same batch again (its LoRAs are reused), one job at a time
        m = manifest(work, photos(os.path.join(work, "photos_batch"), 1.02), refs)
        run_batch(m, os.path.join(work, "out_prompt_again"), "prompt", srv.url)
        o_prompt = overhead(os.path.join(work, "out_prompt_again"), srv.client)
        proc = None
        if not comfy_server.is_current_comfyui(COMFY_ROOT):
            rows.append({"op": "per-job overhead, Comfy API v2", "error": "skipped: comfy-api-proxy needs a ComfyUI that "
                         "takes the client's prompt_id (0.33 does, the early-2024 host does not)"})
        else:
            try:
                proc, url = start_proxy(srv.url)
            except (ImportError, RuntimeError, OSError) as e:
                rows.append({"op": "per-job overhead, Comfy API v2", "error": f"{type(e).__name__}: {e}"})
        if proc is not None:
            try:
                os.environ["COMFY_BASE_URL"] = url
                os.environ.pop("COMFY_API_KEY", None)
                run_batch(m, os.path.join(work, "out_v2_again"), "comfy-api", None)
                o_v2 = overhead(os.path.join(work, "out_v2_again"), srv.client)
            finally:
                proc.terminate()
                proc.wait(15)
            if o_prompt is not None and o_v2 is not None:
                rows.append({"op": f"per-job overhead (job wall time minus ComfyUI's execution time, {jobs + 2} jobs): "
                                   "/prompt vs Comfy API v2 through comfy-api-proxy", "ours_s": o_prompt,
                             "reference_s": o_v2, "ratio": o_prompt / o_v2})
    finally:
        srv.stop()
    emit({"section": "batch", "machine": machine(), "comfyui": COMFY_ROOT,
          "rows": [dict(r, ours_label=r["op"]) for r in rows]})


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(REPO, "tests"))
    main()
