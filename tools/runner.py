"""Headless MegaPortrait runner: drive a ComfyUI server with the shipped API workflows.

    python tools/runner.py --reference ref.jpg --source photos/ --out out/
        [--workflow megaportrait_full] [--server http://127.0.0.1:8188 | --comfyui /path/to/ComfyUI]
        [--download] [--smoke] [--set "Title.input=value" ...] [--faces all|largest|N|match [--identity photo]]
        [--workflow megaportrait_group_people --person NAME=FOLDER ... | --people FOLDER [--assign 0=NAME,...]
         [--unknown untouched|NAME]]

* Uploads the reference portrait and the source photos (/upload/image; the photos into
  input/megaportrait_source/<hash of the photos>/, so a second run with the same photos hits ComfyUI's cache and
  the trainer's train-once reuse), fills the API workflow (nodes are found by title and type), checks that
  every model file it names exists on the server, queues it, shows progress from the websocket and downloads the
  outputs into --out.
* Missing models: it says which file goes in which folder and where to get it; with --download (or a yes at the
  prompt when run interactively) it fetches them with huggingface_hub into the ComfyUI's model folders and checks
  their SHA-256 against the hub's. Nothing is downloaded unless asked.
* --server uses a running ComfyUI with this pack installed; otherwise a ComfyUI (--comfyui, default: the host copy
  that tools/setup_env.sh prepares) is started on 127.0.0.1 for the run.
* --faces picks the reference's faces: all (every face, left to right: megaportrait_group does this), largest,
  N (the Nth face from the left, 0 = leftmost) or match (every face matching --identity, or the source photos).
* --person NAME=FOLDER (repeated) or --people FOLDER (one folder per person) with megaportrait_group_people: each
  person's photos are uploaded into input/megaportrait_people/<hash>/ and their identity LoRA trained once
  (megaportrait/<name>); the workflow's chain of Add Person nodes is extended or cut to the people given, and
  every face of the reference is re-rendered with the LoRA of the person it is (--faces match or all: every face;
  --assign '0=alice' for explicit faces; --unknown untouched|NAME for faces of nobody known).
* --batch MANIFEST runs N people x M references from a YAML manifest (tools/batch.py; exit code 2 when some jobs
  failed: the report says which and why).
* --smoke runs the same pipeline on tiny random models with tiny settings to prove an install end to end. Its
  output is noise, and it says so.
Exit code 0 on success; otherwise one line on stderr that says what went wrong.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
import comfy_server  # noqa: E402

REPO = comfy_server.REPO
API_DIR = os.path.join(REPO, "workflows", "api")
MODELS = json.load(open(os.path.join(HERE, "models.json")))
# the ComfyUI started for a run: run_megaportrait.sh names the host it set up (0.33 when it can be had)
DEFAULT_HOST = os.environ.get("MEGAPORTRAIT_COMFYUI") or os.path.join(REPO, ".host", "ComfyUI")
TESTS = os.path.join(REPO, "tests")
REFERENCE_TITLE = "Reference portrait"
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# loader node type -> ((model input, ComfyUI folder), ...)
LOADERS = {"CheckpointLoaderSimple": (("ckpt_name", "checkpoints"),), "VAELoader": (("vae_name", "vae"),),
           "ControlNetLoader": (("control_net_name", "controlnet"),), "LoraLoader": (("lora_name", "loras"),),
           "MegaPortraitLoadIdentityLora": (("lora_name", "loras"),),
           "UNETLoader": (("unet_name", "diffusion_models"),),
           "DualCLIPLoader": (("clip_name1", "text_encoders"), ("clip_name2", "text_encoders")),
           "CLIPLoader": (("clip_name", "text_encoders"),), "ModelPatchLoader": (("name", "model_patches"),),
           "LoraLoaderModelOnly": (("lora_name", "loras"),)}
# the model folders the smoke run's tiny models go in (tiny_models.write_all)
SMOKE_FOLDERS = ("checkpoints", "controlnet", "loras", "vae", "diffusion_models", "text_encoders", "model_patches")
FLUX_NEEDS = "a ComfyUI with Flux support (from Aug 2024; tested on 0.33.0)"
ZIMAGE_NEEDS = "a ComfyUI with Z-Image support and model patches (tested on 0.33.0)"
SMOKE_SETTINGS = {
    "MegaPortraitLoadSourcePhotos": {"resolution": 64, "min_photos": 3},
    "MegaPortraitIdentityLoraTrainer": {"resolution": 64, "steps": 8, "save_name": "megaportrait/smoke_identity",
                                        "if_exists": "overwrite", "checkpoint_every": 0},
    "MegaPortraitFaceCrop": {"crop_size": 64},
    "MegaPortraitDualStrengthIdentitySampler": {"steps": 3},
    "MegaPortraitShadingSampler": {"steps": 3},
    "MegaPortraitShadingSamplerModelPatch": {"steps": 3},
    "MegaPortraitHarmonize": {"steps": 3, "working_resolution": 64},
    "MegaPortraitLoadIdentityLora": {"lora_name": "tiny_lora.safetensors"},
}
SMOKE_NOTE = ("SMOKE RUN: tiny random models with tiny settings. These images are noise; they only prove that the "
              "install runs the whole MegaPortrait pipeline end to end.")


class RunnerError(RuntimeError):
    """A failure with a one-line explanation for the user."""


FACE_SELECTIONS = {"all": "every face (left to right)", "largest": "largest", "match": "every face matching identity"}


def apply_faces(prompt: dict, faces: str, identity: list | None) -> None:
    """--faces: Face Crop's selection (and index); for 'match', ``identity`` is the link to the photos of the person
    ([node id, output]) that goes to Face Crop's 'identity' input."""
    crops = nodes_of_type(prompt, "MegaPortraitFaceCrop")
    if not crops:
        raise RunnerError("--faces: this workflow has no Face Crop node")
    if faces.isdigit():
        update = {"selection": "index (left to right)", "index": int(faces)}
    elif faces in FACE_SELECTIONS:
        update = {"selection": FACE_SELECTIONS[faces]}
    else:
        raise RunnerError(f"--faces {faces!r}: use all, largest, a face number (0 = leftmost) or match")
    if faces == "match":
        if identity is None:
            raise RunnerError("--faces match needs photos of the person: pass --identity PHOTO (or use a workflow with "
                              "source photos)")
        update["identity"] = identity
    for nid in crops:
        prompt[nid]["inputs"].update(update)


