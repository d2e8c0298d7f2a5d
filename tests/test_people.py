"""Several people in one group photo (nodes/people.py): the six-person picture of tests/synthetic_group.py holds
three faces of each shipped public-domain portrait (astronaut, Grace Hopper). Each face goes to the person it is
(by identity, or by face number); a face of nobody known is left untouched or given the default person; and the
samplers and Harmonize sample every face (and seam) with its own person's LoRA, which is checked by which LoRA
touched which face."""
import os

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, image_tensor


@pytest.fixture(scope="module")
def P(pack):
    from comfyui_megaportrait.nodes import (
        face_analysis,
        face_crop,
        harmonize,
        identity_sampler,
        paste_back,
        people,
        shading,
    )
    from comfyui_megaportrait.nodes.common import MegaPortraitError

    class NS:
        fa, fc, pb, hrm, ids, sh, pp, Error = (face_analysis, face_crop, paste_back, harmonize, identity_sampler,
                                               shading, people, MegaPortraitError)
    return NS


@pytest.fixture(scope="module")
def fa(P):
    return P.fa.FaceAnalyzer().load()


@pytest.fixture(scope="module")
def group(P, fa):
    """(picture [1, H, W, 3], the portrait of each face left to right, crops [6, 64, 64, 3], FACE_CROP)."""
    from synthetic_group import PEOPLE, group_canvas
    img, _ = group_canvas()
    image = torch.from_numpy(img.astype(np.float32) / 255)[None]
    who = ["astronaut" if p[0] == "astronaut.png" else "hopper" for p in sorted(PEOPLE, key=lambda p: p[3] + p[2] / 2)]
    crops, fc = P.fc.face_crop("t", fa, image, 64, selection=P.fc.EVERY_FACE, min_face_size=16)
    assert len(fc) == 6
    return image, who, crops, fc


@pytest.fixture(scope="module")
def photos():
    return {"astronaut": image_tensor(os.path.join(EXAMPLES, "astronaut.png")),
            "hopper": image_tensor(os.path.join(EXAMPLES, "grace_hopper.jpg"))}


def make_people(P, fa, photos, names, models=None, positives=None):
    people = None
    for name in names:
        emb = P.fa.identity_embedding("t", fa, photos[name], name)
        person = P.pp.Person(name, (models or {}).get(name, f"model of {name}"), emb, (positives or {}).get(name))
        people = P.pp.add_person("t", people, person)
    return people


def test_every_face_goes_to_the_person_it_is(P, fa, group, photos):
    image, who, crops, fc = group
    people = make_people(P, fa, photos, ["astronaut", "hopper"])
    faces, fc2, out, lines = P.pp.assign_faces("t", fa, image, crops, fc, people, "by identity", 0.0,
                                               "leave untouched", "", "")
    assert torch.equal(faces, crops) and len(fc2) == 6 and fc2.n_references == 1
    assert [out.persons[k].name for k in out.faces] == who
    assert len(lines) == 7 and all(f"face {i} " in lines[i + 1] and who[i] in lines[i + 1] for i in range(6))
    assert "[nearest]" in lines[1] and "threshold 0.600" in lines[0]
    # the places are the faces' centres: each inside its own portrait's box
    from synthetic_group import group_canvas
    boxes = group_canvas()[1]
    for (b, x, y), (x0, y0, x1, y1) in zip(out.places, boxes):
        assert b == 0 and x0 <= x <= x1 and y0 <= y <= y1


