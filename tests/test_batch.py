"""Batch runs (tools/batch.py): the manifest, the batch over a ComfyUI server's /prompt and over Comfy API v2
(comfy-api-proxy in front of a ComfyUI), resume after a kill, a failing job, the report and the contact sheet."""
from __future__ import annotations

import os
import textwrap

import pytest
from conftest import EXAMPLES
from PIL import Image


def write_people(tmp_path):
    """Two people (photo folders) and two references, small public-domain derived images."""
    a, b = tmp_path / "photos" / "collins", tmp_path / "photos" / "hopper"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    with Image.open(os.path.join(EXAMPLES, "astronaut.png")) as im:
        im.convert("RGB").rotate(2).save(a / "c1.png")
        im.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(a / "c2.png")
    with Image.open(os.path.join(EXAMPLES, "grace_hopper.jpg")) as im:
        im.convert("RGB").rotate(-2).save(b / "h1.png")
    refs = tmp_path / "refs"
    refs.mkdir()
    with Image.open(os.path.join(EXAMPLES, "grace_hopper.jpg")) as im:
        im.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(refs / "navy.png")
    with Image.open(os.path.join(EXAMPLES, "astronaut.png")) as im:
        im.convert("RGB").save(refs / "nasa.png")
    return tmp_path


def write_manifest(tmp_path, text: str, name: str = "batch.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


GOOD = """
    workflow: megaportrait_full
    smoke: true
    threshold: 0.6
    set: {"Identity LoRA Trainer.steps": 4}
    people:
      - name: collins
        photos: photos/collins
      - name: hopper
        photos: [photos/hopper/h1.png]
        set: {"Identity LoRA Trainer.seed": 3}
    references:
      - name: navy
        image: refs/navy.png
      - name: nasa
        image: refs/nasa.png
        set: {"Harmonize.denoise": 0.4}
"""


# ------------------------------------------------------------------------------------------------ manifest
def test_manifest_reads_people_references_and_settings(tmp_path):
    import batch_manifest as bm
    write_people(tmp_path)
    m = bm.load_manifest(write_manifest(tmp_path, GOOD))
    assert [p.name for p in m.people] == ["collins", "hopper"]
    assert [os.path.basename(f) for f in m.people[0].photos] == ["c1.png", "c2.png"]
    assert m.people[1].photos == [str(tmp_path / "photos/hopper/h1.png")] and m.people[1].sets == {"Identity LoRA Trainer.seed": 3}
    assert [r.name for r in m.references] == ["navy", "nasa"] and m.references[1].sets == {"Harmonize.denoise": 0.4}
    assert m.threshold == 0.6 and m.smoke and m.sets == {"Identity LoRA Trainer.steps": 4}
    assert m.out == str(tmp_path / "batch_output")
    # smoke: the tiny models are in the workflow
    assert m.prompt["1"]["inputs"]["ckpt_name"] != "Realistic_Vision_V5.1_fp16-no-ema.safetensors"


def test_manifest_errors_name_their_lines(tmp_path):
    import batch_manifest as bm
    write_people(tmp_path)
    (tmp_path / "refs" / "broken.png").write_bytes(b"not an image")
    path = write_manifest(tmp_path, """
        workflow: megaportrait_full
        threshold: -1
        colour: red
        people:
          - name: collins
            photos: photos/nobody
          - name: collins
            photos: photos/hopper
          - photos: photos/hopper
          - name: "bad name/"
            photos: photos/hopper
            set: {"No Such Node.steps": 3}
        references:
          - name: navy
            image: refs/broken.png
          - name: nasa
            image: refs/missing.png
            set: {"Harmonize.denoise": [1, 2]}
    """)
    with pytest.raises(bm.ManifestError) as ei:
        bm.load_manifest(path)
    got = dict((ln, msg) for ln, msg in ei.value.problems)
    assert "threshold -1 must be a number above 0" in got[2]
    assert "unknown key 'colour'" in got[3]
    assert "photos/nobody does not exist" in got[6]
    assert "name 'collins' is already used on line 5" in got[7]
    assert "people[2]: 'name' is missing" in got[9]
    assert "name 'bad name/'" in got[10]
    assert "the workflow has no node titled or of type 'No Such Node'" in got[12]
    assert "broken.png is not an image PIL can read" in got[15]
    assert "missing.png does not exist" in got[17]
    assert "the value must be a number, text or true/false" in got[18]
    msg = str(ei.value)
    assert msg.startswith(f"the batch manifest {path} has 10 problem(s):") and "batch.yaml line 6: people[0]" in msg


@pytest.mark.parametrize("text, line, want", [
    ("people: [\n", 2, "not valid YAML"),
    ("", 1, "the manifest is empty"),
    ("- a\n- b\n", 1, "must be a mapping"),
    ("people: []\nreferences:\n  - name: a\n    image: x.png\n", 1, "'people' must be a non-empty list"),
    ("people:\n  - name: a\n    photos: p\npeople: []\n", 4, "'people' is given twice"),
    ("workflow: nope\npeople: []\n", 1, "workflow: no workflow 'nope'"),
    ("workflow: megaportrait_with_lora\n", 1, "a batch workflow needs one Identity LoRA Trainer"),
    ("smoke: yes please\n", 1, "smoke must be true or false"),
])
def test_manifest_bad_files(tmp_path, text, line, want):
    import batch_manifest as bm
    with pytest.raises(bm.ManifestError) as ei:
        bm.load_manifest(write_manifest(tmp_path, text))
    assert any(ln == line and want in msg for ln, msg in ei.value.problems), ei.value.problems
