"""The benchmark command's plumbing (the measurements themselves are not timed tests)."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_bench_run_writes_markdown_and_json(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run.py"), "--only", "gpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    (gpu,) = data["results"]
    assert gpu["section"] == "gpu" and "machine" in gpu
    md = (tmp_path / "results.md").read_text()
    assert "## gpu" in md and ("GPU mode skipped" in md or "it/s" in md)


def test_markdown_tables_for_every_section():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import run
    m = {"cpu": "x", "cores": 2, "threads": 1, "torch": "t"}
    results = [
        {"section": "image_ops", "machine": m, "rows": [{"op": "light map", "size": 512, "ours_s": 0.01,
                                                          "reference_s": 0.02, "ratio": 0.5}]},
        {"section": "sampling", "machine": m, "rows": [{"op": "dual", "model": "SD", "size": "64x64", "ours_s": 1.0,
                                                         "stock_s": 2.0, "ratio": 0.5, "stock": "two KSamplers"}]},
        {"section": "trainer", "machine": m, "model": "tiny", "rows": [
            {"op": "seconds per step", "unit": "s", "ours": 0.5, "refs": [
                {"name": "plain peft loop", "value": 0.25, "ratio": 2.0}, {"name": "TrainLoraNode", "note": "n/a"}]},
            {"op": "weights", "unit": "MB", "ours": 10.0, "refs": [{"name": "TrainLoraNode", "value": 40.0, "ratio": 0.25}]}]},
        {"section": "faces", "machine": m, "rows": [{"op": "detect faces", "size": "1 Mpx (1280x800)", "faces": 46,
                                                      "ours_found": 46, "ours_s": 0.5, "old_found": 0, "old_s": 0.05,
                                                      "upright_found": 45, "upright_s": 0.25},
                                                     {"op": "detect faces, CNN", "size": "1 Mpx", "faces": 6,
                                                      "ours_found": 6, "ours_s": 20.0},
                                                     {"op": "detect faces, insightface", "size": "1 Mpx", "faces": 6,
                                                      "error": "no pack"}]},
        {"section": "pipeline", "error": "boom"},
        {"section": "batch", "machine": m, "rows": [{"op": "2 x 4 batch", "ours_s": 30.0, "reference_s": 60.0,
                                                      "ratio": 0.5},
                                                     {"op": "per-job overhead, Comfy API v2", "error": "skipped: old"}]},
    ]
    md = run.to_markdown(results, "now")
    assert "| light map | 512 px | 10.0 ms | 20.0 ms | 0.50x |" in md
    assert "| dual | SD | 64x64 | 1.00 s | 2.00 s (two KSamplers) | 0.50x |" in md
    assert "| detect faces | 1 Mpx (1280x800) | 46 | 46 | 500.0 ms | 0 | 50.0 ms | 45 | 250.0 ms |" in md
    assert "| detect faces, CNN | 1 Mpx | 6 | 6 | 20.00 s | - | - | - | - |" in md
    assert "| detect faces, insightface | 1 Mpx | 6 | no pack | | | | | |" in md
    assert "| measurement | ours | plain peft loop | ratio | TrainLoraNode | ratio |" in md
    assert "| seconds per step | 500.0 ms | 250.0 ms | 2.00x | n/a | - |" in md
    assert "| weights | 10 MB | - | - | 40 MB | 0.25x |" in md
    assert "boom" in md
    assert "| 2 x 4 batch | 30.00 s | 60.00 s | 0.50x |" in md and "| per-job overhead, Comfy API v2 | skipped: old | | |" in md


def test_timeit_pair_alternates_and_reports_both():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import common
    calls = []
    a, b = common.timeit_pair(lambda: calls.append("a"), lambda: calls.append("b"), repeat=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert a["runs"] == b["runs"] == 3 and 0 <= a["min_s"] <= a["median_s"] and 0 <= b["min_s"] <= b["median_s"]


def test_ratio_is_the_median_of_paired_runs():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import common
    ours = {"min_s": 1.0, "times_s": [1.0, 2.0, 4.0]}
    ref = {"min_s": 1.0, "times_s": [2.0, 2.0, 2.0]}       # ratios 0.5, 1.0, 2.0
    assert common.ratio(ours, ref) == 1.0
    assert common.ratio({"min_s": 1.0}, {"min_s": 4.0}) == 0.25


def test_size_workflow_sets_sizes_and_steps_of_the_shipped_workflow():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import common
    with open(os.path.join(REPO, "workflows", "api", "megaportrait_with_lora.json")) as f:
        p = common.size_workflow(json.load(f), 320, 3)
    got = {n["class_type"]: n["inputs"] for n in p.values()}
    assert got["MegaPortraitFaceCrop"]["crop_size"] == 320
    assert got["MegaPortraitHarmonize"]["working_resolution"] == 320
    for ct in ("MegaPortraitDualStrengthIdentitySampler", "MegaPortraitShadingSampler", "MegaPortraitHarmonize"):
        assert got[ct]["steps"] == 3


def test_flux_gpu_bench_runs_its_code_on_the_cpu(tmp_path):
    """The Flux GPU bench cannot be timed without a GPU, but its code (random Flux files written by the same writer
    at tiny sizes, the stock loaders, KSampler, the trainer and the shipped Flux workflow) must run, so that a
    machine with a GPU measures instead of failing."""
    from conftest import COMFY_ROOT
    if not os.path.isdir(os.path.join(COMFY_ROOT, "comfy", "ldm", "flux")):
        import pytest
        pytest.skip("this ComfyUI (early 2024) has no Flux support")
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_gpu_flux.py"), "--cpu-dry-run"],
                       capture_output=True, text=True, timeout=600, cwd=os.path.join(REPO, "bench"),
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT:")][-1]
    res = json.loads(line[len("RESULT:"):])
    assert res["section"] == "gpu_flux" and res["dry_run"] is True and len(res["rows"]) == 3
    assert all("it/s" in x["value"] or x["value"].endswith("n/a (CPU)") for x in res["rows"])


def test_zimage_gpu_bench_runs_its_code_on_the_cpu(tmp_path):
    """The Z-Image GPU bench cannot be timed without a GPU, but its code (random Z-Image files written by the same
    writer at tiny sizes, the stock loaders, KSampler, the trainer on the adapter-patched MODEL and the shipped Z-Image
    workflow) must run, so that a machine with a GPU measures instead of failing; without CUDA and without the dry
    run it says it was not measured."""
    from conftest import COMFY_ROOT
    if not os.path.isfile(os.path.join(COMFY_ROOT, "comfy_extras", "nodes_model_patch.py")):
        import pytest
        pytest.skip("this ComfyUI (early 2024) has no Z-Image support")
    script = os.path.join(REPO, "bench", "bench_gpu_zimage.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, script, "--cpu-dry-run"], capture_output=True, text=True, timeout=600,
                       cwd=os.path.join(REPO, "bench"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT:")][-1]
    res = json.loads(line[len("RESULT:"):])
    assert res["section"] == "gpu_zimage" and res["dry_run"] is True and len(res["rows"]) == 3
    assert all("it/s" in x["value"] or x["value"].endswith("n/a (CPU)") for x in res["rows"])
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120,
                       cwd=os.path.join(REPO, "bench"), env=env)
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT:")][-1][len("RESULT:"):])
    assert r.returncode == 0 and res["rows"] == [] and "not measured" in res["skipped"]


def test_gpu_bench_runs_its_code_on_the_cpu(tmp_path):
    """The SD1.5/SDXL GPU bench's code (random checkpoint, VAE, ControlNet and LoRA files written by the same writer,
    here with the tiny UNet and text encoder around the full-size VAE; the stock loaders, KSampler, the dual-strength
    sampler, the shipped with-LoRA workflow and the trainer) runs on every host, so that a machine with a GPU
    measures instead of failing."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_gpu.py"), "--cpu-dry-run"],
                       capture_output=True, text=True, timeout=600, cwd=os.path.join(REPO, "bench"),
                       env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT:")][-1][len("RESULT:"):])
    assert res["section"] == "gpu" and res["dry_run"] is True and len(res["rows"]) == 4
    assert all(x["op"].startswith("tiny SD1.5 (dry run)") for x in res["rows"])
    assert all("it/s" in x["value"] or x["value"].endswith(("x", "n/a (CPU)")) for x in res["rows"])