def test_a_face_of_nobody_known_is_left_untouched_or_given_the_default(P, fa, group, photos):
    image, who, crops, fc = group
    only = make_people(P, fa, photos, ["astronaut"])
    faces, fc2, out, lines = P.pp.assign_faces("t", fa, image, crops, fc, only, "by identity", 0.0,
                                               "leave untouched", "", "")
    astro = [i for i, w in enumerate(who) if w == "astronaut"]
    assert len(fc2) == 3 and torch.equal(faces, crops[astro]) and out.faces == (0, 0, 0)
    assert sum("nobody: left untouched" in line for line in lines) == 3
    # pasted back, the faces of nobody known are exactly the picture's
    pasted, mask, _, _ = P.pb.paste_back("t", image, fc2, faces * 0.3, None, align="none", color="none")
    from synthetic_group import group_canvas
    boxes = group_canvas()[1]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        same = torch.equal(pasted[0, y0:y1, x0:x1], image[0, y0:y1, x0:x1])
        assert same == (who[i] == "hopper"), i
    # 'default person': every face re-rendered, the unknown ones as the default person
    faces_d, fc_d, out_d, lines_d = P.pp.assign_faces("t", fa, image, crops, fc, only, "by identity", 0.0,
                                                      "default person", "", "")
    assert len(fc_d) == 6 and out_d.faces == (0,) * 6 and sum("[default]" in line for line in lines_d) == 3
    two = make_people(P, fa, photos, ["astronaut", "hopper"])
    _, _, out_t, _ = P.pp.assign_faces("t", fa, image, crops, fc, two, "by identity", 1e-6, "default person", "hopper",
                                       "")
    assert out_t.faces == (1,) * 6                          # nobody within a tiny threshold: all the default
    with pytest.raises(P.Error, match="default_person 'carol' is not in 'people'"):
        P.pp.assign_faces("Assign Faces to People", fa, image, crops, fc, two, "by identity", 0.0, "default person",
                          "carol", "")
    with pytest.raises(P.Error, match="none of the 6 face"):
        P.pp.assign_faces("Assign Faces to People", fa, image, crops, fc, two, "by identity", 1e-6,
                          "leave untouched", "", "")


def test_faces_assigned_by_number(P, fa, group, photos):
    image, who, crops, fc = group
    people = make_people(P, fa, photos, ["astronaut", "hopper"])
    faces, fc2, out, lines = P.pp.assign_faces("t", fa, image, crops, fc, people, "by index only", 0.0,
                                               "leave untouched", "", "0=hopper; 5 = 0")
    assert len(fc2) == 2 and torch.equal(faces, crops[[0, 5]]) and out.faces == (1, 0)
    assert "[assigned]" in lines[1] and "nobody" in lines[2]
    # with identity for the others, an explicit entry wins over identity
    other = {"astronaut": "hopper", "hopper": "astronaut"}[who[0]]
    _, _, out2, _ = P.pp.assign_faces("t", fa, image, crops, fc, people, "by identity", 0.0, "leave untouched", "",
                                      f"0={other.upper()}")
    assert [people.persons[k].name for k in out2.faces] == [other] + who[1:]
    for text, msg in (("0=carol", "'carol', who is not in 'people'"), ("9=hopper", "face 9 but Face Crop gave 6"),
                      ("0=hopper, 0=astronaut", "face 0 is assigned twice"), ("hopper", "not 'face=person'"),
                      ("1=5", "person 5 but there are 2")):
        with pytest.raises(P.Error, match=msg):
            P.pp.parse_assignment("Assign Faces to People", text, people, 6)


def test_people_bundle_checks(P, fa, photos):
    people = make_people(P, fa, photos, ["astronaut"])
    e = np.zeros(3)
    for name, msg in (("Astronaut", "already a person named"), ("", "has no name"), ("a b", "has spaces"),
                      ("7", "is a number")):
        with pytest.raises(P.Error, match=msg):
            P.pp.add_person("Add Person", people, P.pp.Person(name, "m", e))
    assert people.names() == ["astronaut"] and not people.assigned
    with pytest.raises(P.Error, match="no faces assigned"):
        P.pp.groups("Harmonize", people, 1, "the image")
    assigned = P.pp.People(people.persons, faces=(0, 0), places=((0, 1.0, 1.0), (0, 5.0, 5.0)))
    with pytest.raises(P.Error, match="assigns 2 face\\(s\\) but the maps has a batch of 3"):
        P.pp.groups("Shading ControlNet Sampler", assigned, 3, "the maps")
    with pytest.raises(P.Error, match="has faces assigned already"):
        P.pp.add_person("Add Person", assigned, P.pp.Person("b", "m", e))


