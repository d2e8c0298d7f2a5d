"""Batch runs: N people x M references from one manifest (batch_manifest.py), resumable, on one or several ComfyUI
servers (/prompt) or on Comfy API v2 (Comfy Cloud, a serverless deployment, comfy-api-proxy) through comfy-sdk.

* Each person's identity LoRA is trained once (a train job: the workflow cut down to the trainer and what feeds it,
  with a per-person save name and if_trained = reuse, so a rerun finds the LoRA by the trainer's train-once key and
  trains nothing), then every (person, reference) job runs (the whole workflow; its trainer reuses the LoRA). Over
  /prompt each person's train job and jobs go to one server in that order; over API v2 every train job finishes
  before the jobs start, so no two workers train one person.
* Every job has a content key: a hash of its filled-in workflow, whose inputs name the photos' and the reference's
  upload folders by the hash of their contents. The report (``batch_report.json`` in the output folder) is
  rewritten after every step; a rerun skips the jobs whose key is done and whose files are there, attaches to a
  job that was submitted but not collected (the /prompt id or the API v2 job id is in the report), and runs the
  rest.
* The identity distance of each portrait comes from the pack's own Face Similarity node: the workflow's identity
  check when the back end returns its report (/prompt), else (API v2 returns files) the same node run here on the
  saved portrait against the person's source photos (dlib), while the next job runs.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import importlib
import json
import math
import os
import re
import sys
import threading
import time
import types
import urllib.error
from collections import deque
from dataclasses import dataclass, field

import comfy_server
import runner
from batch_manifest import Manifest, Person, Reference, sets_as_args, training_nodes
from runner import RunnerError

REPORT_NAME = "batch_report.json"
REPORT_FORMAT = 1
TRAINER = "MegaPortraitIdentityLoraTrainer"


# ------------------------------------------------------------------------------------------------- jobs
@dataclass
class Task:
    kind: str                       # "train" or "render"
    person: Person
    reference: Reference | None
    prompt: dict                    # back-end independent: upload names are content-addressed
    key: str
    save_nodes: list[str]
    uploads: list[tuple[str, str]]  # (local file, upload subfolder)
    slot: int = 0

    @property
    def report_nodes(self) -> list[str]:
        """The workflow's own Face Similarity nodes (its identity check of the result)."""
        return runner.nodes_of_type(self.prompt, "MegaPortraitFaceSimilarity") if self.kind == "render" else []

    @property
    def id(self) -> str:
        return self.person.name if self.kind == "train" else f"{self.person.name}/{self.reference.name}"


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def reference_upload(ref: Reference) -> tuple[str, str]:
    """(subfolder, name as the workflow input) of a reference image: a folder named by its content."""
    sub = f"megaportrait_refs/{file_digest(ref.image)}"
    return sub, f"{sub}/{os.path.basename(ref.image)}"


def content_key(kind: str, prompt: dict) -> str:
    return hashlib.sha256(json.dumps({"kind": kind, "prompt": prompt}, sort_keys=True).encode()).hexdigest()[:24]


def person_prompt(m: Manifest, person: Person) -> tuple[dict, str]:
    """The workflow with this person's photos, save name and settings; returns it and the photos' upload folder."""
    p = copy.deepcopy(m.prompt)
    digest = runner.photos_digest(person.photos)
    sub = f"megaportrait_source/{digest}"
    for nid in runner.nodes_of_type(p, "MegaPortraitLoadSourcePhotos"):
        p[nid]["inputs"].update(folder=sub, filenames="")
    for nid in runner.nodes_of_type(p, TRAINER):
        p[nid]["inputs"].update(save_name=f"megaportrait/batch/{person.name}_{digest[:8]}", if_trained="reuse")
    runner.apply_sets(p, sets_as_args(m.sets) + sets_as_args(person.sets))
    return p, sub


def save_nodes(prompt: dict, among: set) -> list[str]:
    return sorted((nid for nid in among if prompt[nid]["class_type"] == "SaveImage"), key=int)


