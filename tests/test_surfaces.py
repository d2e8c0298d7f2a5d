"""What ComfyUI shows of the pack besides the nodes themselves: one title per node (UI, errors, help pages,
translations), every node in a shipped workflow, the help pages, template thumbnails, translations and the registry
metadata."""
import glob
import json
import os
import re

from conftest import REPO

NODES_DIR = os.path.join(REPO, "nodes")


def titles():
    from conftest import import_pack
    return import_pack().nodes.common.TITLES


# ------------------------------------------------------------------------------------------- one title per node
def test_display_names_are_the_titles(pack):
    t = titles()
    assert set(t) == set(pack.NODE_CLASS_MAPPINGS), "nodes/common.py TITLES must name every node class, and only those"
    assert len(set(t.values())) == len(t), "two nodes share a title"
    for cls, title in t.items():
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[cls] == f"{title} (MegaPortrait)"


LITERAL_NODE = [re.compile(r'\bnode\s*=\s*"([^"]+)"'),                  # node = "Face Crop"
                re.compile(r'MegaPortraitError\(\s*"([^"]+)"'),           # MegaPortraitError("HF Map", ...)
                re.compile(r'\brequire\([^,()]+,\s*"([^"]+)"'),           # require("peft", "Identity LoRA Trainer", ...)
                re.compile(r'\bcheck_\w+\(\s*"([^"]+)"')]                 # check_number("HF Map", ...)


def test_errors_name_nodes_by_their_title():
    """A node name written out in nodes/ (rather than taken from TITLES) is one of the titles: the error dialog
    says the name the user sees on the canvas (issue 20: "Shading Sampler" vs "Shading ControlNet Sampler")."""
    allowed = set(titles().values())
    bad = []
    for path in sorted(glob.glob(os.path.join(NODES_DIR, "*.py"))):
        with open(path, encoding="utf-8") as f:
            src = f.read()
        for rx in LITERAL_NODE:
            for m in rx.finditer(src):
                if m.group(1) not in allowed:
                    line = src.count("\n", 0, m.start()) + 1
                    bad.append(f"{os.path.basename(path)}:{line}: {m.group(1)!r}")
    assert not bad, "node names that are not a title in nodes/common.py TITLES: " + "; ".join(bad)


def test_error_message_uses_the_title(pack):
    import pytest
    import torch
    from comfyui_megaportrait.nodes import maps
    t = titles()
    with pytest.raises(pack.nodes.common.MegaPortraitError, match=re.escape(f"[MegaPortrait {t['MegaPortraitHFMap']}]")):
        maps.HFMap().run(torch.zeros(1, 8, 8, 3), 1.0, "pixels", "gaussian", -1.0)
    with pytest.raises(pack.nodes.common.MegaPortraitError,
                       match=re.escape(f"[MegaPortrait {t['MegaPortraitRecombineMaps']}]")):
        maps.RecombineMaps().run(torch.zeros(1, 8, 8, 3), torch.zeros(1, 4, 4, 3), 1.0)


def test_every_node_is_in_a_shipped_workflow(pack):
    used = set()
    for path in glob.glob(os.path.join(REPO, "workflows", "api", "*.json")):
        with open(path) as f:
            used |= {n["class_type"] for n in json.load(f).values()}
    missing = set(pack.NODE_CLASS_MAPPINGS) - used
    assert not missing, f"in no shipped workflow: {sorted(missing)} (tools/build_workflows.py)"
