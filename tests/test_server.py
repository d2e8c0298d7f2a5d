"""The pack inside a real ComfyUI server on 127.0.0.1: /object_info, /prompt, /history, /view, /upload, websocket."""
import io
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor, load_png, pack_node_names
from PIL import Image
from test_comfy_inproc import maps_graph, tiny_sampling_graph

pytestmark = pytest.mark.server


def fetch_png(server, entry) -> np.ndarray:
    data = server.client.view(entry["filename"], entry.get("subfolder", ""), entry.get("type", "output"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)


def test_object_info_lists_our_nodes_with_tooltips(server):
    info = server.client.object_info()
    for name in pack_node_names():
        assert name in info, f"{name} missing from /object_info"
        node = info[name]
        assert node["category"].startswith("MegaPortrait")
        for section in ("required", "optional"):
            for inp, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"
    assert "KSampler" in info and "LoadImage" in info     # the stock nodes are there too


def test_light_map_graph_via_prompt(server, pack):
    from comfyui_megaportrait.nodes import maps
    hist = server.client.run(maps_graph("srv_maps"), timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    img = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    (light_entry,) = hist["outputs"]["5"]["images"]
    got = fetch_png(server, light_entry).astype(int)
    want = np.clip(np.round(maps.light_map(img, 8.0)[0].numpy() * 255), 0, 255).astype(int)
    assert np.abs(got - want).max() <= 1
    # the file is really in the server's output folder
    assert os.path.isfile(os.path.join(server.output_dir, light_entry.get("subfolder", ""), light_entry["filename"]))
    (back_entry,) = hist["outputs"]["7"]["images"]
    orig = load_png(os.path.join(EXAMPLES, "astronaut.png")).astype(int)
    assert np.abs(fetch_png(server, back_entry).astype(int) - orig).max() <= 1


def test_tiny_ksampler_graph_matches_in_process(server, comfy):
    """The same seeded tiny-model graph gives the same pixels through the server and in-process."""
    hist = server.client.run(tiny_sampling_graph("srv_tiny", seed=5), timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    res = comfy.run(tiny_sampling_graph("inp_tiny", seed=5))
    for node in ("9", "10", "11"):
        srv_imgs = [fetch_png(server, e) for e in hist["outputs"][node]["images"]]
        inp_imgs = [load_png(p) for p in comfy.output_files(res, node)]
        assert len(srv_imgs) == len(inp_imgs) == 2
        for a, b in zip(srv_imgs, inp_imgs):
            assert a.shape == (64, 64, 3)
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_upload_and_websocket_progress(server, tmp_path, pack):
    from comfyui_megaportrait.nodes import maps
    # a new image, uploaded through the API
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
    path = tmp_path / "upload_me.png"
    Image.fromarray(arr).save(path)
    up = server.client.upload_image(str(path))
    assert up["name"] == "upload_me.png"
    g = maps_graph("srv_ws", sigma=3.0)
    g["1"]["inputs"]["image"] = up["name"]
    g["2"]["inputs"]["sigma_mode"] = "pixels"
    events = []
    hist = server.client.run_with_progress(g, lambda t, d: events.append((t, d)), timeout=300)
    types = [t for t, _ in events]
    assert "execution_start" in types
    executed_nodes = {d.get("node") for t, d in events if t == "executing"}
    assert {"2", "3", "4"} <= executed_nodes
    assert any(t == "executed" and d.get("node") == "5" for t, d in events)
    (entry,) = hist["outputs"]["5"]["images"]
    want = maps.light_map(torch.from_numpy(arr.astype(np.float32) / 255)[None], 3.0, mode="pixels")
    got = fetch_png(server, entry).astype(int)
    assert got.shape == (48, 80, 3)
    assert np.abs(got - np.round(want[0].numpy() * 255)).max() <= 1


def test_prompt_with_bad_widget_is_rejected(server):
    g = maps_graph("srv_bad")
    g["3"]["inputs"]["filter_type"] = "median"
    code, body = server.client.request("/prompt", {"prompt": g, "client_id": "t"})
    # ComfyUI runs the outputs that validate and reports the others in node_errors
    errors = body.get("node_errors", {})
    assert "3" in errors and errors["3"]["class_type"] == "MegaPortraitHFMap"
    assert any("filter_type" in str(e) for e in errors["3"]["errors"])
    if code == 200:
        server.client.wait(body["prompt_id"], timeout=120)


def test_node_exception_reported_in_history(server):
    g = maps_graph("srv_err")
    g["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}
    g["2"]["inputs"]["mask"] = ["9", 0]
    import comfy_server
    hist = server.client.run(g, timeout=300)
    msg = comfy_server.status_error(hist)
    assert msg and "[MegaPortrait Light Map]" in msg and "32x32" in msg
