"""Light map / HF map: pure functions, no ComfyUI."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES, image_tensor


@pytest.fixture(scope="module")
def maps(pack):
    from comfyui_megaportrait.nodes import maps
    return maps


@pytest.fixture(scope="module")
def astronaut():
    return image_tensor(os.path.join(EXAMPLES, "astronaut.png"))


@pytest.fixture(scope="module")
def hopper():
    return image_tensor(os.path.join(EXAMPLES, "grace_hopper.jpg"))


@pytest.mark.parametrize("sigma,mode,filt", [(8.0, "relative to 512 px", "gaussian"), (2.5, "pixels", "gaussian"),
                                             (30.0, "pixels", "box"), (0.0, "pixels", "gaussian"),
                                             (5000.0 / 2, "pixels", "gaussian")])
def test_light_plus_hf_is_exact_inverse(maps, astronaut, hopper, sigma, mode, filt):
    for img in (astronaut, hopper):
        light = maps.light_map(img, sigma, mode=mode, filter_type=filt)
        hf, detail = maps.hf_map(img, sigma, mode=mode, filter_type=filt)
        assert light.shape == img.shape == hf.shape == detail.shape
        assert 0.0 <= hf.min() and hf.max() <= 1.0
        back = maps.recombine(light, hf)
        assert (back - img).abs().max().item() <= 1.0 / 255
        # and after 8-bit quantisation of the two maps (what SaveImage/LoadImage do) it is still within 1/255
        q = lambda t: torch.round(t * 255) / 255  # noqa: E731
        assert (maps.recombine(q(light), q(hf)) - img).abs().max().item() <= 1.5 / 255 + 1e-6


def test_light_map_is_low_pass(maps, astronaut):
    light = maps.light_map(astronaut, 8.0)
    # high frequencies are gone: the Laplacian energy drops by a large factor, the mean colour stays
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    energy = lambda t: F.conv2d(t.permute(0, 3, 1, 2), lap, groups=3).pow(2).mean().item()  # noqa: E731
    assert energy(light) < energy(astronaut) / 50
    assert torch.allclose(light.mean(dim=(1, 2)), astronaut.mean(dim=(1, 2)), atol=0.01)
    _, detail = maps.hf_map(astronaut, 8.0)
    assert abs(detail.mean().item()) < 0.01 and detail.abs().max() > 0.2


def test_sigma_zero_is_identity_and_flat_hf(maps, hopper):
    assert torch.equal(maps.light_map(hopper, 0.0), hopper)
    hf, detail = maps.hf_map(hopper, 0.0)
    assert torch.all(detail == 0) and torch.all(hf == 0.5)


def test_relative_sigma_matches_across_resolutions(maps, astronaut):
    """512 px and its 2048 px upscale give the same light map (up to resampling) in the relative mode,
    and clearly different ones when sigma is in pixels."""
    big = F.interpolate(astronaut.permute(0, 3, 1, 2), size=(2048, 2048), mode="bicubic", align_corners=False)
    big = big.clamp(0, 1).permute(0, 2, 3, 1)
    down = lambda t: F.interpolate(t.permute(0, 3, 1, 2), size=(512, 512), mode="area").permute(0, 2, 3, 1)  # noqa: E731
    small = maps.light_map(astronaut, 8.0, mode="relative to 512 px")
    rel = down(maps.light_map(big, 8.0, mode="relative to 512 px"))
    px = down(maps.light_map(big, 8.0, mode="pixels"))
    err_rel = (rel - small).abs().mean().item()
    err_px = (px - small).abs().mean().item()
    assert err_rel < 0.004
    assert err_px > 4 * err_rel
    assert maps.effective_sigma(8.0, 2048, 1024, "relative to 512 px") == 16.0


def test_batch_any_size_and_channels(maps):
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 37, 91, 3), (2, 5, 7, 1), (1, 64, 48, 4), (1, 1, 1, 3), (4, 2, 300, 3)]:
        x = torch.rand(*shape, generator=g)
        light = maps.light_map(x, 3.0, mode="pixels")
        hf, detail = maps.hf_map(x, 3.0, mode="pixels")
        assert light.shape == x.shape and hf.shape == x.shape
        assert (maps.recombine(light, hf) - x).abs().max() <= 1 / 255
    # batch items are filtered independently
    x = torch.rand(3, 40, 40, 3, generator=g)
    assert torch.allclose(maps.light_map(x, 4.0)[1:2], maps.light_map(x[1:2], 4.0))


def test_kornia_and_opencv_backends_agree(maps, hopper):
    for sigma in (3.0, 20.0, 60.0):            # small and wide kernels (the FFT path takes k >= 151)
        a = maps.low_pass(hopper, sigma, mode="pixels", backend="opencv")
        b = maps.low_pass(hopper, sigma, mode="pixels", backend="fft")
        assert (a - b).abs().max().item() < 1e-5
    big = maps.low_pass(hopper, 60.0, mode="pixels")     # auto: FFT on the CPU for this kernel
    assert maps._kernel_size(60.0, "gaussian", 600, 512) >= maps.FFT_MIN_KERNEL
    assert (big - maps.low_pass(hopper, 60.0, mode="pixels", backend="opencv")).abs().max().item() < 1e-5
    x = torch.rand(2, 300, 301, 1)
    assert (maps.low_pass(x, 40.0, mode="pixels", backend="fft")
            - maps.low_pass(x, 40.0, mode="pixels", backend="opencv")).abs().max().item() < 1e-5
    for filt in ("gaussian", "box"):
        a = maps.low_pass(hopper, 6.0, mode="pixels", filter_type=filt, backend="opencv")
        b = maps.low_pass(hopper, 6.0, mode="pixels", filter_type=filt, backend="kornia")
        assert (a - b).abs().max().item() < 1e-5
    m = torch.zeros(1, hopper.shape[1], hopper.shape[2])
    m[:, 100:400, 100:400] = 1
    a = maps.low_pass(hopper, 6.0, mode="pixels", mask=m, backend="opencv")
    b = maps.low_pass(hopper, 6.0, mode="pixels", mask=m, backend="kornia")
    assert (a - b).abs().max().item() < 1e-5


def test_output_stays_on_device_and_dtype(maps):
    x = torch.rand(1, 32, 32, 3, dtype=torch.float64)
    out = maps.light_map(x, 2.0, mode="pixels")
    assert out.dtype == torch.float64 and out.device == x.device
    if torch.cuda.is_available():  # pragma: no cover - only on GPU machines
        xc = x.float().cuda()
        assert maps.light_map(xc, 2.0).device == xc.device


def test_mask_stops_background_bleeding(maps):
    """A red face on a blue background: with the face mask the light map inside the face stays red up to
    its edge; without it the blue bleeds in."""
    img = torch.zeros(1, 128, 128, 3)
    img[..., 2] = 1.0
    img[:, 32:96, 32:96, :] = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1.0
    plain = maps.light_map(img, 6.0, mode="pixels")
    masked = maps.light_map(img, 6.0, mode="pixels", mask=mask)
    edge = (slice(None), slice(32, 96), slice(32, 36))
    assert plain[edge][..., 2].mean() > 0.2          # blue bled into the face edge
    assert masked[edge][..., 2].abs().max() < 1e-5    # not with the mask
    assert torch.allclose(masked[:, :, :20], plain[:, :, :20])   # far outside: plain low-pass
    hf, _ = maps.hf_map(img, 6.0, mode="pixels", mask=mask)
    assert (maps.recombine(masked, hf) - img).abs().max() <= 1 / 255


def test_gain_encoding(maps, astronaut):
    _, detail = maps.hf_map(astronaut, 8.0)
    hf4 = maps.encode_detail(detail, 4.0)
    assert hf4.std() > 3 * maps.encode_detail(detail, 1.0).std()
    small = detail.abs() < 0.2    # not clipped at gain 4
    back = maps.decode_detail(hf4, 4.0)
    assert (back[small] - detail[small]).abs().max() < 1e-6
    with pytest.raises(ValueError):
        maps.encode_detail(detail, 0.0)


def test_magnitude_encoding(maps, astronaut):
    hf, detail = maps.hf_map(astronaut, 8.0, gain=4.0, encoding="magnitude")
    assert torch.allclose(hf, (detail.abs() * 4).clamp(0, 1))
    assert hf.min() == 0 and hf.median() < 0.2          # mostly black, bright edges
    with pytest.raises(ValueError, match="unknown encoding"):
        maps.encode_detail(detail, 1.0, "log")


def test_huge_sigma_is_defined(maps, hopper):
    light = maps.light_map(hopper, 4096.0, mode="pixels")
    assert torch.isfinite(light).all()
    # kernel capped at the image: nearly flat, close to the mean
    assert light.std(dim=(1, 2)).max() < hopper.std(dim=(1, 2)).min() / 2


# ------------------------------------------------------------------------------------ node adapters / bad input
def test_nodes_run_and_validate(pack, astronaut):
    from comfyui_megaportrait.nodes.maps import HFMap, LightMap, RecombineMaps
    (light,) = LightMap().run(astronaut, 8.0, "relative to 512 px", "gaussian")
    hf, detail = HFMap().run(astronaut, 8.0, "relative to 512 px", "gaussian", 1.0)
    (back,) = RecombineMaps().run(light, hf, 1.0)
    assert (back - astronaut).abs().max() <= 1 / 255
    assert detail.min() < 0 < detail.max()


@pytest.mark.parametrize("bad,needle", [
    (torch.rand(64, 64, 3), "[batch, height, width, channels]"),
    (torch.rand(1, 3, 64, 64), "channel-first"),
    (torch.rand(1, 64, 64, 7), "7 channels"),
    (torch.rand(0, 64, 64, 3), "empty"),
    (torch.rand(1, 0, 64, 3), "empty"),
    ("not an image", "not an IMAGE"),
])
def test_bad_images_give_clear_errors(pack, bad, needle):
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    from comfyui_megaportrait.nodes.maps import LightMap
    with pytest.raises(MegaPortraitError) as e:
        LightMap().run(bad, 8.0, "relative to 512 px", "gaussian")
    assert needle in str(e.value) and "Light Map" in str(e.value) and "Fix:" in str(e.value)


def test_bad_parameters_give_clear_errors(pack, astronaut):
    from comfyui_megaportrait.nodes.common import MegaPortraitError
    from comfyui_megaportrait.nodes.maps import HFMap, LightMap, RecombineMaps
    with pytest.raises(MegaPortraitError, match="sigma is -1"):
        LightMap().run(astronaut, -1.0, "pixels", "gaussian")
    with pytest.raises(MegaPortraitError, match="sigma is nan"):
        LightMap().run(astronaut, math.nan, "pixels", "gaussian")
    with pytest.raises(MegaPortraitError, match="largest supported"):
        LightMap().run(astronaut, 1e9, "pixels", "gaussian")
    with pytest.raises(MegaPortraitError, match="gain is 0"):
        HFMap().run(astronaut, 8.0, "pixels", "gaussian", 0.0)
    with pytest.raises(MegaPortraitError, match="'mask' is 64x64 but the image is 512x512"):
        LightMap().run(astronaut, 8.0, "pixels", "gaussian", mask=torch.ones(1, 64, 64))
    with pytest.raises(MegaPortraitError, match="batch of 2"):
        LightMap().run(astronaut, 8.0, "pixels", "gaussian", mask=torch.ones(2, 512, 512))
    with pytest.raises(MegaPortraitError, match="unknown filter_type"):
        LightMap().run(astronaut, 8.0, "pixels", "median")
    with pytest.raises(MegaPortraitError, match="hf_map is"):
        RecombineMaps().run(astronaut, astronaut[:, :100], 1.0)


def test_grayscale_and_rgba_are_filtered_per_channel(pack):
    from comfyui_megaportrait.nodes.maps import HFMap, LightMap
    gray = torch.rand(2, 50, 60, 1)
    rgba = torch.rand(1, 50, 60, 4)
    for x in (gray, rgba):
        (light,) = LightMap().run(x, 3.0, "pixels", "gaussian")
        hf, _ = HFMap().run(x, 3.0, "pixels", "gaussian", 1.0)
        assert light.shape == x.shape == hf.shape
        assert (light + (hf - 0.5) * 2 - x).abs().max() < 1e-5
    # a 2-D mask is one mask for the whole batch
    (light,) = LightMap().run(gray, 3.0, "pixels", "gaussian", mask=torch.ones(50, 60))
    assert light.shape == gray.shape
