"""Shipped workflows: up to date, UI and API forms agree, valid for a real ComfyUI, executable via /prompt (with
the tiny models substituted), loadable by the real web frontend in headless Chromium; and the headless runner."""
import copy
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, REPO
from PIL import Image

WF_DIR = os.path.join(REPO, "workflows")
FLUX = "megaportrait_full_flux"
ZIMAGE = "megaportrait_full_zimage"
NAMES = ["megaportrait_full", "megaportrait_full_flux", "megaportrait_full_sdxl", "megaportrait_full_zimage",
         "megaportrait_group", "megaportrait_group_people", "megaportrait_train", "megaportrait_with_lora"]
NEEDS = {FLUX: "a ComfyUI with Flux support (from Aug 2024; tested on 0.33.0)",
         ZIMAGE: "a ComfyUI with Z-Image support and model patches (0.33.0)"}
PAPER_GROUPS = {"Identity Net: training", "Identity Net: dual-strength", "Light and HF maps", "Shading Net",
                "Paste-back, Harmonization Net"}


def load(rel):
    with open(os.path.join(WF_DIR, rel)) as f:
        return json.load(f)


def strip_meta(api, object_info=None):
    """class_type + inputs only; with object_info, inputs the node does not declare are dropped too (the old
    frontend sends LoadImage's upload button value, which the server ignores)."""
    out = {}
    for k, v in api.items():
        inputs = dict(v["inputs"])
        if object_info is not None:
            spec = object_info[v["class_type"]]["input"]
            known = set(spec.get("required", {})) | set(spec.get("optional", {}))
            inputs = {n: x for n, x in inputs.items() if n in known}
        out[k] = {"class_type": v["class_type"], "inputs": inputs}
    return out


def flux_missing(object_info) -> str | None:
    """Why this server cannot run the Flux workflow (no FluxGuidance, no DualCLIPLoader type 'flux'), or None."""
    import runner
    return runner.flux_unsupported(load(f"api/{FLUX}.json"), object_info)


def family_missing(name, object_info) -> str | None:
    """Why this server cannot run workflow ``name`` (Flux.1 / Z-Image stock nodes it lacks), or None."""
    import runner
    if name == FLUX:
        return flux_missing(object_info)
    if name == ZIMAGE:
        return runner.zimage_unsupported(load(f"api/{ZIMAGE}.json"), object_info)
    return None


def skip_flux_without_support(name, object_info):
    """Skip for the Flux.1 and Z-Image workflows on a ComfyUI without them (the early-2024 host)."""
    why = family_missing(name, object_info)
    if why:
        pytest.skip(f"{name} needs {NEEDS[name]}: this one {why}")


def test_shipped_files_are_up_to_date(comfy):
    import build_workflows
    spec = build_workflows.comfy_spec()
    files = build_workflows.render(spec)
    why = {FLUX: build_workflows.flux_support(spec), ZIMAGE: build_workflows.zimage_support(spec)}
    names = [n for n in NAMES if not why.get(n)]
    assert sorted(files) == sorted([f"{n}.json" for n in names] + [f"api/{n}.json" for n in names])
    for rel, text in files.items():
        with open(os.path.join(WF_DIR, rel)) as f:
            assert f.read() == text, f"{rel} is stale: run python tools/build_workflows.py"
    skipped = {n: w for n, w in why.items() if w}
    if skipped:     # early-2024 ComfyUI: these are generated and checked on a host that has their families (0.33)
        assert not skipped.get(FLUX) or "FluxGuidance" in skipped[FLUX] or "flux" in skipped[FLUX]
        assert all(os.path.isfile(os.path.join(WF_DIR, r)) for n in skipped for r in (f"{n}.json", f"api/{n}.json"))
        pytest.skip(f"{', '.join(skipped)} checked on ComfyUI 0.33: {'; '.join(skipped.values())}")


# ---------------------------------------------------------------- an independent UI -> API conversion (as the frontend)
def _is_widget(spec):
    t = spec[0]
    return isinstance(t, list) or t in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _forced(spec):
    return len(spec) > 1 and isinstance(spec[1], dict) and bool(spec[1].get("forceInput"))