def plan(m: Manifest) -> tuple[list[Task], list[Task]]:
    """(train tasks, render tasks) of a manifest."""
    trains, renders = [], []
    for person in m.people:
        base, photo_sub = person_prompt(m, person)
        keep = training_nodes(base)
        train = {nid: copy.deepcopy(n) for nid, n in base.items() if nid in keep}
        photos = [(f, photo_sub) for f in person.photos]
        trains.append(Task("train", person, None, train, content_key("train", train), save_nodes(train, keep), photos))
        for ref in m.references:
            p = copy.deepcopy(base)
            sub, name = reference_upload(ref)
            for nid in runner.nodes_titled(p, runner.REFERENCE_TITLE):
                p[nid]["inputs"]["image"] = name
            runner.apply_sets(p, sets_as_args(ref.sets))
            renders.append(Task("render", person, ref, p, content_key("render", p), save_nodes(p, set(p) - keep),
                                photos + [(ref.image, sub)]))
    return trains, renders


# ------------------------------------------------------------------------------------------------- back ends
@dataclass
class Outcome:
    state: str                      # "pending", "done", "failed" or "unknown" (the back end does not know the job)
    error: str | None = None
    outputs: list = field(default_factory=list)     # (node id, file name, fetch() -> bytes)
    texts: list = field(default_factory=list)       # the text the report nodes showed, where the back end returns it


class PromptBackend:
    """A ComfyUI server's own API: /upload/image, /prompt, /history, /queue, /view."""
    kind = "prompt"

    def __init__(self, url: str):
        self.client = comfy_server.ComfyClient(url)
        self.name = url
        self._uploaded: set = set()
        self._lock = threading.Lock()

    def check(self, prompts: list[dict]) -> None:
        if not self.client.alive():
            raise RunnerError(f"no ComfyUI server answers at {self.name}")
        for prompt in prompts:
            info = runner.check_nodes(self.client, prompt)
            missing = runner.missing_models(prompt, info)
            if missing:
                raise RunnerError(f"{len(missing)} model file(s) missing on {self.name}:\n"
                                  f"{runner.describe_missing(missing)}\nput them there (or run tools/runner.py "
                                  "--download once with the same workflow)")

    def upload(self, path: str, subfolder: str) -> None:
        with self._lock:
            if (path, subfolder) in self._uploaded:
                return
        runner.upload(self.client, path, subfolder=subfolder)
        with self._lock:
            self._uploaded.add((path, subfolder))

    def image_input(self, name: str, path: str):
        return name

    def submit(self, prompt: dict, key: str, attempt: int) -> str:
        return self.client.queue(prompt)

    def poll(self, job_id: str, nodes: list[str], report_nodes: list[str] = ()) -> Outcome:
        hist = self.client.history(job_id)
        if hist is None:
            code, q = self.client.request("/queue")
            ids = {item[1] for k in ("queue_running", "queue_pending") for item in (q or {}).get(k, []) if len(item) > 1}
            if job_id in ids:
                return Outcome("pending")
            hist = self.client.history(job_id)      # it may have finished between the two requests
            if hist is None:
                return Outcome("unknown")
        err = comfy_server.status_error(hist)
        if err:
            return Outcome("failed", err)
        outs = []
        for nid in nodes:
            for e in ((hist.get("outputs") or {}).get(nid) or {}).get("images", []):
                if e.get("type", "output") == "output":
                    outs.append((nid, e["filename"], lambda e=e: self.client.view(e["filename"], e.get("subfolder", ""))))
        texts = [str(x) for nid in report_nodes for x in ((hist.get("outputs") or {}).get(nid) or {}).get("text", [])]
        return Outcome("done", outputs=outs, texts=texts)


