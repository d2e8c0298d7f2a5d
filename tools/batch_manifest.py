"""The batch manifest: one YAML file naming the people (photo folders or files), the references (image files), the
workflow and optional settings. Checked completely before anything runs; every error names its line.

    workflow: megaportrait_full          # a shipped API workflow or a path to an API JSON (default megaportrait_full)
    out: batch_output                    # where results go (default: <manifest name>_output next to the manifest)
    threshold: 0.6                       # identity distance from which a result is flagged (default: the backend's)
    smoke: false                         # tiny random models and settings (proves the install; noise out)
    set: {"Identity LoRA Trainer.steps": 400}      # node inputs for every job (as runner.py --set)
    people:
      - name: alice
        photos: photos/alice/            # a folder, a file, or a list of them
        set: {"Identity LoRA Trainer.steps": 600}  # optional, this person's jobs only
    references:
      - name: studio
        image: refs/studio.jpg
        set: {"Harmonize.denoise": 0.4}            # optional, this reference's jobs only

Relative paths are relative to the manifest's folder.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field

import runner
from runner import RunnerError

TOP_KEYS = ("workflow", "out", "threshold", "smoke", "set", "people", "references")
PERSON_KEYS = ("name", "photos", "set")
REFERENCE_KEYS = ("name", "image", "set")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ManifestError(RunnerError):
    """Every problem of a manifest, one line each ('<file> line N: ...')."""

    def __init__(self, path: str, problems: list[tuple[int, str]]):
        self.problems = sorted(problems)
        lines = [f"{os.path.basename(path)} line {ln}: {msg}" for ln, msg in self.problems]
        super().__init__(f"the batch manifest {path} has {len(lines)} problem(s):\n  " + "\n  ".join(lines))


@dataclass
class Person:
    name: str
    photos: list[str]
    sets: dict
    line: int


@dataclass
class Reference:
    name: str
    image: str
    sets: dict
    line: int


@dataclass
class Manifest:
    path: str
    workflow: str
    prompt: dict                 # the API workflow (smoke settings applied when smoke)
    out: str
    threshold: float | None
    smoke: bool
    sets: dict
    people: list[Person] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)


class _Node:
    """A YAML value with the line it starts on (1-based)."""

    def __init__(self, value, line: int):
        self.value, self.line = value, line


def _tree(node, construct, problems) -> _Node:
    import yaml
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = construct(k)
            if not isinstance(key, str):
                problems.append((k.start_mark.line + 1, f"the key {key!r} is not text"))
                continue
            if key in out:
                problems.append((k.start_mark.line + 1, f"'{key}' is given twice"))
            out[key] = _tree(v, construct, problems)
        return _Node(out, line)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_tree(v, construct, problems) for v in node.value], line)
    return _Node(construct(node), line)


def parse_yaml(text: str, path: str) -> _Node:
    import yaml
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ManifestError(path, [(line, f"not valid YAML: {getattr(e, 'problem', None) or e}")]) from e
    if root is None:
        raise ManifestError(path, [(1, "the manifest is empty: it needs 'people' and 'references'")])
    loader = yaml.SafeLoader("")
    problems: list = []
    tree = _tree(root, lambda n: loader.construct_object(n, deep=True), problems)
    if problems:
        raise ManifestError(path, problems)
    return tree


def _image_problem(path: str) -> str | None:
    try:
        from PIL import Image
        with Image.open(path) as im:
            im.verify()
    except Exception as e:
        return f"{path} is not an image PIL can read ({type(e).__name__})"
    return None


def _check_sets(node: _Node | None, prompt: dict, where: str, problems: list) -> dict:
    if node is None:
        return {}
    if not isinstance(node.value, dict):
        problems.append((node.line, f"{where}set must be a mapping of 'Node title.input': value"))
        return {}
    out = {}
    for k, v in node.value.items():
        value = v.value
        if isinstance(value, (dict, list)):
            problems.append((v.line, f"{where}set '{k}': the value must be a number, text or true/false"))
            continue
        try:
            runner.apply_sets(copy.deepcopy(prompt), [f"{k}={_as_text(value)}"])
        except RunnerError as e:
            problems.append((v.line, f"{where}set '{k}': " + str(e).split(": ", 1)[-1]))
            continue
        out[k] = value
    return out


def training_nodes(prompt: dict) -> set:
    """The identity LoRA trainer, every node it depends on, and the SaveImage nodes fed by the trainer alone (its
    loss curve): the part of the workflow that phase 1 of a batch runs once per person."""
    keep: set = set()
    todo = runner.nodes_of_type(prompt, "MegaPortraitIdentityLoraTrainer")
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep.add(nid)
        todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and v[0] in prompt]
    for nid, n in prompt.items():
        links = [v[0] for v in n["inputs"].values() if isinstance(v, list) and len(v) == 2 and v[0] in prompt]
        if n["class_type"] == "SaveImage" and links and set(links) <= keep:
            keep.add(nid)
    return keep


def _as_text(value) -> str:
    import json
    return value if isinstance(value, str) else json.dumps(value)


def sets_as_args(sets: dict) -> list[str]:
    """{title.input: value} -> runner's --set strings."""
    return [f"{k}={_as_text(v)}" for k, v in sets.items()]