PERSON_NODES = ("MegaPortraitLoadSourcePhotos", "MegaPortraitIdentityLoraTrainer", "MegaPortraitLoadIdentityLora",
                "CLIPTextEncode")


def parse_people(person: list[str] | None, people_dir: str | None) -> list[tuple[str, list[str]]]:
    """[(name, photo files)] of --person NAME=PATH (repeated; PATH a folder or a photo) and --people DIR (every folder
    in it is a person, named after the folder), in that order."""
    out: list[tuple[str, list[str]]] = []
    for entry in person or []:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path:
            raise RunnerError(f"--person {entry!r}: use NAME=FOLDER (the person's photos)")
        out.append((name.strip(), collect_images([path])))
    if people_dir:
        if not os.path.isdir(people_dir):
            raise RunnerError(f"--people {people_dir}: not a folder (use a folder with one folder of photos per person)")
        for sub in sorted(os.listdir(people_dir)):
            if os.path.isdir(os.path.join(people_dir, sub)):
                out.append((sub, collect_images([os.path.join(people_dir, sub)])))
    names = [n.lower() for n, _ in out]
    for name, files in out:
        if not files:
            raise RunnerError(f"person {name!r} has no photos (.png, .jpg, .jpeg, .webp, .bmp)")
        if names.count(name.lower()) > 1:
            raise RunnerError(f"person {name!r} is given twice")
    if people_dir and not out:
        raise RunnerError(f"--people {people_dir}: no folders of photos in it")
    return out


def person_chain(prompt: dict) -> list[str]:
    """The Add Person nodes of a workflow, first to last (each one's 'people' input is the one before)."""
    adds = nodes_of_type(prompt, "MegaPortraitAddPerson")
    prev = {nid: (prompt[nid]["inputs"].get("people") or [None])[0] for nid in adds}
    chain, cur = [], next((n for n in adds if prev[n] is None), None)
    while cur is not None:
        chain.append(cur)
        cur = next((n for n in adds if prev[n] == cur), None)
    if len(chain) != len(adds):
        raise RunnerError("the workflow's Add Person nodes do not form one chain")
    return chain


