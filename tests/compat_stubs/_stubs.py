"""Stand-ins for torchvision/torchaudio, used only when running the test suite against a current ComfyUI
checkout on a CPU machine (current ComfyUI imports them at start-up; PyPI has no CPU build of them for this
torch). Any attribute resolves to a placeholder that raises when called."""
import sys
import types


class _Missing:
    def __init__(self, name):
        self._name = name

    def __call__(self, *a, **k):
        raise NotImplementedError(f"{self._name} is a test stand-in (torchvision/torchaudio are not installed)")

    def __getattr__(self, n):
        if n.startswith("__"):
            raise AttributeError(n)
        return _Missing(self._name + "." + n)

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, n):
        if n.startswith("__"):
            raise AttributeError(n)
        return _Missing(f"{self.__name__}.{n}")


def install(package: str, submodules: tuple) -> None:
    pkg = sys.modules[package]
    pkg.__class__ = _StubModule
    pkg.__version__ = "0.0.0+stub"
    for sub in submodules:
        full = f"{package}.{sub}"
        mod = _StubModule(full)
        mod.__path__ = []
        sys.modules[full] = mod
        parent, _, leaf = full.rpartition(".")
        setattr(sys.modules[parent], leaf, mod)
