"""What ComfyUI shows of the pack besides the nodes themselves: one title per node (UI, errors, help pages,
translations), every node in a shipped workflow, the help pages, template thumbnails, translations and the registry
metadata."""
import glob
import json
import os
import re

import pytest
from conftest import REPO

NODES_DIR = os.path.join(REPO, "nodes")


def titles():
    from conftest import import_pack
    return import_pack().nodes.common.TITLES


# ------------------------------------------------------------------------------------------- one title per node
def test_display_names_are_the_titles(pack):
    t = titles()
    assert set(t) == set(pack.NODE_CLASS_MAPPINGS), "nodes/common.py TITLES must name every node class, and only those"
    assert len(set(t.values())) == len(t), "two nodes share a title"
    for cls, title in t.items():
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[cls] == f"{title} (MegaPortrait)"


NODE_ARG_CALLS = ("MegaPortraitError", "require", "missing_package_error")    # and every check_*(node, ...)


def _literal_node_names(path: str) -> list[str]:
    """Node names written out in a module instead of taken from TITLES: a string that is exactly a title, and a
    string literal given as the node of an error (``node = "..."``, ``MegaPortraitError("...", ...)``,
    ``require(mod, "...")``, ``check_number("...", ...)``, ``node="..."``)."""
    import ast
    allowed = set(titles().values())
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = []

    def literal(n):
        return isinstance(n, ast.Constant) and isinstance(n.value, str)

    for n in ast.walk(tree):
        if literal(n) and n.value in allowed:
            found.append((n.lineno, n.value))
        elif isinstance(n, ast.Assign) and literal(n.value) and any(
                isinstance(t, ast.Name) and t.id == "node" for t in n.targets):
            found.append((n.lineno, n.value.value))
        elif isinstance(n, ast.Call):
            name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            pos = 1 if name == "require" else 0
            if (name in NODE_ARG_CALLS or name.startswith("check_")) and len(n.args) > pos and literal(n.args[pos]):
                found.append((n.lineno, n.args[pos].value))
            found += [(k.value.lineno, k.value.value) for k in n.keywords if k.arg == "node" and literal(k.value)]
    return sorted(set(found))


def test_nodes_take_their_title_from_titles():
    """No node name is written out in nodes/ (only nodes/common.py TITLES has them): an error names the node by the
    title the canvas shows (issue 20: "Shading Sampler" vs "Shading ControlNet Sampler"), and renaming a node in
    TITLES renames it everywhere. tests/test_bad_input.py checks the other half: each error raised through the
    server names the node class that raised it by that class's title."""
    bad = []
    for path in sorted(glob.glob(os.path.join(NODES_DIR, "*.py"))):
        if os.path.basename(path) == "common.py":
            continue
        bad += [f"{os.path.basename(path)}:{line}: {name!r}" for line, name in _literal_node_names(path)]
    assert not bad, "node names written out instead of TITLES[<node class>]: " + "; ".join(bad)


def test_the_literal_node_name_scan_finds_them(tmp_path):
    """The scan above finds each way a node name was written out before (so it cannot pass by missing them)."""
    src = tmp_path / "m.py"
    src.write_text('node = "Shading Sampler"\n'
                   'raise MegaPortraitError("Recombine", "p")\n'
                   'peft = require("peft", "Identity LoRA Trainer", "peft")\n'
                   'check_number("HF  Map", "gain", 1.0)\n'
                   'fa = FaceAnalyzer(node="Face Analysis")\n'
                   'hint = f"connect {TITLES[k]} or {x}"\n'
                   'fix = "load it with " + "Load Identity LoRA"\n')
    assert [n for _, n in _literal_node_names(str(src))] == [
        "Shading Sampler", "Recombine", "Identity LoRA Trainer", "HF  Map", "Face Analysis", "Load Identity LoRA"]