def ui_to_api(ui, object_info):
    links = {lk[0]: lk for lk in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] not in object_info or node.get("mode", 0) in (2, 4):
            continue                                   # frontend-only nodes (Note), muted or bypassed nodes
        info = object_info[node["type"]]["input"]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for section in ("required", "optional"):
            for name, spec in info.get(section, {}).items():
                val = None
                if _is_widget(spec):
                    val = values.pop(0) if values else None
                    opts = spec[1] if len(spec) > 1 else {}
                    if spec[0] == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate")):
                        assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
                    if opts.get("image_upload"):
                        values.pop(0)
                    if _forced(spec):       # a forceInput widget's stored value is never sent (the link is)
                        val = None
                if name in linked:
                    inputs[name] = [str(linked[name][1]), linked[name][2]]
                elif val is not None:
                    inputs[name] = val
        assert not values, f"node {node['id']} ({node['type']}) has unused widget values {values}"
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_agree_and_validate(server, name):
    import runner
    info = server.client.object_info()
    skip_flux_without_support(name, info)
    ui, api = load(f"{name}.json"), load(f"api/{name}.json")
    assert ui["version"] == 0.4
    assert ui_to_api(ui, info) == strip_meta(api)
    for nid, n in api.items():
        assert n["class_type"] in info, n["class_type"]
        for inp, v in n["inputs"].items():
            sec = "required" if inp in info[n["class_type"]]["input"]["required"] else "optional"
            spec = info[n["class_type"]]["input"][sec][inp]
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):   # a link: types must match
                src = api[v[0]]
                assert info[src["class_type"]]["output"][v[1]] == spec[0], (nid, inp)
            elif isinstance(spec[0], list) and n["class_type"] not in ("LoadImage", "MegaPortraitFaceAnalysisLoader") \
                    and inp not in dict(runner.LOADERS.get(n["class_type"], ())):      # model files: the tiny ones here
                assert v in spec[0], (nid, inp, v)


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_structure(name):
    ui = load(f"{name}.json")
    ids = {n["id"] for n in ui["nodes"]}
    assert len(ids) == len(ui["nodes"]) and ui["last_node_id"] == max(ids)
    by_id = {n["id"]: n for n in ui["nodes"]}
    for lid, src, sslot, dst, dslot, typ in ui["links"]:
        assert lid in by_id[src]["outputs"][sslot]["links"]
        assert by_id[dst]["inputs"][dslot]["link"] == lid and by_id[dst]["inputs"][dslot]["type"] == typ
        assert by_id[src]["outputs"][sslot]["type"] == typ
    # groups named after the paper's modules, a note on what to tweak, fixed seeds
    titles = {g["title"] for g in ui["groups"]}
    assert "Identity Net: training" in titles and "Models" in titles
    if name != "megaportrait_train":
        assert PAPER_GROUPS <= titles
    assert any(n["type"] == "Note" for n in ui["nodes"])
    for n in ui["nodes"]:
        if "fixed" in n.get("widgets_values", []) or n["type"].endswith(("Sampler", "Harmonize", "Trainer")):
            assert "randomize" not in n["widgets_values"]
    # model downloads offered by the frontend: name == widget value, a known folder, a hub URL of a .safetensors file
    loaders = [n for n in ui["nodes"] if n["type"] in ("CheckpointLoaderSimple", "VAELoader", "ControlNetLoader",
                                                       "UNETLoader", "DualCLIPLoader", "CLIPLoader",
                                                       "ModelPatchLoader", "LoraLoaderModelOnly")]
    assert loaders
    for n in loaders:
        files = n["widgets_values"][:2] if n["type"] == "DualCLIPLoader" else n["widgets_values"][:1]
        models = n["properties"]["models"]
        assert [m["name"] for m in models] == files
        for m in models:
            assert m["directory"] in ("checkpoints", "vae", "controlnet", "diffusion_models", "text_encoders",
                                      "model_patches", "loras")
            assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith(".safetensors")


@pytest.mark.server
@pytest.mark.parametrize("name", [n for n in NAMES if n not in (FLUX, ZIMAGE)])  # test_{flux,zimage}_workflow_executes
def test_workflows_execute_with_tiny_models(server, name):
    import runner
    src = os.path.join(server.input_dir, "megaportrait_source", "wf_test")
    os.makedirs(src, exist_ok=True)
    shutil.copy(os.path.join(EXAMPLES, "astronaut.png"), src)
    prompt = runner.smoke_workflow(load(f"api/{name}.json"))
    for nid in runner.nodes_of_type(prompt, "MegaPortraitLoadSourcePhotos"):
        prompt[nid]["inputs"]["folder"] = "megaportrait_source/wf_test"
    size = (600, 512)                                       # the reference's size
    if name.startswith("megaportrait_group"):              # the six-person picture, every face re-rendered
        from synthetic_group import group_canvas
        Image.fromarray(group_canvas()[0]).save(os.path.join(server.input_dir, "group_photo.png"))
        size = (886, 1280)
    hist = server.client.run(prompt, timeout=600)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:2000]
    import comfy_server
    files = [e for e in comfy_server.outputs_of(hist) if e.get("type") == "output"]
    assert files and all(e["filename"].startswith("SMOKE_noise_") for e in files)
    for e in files:
        img = Image.open(io.BytesIO(server.client.view(e["filename"], e["subfolder"])))
        assert img.size[0] > 0
    if name != "megaportrait_train":
        portrait = [e for e in files if "portrait" in e["filename"]]
        assert portrait
        img = np.asarray(Image.open(io.BytesIO(server.client.view(portrait[0]["filename"], portrait[0]["subfolder"]))))
        assert img.shape[:2] == size


