"""Build the shipped workflows: UI format (drag and drop, ``version: 0.4``) in workflows/ and the same graphs in API
format (POST /prompt) in workflows/api/, from one description per graph below.

Widget order, output types and names come from the node definitions of a real ComfyUI (stock nodes and this pack),
so the two formats agree by construction; tests/test_workflows.py also converts every UI file to API form
independently (as the frontend does) and checks the result against the shipped API file.

    python tools/build_workflows.py      # rewrite the JSON files (MEGAPORTRAIT_COMFYUI or .host/ComfyUI)
    python tools/build_workflows.py --check   # exit 1 if any file is out of date

The Flux.1 workflow (megaportrait_full_flux) needs stock nodes that early-2024 ComfyUI lacks (FluxGuidance,
DualCLIPLoader's type 'flux'): it is generated and checked on a ComfyUI with Flux support (the 0.33 host:
MEGAPORTRAIT_COMFYUI=.host/ComfyUI-0.33); on an older host it is left alone, and the script says so. The same holds
for the Z-Image workflow (megaportrait_full_zimage: ModelPatchLoader, ZImageFunControlnet, CLIPLoader's type
'lumina2', ComfyUI 0.33).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(HERE)
WF_DIR = os.path.join(REPO, "workflows")
API_DIR = os.path.join(WF_DIR, "api")
MODELS = json.load(open(os.path.join(HERE, "models.json")))


def _families():
    """The pack's ``nodes/families.py`` (the model-family table), loaded by its path: it imports nothing of the pack
    or of ComfyUI, so the generator needs neither."""
    import importlib.util
    name = "megaportrait_families"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "nodes", "families.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


FAMILIES = _families()
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NODE_W = 360
GROUP_COLORS = {"Models": "#3f789e", "Identity Net: training": "#8A8", "Reference face": "#b58b2a",
                "Identity Net: dual-strength": "#88A", "Light and HF maps": "#a1309b",
                "Shading Net": "#b06634", "Paste-back, Harmonization Net": "#444"}


def model_entry(key: str) -> dict:
    m = MODELS[key]
    return {"name": m["name"], "url": f"https://huggingface.co/{m['repo']}/resolve/main/{m['file']}",
            "directory": m["directory"]}


def is_widget(spec) -> bool:
    t = spec[0]
    return isinstance(t, (list, tuple)) or t in WIDGET_TYPES or t == "COMBO"


def is_forced_input(spec) -> bool:
    """A widget type declared ``forceInput`` (e.g. Harmonize's lora_name): a socket, never a widget on the canvas.
    The UI file stores it as the early-2024 frontend saves one: an input naming its widget, and the widget's value in
    widgets_values (current frontends drop that value when they load the file); the API form has it only when linked."""
    return is_widget(spec) and len(spec) > 1 and isinstance(spec[1], dict) and bool(spec[1].get("forceInput"))


def widget_extras(name: str, spec) -> list:
    """Frontend-only values stored after a widget: the 'control after generate' combo of seeds and the
    upload button of image loaders."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extra = []
    if spec[0] == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate")):
        extra.append("fixed")
    if opts.get("image_upload"):
        extra.append("image")
    return extra


@dataclass
class Node:
    id: int
    type: str
    title: str
    pos: tuple
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)          # input name -> (Node, output slot)
    models: list | None = None
    group: str | None = None
    color: str | None = None

    def out(self, slot: int = 0):
        return (self, slot)


@dataclass
class Note:
    id: int
    text: str
    pos: tuple
    size: tuple
    group: str | None = None


class Graph:
    def __init__(self, name: str, description: str, spec: Callable[[str], tuple]):
        self.name, self.description, self.spec = name, description, spec
        self.nodes: list = []

    def add(self, type_: str, title: str, pos: tuple, group: str | None = None, models: list | None = None,
            **inputs) -> Node:
        n = Node(len(self.nodes) + 1, type_, title, pos, group=group, models=models)
        types, _, _ = self.spec(type_)
        known = {**types.get("required", {}), **types.get("optional", {})}
        for k, v in inputs.items():
            if k not in known:
                raise KeyError(f"{type_} has no input {k!r}")
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], Node):
                n.links[k] = v
            else:
                n.widgets[k] = v
        self.nodes.append(n)
        return n

    def note(self, text: str, pos: tuple, size: tuple = (NODE_W, 160), group: str | None = None) -> Note:
        n = Note(len(self.nodes) + 1, text, pos, size, group)
        self.nodes.append(n)
        return n

    def _stack_columns(self, gap: int = 40, group_gap: int = 110) -> None:
        """Stack the nodes of each column (same x) top to bottom in the order given, so none overlap."""
        cols: dict = {}
        for n in self.nodes:
            cols.setdefault(n.pos[0], []).append(n)
        for x, members in cols.items():
            y, group = None, None
            for n in sorted(members, key=lambda m: m.pos[1]):
                if isinstance(n, Note):
                    h = n.size[1]
                else:
                    types, outs, _ = self.spec(n.type)
                    n_in = sum(1 for s in ("required", "optional") for sp in types.get(s, {}).values()
                               if not is_widget(sp) or is_forced_input(sp))
                    h = node_height(types, n_in, len(outs), n.type)
                if y is None:
                    y = n.pos[1]
                elif n.group != group:
                    y += group_gap
                n.pos = (x, y)
                y = n.pos[1] + h + gap
                group = n.group

    # ---------------------------------------------------------------------------------------------- API
    def to_api(self) -> dict:
        api = {}
        for n in self.nodes:
            if isinstance(n, Note):
                continue
            types, _, _ = self.spec(n.type)
            inputs = {}
            for section in ("required", "optional"):
                for name, spec in types.get(section, {}).items():
                    if name in n.links:
                        src, slot = n.links[name]
                        inputs[name] = [str(src.id), slot]
                    elif is_widget(spec) and not is_forced_input(spec):
                        if name in n.widgets:
                            inputs[name] = n.widgets[name]
                        else:                  # what the UI file holds, so what the frontend sends
                            inputs[name] = default_value(spec)
            api[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title}}
        return api

    # ----------------------------------------------------------------------------------------------- UI
    def to_ui(self) -> dict:
        links, ui_nodes = [], []
        outgoing: dict = {}
        link_id = 0
        link_of: dict = {}
        for n in self.nodes:
            if isinstance(n, Note):
                continue
            types, _, _ = self.spec(n.type)
            for section in ("required", "optional"):
                for name in types.get(section, {}):
                    if name in n.links:
                        src, slot = n.links[name]
                        link_id += 1
                        out_type = self.spec(src.type)[1][slot]
                        links.append([link_id, src.id, slot, n.id, None, out_type])
                        link_of[(n.id, name)] = link_id
                        outgoing.setdefault((src.id, slot), []).append(link_id)
        order = {n.id: i for i, n in enumerate(self.nodes)}
        self._stack_columns()
        for n in self.nodes:
            if isinstance(n, Note):
                ui_nodes.append({"id": n.id, "type": "Note", "pos": list(n.pos), "size": list(n.size), "flags": {},
                                 "order": order[n.id], "mode": 0, "inputs": [], "outputs": [],
                                 "properties": {"text": ""}, "widgets_values": [n.text], "color": "#432",
                                 "bgcolor": "#653"})
                continue
            types, out_types, out_names = self.spec(n.type)
            inputs, widgets = [], []
            for section in ("required", "optional"):
                for name, spec in types.get(section, {}).items():
                    if is_widget(spec):
                        val = n.widgets.get(name, spec[1].get("default") if len(spec) > 1 and isinstance(spec[1], dict)
                                            and "default" in spec[1] else default_value(spec))
                        widgets.append(val)
                        widgets.extend(widget_extras(name, spec))
                        if not is_forced_input(spec):
                            continue
                    entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                             "link": link_of.get((n.id, name))}
                    if is_forced_input(spec):
                        entry["widget"] = {"name": name}
                    inputs.append(entry)
            for slot_i, e in enumerate(inputs):
                if e["link"] is not None:
                    for lk in links:
                        if lk[0] == e["link"]:
                            lk[4] = slot_i
            outputs = []
            for slot, (t, nm) in enumerate(zip(out_types, out_names)):
                outputs.append({"name": nm, "type": t, "links": outgoing.get((n.id, slot), []), "slot_index": slot})
            h = node_height(types, len(inputs), len(outputs), n.type)
            props = {"Node name for S&R": n.type}
            if n.models:
                props["models"] = n.models
            node = {"id": n.id, "type": n.type, "pos": list(n.pos), "size": [NODE_W, h], "flags": {},
                    "order": order[n.id], "mode": 0, "inputs": inputs, "outputs": outputs, "properties": props,
                    "widgets_values": widgets, "title": n.title}
            ui_nodes.append(node)
        groups = []
        for gname in dict.fromkeys(n.group for n in self.nodes if n.group):
            members = [u for u, n in zip(ui_nodes, self.nodes) if n.group == gname]
            x0 = min(u["pos"][0] for u in members) - 20
            y0 = min(u["pos"][1] for u in members) - 60
            x1 = max(u["pos"][0] + u["size"][0] for u in members) + 20
            y1 = max(u["pos"][1] + u["size"][1] for u in members) + 20
            groups.append({"title": gname, "bounding": [x0, y0, x1 - x0, y1 - y0],
                           "color": GROUP_COLORS.get(gname, "#3f789e"), "font_size": 24, "flags": {}})
        return {"last_node_id": len(self.nodes), "last_link_id": link_id, "nodes": ui_nodes, "links": links,
                "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.55, "offset": [40, 80]},
                                                            "megaportrait": {"workflow": self.name,
                                                                             "description": self.description}},
                "version": 0.4}