def person_nodes(prompt: dict, add: str) -> list[str]:
    """The nodes that belong to one person: their Add Person and what feeds it (photos, trainer or LoRA loader,
    prompt), followed upstream through nodes of PERSON_NODES only."""
    own, todo = [add], [add]
    while todo:
        for name, v in prompt[todo.pop()]["inputs"].items():
            if name != "people" and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in prompt \
                    and prompt[v[0]]["class_type"] in PERSON_NODES and v[0] not in own:
                own.append(v[0])
                todo.append(v[0])
    return own


def apply_people(prompt: dict, people: list[tuple[str, str]]) -> None:
    """Make the workflow's chain of Add Person nodes the given people [(name, photos folder in the input
    directory)]: the last person's nodes are copied for each extra person, the chain is cut for fewer; each person
    gets their name, photos and own LoRA file (megaportrait/<name>, trained once while photos and settings stay)."""
    chain = person_chain(prompt)
    if not chain:
        raise RunnerError("--person/--people need a workflow with Add Person nodes (e.g. megaportrait_group_people)")
    if not people:
        return
    users = [(nid, k) for nid, n in prompt.items() for k, v in n["inputs"].items()
             if k == "people" and isinstance(v, list) and v[0] == chain[-1] and nid not in chain]
    while len(chain) < len(people):                     # copy the last person
        nodes = person_nodes(prompt, chain[-1])
        base = max(int(k) for k in prompt if k.isdigit())
        new_id = {old: str(base + 1 + i) for i, old in enumerate(nodes)}
        for old, nid in new_id.items():
            n = copy.deepcopy(prompt[old])
            for k, v in n["inputs"].items():
                if isinstance(v, list) and len(v) == 2 and v[0] in new_id:
                    n["inputs"][k] = [new_id[v[0]], v[1]]
            prompt[nid] = n
        prompt[new_id[chain[-1]]]["inputs"]["people"] = [chain[-1], 0]
        chain.append(new_id[chain[-1]])
    for extra in chain[len(people):]:                  # drop the people beyond
        for nid in person_nodes(prompt, extra):
            prompt.pop(nid, None)
    chain = chain[:len(people)]
    for nid, k in users:
        prompt[nid]["inputs"][k] = [chain[-1], 0]
    for add, (name, folder) in zip(chain, people):
        prompt[add]["inputs"]["name"] = name
        for nid in person_nodes(prompt, add):
            n = prompt[nid]
            if n["class_type"] == "MegaPortraitLoadSourcePhotos":
                n["inputs"].update(folder=folder, filenames="")
            elif n["class_type"] == "MegaPortraitIdentityLoraTrainer":
                n["inputs"]["save_name"] = f"megaportrait/{name}"
            n.setdefault("_meta", {})["title"] = f"{(n.get('_meta') or {}).get('title', '').split(':')[0]}: {name}"


def add_image_loader(prompt: dict, image: str, title: str) -> list:
    """A LoadImage node for an uploaded ``image``; returns the link to its image output."""
    nid = str(max((int(k) for k in prompt if k.isdigit()), default=0) + 1)
    prompt[nid] = {"class_type": "LoadImage", "inputs": {"image": image}, "_meta": {"title": title}}
    return [nid, 0]


def available_workflows() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(API_DIR) if f.endswith(".json"))


def load_workflow(name: str) -> dict:
    path = name if name.endswith(".json") and os.path.isfile(name) else os.path.join(API_DIR, name + ".json")
    if not os.path.isfile(path):
        raise RunnerError(f"no workflow {name!r}; shipped: {', '.join(available_workflows())}")
    with open(path) as f:
        return json.load(f)


def nodes_titled(prompt: dict, title: str) -> list[str]:
    return [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == title]


def nodes_of_type(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, n in prompt.items() if n.get("class_type") == class_type]


def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(prompt: dict, sets: list[str]) -> None:
    """--set 'Node title or class_type.input=value' (value parsed as JSON when it can be)."""
    for item in sets:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise RunnerError(f"--set {item!r}: use 'Node title.input=value'")
        target, value = item.split("=", 1)
        who, inp = target.rsplit(".", 1)
        ids = nodes_titled(prompt, who) or nodes_of_type(prompt, who)
        if not ids:
            raise RunnerError(f"--set {item!r}: the workflow has no node titled or of type {who!r}")
        for nid in ids:
            prompt[nid]["inputs"][inp] = parse_value(value)


