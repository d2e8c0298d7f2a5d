"""A second device on a CPU-only machine, for the tests: tensors that say they are elsewhere and refuse the CPU.

On a GPU, ComfyUI can hand a node IMAGEs on the GPU (VAE Decode under ``--gpu-only``); a node that makes a tensor
on the CPU and combines it with its input then fails with "Expected all tensors to be on the same device". On a
CPU-only test machine every tensor is on the CPU and such a mistake cannot show. This module makes it show:

* :class:`Elsewhere` wraps a CPU tensor and reports the ``meta`` device (so ``x.device.type != "cpu"``: code takes
  its accelerator path), while computing on the real CPU data underneath;
* :func:`other_device` is the context in which they work: an op that combines an ``Elsewhere`` tensor with a
  plain CPU tensor of one element or more raises the same error as CUDA would (0-dim CPU tensors are allowed,
  as CUDA allows them); ``.to(x.device)``, factories with ``device=x.device`` (``torch.zeros``, ``torch.tensor``,
  ...) make ``Elsewhere`` tensors; ``.cpu()`` / ``.to("cpu")`` is an explicit move and gives a plain CPU tensor;
  ``.copy_`` across the two is allowed (as across CUDA and the CPU); ``.numpy()`` refuses, as on CUDA.

So a test runs a node on ``to_other(image)``: any CPU tensor the node makes silently and mixes with its input
raises, and the outputs can be checked to be on the input's device (``is_other``) and equal to a CPU run.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

OTHER = torch.device("meta")
# ops that may take tensors of both devices (copies between devices), as on CUDA
CROSS_DEVICE = {"copy_", "_to_copy", "_copy_from", "_copy_from_and_resize", "lift_fresh", "lift_fresh_copy"}


class Elsewhere(torch.Tensor):
    """A CPU tensor that reports the :data:`OTHER` device (see the module's doc)."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.size(), strides=inner.stride(),
                                                   storage_offset=inner.storage_offset(), dtype=inner.dtype,
                                                   device=OTHER, requires_grad=False)

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    def __repr__(self):
        return f"Elsewhere({self.inner!r})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _wrap_new(t):
    return Elsewhere(t) if isinstance(t, torch.Tensor) and not isinstance(t, Elsewhere) else t


def _target_device(args, kwargs):
    """The device an op makes its result on, when it names one (factories, ``to``, ``_to_copy``)."""
    dev = kwargs.get("device")
    if dev is None:
        dev = next((a for a in args if isinstance(a, torch.device)), None)
    return None if dev is None else torch.device(dev)


def _dispatch(func, args, kwargs):
    name = func.overloadpacket.__name__
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    here = [t for t in tensors if isinstance(t, Elsewhere)]
    target = _target_device(args, kwargs)
    if here and name not in CROSS_DEVICE and target is None:
        cpu = [t for t in tensors if not isinstance(t, Elsewhere) and t.dim() > 0]
        if cpu:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{OTHER} (the test's other device) and {cpu[0].device}! (in {func}, a tensor of shape "
                               f"{tuple(cpu[0].shape)} on the CPU)")
    uargs, ukwargs = tree_map(lambda t: t.inner if isinstance(t, Elsewhere) else t, (args, kwargs))
    if target is not None:
        uargs = tuple(torch.device("cpu") if isinstance(a, torch.device) else a for a in uargs)
        if "device" in ukwargs:
            ukwargs = dict(ukwargs, device=torch.device("cpu"))
        out = func(*uargs, **ukwargs)
        if target == OTHER:                                             # made on / moved to the other device
            return tree_map(_wrap_new, out)
        inners = {id(t.inner) for t in here}                            # an explicit move to the CPU: a copy,
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and id(t) in inners else t, out)
    out = func(*uargs, **ukwargs)
    if not here:                                                        # CPU-only ops
        return out
    inners = {id(t.inner): t for t in here}                             # in-place ops return their (wrapped) input

    def wrap(t):
        if not isinstance(t, torch.Tensor):
            return t
        w = inners.get(id(t))
        return w if w is not None else Elsewhere(t)
    return tree_map(wrap, out)


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class _Factories(TorchFunctionMode):
    """``torch.tensor(..., device=OTHER)`` and the like fill their data in C++ below the dispatcher: made on the CPU
    here and wrapped. ``tolist()`` copies and ``numpy()`` refuses, as on CUDA."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if dev is not None and not isinstance(dev, int) and torch.device(dev) == OTHER:
            return tree_map(_wrap_new, func(*args, **dict(kwargs, device="cpu")))
        if func is torch.Tensor.tolist and isinstance(args[0], Elsewhere):
            return args[0].inner.tolist()
        if func is torch.Tensor.numpy and isinstance(args[0], Elsewhere):       # CUDA's error
            raise TypeError(f"can't convert {OTHER} (the test's other device) tensor to numpy. Use Tensor.cpu() to "
                            "copy the tensor to host memory first.")
        return func(*args, **kwargs)


@contextlib.contextmanager
def other_device():
    """The context in which :class:`Elsewhere` tensors behave as tensors on another device (see the module)."""
    with _Factories(), _Dispatch():
        yield


def to_other(t: torch.Tensor) -> torch.Tensor:
    """A copy of the CPU tensor ``t`` on the other device."""
    return Elsewhere(t.detach().clone())


def is_other(t) -> bool:
    return isinstance(t, Elsewhere)


def to_cpu(t: torch.Tensor) -> torch.Tensor:
    """The CPU data of ``t`` (an Elsewhere tensor's, or ``t`` itself)."""
    return t.inner.clone() if isinstance(t, Elsewhere) else t
