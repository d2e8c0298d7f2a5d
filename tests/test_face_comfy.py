"""Face nodes inside a real ComfyUI: in-process and through the server's /prompt."""
import io
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor, load_png
from PIL import Image


def face_graph(prefix="face"):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "grace_hopper.jpg"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "3": {"class_type": "MegaPortraitFaceAnalysisLoader", "inputs": {"backend": "dlib", "det_threshold": 0.3,
                                                                         "det_size": 640}},
        "4": {"class_type": "MegaPortraitFaceCrop", "inputs": {"face_analysis": ["3", 0], "image": ["1", 0], "crop_size": 256,
                                                               "context": 0.25, "selection": "largest", "index": 0,
                                                               "min_face_size": 48}},
        "5": {"class_type": "MegaPortraitFaceCrop", "inputs": {"face_analysis": ["3", 0], "image": ["2", 0], "crop_size": 256,
                                                               "context": 0.25, "selection": "largest", "index": 0,
                                                               "min_face_size": 48}},
        "6": {"class_type": "MegaPortraitPasteBack", "inputs": {"reference": ["1", 0], "face_crop": ["4", 1], "face": ["5", 0],
                                                                "face_analysis": ["3", 0], "align": "landmarks",
                                                                "mask_type": "face ellipse", "grow": 0, "feather": 12,
                                                                "seam_width": 8, "color_match": "mean (Lab)"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"{prefix}_composite"}},
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["6", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"{prefix}_seam"}},
        "10": {"class_type": "MegaPortraitFaceSimilarity", "inputs": {"face_analysis": ["3", 0], "image_a": ["2", 0],
                                                                       "image_b": ["6", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"{prefix}_crop"}},
        # the reference as LoadImage decoded it (PIL before ComfyUI v0.21.0, PyAV since: JPEG pixels differ)
        "12": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"{prefix}_reference"}},
    }


def expected_composite(pack, ref):
    """The composite computed directly, from ``ref``: the reference as the graph's LoadImage decoded it."""
    from comfyui_megaportrait.nodes import face_analysis, face_crop, paste_back
    fa = face_analysis.FaceAnalyzer().load()
    src = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    _, fc = face_crop.face_crop("t", fa, ref, 256)
    face, _ = face_crop.face_crop("t", fa, src, 256)
    out, _, seam, _ = paste_back.paste_back("t", ref, fc, face, fa, feather=12, seam_width=8, color="mean (Lab)")
    return out[0].numpy(), seam[0].numpy()


def check_similarity_text(text):
    assert "dlib" in text and "mean distance" in text
    d = float(text.split("mean distance ")[1].split()[0])
    assert d < 0.6          # the composite carries the astronaut's identity


def test_face_graph_in_process(comfy, pack):
    res = comfy.run(face_graph("inp_face"))
    (comp,) = comfy.output_files(res, "7")
    (seam,) = comfy.output_files(res, "9")
    (crop,) = comfy.output_files(res, "11")
    (ref,) = comfy.output_files(res, "12")
    want, want_seam = expected_composite(pack, image_tensor(ref))
    assert np.abs(load_png(comp).astype(int) - np.round(want * 255)).max() <= 1
    assert np.abs(load_png(seam)[..., 0].astype(int) - np.round(want_seam * 255)).max() <= 1
    assert load_png(crop).shape == (256, 256, 3)
    check_similarity_text(res.outputs["10"]["text"][0])


@pytest.mark.server
def test_face_graph_via_server(server, pack):
    hist = server.client.run(face_graph("srv_face"), timeout=300)
    assert hist["status"]["status_str"] == "success", hist["status"]
    def view(node):
        (entry,) = hist["outputs"][node]["images"]
        return np.asarray(Image.open(io.BytesIO(server.client.view(entry["filename"], entry["subfolder"]))).convert("RGB"))
    got = view("7")
    want, _ = expected_composite(pack, torch.from_numpy(view("12").astype(np.float32) / 255.0)[None])
    assert np.abs(got.astype(int) - np.round(want * 255)).max() <= 1
    check_similarity_text(hist["outputs"]["10"]["text"][0])


@pytest.mark.server
def test_insightface_packs_via_server(server):
    """The server lists the (stand-in) pack found in models/insightface and reports a missing one clearly."""
    info = server.client.object_info()
    packs = info["MegaPortraitFaceAnalysisLoader"]["input"]["optional"]["insightface_pack"][0]
    assert "buffalo_l" in packs and "antelopev2" in packs
    g = face_graph("srv_if")
    g["3"]["inputs"].update(backend="insightface", det_threshold=0.5, insightface_pack="antelopev2", provider="CPU")
    hist = server.client.run({k: g[k] for k in ("1", "3", "4", "11")}, timeout=300)
    import comfy_server
    msg = comfy_server.status_error(hist)
    assert "antelopev2" in msg and "insightface" in msg and ".onnx" in msg
    g["3"]["inputs"]["insightface_pack"] = "buffalo_l"          # stand-in weights: loads, finds no face
    hist = server.client.run({k: g[k] for k in ("1", "3", "4", "11")}, timeout=300)
    assert "no face was found" in comfy_server.status_error(hist)


def test_grayscale_reference_in_process(comfy):
    g = face_graph("inp_gray")
    g["12"] = {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "green"}}
    g["13"] = {"class_type": "MaskToImage", "inputs": {"mask": ["12", 0]}}
    for n in ("4",):
        g[n]["inputs"]["image"] = ["13", 0]
    g["6"]["inputs"]["reference"] = ["13", 0]
    g["6"]["inputs"]["color_match"] = "none"      # (Lab matching would turn the pasted face gray as well)
    res = comfy.run(g)
    (comp,) = comfy.output_files(res, "7")
    img = load_png(comp).astype(int)
    assert img.shape == (600, 512, 3)
    corner = img[:100, :100]                      # outside the face: the gray reference, untouched
    assert (corner[..., 0] == corner[..., 1]).all() and (corner[..., 1] == corner[..., 2]).all()
    face = img[200:300, 220:320]                  # inside: the astronaut's colour face
    assert np.abs(face[..., 0] - face[..., 2]).mean() > 10
