"""Where a method's time goes on CUDA: wall time, host time, GPU kernels and host syncs of one call.

    python benchmarks/profile_cuda.py                  # zspa, zspa+graph, divprune, relevance: N=576,2880, D=4096, B=1
    python benchmarks/profile_cuda.py --methods zspa --n 576 --batch 8

Per method and N it prints the median wall time of a synchronized call, how long the host took to
return from the call, the number of GPU kernels and copies with their summed GPU time (from
``torch.profiler``), and the host syncs inside the call (``torch.cuda.set_sync_debug_mode``). When the
host time is close to the wall time and the GPU time far below it, the call is bound by the host
issuing kernels, not by the GPU. For zspa the profiler's table of the costliest GPU operations follows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import tokenprune
from tokenprune.functional import _triton


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def profile_call(name: str, n: int, d: int, batch: int, repeats: int) -> None:
    device = torch.device("cuda")
    graph = name.endswith("+graph")  # the method replayed as a CUDA graph (tokenprune.graphed)
    method = tokenprune.create_method(name.removesuffix("+graph"))
    method = tokenprune.graphed(method) if graph else method
    g = torch.Generator().manual_seed(0)
    visual = torch.randn(batch, n, d, generator=g).to(device)
    prompt = torch.randn(batch, 32, d, generator=g).to(device)
    kwargs = {"prompt": prompt} if "prompt" in method.requires else {}
    k = max(1, round(n / 10))

    def call() -> None:
        method(visual, budget=k, **kwargs)

    for _ in range(5):
        call()
    walls, host = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        returned = time.perf_counter()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e3)
        host.append((returned - start) * 1e3)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as syncs:
        warnings.simplefilter("always")
        call()
    torch.cuda.set_sync_debug_mode(0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.device_time for e in kernels) / 1e3
    print(
        f"\n== {name} N={n} D={d} B={batch} K={k}: wall median {statistics.median(walls):.3f} ms "
        f"(min {min(walls):.3f}), host returns after {statistics.median(host):.3f} ms, "
        f"{len(kernels)} GPU kernels/copies summing {gpu_ms:.3f} ms, {len(syncs)} host syncs"
    )
    if name in ("zspa", "zspa+graph"):
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="zspa,zspa+graph,divprune,relevance")
    parser.add_argument("--n", type=_ints, default=[576, 2880])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device; torch.cuda.is_available() is False on this machine")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; Triton fill kernel in use: "
          f"{_triton.available(torch.device('cuda'))}")  # fmt: skip
    for name in args.methods.split(","):
        for n in args.n:
            profile_call(name, n, args.d, args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