def _unknown_keys(node: _Node, allowed: tuple, where: str, problems: list) -> None:
    for k, v in node.value.items():
        if k not in allowed:
            problems.append((v.line, f"{where}unknown key '{k}' (allowed: {', '.join(allowed)})"))


def _entries(tree: dict, key: str, problems: list, root_line: int) -> list[_Node]:
    node = tree.get(key)
    if node is None:
        problems.append((root_line, f"'{key}' is missing: list at least one"))
        return []
    if not isinstance(node.value, list) or not node.value:
        problems.append((node.line, f"'{key}' must be a non-empty list"))
        return []
    return node.value


def _name(entry: _Node, where: str, seen: dict, problems: list) -> str | None:
    n = entry.value.get("name")
    if n is None:
        problems.append((entry.line, f"{where}'name' is missing"))
        return None
    name = n.value
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append((n.line, f"{where}name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
                                 "letter or digit (it names folders)"))
        return None
    if name in seen:
        problems.append((n.line, f"{where}name '{name}' is already used on line {seen[name]}"))
        return None
    seen[name] = n.line
    return name


def _paths(node: _Node, base: str) -> list[tuple[str, int]]:
    vals = node.value if isinstance(node.value, list) else [node]
    return [(os.path.join(base, v.value) if isinstance(v.value, str) else v.value, v.line) for v in vals]


