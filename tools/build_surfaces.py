"""Build what ComfyUI's frontend shows of the pack besides the nodes: the node help pages (web/docs/<NodeClass>.md and
web/docs/<NodeClass>/zh.md, served at /extensions/<pack>/docs/...) and the translations (locales/<lang>/main.json and
nodeDefs.json, merged into GET /i18n), from the node definitions (titles, inputs, tooltips, defaults) and the texts in
tools/node_texts.py. With --pictures it also draws the help pages' pictures (web/docs/asset/*.jpg) and the template
thumbnails (workflows/<name>.jpg) from example_inputs/ with the pack's own functions.

    python tools/build_surfaces.py            # rewrite the pages and locales (MEGAPORTRAIT_COMFYUI or .host/ComfyUI)
    python tools/build_surfaces.py --check    # exit 1 if a page or locale file is out of date
    python tools/build_surfaces.py --pictures # also redraw the pictures and thumbnails (needs dlib)
"""
from __future__ import annotations

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import node_texts  # noqa: E402

WEB_DIR = os.path.join(REPO, "web")
DOCS_DIR = os.path.join(WEB_DIR, "docs")
LOCALES_DIR = os.path.join(REPO, "locales")
LANGS = ("en", "zh")
# combo lists (and their defaults) that depend on the ComfyUI host or the user's files: the pages name them, they do not list them
HOST_LISTS = {"sampler_name", "scheduler", "lora_name", "insightface_pack"}
WORDS = {"en": dict(pipeline="In the MegaPortrait pipeline", inputs="Inputs", outputs="Outputs", typical="Typical values",
                    input="Input", output="Output", type="Type", default="Default", what="What it does",
                    optional="optional", used="Shipped workflows that use it", choices="choices",
                    host="the list of this ComfyUI", none="none", picture="Picture", socket="link"),
         "zh": dict(pipeline="在 MegaPortrait 流程中的作用", inputs="输入", outputs="输出", typical="常用取值",
                    input="输入", output="输出", type="类型", default="默认值", what="说明",
                    optional="可选", used="使用它的随附工作流", choices="可选值",
                    host="本 ComfyUI 的列表", none="无", picture="图示", socket="连接")}


def node_defs(classes: dict) -> dict:
    """{class: {"inputs": {name: (section, spec)}, "outputs": [(name, type, tooltip)], "description", "category"}}"""
    out = {}
    for cls_name, cls in classes.items():
        types = cls.INPUT_TYPES()
        inputs = {n: (sec, spec) for sec in ("required", "optional") for n, spec in types.get(sec, {}).items()}
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None) or [""] * len(names)
        out[cls_name] = {"inputs": inputs, "outputs": list(zip(names, cls.RETURN_TYPES, tips)),
                         "description": cls.DESCRIPTION, "category": cls.CATEGORY}
    return out


def input_zh(cls_name: str, name: str) -> tuple:
    own = node_texts.NODES[cls_name].get("inputs_zh", {})
    return own.get(name) or node_texts.SHARED_INPUTS_ZH[name]


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(name: str, spec, lang: str) -> str:
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    w = WORDS[lang]
    if isinstance(t, (list, tuple)):
        if name in HOST_LISTS:
            return f"{w['choices']}: {w['host']}"     # (its default depends on the host's list too)
        return f"`{opts.get('default', t[0] if t else '')}`; {w['choices']}: " + ", ".join(f"`{c}`" for c in t)
    if t not in ("INT", "FLOAT", "STRING", "BOOLEAN") or opts.get("forceInput"):
        return w["socket"]
    if "default" not in opts:
        return ""
    d = opts["default"]
    d = "true" if d is True else "false" if d is False else ('""' if d == "" else d)
    rng = f" ({opts['min']} .. {opts['max']})" if "min" in opts and "max" in opts else ""
    return f"`{d}`{rng}"


def _type(spec) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def workflows_using(cls_name: str) -> list:
    names = []
    for path in sorted(glob.glob(os.path.join(REPO, "workflows", "api", "*.json"))):
        with open(path) as f:
            if any(n["class_type"] == cls_name for n in json.load(f).values()):
                names.append(os.path.splitext(os.path.basename(path))[0])
    return names