def smoke_workflow(prompt: dict) -> dict:
    """Tiny models and tiny settings for a smoke run (same graph)."""
    prompt = copy.deepcopy(prompt)
    by_name = {m["name"]: m["smoke"] for k, m in MODELS.items() if not k.startswith("_")}
    for n in prompt.values():
        ct = n["class_type"]
        if ct in LOADERS and ct != "MegaPortraitLoadIdentityLora":
            for inp, _ in LOADERS[ct]:
                n["inputs"][inp] = by_name.get(n["inputs"].get(inp), n["inputs"].get(inp))
        n["inputs"].update(SMOKE_SETTINGS.get(ct, {}))
        if ct == "SaveImage":
            pre = n["inputs"].get("filename_prefix", "MegaPortrait/out")
            head, _, tail = pre.rpartition("/")
            n["inputs"]["filename_prefix"] = (head + "/" if head else "") + "SMOKE_noise_" + tail
    return prompt


def required_models(prompt: dict) -> list[dict]:
    out = []
    for nid, n in prompt.items():
        for inp, folder in LOADERS.get(n["class_type"], ()):
            name = n["inputs"].get(inp)
            if isinstance(name, str):
                out.append({"node": nid, "class_type": n["class_type"], "input": inp, "name": name, "folder": folder})
    return out


def manifest_entry(name: str):
    """The models.json entry of a file name; of several (ae.safetensors: FLUX.1-dev's gated copy and Z-Image's open
    one), the one that downloads without a login."""
    found = [m for k, m in MODELS.items() if not k.startswith("_") and m["name"] == name]
    return min(found, key=lambda m: bool(m.get("gated")), default=None)


def combo_options(spec) -> list:
    """The choices of a combo input in /object_info: [[...], {...}] or, from newer nodes, ["COMBO", {"options": [...]}]."""
    if not spec:
        return []
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return []


def missing_models(prompt: dict, info: dict) -> list[dict]:
    missing = []
    for req in required_models(prompt):
        spec = info.get(req["class_type"], {}).get("input", {}).get("required", {}).get(req["input"])
        if req["name"] not in combo_options(spec):
            missing.append(req)
    return missing


def describe_missing(missing: list[dict]) -> str:
    lines = []
    for m in missing:
        e = manifest_entry(m["name"])
        where = f"ComfyUI/models/{m['folder']}/{m['name']}"
        if e:
            url = f"https://huggingface.co/{e['repo']}/resolve/main/{e['file']}"
            gated = "; gated: accept the licence on the model page and log in to Hugging Face" if e.get("gated") else ""
            lines.append(f"  {where}  <- {url} ({e['size']}, {e['licence']}{gated})")
        else:
            lines.append(f"  {where}  (your own file: e.g. a LoRA from the Identity LoRA Trainer)")
    return "\n".join(lines)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_sha256(repo: str, filename: str) -> str:
    """The SHA-256 the hub records for an LFS file."""
    from huggingface_hub import HfApi
    infos = HfApi().get_paths_info(repo, [filename])
    for info in infos:
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            return lfs.sha256 if hasattr(lfs, "sha256") else lfs["sha256"]
    raise RunnerError(f"the hub has no checksum for {repo}/{filename}")


def download_models(missing: list[dict], models_root: str, log=print) -> list[str]:
    """Fetch the manifest models among ``missing`` into models_root/<folder>/<name>, verifying SHA-256.
    Never overwrites a file; returns the written paths."""
    from huggingface_hub import hf_hub_download
    written = []
    for m in missing:
        e = manifest_entry(m["name"])
        if e is None:
            raise RunnerError(f"{m['name']} is not a shipped model: put it in {os.path.join(models_root, m['folder'])}")
        dest = os.path.join(models_root, m["folder"], m["name"])
        if os.path.exists(dest):
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        log(f"downloading {e['repo']}/{e['file']} ({e['size']}) -> {dest}")
        try:
            expected = hub_sha256(e["repo"], e["file"])
            with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
                got = hf_hub_download(e["repo"], e["file"], local_dir=tmp)
                actual = sha256_file(got)
                if actual != expected:
                    raise RunnerError(f"checksum mismatch for {e['file']}: got {actual[:12]}..., the hub says "
                                      f"{expected[:12]}...; nothing was kept")
                os.replace(got, dest)
        except RunnerError:
            raise
        except Exception as ex:  # network errors, missing repo, ...
            why = (str(ex).splitlines() or [""])[0]
            hint = ""
            if e.get("gated"):
                hint = (f" ({e['repo']} is a gated repository: accept its licence ({e['licence']}) on "
                        f"https://huggingface.co/{e['repo']}, then log in with `huggingface-cli login` or set HF_TOKEN)")
            raise RunnerError(f"could not download {e['repo']}/{e['file']}: {type(ex).__name__}: {why}{hint}") from ex
        written.append(dest)
    return written