def _view(server, entry) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(server.client.view(entry["filename"], entry["subfolder"]))))


@pytest.mark.server
def test_flux_workflow_executes(server):
    """megaportrait_full_flux via /prompt with the tiny Flux models (dev, Fill, CLIP-L + T5, VAE, union ControlNet):
    every stage runs (training on the Flux model, both union modes, Flux Fill with the identity LoRA), the portrait
    has the reference's size, and outside Harmonize's grown + feathered seam mask it is exactly Paste Back's image."""
    import runner
    skip_flux_without_support(FLUX, server.client.object_info())
    prompt = runner.smoke_workflow(load(f"api/{FLUX}.json"))
    (harm,) = runner.nodes_of_type(prompt, "MegaPortraitHarmonize")
    h = prompt[harm]["inputs"]
    assert h["inpaint_model"][0] in runner.nodes_of_type(prompt, "UNETLoader") and h["cfg"] == 1.0
    _run_family_workflow(server, prompt, "flux_")


@pytest.mark.server
def test_zimage_workflow_executes(server):
    """megaportrait_full_zimage via /prompt with the tiny Z-Image models (NextDiT, Qwen3, VAE, Fun ControlNet union
    patch, the Turbo training adapter): the trainer trains on the MODEL with the adapter and returns the identity LoRA
    on the MODEL without it, which every sampler uses; the union patch drives the dual-strength sampler, the Shading
    Fun ControlNet Sampler and Harmonize's inpaint mode; outside the seam mask the portrait is Paste Back's image."""
    import runner
    skip_flux_without_support(ZIMAGE, server.client.object_info())
    prompt = runner.smoke_workflow(load(f"api/{ZIMAGE}.json"))
    (unet,) = runner.nodes_of_type(prompt, "UNETLoader")
    (adapter,) = runner.nodes_of_type(prompt, "LoraLoaderModelOnly")
    (patch,) = runner.nodes_of_type(prompt, "ModelPatchLoader")
    (trainer,) = runner.nodes_of_type(prompt, "MegaPortraitIdentityLoraTrainer")
    t = prompt[trainer]["inputs"]
    assert t["model"] == [adapter, 0] and t["output_model"] == [unet, 0] and prompt[adapter]["inputs"]["model"] == [unet, 0]
    users = [nid for nid, n in prompt.items() if n["inputs"].get("model") == [adapter, 0]]
    assert users == [trainer]                                     # the adapter reaches the trainer only
    (harm,) = runner.nodes_of_type(prompt, "MegaPortraitHarmonize")
    h = prompt[harm]["inputs"]
    assert h["inpaint_model_patch"] == [patch, 0] and h["model"] == [trainer, 0] and h["cfg"] == 1.0
    (shading,) = runner.nodes_of_type(prompt, "MegaPortraitShadingSamplerModelPatch")
    assert prompt[shading]["inputs"]["model"] == [trainer, 0]
    _run_family_workflow(server, prompt, "zimage_")


