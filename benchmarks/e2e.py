"""End-to-end cost of pruning inside real transformers VLM architectures, beside the ideal.

For each model family (random weights; the real LLaVA-1.5-7B / LLaVA-NeXT-7B / Qwen2.5-VL-7B sizes
with ``--size real``, scaled-down stand-ins with the real visual-token geometry with ``--size small``;
``qwen2_5_vl_video`` is Qwen2.5-VL given a 16-frame 448 px video, 2048 tokens; ``smolvlm`` is SmolVLM, real size
SmolVLM-256M, given a 4 x 4 grid of tiles and the global tile, 1088 tokens, written apart with their tags),
each method and each keep ratio it measures, median over repeats:

* selection ms (the selector alone, from the session statistics);
* prefill ms: ``generate(max_new_tokens=1)`` under :func:`tokenprune.apply`;
* end-to-end ms: prefill + ``--new-tokens`` decoded tokens under :func:`tokenprune.apply`;
* peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS, reset between runs);

and beside each, the **ideal**: the same model given an input that already holds only K visual
tokens per image (vision encoding included, no selection, no input rewrite). ``pruned / ideal`` is
what tokenprune adds; the targets on a GPU are <= 1.03 for time and memory.

The two arms run the same language model on sequences of the same length, so a noisy host moves both.
The benchmark therefore also reports:

* the **paired ratio**: the arms alternate within each repeat (which one goes first alternates too),
  each repeat gives one ratio, and the ratio is their geometric mean with a 95% t-interval over the
  repeats' log-ratios;
* the **added** ms: tokenprune's own work before the language model (finding the image spans,
  selecting, rewriting the input), timed alone ``--direct-repeats`` times on the already encoded
  images. ``added / ideal`` is what tokenprune adds to the end-to-end time, measured without the
  noise of decoding.

The time target is **met** when the interval lies at or below 1.03, **missed** when it lies above, and
otherwise not settled by the end-to-end times (the added share then says by how much it would be met).

    python benchmarks/e2e.py                         # small stand-ins, every family, CPU or GPU
    python benchmarks/e2e.py --size real --device cuda --families llava
    python benchmarks/e2e.py --size real --device cuda --cache static   # decoding compiled (CUDA graphs)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
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
from scipy import stats as scipy_stats

import tokenprune
from tokenprune.integrations import get_adapter, prune_inputs
from tokenprune.integrations.base import encode
from tokenprune.stages import Stride

TARGET = 1.03  # pruned / ideal, time and peak memory (the target on a GPU)

IMAGE, VISION_START, VISION_END, VIDEO = 900, 901, 902, 903  # placeholder ids inside the vocabularies built below
FAKE, GLOBAL, NEWLINE, ROW_COL = 904, 905, 906, 910  # SmolVLM's tile markers: <row_i_col_j> is ROW_COL + 6 (i-1) + j-1


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
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    return _instantiate(Qwen2_5_VLForConditionalGeneration, config, device, dtype)


def build_smolvlm(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    """SmolVLM: SigLIP tiles, pixel shuffle, a Llama LM. ``real``: SmolVLM-256M (512 px tiles of 16 px patches,
    shuffled 4 x 4: 64 tokens a tile; SmolLM2-135M); ``small``: 256 px tiles shuffled 2 x 2, the same 64 tokens a
    tile, and the small stand-ins' LM."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    if size == "real":
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=512, patch_size=16)  # fmt: skip
        text = dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3)  # fmt: skip
        scale = 4
    else:
        vision = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      image_size=256, patch_size=16)  # fmt: skip
        text, scale = _llama(size), 2
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=dict(model_type="llama", **text, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        scale_factor=scale,
        image_token_id=IMAGE,
    )
    return _instantiate(SmolVLMForConditionalGeneration, config, device, dtype)


# --- inputs -----------------------------------------------------------------------------------