def test_error_message_uses_the_title(pack):
    import torch
    from comfyui_megaportrait.nodes import maps
    t = titles()
    with pytest.raises(pack.nodes.common.MegaPortraitError, match=re.escape(f"[MegaPortrait {t['MegaPortraitHFMap']}]")):
        maps.HFMap().run(torch.zeros(1, 8, 8, 3), 1.0, "pixels", "gaussian", -1.0)
    with pytest.raises(pack.nodes.common.MegaPortraitError,
                       match=re.escape(f"[MegaPortrait {t['MegaPortraitRecombineMaps']}]")):
        maps.RecombineMaps().run(torch.zeros(1, 8, 8, 3), torch.zeros(1, 4, 4, 3), 1.0)


def test_pure_layers_raise_their_own_errors_and_nodes_name_themselves(pack, monkeypatch):
    """Without peft, the LoRA layer injection (a pure layer) raises MissingPackage naming no node; the trainer node
    checks for peft itself and names itself by its title."""
    import sys

    import torch
    common, lt = pack.nodes.common, pack.nodes.lora_training
    monkeypatch.setitem(sys.modules, "peft", None)          # what a missing package looks like to an import
    with pytest.raises(common.MissingPackage) as e:
        lt.inject_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), r"0", 1, 1.0, 0)
    assert "peft" in str(e.value) and not isinstance(e.value, common.MegaPortraitError)
    assert not [t for t in titles().values() if t in str(e.value)], str(e.value)
    node = titles()["MegaPortraitIdentityLoraTrainer"]
    with pytest.raises(common.MegaPortraitError, match=re.escape(f"[MegaPortrait {node}]") + ".*pip install peft"):
        common.require("peft", node, "peft", "identity LoRA training")


def test_every_node_is_in_a_shipped_workflow(pack):
    used = set()
    for path in glob.glob(os.path.join(REPO, "workflows", "api", "*.json")):
        with open(path) as f:
            used |= {n["class_type"] for n in json.load(f).values()}
    missing = set(pack.NODE_CLASS_MAPPINGS) - used
    assert missing == set(NOT_YET_IN_A_WORKFLOW), (f"in no shipped workflow: {sorted(missing)} (tools/build_workflows.py); "
                                                   f"known and waiting: {NOT_YET_IN_A_WORKFLOW}")


# nodes whose workflow is an open piece of work (the entry goes when the workflow ships: the test above then fails)
NOT_YET_IN_A_WORKFLOW: dict = {}


# ------------------------------------------------------------------------------------ help pages and translations
PACK_URL = "comfyui-megaportrait"          # the folder name the test servers give the pack (tools/comfy_server.py)
DOCS = os.path.join(REPO, "web", "docs")
LOCALES = os.path.join(REPO, "locales")
WF_DIR = os.path.join(REPO, "workflows")
CJK = re.compile(r"[\u4e00-\u9fff]")


def our_classes(comfy) -> dict:
    return {k: v for k, v in comfy.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("MegaPortrait")}


def test_help_pages_and_locales_are_up_to_date(comfy):
    """web/docs and locales are generated from the node definitions and tools/node_texts.py (on either host)."""
    import build_surfaces
    files = build_surfaces.render(our_classes(comfy), titles())
    for rel, text in files.items():
        path = os.path.join(REPO, rel)
        assert os.path.isfile(path), f"{rel} is missing: run python tools/build_surfaces.py"
        with open(path, encoding="utf-8") as f:
            assert f.read() == text, f"{rel} is stale: run python tools/build_surfaces.py"


def test_every_node_has_en_and_zh_pages_naming_every_input_and_output(comfy):
    for cls_name, cls in our_classes(comfy).items():
        types = cls.INPUT_TYPES()
        inputs = [n for s in ("required", "optional") for n in types.get(s, {})]
        outputs = list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)
        for rel in (f"{cls_name}.md", os.path.join(cls_name, "zh.md")):
            with open(os.path.join(DOCS, rel), encoding="utf-8") as f:
                text = f.read()
            title = titles()[cls_name]
            assert text.startswith("# ") and title in text.splitlines()[0], rel
            for name in inputs + outputs:
                assert f"| `{name}`" in text, f"{rel} does not describe {name!r}"
            for img in re.findall(r"\]\((asset/[^)]+)\)", text):
                path = os.path.join(DOCS, img)
                assert os.path.isfile(path) and os.path.getsize(path) < 150_000, img
            if rel.endswith("zh.md"):
                assert len(CJK.findall(text)) > 100, f"{rel} is not in Chinese"


