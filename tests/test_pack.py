"""The pack as ComfyUI sees it: mappings, categories, tooltips, loading without optional dependencies."""
import os
import subprocess
import sys
import textwrap

from conftest import REPO


def test_mappings_and_node_contract(pack, comfy):
    """(INPUT_TYPES lists ComfyUI's samplers and model files, so ComfyUI is imported: the ``comfy`` fixture.)"""
    assert pack.NODE_CLASS_MAPPINGS, "no nodes exported"
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("MegaPortrait"), name
        assert cls.CATEGORY == "MegaPortrait" or cls.CATEGORY.startswith("MegaPortrait/"), (name, cls.CATEGORY)
        assert callable(getattr(cls(), cls.FUNCTION)), name
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
        assert getattr(cls, "DESCRIPTION", ""), f"{name} has no DESCRIPTION"
        types = cls.INPUT_TYPES()
        assert set(types) <= {"required", "optional", "hidden"}
        for section in ("required", "optional"):
            for inp, spec in types.get(section, {}).items():
                assert isinstance(spec, tuple) and len(spec) == 2, f"{name}.{inp}"
                assert spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"


BLOCKER = textwrap.dedent("""
    import importlib.abc, importlib.util, sys, logging
    BLOCKED = {"insightface", "onnxruntime", "dlib", "face_recognition_models", "peft"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, Block())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = importlib.util.spec_from_file_location("megaportrait_pack", sys.argv[1] + "/__init__.py",
                                                  submodule_search_locations=[sys.argv[1]])
    mod = importlib.util.module_from_spec(spec); sys.modules["megaportrait_pack"] = mod
    spec.loader.exec_module(mod)
    print("NODES", len(mod.NODE_CLASS_MAPPINGS))
""")


def test_pack_loads_without_optional_dependencies():
    r = subprocess.run([sys.executable, "-c", BLOCKER, REPO], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.split("NODES")[1])
    assert n >= 3
    # one clear line that names what is missing and how to install it
    lines = [ln for ln in r.stderr.splitlines() if "MegaPortrait: loaded; unavailable" in ln]
    assert len(lines) == 1, r.stderr
    assert "insightface" in lines[0] and "dlib-bin" in lines[0] and "pip install" in lines[0]


def test_pyproject_is_registry_ready():
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        py = tomllib.load(f)
    proj = py["project"]
    for key in ("name", "version", "description", "license", "dependencies"):
        assert proj.get(key), key
    assert proj["urls"]["Repository"].startswith("https://")
    comfy = py["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "Icon" in comfy
    assert not any(d.split("=")[0].split(">")[0].strip() == "torch" for d in proj["dependencies"]), \
        "the pack must never replace ComfyUI's torch"
    with open(os.path.join(REPO, "requirements.txt")) as f:
        reqs = {ln.split("=")[0].split(">")[0].strip() for ln in f if ln.strip() and not ln.startswith("#")}
    deps = {d.split("=")[0].split(">")[0].strip() for d in proj["dependencies"]}
    assert reqs == deps, "requirements.txt (ComfyUI-Manager) and pyproject dependencies disagree"
