"""Every node keeps its tensors on the device of the IMAGEs / MASKs it is given (issue 18, item 3).

IMAGEs may arrive on the GPU (VAE Decode under --gpu-only). On this CPU-only machine the inputs are put on the
test's other device (:mod:`device_proxy`: CPU data that reports another device and refuses to meet a CPU tensor),
so a tensor a node makes on the CPU without saying so and combines with its input raises here as it would on a
GPU. Each node's result must be on the input's device and equal (or, where the accelerator path uses kornia
instead of OpenCV, within float rounding of) the CPU run.
"""
from __future__ import annotations

import os

import pytest
import torch
from conftest import EXAMPLES, image_tensor
from device_proxy import is_other, other_device, to_cpu, to_other


@pytest.fixture(scope="module")
def N(pack):
    from comfyui_megaportrait.nodes import face_analysis, face_crop, harmonize, image_ops, paste_back
    from comfyui_megaportrait.nodes import maps as map_nodes

    class NS:
        fa, fc, hrm, io, maps, pb = face_analysis, face_crop, harmonize, image_ops, map_nodes, paste_back
    return NS


@pytest.fixture(scope="module")
def astronaut():
    return image_tensor(os.path.join(EXAMPLES, "astronaut.png"))


def test_the_proxy_refuses_what_a_gpu_refuses():
    """The proxy is honest: mixing raises, explicit moves and factories on the input's device work."""
    x = to_other(torch.rand(2, 8, 8, 3))
    with other_device():
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            x * torch.ones(2, 8, 8, 1)                    # a mask made on the CPU, as Harmonize used to
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            torch.cat([x, torch.zeros(1, 8, 8, 3)])
        with pytest.raises(TypeError):
            x.numpy()                                       # OpenCV needs an explicit .cpu()
        assert is_other(x * torch.ones(2, 8, 8, 1, device=x.device))
        assert is_other(torch.tensor([1.0, 2.0], device=x.device) + x[0, 0, :2, 0])
        assert is_other(x * torch.tensor(2.0))              # a 0-dim CPU tensor is allowed, as on CUDA
        y = x.cpu()
        assert not is_other(y) and y.device.type == "cpu" and torch.equal(y, to_cpu(x))
        z = torch.zeros(2, 8, 8, 3, device=x.device)
        z[:, :4] = torch.ones(2, 4, 8, 3)                   # a copy across devices is allowed
        assert is_other(z) and float(z.sum()) == 2 * 4 * 8 * 3


def test_stock_image_composite_masked_runs_on_the_other_device(comfy):
    """The stock node a user would use instead of Paste Back runs under the proxy: the proxy is not too strict."""
    dst, src = torch.rand(1, 32, 32, 3), torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    node = comfy.nodes.NODE_CLASS_MAPPINGS["ImageCompositeMasked"]()
    cpu = node.composite(dst, src, 8, 8, False, mask)[0]
    with other_device():
        out = node.composite(to_other(dst), to_other(src), 8, 8, False, to_other(mask))[0]
    assert is_other(out) and torch.equal(to_cpu(out), cpu)


