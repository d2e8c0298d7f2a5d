"""A minimal headless-Chromium driver over the DevTools protocol (websocket-client only), for testing the ComfyUI
web frontend with the shipped workflows. Uses Debian's chromium (/usr/bin/chromium) or $CHROMIUM."""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request


def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


class Browser:
    def __init__(self, width: int = 1800, height: int = 1100):
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("no chromium found (Debian package 'chromium')")
        self.profile = tempfile.mkdtemp(prefix="mp-chromium-")
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        t0 = time.time()
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if time.time() - t0 > 60 or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as f:
                    pages = [p for p in json.load(f) if p.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() - t0 > 30:
                self.close()
                raise RuntimeError("chromium has no page target")
            time.sleep(0.1)
        import websocket
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.ids = itertools.count(1)
        self.console: list = []
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))

    def navigate(self, url: str, timeout: float = 60) -> None:
        self.call("Page.navigate", url=url)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.eval("document.readyState") == "complete":
                return
            time.sleep(0.2)
        raise TimeoutError(url)

    def eval(self, expression: str, await_promise: bool = False):
        res = self.call("Runtime.evaluate", expression=expression, awaitPromise=await_promise, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page error: {res['exceptionDetails'].get('exception', {}).get('description', res)}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 90) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if self.eval(expression):
                    return
            except RuntimeError:
                pass
            time.sleep(0.25)
        raise TimeoutError(expression)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