def _rows(prefix: list[int], n_image: list[int], suffix: list[int], wrap: bool, token: int = IMAGE) -> list[list[int]]:
    around = ([VISION_START], [VISION_END]) if wrap else ([], [])
    return [[*prefix, *around[0], *([token] * n), *around[1], *suffix] for n in n_image]


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
    if family == "smolvlm":  # a 4 x 4 grid of tiles and the global tile, 64 tokens each: 1088, as for a 2048 px image
        tile, size = model.model.image_seq_len, model.config.vision_config.image_size
        image: list[int] = []
        for i in range(4):
            for j in range(4):
                image += [FAKE, ROW_COL + 6 * i + j, *([IMAGE] * tile)]
            image.append(NEWLINE)
        image += [NEWLINE, FAKE, GLOBAL, *([IMAGE] * tile), FAKE]
        inputs = _pad_left([[*prefix, *image, *suffix]] * batch, device)
        pixels = torch.randn(batch, 17, 3, size, size, generator=g).to(device, dtype)
        return {**inputs, "pixel_values": pixels}
    if family == "qwen2_5_vl_video":
        grid = torch.tensor([[8, 32, 32]] * batch)  # 16 frames of 448 x 448 px, 2 s apart: 2048 merged tokens
        patches = int(grid.prod(-1).sum())
        pixels = torch.randn(patches, 3 * 2 * 14 * 14, generator=g).to(device, dtype)
        inputs = _pad_left(_rows(prefix, [2048] * batch, suffix, wrap=True, token=VIDEO), device)
        inputs["mm_token_type_ids"] = 2 * (inputs["input_ids"] == VIDEO).long()
        seconds = torch.full((batch,), 2.0, device=device)
        return {
            **inputs,
            "pixel_values_videos": pixels,
            "video_grid_thw": grid.to(device),
            "second_per_grid_ts": seconds,
        }
    raise ValueError(family)


BUILDERS: dict[str, Callable[[str, torch.device, torch.dtype], Any]] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen2_5_vl_video": build_qwen2_5_vl,  # the same model, given a video
    "smolvlm": build_smolvlm,
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


def paired_ratio(values: list[float], ideal: list[float]) -> dict[str, Any]:
    """Geometric mean of the per-repeat ratios ``values[i] / ideal[i]``, with a 95% t-interval.

    The interval is over the log-ratios (Student's t, ``n - 1`` degrees of freedom); with one repeat it
    is ``None``.
    """
    if len(values) != len(ideal) or not values:
        raise ValueError(f"need paired, non-empty times; got {len(values)} and {len(ideal)}")
    logs = [math.log(v / i) for v, i in zip(values, ideal, strict=True)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return {"ratio": math.exp(mean), "low": None, "high": None, "n": 1}
    half = scipy_stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return {"ratio": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half), "n": len(logs)}


def time_verdict(ratio: dict[str, Any], target: float = TARGET) -> str:
    """``met`` (the interval at or below ``target``), ``missed`` (above it) or ``not settled``."""
    if ratio["high"] is None:
        return "not settled"
    if ratio["high"] <= target:
        return "met"
    if ratio["low"] > target:
        return "missed"
    return "not settled"


def make_selector(spec: str) -> tokenprune.Selector:
    """A registered method by name; ``NAME+graph`` is ``tokenprune.graphed`` of it (CUDA graphs)."""
    name, graph = (spec[: -len("+graph")], True) if spec.endswith("+graph") else (spec, False)
    selector = tokenprune.create_method(name)
    if graph and not selector.capturable:
        raise ValueError(f"{name} cannot be captured in a CUDA graph, so {spec} does not exist")
    return tokenprune.graphed(selector) if graph else selector


def _encoded_adapter(model: Any, inputs: dict[str, Any], scores: str | None, merge: bool = False) -> Any:
    """An adapter of ``model`` whose ``encode_images`` returns the images of ``inputs``, encoded once."""
    adapter = get_adapter(model)
    with torch.inference_mode():
        images = encode(adapter.encode_images, inputs, scores=scores, merge=merge)
    adapter.encode_images = lambda _inputs, *, scores=None, merge=False: images  # this adapter instance only
    return adapter


def added_ms(
    model: Any, inputs: dict[str, Any], selector: tokenprune.Selector, keep: float, repeats: int, meter: Meter
) -> list[float]:
    """Times of tokenprune's own work before the LM (layout, selection, input rewrite), images pre-encoded."""
    source = selector.score_source if "scores" in selector.requires else None
    adapter = _encoded_adapter(model, inputs, source, merge=selector.merges)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        times.append(meter.run(lambda: prune_inputs(adapter, selector, keep, inputs))[0])
    return times[1:]


