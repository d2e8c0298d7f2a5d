"""The contact sheet of a batch: one HTML page and one PNG grid. A row per person: the source photos, then the
portrait rendered from each reference with its identity distance; results at or past the threshold (or without a
face, or failed) are flagged in red. The references head the columns."""
from __future__ import annotations

import html
import os

from PIL import Image, ImageDraw, ImageFont

CELL = 160            # thumbnail box, pixels
CAPTION = 30          # caption band under each thumbnail in the PNG
MAX_SOURCES = 4       # source photos shown per person
RED, GREEN, GREY = (214, 39, 40), (44, 160, 44), (150, 150, 150)
HTML_NAME, PNG_NAME, THUMBS = "contact_sheet.html", "contact_sheet.png", "contact_sheet_files"


def _thumb(path: str | None) -> Image.Image:
    if path and os.path.isfile(path):
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((CELL, CELL))
            return im
    return Image.new("RGB", (CELL, CELL), (60, 60, 60))


def cell_state(job: dict | None, threshold: float | None) -> tuple[str, str]:
    """(caption, kind) of a rendered cell; kind is ok, flag or failed."""
    if job is None:
        return "not run", "failed"
    if job.get("status") != "ok":
        return "failed: " + str(job.get("error", "")), "failed"
    d = job.get("identity_distance")
    thr = job.get("identity_threshold", threshold)
    if d is None:
        return "no face in the result" if "identity not measured" not in (job.get("identity_report") or "") \
            else "identity not measured", "flag"
    if job.get("flagged"):
        return f"distance {d:.3f} >= {thr:g}", "flag"
    return f"distance {d:.3f}", "ok"


def write(report: dict, out: str, manifest) -> tuple[str, str]:
    thumbs = os.path.join(out, THUMBS)
    os.makedirs(thumbs, exist_ok=True)
    refs, people = manifest.references, manifest.people
    nsrc = min(MAX_SOURCES, max(len(p.photos) for p in people))
    cols, rows = nsrc + len(refs), 1 + len(people)
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (cols * CELL, rows * (CELL + CAPTION)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)

    def place(img: Image.Image, r: int, c: int, caption: str, colour=None, name: str | None = None) -> str | None:
        x0, y0 = c * CELL, r * (CELL + CAPTION)
        sheet.paste(img, (x0 + (CELL - img.width) // 2, y0 + (CELL - img.height) // 2))
        if colour is not None:
            draw.rectangle([x0 + 1, y0 + 1, x0 + CELL - 2, y0 + CELL - 2], outline=colour, width=4)
        draw.text((x0 + 4, y0 + CELL + 2), caption[:26], fill=colour if colour is not None else (0, 0, 0), font=font)
        if name is None:
            return None
        img.save(os.path.join(thumbs, name), quality=85)
        return f"{THUMBS}/{name}"

    thr = report.get("threshold")
    s = report.get("summary", {})
    draw.multiline_text((6, 6), f"MegaPortrait batch\n{s.get('ok', 0)}/{s.get('jobs', 0)} ok, {s.get('failed', 0)} failed,"
                                f"\n{s.get('flagged', 0)} flagged\n\nrows: people\ncolumns: source photos,"
                                "\nthen one per reference", fill=(0, 0, 0), font=font)
    head = ['<tr><th>person</th><th colspan="%d">source photos</th>' % nsrc]
    for j, ref in enumerate(refs):
        src = place(_thumb(ref.image), 0, nsrc + j, f"reference {ref.name}", None, f"ref_{ref.name}.jpg")
        head.append(f'<th><img src="{src}" alt="reference {html.escape(ref.name)}"><br>{html.escape(ref.name)}</th>')
    body = []
    for i, person in enumerate(people):
        row = [f"<tr><th>{html.escape(person.name)}</th>"]
        for k in range(nsrc):
            photo = person.photos[k] if k < len(person.photos) else None
            if photo is None:
                row.append("<td></td>")
                continue
            label = f"{person.name}: {os.path.basename(photo)}" if k == 0 else os.path.basename(photo)
            src = place(_thumb(photo), i + 1, k, label, None, f"src_{person.name}_{k}.jpg")
            row.append(f'<td class="source"><img src="{src}" alt="{html.escape(os.path.basename(photo))}"></td>')
        for j, ref in enumerate(refs):
            job = report["jobs"].get(f"{person.name}/{ref.name}")
            caption, kind = cell_state(job, thr)
            portrait = os.path.join(out, job["portrait"]) if job and job.get("portrait") else None
            colour = {"ok": GREEN, "flag": RED, "failed": GREY}[kind]
            src = place(_thumb(portrait), i + 1, nsrc + j, caption, colour, f"out_{person.name}_{ref.name}.jpg")
            link = html.escape(job["portrait"]) if portrait else ""
            img = f'<a href="{link}"><img src="{src}"></a>' if portrait else f'<img src="{src}">'
            row.append(f'<td class="{kind}" data-job="{html.escape(person.name)}/{html.escape(ref.name)}">{img}'
                       f'<div>{html.escape(caption)}</div></td>')
        body.append("".join(row) + "</tr>")
    title = f"MegaPortrait batch: {os.path.basename(report.get('manifest', ''))}"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; }} table {{ border-collapse: collapse; }}
td, th {{ padding: 4px; text-align: center; vertical-align: top; font-size: 12px; }}
img {{ max-width: {CELL}px; max-height: {CELL}px; }}
td.ok img {{ border: 4px solid rgb{GREEN}; }} td.flag img {{ border: 4px solid rgb{RED}; }}
td.flag div {{ color: rgb{RED}; font-weight: bold; }} td.failed img {{ border: 4px solid rgb{GREY}; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{s.get('ok', 0)} of {s.get('jobs', 0)} jobs ok, {s.get('failed', 0)} failed, {s.get('flagged', 0)} flagged
(identity distance at or past {thr if thr is not None else "the backend's threshold"}, or no face).
Workflow {html.escape(os.path.basename(str(report.get('workflow'))))}; back end {html.escape(report['backend']['kind'])}.
Identity distance: the pack's Face Similarity (dlib) between each portrait and the person's source photos.</p>
<table>
{"".join(head)}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    html_path, png_path = os.path.join(out, HTML_NAME), os.path.join(out, PNG_NAME)
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    sheet.save(png_path)
    return html_path, png_path