def test_locales_cover_every_node_input_and_output(comfy):
    for lang in ("en", "zh"):
        with open(os.path.join(LOCALES, lang, "nodeDefs.json"), encoding="utf-8") as f:
            defs = json.load(f)
        with open(os.path.join(LOCALES, lang, "main.json"), encoding="utf-8") as f:
            cats = json.load(f)["nodeCategories"]
        for cls_name, cls in our_classes(comfy).items():
            d = defs[cls_name]
            assert d["display_name"].endswith("(MegaPortrait)") and d["description"]
            assert set(cls.CATEGORY.split("/")) <= set(cats), cls.CATEGORY
            types = cls.INPUT_TYPES()
            for name in [n for s in ("required", "optional") for n in types.get(s, {})]:
                entry = d["inputs"][name]
                assert entry["name"] and entry["tooltip"], (lang, cls_name, name)
                if lang == "zh":
                    assert CJK.search(entry["tooltip"]), f"zh tooltip of {cls_name}.{name} is not Chinese"
            assert len(d["outputs"]) == len(cls.RETURN_TYPES)
            for out in d["outputs"].values():
                assert out["name"] and out["tooltip"]
        if lang == "en":
            assert {k: v["display_name"] for k, v in defs.items()} == {
                k: f"{t} (MegaPortrait)" for k, t in titles().items()}, "en display names are the titles"


def test_every_template_has_a_small_thumbnail():
    from PIL import Image
    names = [f[:-5] for f in os.listdir(WF_DIR) if f.endswith(".json")]
    assert len(names) >= 6
    for name in names:
        path = os.path.join(WF_DIR, f"{name}.jpg")
        assert os.path.isfile(path), f"{name} has no thumbnail (python tools/build_surfaces.py --pictures)"
        assert os.path.getsize(path) < 100_000
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (512, 384)


# ------------------------------------------------------------------------------------ served by a real server
def _current() -> bool:
    import comfy_server
    from conftest import COMFY_ROOT
    return comfy_server.is_current_comfyui(COMFY_ROOT)


@pytest.mark.server
def test_help_pages_are_served_where_the_frontend_asks(server, pack):
    """/extensions/<pack>/docs/<NodeClass>.md and .../<NodeClass>/zh.md (WEB_DIRECTORY; the early-2024 host serves
    the folder too, its frontend has no help panel)."""
    for cls_name in pack.NODE_CLASS_MAPPINGS:
        for rel in (f"{cls_name}.md", f"{cls_name}/zh.md"):
            code, body = server.client.request(f"/extensions/{PACK_URL}/docs/{rel}", raw=True)
            assert code == 200, rel
            with open(os.path.join(DOCS, rel), "rb") as f:
                assert body == f.read()
    code, body = server.client.request(f"/extensions/{PACK_URL}/docs/asset/maps.jpg", raw=True)
    assert code == 200 and body[:3] == b"\xff\xd8\xff"


@pytest.mark.server
def test_thumbnails_and_translations_are_served(server, pack):
    code, listing = server.client.request("/workflow_templates")
    if code == 404:
        pytest.skip("the early-2024 host has no template browser and no /i18n (ComfyUI 0.3+ serves them)")
    for name in listing[PACK_URL]:
        code, body = server.client.request(f"/api/workflow_templates/{PACK_URL}/{name}.jpg", raw=True)
        assert code == 200 and body[:3] == b"\xff\xd8\xff", name
    code, i18n = server.client.request("/i18n")
    assert code == 200
    for lang in ("en", "zh"):
        with open(os.path.join(LOCALES, lang, "nodeDefs.json"), encoding="utf-8") as f:
            mine = json.load(f)
        for cls_name in pack.NODE_CLASS_MAPPINGS:
            assert i18n[lang]["nodeDefs"][cls_name] == mine[cls_name]
        assert i18n[lang]["nodeCategories"]["Maps"]
    assert i18n["zh"]["nodeDefs"]["MegaPortraitHFMap"]["display_name"] == "高频图 (MegaPortrait)"