def check_nodes(client: comfy_server.ComfyClient, prompt: dict) -> dict:
    try:
        info = client.object_info()
    except (urllib.error.URLError, OSError, comfy_server.ServerError, ValueError) as e:
        raise RunnerError(f"cannot reach the ComfyUI server at {client.base}: {e}") from e
    for family, needs, why in (("Flux.1", FLUX_NEEDS, flux_unsupported(prompt, info)),
                               ("Z-Image", ZIMAGE_NEEDS, zimage_unsupported(prompt, info))):
        if why:
            raise RunnerError(f"this workflow is a {family} workflow and needs {needs}: the server at {client.base} "
                              f"{why}; update that ComfyUI (tools/run_megaportrait.sh starts ComfyUI 0.33.0 when it can "
                              "be had)")
    missing = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in info})
    if missing:
        mp = [m for m in missing if m.startswith("MegaPortrait")]
        if mp:
            raise RunnerError(f"the server at {client.base} does not have the MegaPortrait nodes ({', '.join(mp)}): "
                              "install this pack into its custom_nodes/ folder and restart it")
        raise RunnerError(f"the server at {client.base} lacks node types {', '.join(missing)}")
    return info


def is_flux_workflow(prompt: dict) -> bool:
    return any(n["class_type"] == "FluxGuidance" or (n["class_type"] == "DualCLIPLoader"
                                                     and n["inputs"].get("type") == "flux") for n in prompt.values())


def flux_unsupported(prompt: dict, info: dict) -> str | None:
    """Why the server (its /object_info) cannot run this Flux workflow; None when it can or the workflow is not one."""
    if not is_flux_workflow(prompt):
        return None
    if "FluxGuidance" not in info:
        return "has no FluxGuidance node"
    spec = info.get("DualCLIPLoader", {}).get("input", {}).get("required", {}).get("type")
    if "flux" not in combo_options(spec):
        return "has no DualCLIPLoader type 'flux'"
    return None


def is_zimage_workflow(prompt: dict) -> bool:
    return any(n["class_type"] in ("ModelPatchLoader", "MegaPortraitShadingSamplerModelPatch")
               or (n["class_type"] == "CLIPLoader" and n["inputs"].get("type") == "lumina2") for n in prompt.values())


def zimage_unsupported(prompt: dict, info: dict) -> str | None:
    """Why the server (its /object_info) cannot run this Z-Image workflow; None when it can or it is not one."""
    if not is_zimage_workflow(prompt):
        return None
    for node in ("ModelPatchLoader", "ZImageFunControlnet"):
        if node not in info:
            return f"has no {node} node"
    spec = info.get("CLIPLoader", {}).get("input", {}).get("required", {}).get("type")
    if "lumina2" not in combo_options(spec):
        return "has no CLIPLoader type 'lumina2' (Z-Image's Qwen3 text encoder)"
    return None


def collect_images(paths: list[str]) -> list[str]:
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.lower().endswith(IMAGE_EXT)]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise RunnerError(f"source photo not found: {p}")
    return files


def photos_digest(paths: list[str]) -> str:
    """The upload folder's name for a set of photos: a hash of their names and contents, so the same photos land in
    the same folder, ComfyUI's cache sees the same inputs, and the trainer finds the LoRA it trained (train once)."""
    h = hashlib.sha256()
    for path in sorted(paths, key=os.path.basename):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def upload(client: comfy_server.ComfyClient, path: str, subfolder: str = "") -> str:
    if not os.path.isfile(path):
        raise RunnerError(f"image not found: {path}")
    try:
        from PIL import Image
        with Image.open(path) as im:
            im.verify()
    except Exception as e:
        raise RunnerError(f"{path} is not an image PIL can read ({type(e).__name__})") from e
    try:
        res = client.upload_image(path, subfolder=subfolder)
    except (comfy_server.ServerError, urllib.error.URLError, OSError) as e:
        raise RunnerError(f"could not upload {path}: {str(e).splitlines()[0]}") from e
    return (res.get("subfolder") + "/" if res.get("subfolder") else "") + res["name"]