def _run_family_workflow(server, prompt, prefix):
    """Run a smoke prompt of a family workflow with Paste Back's composite and seam mask saved too, and check every
    stage ran and the portrait is Paste Back's image outside Harmonize's reach."""
    import comfy_server
    import cv2
    import runner
    src = os.path.join(server.input_dir, "megaportrait_source", "wf_test")
    os.makedirs(src, exist_ok=True)
    shutil.copy(os.path.join(EXAMPLES, "astronaut.png"), src)
    tiny = {m["smoke"] for k, m in runner.MODELS.items() if k.startswith(prefix)}
    assert {r["name"] for r in runner.required_models(prompt)} == tiny          # every loader got its tiny model
    (photos,) = runner.nodes_of_type(prompt, "MegaPortraitLoadSourcePhotos")
    prompt[photos]["inputs"]["folder"] = "megaportrait_source/wf_test"
    (paste,) = runner.nodes_of_type(prompt, "MegaPortraitPasteBack")
    (harm,) = runner.nodes_of_type(prompt, "MegaPortraitHarmonize")
    h = prompt[harm]["inputs"]
    # test-only outputs: Paste Back's composite and where its (soft) seam mask is above 0
    prompt["900"] = {"class_type": "SaveImage", "inputs": {"images": [paste, 0], "filename_prefix": "SMOKE_noise_pasted"}}
    prompt["901"] = {"class_type": "ThresholdMask", "inputs": {"mask": [paste, 2], "value": 0.0}}
    prompt["902"] = {"class_type": "MaskToImage", "inputs": {"mask": ["901", 0]}}
    prompt["903"] = {"class_type": "SaveImage", "inputs": {"images": ["902", 0], "filename_prefix": "SMOKE_noise_seam"}}
    hist = server.client.run(prompt, timeout=900)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:2000]
    files = {e["filename"].rsplit("_", 2)[0]: e for e in comfy_server.outputs_of(hist) if e.get("type") == "output"}
    assert sorted(files) == ["SMOKE_noise_loss_curve", "SMOKE_noise_pasted", "SMOKE_noise_portrait", "SMOKE_noise_seam"]
    portrait, pasted = _view(server, files["SMOKE_noise_portrait"]), _view(server, files["SMOKE_noise_pasted"])
    seam = _view(server, files["SMOKE_noise_seam"])[..., 0] > 0
    assert portrait.shape == pasted.shape == (600, 512, 3) and seam.shape == (600, 512)
    assert seam.any() and _view(server, files["SMOKE_noise_loss_curve"]).size > 0
    r = h["grow"] + h["feather"] + 2                                          # grow + feather, and rounding
    reach = cv2.dilate(seam.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    assert reach.mean() < 0.9
    np.testing.assert_array_equal(portrait[~reach], pasted[~reach])
    assert (portrait[seam] != pasted[seam]).any()                              # the seam was inpainted


@pytest.mark.server
def test_template_browser_lists_our_workflows(server):
    code, body = server.client.request("/workflow_templates")
    if code == 404:
        pytest.skip("this ComfyUI has no workflow template browser (the early-2024 host); checked against current ComfyUI")
    assert code == 200 and sorted(body.get("comfyui-megaportrait", [])) == sorted(NAMES)
    code, wf = server.client.request("/api/workflow_templates/comfyui-megaportrait/megaportrait_full.json")
    assert code == 200 and wf["version"] == 0.4


# ------------------------------------------------------------------------------------------------ real browser
FIT_GRAPH_JS = """(() => {
  let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
  for (const n of app.graph._nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  for (const g of (app.graph._groups || [])) {
    const b = g._bounding || g.bounding;
    x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
  }
  const c = app.canvas.canvas, W = c.width, H = c.height;
  const s = Math.min(W / (x1 - x0), H / (y1 - y0)) * 0.98;
  app.canvas.ds.scale = s;
  app.canvas.ds.offset = [-x0 + (W / s - (x1 - x0)) / 2, -y0 + (H / s - (y1 - y0)) / 2];
  const menu = document.querySelector('.comfy-menu'); if (menu) menu.style.display = 'none';
  app.graph.setDirtyCanvas(true, true);
  return s;
})()"""


def check_frontend(srv, tmp_path, screenshot: str | None = None) -> None:
    """Load every shipped UI workflow in the server's web frontend (headless Chromium): all node types known, and
    the frontend's own graph -> API conversion gives the shipped API workflow."""
    import browser
    if browser.find_chromium() is None:
        pytest.fail("chromium is not installed: tests/run_tests.sh installs Debian's chromium package")
    info = srv.client.object_info()
    b = browser.Browser()
    try:
        b.navigate(srv.url + "/")
        b.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
                   "Object.keys(LiteGraph.registered_node_types).includes('MegaPortraitHarmonize'))", timeout=120)
        for name in NAMES:
            if family_missing(name, info):
                continue                # early-2024 ComfyUI: no Flux / Z-Image (the 0.33 host loads them, in both frontends)
            wf = load(f"{name}.json")
            res = json.loads(b.eval(
                "(async () => { const wf = %s; await app.loadGraphData(wf);"
                " const reg = LiteGraph.registered_node_types;"
                " const missing = wf.nodes.map(n => n.type).filter(t => !(t in reg));"
                " const p = await app.graphToPrompt();"
                " return JSON.stringify({n: app.graph._nodes.length, missing, output: p.output}); })()" % json.dumps(wf),
                await_promise=True))
            assert res["missing"] == [], f"{name}: the frontend does not know {res['missing']}"
            assert res["n"] == len(wf["nodes"])
            # the frontend's own graph -> API conversion gives the shipped API workflow
            assert strip_meta(res["output"], info) == strip_meta(load(f"api/{name}.json")), name
            if name == "megaportrait_full" and screenshot:
                b.eval(FIT_GRAPH_JS)
                import time
                time.sleep(0.5)
                b.screenshot(screenshot)
                img = np.asarray(Image.open(screenshot).convert("RGB"))
                assert img.shape[0] > 500 and img.std() > 10      # a drawn graph, not a blank page
    finally:
        b.close()


@pytest.mark.server
def test_frontend_loads_every_workflow(server, tmp_path):
    """The frontend the host ComfyUI ships (the early-2024 one's web/, or the pinned comfyui-frontend-package)."""
    check_frontend(server, tmp_path, os.environ.get("MEGAPORTRAIT_SCREENSHOT") or str(tmp_path / "megaportrait_full.png"))


def _extra_frontends() -> list:
    return [p for p in os.environ.get("MEGAPORTRAIT_EXTRA_FRONTENDS", "").split(os.pathsep) if p]


def _frontend_id(path) -> str:
    """'comfyui-frontend-package-1.58.1' for <venv>/frontends/comfyui-frontend-package-1.58.1/.../static"""
    return "none" if path is None else os.path.basename(os.path.dirname(os.path.dirname(os.path.normpath(path))))


