"""Per-face runs on the six-person group picture (tests/synthetic_group.py): Face Crop's 'every face' selections,
Paste Back of every face into the one picture, Harmonize sampling each seam on its own, and the memory of Face Crop
and Paste Back on a large image (regions, not copies of the whole frame)."""
import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import EXAMPLES, REPO, image_tensor


@pytest.fixture(scope="module")
def F(pack):
    from comfyui_megaportrait.nodes import face_analysis, face_crop, harmonize, paste_back
    from comfyui_megaportrait.nodes.common import MegaPortraitError

    class NS:
        fa, fc, pb, hrm, Error = face_analysis, face_crop, paste_back, harmonize, MegaPortraitError
    return NS


@pytest.fixture(scope="module")
def dlib_fa(F):
    return F.fa.FaceAnalyzer().load()


@pytest.fixture(scope="module")
def group():
    from synthetic_group import group_canvas
    img, boxes = group_canvas()
    return torch.from_numpy(img.astype(np.float32) / 255)[None], boxes


@pytest.fixture(scope="module")
def every(F, dlib_fa, group):
    image, _ = group
    return F.fc.face_crop("t", dlib_fa, image, 128, selection=F.fc.EVERY_FACE, min_face_size=16)


def test_every_face_of_the_group(F, every, group):
    """Six crops, left to right, each face inside its own person; one FACE_CROP for one reference image."""
    image, boxes = group
    crops, fc = every
    assert crops.shape == (6, 128, 128, 3) and len(fc) == 6 and fc.n_references == 1
    for k, (info, (x0, y0, x1, y1)) in enumerate(zip(fc.items, boxes)):
        cx, cy = info.landmarks.mean(0)
        assert x0 <= cx <= x1 and y0 <= cy <= y1, (k, (cx, cy), (x0, y0, x1, y1))
        assert info.image_index == 0 and info.face_index == k and info.faces_found == 6
    assert fc2_roundtrip(fc)


def fc2_roundtrip(fc):
    fc2 = pickle.loads(pickle.dumps(fc))
    return fc2.references == 1 and [i.image_index for i in fc2.items] == [0] * 6


def test_every_face_round_trip_into_one_picture(F, dlib_fa, every, group):
    """The six crops go back into the one picture in one pass: exact outside the union mask, close inside, six
    separate face masks and seams."""
    image, boxes = group
    crops, fc = every
    out, mask, seam, notes = F.pb.paste_back("t", image, fc, crops, dlib_fa, color="none")
    assert out.shape == image.shape and mask.shape == (1, 886, 1280) and seam.shape == (1, 886, 1280) and len(notes) == 6
    inside = mask[0] > 0
    assert torch.equal(out[0][~inside], image[0][~inside])
    assert (out - image)[0][inside].abs().mean().item() <= 4 / 255
    n, labels = cv2.connectedComponents((mask[0] > 0.5).numpy().astype(np.uint8))
    assert n - 1 == 6
    for x0, y0, x1, y1 in boxes:                                   # one face mask per person
        assert (mask[0, y0:y1, x0:x1] > 0.5).any()
    assert cv2.connectedComponents((seam[0] > 0.5).numpy().astype(np.uint8))[0] - 1 >= 6
    # re-rendered (here: darkened) faces land in their own places only
    dark = crops * 0.5
    out2, mask2, _, _ = F.pb.paste_back("t", image, fc, dark, None, align="none", color="none")
    for x0, y0, x1, y1 in boxes:
        m = mask2[0, y0:y1, x0:x1] > 0.99
        assert m.any() and (out2[0, y0:y1, x0:x1][m] < image[0, y0:y1, x0:x1][m]).float().mean() > 0.95


def test_matching_identity_picks_that_person(F, dlib_fa, group):
    image, boxes = group
    astronaut = image_tensor(os.path.join(EXAMPLES, "astronaut.png"))
    crops, fc = F.fc.face_crop("t", dlib_fa, image, 128, selection=F.fc.MATCHING, identity=astronaut, min_face_size=16)
    from synthetic_group import PEOPLE
    astro_boxes = [b for b, p in zip(boxes, sorted(PEOPLE, key=lambda p: p[3] + p[2] / 2)) if p[0] == "astronaut.png"]
    got = sorted(info.landmarks.mean(0)[0] for info in fc.items)
    assert len(fc) == len(astro_boxes) == 3, got
    for cx, (x0, _, x1, _) in zip(got, astro_boxes):
        assert x0 <= cx <= x1
    with pytest.raises(F.Error, match="needs the 'identity' image"):
        F.fc.face_crop("Face Crop", dlib_fa, image, 128, selection=F.fc.MATCHING, min_face_size=16)
    hopper = torch.from_numpy(np.asarray(cv2.imread(os.path.join(EXAMPLES, "grace_hopper.jpg"))[..., ::-1],
                                             dtype=np.float32) / 255)[None]
    one, fc1 = F.fc.face_crop("t", dlib_fa, image, 128, selection=F.fc.MATCHING, identity=hopper, min_face_size=16)
    assert len(fc1) == 3 and all(f not in got for f in (i.landmarks.mean(0)[0] for i in fc1.items))