class Progress:
    """A one-line text progress bar fed by the websocket events."""

    def __init__(self, prompt: dict, stream=None):
        self.prompt = prompt
        self.stream = stream if stream is not None else sys.stderr   # the current one, not the one at import
        self.done: set = set()
        self.total = len(prompt)
        self.current = ""
        self.tty = self.stream.isatty()

    def __call__(self, typ: str, data: dict) -> None:
        if typ == "executing" and data.get("node") is not None:
            node = str(data["node"])
            self.done.add(node)
            n = self.prompt.get(node, {})
            self.current = (n.get("_meta") or {}).get("title") or n.get("class_type", node)
            self._show("")
        elif typ == "execution_cached":
            self.done.update(str(n) for n in data.get("nodes", []))
        elif typ == "progress":
            self._show(f" {data.get('value')}/{data.get('max')}")

    def _show(self, extra: str) -> None:
        frac = min(len(self.done) / max(self.total, 1), 1.0)
        bar = "#" * int(frac * 30)
        line = f"[{bar:<30}] {len(self.done)}/{self.total} {self.current}{extra}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
        elif not extra or extra.strip().split("/")[0] == extra.strip().split("/")[-1]:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(question + " [y/N] ").strip().lower() in ("y", "yes")


def start_server(args, log) -> comfy_server.ComfyServer:
    root = os.path.abspath(args.comfyui or DEFAULT_HOST)
    if not os.path.isfile(os.path.join(root, "main.py")):
        raise RunnerError(f"no ComfyUI at {root}: pass --server URL or --comfyui PATH "
                          "(or run tools/setup_env.sh to prepare the host copy)")
    extra_args, models, custom, env = [], {}, [], {}
    cpu = args.cpu
    if not cpu:
        try:
            import torch
            cpu = not torch.cuda.is_available()
        except ImportError:
            cpu = True
    if cpu:
        extra_args.append("--cpu")
    env.update(_stand_in_env(root))
    if args.smoke:
        tmp = tempfile.mkdtemp(prefix="megaportrait-smoke-models-")
        _write_tiny_models(root, tmp)
        models = {k: os.path.join(tmp, k) for k in SMOKE_FOLDERS}
        custom.append(os.path.join(HERE, "tiny_registry"))
        env["MEGAPORTRAIT_MODELS_FIRST"] = tmp
    server = comfy_server.ComfyServer(root, models=models, custom_nodes=custom, extra_args=extra_args, extra_env=env)
    log(f"starting ComfyUI from {root} on {server.url} ...")
    try:
        server.start()
    except comfy_server.ServerError as e:
        raise RunnerError(str(e).splitlines()[0] + f" (log: {server.log_path})") from e
    server.models_root = os.path.join(root, "models")
    return server


def _stand_in_env(comfy_root: str) -> dict:
    """Current ComfyUI imports torchvision/torchaudio at start-up; where this Python has none (the 0.33 host's
    virtualenv: no CPU build exists for its torch), the server gets the stand-ins the tests use."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import comfy_harness
    if not comfy_harness.needs_stubs(comfy_root):
        return {}
    return {"PYTHONPATH": os.pathsep.join(p for p in (comfy_harness.STUBS, os.environ.get("PYTHONPATH")) if p)}


def _write_tiny_models(comfy_root: str, dest: str) -> None:
    """Tiny models need ComfyUI's classes: write them in a child process with the ComfyUI on its path."""
    import subprocess
    code = ("import sys; sys.path[:0]=[{root!r},{here!r},{tests!r}]; import comfy_harness; comfy_harness.import_comfy({root!r}); "
            "import tiny_models; tiny_models.write_all({dest!r})").format(
        root=comfy_root, here=HERE, tests=os.path.join(REPO, "tests"), dest=dest)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RunnerError("could not write the tiny smoke-test models: " + (r.stderr.strip().splitlines() or ["?"])[-1])