@pytest.mark.server
@pytest.mark.parametrize("frontend", _extra_frontends() or [None], ids=_frontend_id)
def test_newer_frontend_loads_every_workflow(frontend, models_dir, tmp_path_factory, tmp_path):
    """The newest web frontend on PyPI, which current ComfyUI serves with --front-end-root (tests/run_tests.sh
    installs it for the 0.33 host and names it in MEGAPORTRAIT_EXTRA_FRONTENDS)."""
    import comfy_server
    from conftest import COMFY_ROOT, start_server
    if not comfy_server.is_current_comfyui(COMFY_ROOT):
        pytest.skip("the early-2024 host serves only its own web/ frontend (no --front-end-root)")
    if frontend is None:
        pytest.skip("no newer frontend named in MEGAPORTRAIT_EXTRA_FRONTENDS (tests/run_tests.sh sets it)")
    assert os.path.isfile(os.path.join(frontend, "index.html")), frontend
    srv = start_server(str(tmp_path_factory.mktemp("frontend")), models_dir, ["--front-end-root", frontend])
    try:
        assert os.path.realpath(frontend) in srv.log_tail(200_000) or frontend in srv.log_tail(200_000), \
            "the server did not take the frontend"
        check_frontend(srv, tmp_path)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ runner
def run_cli(capsys, *args):
    import runner
    code = runner.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.server
def test_runner_smoke_against_server(server, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "--server", server.url, "--smoke", "--out", str(out),
                                "--source", os.path.join(EXAMPLES, "astronaut.png"))
    assert code == 0, err
    names = sorted(os.listdir(out))
    assert "SMOKE_RUN.txt" in names and any(n.startswith("SMOKE_noise_portrait") for n in names)
    assert "noise" in err and "Identity check" in err
    assert np.asarray(Image.open(out / [n for n in names if "portrait" in n][0])).shape[:2] == (600, 512)


@pytest.mark.server
def test_runner_second_run_with_the_same_photos_trains_nothing(server, models_dir, tmp_path, capsys):
    """The photos go to a folder named by their hash: the same photos, the same folder, so a second run finds the
    trained LoRA (ComfyUI's cache or the trainer's train-once key) and writes no new one."""
    import runner
    photo = tmp_path / "me.png"
    Image.open(os.path.join(EXAMPLES, "astronaut.png")).rotate(3).save(photo)     # photos no other test uses
    sub = f"megaportrait_source/{runner.photos_digest([str(photo)])}"

    def loras():
        root = os.path.join(models_dir, "loras")
        return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
                for r, _, fs in os.walk(root) for f in fs if f.endswith(".safetensors")}
    before = loras()
    for run in range(2):
        code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--out", str(tmp_path / f"out{run}"),
                               "--source", str(photo))
        assert code == 0, err
        if run == 0:
            trained = loras()
            assert trained != before                                      # the first run trained (and wrote) a LoRA
    assert loras() == trained                                             # the second trained and wrote nothing
    assert os.path.isdir(os.path.join(server.input_dir, sub)) and len(os.listdir(os.path.join(server.input_dir, sub))) == 1
    other = tmp_path / "other.png"
    Image.open(os.path.join(EXAMPLES, "astronaut.png")).rotate(-3).save(other)
    assert runner.photos_digest([str(other)]) != runner.photos_digest([str(photo)])


@pytest.mark.server
def test_runner_faces_on_the_group_picture(server, tmp_path, capsys):
    """--faces all re-renders every face of the group picture; --faces match those of the --identity photo; a bad
    --faces value fails before anything is uploaded."""
    from synthetic_group import group_canvas
    group = tmp_path / "group.png"
    Image.fromarray(group_canvas()[0]).save(group)
    for faces, extra in (("all", []), ("match", ["--identity", os.path.join(EXAMPLES, "astronaut.png")]), ("2", [])):
        out = tmp_path / f"out_{faces}"
        code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--workflow", "megaportrait_with_lora",
                               "--reference", str(group), "--faces", faces, *extra, "--out", str(out))
        assert code == 0, err
        img = np.asarray(Image.open(out / [n for n in os.listdir(out) if "portrait" in n][0]))
        assert img.shape[:2] == (886, 1280)
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--faces", "match", "--workflow",
                           "megaportrait_with_lora", "--out", str(tmp_path / "o"))
    assert code == 1 and "--faces match needs photos of the person" in err.strip().splitlines()[-1]
    code, _, err = run_cli(capsys, "--server", server.url, "--faces", "everyone", "--out", str(tmp_path / "o"))
    assert code == 1 and "--faces 'everyone': use all, largest" in err.strip().splitlines()[-1]


