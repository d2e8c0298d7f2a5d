"""Face analysis, aligned crop, landmark-aligned paste-back and identity nodes on real models and real photos
(dlib HOG + 5-point landmarks + ResNet descriptors; scikit-image's astronaut, matplotlib's grace_hopper)."""
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor


@pytest.fixture(scope="module")
def F(pack):
    from comfyui_megaportrait.nodes import align, face_analysis, face_crop, paste_back
    from comfyui_megaportrait.nodes.common import MegaPortraitError

    class NS:
        fa, fc, pb, al, Error = face_analysis, face_crop, paste_back, align, MegaPortraitError
    return NS


@pytest.fixture(scope="module")
def dlib_fa(F):
    return F.fa.FaceAnalyzer().load()


@pytest.fixture(scope="module")
def grace():
    return image_tensor(os.path.join(EXAMPLES, "grace_hopper.jpg"))


@pytest.fixture(scope="module")
def astronaut():
    return image_tensor(os.path.join(EXAMPLES, "astronaut.png"))


def u8(t):
    return (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_dlib_detects_landmarks_and_identity(F, dlib_fa, grace, astronaut):
    faces_g = dlib_fa.detect(u8(grace[0]))
    faces_a = dlib_fa.detect(u8(astronaut[0]))
    assert len(faces_g) == 1 and len(faces_a) >= 1
    g = faces_g[0]
    assert g.kind == "dlib5" and g.landmarks.shape == (5, 2)
    # the landmarks are inside the face box and the eyes are above the nose
    x0, y0, x1, y1 = g.bbox
    assert ((g.landmarks[:, 0] > x0) & (g.landmarks[:, 0] < x1) & (g.landmarks[:, 1] > y0) & (g.landmarks[:, 1] < y1)).all()
    assert g.landmarks[4, 1] > g.landmarks[:4, 1].max()
    eg = dlib_fa.embed(u8(grace[0]), g)
    a = max(faces_a, key=lambda f: f.area)
    ea = dlib_fa.embed(u8(astronaut[0]), a)
    assert eg.shape == (128,) and ea.shape == (128,)
    assert dlib_fa.distance(eg, ea) > 0.6          # two different people
    # the same person, mirrored and rescaled, stays well below the threshold
    flipped = cv2.resize(u8(astronaut[0])[:, ::-1], (700, 700), interpolation=cv2.INTER_CUBIC)
    f2 = max(dlib_fa.detect(np.ascontiguousarray(flipped)), key=lambda f: f.area)
    assert dlib_fa.distance(ea, dlib_fa.embed(np.ascontiguousarray(flipped), f2)) < 0.45


def test_detection_at_any_size(F, dlib_fa, grace):
    img = u8(grace[0])
    ref = dlib_fa.detect(img)[0]
    for scale in (0.5, 2.0, 3.5):
        big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        faces = dlib_fa.detect(big)
        assert len(faces) == 1
        # landmarks scale with the image (sub-pixel refined, within 1.5% of the face size)
        err = np.abs(faces[0].landmarks / scale - ref.landmarks).mean()
        assert err < 0.015 * ref.size, (scale, err)


def test_round_trip_is_exact(F, dlib_fa, grace, astronaut):
    for ref in (grace, astronaut):
        crops, fc = F.fc.face_crop("t", dlib_fa, ref, 512)
        assert crops.shape == (1, 512, 512, 3) and len(fc) == 1
        out, mask, seam, notes = F.pb.paste_back("t", ref, fc, crops, dlib_fa, color="none")
        assert out.shape == ref.shape and mask.shape == ref.shape[:3] and seam.shape == ref.shape[:3]
        inside = mask[0] > 0
        assert inside.float().mean() > 0.05
        assert (out - ref)[0][inside].abs().mean().item() <= 2 / 255
        assert torch.equal(out[0][~inside], ref[0][~inside])            # exactly the reference outside the mask
        # the seam band straddles the mask edge
        edge = (mask[0] > 0.3) & (mask[0] < 0.7)
        assert seam[0][edge].mean() > 0.5 and seam[0][mask[0] > 0.999].mean() < 0.5


def test_round_trip_at_2048_and_other_crop_sizes(F, dlib_fa, grace):
    big = torch.nn.functional.interpolate(grace.permute(0, 3, 1, 2), scale_factor=4, mode="bicubic").clamp(0, 1)
    big = big.permute(0, 2, 3, 1).contiguous()
    for size in (256, 1024):
        crops, fc = F.fc.face_crop("t", dlib_fa, big, size)
        assert crops.shape == (1, size, size, 3)
        out, mask, _, _ = F.pb.paste_back("t", big, fc, crops, dlib_fa, color="none")
        inside = mask[0] > 0
        assert torch.equal(out[0][~inside], big[0][~inside])
        # a 256 crop of a ~800 px face loses detail; a 1024 one does not
        limit = 2 / 255 if size == 1024 else 6 / 255
        assert (out - big)[0][inside].abs().mean().item() <= limit


@pytest.mark.parametrize("angle,scale,dx,dy", [(8, 1.07, 12, -9), (-6, 0.93, -7, 10), (3, 1.0, 5, 4), (-10, 1.1, -14, 8)])
def test_pose_drift_is_corrected(F, dlib_fa, astronaut, angle, scale, dx, dy):
    """A crop moved by a known similarity transform (pose drift) is pasted back onto the 512x512 reference with
    a mean landmark error below 1.5 px."""
    ref = astronaut
    crops, fc = F.fc.face_crop("t", dlib_fa, ref, 512)
    crop = crops[0].numpy()
    r = cv2.getRotationMatrix2D((256.0, 256.0), angle, scale)
    r[:, 2] += [dx, dy]
    moved = cv2.warpAffine(crop, r, (512, 512), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    out, mask, _, notes = F.pb.paste_back("t", ref, fc, torch.from_numpy(moved)[None], dlib_fa, color="none")
    assert notes == ["aligned on re-detected landmarks"]
    want = max(dlib_fa.detect(u8(ref[0])), key=lambda f: f.area).landmarks
    got = max(dlib_fa.detect(u8(out[0])), key=lambda f: f.area).landmarks
    err = np.linalg.norm(got - want, axis=1).mean()
    assert err < 1.5, err
    # without alignment the drift stays visible
    out0, _, _, _ = F.pb.paste_back("t", ref, fc, torch.from_numpy(moved)[None], None, align="none", color="none")
    got0 = max(dlib_fa.detect(u8(out0[0])), key=lambda f: f.area).landmarks
    assert np.linalg.norm(got0 - want, axis=1).mean() > 3 * max(err, 0.5)


def test_identity_survives_paste(F, dlib_fa, grace, astronaut):
    """The astronaut's face pasted onto Grace Hopper's head is recognised as the astronaut, not as Hopper."""
    ref_crop, ref_fc = F.fc.face_crop("t", dlib_fa, grace, 512)
    src_crop, _ = F.fc.face_crop("t", dlib_fa, astronaut, 512)
    out, mask, _, notes = F.pb.paste_back("t", grace, ref_fc, src_crop, dlib_fa, color="mean (Lab)")
    assert notes == ["aligned on re-detected landmarks"]
    e_out = F.fa.identity_embedding("t", dlib_fa, out, "out")
    e_ast = F.fa.identity_embedding("t", dlib_fa, astronaut, "astronaut")
    e_gr = F.fa.identity_embedding("t", dlib_fa, grace, "grace")
    assert dlib_fa.distance(e_out, e_ast) < 0.6
    assert dlib_fa.distance(e_out, e_gr) > 0.6
    # body and background untouched
    assert torch.equal(out[0][mask[0] == 0], grace[0][mask[0] == 0])


def test_color_match_moves_face_towards_reference(F, dlib_fa, grace):
    crops, fc = F.fc.face_crop("t", dlib_fa, grace, 512)
    tinted = (crops * torch.tensor([1.25, 0.85, 0.8])).clamp(0, 1)
    region = None
    errs = {}
    for mode in ("none", "luminance", "mean (Lab)", "mean+std (Lab)"):
        out, mask, _, _ = F.pb.paste_back("t", grace, fc, tinted, dlib_fa, color=mode)
        region = mask[0] > 0.5
        errs[mode] = (out[0][region].mean(0) - grace[0][region].mean(0)).abs().sum().item()
    assert errs["mean (Lab)"] < errs["none"] / 4
    assert errs["mean+std (Lab)"] < errs["none"] / 4
    # luminance matching fixes a brightness change (not a colour cast)
    darker = crops * 0.7
    lum = {}
    for mode in ("none", "luminance"):
        out, mask, _, _ = F.pb.paste_back("t", grace, fc, darker, dlib_fa, color=mode)
        region = mask[0] > 0.5
        lum[mode] = (out[0][region].mean() - grace[0][region].mean()).abs().item()
    assert lum["luminance"] < lum["none"] / 4


def test_mask_types_grow_and_feather(F, dlib_fa, grace):
    crops, fc = F.fc.face_crop("t", dlib_fa, grace, 512)
    areas = {}
    for mt in F.pb.MASK_TYPES:
        _, mask, _, _ = F.pb.paste_back("t", grace, fc, crops, dlib_fa, mask_type=mt, feather=0, color="none")
        areas[mt] = (mask[0] > 0.5).float().sum().item()
    assert areas["whole crop"] > areas["face ellipse"] > 0 and areas["landmark hull"] > 0
    _, small, _, _ = F.pb.paste_back("t", grace, fc, crops, dlib_fa, grow=-20, feather=0, color="none")
    _, large, _, _ = F.pb.paste_back("t", grace, fc, crops, dlib_fa, grow=20, feather=0, color="none")
    assert (small[0] > 0.5).sum() < areas["face ellipse"] < (large[0] > 0.5).sum()
    _, hard, _, _ = F.pb.paste_back("t", grace, fc, crops, dlib_fa, feather=0, color="none")
    _, soft, _, _ = F.pb.paste_back("t", grace, fc, crops, dlib_fa, feather=40, color="none")
    partial = lambda m: ((m > 0.02) & (m < 0.98)).sum().item()  # noqa: E731
    assert partial(soft[0]) > 3 * partial(hard[0])


def test_batches_and_broadcast(F, dlib_fa, grace):
    batch = torch.cat([grace, grace.flip(2)])
    crops, fc = F.fc.face_crop("t", dlib_fa, batch, 256)
    assert crops.shape == (2, 256, 256, 3) and len(fc) == 2
    out, mask, seam, _ = F.pb.paste_back("t", batch, fc, crops, dlib_fa, color="none")
    assert out.shape == batch.shape and mask.shape == (2, 600, 512)
    # mirrored image -> mirrored mask
    assert (mask[0] - mask[1].flip(1)).abs().mean() < 0.02
    one, fc1 = F.fc.face_crop("t", dlib_fa, grace, 256)
    three = torch.cat([one, one * 0.9, one.flip(2)])
    out3, mask3, _, _ = F.pb.paste_back("t", grace, fc1, three, dlib_fa, color="none")
    assert out3.shape == (3, 600, 512, 3)
    assert not torch.equal(out3[0], out3[1])
    # a face at another (square) resolution than the crop is fine: mapped back pixel-centre exact (align none);
    # re-detected on the resampled face its 5 landmarks move by ~0.3 px, which the drift fit follows
    up = torch.nn.functional.interpolate(one.permute(0, 3, 1, 2), size=(512, 512), mode="bicubic").permute(0, 2, 3, 1)
    up = up.clamp(0, 1).contiguous()
    out_up, m_up, _, _ = F.pb.paste_back("t", grace, fc1, up, None, align="none", color="none")
    assert (out_up - grace)[0][m_up[0] > 0].abs().mean() < 2 / 255
    out_up, m_up, _, notes = F.pb.paste_back("t", grace, fc1, up, dlib_fa, color="none")
    assert notes == ["aligned on re-detected landmarks"] and (out_up - grace)[0][m_up[0] > 0].abs().mean() < 4 / 255


def test_face_selection(F, dlib_fa, grace, astronaut):
    # two people side by side: astronaut (left), Grace Hopper (right)
    a = torch.nn.functional.interpolate(astronaut.permute(0, 3, 1, 2), size=(600, 600), mode="area").permute(0, 2, 3, 1)
    both = torch.cat([a, grace], dim=2).contiguous()
    _, fc = F.fc.face_crop("t", dlib_fa, both, 128, selection="index (left to right)", index=1)
    assert fc[0].bbox[0] > 600                                # the right-hand face
    _, fc = F.fc.face_crop("t", dlib_fa, both, 128, selection="most similar to identity", identity=astronaut)
    assert fc[0].bbox[2] < 600                                # the astronaut, on the left
    _, fc = F.fc.face_crop("t", dlib_fa, both, 128, selection="most similar to identity", identity=grace)
    assert fc[0].bbox[0] > 600
    _, fc = F.fc.face_crop("t", dlib_fa, both, 128, selection="largest")
    assert fc[0].faces_found >= 2
    with pytest.raises(F.Error, match=r"2 faces found in the image .*selection 'single \(error if several\)' needs "
                                      r"exactly one.*Fix: use selection 'largest', 'index \(left to right\)'"):
        F.fc.face_crop("Face Crop", dlib_fa, both, 128, selection="single (error if several)")
    with pytest.raises(F.Error, match="face index 7"):
        F.fc.face_crop("Face Crop", dlib_fa, both, 128, selection="index (left to right)", index=7)
    with pytest.raises(F.Error, match="needs the 'identity' image"):
        F.fc.face_crop("Face Crop", dlib_fa, both, 128, selection="most similar to identity")


@pytest.fixture(scope="module")
def group():
    from synthetic_group import group_canvas
    img, boxes = group_canvas()
    return torch.from_numpy(img.astype(np.float32) / 255)[None], boxes


def test_group_picture_every_face_at_full_resolution(F, dlib_fa, group):
    """Six people in two rows on a 1280x886 picture (faces 45-95 px wide, as round a table): the search finds all
    six where they are, left to right; index and single count the same faces; the old single shrunken pass
    (faces from 72 px only) misses the small ones."""
    image, boxes = group
    img = u8(image[0])
    faces = dlib_fa.detect(img)
    assert len(faces) == 6, [f.bbox.round() for f in faces]
    for f, (x0, y0, x1, y1) in zip(faces, boxes):                   # each face inside its own person, in order
        assert x0 <= f.center[0] <= x1 and y0 <= f.center[1] <= y1, (f.center, (x0, y0, x1, y1))
    assert min(f.size for f in faces) < 50
    big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)      # the same picture at 2560x1772
    big_faces = dlib_fa.detect(big)                                 # every person again (a flag may add a false hit)
    assert all(any(2 * x0 <= f.center[0] <= 2 * x1 and 2 * y0 <= f.center[1] <= 2 * y1 for f in big_faces)
               for x0, y0, x1, y1 in boxes) and len(big_faces) <= 7
    assert len(dlib_fa.detect(img, min_face=72)) < 6
    _, fc = F.fc.face_crop("t", dlib_fa, image, 128, selection="index (left to right)", index=5, min_face_size=16)
    assert fc[0].faces_found == 6 and boxes[5][0] <= fc[0].bbox[0] <= boxes[5][2]     # the rightmost face
    with pytest.raises(F.Error, match=r"^\[MegaPortrait Face Crop\] 6 faces found in the image \(\d+ px at x=\d+, "):
        F.fc.face_crop("Face Crop", dlib_fa, image, 128, selection="single (error if several)", min_face_size=16)
    with pytest.raises(F.Error, match="face index 6 was asked for but the image has 6 face"):
        F.fc.face_crop("Face Crop", dlib_fa, image, 128, selection="index (left to right)", index=6)


def test_two_people_side_by_side_small(F, dlib_fa, grace, astronaut):
    """The two shipped portraits side by side in a 1600x700 frame, faces ~40-50 px: both found, 'single' refuses."""
    a = torch.nn.functional.interpolate(astronaut.permute(0, 3, 1, 2), size=(170, 170), mode="area")
    g = torch.nn.functional.interpolate(grace.permute(0, 3, 1, 2), size=(164, 140), mode="area")
    canvas = torch.full((1, 3, 700, 1600), 0.55)
    canvas[:, :, 290:460, 510:680] = a
    canvas[:, :, 280:444, 900:1040] = g
    both = canvas.permute(0, 2, 3, 1).contiguous()
    faces = dlib_fa.detect(u8(both[0]))
    assert len(faces) == 2 and faces[0].center[0] < 680 < 900 < faces[1].center[0]
    assert all(f.size < 72 for f in faces), [f.size for f in faces]     # too small for an unenlarged HOG pass
    with pytest.raises(F.Error, match="2 faces found.*needs exactly one"):
        F.fc.face_crop("Face Crop", dlib_fa, both, 256, selection="single (error if several)", min_face_size=16)
    _, fc = F.fc.face_crop("t", dlib_fa, both, 256, selection="most similar to identity", identity=grace,
                           min_face_size=16)
    assert fc[0].bbox[0] > 900


def test_68_point_crop_round_trip(F, grace):
    fa68 = F.fa.FaceAnalyzer(landmarks="68-point").load()
    crops, fc = F.fc.face_crop("t", fa68, grace, 512)
    assert fc[0].kind == "dlib68" and fc[0].landmarks.shape == (68, 2)
    # all 68 points fitted: they sit on their template to within the face's own shape (a few px at 512)
    tpl = F.al.template_to_crop(F.al.template("dlib68"), 512, 0.25)
    assert np.linalg.norm(F.al.transform_points(fc[0].matrix, fc[0].landmarks) - tpl, axis=1).mean() < 8
    out, mask, _, notes = F.pb.paste_back("t", grace, fc, crops, fa68, color="none")
    assert notes == ["aligned on re-detected landmarks"]
    assert (out - grace)[0][mask[0] > 0].abs().mean().item() <= 2 / 255


def test_face_types_are_picklable(F, dlib_fa, grace):
    _, fc = F.fc.face_crop("t", dlib_fa, grace, 256)
    fc2 = pickle.loads(pickle.dumps(fc))
    assert np.array_equal(fc2[0].matrix, fc[0].matrix) and fc2[0].image_size == (600, 512)
    fa2 = pickle.loads(pickle.dumps(dlib_fa))
    assert fa2 == dlib_fa
    assert len(fa2.detect(u8(grace[0]))) == 1       # works after unpickling (models shared/reloaded)
    assert len(pickle.dumps(dlib_fa)) < 2000        # no model weights inside


def test_grayscale_and_rgba_inputs(F, dlib_fa, grace):
    gray = grace.mean(-1, keepdim=True)
    crops, fc = F.fc.face_crop("t", dlib_fa, gray, 256)
    assert crops.shape == (1, 256, 256, 3)
    assert (crops[..., 0] - crops[..., 1]).abs().max() < 1e-6       # still gray
    out, mask, _, _ = F.pb.paste_back("t", gray, fc, crops, dlib_fa, color="none")
    assert out.shape == (1, 600, 512, 3)
    rgba = torch.cat([grace, torch.full_like(grace[..., :1], 0.5)], -1)
    crops4, fc4 = F.fc.face_crop("t", dlib_fa, rgba, 256)
    assert crops4.shape[-1] == 3
    out4, _, _, _ = F.pb.paste_back("t", rgba, fc4, crops4, dlib_fa, color="none")
    assert out4.shape == rgba.shape and torch.equal(out4[..., 3], rgba[..., 3])   # alpha kept


# ----------------------------------------------------------------------------------------------- bad input
def test_no_face(F, dlib_fa):
    noise = torch.rand(1, 300, 300, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(F.Error) as e:
        F.fc.FaceCropNode().crop(dlib_fa, noise, 512, 0.25, "largest", 0, 48)
    assert "[MegaPortrait Face Crop] no face was found" in str(e.value) and "Fix:" in str(e.value)
    flat = torch.full((2, 200, 200, 3), 0.5)
    with pytest.raises(F.Error, match="image 0 of the batch"):
        F.fc.FaceCropNode().crop(dlib_fa, flat, 512, 0.25, "largest", 0, 48)


def test_tiny_face(F, dlib_fa, astronaut):
    with pytest.raises(F.Error, match=r"only \d+ px wide \(minimum 300 px\)"):
        F.fc.FaceCropNode().crop(dlib_fa, astronaut, 512, 0.25, "largest", 0, 300)


def test_face_cut_by_border(F, dlib_fa, grace):
    cut = grace[:, :, 200:, :].contiguous()       # a fifth of the face box (and one eye's corner) is outside
    with pytest.raises(F.Error, match=r"cut by the image border \(2\d% of its box is outside"):
        F.fc.FaceCropNode().crop(dlib_fa, cut, 512, 0.25, "largest", 0, 48)
    cut_more = grace[:, :, 260:, :].contiguous()  # half the face: the detector no longer sees a face
    with pytest.raises(F.Error, match="no face was found.*not cut by the border"):
        F.fc.FaceCropNode().crop(dlib_fa, cut_more, 512, 0.25, "largest", 0, 48)
    # a face near (not across) the border is cropped with replicated edges, and pastes back exactly outside the mask
    near = grace[:, 100:, 150:, :].contiguous()
    crops, fc = F.fc.face_crop("t", dlib_fa, near, 512)
    assert fc[0].border_fraction > 0.01
    out, mask, _, _ = F.pb.paste_back("t", near, fc, crops, dlib_fa, color="none")
    assert torch.equal(out[0][mask[0] == 0], near[0][mask[0] == 0])


def test_paste_back_bad_input(F, dlib_fa, grace, astronaut):
    crops, fc = F.fc.face_crop("t", dlib_fa, grace, 256)
    node = F.pb.PasteBackNode()
    args = ("landmarks", "face ellipse", 0, 24, 16, "none")
    crops2, fc2 = F.fc.face_crop("t", dlib_fa, torch.cat([grace, grace]), 256)
    with pytest.raises(F.Error, match=r"3 face\(s\) for 2 crop\(s\)"):
        node.paste(torch.cat([grace, grace]), fc2, torch.cat([crops2, crops2[:1]]), *args, face_analysis=dlib_fa)
    with pytest.raises(F.Error, match="reference batch has 1 image"):
        node.paste(grace, fc2, crops2, *args, face_analysis=dlib_fa)
    with pytest.raises(F.Error, match="FACE_CROP was made from a 512x600 image"):
        node.paste(astronaut, fc, crops, *args, face_analysis=dlib_fa)
    with pytest.raises(F.Error, match="not square"):
        node.paste(grace, fc, crops[:, :, :200], *args, face_analysis=dlib_fa)
    with pytest.raises(F.Error, match="needs the face_analysis input"):
        node.paste(grace, fc, crops, *args)
    with pytest.raises(F.Error, match="not a FACE_CROP"):
        node.paste(grace, "nope", crops, *args, face_analysis=dlib_fa)


def test_paste_back_falls_back_without_a_face(F, dlib_fa, grace):
    crops, fc = F.fc.face_crop("t", dlib_fa, grace, 256)
    noise = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(1))
    out, mask, _, notes = F.pb.paste_back("t", grace, fc, noise, dlib_fa, color="none")
    assert "without drift correction" in notes[0]
    assert (out - grace)[0][mask[0] > 0.99].abs().mean() > 0.1                  # the noise was pasted
    assert torch.equal(out[0][mask[0] == 0], grace[0][mask[0] == 0])


# --------------------------------------------------------------------------------------------- identity nodes
def test_similarity_and_select_best(F, dlib_fa, grace, astronaut):
    g = torch.nn.functional.interpolate(grace.permute(0, 3, 1, 2), size=(512, 512), mode="area").permute(0, 2, 3, 1)
    noise = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(2))
    res = F.fa.FaceSimilarity().compare(dlib_fa, astronaut, torch.cat([astronaut.flip(2), g]))
    dist, thr, same, text = res["result"]
    assert thr == 0.6 and res["ui"]["text"] == [text]
    assert "item 0" in text and "same person" in text and "item 1" in text and "different person" in text
    one = F.fa.FaceSimilarity().compare(dlib_fa, astronaut, astronaut.flip(2))["result"]
    assert one[0] < 0.45 and one[2] is True
    two = F.fa.FaceSimilarity().compare(dlib_fa, astronaut, g)["result"]
    assert two[0] > 0.6 and two[2] is False
    best = F.fa.SelectBestIdentity().select(dlib_fa, grace, torch.cat([astronaut, noise, g]))["result"]
    img, idx, d, report = best
    assert idx == 2 and d < 0.3 and img.shape == (1, 512, 512, 3) and "no face" in report
    with pytest.raises(F.Error, match="no face was found in any candidate"):
        F.fa.SelectBestIdentity().select(dlib_fa, grace, noise)
    with pytest.raises(F.Error, match=r"no face was found in image_b \(batch item 0\)"):
        F.fa.FaceSimilarity().compare(dlib_fa, grace, noise)
    rep = F.fa.FaceSimilarity().compare(dlib_fa, astronaut, torch.cat([noise, astronaut.flip(2)]), on_no_face="report")
    d, _, same, text = rep["result"]
    assert "item 0: no face found" in text and "item 1: distance" in text and same and d < 0.45
    d, _, same, text = F.fa.FaceSimilarity().compare(dlib_fa, grace, noise, on_no_face="report")["result"]
    assert d == float("inf") and not same and "no face to compare" in text