def test_every_face_leaves_out_small_faces_and_batches(F, dlib_fa, group, caplog):
    image, _ = group
    crops, fc = F.fc.face_crop("t", dlib_fa, image, 64, selection=F.fc.EVERY_FACE, min_face_size=60)
    assert 0 < len(fc) < 6 and "left out" in caplog.text and "minimum 60 px" in caplog.text
    with pytest.raises(F.Error, match=r"no usable face in the image: the face .* is only \d+ px wide"):
        F.fc.face_crop("Face Crop", dlib_fa, image, 64, selection=F.fc.EVERY_FACE, min_face_size=400)
    # a batch of two pictures: crops of both, each remembered with its picture; Paste Back gives two composites
    batch = torch.cat([image, image.flip(2)])
    crops2, fc2 = F.fc.face_crop("t", dlib_fa, batch, 64, selection=F.fc.EVERY_FACE, min_face_size=16)
    assert len(fc2) == 12 and fc2.n_references == 2
    assert [i.image_index for i in fc2.items] == [0] * 6 + [1] * 6
    out, mask, _, notes = F.pb.paste_back("t", batch, fc2, crops2, None, align="none", color="none")
    assert out.shape == batch.shape and len(notes) == 12
    assert (mask[0] - mask[1].flip(1)).abs().mean() < 0.02
    with pytest.raises(F.Error, match=r"5 face\(s\) for 12 crop\(s\)"):
        F.pb.paste_back("Paste Back", batch, fc2, crops2[:5], None, align="none")
    with pytest.raises(F.Error, match="reference batch has 1 image"):
        F.pb.paste_back("Paste Back", image, fc2, crops2, None, align="none")


def test_face_crops_made_before_per_face_runs_still_paste(F, dlib_fa):
    """A FACE_CROP pickled by an earlier version (no 'references', no 'image_index') pairs crop i with image i."""
    grace = image_tensor(os.path.join(EXAMPLES, "grace_hopper.jpg"))
    batch = torch.cat([grace, grace.flip(2)])
    crops, fc = F.fc.face_crop("t", dlib_fa, batch, 128)
    old = F.fc.FaceCrop(list(fc.items))
    for info in old.items:
        info.__dict__.pop("image_index", None)
    old.__dict__.pop("references", None)
    old = pickle.loads(pickle.dumps(old))
    assert old.n_references == 2 and old.image_index(1) == 1
    out, mask, _, _ = F.pb.paste_back("t", batch, old, crops, None, align="none", color="none")
    assert out.shape == batch.shape and (mask[0] - mask[1].flip(1)).abs().mean() < 0.02


def test_border_fraction_without_an_image_sized_buffer(F):
    from comfyui_megaportrait.nodes import align
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, s = rng.uniform(-1, 1), rng.uniform(0.3, 3)
        m = np.array([[s * np.cos(a), -s * np.sin(a), rng.uniform(-300, 100)],
                      [s * np.sin(a), s * np.cos(a), rng.uniform(-300, 100)]])
        inside = cv2.warpAffine(np.ones((300, 400), np.float32), m, (256, 256), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        assert abs(align.border_fraction(m, (300, 400), 256) - (1 - inside.mean())) < 2e-3


def test_harmonize_samples_each_seam_on_its_own(comfy, F):
    """Two separate seams far apart: each is sampled in its own box (the latent of the output image comes back);
    outside the feathered mask the image is exact; one seam alone gives the same pixels in its part."""
    n = comfy.nodes
    with torch.inference_mode():
        m, c, v = n.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        pos = n.CLIPTextEncode().encode(c, "photo of sks person")[0]
        neg = n.CLIPTextEncode().encode(c, "blurry")[0]
    img = torch.rand(1, 96, 256, 3, generator=torch.Generator().manual_seed(4))
    left, right = torch.zeros(1, 96, 256), torch.zeros(1, 96, 256)
    left[:, 30:60, 20:50] = 1
    right[:, 30:60, 200:230] = 1
    args = (3, 3, 5.0, "euler", "normal", 0.5, 2, 4, True, 0.3, 64)
    node = F.hrm.Harmonize()
    with torch.inference_mode():
        both, lat = node.harmonize(m, pos, neg, v, img, left + right, *args)
        only_left, _ = node.harmonize(m, pos, neg, v, img, left, *args)
    fm = F.hrm.prepare_mask((left + right)[0], 2, 4)
    assert len(F.hrm.mask_parts(fm)) == 2
    assert torch.equal(both[0][fm == 0], img[0][fm == 0])
    assert torch.equal(both[0, :, :128], only_left[0, :, :128])    # the left part sampled as if alone
    assert (both - img)[0, :, 128:].abs().max() > 0.01
    assert lat["samples"].shape[-2:] == (12, 32)                   # the whole output image's latent


@pytest.mark.parametrize("op", ["crop", "paste"])
def test_memory_on_a_large_image_is_at_most_3x_its_float_size(op):
    """Face Crop and Paste Back on a 4000x4000 picture (bench/bench_face_memory.py at 8000 px in the bench): the
    peak resident size they add stays within 3x the image's float32 size."""
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_face_memory.py"), "--one", op, "--size", "4000"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["faces"] == 1 and res["ratio"] <= 3.0, res