# ------------------------------------------------------------------------------------ which LoRA touched which face
@pytest.fixture(scope="module")
def two_loras(comfy, P, fa, group, photos):
    """(base model, clip, vae, controlnet, {person: (model, positive)}, assigned PEOPLE, faces): each person's MODEL
    is the tiny checkpoint with their own LoRA (two different LoRA files), their prompt encoded with its CLIP."""
    import safetensors.torch as st
    import tiny_models
    n = comfy.nodes
    loras = os.path.join(comfy.models_dir, "loras")
    second = "test_people_second_lora.safetensors"
    if not os.path.exists(os.path.join(loras, second)):
        sd = st.load_file(os.path.join(loras, tiny_models.LORA_NAME))
        g = torch.Generator().manual_seed(11)
        st.save_file({k: (torch.randn(v.shape, generator=g) * 0.1 if "lora_up" in k else v) for k, v in sd.items()},
                     os.path.join(loras, second))
    with torch.inference_mode():
        m, c, v = n.CheckpointLoaderSimple().load_checkpoint(tiny_models.CKPT_NAME)[:3]
        cn = n.ControlNetLoader().load_controlnet(tiny_models.CONTROLNET_NAME)[0]
        per = {}
        for name, lora in (("astronaut", tiny_models.LORA_NAME), ("hopper", second)):
            pm, pc = n.LoraLoader().load_lora(m, c, lora, 1.0, 1.0)
            per[name] = (pm, n.CLIPTextEncode().encode(pc, "photo of sks person")[0])
        pos = n.CLIPTextEncode().encode(c, "photo of sks person")[0]
        neg = n.CLIPTextEncode().encode(c, "blurry")[0]
    image, who, crops, fc = group
    people = make_people(P, fa, photos, ["astronaut", "hopper"], {k: p[0] for k, p in per.items()},
                         {k: p[1] for k, p in per.items()})
    faces, fc2, assigned, _ = P.pp.assign_faces("t", fa, image, crops, fc, people, "by identity", 0.0,
                                                "leave untouched", "", "")
    return m, pos, neg, v, cn, per, assigned, faces, fc2


def _idx(who, name):
    return [i for i, w in enumerate(who) if w == name]


def test_dual_sampler_gives_each_face_its_persons_lora(P, group, two_loras):
    m, pos, neg, v, cn, per, people, faces, _ = two_loras
    who = group[1]
    node = P.ids.DualStrengthIdentitySampler()
    args = (7, 2, 5.0, "euler", "normal", 0.35, 0.7)
    with torch.inference_mode():
        both = node.sample(m, pos, neg, v, faces, *args, control_net=cn, control_strength=0.5, people=people)
        for name in ("astronaut", "hopper"):
            idx = _idx(who, name)
            mine = node.sample(per[name][0], per[name][1], neg, v, faces[idx], *args, control_net=cn,
                               control_strength=0.5)
            other = {"astronaut": "hopper", "hopper": "astronaut"}[name]
            theirs = node.sample(per[other][0], per[other][1], neg, v, faces[idx], *args, control_net=cn,
                                 control_strength=0.5)
            for k in (0, 2):                      # reference-like and source-like latents
                got = both[k]["samples"][idx]
                assert torch.allclose(got, mine[k]["samples"], atol=1e-4), name
                assert (got - theirs[k]["samples"]).abs().max() > 1e-2, name
    assert both[3].shape == (6, 64, 64, 3)