def measure(
    family: str, model: Any, inputs: dict[str, Any], method: str, keep: float, args: argparse.Namespace
) -> dict[str, Any]:
    meter = Meter(args.device)
    selector = make_selector(method)  # one object for every call, so a graphed one replays its graphs
    cache = {"cache_implementation": "static"} if args.cache == "static" else {}
    if args.cache == "static" and args.no_compile:
        cache["disable_compile"] = True
    gen = {"do_sample": False, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, **cache}
    first = {"do_sample": False, "max_new_tokens": 1, **cache}
    adapter = get_adapter(model)
    with torch.inference_mode():
        ideal = prune_inputs(adapter, Stride(), keep, inputs).kwargs  # K tokens per image, chosen in advance
    if "pixel_values_videos" in inputs:
        encoder = model.model.get_video_features
        encode_args = {k: inputs[k] for k in ("pixel_values_videos", "video_grid_thw")}
    else:
        encoder = model.model.get_image_features
        encode_args = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes", "image_grid_thw")}

    def generate(kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        # transformers sizes a static cache for the longest call the model has seen; each arm gets its own
        model.__dict__.pop("_previous_max_cache_length", None)
        return model.generate(**kwargs, **options)

    def ideal_call(options: dict[str, Any]) -> Callable[[], Any]:
        def call() -> Any:
            encoder(**encode_args)  # the vision tower runs in both arms
            return generate(ideal, options)

        return call

    def pruned_arm() -> tuple[float, ...]:
        with tokenprune.apply(model, selector, budget=keep) as session:
            pre, _ = meter.run(lambda: generate(inputs, first))
            selection = session.last.selection_ms
            e2e, mem = meter.run(lambda: generate(inputs, gen))
        return selection, pre, e2e, mem, session.last.visual_after

    def ideal_arm() -> tuple[float, ...]:
        i_pre, _ = meter.run(ideal_call(first))
        i_e2e, i_mem = meter.run(ideal_call(gen))
        return i_pre, i_e2e, i_mem

    rows: dict[str, list[Any]] = {key: [] for key in ("sel", "pre", "e2e", "mem", "i_pre", "i_e2e", "i_mem")}
    for repeat in range(args.warmup + args.repeats):  # the arms alternate, and so does which goes first
        if repeat % 2:
            ideal_times = ideal_arm()
            *pruned_times, kept = pruned_arm()
        else:
            *pruned_times, kept = pruned_arm()
            ideal_times = ideal_arm()
        if repeat >= args.warmup:
            for key, value in zip(rows, (*pruned_times, *ideal_times), strict=True):
                rows[key].append(value)
    inside_lm = selector.prune_layer is not None
    added = None if inside_lm else added_ms(model, inputs, selector, keep, args.direct_repeats, meter)
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
        "prefill_paired": paired_ratio(rows["pre"], rows["i_pre"]),
        "e2e_paired": paired_ratio(rows["e2e"], rows["i_e2e"]),
        "added_ms": None if added is None else _median(added),
        "raw": {**rows, "added": added},
    }
    for key, ideal_key in (("prefill", "ideal_prefill"), ("e2e", "ideal_e2e")):
        result[f"{key}_ratio"] = result[f"{key}_ms"] / result[f"{ideal_key}_ms"]
    result["added_share"] = None if added is None else result["added_ms"] / result["ideal_e2e_ms"]
    if None not in rows["mem"] and None not in rows["i_mem"]:
        result["peak_mem_mb"] = max(rows["mem"])
        result["ideal_peak_mem_mb"] = max(rows["i_mem"])
        result["mem_ratio"] = result["peak_mem_mb"] / result["ideal_peak_mem_mb"]
    result["verdict"] = verdict(result, inside_lm)
    return result


def verdict(result: dict[str, Any], inside_lm: bool) -> dict[str, str]:
    """The targets for one row: time (paired interval), memory; ``n/a`` where they do not apply."""
    if result["keep"] >= 1.0:
        return {"time": "n/a (nothing pruned)", "memory": "n/a (nothing pruned)"}
    if inside_lm:  # its first layers run on every token by design: the ideal of pre-LM pruning is not its own
        return {"time": "n/a (prunes inside the LM)", "memory": "n/a (prunes inside the LM)"}
    memory = result.get("mem_ratio")
    return {
        "time": time_verdict(result["e2e_paired"]),
        "memory": "n/a (not measured)" if memory is None else ("met" if memory <= TARGET else "missed"),
    }


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
        "direct_repeats": args.direct_repeats,
        "cache": args.cache,
        "compiled_decoding": args.cache == "static" and not args.no_compile and device.type == "cuda",
        "target": TARGET,
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }


