"""The compat module: each ComfyUI difference on stand-ins of both API generations, and on the real host."""
import pytest
import torch


@pytest.fixture(scope="module")
def compat(pack):
    from comfyui_megaportrait.nodes import comfy_compat
    return comfy_compat


class StaticPatcher:
    def __init__(self, model=None):
        self.model = model
        self.patches = {}
        self.object_patches = {}


class DynamicPatcher(StaticPatcher):
    def __init__(self, delegate=None):
        super().__init__()
        self.delegate = delegate

    def is_dynamic(self):
        return True

    def get_non_dynamic_delegate(self):
        if self.delegate is None:
            raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")
        return self.delegate


def test_casts_per_call_both_weight_function_forms(compat):
    class Layer(torch.nn.Module):
        comfy_cast_weights = False
    plain = torch.nn.Linear(2, 2)
    assert not compat.casts_per_call(plain)                             # not a ComfyUI layer
    m = Layer()
    m.weight_function, m.bias_function = None, None                     # early 2024: callable or None
    assert not compat.casts_per_call(m)
    m.weight_function = lambda w: w
    assert compat.casts_per_call(m)
    m.weight_function, m.bias_function = [], []                         # since 2024: lists
    assert not compat.casts_per_call(m)
    m.bias_function = [lambda w: w]
    assert compat.casts_per_call(m)
    m.bias_function = []
    m.comfy_cast_weights = True                                         # offloaded / cast / quantized
    assert compat.casts_per_call(m)


def test_patch_tensors_and_stored_data(compat):
    up, down, alpha = torch.ones(2, 1), torch.zeros(1, 2), torch.tensor(1.0)

    class Adapter:                                                      # since 2025: weight adapters
        weights = (up, down, alpha, None)
    old = [(1.0, ("lora", (up, down, alpha, None)), 1.0)]               # early 2024
    new = [(1.0, Adapter(), 1.0, None, None)]
    for entries in (old, new):
        got = compat.patch_tensors(entries)
        assert len(got) == 3 and got[0] is up and got[1] is down and got[2] is alpha

    class Quant(torch.Tensor):
        pass
    q = torch.ones(3).as_subclass(Quant)
    q._qdata = torch.arange(3, dtype=torch.uint8)
    assert compat.stored_data(q) is q._qdata and compat.stored_data(up) is up


def test_training_transformer_options(compat, comfy):
    """PyTorch attention replaces kernels without a backward (sage) for training; other backends are left alone."""
    import comfy.ldm.modules.attention as attention
    opts = compat.training_transformer_options()
    if getattr(attention.optimized_attention, "__name__", "") in compat.NO_BACKWARD_ATTENTION:
        assert "optimized_attention_override" in opts
    else:
        assert opts == {}


def test_model_object_sees_object_patches(compat):
    inner = torch.nn.Module()
    inner.model_sampling = "base sampling"
    old = StaticPatcher(inner)                         # early 2024: no get_model_object
    assert compat.model_object(old, "model_sampling") == "base sampling"
    old.object_patches["model_sampling"] = "patched"
    assert compat.model_object(old, "model_sampling") == "patched"

    class New(StaticPatcher):
        def get_model_object(self, name):
            return ("via get_model_object", name)
    assert compat.model_object(New(inner), "model_sampling") == ("via get_model_object", "model_sampling")


def test_patch_summary_reads_both_tuple_layouts(compat):
    p = StaticPatcher()
    p.patches = {"b.weight": [(0.5, ("lora", None), 1.0)],                       # early 2024
                 "a.weight": [(1.0, object(), 0.8, None, None), (0.25, object(), 1.0, None, None)]}   # since 2024
    assert compat.patch_summary(p) == [["a.weight", 2, [[1.0, 0.8], [0.25, 1.0]]], ["b.weight", 1, [[0.5, 1.0]]]]
    assert compat.patch_summary(StaticPatcher()) == []


