"""The family table: every family is recognised from its BaseModel, and each row is complete."""
import pytest


@pytest.fixture(scope="module")
def fams(pack):
    from comfyui_megaportrait.nodes import families
    return families


def test_rows_are_complete_and_unique(fams):
    names = [f.name for f in fams.FAMILIES]
    assert len(set(names)) == len(names) and {"SD1.x", "SDXL", "Flux.1"} <= set(names)
    assert len({f.base_model_version for f in fams.FAMILIES}) == len(names)
    assert len({f.context_dim for f in fams.FAMILIES}) == len(names)
    for f in fams.FAMILIES:
        assert f.latent_channels in (4, 16) and f.latent_scale == 8 and f.text_encoders
        assert f.target in ("eps", "v", "flow") and f.guidance in ("cfg", "embedded")
        assert not f.trainable or {"attention", "attention + feed-forward"} <= set(f.lora_targets)
        assert fams.by_base_model_version(f.base_model_version) is f and fams.by_context_dim(f.context_dim) is f


def test_recognition(fams):
    assert fams.by_model_classes({"SDXL", "BaseModel", "Module"}, 2048).name == "SDXL"
    assert fams.by_model_classes({"BaseModel", "Module"}, 768).name == "SD1.x"
    assert fams.by_model_classes({"BaseModel", "Module"}, 1024).name == "SD2.x"
    assert fams.by_model_classes({"Flux", "BaseModel"}, 0).name == "Flux.1"
    assert fams.by_model_classes({"BaseModel"}, 32).name == "SD1.x"          # a plain UNet of another width
    assert fams.describe_context_dim(2048) == "SDXL" and fams.describe_context_dim(33) == "another family"
    assert [a for a, _ in fams.by_model_classes({"SDXL"}, 2048).text_encoders] == ["clip_l", "clip_g"]


def test_tiny_models_are_recognised(comfy):
    import torch
    from comfyui_megaportrait.nodes import lora_comfy
    for ckpt, name in (("tiny_sd15.safetensors", "SD1.x"), ("tiny_sdxl.safetensors", "SDXL")):
        with torch.inference_mode():
            m = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[0]
        assert lora_comfy.family_of(m).name == name
