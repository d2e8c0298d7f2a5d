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


LITERAL_NODE = [re.compile(r'\bnode\s*=\s*"([^"]+)"'),                  # node = "Face Crop"
                re.compile(r'MegaPortraitError\(\s*"([^"]+)"'),           # MegaPortraitError("HF Map", ...)
                re.compile(r'\brequire\([^,()]+,\s*"([^"]+)"'),           # require("peft", "Identity LoRA Trainer", ...)
                re.compile(r'\bcheck_\w+\(\s*"([^"]+)"')]                 # check_number("HF Map", ...)


def test_errors_name_nodes_by_their_title():
    """A node name written out in nodes/ (rather than taken from TITLES) is one of the titles: the error dialog
    says the name the user sees on the canvas (issue 20: "Shading Sampler" vs "Shading ControlNet Sampler")."""
    allowed = set(titles().values())
    bad = []
    for path in sorted(glob.glob(os.path.join(NODES_DIR, "*.py"))):
        with open(path, encoding="utf-8") as f:
            src = f.read()
        for rx in LITERAL_NODE:
            for m in rx.finditer(src):
                if m.group(1) not in allowed:
                    line = src.count("\n", 0, m.start()) + 1
                    bad.append(f"{os.path.basename(path)}:{line}: {m.group(1)!r}")
    assert not bad, "node names that are not a title in nodes/common.py TITLES: " + "; ".join(bad)


def test_error_message_uses_the_title(pack):
    import torch
    from comfyui_megaportrait.nodes import maps
    t = titles()
    with pytest.raises(pack.nodes.common.MegaPortraitError, match=re.escape(f"[MegaPortrait {t['MegaPortraitHFMap']}]")):
        maps.HFMap().run(torch.zeros(1, 8, 8, 3), 1.0, "pixels", "gaussian", -1.0)
    with pytest.raises(pack.nodes.common.MegaPortraitError,
                       match=re.escape(f"[MegaPortrait {t['MegaPortraitRecombineMaps']}]")):
        maps.RecombineMaps().run(torch.zeros(1, 8, 8, 3), torch.zeros(1, 4, 4, 3), 1.0)


def test_every_node_is_in_a_shipped_workflow(pack):
    used = set()
    for path in glob.glob(os.path.join(REPO, "workflows", "api", "*.json")):
        with open(path) as f:
            used |= {n["class_type"] for n in json.load(f).values()}
    missing = set(pack.NODE_CLASS_MAPPINGS) - used
    assert not missing, f"in no shipped workflow: {sorted(missing)} (tools/build_workflows.py)"


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
  for (let i = 0; i < 240 && !document.querySelector('.side-tool-bar-container'); i++) await sleep(250);
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
    for (let i = 0; i < 60 && !shown; i++) {
      app.canvas.selectNode(node); await sleep(200); panel.openPanel('info'); await sleep(300);
      shown = document.body.innerText.includes(heading);
    }
    const img = Array.from(document.querySelectorAll('img')).find(i => i.src.endsWith('/docs/asset/maps.jpg'));
    for (let i = 0; i < 40 && img && !(img.complete && img.naturalWidth); i++) await sleep(250);
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
  for (let i = 0; i < 120; i++) {
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
        res = json.loads(b.eval(HELP_JS % (json.dumps(pages), json.dumps("MegaPortraitHFMap")), await_promise=True))
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