def node_height(types: dict, n_inputs: int, n_outputs: int, class_type: str) -> int:
    """Roughly the height the frontend draws a node at (title, slots, widgets, image previews)."""
    h = 36 + 20 * max(n_inputs, n_outputs)
    for section in ("required", "optional"):
        for spec in types.get(section, {}).values():
            if is_widget(spec) and not is_forced_input(spec):
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                h += 90 if opts.get("multiline") else 24
                if spec[0] == "INT" and ("control_after_generate" in opts):
                    h += 24
    if class_type in ("LoadImage", "PreviewImage", "SaveImage"):
        h += 260
    return h


def default_value(spec):
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    if isinstance(t, (list, tuple)):
        return t[0] if t else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(t)


# ----------------------------------------------------------------------------------------------- the graphs
POSITIVE = ("photo of sks person, portrait photograph, detailed skin texture, natural light, sharp focus")
NEGATIVE = "blurry, deformed, cartoon, painting, drawing, lowres, bad anatomy, watermark, text"
X = [0, 440, 880, 1320, 1760, 2200, 2640]


def _models_and_prompts(g: Graph, family: str, train: bool):
    if family == "sd15":
        ckpt = g.add("CheckpointLoaderSimple", "Load checkpoint (SD1.5 photo model)", (X[0], 0), "Models",
                     [model_entry("sd15_checkpoint")], ckpt_name=MODELS["sd15_checkpoint"]["name"])
        vae = g.add("VAELoader", "Load VAE", (X[0], 150), "Models", [model_entry("sd15_vae")],
                    vae_name=MODELS["sd15_vae"]["name"]).out(0)
        tile = g.add("ControlNetLoader", "ControlNet: tile (light map)", (X[0], 260), "Models", [model_entry("sd15_tile")],
                     control_net_name=MODELS["sd15_tile"]["name"])
        detail = g.add("ControlNetLoader", "ControlNet: softedge (HF map)", (X[0], 370), "Models",
                       [model_entry("sd15_softedge")], control_net_name=MODELS["sd15_softedge"]["name"])
        inpaint = g.add("ControlNetLoader", "ControlNet: inpaint (harmonization)", (X[0], 480), "Models",
                        [model_entry("sd15_inpaint")], control_net_name=MODELS["sd15_inpaint"]["name"])
    else:
        ckpt = g.add("CheckpointLoaderSimple", "Load checkpoint (SDXL)", (X[0], 0), "Models", [model_entry("sdxl_checkpoint")],
                     ckpt_name=MODELS["sdxl_checkpoint"]["name"])
        vae = ckpt.out(2)
        tile = g.add("ControlNetLoader", "ControlNet: tile SDXL (light map)", (X[0], 260), "Models",
                     [model_entry("sdxl_tile")], control_net_name=MODELS["sdxl_tile"]["name"])
        detail = g.add("ControlNetLoader", "ControlNet: MistoLine SDXL (HF map)", (X[0], 370), "Models",
                       [model_entry("sdxl_line")], control_net_name=MODELS["sdxl_line"]["name"])
        inpaint = None
    return ckpt, vae, tile, detail, inpaint


def _identity_training(g: Graph, ckpt: Node, vae, fa: Node, res: int, model=None, clip=None, **settings) -> tuple:
    """Load Source Photos + Identity LoRA Trainer (on ckpt's MODEL/CLIP, or on ``model``/``clip``); ``settings``
    override the trainer's (SD1.5/SDXL: 800 steps, rank 8)."""
    photos = g.add("MegaPortraitLoadSourcePhotos", "Source photos", (X[1], 120), "Identity Net: training",
                   folder="megaportrait_source", filenames="", resolution=res, face_scale=2.2, min_photos=6, seed=0,
                   face_analysis=fa.out(0))
    train = dict(trigger_word="sks", class_word="person", prompt_template="photo of {trigger} {class}",
                 steps=800, learning_rate=1e-4, rank=8, alpha=8.0, batch_size=1, resolution=res, seed=0,
                 save_name="megaportrait/identity")
    train.update(settings)
    trainer = g.add("MegaPortraitIdentityLoraTrainer", "Identity LoRA Trainer", (X[1], 420), "Identity Net: training",
                    model=model or ckpt.out(0), clip=clip or ckpt.out(1), vae=vae, images=photos.out(0),
                    face_analysis=fa.out(0), face_masks=photos.out(2), **train)
    g.add("SaveImage", "Save loss curve", (X[1], 1120), "Identity Net: training", images=trainer.out(3),
          filename_prefix="MegaPortrait/loss_curve")
    return photos, trainer


# the family table's sampler defaults (SD: cfg 5, dpmpp_2m + karras). Flux.1 dev is guidance-distilled: the guidance
# goes in the conditioning (FluxGuidance), CFG stays off (1.0, so the negative prompt is never evaluated), and its
# flow schedule wants euler + simple
SD_SAMPLING = FAMILIES.by_name("SD1.x").sampling.widgets()
FLUX_SAMPLING = FAMILIES.by_name("Flux.1").sampling.widgets()
# Z-Image-Turbo (step-distilled): ComfyUI's Z-Image-Turbo blueprint's 8 steps, cfg 1, res_multistep + simple
ZIMAGE_SAMPLING = FAMILIES.by_name("Z-Image").sampling.widgets()
ZIMAGE_STEPS = FAMILIES.by_name("Z-Image").sampling.steps