@pytest.mark.server
def test_runner_several_people_on_the_group_picture(server, tmp_path, capsys):
    """megaportrait_group_people via /prompt with the tiny models: two people (--person, the two shipped portraits),
    each face of the six-person picture goes to the person it is (the report), every face is re-rendered; with
    --assign and --unknown only the faces asked for are, and the others stay exactly the picture's."""
    from synthetic_group import PEOPLE, group_canvas
    canvas, boxes = group_canvas()
    group = tmp_path / "group.png"
    Image.fromarray(canvas).save(group)
    who = ["astro" if p[0] == "astronaut.png" else "grace" for p in sorted(PEOPLE, key=lambda p: p[3] + p[2] / 2)]
    root = tmp_path / "people"
    for name, photo in (("astro", "astronaut.png"), ("grace", "grace_hopper.jpg")):
        (root / name).mkdir(parents=True)
        shutil.copy(os.path.join(EXAMPLES, photo), root / name)
    people = ["--person", f"astro={root / 'astro'}", "--person", f"grace={root / 'grace'}"]

    def whose(err):
        report = [line for line in err.splitlines() if line.startswith("Whose face is whose:")]
        assert report, err
        return re.findall(r"face (\d+) \(x=\d+\): (\S+) \[(\w+)\]", report[0])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--workflow", "megaportrait_group_people",
                           "--reference", str(group), "--faces", "match", *people, "--out", str(out))
    assert code == 0, err
    assert [(int(i), name) for i, name, _ in whose(err)] == list(enumerate(who))
    img = np.asarray(Image.open(out / [n for n in os.listdir(out) if "portrait" in n][0]))
    assert img.shape[:2] == (886, 1280)
    for x0, y0, x1, y1 in boxes:                              # every face re-rendered
        assert (img[y0:y1, x0:x1].astype(int) - canvas[y0:y1, x0:x1]).any()
    # a folder of folders gives the same people; face 0 by number, the others by identity
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--workflow", "megaportrait_group_people",
                           "--reference", str(group), "--people", str(root), "--assign", "0=grace",
                           "--unknown", "untouched", "--out", str(tmp_path / "out2"))
    assert code == 0, err
    got = whose(err)
    assert got[0] == ("0", "grace", "assigned") and [n for _, n, _ in got[1:]] == who[1:]
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--workflow", "megaportrait_group_people",
                           "--reference", str(group), "--out", str(tmp_path / "o"))
    assert code == 1 and "pass --person NAME=FOLDER for each" in err.strip().splitlines()[-1]


def test_runner_people_extends_and_cuts_the_chain():
    import runner
    base = runner.load_workflow("megaportrait_group_people")
    assert len(runner.person_chain(base)) == 2
    three = copy.deepcopy(base)
    runner.apply_people(three, [("ann", "p/a"), ("ben", "p/b"), ("cy", "p/c")])
    chain = runner.person_chain(three)
    assert [three[n]["inputs"]["name"] for n in chain] == ["ann", "ben", "cy"]
    for n, who in zip(chain, ("ann", "ben", "cy")):
        own = runner.person_nodes(three, n)
        kinds = sorted(three[x]["class_type"] for x in own)
        assert kinds == sorted(["MegaPortraitAddPerson", "MegaPortraitLoadSourcePhotos",
                                "MegaPortraitIdentityLoraTrainer", "CLIPTextEncode"])
        assert {three[x]["inputs"].get("folder") for x in own} >= {f"p/{who[0]}"}
        assert {three[x]["inputs"].get("save_name") for x in own} >= {f"megaportrait/{who}"}
    (assign,) = runner.nodes_of_type(three, "MegaPortraitAssignFacesToPeople")
    assert three[assign]["inputs"]["people"] == [chain[-1], 0]
    one = copy.deepcopy(base)
    runner.apply_people(one, [("solo", "p/s")])
    (only,) = runner.person_chain(one)
    assert len(one) == len(base) - 4 and one[runner.nodes_of_type(one, "MegaPortraitAssignFacesToPeople")[0]][
        "inputs"]["people"] == [only, 0]
    links = [v[0] for n in one.values() for v in n["inputs"].values() if isinstance(v, list) and len(v) == 2
             and isinstance(v[0], str)]
    assert all(x in one for x in links)                         # nothing points at a removed node
    with pytest.raises(runner.RunnerError, match="need a workflow with Add Person"):
        runner.apply_people(runner.load_workflow("megaportrait_group"), [("a", "b")])
    with pytest.raises(runner.RunnerError, match="given twice"):
        runner.parse_people([f"a={EXAMPLES}", f"A={EXAMPLES}"], None)


def test_runner_faces_sets_face_crop():
    import runner
    p = runner.load_workflow("megaportrait_full")
    runner.apply_faces(p, "3", None)
    (crop,) = runner.nodes_of_type(p, "MegaPortraitFaceCrop")
    assert p[crop]["inputs"]["selection"] == "index (left to right)" and p[crop]["inputs"]["index"] == 3
    runner.apply_faces(p, "match", ["7", 0])
    assert p[crop]["inputs"]["selection"] == "every face matching identity" and p[crop]["inputs"]["identity"] == ["7", 0]
    g = runner.load_workflow("megaportrait_group")
    assert g[runner.nodes_of_type(g, "MegaPortraitFaceCrop")[0]]["inputs"]["selection"] == "every face (left to right)"


