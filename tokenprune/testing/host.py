"""What a selector call costs the host: reads from the device, blocking copies to it, operations issued.

On a GPU at batch 1 a selector call is bound by the host: each operation is a kernel launch, and a
read from the device (``.tolist()``, ``.item()``, ``bool(t)``, ``int(t)``) or a blocking copy of host
data to it waits until the device has finished everything queued before it. The two recorders here
see both on any device, so a CPU test can bound what a GPU call will cost::

    with HostTraffic() as traffic, Operations() as ops:
        selector(visual, prompt=prompt, budget=0.1)
    assert traffic.reads == ["tolist"] and not traffic.blocking_copies
    print(ops.total, ops.ops.most_common(5))

tokenprune's own selectors read the device once per call without masks (the result check, which
also checks that the inputs were finite), and once more when masks are given, for all of them (see
``tests/test_host_cost.py``).
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["READS", "HostTraffic", "Operations"]

READS = frozenset(
    {
        "tolist", "item", "__bool__", "__int__", "__float__", "__index__", "__format__", "numpy",
        # results whose size depends on the values: the device says how many before the host can allocate
        "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive",
    }
)  # fmt: skip
"""Tensor methods that return host values, or results sized by the values: each waits for the device.
Also reads: ``torch.where(condition)`` with one argument, indexing with a bool tensor, and
``repeat_interleave`` with a tensor of repeats and no ``output_size``."""


class HostTraffic(TorchFunctionMode):
    """Records, in order, reads of tensors into host values and blocking copies of host data to a device.

    Attributes:
        reads: the name of each reading call (one of :data:`READS`).
        where: for each read, ``path:line`` of the code that made it (the innermost frame outside
            torch), e.g. ``".../tokenprune/selector.py:322"``.
        blocking_copies: each ``torch.tensor(..., device=...)`` / ``torch.as_tensor(..., device=...)``,
            and each ``Tensor.to(device)`` without ``non_blocking=True``. On a CPU-only machine these
            copy nothing; on a GPU each would wait for the device.
        async_copies: each ``Tensor.to(device, non_blocking=True)``. It does not wait, but a CUDA
            graph cannot capture a copy of host memory it does not own (:func:`tokenprune.graphed`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.where: list[str] = []
        self.blocking_copies: list[str] = []
        self.async_copies: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in READS or _sized_by_values(name, args, kwargs):
            self.reads.append(name)
            self.where.append(_caller())
        elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            self.blocking_copies.append(f"torch.{name}(..., device=...)")
        elif (name == "to" and _names_device(args[1:], kwargs)) or name == "cuda":
            non_blocking = bool(kwargs.get("non_blocking", False))
            copies = self.async_copies if non_blocking else self.blocking_copies
            copies.append(_COPY_LABELS[name, non_blocking])
        return func(*args, **kwargs)


_COPY_LABELS = {
    ("to", False): "Tensor.to(device)",
    ("to", True): "Tensor.to(device, non_blocking=True)",
    ("cuda", False): "Tensor.cuda()",
    ("cuda", True): "Tensor.cuda(non_blocking=True)",
}


def _sized_by_values(name: str, args: tuple, kwargs: dict) -> bool:
    """Calls outside :data:`READS` whose result size the device decides: the host waits for it."""
    if name == "where":
        return len(args) + len(kwargs) == 1  # torch.where(condition): nonzero
    if name == "__getitem__" and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    if name == "repeat_interleave" and len(args) > 1:
        return isinstance(args[1], torch.Tensor) and kwargs.get("output_size") is None
    return False


def _caller() -> str:
    """``path:line`` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith("tokenprune/testing/host.py"):
            return f"{path}:{frame.lineno}"
    return "?"


def _names_device(args: tuple, kwargs: dict) -> bool:
    """A ``.to`` that may move data: a device given (not None), or another tensor (its device)."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(arg, torch.device | str | torch.Tensor) for arg in args)


class Operations(TorchDispatchMode):
    """Counts the operations issued that do work on a device (views, which launch nothing, excluded).

    Attributes:
        ops: count per ATen operator name, e.g. ``{"sort": 3, "bmm": 1, ...}``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        if not func.is_view:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Operations issued in all."""
        return sum(self.ops.values())