def _sd_prompts(g: Graph, clip) -> tuple:
    pos = g.add("CLIPTextEncode", "Positive prompt (keep the trigger word)", (X[2], 0), "Reference face",
                clip=clip, text=POSITIVE)
    neg = g.add("CLIPTextEncode", "Negative prompt", (X[2], 230), "Reference face", clip=clip, text=NEGATIVE)
    return pos.out(0), neg.out(0)


def _flux_prompts(g: Graph, clip) -> tuple:
    """Flux: one prompt, its guidance set by FluxGuidance; the negative is the prompt zeroed out (unused at cfg 1)."""
    enc = g.add("CLIPTextEncode", "Positive prompt (keep the trigger word)", (X[2], 0), "Reference face",
                clip=clip, text=POSITIVE)
    guided = g.add("FluxGuidance", "Flux guidance", (X[2], 180), "Reference face", conditioning=enc.out(0),
                   guidance=3.5)
    zero = g.add("ConditioningZeroOut", "Negative (zeroed; unused at cfg 1)", (X[2], 300), "Reference face",
                 conditioning=enc.out(0))
    return guided.out(0), zero.out(0)


def _zimage_prompts(g: Graph, clip) -> tuple:
    """Z-Image-Turbo (cfg 1): one prompt; the negative is the prompt zeroed out (unused at cfg 1), as ComfyUI's
    Z-Image-Turbo blueprints make it."""
    enc = g.add("CLIPTextEncode", "Positive prompt (keep the trigger word)", (X[2], 0), "Reference face",
                clip=clip, text=POSITIVE)
    zero = g.add("ConditioningZeroOut", "Negative (zeroed; unused at cfg 1)", (X[2], 230), "Reference face",
                 conditioning=enc.out(0))
    return enc.out(0), zero.out(0)


def _pipeline(g: Graph, family: str, model, clip, vae, fa: Node, tile: Node, detail: Node, inpaint: Node | None,
              res: int, photos: Node | None, reference: str = "grace_hopper.jpg", selection: str = "largest",
              min_face_size: int = 48, prompts: Callable = _sd_prompts, sampling: dict = SD_SAMPLING,
              harmonize: dict | None = None, steps: int = 25, harmonize_steps: int = 20, patches: bool = False,
              people: Node | None = None):
    """The sampling stages. ``tile`` / ``detail``: the nodes whose output 0 is the light / HF map ControlNet (the
    light one also holds the geometry in the dual-strength sampler); ``harmonize``: extra Harmonize inputs.
    ``patches``: the controls are model patches (MODEL_PATCH, Z-Image's Fun ControlNets): the stock
    ZImageFunControlnet patches the dual-strength sampler's MODEL with the face crop, and the Shading Fun ControlNet
    Sampler takes them. ``people``: the last Add Person (several people: Assign Faces to People after Face Crop, and
    every sampler and Harmonize with its people)."""
    pos, neg = prompts(g, clip)
    ref = g.add("LoadImage", "Reference portrait", (X[2], 430), "Reference face", image=reference)
    crop = g.add("MegaPortraitFaceCrop", "Face Crop", (X[2], 800), "Reference face", face_analysis=fa.out(0),
                 image=ref.out(0), crop_size=res, context=0.25, selection=selection, index=0,
                 min_face_size=min_face_size)
    faces, face_crop, per_person = crop.out(0), crop.out(1), {}
    if people is not None:
        assign = g.add("MegaPortraitAssignFacesToPeople", "Whose face is whose", (X[2], 1100), "Reference face",
                       face_analysis=fa.out(0), people=people.out(0), image=ref.out(0), face=crop.out(0),
                       face_crop=crop.out(1), match="by identity", threshold=0.0, unknown_faces="leave untouched",
                       default_person="", assignment="")
        faces, face_crop, per_person = assign.out(0), assign.out(1), {"people": assign.out(2)}
    if patches:         # geometry held by the Fun ControlNet on the MODEL, the branches stay two KSampler runs
        held = g.add(FAMILIES.by_name("Z-Image").control_node, "Fun ControlNet on the face crop (geometry)", (X[3], 0),
                     "Identity Net: dual-strength", model=model, model_patch=tile.out(0), vae=vae, strength=0.4,
                     image=faces)
        dual_inputs = dict(model=held.out(0))
    else:
        dual_inputs = dict(model=model, control_net=tile.out(0), control_strength=0.4)
    dual = g.add("MegaPortraitDualStrengthIdentitySampler", "Dual-Strength Identity Sampler", (X[3], 0),
                 "Identity Net: dual-strength", positive=pos, negative=neg, vae=vae,
                 image=faces, seed=42, steps=steps, **sampling,
                 reference_denoise=0.35, source_denoise=0.7, **dual_inputs, **per_person)
    g.add("PreviewImage", "Reference-like", (X[3], 620), "Identity Net: dual-strength", images=dual.out(1))
    g.add("PreviewImage", "Source-like", (X[3], 900), "Identity Net: dual-strength", images=dual.out(3))
    light = g.add("MegaPortraitLightMap", "Light map (of the reference-like face)", (X[4], 0), "Light and HF maps",
                  image=dual.out(1), sigma=8.0, sigma_mode="relative to 512 px", filter_type="gaussian")
    hf = g.add("MegaPortraitHFMap", "HF map, signed (of the source-like face)", (X[4], 200), "Light and HF maps",
               image=dual.out(3), sigma=8.0, sigma_mode="relative to 512 px", filter_type="gaussian", gain=1.0,
               encoding="signed")
    hf_hint = g.add("MegaPortraitHFMap", "HF map, edges (ControlNet hint)", (X[4], 430), "Light and HF maps",
                    image=dual.out(3), sigma=8.0, sigma_mode="relative to 512 px", filter_type="gaussian", gain=4.0,
                    encoding="magnitude")
    recombined = g.add("MegaPortraitRecombineMaps", "Reference light + source detail", (X[4], 660), "Light and HF maps",
                       light_map=light.out(0), hf_map=hf.out(0), gain=1.0)
    g.add("PreviewImage", "Maps preview", (X[4], 820), "Light and HF maps", images=hf_hint.out(0))
    if patches:
        nets = dict(light_model_patch=tile.out(0), hf_model_patch=detail.out(0))
        shading_node, shading_title = "MegaPortraitShadingSamplerModelPatch", "Shading Fun ControlNet Sampler"
    else:
        nets = dict(light_control_net=tile.out(0), hf_control_net=detail.out(0))
        shading_node, shading_title = "MegaPortraitShadingSampler", "Shading ControlNet Sampler"
    shading = g.add(shading_node, shading_title, (X[5], 0), "Shading Net",
                    model=model, positive=pos, negative=neg, vae=vae, light_map=light.out(0),
                    hf_map=hf_hint.out(0), **nets,
                    light_strength=0.6, light_start=0.0, light_end=1.0, hf_strength=0.5, hf_start=0.0, hf_end=0.7,
                    seed=43, steps=steps, **sampling, denoise=0.75,
                    init_image=recombined.out(0), **per_person)
    g.add("PreviewImage", "Re-rendered face", (X[5], 760), "Shading Net", images=shading.out(1))
    paste = g.add("MegaPortraitPasteBack", "Paste Back", (X[6], 0), "Paste-back, Harmonization Net",
                  reference=ref.out(0), face_crop=face_crop, face=shading.out(1), face_analysis=fa.out(0),
                  align="landmarks", mask_type="face ellipse", grow=0, feather=24, seam_width=16,
                  color_match="mean (Lab)")
    harm_kw = dict(model=model, positive=pos, negative=neg, vae=vae, image=paste.out(0), mask=paste.out(2),
                   seed=44, steps=harmonize_steps, **sampling, denoise=0.5, grow=8,
                   feather=16, crop_to_mask=True, padding=0.3, working_resolution=res)
    if inpaint is not None:
        harm_kw.update(control_net=inpaint.out(0), control_strength=0.8)
    harm_kw.update(harmonize or {})
    harm_kw.update(per_person)
    harm = g.add("MegaPortraitHarmonize", "Harmonize", (X[6], 380), "Paste-back, Harmonization Net", **harm_kw)
    g.add("SaveImage", "Save portrait", (X[6], 1000), "Paste-back, Harmonization Net", images=harm.out(0),
          filename_prefix="MegaPortrait/portrait")
    if photos is not None:
        g.add("MegaPortraitFaceSimilarity", "Identity check (source vs result)", (X[6], 1300),
              "Paste-back, Harmonization Net", face_analysis=fa.out(0), image_a=photos.out(0), image_b=harm.out(0),
              on_no_face="report")
    return harm


