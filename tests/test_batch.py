"""Batch runs (tools/batch.py): the manifest, the batch over a ComfyUI server's /prompt and over Comfy API v2
(comfy-api-proxy in front of a ComfyUI), resume after a kill, a failing job, the report and the contact sheet."""
from __future__ import annotations

import os
import textwrap

import pytest
from conftest import EXAMPLES
from PIL import Image


def write_people(tmp_path):
    """Two people (photo folders) and two references, small public-domain derived images."""
    a, b = tmp_path / "photos" / "collins", tmp_path / "photos" / "hopper"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    with Image.open(os.path.join(EXAMPLES, "astronaut.png")) as im:
        im.convert("RGB").rotate(2).save(a / "c1.png")
        im.convert("RGB").rotate(-3).resize((480, 480)).save(a / "c2.png")
    with Image.open(os.path.join(EXAMPLES, "grace_hopper.jpg")) as im:
        im.convert("RGB").rotate(-2).save(b / "h1.png")
    refs = tmp_path / "refs"
    refs.mkdir()
    with Image.open(os.path.join(EXAMPLES, "grace_hopper.jpg")) as im:
        im.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(refs / "navy.png")
    with Image.open(os.path.join(EXAMPLES, "astronaut.png")) as im:
        im.convert("RGB").save(refs / "nasa.png")
    return tmp_path


def write_manifest(tmp_path, text: str, name: str = "batch.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


GOOD = """
    workflow: megaportrait_full
    smoke: true
    threshold: 0.6
    set: {"Identity LoRA Trainer.steps": 4, "Identity LoRA Trainer.resolution": 128, "Source photos.resolution": 128}
    people:
      - name: collins
        photos: photos/collins
      - name: hopper
        photos: [photos/hopper/h1.png]
        set: {"Identity LoRA Trainer.seed": 3}
    references:
      - name: navy
        image: refs/navy.png
      - name: nasa
        image: refs/nasa.png
        set: {"Harmonize.denoise": 0.4}
"""


# ------------------------------------------------------------------------------------------------ manifest
def test_manifest_reads_people_references_and_settings(tmp_path):
    import batch_manifest as bm
    write_people(tmp_path)
    m = bm.load_manifest(write_manifest(tmp_path, GOOD))
    assert [p.name for p in m.people] == ["collins", "hopper"]
    assert [os.path.basename(f) for f in m.people[0].photos] == ["c1.png", "c2.png"]
    assert m.people[1].photos == [str(tmp_path / "photos/hopper/h1.png")]
    assert m.people[1].sets == {"Identity LoRA Trainer.seed": 3}
    assert [r.name for r in m.references] == ["navy", "nasa"] and m.references[1].sets == {"Harmonize.denoise": 0.4}
    assert m.threshold == 0.6 and m.smoke and m.sets["Identity LoRA Trainer.steps"] == 4
    assert m.out == str(tmp_path / "batch_output")
    # smoke: the tiny models are in the workflow
    assert m.prompt["1"]["inputs"]["ckpt_name"] != "Realistic_Vision_V5.1_fp16-no-ema.safetensors"


def test_manifest_errors_name_their_lines(tmp_path):
    import batch_manifest as bm
    write_people(tmp_path)
    (tmp_path / "refs" / "broken.png").write_bytes(b"not an image")
    path = write_manifest(tmp_path, """
        workflow: megaportrait_full
        threshold: -1
        colour: red
        people:
          - name: collins
            photos: photos/nobody
          - name: collins
            photos: photos/hopper
          - photos: photos/hopper
          - name: "bad name/"
            photos: photos/hopper
            set: {"No Such Node.steps": 3}
        references:
          - name: navy
            image: refs/broken.png
          - name: nasa
            image: refs/missing.png
            set: {"Harmonize.denoise": [1, 2]}
    """)
    with pytest.raises(bm.ManifestError) as ei:
        bm.load_manifest(path)
    got = dict((ln, msg) for ln, msg in ei.value.problems)
    assert "threshold -1 must be a number above 0" in got[2]
    assert "unknown key 'colour'" in got[3]
    assert "photos/nobody does not exist" in got[6]
    assert "name 'collins' is already used on line 5" in got[7]
    assert "people[2]: 'name' is missing" in got[9]
    assert "name 'bad name/'" in got[10]
    assert "the workflow has no node titled or of type 'No Such Node'" in got[12]
    assert "broken.png is not an image PIL can read" in got[15]
    assert "missing.png does not exist" in got[17]
    assert "the value must be a number, text or true/false" in got[18]
    msg = str(ei.value)
    assert msg.startswith(f"the batch manifest {path} has 10 problem(s):") and "batch.yaml line 6: people[0]" in msg


@pytest.mark.parametrize("text, line, want", [
    ("people: [\n", 2, "not valid YAML"),
    ("", 1, "the manifest is empty"),
    ("- a\n- b\n", 1, "must be a mapping"),
    ("people: []\nreferences:\n  - name: a\n    image: x.png\n", 1, "'people' must be a non-empty list"),
    ("people:\n  - name: a\n    photos: p\npeople: []\n", 4, "'people' is given twice"),
    ("workflow: nope\npeople: []\n", 1, "workflow: no workflow 'nope'"),
    ("workflow: megaportrait_with_lora\n", 1, "a batch workflow needs one Identity LoRA Trainer"),
    ("smoke: yes please\n", 1, "smoke must be true or false"),
    ("references:\n  - name: r\n    image: r.png\n    set: {\"Identity LoRA Trainer.steps\": 3}\n", 4,
     "'Identity LoRA Trainer' is part of the identity training"),
])
def test_manifest_bad_files(tmp_path, text, line, want):
    import batch_manifest as bm
    with pytest.raises(bm.ManifestError) as ei:
        bm.load_manifest(write_manifest(tmp_path, text))
    assert any(ln == line and want in msg for ln, msg in ei.value.problems), ei.value.problems


# ------------------------------------------------------------------------------------------------ batch runs
def loras(models_dir) -> dict:
    root = os.path.join(models_dir, "loras", "megaportrait", "batch")
    return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
            for r, _, fs in os.walk(root) for f in fs if f.endswith(".safetensors")}