class ApiV2Backend:
    """Comfy API v2 (/api/v2/jobs, /api/v2/assets) through comfy-sdk: Comfy Cloud, a serverless deployment, or
    comfy-api-proxy in front of a ComfyUI. COMFY_BASE_URL and COMFY_API_KEY come from the environment (the SDK's
    rules: no COMFY_BASE_URL means Comfy Cloud, which needs a key)."""
    kind = "comfy-api"

    def __init__(self):
        try:
            import comfy_sdk
        except ImportError as e:
            raise RunnerError("--backend comfy-api needs the comfy-sdk package: pip install comfy-sdk==0.5.0") from e
        self.sdk = comfy_sdk
        try:
            self.client = comfy_sdk.Comfy(timeout=120.0)
        except comfy_sdk.ComfyError as e:
            raise RunnerError(f"Comfy API v2: {e}") from e
        self.name = os.environ.get("COMFY_BASE_URL", "").strip() or "Comfy Cloud"
        self._assets: dict = {}
        self._lock = threading.Lock()

    def check(self, prompts: list[dict]) -> None:
        """API v2 has no /object_info: node types and models are checked by the server when a job is submitted."""

    def upload(self, path: str, subfolder: str):
        """An input asset at input/<subfolder>/<name> (the upload folder the workflow names)."""
        k = (path, subfolder)
        with self._lock:
            if k in self._assets:
                return self._assets[k]
        with open(path, "rb") as f:
            data = f.read()
        asset = self.client.assets.from_bytes(data, filename=f"input/{subfolder}/{os.path.basename(path)}")
        try:
            asset.commit()
        except self.sdk.ComfyError as e:
            raise RunnerError(f"could not upload {path}: {e}") from e
        with self._lock:
            self._assets[k] = asset
        return asset

    def image_input(self, name: str, path: str):
        """LoadImage gets the asset as a core/ASSET reference (the server resolves it to its file)."""
        sub = name.rsplit("/", 1)[0]
        return self.upload(path, sub).as_reference()

    def submit(self, prompt: dict, key: str, attempt: int) -> str:
        """Repeat-safe: the Idempotency-Key is the job's content key and attempt number, so a resend of the same
        submission (a retry after a lost answer) is refused by the server instead of running twice. The runner
        keeps the job id in its report and collects that job; it only submits again (attempt + 1) when the back
        end no longer knows the job."""
        wf = self.client.workflows.from_json(prompt)
        try:
            return self.client.submit(wf, idempotency_key=f"megaportrait-{key}-{attempt}").id
        except self.sdk.IdempotencyKeyReuse as e:
            raise RunnerError(f"Comfy API v2 already has this submission (idempotency key megaportrait-{key}-"
                              f"{attempt}): {e.message}") from e
        except self.sdk.ComfyError as e:
            raise RunnerError(f"Comfy API v2 refused the job: {e}") from e

    def poll(self, job_id: str, nodes: list[str], report_nodes: list[str] = ()) -> Outcome:
        """API v2 returns files: the report nodes' text does not come back (the runner measures the identity)."""
        try:
            job = self.client.jobs.get(job_id)
        except self.sdk.NotFound:
            return Outcome("unknown")
        st = job.status
        if st in ("queued", "running", "canceling"):
            return Outcome("pending")
        if st in ("expired", "unknown"):
            return Outcome("unknown")
        if st != "succeeded":
            err = job.error
            if err is not None:
                get = (lambda k: err.get(k)) if isinstance(err, dict) else (lambda k: getattr(err, k, None))
                msg = f"{get('class_type')} (node {get('node_id')}): {get('message')}" if get("node_id") else str(get("message"))
            else:
                msg = f"the job ended {st}"
            return Outcome("failed", msg)
        outs = [(o.node_id, o.name, o.to_bytes) for o in job.outputs if o.node_id in nodes and o.type == "image"]
        return Outcome("done", outputs=outs)