TIPS_FULL = ("MegaPortrait, full pipeline.\n\n1. Put 3-20 photos of the person in ComfyUI/input/megaportrait_source/ "
             "(or run tools/runner.py, which uploads them).\n2. Load the reference portrait.\n3. Queue. The LoRA is "
             "saved to models/loras/megaportrait/identity*.safetensors; next time use the 'with identity LoRA' workflow.\n\n"
             "Tweak: reference_denoise (shading) / source_denoise (identity), ControlNet strengths, harmonize denoise. "
             "Keep the trigger word (sks) in the prompt.")


def _analysis_and_saved_lora(g, ckpt):
    """The Face Analysis Loader and a Load Identity LoRA on the checkpoint (workflows that do not train)."""
    fa = g.add("MegaPortraitFaceAnalysisLoader", "Face analysis (dlib)", (X[1], 0), "Identity Net: training",
               backend="dlib", det_threshold=0.3, det_size=640)
    lora = g.add("MegaPortraitLoadIdentityLora", "Load Identity LoRA", (X[1], 160), "Identity Net: training",
                 model=ckpt.out(0), clip=ckpt.out(1), lora_name="megaportrait/identity.safetensors", strength_model=1.0,
                 strength_clip=1.0)
    return fa, lora


FLUX_NAME = "megaportrait_full_flux"
FLUX_TRAIN = dict(steps=1000, learning_rate=1e-4, rank=16, alpha=16.0, gradient_checkpointing=True)
TIPS_FLUX = (
    "MegaPortrait, full pipeline on Flux.1 [dev].\n\n"
    "LICENCE: FLUX.1 [dev], FLUX.1 Fill [dev], their VAE (ae) and the Union-Pro ControlNet are under the FLUX.1 [dev] "
    "Non-Commercial License (the Hugging Face repos are gated: accept the licence there, then log in to download). "
    "Outputs may be used as the licence allows; the models may not be used commercially without a licence from "
    "Black Forest Labs.\n\n"
    "Needs a ComfyUI with Flux support (from Aug 2024; tested on 0.33.0).\n\n"
    "1. Photos of the person in ComfyUI/input/megaportrait_source/ (3-20). 2. Load the reference portrait. 3. Queue.\n\n"
    "Memory (16-24 GB cards): both diffusion models load as fp8_e4m3fn (weight_dtype: ~12 GB each instead of 24; "
    "ComfyUI swaps them), the T5 encoder is the fp8 file, and the trainer uses gradient checkpointing. On 16 GB also set "
    "the text encoders' device to cpu and lower Face Crop's crop_size / Harmonize's working_resolution to 768.\n\n"
    "Training (Flux learns a face fast; its per-step cost is high): 512 px crops, rank 16 (alpha 16), AdamW 1e-4, 1000 "
    "steps, flipped photos on. Sampling: guidance 3.5 (FluxGuidance), cfg 1.0, euler + simple, 1024 px crops. The light "
    "map drives the union ControlNet in blur mode, the HF map in canny mode; Harmonize inpaints with Flux Fill "
    "(fill_guidance 30) carrying the identity LoRA. Keep the trigger word (sks) in the prompt.")


def flux_support(spec) -> str | None:
    """None when the ComfyUI in ``spec`` has the stock nodes the Flux workflow needs; otherwise why not."""
    try:
        spec("FluxGuidance")
    except KeyError:
        return "this ComfyUI has no FluxGuidance node (Flux support arrived in Aug 2024)"
    try:
        types = spec("DualCLIPLoader")[0]["required"]["type"][0]
    except KeyError:
        types = ()
    if "flux" not in types:
        return "this ComfyUI's DualCLIPLoader has no type 'flux'"
    return None


def _flux_models(g: Graph) -> tuple:
    """Flux.1 dev loaders: diffusion model, text encoders, VAE, one union ControlNet in two modes, Flux Fill."""
    unet = g.add("UNETLoader", "Load diffusion model (Flux.1 dev, fp8 weights)", (X[0], 0), "Models",
                 [model_entry("flux_unet")], unet_name=MODELS["flux_unet"]["name"], weight_dtype="fp8_e4m3fn")
    clip = g.add("DualCLIPLoader", "Load text encoders (CLIP-L + T5-XXL fp8)", (X[0], 150), "Models",
                 [model_entry("flux_clip_l"), model_entry("flux_t5")], clip_name1=MODELS["flux_clip_l"]["name"],
                 clip_name2=MODELS["flux_t5"]["name"], type="flux")
    vae = g.add("VAELoader", "Load VAE (Flux ae)", (X[0], 300), "Models", [model_entry("flux_vae")],
                vae_name=MODELS["flux_vae"]["name"]).out(0)
    union = g.add("ControlNetLoader", "ControlNet: Flux union pro (light + HF maps)", (X[0], 400), "Models",
                  [model_entry("flux_union")], control_net_name=MODELS["flux_union"]["name"])
    light = g.add("MegaPortraitUnionControlNetMode", "Union mode: blur (light map)", (X[0], 500), "Models",
                  control_net=union.out(0), mode="blur")
    detail = g.add("MegaPortraitUnionControlNetMode", "Union mode: canny (HF map)", (X[0], 600), "Models",
                   control_net=union.out(0), mode="canny")
    fill = g.add("UNETLoader", "Load Flux.1 Fill dev, fp8 weights (harmonization)", (X[0], 700), "Models",
                 [model_entry("flux_fill")], unet_name=MODELS["flux_fill"]["name"], weight_dtype="fp8_e4m3fn")
    return unet, clip, vae, light, detail, fill