def test_gpu_bench_unets_have_the_public_models_sizes(comfy):
    """The GPU bench times full-size SD1.5- and SDXL-shaped UNets: built from its configs (on the meta device: no
    memory), they have the public models' parameter counts."""
    from comfy import ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import bench_gpu
    for cfg, params in ((bench_gpu.SD15_UNET, 859_520_964), (bench_gpu.SDXL_UNET, 2_567_463_684)):
        unet = UNetModel(**cfg, device="meta", operations=ops.disable_weight_init)
        assert sum(p.numel() for p in unet.parameters()) == params


def test_trainer_bench_runs_its_code(tmp_path):
    """The trainer bench (ours, the plain peft loop and ComfyUI's TrainLoraNode where the host has it) runs at tiny
    sizes in one process, and its rows render; on the early-2024 host the TrainLoraNode column says why it is empty."""
    from conftest import COMFY_ROOT
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_trainer.py"), "--dry-run"],
                       capture_output=True, text=True, timeout=600, cwd=os.path.join(REPO, "bench"),
                       env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT:")][-1]
    res = json.loads(line[len("RESULT:"):])
    assert res["section"] == "trainer" and res["dry_run"] is True
    rows = {x["op"]: x for x in res["rows"]}
    partial = rows.pop("bytes saved for backward in one step, partly loaded (40% resident) vs fully loaded")
    full = rows.pop("bytes saved for backward in one step, fully loaded, vs the UNet's weights")
    assert partial["refs"][0]["value"] == full["ours"] > 0
    assert partial["refs"][0]["ratio"] <= 1.2        # a layer streamed per call keeps no weight copy for backward
    assert set(rows) == {"seconds per step (wall clock)", "CPU seconds per step (the process's own work)",
                         "peak RSS of the process", "of which training (peak - RSS before it)",
                         "trainable parameters"}
    has_node = os.path.isfile(os.path.join(COMFY_ROOT, "comfy_extras", "nodes_train.py"))
    for x in rows.values():
        assert x["ours"] > 0 and [ref["name"] for ref in x["refs"]] == ["plain peft loop", "ComfyUI TrainLoraNode"]
        peft, node = x["refs"]
        assert peft["value"] > 0 and abs(peft["ratio"] - x["ours"] / peft["value"]) < 1e-9
        if has_node:
            assert node["value"] > 0 and abs(node["ratio"] - x["ours"] / node["value"]) < 1e-9
        else:
            assert node == {"name": "ComfyUI TrainLoraNode", "note": "not available on this ComfyUI"}
    # same rank and layers as the peft loop: the same number of LoRA weights; TrainLoraNode adapts every layer
    params = rows["trainable parameters"]
    assert params["ours"] == params["refs"][0]["value"]
    if has_node:
        assert params["refs"][1]["value"] > params["ours"]
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import run
    md = run.to_markdown([res], "now")
    assert "| measurement | ours | plain peft loop | ratio | ComfyUI TrainLoraNode | ratio |" in md
    assert ("not available on this ComfyUI" in md) != has_node