# --------------------------------------------------------------------------------------------- insightface
@pytest.fixture()
def insightface_root(F, tmp_path, monkeypatch):
    import insightface_standin
    insightface_standin.write_buffalo_standin(str(tmp_path / "models" / "buffalo_l"))
    monkeypatch.setattr(F.fa, "insightface_roots", lambda: [str(tmp_path)])
    return tmp_path


def test_insightface_backend_loads_and_routes_standin_pack(F, insightface_root, grace):
    (fa,) = F.fa.FaceAnalysisLoader().load("insightface", 0.5, 640, insightface_pack="buffalo_l", provider="CPU")
    assert fa.impl.models == ["detection", "recognition"]
    assert fa.metric == "cosine" and fa.threshold == 0.65
    assert fa.detect(u8(grace[0])) == []              # stand-in weights: nothing is detected
    face = F.fa.Face(np.array([180, 139, 366, 325.0]), 0.9,
                     np.array([[222, 195], [306, 188], [272, 252], [240, 280], [300, 278.0]]), "kps5")
    e = fa.embed(u8(grace[0]), face)
    assert e.shape == (512,) and abs(np.linalg.norm(e) - 1) < 1e-6
    with pytest.raises(F.Error, match="no face was found"):
        F.fc.FaceCropNode().crop(fa, grace, 512, 0.25, "largest", 0, 48)
    assert "buffalo_l" in F.fa.list_insightface_packs()