def _flux_full(spec) -> Graph:
    g = Graph(FLUX_NAME, "MegaPortrait full pipeline (Flux.1 dev): train the identity LoRA on the source photos, then "
                         "Identity Net -> maps -> Shading Net (one union ControlNet, blur + canny modes) -> paste-back -> "
                         "Harmonization Net (Flux Fill with the identity LoRA).", spec)
    unet, clip, vae, light_cn, hf_cn, fill = _flux_models(g)
    fa = g.add("MegaPortraitFaceAnalysisLoader", "Face analysis (dlib)", (X[1], 0), "Identity Net: training",
               backend="dlib", det_threshold=0.3, det_size=640)
    photos, trainer = _identity_training(g, None, vae, fa, 512, model=unet.out(0), clip=clip.out(0), **FLUX_TRAIN)
    _pipeline(g, "flux", trainer.out(0), trainer.out(1), vae, fa, light_cn, hf_cn, None, 1024, photos,
              prompts=_flux_prompts, sampling=FLUX_SAMPLING,
              harmonize=dict(inpaint_model=fill.out(0), lora_name=trainer.out(2), inpaint_lora_strength=1.0,
                             fill_guidance=30.0))
    g.note(TIPS_FLUX, (X[0], 900), (NODE_W, 560), "Models")
    return g


ZIMAGE_NAME = "megaportrait_full_zimage"
# Identity LoRA on Z-Image-Turbo (see README, "Z-Image"): the public Turbo recipes train rank 8-16 at lr 1e-4 for
# 2000-3000 steps at batch 1 on 9-25 photos with the training adapter; the pack's 3-20 photos (flipped copies too)
# need fewer: 1500 steps, rank 16 (alpha 16), 768 px (the middle of the recipes' 512/768/1024 buckets: 2304 tokens
# a step instead of 4096), gradient checkpointing on (16-24 GB cards)
ZIMAGE_TRAIN = dict(steps=1500, learning_rate=1e-4, rank=16, alpha=16.0, gradient_checkpointing=True)
ZIMAGE_TRAIN_RES = 768
TIPS_ZIMAGE = (
    "MegaPortrait, full pipeline on Z-Image-Turbo.\n\n"
    "LICENCE: Z-Image-Turbo, its Qwen3-4B text encoder, the VAE (ae), the Z-Image Fun ControlNet union 2.1 and the "
    "Turbo training adapter are under Apache-2.0: this is the workflow for commercial work (the Flux.1 workflow's "
    "models are non-commercial).\n\n"
    "Needs ComfyUI 0.33 (Z-Image, ModelPatchLoader, ZImageFunControlnet).\n\n"
    "1. Photos of the person in ComfyUI/input/megaportrait_source/ (3-20). 2. Load the reference portrait. 3. Queue.\n\n"
    "Training: Turbo is step-distilled, so the training adapter (LoraLoaderModelOnly) goes on the trainer's 'model' "
    "only; its 'output_model' is Turbo without it, so every sampler renders with Turbo + the identity LoRA in 8 steps. "
    "768 px crops, rank 16 (alpha 16), AdamW 1e-4, 1500 steps, gradient checkpointing on. On 16 GB cards load the "
    "diffusion model with weight_dtype fp8_e4m3fn.\n\n"
    "Sampling: 8 steps, cfg 1, res_multistep + simple (ComfyUI's Z-Image-Turbo blueprint), 1024 px crops. The Fun "
    "ControlNet union patch holds the geometry in the dual-strength sampler, carries the light map and the HF edges "
    "in the Shading Fun ControlNet Sampler, and its inpaint mode guides Harmonize. Keep the trigger word (sks) in "
    "the prompt.")


def zimage_support(spec) -> str | None:
    """None when the ComfyUI in ``spec`` has the stock nodes the Z-Image workflow needs; otherwise why not."""
    for node in ("ModelPatchLoader", FAMILIES.by_name("Z-Image").control_node, "LoraLoaderModelOnly"):
        try:
            spec(node)
        except KeyError:
            return f"this ComfyUI has no {node} node (Z-Image support: ComfyUI 0.33)"
    if "lumina2" not in spec("CLIPLoader")[0]["required"]["type"][0]:
        return "this ComfyUI's CLIPLoader has no type 'lumina2' (Z-Image's Qwen3 text encoder)"
    return None


def _zimage_models(g: Graph) -> tuple:
    """Z-Image-Turbo loaders: diffusion model (+ the training adapter for the trainer), Qwen3 text encoder, VAE, the
    Fun ControlNet union patch (light map, HF map, inpaint mode)."""
    unet = g.add("UNETLoader", "Load diffusion model (Z-Image-Turbo)", (X[0], 0), "Models",
                 [model_entry("zimage_unet")], unet_name=MODELS["zimage_unet"]["name"], weight_dtype="default")
    adapter = g.add("LoraLoaderModelOnly", "Turbo training adapter (for training only)", (X[0], 150), "Models",
                    [model_entry("zimage_adapter")], model=unet.out(0), lora_name=MODELS["zimage_adapter"]["name"],
                    strength_model=1.0)
    clip = g.add("CLIPLoader", "Load text encoder (Qwen3 4B)", (X[0], 300), "Models", [model_entry("zimage_te")],
                 clip_name=MODELS["zimage_te"]["name"], type="lumina2")
    vae = g.add("VAELoader", "Load VAE (ae)", (X[0], 450), "Models", [model_entry("zimage_vae")],
                vae_name=MODELS["zimage_vae"]["name"]).out(0)
    union = g.add("ModelPatchLoader", "Fun ControlNet union 2.1 (maps + inpaint)", (X[0], 560), "Models",
                  [model_entry("zimage_union")], name=MODELS["zimage_union"]["name"])
    return unet, adapter, clip, vae, union


def _zimage_full(spec) -> Graph:
    g = Graph(ZIMAGE_NAME, "MegaPortrait full pipeline (Z-Image-Turbo, Apache-2.0): train the identity LoRA on the "
                           "source photos (with the Turbo training adapter), then Identity Net -> maps -> Shading Net "
                           "(Fun ControlNet union patch) -> paste-back -> Harmonization Net (its inpaint mode).", spec)
    unet, adapter, clip, vae, union = _zimage_models(g)
    fa = g.add("MegaPortraitFaceAnalysisLoader", "Face analysis (dlib)", (X[1], 0), "Identity Net: training",
               backend="dlib", det_threshold=0.3, det_size=640)
    photos, trainer = _identity_training(g, None, vae, fa, ZIMAGE_TRAIN_RES, model=adapter.out(0), clip=clip.out(0),
                                         output_model=unet.out(0), **ZIMAGE_TRAIN)
    _pipeline(g, "zimage", trainer.out(0), trainer.out(1), vae, fa, union, union, None, 1024, photos,
              prompts=_zimage_prompts, sampling=ZIMAGE_SAMPLING, steps=ZIMAGE_STEPS, harmonize_steps=ZIMAGE_STEPS,
              patches=True, harmonize=dict(inpaint_model_patch=union.out(0), control_strength=0.8))
    g.note(TIPS_ZIMAGE, (X[0], 700), (NODE_W, 560), "Models")
    return g


def _who_is_who(g: Graph, fa: Node, res: int) -> None:
    """Group photo: which of Face Crop's faces is the LoRA's person (Select Best Identity against the source photos)."""
    crop = next(n for n in g.nodes if getattr(n, "type", None) == "MegaPortraitFaceCrop")
    photos = g.add("MegaPortraitLoadSourcePhotos", "Source photos (the LoRA's person)", (X[1], 420),
                   "Identity Net: training", folder="megaportrait_source", filenames="", resolution=res, face_scale=2.2,
                   min_photos=0, seed=0, face_analysis=fa.out(0))
    best = g.add("MegaPortraitSelectBestIdentity", "Which face is the person", (X[2], 1250), "Reference face",
                 face_analysis=fa.out(0), source=photos.out(0), candidates=crop.out(0))
    g.add("PreviewImage", "Most similar face", (X[2], 1500), "Reference face", images=best.out(0))