def _interval(paired: dict[str, Any]) -> str:
    if paired["low"] is None:
        return f"{paired['ratio']:.3f}"
    return f"{paired['ratio']:.3f} [{paired['low']:.3f}, {paired['high']:.3f}]"


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'family':<16} {'method':<11} {'keep':>5} {'K':>5} {'sel ms':>8} {'added ms':>9} {'prefill':>9} "
        f"{'ideal':>9} {'ratio':>6} {'e2e ms':>9} {'ideal':>9} {'paired e2e / ideal [95% CI]':>28} "
        f"{'added/ideal':>11} {'mem MB':>8} {'ratio':>6} {'e2e vs 100%':>11}"
    )
    print(header)
    print("-" * len(header))
    full = {(r["family"], r["method"]): r["e2e_ms"] for r in results if r["keep"] == 1.0}
    nan = float("nan")
    for r in results:
        speedup = full.get((r["family"], r["method"]))
        added, share = r["added_ms"], r["added_share"]
        print(
            f"{r['family']:<16} {r['method']:<11} {r['keep']:>5.2f} {r['visual_tokens_kept'][0]:>5} "
            f"{r['selection_ms']:>8.2f} {nan if added is None else added:>9.2f} {r['prefill_ms']:>9.1f} "
            f"{r['ideal_prefill_ms']:>9.1f} {r['prefill_ratio']:>6.3f} {r['e2e_ms']:>9.1f} {r['ideal_e2e_ms']:>9.1f} "
            f"{_interval(r['e2e_paired']):>28} {'-' if share is None else f'{share:.2%}':>11} "
            f"{r.get('peak_mem_mb', nan):>8.0f} {r.get('mem_ratio', nan):>6.3f} "
            f"{(speedup / r['e2e_ms'] if speedup else nan):>10.2f}x"
        )


def print_verdicts(results: list[dict[str, Any]]) -> bool:
    """One line per pruned row and target; False if a target was missed."""
    print(f"\nTargets: end-to-end time and peak memory within {TARGET - 1:.0%} of the ideal")
    missed = False
    for r in results:
        time, memory = r["verdict"]["time"], r["verdict"]["memory"]
        if time.startswith("n/a"):
            continue
        missed |= "missed" in (time, memory)
        added = f"; tokenprune's own work {r['added_ms']:.2f} ms = {r['added_share']:.2%} of the ideal"
        print(
            f"  {r['family']} {r['method']} keep={r['keep']}: time {time.upper()} "
            f"(paired e2e / ideal {_interval(r['e2e_paired'])}{added}), memory {memory.upper()}"
            + ("" if r.get("mem_ratio") is None else f" ({r['mem_ratio']:.3f})")
        )
    return not missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(BUILDERS))
    parser.add_argument(
        "--methods", default="zspa", help="registered methods; NAME+graph: tokenprune.graphed(NAME), on CUDA"
    )
    parser.add_argument("--keep", default="1.0,0.5,0.3,0.1")
    parser.add_argument("--size", choices=("small", "real"), default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--direct-repeats", type=int, default=20, help="timed calls of tokenprune's own work alone (the added ms)"
    )
    parser.add_argument(
        "--cache",
        choices=("dynamic", "static"),
        default="dynamic",
        help="static: a static KV cache, and transformers compiles the decoding step on a GPU (CUDA graphs)",
    )
    parser.add_argument("--no-compile", action="store_true", help="with --cache static: decode without compiling")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the shared CI machines are noisy)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.direct_repeats < 1:
        parser.error(
            f"--repeats and --direct-repeats must be >= 1 and --warmup >= 0; got {args.repeats}, "
            f"{args.direct_repeats} and {args.warmup}"
        )

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
    try:
        inside = [m for m in methods if make_selector(m).prune_layer is not None]
    except (ValueError, TypeError, LookupError) as error:
        parser.error(f"--methods: {error}")
    if args.cache == "static" and inside:
        parser.error(
            f"--cache static cannot run {', '.join(inside)}: pruning inside the LM leaves layers with caches of "
            f"different lengths, which a static cache cannot hold; use --cache dynamic for them"
        )

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
                    f"[e2e] {family} {method} keep={keep}: {r['e2e_ms']:.1f} ms, ideal {r['ideal_e2e_ms']:.1f} ms; "
                    f"paired {_interval(r['e2e_paired'])}, memory ratio {r.get('mem_ratio', float('nan')):.3f}",
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
    met = print_verdicts(results)
    out.write_text(json.dumps({"metadata": meta, "results": results, "complete": True}, indent=2))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0 if met or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