def run(args, log=lambda m: print(m, file=sys.stderr)) -> list[str]:
    prompt = load_workflow(args.workflow)
    people = parse_people(getattr(args, "person", None), getattr(args, "people", None))   # bad ones fail here
    if args.faces:
        apply_faces(copy.deepcopy(prompt), args.faces, ["0", 0])           # a bad --faces fails before any upload
    if args.smoke:
        prompt = smoke_workflow(prompt)
        log(SMOKE_NOTE)
    server = None
    if args.server:
        if len(args.server) > 1:
            raise RunnerError("several --server URLs are for --batch runs; a single run uses one")
        client = comfy_server.ComfyClient(args.server[0])
        if not client.alive():
            raise RunnerError(f"no ComfyUI server answers at {args.server[0]}")
        models_root = args.models_dir
    else:
        server = start_server(args, log)
        client = server.client
        models_root = args.models_dir or server.models_root
    try:
        info = check_nodes(client, prompt)
        # inputs
        ref_ids = nodes_titled(prompt, REFERENCE_TITLE)
        if args.reference and ref_ids:
            name = upload(client, args.reference)
            for nid in ref_ids:
                prompt[nid]["inputs"]["image"] = name
        if people or nodes_of_type(prompt, "MegaPortraitAddPerson"):
            if not people:
                raise RunnerError("this workflow re-renders several people: pass --person NAME=FOLDER for each (or "
                                  "--people FOLDER with one folder of photos per person)")
            uploaded = []
            for name, files in people:
                sub = f"megaportrait_people/{photos_digest(files)}"
                for f in files:
                    upload(client, f, subfolder=sub)
                uploaded.append((name, sub))
            apply_people(prompt, uploaded)
        photo_ids = [] if people else nodes_of_type(prompt, "MegaPortraitLoadSourcePhotos")
        if photo_ids:
            files = collect_images(args.source or [])
            if not files:
                raise RunnerError("this workflow trains on source photos: pass --source with photos or a folder of them")
            sub = f"megaportrait_source/{photos_digest(files)}"
            for f in files:
                upload(client, f, subfolder=sub)
            for nid in photo_ids:
                prompt[nid]["inputs"].update(folder=sub, filenames="")
        if args.lora:
            for nid in nodes_of_type(prompt, "MegaPortraitLoadIdentityLora"):
                prompt[nid]["inputs"]["lora_name"] = args.lora
        if getattr(args, "assign", None) is not None or getattr(args, "unknown", None) is not None:
            assign = nodes_of_type(prompt, "MegaPortraitAssignFacesToPeople")
            if not assign:
                raise RunnerError("--assign/--unknown need a workflow with Assign Faces to People "
                                  "(e.g. megaportrait_group_people)")
            for nid in assign:
                if args.assign is not None:
                    prompt[nid]["inputs"]["assignment"] = args.assign
                if args.unknown is not None:
                    untouched = args.unknown == "untouched"
                    prompt[nid]["inputs"].update(unknown_faces="leave untouched" if untouched else "default person",
                                                 default_person="" if untouched else args.unknown)
        if args.faces and people and args.faces == "match":
            # several people: every face, each matched to a person by Assign Faces to People
            apply_faces(prompt, "all", None)
        elif args.faces:
            identity = None
            if args.faces == "match":
                if args.identity:
                    identity = add_image_loader(prompt, upload(client, args.identity), "Identity photo")
                elif photo_ids:
                    identity = [photo_ids[0], 0]
            apply_faces(prompt, args.faces, identity)
        apply_sets(prompt, args.set or [])
        # models
        missing = missing_models(prompt, info)
        if missing:
            table = describe_missing(missing)
            if args.download or _ask(f"These models are missing on the server:\n{table}\nDownload them now?"):
                if not models_root:
                    raise RunnerError("--download needs --models-dir (the server's ComfyUI/models folder) with --server")
                download_models(missing, models_root, log)
                info = client.object_info()
                missing = missing_models(prompt, info)
            if missing:
                log("missing models:\n" + table)
                raise RunnerError(f"{len(missing)} model file(s) missing on the server (listed above): put them there, "
                                  "or run again with --download (or --smoke to test the install with tiny models)")
        progress = Progress(prompt)
        t0 = time.time()
        try:
            hist = client.run_with_progress(prompt, progress, timeout=args.timeout)
        except comfy_server.ServerError as e:
            raise RunnerError(str(e).splitlines()[0]) from e
        except (urllib.error.URLError, OSError) as e:
            raise RunnerError(f"lost the ComfyUI server at {client.base}: {e}") from e
        finally:
            progress.close()
        err = comfy_server.status_error(hist)
        if err:
            raise RunnerError(f"the workflow failed in {err}")
        args.out = args.out or os.path.join(os.getcwd(), "megaportrait_output")
        os.makedirs(args.out, exist_ok=True)
        saved = []
        for entry in comfy_server.outputs_of(hist):
            if entry.get("type", "output") != "output":
                continue
            data = client.view(entry["filename"], entry.get("subfolder", ""), "output")
            dest = os.path.join(args.out, entry["filename"])
            with open(dest, "wb") as f:
                f.write(data)
            saved.append(dest)
        for nid, out in (hist.get("outputs") or {}).items():
            for text in out.get("text", []) or []:
                title = (prompt.get(nid, {}).get("_meta") or {}).get("title", nid)
                log(f"{title}: " + str(text).replace("\n", " | "))
        if args.smoke:
            with open(os.path.join(args.out, "SMOKE_RUN.txt"), "w") as f:
                f.write(SMOKE_NOTE + "\n")
            log(SMOKE_NOTE)
        log(f"done in {time.time() - t0:.1f} s: {len(saved)} file(s) in {args.out}")
        return saved
    finally:
        if server is not None:
            server.cleanup()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--workflow", default="megaportrait_full",
                    help=f"shipped API workflow or path to an API-format JSON (shipped: {', '.join(available_workflows())})")
    ap.add_argument("--reference", default=os.path.join(REPO, "example_inputs", "grace_hopper.jpg"),
                    help="reference portrait (pose, lighting, style); default: example_inputs/grace_hopper.jpg")
    ap.add_argument("--source", nargs="*", default=[os.path.join(REPO, "example_inputs", "astronaut.png")],
                    help="photos of the person (files and/or folders); default: example_inputs/astronaut.png (the "
                         "workflow adds augmented copies up to 6)")
    ap.add_argument("--out", help="where outputs are saved (default ./megaportrait_output; with --batch the manifest's "
                                  "'out')")
    ap.add_argument("--server", action="append", help="URL of a running ComfyUI server with this pack installed "
                                                      "(--batch: repeat it to spread the jobs over several)")
    ap.add_argument("--batch", metavar="MANIFEST", help="run every (person, reference) job of a YAML manifest: each "
                                                        "person's LoRA trained once, resumable (README: Batch runs)")
    ap.add_argument("--backend", choices=("prompt", "comfy-api"), default="prompt",
                    help="--batch: a ComfyUI server's /prompt API (--server, or a ComfyUI started here), or Comfy API "
                         "v2 through comfy-sdk (COMFY_BASE_URL, COMFY_API_KEY: Comfy Cloud, a deployment, "
                         "comfy-api-proxy)")
    ap.add_argument("--parallel", type=int, default=4, help="--batch --backend comfy-api: jobs in flight at once")
    ap.add_argument("--comfyui", help="ComfyUI folder to start for this run (default: the host set up in .host/)")
    ap.add_argument("--models-dir", help="the ComfyUI models folder to download into (default: the started ComfyUI's)")
    ap.add_argument("--lora", help="identity LoRA file name for the megaportrait_with_lora workflow")
    ap.add_argument("--faces", help="which faces of the reference: all, largest, N (0 = leftmost) or match (the faces "
                                    "matching --identity or the source photos); default: the workflow's")
    ap.add_argument("--identity", help="photo of the person whose faces --faces match re-renders")
    ap.add_argument("--person", action="append", metavar="NAME=FOLDER",
                    help="one person of a group photo and their photos (repeat it; workflow megaportrait_group_people): "
                         "each face is re-rendered with the identity LoRA of the person it is")
    ap.add_argument("--people", metavar="FOLDER", help="a folder with one folder of photos per person (named after it)")
    ap.add_argument("--assign", metavar="FACE=NAME,...",
                    help="several people: explicit face -> person entries, e.g. '0=alice,2=bob' (0 = leftmost face)")
    ap.add_argument("--unknown", metavar="untouched|NAME",
                    help="several people: a face of nobody known is left untouched (default) or re-rendered as NAME")
    ap.add_argument("--set", action="append", metavar="TITLE.INPUT=VALUE", help="override a node input (repeatable)")
    ap.add_argument("--download", action="store_true", help="download missing shipped models from Hugging Face")
    ap.add_argument("--smoke", action="store_true", help="tiny random models and settings: proves the install (noise out)")
    ap.add_argument("--cpu", action="store_true", help="start the server with --cpu (automatic without a GPU)")
    ap.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to wait for the workflow")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.batch:
            import batch
            report = batch.run_batch(args)
            print(os.path.join(report["out"], batch.REPORT_NAME))
            return 0 if report["summary"]["failed"] == 0 else 2
        for f in run(args):
            print(f)
    except RunnerError as e:
        print(f"megaportrait: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("megaportrait: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # run the module's main (tools/batch.py imports the module too): one RunnerError class, not two
    import runner
    sys.exit(runner.main())