# ------------------------------------------------------------------------------------------------- identity
class IdentityScorer:
    """The pack's Face Similarity node (dlib backend), run here on the saved portrait and the source photos."""

    def __init__(self):
        self._lock = threading.Lock()
        self._fa = None
        self._error = None
        self._sources: dict = {}

    def _load(self):
        if self._fa is None and self._error is None:
            try:
                fa_mod = _pack_module("face_analysis")
                self._sim = fa_mod.FaceSimilarity()
                self._fa = fa_mod.FaceAnalysisLoader().load("dlib", 0.3, 640)[0]
            except Exception as e:      # no dlib here: the run goes on without scores
                self._error = f"{type(e).__name__}: {e}"
        return self._fa

    def score(self, photos: list[str], portrait: str) -> tuple[float | None, float | None, str]:
        with self._lock:
            fa = self._load()
            if fa is None:
                return None, None, f"identity not measured: {self._error}"
            key = tuple(photos)
            if key not in self._sources:
                self._sources[key] = _image_batch(photos)
            try:
                out = self._sim.compare(fa, self._sources[key], _image_batch([portrait]), on_no_face="report")
            except Exception as e:       # e.g. no face in the source photos: say so in the report
                return None, float(fa.threshold), str(e).splitlines()[0]
            dist, thr, _, text = out["result"]
            return (None if math.isinf(dist) else float(dist)), float(thr), text


SIMILARITY_RE = re.compile(r"mean distance ([0-9.]+) \(threshold ([0-9.]+)\)")


def parse_similarity(text: str) -> tuple[float | None, float | None]:
    """(distance, threshold) from a Face Similarity report; (None, None) when it found no face to compare."""
    m = SIMILARITY_RE.search(text)
    return (float(m[1]), float(m[2])) if m else (None, None)


def _pack_module(name: str):
    """nodes/<name>.py of this repository as a module, without importing every stage (ComfyUI is not needed)."""
    pkg = "megaportrait_batch_pack"
    if pkg not in sys.modules:
        top = types.ModuleType(pkg)
        top.__path__ = [runner.REPO]
        sys.modules[pkg] = top
        sub = types.ModuleType(pkg + ".nodes")
        sub.__path__ = [os.path.join(runner.REPO, "nodes")]
        sys.modules[pkg + ".nodes"] = sub
    return importlib.import_module(f"{pkg}.nodes.{name}")


