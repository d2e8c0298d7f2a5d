"""The family table: every family is recognised from its BaseModel (and model config), and each row is complete;
the one place that knows families (the other modules ask it)."""
import dataclasses
import os
import re

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
        assert f.control in (fams.CONTROL_NET, fams.MODEL_PATCH) and f.checkpoint_blocks
        assert f.sampling.steps > 0 and f.sampling.cfg >= 1.0 and f.sampling.sampler_name and f.sampling.scheduler
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


def test_z_image_is_told_from_lumina2_by_its_model_config(fams):
    """Z-Image and Lumina 2 share the BaseModel Lumina2; only the model config (supported_models.ZImage) differs."""
    zi = fams.by_model_classes({"Lumina2", "BaseModel"}, 2560, "Lumina2", {"ZImage", "Lumina2", "BASE"})
    assert zi.name == "Z-Image" and zi.control == fams.MODEL_PATCH and zi.target == "flow" and zi.context_dim == 2560
    assert zi.sampling == fams.Sampling(8, 1.0, "res_multistep", "simple")     # ComfyUI's Z-Image-Turbo blueprint
    lumina = fams.by_model_classes({"Lumina2", "BaseModel"}, 2304, "Lumina2", {"Lumina2", "BASE"})
    assert lumina.name == "another family (Lumina2)" and not lumina.trainable
    # a test-only subclass of the config (the tiny models) is still Z-Image; the pixel-space variant is not
    assert fams.by_model_classes({"Lumina2", "BaseModel"}, 64, "Lumina2", {"TinyZImage", "ZImage"}).name == "Z-Image"
    pixel = fams.by_model_classes({"ZImagePixelSpace", "Lumina2", "BaseModel"}, 2560, "ZImagePixelSpace",
                                  {"ZImagePixelSpace", "ZImage"})
    assert pixel.name == "another family (ZImagePixelSpace)"


def _patcher(base_cls: str, config_cls: str, unet_config: dict):
    cfg_type = type(config_cls, (), {"unet_config": unet_config})
    base_type = type(base_cls, (), {"model_config": cfg_type()})
    return type("Patcher", (), {"model": base_type()})()


def test_text_width_is_read_one_way(fams):
    """context_dim (SD UNets), context_in_dim (Flux), cap_feat_dim (Z-Image): one function, used by every check."""
    from comfyui_megaportrait.nodes import sampling
    for key, width in (("context_dim", 768), ("context_in_dim", 4096), ("cap_feat_dim", 2560)):
        p = _patcher("BaseModel", "SD15", {key: width, "in_channels": 16})
        assert fams.text_width(p) == width and sampling.model_context_dim(p) == width
    assert fams.text_width(_patcher("BaseModel", "X", {})) == 0 and sampling.model_context_dim(
        _patcher("BaseModel", "X", {})) is None
    zi = _patcher("Lumina2", "ZImage", {"image_model": "lumina2", "cap_feat_dim": 2560, "in_channels": 16})
    assert fams.of_model(zi).name == "Z-Image"
    from comfyui_megaportrait.nodes import comfy_compat
    assert not comfy_compat.is_inpaint_model(zi)       # NextDiT has no out_channels in its config: not "more in"


