"""Face-weighted training as users wire it: Load Source Photos' face_masks (face and hair, feathered, cut and
augmented with the photos) into the Identity LoRA Trainer's face_masks and background_weight, in-process and as an
API graph on every host."""
import os
import shutil

import numpy as np
import pytest
import safetensors
import torch
from conftest import EXAMPLES, image_tensor

SRC = "mp_masks_source"


@pytest.fixture(scope="module")
def sp(pack):
    from comfyui_megaportrait.nodes import source_photos
    return source_photos


@pytest.fixture(scope="module")
def dlib_fa(pack):
    from comfyui_megaportrait.nodes import face_analysis
    return face_analysis.FaceAnalyzer().load()


@pytest.fixture(scope="module")
def grace():
    return image_tensor(os.path.join(EXAMPLES, "grace_hopper.jpg"))


@pytest.fixture(scope="module")
def source_folder(comfy):
    d = os.path.join(comfy.input_dir, SRC)
    os.makedirs(d, exist_ok=True)
    for name in ("astronaut.png", "grace_hopper.jpg"):
        shutil.copy(os.path.join(EXAMPLES, name), d)
    return d


def test_face_hair_mask_covers_face_and_hair_and_feathers_its_edge(sp):
    box = np.array([40.0, 50.0, 90.0, 110.0])                     # 50 x 60 px face box in a 160 px crop
    m = sp.face_hair_mask(box, 160).numpy()
    assert m.shape == (160, 160) and m.dtype == np.float32
    assert m[80, 65] == pytest.approx(1.0)                         # face centre
    assert m[int(50 - 0.5 * 60), 65] == pytest.approx(1.0, abs=1e-3)   # hair: half a box height above the box
    assert m[5, 5] == 0 and m[155, 5] == 0 and m[155, 155] == 0    # corners: background
    assert m[150, 65] == 0                                         # the neck below the chin
    edge = m[80, :]
    assert ((edge > 0.05) & (edge < 0.95)).sum() >= 6             # a feathered edge, not a step
    assert torch.equal(sp.face_hair_mask(None, 32), torch.ones(32, 32))


def test_square_crops_give_face_boxes_in_crop_pixels(sp, dlib_fa, grace):
    """The face box carried into the crop is where the face is found again in the crop."""
    crops = sp.square_crops("t", [grace[0]], 256, dlib_fa)
    (box,) = crops.faces
    again = max(dlib_fa.detect((crops.photos[0].numpy() * 255).round().astype(np.uint8)), key=lambda f: f.area)
    assert np.abs(np.asarray(again.bbox) - box).max() < 256 * 0.06
    # a photo that already is the crop is kept as it is, with its own face box
    kept = sp.square_crops("t", [crops.photos[0]], 256, dlib_fa)
    assert kept.boxes == [None] and torch.equal(kept.photos[0], crops.photos[0])
    assert np.abs(kept.faces[0] - box).max() < 256 * 0.06


def test_crop_masks_cut_masks_like_the_photos(sp, dlib_fa, grace):
    """A mask drawn on the full photo and cut by crop_masks matches the same drawing on the cut photo."""
    h, w = grace.shape[1:3]
    crops = sp.square_crops("t", [grace[0]], 128, dlib_fa)
    full = grace[0].mean(-1)                                      # "mask" = the photo's brightness
    cut = sp.crop_masks(full[None], crops.boxes, 128)
    assert cut.shape == (1, 128, 128)
    assert (cut[0] - crops.photos[0].mean(-1)).abs().max() < 1e-5
    assert torch.equal(sp.crop_masks(cut, [None], 128), cut)


def test_augment_moves_masks_with_the_photos(sp):
    """The augmented copies' masks are their photos' masks warped the same way (mirror, zoom, shift, rotation)."""
    g = torch.Generator().manual_seed(0)
    r = 96
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    masks = torch.stack([((xx - 30) ** 2 + (yy - 40) ** 2 < 15 ** 2).float(),
                         ((xx - 60) ** 2 + (yy - 50) ** 2 < 20 ** 2).float()])
    photos = masks[..., None].expand(2, r, r, 3) * 0.8 + 0.1 + 0.01 * torch.rand(2, r, r, 3, generator=g)
    out, out_masks = sp.augment(photos, 6, 3, masks)
    assert out.shape == (6, r, r, 3) and out_masks.shape == (6, r, r)
    assert torch.equal(out_masks[:2], masks)
    for k in range(2, 6):
        bright = (out[k].mean(-1) > 0.5).float()                 # the disc as the photo shows it
        assert (bright - (out_masks[k] > 0.5).float()).abs().mean() < 0.01
    assert sp.augment(photos, 2, 0)[1] is None


