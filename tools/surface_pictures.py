"""The help pages' pictures (web/docs/asset/*.jpg) and the template thumbnails (workflows/<name>.jpg), drawn from
example_inputs/ with the pack's own nodes (dlib face analysis, Face Crop, the maps, Paste Back's masks).
Run through ``python tools/build_surfaces.py --pictures``; the files are committed (small JPEGs)."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

THUMB = (512, 384)          # the template browser's cards are 4:3
QUALITY = 82


def _pack(repo: str):
    """The repository imported as a package (the way ComfyUI imports a custom-node folder)."""
    import importlib.util
    name = "megaportrait_pictures_pack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "__init__.py"),
                                                      submodule_search_locations=[repo])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _load(path: str) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _u8(t: torch.Tensor) -> np.ndarray:
    a = t[0].detach().cpu().numpy() if t.ndim == 4 else t.detach().cpu().numpy()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                      # Pillow < 10.1
        return ImageFont.load_default()


def _strip(tiles: list, height: int, gap: int = 6) -> Image.Image:
    ims = [Image.fromarray(t).resize((round(t.shape[1] * height / t.shape[0]), height), Image.LANCZOS) for t in tiles]
    w = sum(i.width for i in ims) + gap * (len(ims) - 1)
    out = Image.new("RGB", (w, height), (32, 32, 32))
    x = 0
    for i in ims:
        out.paste(i, (x, 0))
        x += i.width + gap
    return out


def _card(body: Image.Image, title: str, subtitle: str) -> Image.Image:
    """A template thumbnail: the picture fitted into the card, a title bar below."""
    W, H = THUMB
    bar = 78
    card = Image.new("RGB", (W, H), (24, 26, 30))
    scale = min((W - 16) / body.width, (H - bar - 16) / body.height)
    b = body.resize((max(1, round(body.width * scale)), max(1, round(body.height * scale))), Image.LANCZOS)
    card.paste(b, ((W - b.width) // 2, 8 + (H - bar - 16 - b.height) // 2))
    d = ImageDraw.Draw(card)
    d.rectangle([0, H - bar, W, H], fill=(44, 62, 94))
    d.text((14, H - bar + 10), title, fill=(255, 255, 255), font=_font(26))
    d.text((14, H - bar + 46), subtitle, fill=(210, 220, 235), font=_font(17))
    return card


class Parts:
    """The example pictures, made once with the pack's nodes."""

    def __init__(self, repo: str):
        pack = _pack(repo)
        n = pack.NODE_CLASS_MAPPINGS
        ex = os.path.join(repo, "example_inputs")
        self.repo = repo
        self.fa = n["MegaPortraitFaceAnalysisLoader"]().load("dlib", 0.3, 640)[0]
        self.ref = _load(os.path.join(ex, "grace_hopper.jpg"))
        self.src = _load(os.path.join(ex, "astronaut.png"))
        crop_node = n["MegaPortraitFaceCrop"]()
        self.ref_face, self.ref_crop = crop_node.crop(self.fa, self.ref, 512, 0.25, "largest", 0, 48)
        self.src_face, _ = crop_node.crop(self.fa, self.src, 512, 0.25, "largest", 0, 48)
        maps = sys.modules[n["MegaPortraitLightMap"].__module__]
        self.ref_light = maps.light_map(self.ref_face, 8.0)
        self.src_light = maps.light_map(self.src_face, 8.0)
        self.hf_signed = maps.hf_map(self.src_face, 8.0, 1.0, "signed")[0]
        self.hf_edges = maps.hf_map(self.src_face, 8.0, 4.0, "magnitude")[0]
        self.recombined = maps.recombine(self.src_light, self.hf_signed, 1.0)
        _pasted, self.face_mask, self.seam_mask = n["MegaPortraitPasteBack"]().paste(
            self.ref, self.ref_crop, self.ref_face, "none", "face ellipse", 0, 24, 16, "none")
        self.n = n

    def maps_picture(self) -> Image.Image:
        tiles = [self.src_face, self.src_light, self.hf_signed, self.hf_edges, self.recombined]
        return _strip([_u8(t) for t in tiles], 200)

    def crop_picture(self) -> Image.Image:
        import cv2
        ref = _u8(self.ref).copy()
        info = self.ref_crop[0]
        s = info.crop_size
        corners = np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float64)
        inv = info.inverse
        pts = corners @ inv[:, :2].T + inv[:, 2]
        cv2.polylines(ref, [np.round(pts).astype(np.int32)], True, (255, 210, 0), max(2, ref.shape[1] // 150))
        for p in info.landmarks:
            cv2.circle(ref, (int(round(p[0])), int(round(p[1]))), max(2, ref.shape[1] // 200), (0, 255, 120), -1)
        return _strip([ref, _u8(self.ref_face)], 300)

    def mask_overlay(self) -> np.ndarray:
        ref = _u8(self.ref).astype(np.float32)
        fm = self.face_mask[0].cpu().numpy()[..., None]
        sm = self.seam_mask[0].cpu().numpy()[..., None]
        out = ref * (1 - 0.45 * fm) + np.array([40, 220, 90], np.float32) * 0.45 * fm
        out = out * (1 - 0.7 * sm) + np.array([230, 40, 200], np.float32) * 0.7 * sm
        return np.clip(out, 0, 255).astype(np.uint8)

    def masks_picture(self) -> Image.Image:
        return _strip([self.mask_overlay()], 300)

    def source_grid(self) -> Image.Image:
        sp = sys.modules[self.n["MegaPortraitLoadSourcePhotos"].__module__]
        photos, _ = sp.augment(_resize_sq(self.src_face, 256), 6, 0)
        return _strip([_u8(photos[i:i + 1]) for i in range(photos.shape[0])], 160)

    def group_picture(self) -> Image.Image:
        import cv2
        sys.path.insert(0, os.path.join(self.repo, "tests"))
        from synthetic_group import group_canvas
        canvas = group_canvas()[0]
        img = torch.from_numpy(canvas.astype(np.float32) / 255)[None]
        _, fc = self.n["MegaPortraitFaceCrop"]().crop(self.fa, img, 256, 0.25, "every face (left to right)", 0, 32)
        out = canvas.copy()
        for i in range(len(fc)):
            x0, y0, x1, y1 = [int(v) for v in fc[i].bbox]
            cv2.rectangle(out, (x0, y0), (x1, y1), (255, 210, 0), 4)
            cv2.putText(out, str(i), (x0, max(30, y0 - 8)), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 210, 0), 3)
        return _strip([out], 300)


def _resize_sq(t: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(t.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                           antialias=True).permute(0, 2, 3, 1)


def draw_all(repo: str) -> list:
    p = Parts(repo)
    asset = os.path.join(repo, "web", "docs", "asset")
    os.makedirs(asset, exist_ok=True)
    written = []

    def save(im: Image.Image, path: str, max_w: int = 1000):
        if im.width > max_w:
            im = im.resize((max_w, round(im.height * max_w / im.width)), Image.LANCZOS)
        im.save(path, quality=QUALITY, optimize=True)
        written.append(os.path.relpath(path, repo))

    maps_pic, crop_pic, masks_pic = p.maps_picture(), p.crop_picture(), p.masks_picture()
    save(maps_pic, os.path.join(asset, "maps.jpg"))
    save(crop_pic, os.path.join(asset, "face_crop.jpg"))
    save(masks_pic, os.path.join(asset, "masks.jpg"))

    ref, src = _u8(p.ref), _u8(p.src_face)
    pipeline = _strip([src, ref, _u8(p.ref_light), _u8(p.hf_edges), p.mask_overlay()], 220)
    wf = os.path.join(repo, "workflows")
    cards = {
        "megaportrait_full": ("MegaPortrait: full pipeline", "SD1.5 · train identity LoRA, maps, shading, paste, harmonize"),
        "megaportrait_full_sdxl": ("MegaPortrait: full pipeline", "SDXL · 1024 px · identity LoRA + maps + harmonize"),
        "megaportrait_full_flux": ("MegaPortrait: full pipeline", "Flux.1 dev · union ControlNet · Flux Fill"),
        "megaportrait_full_zimage": ("MegaPortrait: full pipeline", "Z-Image-Turbo · Apache-2.0 · Fun ControlNet union"),
        "megaportrait_with_lora": ("MegaPortrait with a LoRA", "SD1.5 · an identity LoRA you trained: no training"),
    }
    for name, (title, sub) in cards.items():
        save(_card(pipeline, title, sub), os.path.join(wf, f"{name}.jpg"), THUMB[0])
    save(_card(p.group_picture(), "MegaPortrait: group photo", "SD1.5 · every face, one identity LoRA"),
         os.path.join(wf, "megaportrait_group.jpg"), THUMB[0])
    save(_card(p.group_picture(), "MegaPortrait: several people", "SD1.5 · each face its own person's identity LoRA"),
         os.path.join(wf, "megaportrait_group_people.jpg"), THUMB[0])
    save(_card(p.source_grid(), "MegaPortrait: train identity", "SD1.5 · source photos -> identity LoRA"),
         os.path.join(wf, "megaportrait_train.jpg"), THUMB[0])
    # the Comfy Registry's icon (square) and banner, shipped in the pack (pyproject.toml [tool.comfy] Icon, Banner)
    tiles = [p.src_face, p.src_light, p.hf_edges, p.recombined]
    icon = Image.new("RGB", (400, 400), (24, 26, 30))
    for i, t in enumerate(tiles):
        icon.paste(Image.fromarray(_u8(t)).resize((196, 196), Image.LANCZOS), (2 + 200 * (i % 2), 2 + 200 * (i // 2)))
    path = os.path.join(repo, "web", "icon.png")
    icon.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    written.append(os.path.relpath(path, repo))
    banner = Image.new("RGB", (1260, 540), (24, 26, 30))
    strip = pipeline.resize((1220, round(pipeline.height * 1220 / pipeline.width)), Image.LANCZOS)
    banner.paste(strip, (20, 40))
    d = ImageDraw.Draw(banner)
    d.text((24, 40 + strip.height + 30), "MegaPortrait for ComfyUI", fill=(255, 255, 255), font=_font(56))
    d.text((24, 40 + strip.height + 100), "identity LoRA · light and HF maps · shading ControlNets · paste-back · harmonization",
           fill=(200, 210, 230), font=_font(26))
    save(banner, os.path.join(repo, "web", "banner.jpg"), 1260)
    return written