@pytest.mark.server
def test_runner_reports_missing_models(server, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--server", server.url, "--out", str(tmp_path / "o"),
                           "--source", os.path.join(EXAMPLES, "astronaut.png"))
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("megaportrait: error:") and "model file(s) missing" in last and "--download" in last
    assert "ComfyUI/models/controlnet/control_v11f1e_sd15_tile_fp16.safetensors" in err
    assert "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.server
def test_runner_flux_workflow(server, tmp_path, capsys):
    """--workflow megaportrait_full_flux: on a ComfyUI without Flux one clear line; on one with Flux, the missing
    models are listed with their folders, URLs and licences (gated repos said so)."""
    code, _, err = run_cli(capsys, "--server", server.url, "--workflow", FLUX, "--out", str(tmp_path / "o"),
                           "--source", os.path.join(EXAMPLES, "astronaut.png"))
    assert code == 1
    last = err.strip().splitlines()[-1]
    if flux_missing(server.client.object_info()):
        assert last.startswith("megaportrait: error: this workflow is a Flux.1 workflow and needs a ComfyUI with Flux "
                               "support (from Aug 2024; tested on 0.33.0)") and "FluxGuidance" in last
        return
    assert "model file(s) missing" in last
    for line in ("ComfyUI/models/diffusion_models/flux1-dev.safetensors  <- https://huggingface.co/black-forest-labs/"
                 "FLUX.1-dev/resolve/main/flux1-dev.safetensors (23.8 GB, FLUX.1 [dev] Non-Commercial License; gated",
                 "ComfyUI/models/text_encoders/t5xxl_fp8_e4m3fn.safetensors  <- https://huggingface.co/comfyanonymous/"
                 "flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn.safetensors",
                 "ComfyUI/models/controlnet/FLUX.1-dev-ControlNet-Union-Pro.safetensors  <- https://huggingface.co/"
                 "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro/resolve/main/diffusion_pytorch_model.safetensors",
                 "ComfyUI/models/diffusion_models/flux1-fill-dev.safetensors"):
        assert line in err, line


@pytest.mark.server
def test_runner_zimage_workflow(server, tmp_path, capsys):
    """--workflow megaportrait_full_zimage: listed by the runner; on a ComfyUI without Z-Image one clear line; on 0.33
    the missing models are listed with their folders, URLs and licences (Apache-2.0, nothing gated: the VAE comes
    from the open Z-Image repository, not FLUX.1-dev's gated one)."""
    import runner
    assert ZIMAGE in runner.available_workflows()
    code, _, err = run_cli(capsys, "--server", server.url, "--workflow", ZIMAGE, "--out", str(tmp_path / "o"),
                           "--source", os.path.join(EXAMPLES, "astronaut.png"))
    assert code == 1
    last = err.strip().splitlines()[-1]
    if family_missing(ZIMAGE, server.client.object_info()):
        assert last.startswith("megaportrait: error: this workflow is a Z-Image workflow and needs a ComfyUI with "
                               "Z-Image support") and "ModelPatchLoader" in last
        return
    assert "model file(s) missing" in last and "gated" not in err
    for line in ("ComfyUI/models/diffusion_models/z_image_turbo_bf16.safetensors  <- https://huggingface.co/Comfy-Org/"
                 "z_image_turbo/resolve/main/split_files/diffusion_models/z_image_turbo_bf16.safetensors (12.3 GB, "
                 "Apache-2.0",
                 "ComfyUI/models/vae/ae.safetensors  <- https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/"
                 "split_files/vae/ae.safetensors",
                 "ComfyUI/models/model_patches/Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors  <- https://"
                 "huggingface.co/alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1/resolve/main/"
                 "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors",
                 "ComfyUI/models/loras/zimage_turbo_training_adapter_v2.safetensors  <- https://huggingface.co/ostris/"
                 "zimage_turbo_training_adapter/resolve/main/zimage_turbo_training_adapter_v2.safetensors"):
        assert line in err, line


def test_runner_unreachable_server(tmp_path, capsys):
    import comfy_server
    port = comfy_server.free_port()
    code, _, err = run_cli(capsys, "--server", f"http://127.0.0.1:{port}", "--out", str(tmp_path))
    assert code == 1 and err.strip().splitlines() == [f"megaportrait: error: no ComfyUI server answers at http://127.0.0.1:{port}"]