def _load_photos(comfy, **kw):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["MegaPortraitLoadSourcePhotos"]()
    args = dict(folder=SRC, filenames="", resolution=128, face_scale=2.2, min_photos=0, seed=0,
                identity_check="warn and go on")          # two public-domain people stand in for one
    args.update(kw)
    return node.load(**args)


def test_load_source_photos_face_masks(comfy, source_folder, dlib_fa):
    photos, count, masks = _load_photos(comfy, face_analysis=dlib_fa, min_photos=4)
    assert count == 4 and masks.shape == (4, 128, 128) and photos.shape == (4, 128, 128, 3)
    for i in range(4):
        face = max(dlib_fa.detect((photos[i].numpy() * 255).round().astype(np.uint8)), key=lambda f: f.area)
        cx, cy = (int(v) for v in face.center)
        assert masks[i, cy, cx] > 0.95                           # the face found in the photo is inside its mask
        assert masks[i, -1, :].max() < 0.2 or i >= 2              # the bottom row (shoulders) is background
        assert 0.15 < masks[i].mean() < 0.8                       # a face and hair, not the whole crop
    _, _, plain = _load_photos(comfy)                              # no face analysis: no face is known
    assert torch.equal(plain, torch.ones(2, 128, 128))


def _graph(weight, masks=True, steps=6):
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "0": {"class_type": "MegaPortraitFaceAnalysisLoader", "inputs": {}},
        "2": {"class_type": "MegaPortraitLoadSourcePhotos", "inputs": {
            "folder": SRC, "filenames": "", "resolution": 64, "face_scale": 2.2, "min_photos": 4, "seed": 0,
            "face_analysis": ["0", 0], "identity_check": "warn and go on"}},
        "3": {"class_type": "MegaPortraitIdentityLoraTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "trigger_word": "sks",
            "class_word": "person", "prompt_template": "photo of {trigger} {class}", "rank": 4, "alpha": 4.0,
            "resolution": 64, "seed": 0, "if_exists": "overwrite", "steps": steps, "learning_rate": 1e-3,
            "batch_size": 2, "save_name": f"test/fm_{weight}_{masks}", "checkpoint_every": 0,
            "if_trained": "train again", "background_weight": weight}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 3]}},
    }
    if masks:
        g["3"]["inputs"]["face_masks"] = ["2", 2]
    return g


def _fill_defaults(comfy, g):
    """The Face Analysis Loader's widgets at their defaults (whatever this host's loader offers)."""
    spec = comfy.nodes.NODE_CLASS_MAPPINGS["MegaPortraitFaceAnalysisLoader"].INPUT_TYPES()["required"]
    for k, v in spec.items():
        opts = v[1] if len(v) > 1 else {}
        g["0"]["inputs"][k] = opts["default"] if "default" in opts else v[0][0]
    return g


def _lora(comfy, name):
    with safetensors.safe_open(comfy.folder_paths.get_full_path("loras", name), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_face_masks_weight_the_training_through_the_api(comfy, source_folder):
    """The shipped wiring as an API graph: masks at weight 1.0 give the unmasked LoRA bit for bit and its key;
    weight 0.25 trains another LoRA under another key."""
    runs = {}
    for weight, masks in ((1.0, False), (1.0, True), (0.25, True)):
        res = comfy.run(_fill_defaults(comfy, _graph(weight, masks)))
        assert "saved" in res.outputs["3"]["text"][0]
        runs[(weight, masks)] = _lora(comfy, f"test/fm_{weight}_{masks}.safetensors")
    (plain, pmeta), (one, ometa), (quarter, qmeta) = runs[(1.0, False)], runs[(1.0, True)], runs[(0.25, True)]
    assert plain.keys() == one.keys() == quarter.keys()
    assert all(torch.equal(plain[k], one[k]) for k in plain)
    assert pmeta["megaportrait.train_key"] == ometa["megaportrait.train_key"] != qmeta["megaportrait.train_key"]
    assert max((plain[k].float() - quarter[k].float()).abs().max().item() for k in plain) > 1e-6


def test_face_masks_that_do_not_fit_the_photos_are_refused(comfy, source_folder):
    g = _fill_defaults(comfy, _graph(0.25))
    g["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}
    g["3"]["inputs"]["face_masks"] = ["9", 0]
    res = comfy.run(g, check=False)
    assert not res.success
    err = res.error_message
    assert "Identity LoRA Trainer" in err and "face_masks" in err and "32x32" in err