def report_of(out) -> dict:
    import json
    with open(os.path.join(out, "batch_report.json")) as f:
        return json.load(f)


def run_batch_cli(capsys, *args):
    import runner
    code = runner.main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def make_batch(tmp_path, angle: float, extra_refs: str = "") -> str:
    """A 2 x 2 smoke batch whose photos no other test uses (rotated by ``angle``): new identity LoRAs."""
    write_people(tmp_path)
    for folder in ("collins", "hopper"):
        for f in (tmp_path / "photos" / folder).iterdir():
            with Image.open(f) as im:
                im.rotate(angle).save(f)
    return write_manifest(tmp_path, GOOD.replace("    references:\n", "    references:\n" + extra_refs))


def check_complete(report, out, people=("collins", "hopper"), refs=("navy", "nasa")):
    assert set(report["trainings"]) == set(people) and all(t["status"] == "ok" for t in report["trainings"].values())
    assert set(report["jobs"]) == {f"{p}/{r}" for p in people for r in refs}
    for jid, job in report["jobs"].items():
        assert job["status"] == "ok", (jid, job)
        assert job["files"] and all(os.path.isfile(os.path.join(out, f)) for f in job["files"])
        assert job["portrait"].startswith(jid.replace("/", os.sep) + os.sep) and "portrait" in job["portrait"]
        with Image.open(os.path.join(out, job["portrait"])) as im:
            assert im.size[0] > 0
        d = job["identity_distance"]
        assert d is None or 0 <= d < 5
        assert job["flagged"] == (d is None or d >= 0.6)
        assert "backend: dlib" in job["identity_report"] or "no face" in job["identity_report"]