def _image_batch(paths: list[str]):
    """Images as one [N, H, W, 3] float batch, each padded (black) to the largest size: the faces are unchanged."""
    import numpy as np
    import torch
    from PIL import Image
    arrs = []
    for p in paths:
        with Image.open(p) as im:
            arrs.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    h, w = max(a.shape[0] for a in arrs), max(a.shape[1] for a in arrs)
    out = np.zeros((len(arrs), h, w, 3), np.float32)
    for i, a in enumerate(arrs):
        out[i, :a.shape[0], :a.shape[1]] = a
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------- the run
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class BatchRun:
    def __init__(self, m: Manifest, backends: list, out: str, parallel: int = 1, timeout: float = 6 * 3600.0,
                 log=lambda msg: print(msg, file=sys.stderr), progress: bool = True):
        self.m, self.backends, self.out, self.timeout, self.log = m, backends, out, timeout, log
        # /prompt: one worker per server, each person's jobs on the server that trained it (its LoRA is there);
        # API v2: `parallel` workers on one deployment, jobs in any order (the deployment shares its storage)
        self.affinity = backends[0].kind == "prompt"
        self.slots = backends if self.affinity else backends * max(1, parallel)
        self.report_path = os.path.join(out, REPORT_NAME)
        self.lock = threading.RLock()
        self.scorer = IdentityScorer()
        from concurrent.futures import ThreadPoolExecutor
        self.scorer_pool = ThreadPoolExecutor(1, thread_name_prefix="megaportrait-identity")
        self.progress = progress
        self.stop = threading.Event()
        self.report = self._load_report()

    # -- report
    def _load_report(self) -> dict:
        try:
            with open(self.report_path) as f:
                old = json.load(f)
            if old.get("format") != REPORT_FORMAT:
                old = {}
        except (OSError, ValueError):
            old = {}
        return {"format": REPORT_FORMAT, "manifest": self.m.path, "workflow": self.m.workflow, "out": self.out,
                "backend": {"kind": self.backends[0].kind, "targets": [b.name for b in self.backends]},
                "threshold": self.m.threshold, "started": _now(), "finished": None,
                "trainings": old.get("trainings", {}), "jobs": old.get("jobs", {}),
                "this_run": {"trained": [], "rendered": [], "attached": [], "skipped": [], "failed": []}}

    def save(self) -> None:
        with self.lock:
            os.makedirs(self.out, exist_ok=True)
            tmp = self.report_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.report, f, indent=1, sort_keys=True)
            os.replace(tmp, self.report_path)

    def _entry(self, t: Task) -> dict | None:
        return (self.report["trainings"] if t.kind == "train" else self.report["jobs"]).get(t.id)

    def _set(self, t: Task, entry: dict) -> None:
        with self.lock:
            (self.report["trainings"] if t.kind == "train" else self.report["jobs"])[t.id] = entry
            self.save()

    def is_done(self, t: Task) -> bool:
        e = self._entry(t)
        return bool(e and e.get("key") == t.key and e.get("status") == "ok"
                    and all(os.path.isfile(os.path.join(self.out, f)) for f in e.get("files", [])))

    # -- one task
    def _folder(self, t: Task) -> str:
        return os.path.join(t.person.name, "_training" if t.kind == "train" else t.reference.name)

    def run_task(self, t: Task, backend) -> dict:
        t0 = time.time()
        base = {"key": t.key, "kind": t.kind, "person": t.person.name, "backend": backend.name}
        if t.kind == "render":
            base["reference"] = t.reference.name
        prev = self._entry(t)
        job_id, attempt, attached = None, 0, False
        if prev and prev.get("key") == t.key and prev.get("job_id") and prev.get("backend") == backend.name:
            attempt = prev.get("attempt", 0)
            if prev.get("status") == "submitted":
                job_id, attached = prev["job_id"], True     # submitted before a crash: collect it, do not resubmit
        try:
            outcome = None
            if job_id is not None:
                outcome = self._wait(backend, job_id, t)
                if outcome.state == "unknown":        # the back end forgot it (restart, expiry): run it again
                    job_id, attached, attempt = None, False, attempt + 1
            if job_id is None:
                prompt = copy.deepcopy(t.prompt)
                for path, sub in t.uploads:
                    backend.upload(path, sub)
                if t.reference is not None:
                    sub, name = reference_upload(t.reference)
                    value = backend.image_input(name, t.reference.image)
                    for nid in runner.nodes_titled(prompt, runner.REFERENCE_TITLE):
                        prompt[nid]["inputs"]["image"] = value
                job_id = backend.submit(prompt, t.key, attempt)
                self._set(t, dict(base, status="submitted", job_id=job_id, attempt=attempt, submitted=_now()))
                outcome = self._wait(backend, job_id, t)
            if outcome.state != "done":
                raise RunnerError(outcome.error or f"the job was lost by {backend.name}")
            files = []
            folder = os.path.join(self.out, self._folder(t))
            os.makedirs(folder, exist_ok=True)
            for _, name, fetch in outcome.outputs:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(fetch())
                files.append(os.path.join(self._folder(t), name))
            entry = dict(base, status="ok", job_id=job_id, attempt=attempt, files=files,
                         seconds=round(time.time() - t0, 2), finished=_now())
            if outcome.texts:
                entry["_server_report"] = outcome.texts[-1]
        except (RunnerError, comfy_server.ServerError, urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            entry = dict(base, status="failed", error=str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                         job_id=job_id, attempt=attempt, seconds=round(time.time() - t0, 2), finished=_now())
        except Exception as e:      # an SDK error or anything unforeseen fails this job, not the batch
            entry = dict(base, status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                         job_id=job_id, attempt=attempt, seconds=round(time.time() - t0, 2), finished=_now())
        entry["attached"] = attached
        if self.stop.is_set() and entry["status"] != "ok":
            return dict(entry, status="interrupted")    # the report keeps "submitted": a rerun collects the job
        if not (t.kind == "render" and entry["status"] == "ok"):
            self._set(t, entry)          # a render is recorded done with its identity distance (see _phase)
        return entry

    def _wait(self, backend, job_id: str, t: Task) -> Outcome:
        t0, delay, unknown_once = time.time(), 0.1, False
        while time.time() - t0 < self.timeout:
            if self.stop.is_set():
                raise RunnerError("interrupted")
            o = backend.poll(job_id, t.save_nodes, t.report_nodes)
            if o.state == "unknown" and not unknown_once:
                unknown_once = True       # a job between queue and history can look unknown for a moment: ask again
            elif o.state != "pending":
                return o
            else:
                unknown_once = False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        raise TimeoutError(f"job {job_id} did not finish in {self.timeout:.0f} s")

    def _identity(self, t: Task, files: list[str], server_report: str | None = None) -> dict:
        """The identity distance: from the workflow's own Face Similarity node when the back end returned its report
        (/prompt), else from the same node run here on the saved portrait and the person's source photos."""
        if not files:
            return {"identity_distance": None, "flagged": True, "identity_report": "no portrait was saved"}
        if server_report is not None:
            dist, thr = parse_similarity(server_report)
            text, source = server_report, "workflow"
        else:
            dist, thr, text = self.scorer.score(t.person.photos, os.path.join(self.out, files[-1]))
            source = "runner"
        threshold = self.m.threshold or thr
        return {"portrait": files[-1], "identity_distance": dist, "identity_threshold": threshold,
                "flagged": dist is None or (threshold is not None and dist >= threshold), "identity_report": text,
                "identity_source": source}

    # -- phases
    def _phase(self, tasks: list[Task], bar, blocked: dict) -> None:
        queues = [deque() for _ in self.slots]
        for i, t in enumerate(tasks):
            queues[(t.slot if self.affinity else i) % len(self.slots)].append(t)
        shared = not self.affinity

        def worker(i):
            q = queues[i]
            while not self.stop.is_set():
                t = self._pop_any(queues) if shared else (q.popleft() if q else None)
                if t is None:
                    return
                if t.kind == "render" and t.person.name in blocked:
                    entry = {"key": t.key, "kind": "render", "person": t.person.name, "reference": t.reference.name,
                             "status": "failed", "error": f"the identity LoRA of {t.person.name} was not trained: "
                                                          f"{blocked[t.person.name]}", "backend": None, "finished": _now()}
                    self._record(t, entry, bar)
                    continue
                entry = self.run_task(t, self.slots[i])
                if entry["status"] == "interrupted":
                    return
                if t.kind == "render" and entry["status"] == "ok":
                    # the identity check runs here while this worker's next job runs on the server
                    scoring.append(self.scorer_pool.submit(self._score_and_record, t, entry, bar))
                else:
                    self._record(t, entry, bar, blocked)

        scoring: list = []
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(self.slots))]
        for th in threads:
            th.start()
        for th in threads:
            while th.is_alive():
                th.join(0.2)
        for fut in scoring:
            while not fut.done():
                time.sleep(0.05)
            fut.result()

    def _record(self, t: Task, entry: dict, bar, blocked: dict | None = None) -> None:
        with self.lock:
            (self.report["trainings"] if t.kind == "train" else self.report["jobs"])[t.id] = entry
            r = self.report["this_run"]
            if entry["status"] == "ok":
                (r["trained"] if t.kind == "train" else r["rendered"]).append(t.id)
                if entry.get("attached"):
                    r["attached"].append(t.id)
            else:
                r["failed"].append(t.id)
                if t.kind == "train" and blocked is not None:
                    blocked[t.person.name] = entry["error"]
            self.save()
        if bar is not None:
            bar.set_postfix_str(f"{t.id}: {entry['status']}", refresh=False)
            bar.update(1)

    def _score_and_record(self, t: Task, entry: dict, bar) -> None:
        try:
            entry.update(self._identity(t, entry["files"], entry.pop("_server_report", None)))
        except Exception as e:      # a scoring failure is reported, never fatal to the batch
            entry.update(identity_distance=None, flagged=True, identity_report=f"identity check failed: {e}")
        self._record(t, entry, bar)

    def _pop_any(self, queues):
        with self.lock:
            for q in queues:
                if q:
                    return q.popleft()
        return None

    def run(self, trains: list[Task], renders: list[Task]) -> dict:
        names = [b.name for b in self.backends]
        for i, person in enumerate(self.m.people):
            done_on = (self.report["trainings"].get(person.name) or {}).get("backend")
            slot = names.index(done_on) if done_on in names else i      # where its LoRA is, if it was trained before
            for t in trains + renders:
                if t.person is person:
                    t.slot = slot
        for b in self.backends:
            b.check([trains[0].prompt, renders[0].prompt])
        with self.lock:        # people or references no longer in the manifest leave the report
            for kind, tasks in (("trainings", trains), ("jobs", renders)):
                ids = {t.id for t in tasks}
                self.report[kind] = {k: v for k, v in self.report[kind].items() if k in ids}
        todo_t = [t for t in trains if not self.is_done(t)]
        todo_r = [t for t in renders if not self.is_done(t)]
        skipped = [t.id for t in trains + renders if t not in todo_t and t not in todo_r]
        self.report["this_run"]["skipped"] = skipped
        self.save()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(trains) + len(renders), initial=len(skipped), unit="job", desc="batch",
                       file=sys.stderr, dynamic_ncols=True)
        blocked: dict = {}
        try:
            if self.affinity:
                # /prompt: a person's training and jobs all go to one server, in this order (its LoRA is trained
                # before its jobs and stays in ComfyUI's cache while they run)
                self._phase([t for p in self.m.people for t in todo_t + todo_r if t.person is p], bar, blocked)
            else:
                self._phase(todo_t, bar, blocked)      # API v2: every LoRA first, so no two workers train one person
                self._phase(todo_r, bar, blocked)
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            if bar is not None:
                bar.close()
            with self.lock:
                self.report["finished"] = _now()
                self.report["summary"] = summarize(self.report)
                self.save()
        return self.report