# ------------------------------------------------------------------------------------ in the web frontend
HELP_JS = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const until = s => Date.now() + s * 1000;       // generous: CI shares two cores between the server and chromium
  for (const t = until(50); Date.now() < t && !document.querySelector('.side-tool-bar-container');) await sleep(250);
  const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
  const out = {};
  for (const [locale, heading] of %s) {
    await app.extensionManager.setting.set('Comfy.Locale', locale);
    await sleep(500);
    const node = LiteGraph.createNode(%s);
    node.pos = [100, 100];
    app.graph.add(node);
    const panel = pinia._s.get('rightSidePanel');
    let shown = false;
    for (const t = until(40); Date.now() < t && !shown;) {
      app.canvas.selectNode(node); await sleep(200); panel.openPanel('info'); await sleep(300);
      shown = document.body.innerText.includes(heading);
    }
    const img = Array.from(document.querySelectorAll('img')).find(i => i.src.endsWith('/docs/asset/maps.jpg'));
    for (const t = until(20); Date.now() < t && img && !(img.complete && img.naturalWidth);) await sleep(250);
    out[locale] = {shown, picture: img ? img.naturalWidth : 0};
    app.graph.remove(node);
  }
  await app.extensionManager.setting.set('Comfy.Locale', 'en');
  return JSON.stringify(out);
})()"""

TEMPLATES_JS = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  performance.clearResourceTimings();          // the page's own assets fill the buffer (250 entries)
  performance.setResourceTimingBufferSize(5000);
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  const want = %s;
  let got = [], loaded = 0;
  for (const t = Date.now() + 100000; Date.now() < t;) {
    const nav = Array.from(document.querySelectorAll('body *')).find(e => e.children.length === 0
                                                                    && e.textContent.trim() === %s);
    if (nav) (nav.closest('button, a, li, [role=button], [role=option], [role=menuitem]') || nav).click();
    await sleep(250);
    got = performance.getEntriesByType('resource').filter(e => e.name.includes('/workflow_templates/' + %s + '/')
          && e.name.endsWith('.jpg') && (e.responseStatus === undefined || e.responseStatus === 200))
          .map(e => decodeURIComponent(e.name.split('/').pop()));
    loaded = Array.from(document.querySelectorAll('img')).filter(i => i.complete && i.naturalWidth === 512).length;
    if (want.every(w => got.includes(w)) && loaded >= want.length) break;
  }
  return JSON.stringify({got, loaded});
})()"""


def check_surfaces_in_browser(srv, shot: str | None = None) -> None:
    """The node help panel shows HF Map's page (en and zh, with its picture) and the template browser shows every
    template's thumbnail."""
    import browser
    if browser.find_chromium() is None:
        pytest.fail("chromium is not installed: tests/run_tests.sh installs Debian's chromium package")
    b = browser.Browser()
    try:
        b.navigate(srv.url + "/")
        b.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
                   "Object.keys(LiteGraph.registered_node_types).includes('MegaPortraitHFMap'))", timeout=120)
        pages = [["en", "In the MegaPortrait pipeline"], ["zh", "在 MegaPortrait 流程中的作用"]]
        res = {}
        for page in pages:      # one evaluation per language: each stays within the driver's 120 s read timeout
            res.update(json.loads(b.eval(HELP_JS % (json.dumps([page]), json.dumps("MegaPortraitHFMap")),
                                         await_promise=True)))
        for locale, _ in pages:
            assert res[locale]["shown"], f"the help panel did not show the {locale} page: {res}"
            assert res[locale]["picture"] > 0, f"the {locale} page's picture did not load: {res}"
        want = sorted(f"{f[:-5]}.jpg" for f in os.listdir(WF_DIR) if f.endswith(".json"))
        res = json.loads(b.eval(TEMPLATES_JS % (json.dumps(want), json.dumps(PACK_URL), json.dumps(PACK_URL)),
                                await_promise=True))
        assert sorted(set(res["got"])) == want, res
        assert res["loaded"] >= len(want), res
        if shot:
            b.screenshot(shot)
    finally:
        b.close()


