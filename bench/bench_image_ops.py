"""Image ops (light map, HF map, face-crop warp, paste-back) at 512, 1024 and 2048 px against plain OpenCV
implementations of the same operations; plus the whole Face Crop / Paste Back nodes (with face analysis)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from common import EXAMPLES, emit, machine, pack, ratio, timeit, timeit_pair

cv2.setNumThreads(1)


def load_at(size: int) -> np.ndarray:
    from PIL import Image
    im = Image.open(f"{EXAMPLES}/grace_hopper.jpg").convert("RGB")
    w = size
    h = int(round(size * im.height / im.width / 8) * 8)
    return np.asarray(im.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def main():
    pk = pack()
    from comfyui_megaportrait.nodes import align, face_analysis, face_crop, image_ops, maps, paste_back
    fa = face_analysis.FaceAnalyzer().load()
    rows = []
    for size in (512, 1024, 2048):
        img = load_at(size)
        t = torch.from_numpy(img)[None]
        sig = maps.effective_sigma(8.0, img.shape[0], img.shape[1])
        k = maps._kernel_size(sig, "gaussian", img.shape[0], img.shape[1])

        def ref_light():
            return cv2.GaussianBlur(img, (k, k), sig, sigmaY=sig, borderType=cv2.BORDER_REFLECT_101)

        def ref_hf():
            blur = cv2.GaussianBlur(img, (k, k), sig, sigmaY=sig, borderType=cv2.BORDER_REFLECT_101)
            detail = cv2.subtract(img, blur)
            return detail, cv2.addWeighted(detail, 0.5, detail, 0.0, 0.5)       # 0.5 + detail / 2

        rows.append(row("light map", size, *timeit_pair(lambda: maps.light_map(t, 8.0), ref_light)))
        rows.append(row("HF map (+ signed detail)", size, *timeit_pair(lambda: maps.hf_map(t, 8.0), ref_hf)))

        # face crop: the warp (with the anti-aliasing blur when the face is shrunk) given the transform
        u8 = image_ops.to_uint8_rgb(t[0])
        face = max(fa.detect(u8), key=lambda f: f.area)
        m = align.crop_matrix(face.landmarks, face.kind, 512, 0.25)

        def ours_crop():
            return np.clip(align.warp(img, m, (512, 512)), 0, 1)

        def ref_crop():
            scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
            src, mm = img, m
            if scale < 0.99:
                s = 0.5 * (1 / scale - 1)
                inv = cv2.invertAffineTransform(m)
                c = np.array([[0, 0, 1], [512, 0, 1], [0, 512, 1], [512, 512, 1]], np.float64) @ inv.T
                pad = int(math.ceil(3 * s)) + 4
                x0, y0 = max(int(c[:, 0].min()) - pad, 0), max(int(c[:, 1].min()) - pad, 0)
                x1 = min(int(math.ceil(c[:, 0].max())) + pad, img.shape[1])
                y1 = min(int(math.ceil(c[:, 1].max())) + pad, img.shape[0])
                src = cv2.GaussianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), (0, 0), s, borderType=cv2.BORDER_REPLICATE)
                mm = m.copy()
                mm[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
            return np.clip(cv2.warpAffine(src, mm, (512, 512), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE), 0, 1)
        rows.append(row("face-crop warp (512 crop)", size, *timeit_pair(ours_crop, ref_crop)))

        # paste-back: mask + seam + warp back + blend, no re-detection, no colour matching
        crops, fc = face_crop.face_crop("bench", fa, t, 512)
        info = fc[0]
        crop_np = crops[0].numpy()

        def ours_paste():
            out = t[0].clone()
            mask, seam = torch.zeros(out.shape[:2]), torch.zeros(out.shape[:2])
            paste_back.paste_into(out, mask, seam, t[0], info, crop_np, None, "none", "face ellipse", 0, 24, 16, "none")
            return out, mask, seam

        def ref_paste():
            s = 512
            mc = np.zeros((s, s), np.float32)
            c = info.template_to_crop(align.FACE_ELLIPSE[0][None])[0]
            ax = align.FACE_ELLIPSE[1] * (s / (1 + 2 * info.context)) / 112
            cv2.ellipse(mc, (int(round(c[0] * 16)), int(round(c[1] * 16))), (int(round(ax[0] * 16)), int(round(ax[1] * 16))),
                        0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA, shift=4)
            mc = cv2.GaussianBlur(mc, (49, 49), 24 / 2.5, borderType=cv2.BORDER_CONSTANT)
            b = (mc > 0.5).astype(np.uint8)
            kk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (33, 33))
            seam = (cv2.dilate(b, kk) - cv2.erode(b, kk)).astype(np.float32)
            seam = cv2.GaussianBlur(seam, (25, 25), 12 / 2.5, borderType=cv2.BORDER_CONSTANT)
            inv = cv2.invertAffineTransform(info.matrix)
            h, w = img.shape[:2]
            pasted = cv2.warpAffine(crop_np, inv, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
            mask = cv2.warpAffine(mc, inv, (w, h), flags=cv2.INTER_LINEAR)
            seam_o = cv2.warpAffine(seam, inv, (w, h), flags=cv2.INTER_LINEAR)
            out = img * (1 - mask[..., None]) + np.clip(pasted, 0, 1) * mask[..., None]
            return out, mask, seam_o
        rows.append(row("paste-back warp + masks + blend", size, *timeit_pair(ours_paste, ref_paste)))

        # whole nodes (with face analysis: detection, refined landmarks, re-detection), absolute times
        with torch.inference_mode():
            crop_node = timeit(lambda: face_crop.FaceCropNode().crop(fa, t, 512, 0.25, "largest", 0, 48), repeat=3)
            paste_node = timeit(lambda: paste_back.PasteBackNode().paste(t, fc, crops, "landmarks", "face ellipse", 0, 24,
                                                                          16, "mean (Lab)", face_analysis=fa), repeat=3)
        rows.append({"op": "Face Crop node (detect + refined landmarks + warp + re-detect)", "size": size,
                     "ours_s": crop_node["min_s"], "reference_s": None, "ratio": None})
        rows.append({"op": "Paste Back node (re-detect + align + masks + colour match + blend)", "size": size,
                     "ours_s": paste_node["min_s"], "reference_s": None, "ratio": None})
    emit({"section": "image_ops", "machine": machine(), "rows": rows, "pack": pk.__name__})


def row(op, size, ours, ref):
    return {"op": op, "size": size, "ours_s": ours["min_s"], "reference_s": ref["min_s"],
            "ratio": ratio(ours, ref)}


if __name__ == "__main__":
    main()
