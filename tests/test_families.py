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
    # ComfyUI derives Flux.2, Chroma, LongCat-Image from Flux: not Flux.1, and nothing is assumed about them
    assert fams.by_model_classes({"Flux", "BaseModel"}, 4096, "Flux").name == "Flux.1"
    for other in ("Flux2", "Chroma", "LongCatImage"):
        fam = fams.by_model_classes({other, "Flux", "BaseModel"}, 4096, other)
        assert fam.name == f"another family ({other})" and not fam.trainable and not fam.lora_targets
        assert fam.latent_channels == 0 and fam.base_model_version == ""
    # SDXL variants derived from SDXL stay SDXL
    assert fams.by_model_classes({"SDXL_instructpix2pix", "SDXL", "BaseModel"}, 2048, "SDXL_instructpix2pix").name == "SDXL"


def test_lora_checks_on_a_family_the_table_does_not_know(fams):
    from comfyui_megaportrait.nodes import lora_files
    other = fams.other_family("Flux2")
    flux_lora = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": None}
    assert lora_files.lora_fit_problem(flux_lora, {}, other, 0, "Flux2") is None           # not ours to judge
    why = lora_files.lora_fit_problem(flux_lora, {"ss_base_model_version": "flux1"}, other, 0, "Flux2")
    assert why == "was trained on flux1 but this MODEL is another family (Flux2) (Flux2)"


def test_tiny_models_are_recognised(comfy):
    import torch
    from comfyui_megaportrait.nodes import lora_comfy
    for ckpt, name in (("tiny_sd15.safetensors", "SD1.x"), ("tiny_sdxl.safetensors", "SDXL")):
        with torch.inference_mode():
            m = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[0]
        assert lora_comfy.family_of(m).name == name


def test_the_trainer_refuses_a_family_derived_from_flux(fams):
    """A Flux.2-class model (ComfyUI's Flux2 derives from Flux) is not trained as Flux.1."""
    from comfyui_megaportrait.nodes import lora_comfy
    from comfyui_megaportrait.nodes.common import MegaPortraitError

    class CONST:
        pass

    class Flux:
        pass

    class Flux2(Flux):
        concat_keys = ()

        class model_config:
            unet_config = {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "context_in_dim": 15360}
        model_sampling = CONST()

    class Patcher:
        model = Flux2()

        def get_model_object(self, name):
            return getattr(self.model, name)
    assert lora_comfy.family_of(Patcher()).name == "another family (Flux2)"
    with pytest.raises(MegaPortraitError, match="another family \\(Flux2\\).* does not support"):
        lora_comfy.check_trainable("Identity LoRA Trainer", Patcher())