def test_checkpoint_state_dict_argument_order(compat):
    class Old:
        def state_dict_for_saving(self, clip_state_dict=None, vae_state_dict=None, clip_vision_state_dict=None):
            return {"order": "old", "clip": clip_state_dict, "vae": vae_state_dict}

    class New:
        def state_dict_for_saving(self, unet_state_dict, clip_state_dict=None, vae_state_dict=None,
                                  clip_vision_state_dict=None):
            return {"order": "new", "unet": unet_state_dict, "clip": clip_state_dict, "vae": vae_state_dict}
    assert compat.checkpoint_state_dict(Old(), "U", "C", "V") == {"order": "old", "clip": "C", "vae": "V"}
    assert compat.checkpoint_state_dict(New(), "U", "C", "V") == {"order": "new", "unet": "U", "clip": "C", "vae": "V"}


def test_real_host(compat, comfy):
    """On the ComfyUI under test: CLIP layers always add residuals in place; the UNet's transformer blocks only on
    the early-2024 host (current ComfyUI has ModelPatcher.get_model_object, the early-2024 one has not)."""
    import comfy.model_patcher as mp
    norms = compat.residual_inplace_norms()
    assert norms["CLIPLayer"] == ("layer_norm1", "layer_norm2")
    early = not hasattr(mp.ModelPatcher, "get_model_object")
    assert ("BasicTransformerBlock" in norms) == early
    with torch.inference_mode():
        m = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[0]
    assert not compat.casts_per_call(m.model.diffusion_model.input_blocks[0][0])   # fp32 on the CPU: resident
    assert type(compat.model_object(m, "model_sampling")).__name__ != "NoneType"


def test_training_mode_flag_and_inpaint_models(compat, comfy):
    import comfy.model_management as mm
    had = hasattr(mm, "in_training")
    with compat.training_mode():
        inside = getattr(mm, "in_training", None)
    assert inside is (True if had else None)          # 0.33: the flag ComfyUI's kernels read; early 2024: no flag
    assert getattr(mm, "in_training", None) is (False if had else None)
    with pytest.raises(ValueError):
        with compat.training_mode():
            raise ValueError("restored on errors too")
    assert getattr(mm, "in_training", None) is (False if had else None)

    class Cfg:
        unet_config = {"image_model": "flux", "in_channels": 96, "out_channels": 16}

    class Base:
        model_config = Cfg()

    class Patcher:
        model = Base()
    assert compat.is_inpaint_model(Patcher())                  # FLUX.1 Fill: more input than output channels
    Cfg.unet_config = {"image_model": "flux", "in_channels": 16, "out_channels": 16}
    assert not compat.is_inpaint_model(Patcher())
    Base.concat_keys = ("mask", "masked_image")               # SD inpainting on 2024+ ComfyUI
    assert compat.is_inpaint_model(Patcher())
    with torch.inference_mode():
        sd = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[0]
    assert not compat.is_inpaint_model(sd)


def test_dynamic_models_are_read_without_loading(compat, comfy, monkeypatch):
    """A dynamic-VRAM MODEL (0.33 on CUDA) is never loaded to read its weights; a static one is loaded once."""
    import comfy.model_management as mm
    loaded = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: loaded.append(models))
    compat.load_to_read_weights(DynamicPatcher(StaticPatcher()))
    assert loaded == []
    static = StaticPatcher()
    compat.load_to_read_weights(static)
    assert loaded == [[static]]


def test_encode_tokens_on_both_api_generations(compat, comfy):
    """(cond, pooled, extras): with return_dict (mid-2024 on) the text encoder's other outputs, without it (the
    early-2024 host, stood in for here) none; on the real host the same cond and pooled as encode_from_tokens."""
    class OldClip:                               # encode_from_tokens before return_dict
        def encode_from_tokens(self, tokens, return_pooled=False):
            return torch.ones(1, 2, 3), torch.zeros(1, 3)

    class NewClip:
        def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
            return {"cond": torch.ones(1, 2, 3), "pooled_output": None, "attention_mask": torch.ones(1, 2)}
    c, p, ex = compat.encode_tokens(OldClip(), None)
    assert c.shape == (1, 2, 3) and p.shape == (1, 3) and ex == {}
    c, p, ex = compat.encode_tokens(NewClip(), None)
    assert c.shape == (1, 2, 3) and p is None and set(ex) == {"attention_mask"}
    with torch.inference_mode():
        clip = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[1]
        tokens = clip.tokenize("photo of sks person")
        c, p, ex = compat.encode_tokens(clip, tokens)
        ref_c, ref_p = clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(c, ref_c) and torch.equal(p, ref_p) and "cond" not in ex and "pooled_output" not in ex