@pytest.mark.server
def test_batch_over_prompt_trains_once_and_reruns_nothing(server, models_dir, tmp_path, capsys):
    m = make_batch(tmp_path, 4)
    out = str(tmp_path / "batch_output")
    before = loras(models_dir)
    code, stdout, err = run_batch_cli(capsys, "--batch", m, "--server", server.url)
    assert code == 0, err
    report = report_of(out)
    assert stdout.strip() == os.path.join(out, "batch_report.json")
    check_complete(report, out)
    assert {j["identity_source"] for j in report["jobs"].values()} == {"workflow"}     # the workflow's own check
    trained = loras(models_dir)
    new = set(trained) - set(before)
    assert len(new) == 2 and {os.path.basename(p).split("_")[0] for p in new} == {"collins", "hopper"}
    assert sorted(report["this_run"]["trained"]) == ["collins", "hopper"] and len(report["this_run"]["rendered"]) == 4
    assert report["summary"] == {"jobs": 4, "ok": 4, "failed": 0, "flagged": report["summary"]["flagged"],
                                 "trainings_ok": 2}
    assert "batch: 2 people x 2 references" in err and "4/4 jobs ok" in err
    assert "it/s]" in err or "job/s]" in err or "s/job]" in err          # tqdm's bar
    # the contact sheet: one row per person, one cell per reference with its distance and flag
    html = open(os.path.join(out, "contact_sheet.html")).read()
    for person in ("collins", "hopper"):
        for ref in ("navy", "nasa"):
            job = report["jobs"][f"{person}/{ref}"]
            cls = "flag" if job["flagged"] else "ok"
            assert f'<td class="{cls}" data-job="{person}/{ref}">' in html
            if job["identity_distance"] is not None:
                assert f"distance {job['identity_distance']:.3f}" in html
    assert html.count('class="source"') == 3           # collins 2 photos, hopper 1
    sheet = Image.open(os.path.join(out, "contact_sheet.png")).convert("RGB")
    assert sheet.size == (160 * (2 + 2), 190 * 3)
    import numpy as np
    arr = np.asarray(sheet)
    for i, person in enumerate(("collins", "hopper")):
        for j, ref in enumerate(("navy", "nasa")):
            want = (214, 39, 40) if report["jobs"][f"{person}/{ref}"]["flagged"] else (44, 160, 44)
            x0, y0 = (2 + j) * 160, (i + 1) * 190
            assert tuple(arr[y0 + 2, x0 + 80]) == want        # the cell's border colour
    # a rerun: everything skipped, nothing trained or written
    code, _, err = run_batch_cli(capsys, "--batch", m, "--server", server.url)
    assert code == 0, err
    again = report_of(out)
    assert again["this_run"]["trained"] == [] and again["this_run"]["rendered"] == []
    assert sorted(again["this_run"]["skipped"]) == sorted(["collins", "hopper", *report["jobs"]])
    assert loras(models_dir) == trained
    # a changed setting for one reference redoes exactly that reference's jobs (new content keys), no training;
    # with a second server URL (another name of the same server) each person's jobs still go where its LoRA is
    m2 = write_manifest(tmp_path, GOOD.replace('"Harmonize.denoise": 0.4', '"Harmonize.denoise": 0.45'))
    other = server.url.replace("127.0.0.1", "localhost")
    code, _, err = run_batch_cli(capsys, "--batch", m2, "--server", server.url, "--server", other, "--out", out)
    assert code == 0, err
    third = report_of(out)
    assert sorted(third["this_run"]["rendered"]) == ["collins/nasa", "hopper/nasa"] and third["this_run"]["trained"] == []
    assert third["backend"]["targets"] == [server.url, other]
    assert third["jobs"]["collins/nasa"]["backend"] == third["jobs"]["hopper/nasa"]["backend"] == server.url
    assert loras(models_dir) == trained


@pytest.mark.server
def test_batch_failing_job_others_finish(server, models_dir, tmp_path, capsys):
    """A reference without a face fails its jobs with Face Crop's message; the others finish; exit code 2."""
    write_people(tmp_path)
    Image.new("RGB", (256, 256), (120, 140, 160)).save(tmp_path / "refs" / "wall.png")
    m = write_manifest(tmp_path, """
        smoke: true
        set: {"Identity LoRA Trainer.resolution": 128, "Source photos.resolution": 128}
        people:
          - name: collins
            photos: photos/collins
        references:
          - name: wall
            image: refs/wall.png
          - name: navy
            image: refs/navy.png
    """)
    code, _, err = run_batch_cli(capsys, "--batch", m, "--server", server.url)
    assert code == 2, err
    report = report_of(str(tmp_path / "batch_output"))
    assert report["jobs"]["collins/navy"]["status"] == "ok"
    bad = report["jobs"]["collins/wall"]
    assert bad["status"] == "failed" and "MegaPortraitFaceCrop" in bad["error"] and "no face" in bad["error"]
    assert report["summary"]["failed"] == 1 and "failed collins/wall: MegaPortraitFaceCrop" in err
    html = open(str(tmp_path / "batch_output" / "contact_sheet.html")).read()
    assert '<td class="failed" data-job="collins/wall">' in html and "no face" in html