def summarize(report: dict) -> dict:
    jobs = report["jobs"].values()
    return {"jobs": len(report["jobs"]), "ok": sum(j["status"] == "ok" for j in jobs),
            "failed": sum(j["status"] == "failed" for j in jobs),
            "flagged": sum(bool(j.get("flagged")) for j in jobs if j["status"] == "ok"),
            "trainings_ok": sum(t["status"] == "ok" for t in report["trainings"].values())}


def backends_from(args) -> list:
    if args.backend == "comfy-api":
        if args.server:
            raise RunnerError("--backend comfy-api takes its address from COMFY_BASE_URL (and COMFY_API_KEY), not --server")
        return [ApiV2Backend()]
    return [PromptBackend(u) for u in dict.fromkeys(args.server)]


def run_batch(args, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """tools/runner.py --batch MANIFEST: returns the report."""
    import batch_manifest
    import contact_sheet
    m = batch_manifest.load_manifest(args.batch)
    for item in getattr(args, "set", None) or []:     # --set adds to the manifest's batch-wide settings
        k, _, v = item.partition("=")
        m.sets[k] = runner.parse_value(v)
    out = os.path.abspath(args.out) if args.out else m.out
    trains, renders = plan(m)
    server = None
    if args.backend == "prompt" and not args.server:
        args.smoke = args.smoke or m.smoke
        server = runner.start_server(args, log)
        args.server = [server.url]
    try:
        run = BatchRun(m, backends_from(args), out, parallel=args.parallel, timeout=args.timeout, log=log)
        log(f"batch: {len(m.people)} people x {len(m.references)} references on {', '.join(b.name for b in run.backends)}"
            f" -> {out}")
        report = run.run(trains, renders)
    finally:
        if server is not None:
            server.cleanup()
    html, png = contact_sheet.write(report, out, m)
    s = report["summary"]
    r = report["this_run"]
    log(f"batch done: {s['ok']}/{s['jobs']} jobs ok, {s['failed']} failed, {s['flagged']} flagged; this run trained "
        f"{len(r['trained'])}, rendered {len(r['rendered'])}, skipped {len(r['skipped'])} done before")
    for jid, j in sorted(report["jobs"].items()):
        if j["status"] == "failed":
            log(f"  failed {jid}: {j['error']}")
    log(f"report: {os.path.join(out, REPORT_NAME)}\ncontact sheet: {html} ({os.path.basename(png)})")
    return report