def page(cls_name: str, d: dict, lang: str, titles: dict) -> str:
    t = node_texts.NODES[cls_name]
    w = WORDS[lang]
    en = lang == "en"
    title = titles[cls_name]
    lines = [f"# {title}" if en else f"# {t['zh_title']}（{title}）", "",
             d["description"] if en else t["zh_description"], "",
             f"## {w['pipeline']}", "", t["role_en"] if en else t["role_zh"], ""]
    if t.get("picture"):
        cap = node_texts.PICTURES[t["picture"]][lang]
        lines += [f"![{_md(cap)}](asset/{t['picture']}.jpg)", "", f"*{cap}*", ""]
    lines += [f"## {w['inputs']}", "", f"| {w['input']} | {w['type']} | {w['default']} | {w['what']} |", "|---|---|---|---|"]
    for name, (sec, spec) in d["inputs"].items():
        tip = spec[1].get("tooltip", "") if en else input_zh(cls_name, name)[1]
        label = f"`{name}`" if en else f"`{name}`（{input_zh(cls_name, name)[0]}）"
        if sec == "optional":
            label += f" *({w['optional']})*"
        lines.append(f"| {label} | {_type(spec)} | {_md(_default(name, spec, lang))} | {_md(tip)} |")
    lines += ["", f"## {w['outputs']}", "", f"| {w['output']} | {w['type']} | {w['what']} |", "|---|---|---|"]
    outs_zh = t["outputs_zh"]
    for i, (name, typ, tip) in enumerate(d["outputs"]):
        label = f"`{name}`" if en else f"`{name}`（{outs_zh[i][0]}）"
        lines.append(f"| {label} | {typ} | {_md(tip if en else outs_zh[i][1])} |")
    lines += ["", f"## {w['typical']}", ""] + [f"- {x}" for x in (t["typical_en"] if en else t["typical_zh"])]
    used = workflows_using(cls_name)
    lines += ["", f"## {w['used']}", "", (", ".join(f"`{n}`" for n in used) or w["none"]), ""]
    return "\n".join(lines)


def locales(defs: dict, titles: dict) -> dict:
    """{relative path: JSON text} of locales/<lang>/main.json and nodeDefs.json."""
    out = {}
    for lang in LANGS:
        nd = {}
        for cls_name, d in defs.items():
            t = node_texts.NODES[cls_name]
            en = lang == "en"
            entry = {"display_name": f"{titles[cls_name] if en else t['zh_title']} (MegaPortrait)",
                     "description": d["description"] if en else t["zh_description"], "inputs": {}, "outputs": {}}
            for name, (_sec, spec) in d["inputs"].items():
                label, tip = (name, spec[1].get("tooltip", "")) if en else input_zh(cls_name, name)
                entry["inputs"][name] = {"name": label, "tooltip": tip}
            for i, (name, _typ, tip) in enumerate(d["outputs"]):
                label, tip = (name, tip) if en else t["outputs_zh"][i]
                entry["outputs"][str(i)] = {"name": label, "tooltip": tip}
            nd[cls_name] = entry
        main = {"nodeCategories": {k: v[lang] for k, v in node_texts.CATEGORIES.items()}}
        out[f"{lang}/main.json"] = json.dumps(main, indent=1, ensure_ascii=False) + "\n"
        out[f"{lang}/nodeDefs.json"] = json.dumps(nd, indent=1, ensure_ascii=False) + "\n"
    return out


def render(classes: dict, titles: dict) -> dict:
    """{path relative to the repository: text} of every generated page and locale file."""
    defs = node_defs(classes)
    missing = sorted(set(defs) - set(node_texts.NODES))
    if missing:
        raise KeyError(f"tools/node_texts.py has no texts for {missing}")
    files = {}
    for cls_name, d in defs.items():
        files[f"web/docs/{cls_name}.md"] = page(cls_name, d, "en", titles)
        files[f"web/docs/{cls_name}/zh.md"] = page(cls_name, d, "zh", titles)
    files.update({f"locales/{rel}": text for rel, text in locales(defs, titles).items()})
    return files


def pack_classes() -> tuple:
    """(the pack's node classes as the ComfyUI in this process loaded them, the pack's TITLES)."""
    import build_workflows
    build_workflows._setup_comfy()
    import nodes
    classes = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("MegaPortrait")}
    common = sys.modules[classes["MegaPortraitLightMap"].__module__.rsplit(".", 1)[0] + ".common"]
    return classes, common.TITLES


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    classes, titles = pack_classes()
    files = render(classes, titles)
    stale = []
    for rel, text in files.items():
        path = os.path.join(REPO, rel)
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if old != text:
            stale.append(rel)
            if "--check" not in argv:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    print(("out of date: " if "--check" in argv else "written: ") + (", ".join(stale) or "nothing"))
    if "--pictures" in argv:
        import surface_pictures
        print("pictures:", ", ".join(surface_pictures.draw_all(REPO)))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main())