PEOPLE_NAME = "megaportrait_group_people"
PEOPLE = ("alice", "bob")            # the shipped workflow's two people (tools/runner.py --person adds or drops some)
TIPS_PEOPLE = (
    "MegaPortrait on a group photo of several people: every face with the identity LoRA of the person it is.\n\n"
    "1. Per person, 3-20 photos in ComfyUI/input/megaportrait_people/<name>/ (or tools/runner.py --person NAME=DIR, "
    "repeated). Each person's LoRA is trained once and reused while the photos and settings stay the same.\n"
    "2. Load the group photo as the reference. 3. Queue.\n\n"
    "Whose face is whose: 'Whose face is whose' (Assign Faces to People) gives each face of Face Crop to the person "
    "whose photos are nearest (identity distance below threshold; 0 = the backend's own). A face of nobody known is "
    "left untouched, or given default_person. 'assignment' (e.g. 0=alice, 2=bob; 0 = the leftmost face) overrides. "
    "Its report lists every face, its person and the distances.\n\n"
    "More people: another Source photos + Identity LoRA Trainer + prompt + Add Person, chained before the last.")


def _group_people(spec) -> Graph:
    g = Graph(PEOPLE_NAME, "MegaPortrait on a group photo of several people: one identity LoRA per person (trained once "
                           "each), every face re-rendered with the LoRA of the person it is (by identity, or by face "
                           "number), all faces pasted back and harmonized in one pass.", spec)
    ckpt, vae, tile, detail, inpaint = _models_and_prompts(g, "sd15", train=True)
    fa = g.add("MegaPortraitFaceAnalysisLoader", "Face analysis (dlib)", (X[1], 0), "Identity Net: training",
               backend="dlib", det_threshold=0.3, det_size=640)
    last = None
    for k, name in enumerate(PEOPLE):
        y = 200 + 2000 * k
        photos = g.add("MegaPortraitLoadSourcePhotos", f"Source photos: {name}", (X[1], y), "Identity Net: training",
                       folder=f"megaportrait_people/{name}", filenames="", resolution=512, face_scale=2.2,
                       min_photos=6, seed=0, face_analysis=fa.out(0))
        trainer = g.add("MegaPortraitIdentityLoraTrainer", f"Identity LoRA Trainer: {name}", (X[1], y + 300),
                        "Identity Net: training", model=ckpt.out(0), clip=ckpt.out(1), vae=vae, images=photos.out(0),
                        face_analysis=fa.out(0), face_masks=photos.out(2), trigger_word="sks", class_word="person",
                        prompt_template="photo of {trigger} {class}", steps=800, learning_rate=1e-4, rank=8, alpha=8.0,
                        batch_size=1, resolution=512, seed=0, save_name=f"megaportrait/{name}")
        enc = g.add("CLIPTextEncode", f"Prompt: {name}", (X[1], y + 1000), "Identity Net: training",
                    clip=trainer.out(1), text=POSITIVE)
        links = {"people": last.out(0)} if last is not None else {}
        last = g.add("MegaPortraitAddPerson", f"Add Person: {name}", (X[1], y + 1300), "Identity Net: training",
                     face_analysis=fa.out(0), name=name, model=trainer.out(0), photos=photos.out(0),
                     positive=enc.out(0), lora_name=trainer.out(2), **links)
    _pipeline(g, "sd15", ckpt.out(0), ckpt.out(1), vae, fa, tile, detail, inpaint, 512, None,
              reference="group_photo.png", selection="every face (left to right)", min_face_size=32, people=last)
    g.note(TIPS_PEOPLE, (X[0], 620), (NODE_W, 420), "Models")
    return g


def build_all(spec) -> dict:
    graphs = {}
    for family, res in (("sd15", 512), ("sdxl", 1024)):
        name = "megaportrait_full" if family == "sd15" else "megaportrait_full_sdxl"
        g = Graph(name, f"MegaPortrait full pipeline ({'SD1.5' if family == 'sd15' else 'SDXL'}): train the identity "
                        "LoRA on the source photos, then Identity Net -> maps -> Shading Net -> paste-back -> "
                        "Harmonization Net.", spec)
        ckpt, vae, tile, detail, inpaint = _models_and_prompts(g, family, train=True)
        fa = g.add("MegaPortraitFaceAnalysisLoader", "Face analysis (dlib)", (X[1], 0), "Identity Net: training",
                   backend="dlib", det_threshold=0.3, det_size=640)
        photos, trainer = _identity_training(g, ckpt, vae, fa, res)
        _pipeline(g, family, trainer.out(0), trainer.out(1), vae, fa, tile, detail, inpaint, res, photos)
        g.note(TIPS_FULL, (X[0], 620), (NODE_W, 330), "Models")
        graphs[name] = g
    if flux_support(spec) is None:                # generated on a ComfyUI with Flux support only (see main)
        graphs[FLUX_NAME] = _flux_full(spec)
    if zimage_support(spec) is None:              # generated on a ComfyUI with Z-Image support only (see main)
        graphs[ZIMAGE_NAME] = _zimage_full(spec)

    g = Graph("megaportrait_with_lora", "MegaPortrait with an identity LoRA you already trained (no training).", spec)
    ckpt, vae, tile, detail, inpaint = _models_and_prompts(g, "sd15", train=False)
    fa, lora = _analysis_and_saved_lora(g, ckpt)
    _pipeline(g, "sd15", lora.out(0), lora.out(1), vae, fa, tile, detail, inpaint, 512, None)
    g.note("MegaPortrait with an existing identity LoRA.\n\nPick your LoRA in 'Load Identity LoRA' (trained with the full "
           "or training-only workflow) and use its prompt's trigger word in the positive prompt.", (X[0], 620),
           (NODE_W, 200), "Models")
    graphs[g.name] = g

    g = Graph("megaportrait_group", "MegaPortrait on every face of a group photo with one identity LoRA (no training): "
                                    "Face Crop crops every face, the samplers re-render the batch of faces, Paste Back "
                                    "puts them all back and Harmonize fuses every seam.", spec)
    ckpt, vae, tile, detail, inpaint = _models_and_prompts(g, "sd15", train=False)
    fa, lora = _analysis_and_saved_lora(g, ckpt)
    _pipeline(g, "sd15", lora.out(0), lora.out(1), vae, fa, tile, detail, inpaint, 512, None, reference="group_photo.png",
              selection="every face (left to right)", min_face_size=32)
    _who_is_who(g, fa, res=512)
    g.note("MegaPortrait on a group photo: every face gets the identity of one LoRA.\n\nLoad the group photo as the "
           "reference. Face Crop's selection 'every face (left to right)' makes a batch of crops (faces under "
           "min_face_size or cut by the border are left out); 'every face matching identity' with photos on its "
           "'identity' input re-renders only that person. Paste Back puts every face back into the one photo and "
           "Harmonize samples each seam in its own box.", (X[0], 620), (NODE_W, 260), "Models")
    graphs[g.name] = g
    graphs[PEOPLE_NAME] = _group_people(spec)

    g = Graph("megaportrait_train", "MegaPortrait Identity Net training only: source photos -> identity LoRA.", spec)
    ckpt = g.add("CheckpointLoaderSimple", "Load checkpoint (SD1.5 photo model)", (X[0], 0), "Models",
                 [model_entry("sd15_checkpoint")], ckpt_name=MODELS["sd15_checkpoint"]["name"])
    vae = g.add("VAELoader", "Load VAE", (X[0], 150), "Models", [model_entry("sd15_vae")],
                vae_name=MODELS["sd15_vae"]["name"]).out(0)
    fa = g.add("MegaPortraitFaceAnalysisLoader", "Face analysis (dlib)", (X[1], 0), "Identity Net: training",
               backend="dlib", det_threshold=0.3, det_size=640)
    photos, trainer = _identity_training(g, ckpt, vae, fa, 512)
    g.add("PreviewImage", "Training photos", (X[2], 0), "Identity Net: training", images=photos.out(0))
    g.note("Training only. Photos: ComfyUI/input/megaportrait_source/. Cancel keeps a checkpoint; queue again to resume. "
           "The LoRA lands in models/loras/megaportrait/.", (X[0], 300), (NODE_W, 160), "Models")
    graphs[g.name] = g
    return graphs