@pytest.mark.server
def test_batch_killed_half_way_resumes_without_retraining(server, models_dir, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time
    m = make_batch(tmp_path, -4)
    out = str(tmp_path / "batch_output")
    before = loras(models_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # two server URLs (two names of the same server): one person each, both at once
    urls = ["--server", server.url, "--server", server.url.replace("127.0.0.1", "localhost")]
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(EXAMPLES), "tools", "runner.py"),
                             "--batch", m, *urls], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    done = []
    try:
        while time.time() - t0 < 300 and proc.poll() is None:
            try:
                r = report_of(out)
                done = [j for part in ("trainings", "jobs") for j, e in r[part].items() if e["status"] == "ok"]
            except (OSError, ValueError):
                pass
            if len(done) >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(30)
    assert 3 <= len(done) <= 4, "the batch was not killed half-way"
    killed = report_of(out)
    trained = loras(models_dir)
    assert set(trained) - set(before)                        # at least one LoRA was trained before the kill
    code, _, err = run_batch_cli(capsys, "--batch", m, *urls)
    assert code == 0, err
    report = report_of(out)
    check_complete(report, out)
    for part in ("trainings", "jobs"):                       # each person's training and jobs on its own server
        for e in report[part].values():
            assert e["backend"] == urls[1 if e["person"] == "collins" else 3]
    run = report["this_run"]
    ok_before = {j for part in ("trainings", "jobs") for j, e in killed[part].items() if e["status"] == "ok"}
    assert set(run["skipped"]) == ok_before
    assert set(run["trained"]) | set(run["rendered"]) == {"collins", "hopper", *report["jobs"]} - ok_before
    after = loras(models_dir)
    assert {p: after[p] for p in trained} == trained                         # nothing retrained or rewritten
    assert len(set(after) - set(before)) == 2                                # one LoRA per person, no more
    # a job caught after its submission (its id in the report) is collected, not submitted again
    for part in ("trainings", "jobs"):
        for j, e in killed[part].items():
            if e["status"] == "submitted":
                assert j in run["attached"] and report[part][j]["job_id"] == e["job_id"]


