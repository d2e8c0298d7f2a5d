"""Every BOOLEAN input of every node, sent as a string through a real server's /prompt.

The BOOLEAN inputs are enumerated from the server's /object_info (ComfyUI builds it from each node's INPUT_TYPES,
required and optional), so a new BOOLEAN fails ``test_every_boolean_has_a_graph`` until it has a graph here, and
then the string test shows whether its node checks it.

What a string does depends on the host:
* early-2024 ComfyUI validates no BOOLEAN: the string reaches the node, and ``check_bool`` refuses it with
  "[MegaPortrait <node>] <input> is 'false' (str), not a boolean. Fix: send <input> as JSON true or false ...".
  Without the check "false" would run as True (a non-empty string is truthy).
* ComfyUI 0.33 converts the value with Python's bool() during validation (execution.py, validate_inputs), required
  and optional inputs alike: every non-empty string, "false" included, reaches the node as True. The test asserts
  exactly that: the prompt's outcome and outputs equal those of JSON true (README, Troubleshooting).

Each graph is small and seeded: it succeeds with JSON true and false, or (the trainer) stops with a known error right
after its input checks, before any work.
"""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from conftest import pack_node_names
from PIL import Image
from test_bad_input import NEW_HOST, empty, fa, g_dual, g_harmonize, g_train, load, submit

pytestmark = pytest.mark.server

STRINGS = ("false", "true", "maybe")
EXISTS = "mp_bool/exists"     # the trainer's save_name: a file that exists, with if_exists "error"


def _fa_graph(value):
    """Face Analysis Loader (dlib) -> Face Similarity of a photo with itself."""
    return {"1": load("astronaut.png"), "2": fa(refine_landmarks=value),
            "3": {"class_type": "MegaPortraitFaceSimilarity",
                  "inputs": {"face_analysis": ["2", 0], "image_a": ["1", 0], "image_b": ["1", 0],
                             "on_no_face": "report"}}}


def _train_graph(name):
    """The trainer stops with "already exists" right after its input checks (no model pass, no training step)."""
    return lambda value: g_train(steps=1, save_name=EXISTS, if_exists="error", **{name: value})


def _harmonize_graph(value):
    """A 96x96 photo, a 24x24 mask off-centre: crop_to_mask true samples a box at 64 px, false the whole image, so
    the two give different pixels."""
    g = g_harmonize(image={"class_type": "ImageScale", "inputs": {"image": ["20", 0], "upscale_method": "area",
                                                                   "width": 96, "height": 96, "crop": "disabled"}},
                    mask={"class_type": "MaskComposite", "inputs": {"destination": ["21", 0], "source": ["22", 0],
                                                                    "x": 56, "y": 16, "operation": "add"}},
                    grow=0, feather=4, crop_to_mask=value)
    g["20"] = load("astronaut.png")
    g["21"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 96, "height": 96}}
    g["22"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 24, "height": 24}}
    return g


# (node class, input) -> (the node's name in its errors, graph(value), what JSON true/false give: "ok" or words of
# the error the graph stops with after the node's checks)
GRAPHS = {
    ("MegaPortraitFaceAnalysisLoader", "refine_landmarks"): ("Face Analysis Loader", _fa_graph, "ok"),
    ("MegaPortraitIdentityLoraTrainer", "train_text_encoder"): ("Identity LoRA Trainer",
                                                               _train_graph("train_text_encoder"), "already exists"),
    ("MegaPortraitIdentityLoraTrainer", "flip"): ("Identity LoRA Trainer", _train_graph("flip"), "already exists"),
    ("MegaPortraitIdentityLoraTrainer", "gradient_checkpointing"): ("Identity LoRA Trainer",
                                                                   _train_graph("gradient_checkpointing"),
                                                                   "already exists"),
    ("MegaPortraitDualStrengthIdentitySampler", "share_passes"): ("Dual-Strength Identity Sampler",
                                                                  lambda v: g_dual(image=empty(64, 64, color=0x808080),
                                                                                   share_passes=v), "ok"),
    ("MegaPortraitHarmonize", "crop_to_mask"): ("Harmonize", _harmonize_graph, "ok"),
}
# True and False must give different outputs here, so "a string runs as True" on 0.33 is a real check
DIFFERS = {("MegaPortraitHarmonize", "crop_to_mask")}