@pytest.mark.server
def test_frontend_shows_help_pages_and_thumbnails(server):
    if not _current():
        pytest.skip("the early-2024 frontend has no node help panel and no template browser (ComfyUI 0.3+ has them)")
    check_surfaces_in_browser(server, os.environ.get("MEGAPORTRAIT_SURFACES_SCREENSHOT"))


def _extra_frontends() -> list:
    return [p for p in os.environ.get("MEGAPORTRAIT_EXTRA_FRONTENDS", "").split(os.pathsep) if p]


@pytest.mark.server
@pytest.mark.parametrize("frontend", _extra_frontends() or [None],
                         ids=lambda p: "none" if p is None else os.path.basename(os.path.dirname(os.path.dirname(p))))
def test_newer_frontend_shows_help_pages_and_thumbnails(frontend, models_dir, tmp_path_factory):
    from conftest import start_server
    if not _current():
        pytest.skip("the early-2024 host serves only its own web/ frontend (no --front-end-root)")
    if frontend is None:
        pytest.skip("no newer frontend named in MEGAPORTRAIT_EXTRA_FRONTENDS (tests/run_tests.sh sets it)")
    srv = start_server(str(tmp_path_factory.mktemp("surfaces")), models_dir, ["--front-end-root", frontend])
    try:
        check_surfaces_in_browser(srv)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------ the Comfy Registry
def _comfy_cli():
    import shutil
    import sys
    exe = shutil.which("comfy", path=os.path.join(sys.prefix, "bin")) or shutil.which("comfy")
    if exe is None:
        pytest.skip("comfy-cli is not installed (tests/requirements-0.33.txt installs it into the 0.33 host's venv)")
    return exe


