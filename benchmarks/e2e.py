"""End-to-end cost of pruning inside real transformers VLM architectures, beside the ideal.

For each model family (random weights; the real LLaVA-1.5-7B / LLaVA-NeXT-7B / Qwen2.5-VL-7B sizes
with ``--size real``, scaled-down stand-ins with the real visual-token geometry with ``--size small``),
each method and each keep ratio it measures, median over repeats:

* selection ms (the selector alone, from the session statistics);
* prefill ms: ``generate(max_new_tokens=1)`` under :func:`tokenprune.apply`;
* end-to-end ms: prefill + ``--new-tokens`` decoded tokens under :func:`tokenprune.apply`;
* peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS, reset between runs);

and beside each, the **ideal**: the same model given an input that already holds only K visual
tokens per image (vision encoding included, no selection, no input rewrite). ``pruned / ideal`` is
what tokenprune adds; the targets on a GPU are <= 1.03 for time and memory.

    python benchmarks/e2e.py                         # small stand-ins, every family, CPU or GPU
    python benchmarks/e2e.py --size real --device cuda --families llava
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import tokenprune
from tokenprune.integrations import get_adapter, prune_inputs
from tokenprune.stages import Stride

IMAGE, VISION_START, VISION_END = 900, 901, 902  # placeholder ids inside the vocabularies built below


# --- models -----------------------------------------------------------------------------------


def _llama(size: str) -> dict[str, Any]:
    if size == "real":  # Vicuna-7B
        return dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32)  # fmt: skip
    return dict(vocab_size=1024, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=8)  # fmt: skip


def _clip(size: str) -> dict[str, Any]:
    geometry = dict(image_size=336, patch_size=14)  # 576 patches, as CLIP ViT-L/14-336
    if size == "real":
        return dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, **geometry)
    return dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, **geometry)


def _instantiate(cls: Any, config: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Random weights made directly on ``device`` in ``dtype`` (a 7B model never exists in float32 on the host)."""
    with torch.device(device):
        return cls._from_config(config, dtype=dtype).eval()


def build_llava(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_clip(size)),
        text_config=LlamaConfig(**_llama(size), bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_id=IMAGE,
        image_seq_length=576,
    )
    return _instantiate(LlavaForConditionalGeneration, config, device, dtype)


def build_llava_next(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_clip(size)),
        text_config=LlamaConfig(**_llama(size), bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_id=IMAGE,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    )
    return _instantiate(LlavaNextForConditionalGeneration, config, device, dtype)


def build_qwen2_5_vl(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if size == "real":
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4)  # fmt: skip
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584)
        mrope = [16, 24, 24]
    else:
        text = dict(vocab_size=1024, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2)  # fmt: skip
        vision = dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512)
        mrope = [8, 12, 12]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **text,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            **vision,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision["depth"] // 2 - 1, vision["depth"] - 1],
        ),
        image_token_id=IMAGE,
        video_token_id=903,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    return _instantiate(Qwen2_5_VLForConditionalGeneration, config, device, dtype)


# --- inputs -----------------------------------------------------------------------------------


def _rows(prefix: list[int], n_image: list[int], suffix: list[int], wrap: bool) -> list[list[int]]:
    around = ([VISION_START], [VISION_END]) if wrap else ([], [])
    return [[*prefix, *around[0], *([IMAGE] * n), *around[1], *suffix] for n in n_image]