def test_image_ops_stay_on_the_input_device(N):
    io = N.io
    img = torch.rand(1, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(40, 30)
    mask[10:20, 5:12] = 1.0
    mask[31:38, 20:28] = 1.0
    with other_device():
        x, m = to_other(img), to_other(mask)
        prepared = io.prepare_mask(m, 2, 3)
        parts = io.mask_parts(prepared)
        outs = {"prepared": prepared, "resized": io.resize(x, 20, 16), "enlarged": io.resize(x, 60, 50),
                "mask resized": io.resize_mask(m, 15, 20), "padded": io.pad_to_multiple(x, 8),
                "mask padded": io.pad_mask_to_multiple(m, 8), "rgb": io.rgb(x[..., :1])}
        box = io.mask_box(prepared, 0.2)
    assert all(is_other(t) for t in outs.values()), [k for k, t in outs.items() if not is_other(t)]
    assert len(parts) == 2 and all(is_other(p) for p in parts)
    assert torch.equal(to_cpu(prepared), io.prepare_mask(mask, 2, 3))
    assert torch.equal(to_cpu(outs["resized"]), io.resize(img, 20, 16))
    assert box == io.mask_box(io.prepare_mask(mask, 2, 3), 0.2)


@pytest.mark.parametrize("crop", [True, False])
def test_harmonize_on_the_other_device(comfy, N, crop):
    """Harmonize with its IMAGE and MASK on another device than the VAE's output: the result is on the image's
    device and equals the CPU run (before, its prepared mask was on the CPU and its blend raised)."""
    n = comfy.nodes
    with torch.inference_mode():
        m, c, v = n.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        pos = n.CLIPTextEncode().encode(c, "photo of sks person")[0]
        neg = n.CLIPTextEncode().encode(c, "blurry")[0]
    img = torch.rand(1, 72, 64, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 72, 64)
    mask[:, 10:30, 8:24] = 1.0
    mask[:, 40:60, 40:56] = 1.0                             # two parts: sampled one by one
    args = (3, 3, 5.0, "euler", "normal", 0.5, 2, 4, crop, 0.3, 64)
    node = N.hrm.Harmonize()
    with torch.inference_mode():
        cpu_img, cpu_lat = node.harmonize(m, pos, neg, v, img, mask, *args)
        with other_device():
            out, lat = node.harmonize(m, pos, neg, v, to_other(img), to_other(mask), *args)
    assert is_other(out)
    assert torch.equal(to_cpu(out), cpu_img)
    assert torch.equal(to_cpu(lat["samples"]), cpu_lat["samples"])


def test_maps_on_the_other_device(N):
    """The map nodes take their accelerator path (kornia) and return on the input's device."""
    img = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 48, 40)
    mask[:, 8:40, 8:32] = 1.0
    light_cpu = N.maps.LightMap().run(img, 8.0, "pixels", "gaussian", mask)[0]
    hf_cpu = N.maps.HFMap().run(img, 8.0, "pixels", "gaussian", 1.0, mask)[0]
    with other_device():
        x, mk = to_other(img), to_other(mask)
        light = N.maps.LightMap().run(x, 8.0, "pixels", "gaussian", mk)[0]
        box = N.maps.LightMap().run(x, 3.0, "pixels", "box")[0]
        hf, detail = N.maps.HFMap().run(x, 8.0, "pixels", "gaussian", 1.0, mk)
        back = N.maps.RecombineMaps().run(light, hf, 1.0)[0]
    assert all(is_other(t) for t in (light, box, hf, detail, back))
    assert (to_cpu(light) - light_cpu).abs().max() < 1e-4
    assert (to_cpu(hf) - hf_cpu).abs().max() < 1e-4
    assert (to_cpu(back) - img).abs().max() < 1e-4


def test_face_crop_and_paste_back_on_the_other_device(N, astronaut):
    """Face Crop and Paste Back detect and warp on the CPU (dlib, OpenCV), explicitly, and return on the image's
    device, equal to the CPU run."""
    fa = N.fa.FaceAnalyzer().load()
    crops_cpu, fc = N.fc.FaceCropNode().crop(fa, astronaut, 256, 0.25, "largest", 0, 48)
    pasted_cpu = N.pb.PasteBackNode().paste(astronaut, fc, crops_cpu, "landmarks", "face ellipse", 0, 16, 8,
                                            "mean (Lab)", fa)
    with other_device():
        crops, fc2 = N.fc.FaceCropNode().crop(fa, to_other(astronaut), 256, 0.25, "largest", 0, 48)
        pasted = N.pb.PasteBackNode().paste(to_other(astronaut), fc2, crops, "landmarks", "face ellipse", 0, 16, 8,
                                            "mean (Lab)", fa)
    assert is_other(crops) and torch.equal(to_cpu(crops), crops_cpu)
    assert all(is_other(t) for t in pasted)
    for a, b in zip(pasted, pasted_cpu):
        assert torch.equal(to_cpu(a), b)


def test_face_similarity_and_selection_on_the_other_device(N, astronaut):
    fa = N.fa.FaceAnalyzer().load()
    batch = torch.cat([astronaut.flip(2), astronaut])
    with other_device():
        sim = N.fa.FaceSimilarity().compare(fa, to_other(astronaut), to_other(batch))["result"]
        best = N.fa.SelectBestIdentity().select(fa, to_other(astronaut), to_other(batch))["result"]
    assert sim[2] is True and sim[0] < 0.3
    assert best[1] == 1 and is_other(best[0]) and torch.equal(to_cpu(best[0]), astronaut)
