"""The map nodes inside a real ComfyUI, in-process (validate_prompt + PromptExecutor)."""
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor, load_png, pack_node_names


def maps_graph(prefix="mp_maps", sigma=8.0):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "2": {"class_type": "MegaPortraitLightMap", "inputs": {"image": ["1", 0], "sigma": sigma,
                                                                "sigma_mode": "relative to 512 px", "filter_type": "gaussian"}},
        "3": {"class_type": "MegaPortraitHFMap", "inputs": {"image": ["1", 0], "sigma": sigma, "gain": 1.0,
                                                             "sigma_mode": "relative to 512 px", "filter_type": "gaussian"}},
        "4": {"class_type": "MegaPortraitRecombineMaps", "inputs": {"light_map": ["2", 0], "hf_map": ["3", 0], "gain": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"{prefix}_light"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"{prefix}_hf"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"{prefix}_back"}},
    }


def tiny_sampling_graph(prefix="mp_tiny", seed=0):
    """Stock tiny-model KSampler graph whose decoded image goes through our HF map and light map."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": 3, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                    "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "MegaPortraitHFMap", "inputs": {"image": ["6", 0], "sigma": 2.0, "gain": 1.0,
                                                             "sigma_mode": "pixels", "filter_type": "gaussian"}},
        "8": {"class_type": "MegaPortraitLightMap", "inputs": {"image": ["6", 0], "sigma": 2.0,
                                                                "sigma_mode": "pixels", "filter_type": "gaussian"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"{prefix}_raw"}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"{prefix}_hf"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"{prefix}_light"}},
    }


def test_all_pack_nodes_registered_in_comfy(comfy):
    for name in pack_node_names():
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
        assert cls.CATEGORY.startswith("MegaPortrait/")
        assert name in comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS


def test_maps_graph_pixels(comfy, pack):
    from comfyui_megaportrait.nodes import maps
    res = comfy.run(maps_graph())
    img = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    light = maps.light_map(img, 8.0)
    hf, _ = maps.hf_map(img, 8.0)
    expect = {"5": light, "6": hf}
    for node, ref in expect.items():
        (path,) = comfy.output_files(res, node)
        got = load_png(path).astype(np.int16)
        want = np.clip(np.round(ref[0].numpy() * 255), 0, 255).astype(np.int16)   # SaveImage rounding: clip(x*255)
        assert got.shape == want.shape == (512, 512, 3)
        assert np.abs(got - want).max() <= 1
    (back,) = comfy.output_files(res, "7")
    assert np.abs(load_png(back).astype(int) - load_png(os.path.join(EXAMPLES, "astronaut.png")).astype(int)).max() <= 1


def test_tiny_sampling_graph_with_maps(comfy, pack):
    from comfyui_megaportrait.nodes import maps
    res = comfy.run(tiny_sampling_graph())
    raws = comfy.output_files(res, "9")
    hfs = comfy.output_files(res, "10")
    lights = comfy.output_files(res, "11")
    assert len(raws) == len(hfs) == len(lights) == 2        # batch of 2 flows through our nodes
    for raw, hfp, lp in zip(raws, hfs, lights):
        r = torch.from_numpy(load_png(raw).astype(np.float32) / 255)[None]
        assert load_png(raw).shape == (64, 64, 3) and load_png(raw).std() > 1      # the sampler produced an image
        # our outputs equal our function applied to the decoded image (8-bit rounding aside)
        hf, _ = maps.hf_map(r, 2.0, mode="pixels")
        light = maps.light_map(r, 2.0, mode="pixels")
        assert np.abs(load_png(hfp) / 255.0 - hf[0].numpy()).max() <= 2.5 / 255
        assert np.abs(load_png(lp) / 255.0 - light[0].numpy()).max() <= 2.5 / 255


def test_validation_rejects_bad_widget(comfy):
    import comfy_harness
    g = maps_graph()
    g["2"]["inputs"]["sigma_mode"] = "furlongs"
    with pytest.raises(comfy_harness.ValidationFailed):
        comfy.run(g)


def test_node_error_reaches_comfy(comfy):
    g = maps_graph()
    g["2"]["inputs"]["mask"] = ["9", 0]
    g["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    res = comfy.run(g, check=False)
    assert not res.success
    assert "[MegaPortrait Light Map]" in res.error_message and "64x64" in res.error_message
