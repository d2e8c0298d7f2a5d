"""The diffusion stages against the same work done with stock nodes, tiny models on the CPU:
* dual-strength identity sampler vs two sequential KSampler runs (the branches are those two runs);
* shading sampler vs ControlNetApplyAdvanced x2 + KSampler;
* harmonizer vs VAEEncode + SetLatentNoiseMask + KSampler + VAEDecode + ImageCompositeMasked (full frame), and
  its crop-to-mask mode on a 2048 px image."""
from __future__ import annotations

import torch
from common import comfy, emit, machine, pack, ratio, timeit_pair


def main():
    h = comfy()
    pk = pack()
    from comfyui_megaportrait.nodes import harmonize, identity_sampler, shading
    n = h.nodes
    rows = []
    with torch.inference_mode():
        for ck, cn_name in (("tiny_sd15.safetensors", "tiny_controlnet.safetensors"),
                            ("tiny_sdxl.safetensors", "tiny_sdxl_controlnet.safetensors")):
            fam = "SD1.5-shaped" if "sd15" in ck else "SDXL-shaped"
            m, c, v = n.CheckpointLoaderSimple().load_checkpoint(ck)[:3]
            cnet = n.ControlNetLoader().load_controlnet(cn_name)[0]
            pos = n.CLIPTextEncode().encode(c, "photo of sks person")[0]
            neg = n.CLIPTextEncode().encode(c, "blurry")[0]
            for px in (64, 256):
                img = torch.rand(1, px, px, 3, generator=torch.Generator().manual_seed(0))
                lat = {"samples": v.encode(img)}
                for sampler in ("euler", "dpmpp_2m"):
                    ours, stock = timeit_pair(
                        lambda: identity_sampler.dual_sample("b", m, pos, neg, lat, 1, 20, 5.0, sampler, "karras", 0.35, 0.7),
                        lambda: (n.KSampler().sample(m, 1, 20, 5.0, sampler, "karras", pos, neg, lat, 0.35),
                                 n.KSampler().sample(m, 1, 20, 5.0, sampler, "karras", pos, neg, lat, 0.7)))
                    rows.append(row(f"dual-strength sampler, {sampler}, 20 steps", fam, f"{px}x{px}", ours, stock,
                                    "two KSampler runs (denoise 0.35 and 0.7)"))
                node = shading.ShadingSampler()

                def stock_shading():
                    p2, n2 = n.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, img, 0.6, 0.0, 1.0)[:2]
                    p2, n2 = n.ControlNetApplyAdvanced().apply_controlnet(p2, n2, cnet, img, 0.5, 0.0, 0.7)[:2]
                    lt = n.VAEEncode().encode(v, img)[0]
                    out = n.KSampler().sample(m, 1, 10, 5.0, "euler", "karras", p2, n2, lt, 0.75)[0]
                    return n.VAEDecode().decode(v, out)
                ours, stock = timeit_pair(lambda: node.sample(m, pos, neg, v, img, img, cnet, cnet, 0.6, 0, 1, 0.5, 0, 0.7, 1,
                                                              10, 5.0, "euler", "karras", 0.75, init_image=img),
                                          stock_shading)
                rows.append(row("shading sampler, 10 steps", fam, f"{px}x{px}", ours, stock,
                                "VAEEncode + 2x ControlNetApplyAdvanced + KSampler + VAEDecode"))
            # harmonizer: same work (no crop) vs stock, and crop-to-mask on a large image
            for px, crop in ((256, False), (768, True)):
                img = torch.rand(1, px, px, 3, generator=torch.Generator().manual_seed(1))
                mask = torch.zeros(1, px, px)
                q = px // 8
                mask[:, 3 * q:5 * q, 3 * q:5 * q] = 1.0
                node = harmonize.Harmonize()

                def stock_harm():
                    lt = n.VAEEncode().encode(v, img)[0]
                    lt = n.SetLatentNoiseMask().set_mask(lt, mask)[0] if hasattr(n, "SetLatentNoiseMask") else \
                        {"samples": lt["samples"], "noise_mask": mask}
                    out = n.KSampler().sample(m, 1, 10, 5.0, "euler", "karras", pos, neg, lt, 0.5)[0]
                    dec = n.VAEDecode().decode(v, out)[0]
                    return img * (1 - mask[..., None]) + dec * mask[..., None]
                what = ("harmonizer, whole frame, 10 steps" if not crop else
                        "harmonizer, crop-to-mask (box at 256 px), 10 steps")
                # the models are warm from the runs above; the whole-frame 768 px reference takes over a minute a run
                ours, stock = timeit_pair(lambda: node.harmonize(m, pos, neg, v, img, mask, 1, 10, 5.0, "euler", "karras",
                                                                 0.5, 0, 0, crop, 0.3, 256),
                                          stock_harm, repeat=2, warmup=0 if crop else 1)
                rows.append(row(what, fam, f"{px}x{px}", ours, stock,
                                "VAEEncode + SetLatentNoiseMask + KSampler + VAEDecode + composite, whole frame"))
    emit({"section": "sampling", "machine": machine(), "rows": rows, "pack": pk.__name__})


def row(op, fam, size, ours, stock, stock_desc):
    return {"op": op, "model": fam, "size": size, "ours_s": ours["min_s"], "stock_s": stock["min_s"],
            "ratio": ratio(ours, stock), "stock": stock_desc}


if __name__ == "__main__":
    main()
