"""Headless MegaPortrait runner: drive a ComfyUI server with the shipped API workflows.

    python workflows/tools/runner.py --reference ref.jpg --source a.jpg b.jpg ... --out out/
        [--server http://127.0.0.1:8188 | --comfyui /path/to/ComfyUI] [--workflow NAME]

It uploads the images (/upload/image), fills the API workflow (nodes are found by their titles), queues it,
shows progress from the websocket and downloads the outputs into --out. With --comfyui (default: the host
ComfyUI that workflows/tools/setup_env.sh prepared) it starts a server on 127.0.0.1 for the run and stops it
afterwards. Exit code 0 on success; otherwise one line on stderr that says what went wrong.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import urllib.error

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
import comfy_server  # noqa: E402

REPO = comfy_server.REPO
API_DIR = os.path.join(REPO, "workflows", "api")
DEFAULT_HOST = os.path.join(REPO, ".host", "ComfyUI")
REFERENCE_TITLE = "Reference portrait"


class RunnerError(RuntimeError):
    """A failure with a one-line explanation for the user."""


def available_workflows() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(API_DIR) if f.endswith(".json"))


def load_workflow(name: str) -> dict:
    path = name if name.endswith(".json") and os.path.isfile(name) else os.path.join(API_DIR, name + ".json")
    if not os.path.isfile(path):
        raise RunnerError(f"no workflow {name!r}; shipped: {', '.join(available_workflows())}")
    with open(path) as f:
        return json.load(f)


def nodes_titled(prompt: dict, title: str) -> list[str]:
    return [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == title]


def fill_workflow(prompt: dict, reference: str | None) -> dict:
    prompt = copy.deepcopy(prompt)
    if reference is not None:
        ids = nodes_titled(prompt, REFERENCE_TITLE)
        if not ids:
            raise RunnerError(f"the workflow has no node titled {REFERENCE_TITLE!r} to put the reference image in")
        for nid in ids:
            prompt[nid]["inputs"]["image"] = reference
    return prompt


def check_nodes(client: comfy_server.ComfyClient, prompt: dict) -> dict:
    try:
        info = client.object_info()
    except (urllib.error.URLError, OSError, comfy_server.ServerError) as e:
        raise RunnerError(f"cannot reach the ComfyUI server at {client.base}: {e}") from e
    missing = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in info})
    if missing:
        mp = [m for m in missing if m.startswith("MegaPortrait")]
        if mp:
            raise RunnerError(f"the server at {client.base} does not have the MegaPortrait nodes ({', '.join(mp)}): "
                              "install this pack into its custom_nodes/ folder and restart it")
        raise RunnerError(f"the server at {client.base} lacks node types {', '.join(missing)}")
    return info


class Progress:
    """A one-line text progress bar fed by the websocket events."""

    def __init__(self, prompt: dict, stream=sys.stderr):
        self.prompt, self.stream = prompt, stream
        self.done: set[str] = set()
        self.total = len(prompt)
        self.current = ""
        self.tty = stream.isatty()

    def __call__(self, typ: str, data: dict) -> None:
        if typ == "executing" and data.get("node") is not None:
            node = str(data["node"])
            self.done.add(node)
            n = self.prompt.get(node, {})
            self.current = (n.get("_meta") or {}).get("title") or n.get("class_type", node)
            self._show("")
        elif typ == "execution_cached":
            self.done.update(str(n) for n in data.get("nodes", []))
        elif typ == "progress":
            self._show(f" step {data.get('value')}/{data.get('max')}")

    def _show(self, extra: str) -> None:
        frac = min(len(self.done) / max(self.total, 1), 1.0)
        bar = "#" * int(frac * 30)
        line = f"[{bar:<30}] {len(self.done)}/{self.total} {self.current}{extra}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def run(args) -> list[str]:
    prompt = load_workflow(args.workflow)
    server = None
    if args.server:
        client = comfy_server.ComfyClient(args.server)
        if not client.alive():
            raise RunnerError(f"no ComfyUI server answers at {args.server}")
    else:
        root = args.comfyui or DEFAULT_HOST
        if not os.path.isfile(os.path.join(root, "main.py")):
            raise RunnerError(f"no ComfyUI at {root}: pass --server URL or --comfyui PATH "
                              "(or run workflows/tools/setup_env.sh to prepare the host copy)")
        extra_args = ["--cpu"] if args.cpu else []
        server = comfy_server.ComfyServer(root, extra_args=extra_args)
        print(f"starting ComfyUI from {root} on {server.url} ...", file=sys.stderr)
        server.start()
        client = server.client
    try:
        check_nodes(client, prompt)
        reference = None
        if args.reference:
            if not os.path.isfile(args.reference):
                raise RunnerError(f"reference image not found: {args.reference}")
            try:
                reference = client.upload_image(args.reference)["name"]
            except comfy_server.ServerError as e:
                raise RunnerError(f"could not upload {args.reference}: {e}") from e
        prompt = fill_workflow(prompt, reference)
        progress = Progress(prompt)
        t0 = time.time()
        try:
            hist = client.run_with_progress(prompt, progress, timeout=args.timeout)
        except comfy_server.ServerError as e:
            raise RunnerError(str(e).splitlines()[0]) from e
        finally:
            progress.close()
        err = comfy_server.status_error(hist)
        if err:
            raise RunnerError(f"the workflow failed in {err}")
        os.makedirs(args.out, exist_ok=True)
        saved = []
        for entry in comfy_server.outputs_of(hist):
            if entry.get("type", "output") != "output":
                continue
            data = client.view(entry["filename"], entry.get("subfolder", ""), "output")
            dest = os.path.join(args.out, entry["filename"])
            with open(dest, "wb") as f:
                f.write(data)
            saved.append(dest)
        print(f"done in {time.time() - t0:.1f} s: {len(saved)} file(s) in {args.out}", file=sys.stderr)
        return saved
    finally:
        if server is not None:
            server.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", default="megaportrait_maps",
                    help="shipped API workflow name or a path to an API-format JSON "
                         f"(shipped: {', '.join(available_workflows())})")
    ap.add_argument("--reference", default=os.path.join(REPO, "example_inputs", "grace_hopper.jpg"),
                    help="reference portrait (pose, lighting, style)")
    ap.add_argument("--source", nargs="*", default=[os.path.join(REPO, "example_inputs", "astronaut.png")],
                    help="photos of the person whose identity goes into the portrait")
    ap.add_argument("--out", default=os.path.join(os.getcwd(), "megaportrait_output"), help="where outputs are saved")
    ap.add_argument("--server", help="URL of a running ComfyUI server (with this pack installed)")
    ap.add_argument("--comfyui", help="path of a ComfyUI to start for this run (default: the host copy in .host/)")
    ap.add_argument("--cpu", action="store_true", help="start the server with --cpu")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the workflow")
    args = ap.parse_args(argv)
    try:
        for f in run(args):
            print(f)
    except RunnerError as e:
        print(f"megaportrait: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("megaportrait: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