@pytest.mark.server
def test_runner_bad_images_and_no_face(server, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--reference", str(tmp_path / "nope.jpg"),
                           "--out", str(tmp_path / "o"))
    assert code == 1 and "image not found" in err.strip().splitlines()[-1]
    txt = tmp_path / "not_an_image.png"
    txt.write_text("hello")
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--reference", str(txt), "--out", str(tmp_path / "o"))
    assert code == 1 and "is not an image" in err.strip().splitlines()[-1]
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--source", str(empty), "--out", str(tmp_path / "o"))
    assert code == 1 and "pass --source with photos" in err.strip().splitlines()[-1]
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)).save(noise)
    code, _, err = run_cli(capsys, "--server", server.url, "--smoke", "--reference", str(noise),
                           "--source", os.path.join(EXAMPLES, "astronaut.png"), "--out", str(tmp_path / "o"))
    last = err.strip().splitlines()[-1]
    assert code == 1 and "MegaPortraitFaceCrop" in last and "no face was found" in last


def test_runner_server_without_our_nodes(tmp_path, capsys, models_dir):
    import comfy_harness
    import comfy_server
    from conftest import COMFY_ROOT
    env = {"OMP_NUM_THREADS": "1"}
    if comfy_harness.needs_stubs(COMFY_ROOT):
        env["PYTHONPATH"] = comfy_harness.STUBS
    srv = comfy_server.ComfyServer(COMFY_ROOT, workdir=str(tmp_path / "bare"), with_pack=False, extra_args=["--cpu"],
                                   extra_env=env)
    srv.start()
    try:
        code, _, err = run_cli(capsys, "--server", srv.url, "--smoke", "--out", str(tmp_path / "o"))
    finally:
        srv.cleanup()
    last = err.strip().splitlines()[-1]
    assert code == 1 and "does not have the MegaPortrait nodes" in last and "custom_nodes" in last


def test_runner_download_verifies_checksums(tmp_path, monkeypatch):
    """Downloads go through huggingface_hub and are checked against the hub's SHA-256 (hub calls faked here)."""
    import hashlib

    import huggingface_hub
    import runner
    payload = b"pretend weights"
    good = hashlib.sha256(payload).hexdigest()
    calls = []

    def fake_download(repo, filename, local_dir):
        calls.append((repo, filename))
        p = os.path.join(local_dir, filename)
        with open(p, "wb") as f:
            f.write(payload)
        return p
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    sha = {"value": good}
    monkeypatch.setattr(runner, "hub_sha256", lambda repo, f: sha["value"])
    missing = [{"name": "control_v11f1e_sd15_tile_fp16.safetensors", "folder": "controlnet"}]
    written = runner.download_models(missing, str(tmp_path), log=lambda m: None)
    dest = tmp_path / "controlnet" / "control_v11f1e_sd15_tile_fp16.safetensors"
    assert written == [str(dest)] and dest.read_bytes() == payload
    assert calls == [("comfyanonymous/ControlNet-v1-1_fp16_safetensors", "control_v11f1e_sd15_tile_fp16.safetensors")]
    # existing files are never overwritten
    assert runner.download_models(missing, str(tmp_path), log=lambda m: None) == []
    sha["value"] = "0" * 64
    missing2 = [{"name": "control_v11p_sd15_softedge_fp16.safetensors", "folder": "controlnet"}]
    with pytest.raises(runner.RunnerError, match="checksum mismatch"):
        runner.download_models(missing2, str(tmp_path), log=lambda m: None)
    assert sorted(os.listdir(tmp_path / "controlnet")) == ["control_v11f1e_sd15_tile_fp16.safetensors"]
    with pytest.raises(runner.RunnerError, match="not a shipped model"):
        runner.download_models([{"name": "mine.safetensors", "folder": "loras"}], str(tmp_path), log=lambda m: None)


def test_runner_set_overrides():
    import runner
    p = runner.load_workflow("megaportrait_full")
    q = copy.deepcopy(p)
    runner.apply_sets(q, ["Identity LoRA Trainer.steps=400", "MegaPortraitHarmonize.denoise=0.4",
                          "Positive prompt (keep the trigger word).text=photo of sks person, oil painting"])
    trainer = runner.nodes_titled(q, "Identity LoRA Trainer")[0]
    assert q[trainer]["inputs"]["steps"] == 400
    assert q[runner.nodes_of_type(q, "MegaPortraitHarmonize")[0]]["inputs"]["denoise"] == 0.4
    with pytest.raises(runner.RunnerError, match="no node titled"):
        runner.apply_sets(q, ["Nope.steps=1"])


def test_workflows_folder_holds_only_what_users_drag():
    """ComfyUI serves a pack's workflows/ folder as templates over HTTP: only the UI files, their thumbnails
    (<name>.jpg, shown by the template browser), their API forms and the screenshot live there (the runner and the
    tools are in tools/)."""
    found = []
    for root, dirs, files in os.walk(WF_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [os.path.relpath(os.path.join(root, f), WF_DIR) for f in files]
    assert found
    for rel in found:
        parts = rel.split(os.sep)
        assert (len(parts) == 1 and rel.endswith((".json", ".png", ".jpg"))) or (parts[0] == "api" and len(parts) == 2
                                                                         and rel.endswith(".json")), rel