def test_controls_and_lora_keys_are_recognised_by_the_table(fams):
    class ControlNetFlux:
        pass

    class ZImage_Control:
        pass

    class ControlNet:
        pass
    flux, zi, sd15 = fams.by_name("Flux.1"), fams.by_name("Z-Image"), fams.by_name("SD1.x")
    assert fams.of_control(ControlNetFlux()) is flux and fams.of_control(ZImage_Control()) is zi
    assert fams.of_control(ControlNet()) is None and fams.describe_control(ControlNet()) == "SD/SDXL"
    assert fams.control_fits(ZImage_Control(), zi) and not fams.control_fits(ZImage_Control(), flux)
    assert fams.control_fits(ControlNet(), sd15) and not fams.control_fits(ControlNet(), zi)
    assert not fams.control_fits(ControlNetFlux(), sd15)
    assert fams.of_lora_keys(["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]) is flux
    for key in ("lora_unet_layers_3_attention_qkv.lora_down.weight",           # ours / kohya
                "diffusion_model.layers.0.attention.to_k.lora_A.weight",         # diffusers-style trainers
                "lora_unet_noise_refiner_1_feed_forward_w2.alpha"):
        assert fams.of_lora_keys([key]) is zi, key
    assert fams.of_lora_keys(["lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight"]) is None
    from comfyui_megaportrait.nodes import lora_files
    zi_lora = {"lora_unet_layers_0_attention_qkv.lora_down.weight": None}
    assert lora_files.lora_fit_problem(zi_lora, {}, zi, 2560, "ZImage") is None
    assert lora_files.lora_fit_problem(zi_lora, {}, flux, 4096, "Flux") == (
        "is a LoRA for Z-Image (from its keys) but this MODEL is Flux.1 (Flux)")
    sd_lora = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight": __import__("torch").zeros(4, 768)}
    assert "is a LoRA for an SD-family UNet" in lora_files.lora_fit_problem(sd_lora, {}, zi, 2560, "ZImage")
    assert lora_files.lora_fit_problem({}, {"ss_base_model_version": "zimage"}, flux, 4096, "Flux").startswith(
        "was trained on zimage")


def test_training_conditions(fams):
    import torch
    mask = torch.ones(1, 7)
    assert fams.training_conditions(fams.by_name("Flux.1"), {"attention_mask": mask}, 2) == {"guidance": 1.0}
    kw = fams.training_conditions(fams.by_name("Z-Image"), {"attention_mask": mask}, 3)
    assert set(kw) == {"attention_mask"} and kw["attention_mask"].shape == (3, 7)
    assert fams.training_conditions(fams.by_name("SDXL"), {"attention_mask": mask}, 2) == {}


def test_a_new_family_is_a_row_a_recognition_rule_and_tests(fams, monkeypatch):
    """Adding a family touches only the table: a row (with its recognition rule: BaseModel class, model config,
    control classes, LoRA keys) makes every lookup, check and default work for it."""
    row = fams.Family("Qwen-Image", "qwen_image", "qwen-image/lora", ("QwenImage",), 16, 8, 3584,
                      (("qwen25_7b", "lora_te"),), "lora_unet", {"attention": r"x", "attention + feed-forward": r"y"},
                      target="flow", exact_class=True, control=fams.MODEL_PATCH,
                      control_classes=("QwenImageBlockWiseControlNet",), lora_keys=r"^lora_unet_transformer_blocks_",
                      sampling=fams.Sampling(20, 2.5, "euler", "simple"))
    monkeypatch.setattr(fams, "FAMILIES", fams.FAMILIES + (row,))
    p = _patcher("QwenImage", "QwenImage", {"image_model": "qwen_image", "in_channels": 16})
    assert fams.of_model(p) is row and fams.by_base_model_version("qwen_image") is row
    assert fams.by_context_dim(3584) is row and fams.describe_context_dim(3584) == "Qwen-Image"
    assert fams.of_control(type("QwenImageBlockWiseControlNet", (), {})()) is row
    assert fams.of_lora_keys(["lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight"]) is row
    assert fams.by_model_classes({"Flux", "BaseModel"}, 4096, "Flux").name == "Flux.1"     # the others unchanged


def test_no_module_but_the_table_branches_on_a_family():
    """No family name comparisons or family class checks in nodes/ outside families.py (the shared hook's pattern;
    the trainer, nodes/lora_comfy.py, is being rewritten and is checked once it is)."""
    nodes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nodes")
    rx = re.compile(r'fam(ily)?\.name *(==|!=) *"|ControlNetFlux|ZImage_Control|'
                    r'isinstance\([^)]*(Flux|Lumina2|ZImage|SDXL)\b')
    found = []
    for name in sorted(os.listdir(nodes)):
        if name.endswith(".py") and name not in ("families.py", "lora_comfy.py"):
            with open(os.path.join(nodes, name), encoding="utf-8") as f:
                found += [f"{name}:{i}" for i, line in enumerate(f, 1) if rx.search(line)]
    assert not found
    assert dataclasses.is_dataclass(__import__("comfyui_megaportrait.nodes.families", fromlist=["x"]).Family)


def test_model_patch_checks_name_the_family(pack):
    """Shading with model-patch controls: a MODEL of a family the table does not know (Lumina 2 shares Z-Image's
    BaseModel) is refused with a message saying which families take model patches."""
    from comfyui_megaportrait.nodes import sampling
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    lumina = _patcher("Lumina2", "Lumina2", {"image_model": "lumina2", "cap_feat_dim": 2304, "in_channels": 16})
    patch = type("ModelPatcher", (), {"model": type("ZImage_Control", (__import__("torch").nn.Module,), {})()})()
    with pytest.raises(MegaPortraitError, match=r"another family \(Lumina2\), a family without model-patch controls "
                                                r"the pack knows \(Z-Image\)"):
        sampling.check_model_patch("N", "light_model_patch", patch, lumina)
    zi = _patcher("Lumina2", "ZImage", {"image_model": "lumina2", "cap_feat_dim": 2560, "in_channels": 16})
    sampling.check_model_patch("N", "light_model_patch", patch, zi)           # fits: no error
    other = type("ModelPatcher", (), {"model": type("QwenImageBlockWiseControlNet", (__import__("torch").nn.Module,),
                                                    {})()})()
    with pytest.raises(MegaPortraitError, match="a model patch for another family, not a Z-Image control"):
        sampling.check_model_patch("N", "hf_model_patch", other, zi)


def test_inplace_residual_blocks_are_table_facts_read_against_the_running_comfyui(fams):
    """The blocks that may add residuals in place are rows' facts; comfy_compat only reads which of them do so in the
    running ComfyUI (by their source), leaving out classes it lacks."""
    from comfyui_megaportrait.nodes import comfy_compat
    names = [b[1] for b in fams.inplace_residual_blocks()]
    assert len(names) == len(set(names)) and {"CLIPLayer", "BasicTransformerBlock", "DoubleStreamBlock"} <= set(names)
    assert fams.by_name("Z-Image").inplace_blocks == ()
    found = comfy_compat.residual_inplace_norms((
        ("json.decoder", "JSONDecoder", ("a",), "def raw_decode"),        # the marker is in its source: in place
        ("json.decoder", "JSONObject", ("b",), "x += never"),             # not there: out of place
        ("no_such_module_here", "Block", ("c",), "x +="),                 # this ComfyUI lacks it: left out
        ("anything", "Always", ("d", "e"), None)))                        # in place in every version
    assert found == {"JSONDecoder": ("a",), "Always": ("d", "e")}


def test_control_text_width(fams):
    """A ControlNet's text width comes from its text-input layer: SD UNet ControlNets' attn2.to_k, Flux's txt_in."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self, **layers):
            super().__init__()
            for k, v in layers.items():
                self.add_module(k, v)
    sd = Net(input_blocks=Net(attn2=Net(to_k=torch.nn.Linear(768, 320))))
    assert fams.control_text_width(sd) == 768
    assert fams.control_text_width(Net(txt_in=torch.nn.Linear(4096, 64))) == 4096
    assert fams.control_text_width(Net(x_embedder=torch.nn.Linear(64, 8))) is None and fams.control_text_width(None) is None