# ----------------------------------------------------------------------------------- subgraph blueprints
# The paper's five modules as subgraph blueprints (subgraphs/*.json, listed by ComfyUI 0.3+ at /global_subgraphs and
# shown in the frontend's node library), cut out of the full SD1.5 workflow above: the same nodes, links and values, so
# the two cannot drift. The widgets an artist tweaks are promoted onto the blueprint node (properties.proxyWidgets).
BLUEPRINT_SOURCE = "megaportrait_full"
BLUEPRINTS = {   # name: (the widgets shown on the blueprint node: (inner node title, widget))
    "Identity Net (MegaPortrait)": (("Identity LoRA Trainer", "trigger_word"), ("Identity LoRA Trainer", "steps"),
                                    ("Identity LoRA Trainer", "rank"), ("Identity LoRA Trainer", "learning_rate"),
                                    ("Positive prompt (keep the trigger word)", "text"),
                                    ("Dual-Strength Identity Sampler", "reference_denoise"),
                                    ("Dual-Strength Identity Sampler", "source_denoise"),
                                    ("Dual-Strength Identity Sampler", "seed")),
    "Light and HF Maps (MegaPortrait)": (("Light map (of the reference-like face)", "sigma"),
                                         ("HF map, edges (ControlNet hint)", "gain")),
    "Shading Net (MegaPortrait)": (("Shading ControlNet Sampler", "light_strength"),
                                   ("Shading ControlNet Sampler", "hf_strength"), ("Shading ControlNet Sampler", "hf_end"),
                                   ("Shading ControlNet Sampler", "denoise"), ("Shading ControlNet Sampler", "seed")),
    "Face Paste-back (MegaPortrait)": (("Paste Back", "feather"), ("Paste Back", "seam_width"),
                                       ("Paste Back", "color_match")),
    "Harmonization Net (MegaPortrait)": (("Harmonize", "denoise"), ("Harmonize", "grow"), ("Harmonize", "feather")),
}
BLUEPRINT_DESCRIPTIONS = {
    "Identity Net (MegaPortrait)": "Source photos -> identity LoRA -> prompts -> dual-strength pair (reference-like, "
                                   "source-like re-renders of the face crop).",
    "Light and HF Maps (MegaPortrait)": "Light map of the reference-like face, HF maps of the source-like face, and their "
                                        "recombination.",
    "Shading Net (MegaPortrait)": "Re-renders the face under two ControlNets: the light map and the HF map.",
    "Face Paste-back (MegaPortrait)": "Landmark-aligned paste-back of the re-rendered face, face and seam masks.",
    "Harmonization Net (MegaPortrait)": "Masked inpainting over the seam, and the saved portrait.",
}
# nodes that stay outside every module: the models, the shared face analysis, the reference and its crop, the check
OUTSIDE = ("CheckpointLoaderSimple", "VAELoader", "ControlNetLoader", "MegaPortraitFaceAnalysisLoader", "LoadImage",
           "MegaPortraitFaceCrop", "MegaPortraitFaceSimilarity", "Note")


def module_of(node) -> str | None:
    """Which blueprint a node of the full workflow belongs to (None: it stays a plain node)."""
    if isinstance(node, Note) or node.type in OUTSIDE:
        return None
    if node.group in ("Identity Net: training", "Identity Net: dual-strength", "Reference face"):
        return "Identity Net (MegaPortrait)"
    if node.group == "Light and HF maps":
        return "Light and HF Maps (MegaPortrait)"
    if node.group == "Shading Net":
        return "Shading Net (MegaPortrait)"
    if node.type == "MegaPortraitPasteBack":
        return "Face Paste-back (MegaPortrait)"
    if node.group == "Paste-back, Harmonization Net":
        return "Harmonization Net (MegaPortrait)"
    return None


def _subgraph_id(name: str) -> str:
    import uuid
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"megaportrait/subgraphs/{name}"))   # stable across rebuilds