def _pad_left(rows: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def make_inputs(family: str, model: Any, batch: int, device: torch.device) -> dict[str, Any]:
    """A batch of one image per row with a 48-token question (ids from a seeded generator)."""
    g = torch.Generator().manual_seed(0)
    prefix = [1, *torch.randint(3, 800, (12,), generator=g).tolist()]
    suffix = torch.randint(3, 800, (36,), generator=g).tolist()
    dtype = next(model.parameters()).dtype
    if family == "llava":
        pixels = torch.randn(batch, 3, 336, 336, generator=g)
        inputs = _pad_left(_rows(prefix, [576] * batch, suffix, wrap=False), device)
        return {**inputs, "pixel_values": pixels.to(device, dtype)}
    if family == "llava_next":
        sizes = torch.tensor([[672, 672]] * batch)  # 4 tiles + base: 2928 packed tokens with newlines
        pixels = torch.randn(batch, 5, 3, 336, 336, generator=g).to(device, dtype)
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=pixels, image_sizes=sizes.to(device)).pooler_output
        inputs = _pad_left(_rows(prefix, [f.shape[0] for f in feats], suffix, wrap=False), device)
        return {**inputs, "pixel_values": pixels, "image_sizes": sizes.to(device)}
    if family == "qwen2_5_vl":
        grid = torch.tensor([[1, 48, 48]] * batch)  # 672 x 672 px: 576 merged tokens
        patches = int(grid.prod(-1).sum())
        pixels = torch.randn(patches, 3 * 2 * 14 * 14, generator=g).to(device, dtype)
        inputs = _pad_left(_rows(prefix, [576] * batch, suffix, wrap=True), device)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == IMAGE).long()
        return {**inputs, "pixel_values": pixels, "image_grid_thw": grid.to(device)}
    raise ValueError(family)


BUILDERS: dict[str, Callable[[str, torch.device, torch.dtype], Any]] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "qwen2_5_vl": build_qwen2_5_vl,
}


# --- measurement ------------------------------------------------------------------------------