def test_missing_insightface_pack_says_where(F, insightface_root):
    with pytest.raises(F.Error) as e:
        F.fa.FaceAnalysisLoader().load("insightface", 0.5, 640, insightface_pack="antelopev2", provider="CPU")
    msg = str(e.value)
    assert "antelopev2" in msg and os.path.join(str(insightface_root), "models", "antelopev2") in msg
    assert ".onnx" in msg and "Face Analysis Loader" in msg


def test_missing_cuda_provider(F, insightface_root):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(F.Error, match="no CUDA provider"):
        F.fa.FaceAnalysisLoader().load("insightface", 0.5, 640, insightface_pack="buffalo_l", provider="CUDA")


# --------------------------------------------------------------------------------------------- source photos
def test_source_photos_are_cropped_once_and_faceless_ones_named(F, dlib_fa, grace, astronaut):
    from comfyui_megaportrait.nodes import source_photos as sp
    once = sp.square_photos("Load Source Photos", [grace[0], astronaut[0]], 256, dlib_fa)
    assert once.shape == (2, 256, 256, 3)
    # the trainer gets the loader's crops: they are recognised and passed through untouched, not cropped again
    twice = sp.square_photos("Identity LoRA Trainer", list(once), 256, dlib_fa)
    assert torch.equal(twice, once)
    # at another resolution they are photos to crop again
    assert sp.square_photos("Identity LoRA Trainer", list(once), 128, dlib_fa).shape == (2, 128, 128, 3)
    noise = torch.rand(300, 300, 3, generator=torch.Generator().manual_seed(3))
    tiny = torch.nn.functional.interpolate(grace.permute(0, 3, 1, 2), size=(175, 150), mode="area").permute(0, 2, 3, 1)[0]
    with pytest.raises(F.Error) as e:
        sp.square_photos("Identity LoRA Trainer", [grace[0], noise, tiny], 512, dlib_fa)
    msg = str(e.value)
    assert msg.startswith("[MegaPortrait Identity LoRA Trainer] no face was found in photo(s) 1; the face crop of "
                          "photo(s) 2 (") and "enlarged more than 4x" in msg and "(of 3, counted from 0)" in msg
    # without requiring a face, nothing is dropped: centred crops for those
    kept = sp.square_photos("t", [grace[0], noise, tiny], 512, dlib_fa, require_face=False)
    assert kept.shape == (3, 512, 512, 3)