def split_into_blueprints(g: Graph) -> tuple:
    """(the outer workflow: plain nodes + one node per module, {name: subgraph definition}, {name: its node in the
    outer workflow}) of a graph."""
    import copy
    import uuid
    ui = g.to_ui()
    by_id = {n["id"]: copy.deepcopy(n) for n in ui["nodes"]}
    module = {n.id: module_of(n) for n in g.nodes}
    for n in by_id.values():
        for i in n.get("inputs", []):
            i["link"] = None
        for o in n.get("outputs", []):
            o["links"] = []
    names = [m for m in BLUEPRINTS if m in set(module.values())]
    inst_id = {m: max(by_id) + 1 + i for i, m in enumerate(names)}
    subs = {m: {"id": _subgraph_id(m), "version": 1, "state": {"lastGroupId": 0, "lastNodeId": 0, "lastLinkId": 0,
                                                               "lastRerouteId": 0},
                "revision": 0, "config": {}, "name": m, "inputNode": {"id": -10, "bounding": [-400, 0, 120, 60]},
                "outputNode": {"id": -20, "bounding": [3200, 0, 120, 60]}, "inputs": [], "outputs": [], "widgets": [],
                "nodes": [], "groups": [], "links": [], "extra": {}, "category": "MegaPortrait",
                "description": BLUEPRINT_DESCRIPTIONS[m]} for m in names}
    outer_links, counters = [], {None: 0, **{m: 0 for m in names}}
    inputs_of, outputs_of = {m: {} for m in names}, {m: {} for m in names}
    inst = {m: {"id": inst_id[m], "type": subs[m]["id"], "pos": [0, 0], "size": [NODE_W, 200], "flags": {}, "order": 0,
                "mode": 0, "inputs": [], "outputs": [], "properties": {"proxyWidgets": []}, "widgets_values": [],
                "title": m} for m in names}

    def link(m, src, sslot, dst, dslot, typ):
        counters[m] += 1
        lid = counters[m]
        if m is None:
            outer_links.append([lid, src, sslot, dst, dslot, typ])
            nodes = {**by_id, **{inst_id[k]: v for k, v in inst.items()}}
        else:
            sub = subs[m]
            sub["links"].append({"id": lid, "origin_id": src, "origin_slot": sslot, "target_id": dst,
                                 "target_slot": dslot, "type": typ})
            nodes = by_id
            if src == -10:
                sub["inputs"][sslot]["linkIds"].append(lid)
            if dst == -20:
                sub["outputs"][dslot]["linkIds"].append(lid)
        if src in nodes:
            nodes[src]["outputs"][sslot]["links"].append(lid)
        if dst in nodes:
            nodes[dst]["inputs"][dslot]["link"] = lid

    def slot(table, m, key, name, typ, kind):
        if key not in table[m]:
            sub = subs[m]
            taken = {e["name"] for e in sub[kind]}
            nm, k = name, 2
            while nm in taken:
                nm, k = f"{name}_{k}", k + 1
            sub[kind].append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{m}/{kind}/{nm}")), "name": nm, "type": typ,
                              "linkIds": []})
            io = {"name": nm, "type": typ}
            inst[m][kind].append({**io, "link": None} if kind == "inputs" else {**io, "links": []})
            table[m][key] = len(sub[kind]) - 1
            return table[m][key], True
        return table[m][key], False

    done_outer = set()
    for _lid, src, sslot, dst, dslot, typ in ui["links"]:
        ms, md = module[src], module[dst]
        if ms == md:
            link(ms, src, sslot, dst, dslot, typ)
            continue
        o_src, o_sslot = src, sslot
        if ms is not None:
            name = by_id[src]["outputs"][sslot]["name"]
            if name.isupper():          # a type name (CLIPTextEncode's CONDITIONING): say what it is for
                name = by_id[dst]["inputs"][dslot]["name"]
            k, new = slot(outputs_of, ms, (src, sslot), name, typ, "outputs")
            if new:
                link(ms, src, sslot, -20, k, typ)
            o_src, o_sslot = inst_id[ms], k
        o_dst, o_dslot = dst, dslot
        if md is not None:
            k, new = slot(inputs_of, md, (o_src, o_sslot), by_id[dst]["inputs"][dslot]["name"], typ, "inputs")
            link(md, -10, k, dst, dslot, typ)
            o_dst, o_dslot = inst_id[md], k
            if not new:
                continue
        if (o_src, o_sslot, o_dst, o_dslot) not in done_outer:
            done_outer.add((o_src, o_sslot, o_dst, o_dslot))
            link(None, o_src, o_sslot, o_dst, o_dslot, typ)
    title_id = {n["title"]: n["id"] for n in by_id.values() if "title" in n}
    for m in names:
        sub = subs[m]
        sub["nodes"] = [by_id[i] for i in sorted(by_id) if module[i] == m]
        sub["state"].update(lastNodeId=max(n["id"] for n in sub["nodes"]), lastLinkId=counters[m])
        inst[m]["properties"]["proxyWidgets"] = [[str(title_id[t]), w] for t, w in BLUEPRINTS[m]]
        inst[m]["size"] = [NODE_W, 60 + 24 * max(len(inst[m]["inputs"]), len(inst[m]["outputs"]))
                           + 24 * len(BLUEPRINTS[m])]
    members = [n for i, n in sorted(by_id.items()) if module[i] is None]
    outer = dict(ui, nodes=members + [inst[m] for m in names], links=outer_links, groups=[],
                 last_node_id=max(inst_id.values()), last_link_id=counters[None],
                 definitions={"subgraphs": [subs[m] for m in names]})
    for i, n in enumerate(outer["nodes"]):
        n["order"] = i
    for k, m in enumerate(names):            # one column per module, left to right, after the reference face's
        inst[m]["pos"] = [X[3] + 440 * k, 0]
    for n in members:
        if n["type"] == "MegaPortraitFaceSimilarity":
            n["pos"] = [X[6], 500]
    return outer, subs, inst


def render_blueprints(spec) -> dict:
    """{relative path (to the repository): JSON text} of subgraphs/*.json: one workflow per module, holding one node of
    that blueprint and its definition (the format of ComfyUI's own blueprints/)."""
    g = build_all(spec)[BLUEPRINT_SOURCE]
    _outer, subs, inst = split_into_blueprints(g)
    out = {}
    for m, sub in subs.items():
        node = dict(inst[m], id=1, pos=[0, 0], order=0)
        node["inputs"] = [dict(i, link=None) for i in node["inputs"]]
        node["outputs"] = [dict(o, links=[]) for o in node["outputs"]]
        wf = {"revision": 0, "last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "version": 0.4,
              "definitions": {"subgraphs": [sub]}, "extra": {}}
        out[f"subgraphs/{m}.json"] = json.dumps(wf, indent=1) + "\n"
    return out


# --------------------------------------------------------------------------------------------- ComfyUI glue
# The files must not depend on which supported ComfyUI generates them. Outputs that stock nodes gained after the
# oldest supported host (early 2024) are left out of the UI files; every frontend adds the outputs a node declares
# when it loads a workflow. {class_type: number of outputs the early-2024 host declares}
OUTPUTS_OF_OLDEST_HOST = {
    "SaveImage": 0,        # an `images` output since ComfyUI v0.26.0
    "PreviewImage": 0,     # (a subclass of SaveImage) the same
}


def comfy_spec():
    """Node specs from the ComfyUI importable in this process (stock nodes + this pack)."""
    import nodes
    cache = {}

    def spec(class_type: str):
        if class_type not in cache:
            cls = nodes.NODE_CLASS_MAPPINGS[class_type]
            names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
            keep = OUTPUTS_OF_OLDEST_HOST.get(class_type, len(cls.RETURN_TYPES))
            cache[class_type] = (cls.INPUT_TYPES(), list(cls.RETURN_TYPES)[:keep], list(names)[:keep])
        return cache[class_type]
    return spec


def render(spec) -> dict:
    """{relative path: JSON text} of every shipped workflow file."""
    out = {}
    for name, g in build_all(spec).items():
        out[f"{name}.json"] = json.dumps(g.to_ui(), indent=1) + "\n"
        out[f"api/{name}.json"] = json.dumps(g.to_api(), indent=1) + "\n"
    return out


def _setup_comfy():
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import comfy_harness
    root = os.environ.get("MEGAPORTRAIT_COMFYUI") or os.path.join(REPO, ".host", "ComfyUI")
    comfy_harness.import_comfy(root)
    h = comfy_harness.Harness(root)
    import tempfile
    cn = tempfile.mkdtemp(prefix="mp-build-")
    os.symlink(REPO, os.path.join(cn, "comfyui-megaportrait"))
    h.load_custom_nodes(cn)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _setup_comfy()
    spec = comfy_spec()
    files = render(spec)
    for name, why in ((FLUX_NAME, flux_support(spec)), (ZIMAGE_NAME, zimage_support(spec))):
        if why:
            print(f"skipped {name} (left as it is): {why}; generate and check it on ComfyUI 0.33, "
                  "e.g. MEGAPORTRAIT_COMFYUI=.host/ComfyUI-0.33 .venv-0.33/bin/python tools/build_workflows.py")
    files = {os.path.join(WF_DIR, rel): text for rel, text in files.items()}
    files.update({os.path.join(REPO, rel): text for rel, text in render_blueprints(spec).items()})
    stale = []
    for path, text in files.items():
        rel = os.path.relpath(path, WF_DIR)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(rel)
            if "--check" not in argv:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    print(("out of date: " if "--check" in argv else "written: ") + (", ".join(stale) or "nothing"))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main())