class Meter:
    """Wall time and peak memory of a call, synchronized on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):  # Linux: writing 5 resets this process's peak RSS (VmHWM)
                Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def run(self, call: Callable[[], Any]) -> tuple[float, float | None]:
        self.reset()
        start = time.perf_counter()
        with torch.inference_mode():
            call()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) * 1e3, self.peak_mb()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def measure(
    family: str, model: Any, inputs: dict[str, Any], method: str, keep: float, args: argparse.Namespace
) -> dict[str, Any]:
    meter = Meter(args.device)
    gen = {"do_sample": False, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    first = {"do_sample": False, "max_new_tokens": 1}
    adapter = get_adapter(model)
    with torch.inference_mode():
        ideal = prune_inputs(adapter, Stride(), keep, inputs).kwargs  # K tokens per image, chosen in advance
    encode_args = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes", "image_grid_thw")}

    def ideal_call(kwargs: dict[str, Any]) -> Callable[[], Any]:
        def call() -> Any:
            model.model.get_image_features(**encode_args)  # the vision tower runs in both arms
            return model.generate(**ideal, **kwargs)

        return call

    rows: dict[str, list[Any]] = {key: [] for key in ("sel", "pre", "e2e", "mem", "i_pre", "i_e2e", "i_mem")}
    for repeat in range(args.warmup + args.repeats):  # the arms alternate, so drift hits both alike
        with tokenprune.apply(model, method, budget=keep) as session:
            pre, _ = meter.run(lambda: model.generate(**inputs, **first))
            selection = session.last.selection_ms
            e2e, mem = meter.run(lambda: model.generate(**inputs, **gen))
            kept = session.last.visual_after
        i_pre, _ = meter.run(ideal_call(first))
        i_e2e, i_mem = meter.run(ideal_call(gen))
        if repeat >= args.warmup:
            for key, value in zip(rows, (selection, pre, e2e, mem, i_pre, i_e2e, i_mem), strict=True):
                rows[key].append(value)
    result = {
        "family": family,
        "method": method,
        "keep": keep,
        "visual_tokens_kept": kept,
        "selection_ms": _median(rows["sel"]),
        "prefill_ms": _median(rows["pre"]),
        "e2e_ms": _median(rows["e2e"]),
        "ideal_prefill_ms": _median(rows["i_pre"]),
        "ideal_e2e_ms": _median(rows["i_e2e"]),
        "raw": rows,
    }
    for key, ideal_key in (("prefill", "ideal_prefill"), ("e2e", "ideal_e2e")):
        result[f"{key}_ratio"] = result[f"{key}_ms"] / result[f"{ideal_key}_ms"]
    if None not in rows["mem"] and None not in rows["i_mem"]:
        result["peak_mem_mb"] = max(rows["mem"])
        result["ideal_peak_mem_mb"] = max(rows["i_mem"])
        result["mem_ratio"] = result["peak_mem_mb"] / result["ideal_peak_mem_mb"]
    return result


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    device = args.device
    return {
        "commit": commit,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "tokenprune": tokenprune.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "size": args.size,
        "dtype": str(args.dtype),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'family':<11} {'method':<9} {'keep':>5} {'K':>5} {'sel ms':>8} {'prefill':>9} {'ideal':>9} {'ratio':>6} "
        f"{'e2e ms':>9} {'ideal':>9} {'ratio':>6} {'mem MB':>8} {'ratio':>6} {'e2e vs 100%':>11}"
    )
    print(header)
    print("-" * len(header))
    full = {(r["family"], r["method"]): r["e2e_ms"] for r in results if r["keep"] == 1.0}
    for r in results:
        speedup = full.get((r["family"], r["method"]))
        print(
            f"{r['family']:<11} {r['method']:<9} {r['keep']:>5.2f} {r['visual_tokens_kept'][0]:>5} "
            f"{r['selection_ms']:>8.2f} {r['prefill_ms']:>9.1f} {r['ideal_prefill_ms']:>9.1f} "
            f"{r['prefill_ratio']:>6.3f} "
            f"{r['e2e_ms']:>9.1f} {r['ideal_e2e_ms']:>9.1f} {r['e2e_ratio']:>6.3f} "
            f"{r.get('peak_mem_mb', float('nan')):>8.0f} {r.get('mem_ratio', float('nan')):>6.3f} "
            f"{(speedup / r['e2e_ms'] if speedup else float('nan')):>10.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(BUILDERS))
    parser.add_argument("--methods", default="zspa")
    parser.add_argument("--keep", default="1.0,0.5,0.3,0.1")
    parser.add_argument("--size", choices=("small", "real"), default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the shared CI machines are noisy)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(args.device)
    if args.device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.dtype = {"auto": torch.bfloat16 if args.device.type == "cuda" else torch.float32}.get(
        args.dtype, getattr(torch, str(args.dtype), None)
    )
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in BUILDERS]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(BUILDERS)}")
    keeps = [float(k) for k in args.keep.split(",")]
    methods = [m for m in args.methods.split(",") if m]

    out = args.json or Path("benchmarks/results") / f"e2e-{args.device.type}-{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(args)
    results = []
    for family in families:
        torch.manual_seed(0)
        start = time.perf_counter()
        model = BUILDERS[family](args.size, args.device, args.dtype)
        print(f"[e2e] {family}: model built in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        inputs = make_inputs(family, model, args.batch, args.device)
        for method in methods:
            for keep in keeps:
                results.append(measure(family, model, inputs, method, keep, args))
                r = results[-1]
                print(
                    f"[e2e] {family} {method} keep={keep}: e2e {r['e2e_ms']:.1f} ms / ideal {r['ideal_e2e_ms']:.1f} ms "
                    f"= {r['e2e_ratio']:.3f}, memory ratio {r.get('mem_ratio', float('nan')):.3f}",
                    file=sys.stderr,
                    flush=True,
                )
                # rewritten after every measurement, so an interrupted run keeps what it measured
                out.write_text(json.dumps({"metadata": meta, "results": results, "complete": False}, indent=2))
        del model, inputs
        gc.collect()
        if args.device.type == "cuda":
            torch.cuda.empty_cache()

    print_table(results)
    out.write_text(json.dumps({"metadata": meta, "results": results, "complete": True}, indent=2))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