def _checkout_copy(dest) -> str:
    """The repository's git-tracked files (as they are in the working tree) in a fresh git checkout at ``dest``:
    what `comfy node pack` archives is decided by git, and the test must not write into the repository."""
    import shutil
    import subprocess
    r = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True)
    if r.returncode != 0:
        pytest.skip("the repository is not a git checkout (comfy node pack archives git-tracked files)")
    for rel in filter(None, r.stdout.decode().split("\0")):
        src = os.path.join(REPO, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(dest)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(git + args, check=True, capture_output=True)
    return str(dest)


def _run_cli(exe, cwd, *args):
    import subprocess
    env = dict(os.environ, HOME=str(cwd))        # comfy-cli keeps its config in the home folder
    return subprocess.run([exe, "--skip-prompt", "--no-enable-telemetry", "node", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_pyproject_reads_as_the_registry_reads_it():
    """[tool.comfy] and [project.urls] through comfy-cli's own parser: nothing dropped, the icon and banner ship."""
    pytest.importorskip("comfy_cli", reason="comfy-cli is installed for the 0.33 host only (tests/requirements-0.33.txt)")
    from comfy_cli.registry.config_parser import extract_node_configuration
    cfg = extract_node_configuration(os.path.join(REPO, "pyproject.toml"))
    repo_url = cfg.project.urls.repository
    assert repo_url.startswith("https://github.com/")
    assert cfg.project.urls.issues.startswith(repo_url) and cfg.project.urls.documentation.startswith(repo_url)
    assert cfg.project.supported_comfyui_version == ">=0.0.1"
    # no frontend range: comfy-cli reads it from a comfyui-frontend-package dependency, which pip would install too
    assert cfg.project.supported_comfyui_frontend_version == "" and not any(
        d.startswith("comfyui-frontend-package") for d in cfg.project.dependencies)
    assert cfg.project.version and cfg.tool_comfy.publisher_id and cfg.tool_comfy.display_name
    raw = repo_url.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for url in (cfg.tool_comfy.icon, cfg.tool_comfy.banner_url):
        assert url.startswith(raw), url
        assert os.path.isfile(os.path.join(REPO, url[len(raw):])), f"{url} is not a file of the pack"


def test_comfy_node_validate_passes(tmp_path):
    exe = _comfy_cli()
    repo = _checkout_copy(tmp_path / "pack")
    r = _run_cli(exe, repo, "validate")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "All validation checks passed" in out and "Warning" not in out and "Security warnings" not in out, out


@pytest.mark.server
def test_packed_archive_installs_and_runs(tmp_path, models_dir):
    """`comfy node pack`'s archive: it holds what users need (no tests, bench, CI or build tools), and unpacked into
    a fresh ComfyUI's custom_nodes/ it loads every node and runs the smoke workflow (tiny models)."""
    import shutil
    import zipfile

    import comfy_harness
    import comfy_server
    import runner
    import tiny_models
    from conftest import COMFY_ROOT, MODEL_KINDS, TOOLS, pack_node_names
    exe = _comfy_cli()
    repo = _checkout_copy(tmp_path / "pack")
    r = _run_cli(exe, repo, "pack")
    assert r.returncode == 0, r.stdout + r.stderr
    with zipfile.ZipFile(os.path.join(repo, "node.zip")) as z:
        names = z.namelist()
        for must in ("__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "nodes/common.py",
                     "web/docs/MegaPortraitHFMap.md", "web/docs/MegaPortraitHFMap/zh.md", "web/icon.png",
                     "locales/zh/nodeDefs.json", "workflows/megaportrait_full.json", "workflows/megaportrait_full.jpg",
                     "tools/runner.py", "example_inputs/astronaut.png"):
            assert must in names, must
        for name in names:
            assert not name.startswith((".ci/", "bench/", "tests/test_", "tools/build_", "tools/setup_env",
                                        "tools/partial_load")), name
        assert len(names) == len(set(names)), "files twice in the archive"
        installed = tmp_path / "fresh" / "comfyui-megaportrait"
        z.extractall(installed)
    if not os.path.exists(os.path.join(models_dir, "checkpoints", tiny_models.CKPT_NAME)):
        comfy_harness.import_comfy(COMFY_ROOT)
        tiny_models.write_all(models_dir)
    env = {"OMP_NUM_THREADS": "1", "MEGAPORTRAIT_MODELS_FIRST": models_dir}
    if comfy_harness.needs_stubs(COMFY_ROOT):
        env["PYTHONPATH"] = comfy_harness.STUBS + os.pathsep + os.environ.get("PYTHONPATH", "")
    srv = comfy_server.ComfyServer(COMFY_ROOT, workdir=str(tmp_path / "srv"), with_pack=False,
                                   models={k: os.path.join(models_dir, k) for k in MODEL_KINDS},
                                   custom_nodes=[str(installed), os.path.join(TOOLS, "tiny_registry")],
                                   extra_env=env, extra_args=["--cpu"]).start()
    try:
        info = srv.client.object_info()
        assert all(n in info for n in pack_node_names())
        src = os.path.join(srv.input_dir, "megaportrait_source", "archive")
        os.makedirs(src, exist_ok=True)
        shutil.copy(os.path.join(str(installed), "example_inputs", "astronaut.png"), src)
        for name in os.listdir(os.path.join(str(installed), "example_inputs")):
            if name.endswith((".png", ".jpg")):
                shutil.copy(os.path.join(str(installed), "example_inputs", name), srv.input_dir)
        with open(os.path.join(str(installed), "workflows", "api", "megaportrait_full.json")) as f:
            prompt = runner.smoke_workflow(json.load(f))
        for nid in runner.nodes_of_type(prompt, "MegaPortraitLoadSourcePhotos"):
            prompt[nid]["inputs"]["folder"] = "megaportrait_source/archive"
        hist = srv.client.run(prompt, timeout=600)
        assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:2000]
        assert any("portrait" in e["filename"] for e in comfy_server.outputs_of(hist) if e.get("type") == "output")
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------ subgraph blueprints
BLUEPRINT_DIR = os.path.join(REPO, "subgraphs")


def test_blueprints_are_up_to_date_and_cut_from_the_full_workflow(comfy):
    """subgraphs/*.json come from tools/build_workflows.py's description of megaportrait_full: the five modules, every
    node of the full workflow is in one module or stays a plain node, and the definitions are those the
    blueprint-built workflow uses."""
    import build_workflows as bw
    spec = bw.comfy_spec()
    files = bw.render_blueprints(spec)
    assert sorted(files) == sorted(f"subgraphs/{n}.json" for n in bw.BLUEPRINTS)
    assert sorted(os.listdir(BLUEPRINT_DIR)) == sorted(f"{n}.json" for n in bw.BLUEPRINTS), "stray files in subgraphs/"
    for rel, text in files.items():
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            assert f.read() == text, f"{rel} is stale: run python tools/build_workflows.py"
    outer, subs, _inst = bw.split_into_blueprints(bw.build_all(spec)[bw.BLUEPRINT_SOURCE])
    full = json.load(open(os.path.join(REPO, "workflows", "megaportrait_full.json")))
    inner = [n["id"] for s in subs.values() for n in s["nodes"]]
    plain = [n["id"] for n in outer["nodes"] if n["type"] in comfy.nodes.NODE_CLASS_MAPPINGS or n["type"] == "Note"]
    assert sorted(inner + plain) == sorted(n["id"] for n in full["nodes"])
    for name, sub in subs.items():
        with open(os.path.join(BLUEPRINT_DIR, f"{name}.json"), encoding="utf-8") as f:
            shipped = json.load(f)
        assert shipped["definitions"]["subgraphs"] == [json.loads(json.dumps(sub))]
        node = shipped["nodes"][0]
        assert node["type"] == sub["id"] and node["properties"]["proxyWidgets"], name
        ids = {str(n["id"]): n for n in sub["nodes"]}
        for nid, widget in node["properties"]["proxyWidgets"]:     # every promoted widget exists on its inner node
            spec_in = comfy.nodes.NODE_CLASS_MAPPINGS[ids[nid]["type"]].INPUT_TYPES()
            assert widget in {**spec_in["required"], **spec_in.get("optional", {})}, (name, nid, widget)


def canonical(prompt: dict, object_info: dict) -> dict:
    """An API prompt keyed by node title (ids differ: the frontend names a subgraph's nodes '<outer>:<inner>'), with the
    inputs the node declares (the old frontend also sends LoadImage's upload button)."""
    title = {k: v["_meta"]["title"] for k, v in prompt.items()}
    assert len(set(title.values())) == len(title), "titles are not unique"
    out = {}
    for k, v in prompt.items():
        spec = object_info[v["class_type"]]["input"]
        known = set(spec.get("required", {})) | set(spec.get("optional", {}))
        inputs = {n: ([title[x[0]], x[1]] if isinstance(x, list) and len(x) == 2 and x[0] in title else x)
                  for n, x in v["inputs"].items() if n in known}
        out[title[k]] = {"class_type": v["class_type"], "inputs": inputs}
    return out


BLUEPRINT_JS = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
  const store = pinia._s.get('nodeDef');
  let library = [];
  for (const t = Date.now() + 100000; Date.now() < t;) {
    const all = store.allNodeDefsByName || store.nodeDefsByName;
    library = Object.values(all).filter(d => d.name.startsWith('SubgraphBlueprint.')
                                        && /\\(MegaPortrait\\)$/.test(d.display_name)).map(d => d.display_name);
    if (library.length >= %d) break;
    await sleep(250);
  }
  await app.loadGraphData(%s);
  const p = await app.graphToPrompt();
  return JSON.stringify({library, output: p.output});
})()"""


def check_blueprints_in_browser(srv, outer: dict, names: list) -> dict:
    import browser
    if browser.find_chromium() is None:
        pytest.fail("chromium is not installed: tests/run_tests.sh installs Debian's chromium package")
    b = browser.Browser()
    try:
        b.navigate(srv.url + "/")
        b.wait_for("!!(window.app && window.app.graph && window.LiteGraph && document.querySelector('#vue-app') && "
                   "Object.keys(LiteGraph.registered_node_types).includes('MegaPortraitHFMap'))", timeout=120)
        res = json.loads(b.eval(BLUEPRINT_JS % (len(names), json.dumps(outer)), await_promise=True))
        shot = os.environ.get("MEGAPORTRAIT_BLUEPRINT_SCREENSHOT")     # README's picture (web/docs/asset/blueprints.jpg)
        if shot:
            import time

            from test_workflows import FIT_GRAPH_JS
            b.eval("(async () => { document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia"
                   "._s.get('rightSidePanel')?.closePanel();"
                   " await app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0);"
                   " for (const t of document.querySelectorAll('.p-toast, [class*=minimap]')) t.style.display = 'none';"
                   " })()", await_promise=True)
            b.eval(FIT_GRAPH_JS)
            time.sleep(1.0)
            b.screenshot(shot)
    finally:
        b.close()
    assert sorted(res["library"]) == sorted(names), "the node library does not list the five blueprints"
    info = srv.client.object_info()
    with open(os.path.join(REPO, "workflows", "api", "megaportrait_full.json")) as f:
        full = json.load(f)
    assert canonical(res["output"], info) == canonical(full, info)
    return res["output"]


def _blueprint_workflow(comfy):
    import build_workflows as bw
    spec = bw.comfy_spec()
    outer, _subs, _inst = bw.split_into_blueprints(bw.build_all(spec)[bw.BLUEPRINT_SOURCE])
    return outer, list(bw.BLUEPRINTS)


@pytest.mark.server
def test_blueprints_in_the_node_library_and_the_blueprint_workflow_runs(server, comfy):
    """0.33's pinned frontend: /global_subgraphs lists the five blueprints, the node library shows them, a workflow
    built from them gives the full workflow's API prompt, and that prompt runs via /prompt with the tiny models."""
    import comfy_server
    import runner
    if not _current():
        pytest.skip("the early-2024 host has no subgraphs (/global_subgraphs: ComfyUI 0.3+)")
    code, listing = server.client.request("/global_subgraphs")
    assert code == 200
    ours = sorted(v["name"] for v in listing.values() if v["info"]["node_pack"] == f"custom_nodes.{PACK_URL}")
    outer, names = _blueprint_workflow(comfy)
    assert ours == sorted(names)
    prompt = check_blueprints_in_browser(server, outer, names)
    src = os.path.join(server.input_dir, "megaportrait_source", "blueprints")
    os.makedirs(src, exist_ok=True)
    import shutil
    shutil.copy(os.path.join(REPO, "example_inputs", "astronaut.png"), src)
    prompt = runner.smoke_workflow(prompt)
    for nid in runner.nodes_of_type(prompt, "MegaPortraitLoadSourcePhotos"):
        prompt[nid]["inputs"]["folder"] = "megaportrait_source/blueprints"
    hist = server.client.run(prompt, timeout=600)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:2000]
    assert any("portrait" in e["filename"] for e in comfy_server.outputs_of(hist) if e.get("type") == "output")


@pytest.mark.server
@pytest.mark.parametrize("frontend", _extra_frontends() or [None],
                         ids=lambda p: "none" if p is None else os.path.basename(os.path.dirname(os.path.dirname(p))))
def test_newer_frontend_shows_the_blueprints(frontend, comfy, models_dir, tmp_path_factory):
    from conftest import start_server
    if not _current():
        pytest.skip("the early-2024 host has no subgraphs (/global_subgraphs: ComfyUI 0.3+)")
    if frontend is None:
        pytest.skip("no newer frontend named in MEGAPORTRAIT_EXTRA_FRONTENDS (tests/run_tests.sh sets it)")
    outer, names = _blueprint_workflow(comfy)
    srv = start_server(str(tmp_path_factory.mktemp("blueprints")), models_dir, ["--front-end-root", frontend])
    try:
        check_blueprints_in_browser(srv, outer, names)
    finally:
        srv.stop()