def boolean_inputs(info: dict) -> list[tuple[str, str]]:
    out = []
    for name in pack_node_names():
        for section in ("required", "optional"):
            for inp, spec in (info[name]["input"].get(section) or {}).items():
                if spec[0] == "BOOLEAN":
                    out.append((name, inp))
    return sorted(out)


@pytest.fixture(scope="module")
def bool_server(server, models_dir):
    dst = os.path.join(models_dir, "loras", EXISTS + ".safetensors")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(os.path.join(models_dir, "loras", "tiny_lora.safetensors"), dst)
    return server


@pytest.fixture(scope="module")
def booleans(bool_server):
    return boolean_inputs(bool_server.client.object_info())


def outcome(server, graph):
    """("invalid", node_errors) | ("error", message) | ("ok", {node: outputs with each image as a pixel array})."""
    kind, payload = submit(server, graph)
    if kind != "ok":
        return kind, payload
    outs = {}
    for node, out in (payload.get("outputs") or {}).items():
        outs[node] = {k: ([np.asarray(Image.open(io.BytesIO(server.client.view(
            e["filename"], e.get("subfolder", ""), e.get("type", "output")))).convert("RGB")) for e in v]
            if k == "images" else v) for k, v in out.items()}
    return kind, outs


def same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] != "ok":
        return a[1] == b[1]
    if a[1].keys() != b[1].keys():
        return False
    for node in a[1]:
        x, y = a[1][node], b[1][node]
        if x.keys() != y.keys():
            return False
        for k in x:
            if k == "images":
                if len(x[k]) != len(y[k]) or any(p.shape != q.shape or (p != q).any() for p, q in zip(x[k], y[k])):
                    return False
            elif x[k] != y[k]:
                return False
    return True


def brief(got) -> str:
    return str(got[1])[:2000] if got[0] != "ok" else "outputs differ from JSON true's"


def test_every_boolean_has_a_graph(booleans):
    assert len(booleans) >= 6, booleans
    missing = sorted(set(booleans) - set(GRAPHS))
    assert not missing, (f"BOOLEAN inputs without a string test: {missing}. Check the value with "
                         "common.check_bool in the node and add a graph for it to GRAPHS here.")
    assert not set(GRAPHS) - set(booleans), f"GRAPHS names inputs that are no BOOLEAN: {set(GRAPHS) - set(booleans)}"


@pytest.mark.parametrize("key", sorted(GRAPHS), ids=[f"{c}.{i}" for c, i in sorted(GRAPHS)])
def test_boolean_sent_as_a_string(bool_server, booleans, key):
    assert key in booleans
    server = bool_server
    node, graph, expect = GRAPHS[key]
    ok_true, ok_false = outcome(server, graph(True)), outcome(server, graph(False))
    for got in (ok_true, ok_false):     # the graph itself is fine: JSON booleans pass the node's checks
        if expect == "ok":
            assert got[0] == "ok", f"{key}: expected success with a JSON boolean, got {got}"
        else:
            assert got[0] == "error" and expect in got[1] and key[1] not in got[1], got
    if key in DIFFERS:
        assert not same(ok_true, ok_false), f"{key}: true and false gave the same outputs"
    for s in STRINGS:
        got = outcome(server, graph(s))
        assert server.client.alive(), "the server stopped answering"
        if NEW_HOST:
            # 0.33: bool(s) during validation; the node runs with True
            assert same(got, ok_true), f"{key} = {s!r} on 0.33 should run as JSON true, got {got[0]}: {brief(got)}"
        else:
            assert got[0] == "error", f"{key} = {s!r}: the node accepted a string ({got[0]})"
            msg = got[1]
            assert f"[MegaPortrait {node}]" in msg and " Fix: " in msg, msg
            assert f"{key[1]} is {s!r} (str), not a boolean" in msg, msg
            assert "JSON true or false" in msg, msg