# ------------------------------------------------------------------------------------------------ Comfy API v2
@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """comfy-api-proxy (Comfy API v2) on 127.0.0.1 in front of the test ComfyUI server."""
    import subprocess
    import sys
    import time
    import urllib.request

    import comfy_server
    from conftest import COMFY_ROOT
    if not comfy_server.is_current_comfyui(COMFY_ROOT):
        pytest.skip("comfy-api-proxy hands ComfyUI the prompt_id of each job; the early-2024 ComfyUI ignores it and "
                    "assigns its own, so the proxy never finds its jobs (ComfyUI 0.33 takes it)")
    for mod in ("comfy_api_proxy", "comfy_sdk"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (tests/requirements.txt)")
    port = comfy_server.free_port()
    log = open(tmp_path_factory.mktemp("proxy") / "proxy.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "comfy_api_proxy.cli", "run", "--comfyui", server.url,
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        try:
            with urllib.request.urlopen(url + "/api/v2/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.time() - t0 < 60, "comfy-api-proxy did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(15)
    log.close()


def proxy_jobs(url) -> list:
    import json
    import urllib.request
    with urllib.request.urlopen(url + "/api/v2/jobs?limit=100", timeout=10) as r:
        return json.load(r)["jobs"]


@pytest.mark.server
def test_batch_over_comfy_api_v2(proxy, server, models_dir, tmp_path, capsys, monkeypatch):
    """The same 2 x 2 batch through Comfy API v2 (comfy-sdk -> comfy-api-proxy -> ComfyUI): uploads as assets, the
    reference as a core/ASSET reference, outputs as assets; a job submitted before a crash is collected, not
    submitted again, and a resend of the same submission is refused by the server (repeat-safe)."""
    import batch
    import batch_manifest
    monkeypatch.setenv("COMFY_BASE_URL", proxy)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    m = make_batch(tmp_path, 6)
    out = str(tmp_path / "batch_output")
    before = loras(models_dir)
    code, _, err = run_batch_cli(capsys, "--batch", m, "--backend", "comfy-api", "--parallel", "2")
    assert code == 0, err
    report = report_of(out)
    check_complete(report, out)
    assert report["backend"] == {"kind": "comfy-api", "targets": [proxy]}
    assert {j["identity_source"] for j in report["jobs"].values()} == {"runner"}       # API v2 returns files only
    assert len(set(loras(models_dir)) - set(before)) == 2
    assert len(proxy_jobs(proxy)) >= 6
    # as if the runner died after submitting collins/nasa: its id is in the report, its files are not there
    import json
    jid = "collins/nasa"
    entry = report["jobs"][jid]
    for f in entry["files"]:
        os.remove(os.path.join(out, f))
    report["jobs"][jid] = {k: entry[k] for k in ("key", "kind", "person", "reference", "backend", "job_id", "attempt")}
    report["jobs"][jid]["status"] = "submitted"
    with open(os.path.join(out, "batch_report.json"), "w") as f:
        json.dump(report, f)
    n_jobs = len(proxy_jobs(proxy))
    code, _, err = run_batch_cli(capsys, "--batch", m, "--backend", "comfy-api")
    assert code == 0, err
    again = report_of(out)
    assert again["this_run"]["attached"] == [jid] and again["this_run"]["rendered"] == [jid]
    assert again["jobs"][jid]["job_id"] == entry["job_id"] and again["jobs"][jid]["status"] == "ok"
    assert len(proxy_jobs(proxy)) == n_jobs                     # collected, not submitted again
    check_complete(again, out)
    # the server refuses a resend of the same submission (same Idempotency-Key)
    task = next(t for t in batch.plan(batch_manifest.load_manifest(m))[1] if t.id == jid)
    backend = batch.ApiV2Backend()
    with pytest.raises(batch.RunnerError, match="already has this submission"):
        backend.submit(task.prompt, task.key, entry["attempt"])
    assert len(proxy_jobs(proxy)) == n_jobs
    # a job that fails: the error names the node and says why, as over /prompt
    import copy
    import time

    import runner
    wall = tmp_path / "refs" / "wall.png"
    Image.new("RGB", (256, 256), (120, 140, 160)).save(wall)
    prompt = copy.deepcopy(task.prompt)
    for nid in runner.nodes_titled(prompt, runner.REFERENCE_TITLE):
        prompt[nid]["inputs"]["image"] = backend.image_input("megaportrait_refs/wall/wall.png", str(wall))
    job_id = backend.submit(prompt, "wall-" + task.key, 0)
    t0 = time.time()
    while (o := backend.poll(job_id, task.save_nodes)).state == "pending" and time.time() - t0 < 120:
        time.sleep(0.2)
    assert o.state == "failed" and o.error.startswith("MegaPortraitFaceCrop (node ") and "no face" in o.error, o


def test_face_similarity_report_parsing():
    import batch
    assert batch.parse_similarity("backend: dlib\nitem 0: distance 0.4200 -> same person\nmean distance 0.4200 "
                                  "(threshold 0.6)") == (0.42, 0.6)
    assert batch.parse_similarity("backend: dlib\nitem 0: no face found\nno face to compare") == (None, None)


def test_bad_manifest_from_the_command_line(tmp_path):
    """tools/runner.py --batch as a script: one error listing every problem with its line, exit code 1, nothing run."""
    import subprocess
    import sys
    path = write_manifest(tmp_path, "people:\n  - name: x\n")
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(EXAMPLES), "tools", "runner.py"), "--batch", path,
                        "--server", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [f"megaportrait: error: the batch manifest {path} has 2 problem(s):",
                                     "  batch.yaml line 1: 'references' is missing: list at least one",
                                     "  batch.yaml line 2: people[0]: 'photos' is missing (a folder, a file or a list "
                                     "of them)"]
    assert not (tmp_path / "batch_output").exists()