def test_shading_sampler_gives_each_face_its_persons_lora(P, group, two_loras):
    m, pos, neg, v, cn, per, people, faces, _ = two_loras
    who = group[1]
    node = P.sh.ShadingSampler()
    nets = (cn, cn, 0.5, 0.0, 1.0, 0.5, 0.0, 1.0, 9, 2, 5.0, "euler", "normal", 0.6)
    with torch.inference_mode():
        both = node.sample(m, pos, neg, v, faces, faces, *nets, init_image=faces, people=people)
        base = node.sample(m, pos, neg, v, faces, faces, *nets, init_image=faces)
        for name in ("astronaut", "hopper"):
            idx = _idx(who, name)
            mine = node.sample(per[name][0], per[name][1], neg, v, faces[idx], faces[idx], *nets, init_image=faces[idx])
            assert torch.allclose(both[0]["samples"][idx], mine[0]["samples"], atol=1e-4), name
            assert (both[0]["samples"][idx] - base[0]["samples"][idx]).abs().max() > 1e-2, name
    with pytest.raises(P.Error, match="assigns 6 face"):
        node.sample(m, pos, neg, v, faces[:2], faces[:2], *nets, init_image=faces[:2], people=people)


def test_harmonize_samples_each_seam_with_its_persons_lora(P, group, two_loras):
    """Each seam of the pasted group photo is inpainted as with its own person's model alone, and not as with the
    other person's; outside the feathered seams the picture is exact."""
    m, pos, neg, v, cn, per, people, faces, fc = two_loras
    image, who = group[0], group[1]
    pasted, _, seam, _ = P.pb.paste_back("t", image, fc, faces * 0.6, None, align="none", color="none")
    node = P.hrm.Harmonize()
    args = (5, 3, 5.0, "euler", "normal", 1.0, 2, 4, True, 0.0, 64)
    with torch.inference_mode():
        both = node.harmonize(m, pos, neg, v, pasted, seam, *args, people=people)[0]
        alone = {k: node.harmonize(p[0], p[1], neg, v, pasted, seam, *args)[0] for k, p in per.items()}
    fm = P.hrm.prepare_mask(seam[0], 2, 4)
    assert torch.equal(both[0][fm == 0], pasted[0][fm == 0])
    from synthetic_group import group_canvas
    boxes = group_canvas()[1]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        region = fm[y0:y1, x0:x1] > 0
        got = both[0, y0:y1, x0:x1][region]
        other = {"astronaut": "hopper", "hopper": "astronaut"}[who[i]]
        assert torch.allclose(got, alone[who[i]][0, y0:y1, x0:x1][region], atol=1e-4), i
        assert (got - alone[other][0, y0:y1, x0:x1][region]).abs().max() > 2e-3, i


def test_add_person_and_assign_nodes(comfy, P, fa, group, photos, two_loras):
    """The nodes as a graph calls them: Add Person chains, Assign Faces to People reports."""
    image, who, crops, fc = group
    per = two_loras[5]
    with torch.inference_mode():
        (a,) = P.pp.AddPerson().add(fa, "astronaut", per["astronaut"][0], photos["astronaut"])
        (b,) = P.pp.AddPerson().add(fa, "hopper", per["hopper"][0], photos["hopper"], people=a,
                                    positive=per["hopper"][1], lora_name="megaportrait/hopper.safetensors")
        res = P.pp.AssignFacesToPeople().assign(fa, b, image, crops, fc, "by identity", 0.0, "leave untouched", "", "")
    faces, fc2, out, text = res["result"]
    assert res["ui"]["text"] == [text] and [out.persons[k].name for k in out.faces] == who
    assert out.persons[1].lora_name == "megaportrait/hopper.safetensors" and out.persons[0].positive is None
    with pytest.raises(P.Error, match=r"\[MegaPortrait Add Person\] there is already a person named 'hopper'"):
        P.pp.AddPerson().add(fa, "hopper", per["hopper"][0], photos["hopper"], people=b)
    with pytest.raises(P.Error, match="'model' is not a MODEL"):
        P.pp.AddPerson().add(fa, "x", "not a model", photos["hopper"])