def load_manifest(path: str) -> Manifest:
    if not os.path.isfile(path):
        raise RunnerError(f"no batch manifest at {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    root = parse_yaml(text, path)
    if not isinstance(root.value, dict):
        raise ManifestError(path, [(root.line, "the manifest must be a mapping with 'people' and 'references'")])
    tree, problems = root.value, []
    base = os.path.dirname(os.path.abspath(path))
    _unknown_keys(root, TOP_KEYS, "", problems)

    wf = tree.get("workflow")
    workflow = wf.value if wf is not None else "megaportrait_full"
    prompt = None
    if not isinstance(workflow, str):
        problems.append((wf.line, f"workflow {workflow!r} must be a name or a path"))
    else:
        if workflow.endswith(".json") and not os.path.isabs(workflow):
            workflow = os.path.join(base, workflow)
        try:
            prompt = runner.load_workflow(workflow)
        except (RunnerError, ValueError) as e:
            problems.append((wf.line if wf else root.line, f"workflow: {e}"))
    if prompt is not None:
        trainers = runner.nodes_of_type(prompt, "MegaPortraitIdentityLoraTrainer")
        photos = runner.nodes_of_type(prompt, "MegaPortraitLoadSourcePhotos")
        refs = runner.nodes_titled(prompt, runner.REFERENCE_TITLE)
        if len(trainers) != 1 or len(photos) != 1 or not refs:
            problems.append((wf.line if wf else root.line,
                             f"workflow {os.path.basename(workflow)}: a batch workflow needs one Identity LoRA Trainer, "
                             f"one Load Source Photos and a LoadImage titled '{runner.REFERENCE_TITLE}' (as "
                             "megaportrait_full, _sdxl and _flux have)"))
            prompt = None

    smoke_node = tree.get("smoke")
    smoke = bool(smoke_node.value) if smoke_node is not None else False
    if smoke_node is not None and not isinstance(smoke_node.value, bool):
        problems.append((smoke_node.line, f"smoke must be true or false, not {smoke_node.value!r}"))
    if prompt is not None and smoke:
        prompt = runner.smoke_workflow(prompt)

    thr = tree.get("threshold")
    threshold = None
    if thr is not None:
        if isinstance(thr.value, bool) or not isinstance(thr.value, (int, float)) or not 0 < thr.value < 10:
            problems.append((thr.line, f"threshold {thr.value!r} must be a number above 0 (dlib: 0.6; insightface: 0.65)"))
        else:
            threshold = float(thr.value)

    out_node = tree.get("out")
    out = os.path.join(base, os.path.splitext(os.path.basename(path))[0] + "_output")
    if out_node is not None:
        if not isinstance(out_node.value, str) or not out_node.value:
            problems.append((out_node.line, "out must be a folder path"))
        else:
            out = os.path.join(base, out_node.value)

    sets = _check_sets(tree.get("set"), prompt, "", problems) if prompt is not None else {}

    people, seen = [], {}
    for i, entry in enumerate(_entries(tree, "people", problems, root.line)):
        where = f"people[{i}]: "
        if not isinstance(entry.value, dict):
            problems.append((entry.line, f"{where}each person is a mapping with 'name' and 'photos'"))
            continue
        _unknown_keys(entry, PERSON_KEYS, where, problems)
        name = _name(entry, where, seen, problems)
        ph = entry.value.get("photos")
        files: list[str] = []
        if ph is None:
            problems.append((entry.line, f"{where}'photos' is missing (a folder, a file or a list of them)"))
        else:
            for p, ln in _paths(ph, base):
                if not isinstance(p, str):
                    problems.append((ln, f"{where}photos: {p!r} is not a path"))
                elif os.path.isdir(p):
                    found = runner.collect_images([p])
                    if not found:
                        problems.append((ln, f"{where}photos: the folder {p} has no images ({', '.join(runner.IMAGE_EXT)})"))
                    files += found
                elif os.path.isfile(p):
                    files.append(p)
                else:
                    problems.append((ln, f"{where}photos: {p} does not exist"))
            for f in files:
                bad = _image_problem(f)
                if bad:
                    problems.append((ph.line, f"{where}photos: {bad}"))
        psets = _check_sets(entry.value.get("set"), prompt, where, problems) if prompt is not None else {}
        if name:
            people.append(Person(name, files, psets, entry.line))

    references, seen = [], {}
    for i, entry in enumerate(_entries(tree, "references", problems, root.line)):
        where = f"references[{i}]: "
        if not isinstance(entry.value, dict):
            problems.append((entry.line, f"{where}each reference is a mapping with 'name' and 'image'"))
            continue
        _unknown_keys(entry, REFERENCE_KEYS, where, problems)
        name = _name(entry, where, seen, problems)
        im = entry.value.get("image")
        image = None
        if im is None:
            problems.append((entry.line, f"{where}'image' is missing"))
        elif not isinstance(im.value, str):
            problems.append((im.line, f"{where}image {im.value!r} is not a path"))
        else:
            image = os.path.join(base, im.value)
            bad = (f"{image} does not exist" if not os.path.isfile(image) else _image_problem(image))
            if bad:
                problems.append((im.line, f"{where}image: {bad}"))
        rsets = _check_sets(entry.value.get("set"), prompt, where, problems) if prompt is not None else {}
        if rsets:
            train = training_nodes(prompt)
            for k in rsets:
                who = k.rsplit(".", 1)[0]
                if set(runner.nodes_titled(prompt, who) or runner.nodes_of_type(prompt, who)) & train:
                    problems.append((entry.value["set"].line, f"{where}set '{k}': '{who}' is part of the identity "
                                     "training, which is the same for every reference; set it for the person or the batch"))
        if name and image:
            references.append(Reference(name, image, rsets, entry.line))

    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=os.path.abspath(path), workflow=workflow, prompt=prompt, out=out, threshold=threshold,
                    smoke=smoke, sets=sets, people=people, references=references)
