"""Smoke tests of the benchmarks: selection.py's --quick path on a tiny grid, and e2e.py on one small
family, in a few seconds each; and the statistics e2e.py's verdicts rest on."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    path = BENCHMARKS / f"{name}.py"
    if not path.exists():
        pytest.skip(f"benchmarks/{name}.py is not in this checkout")
    spec = importlib.util.spec_from_file_location(f"tokenprune_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    module = _load("selection")
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def e2e():
    module = _load("e2e")
    yield module
    sys.modules.pop(module.__name__, None)


def test_quick_run_writes_expected_json(bench, tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "results" / "selection.json"
    try:
        status = bench.main(
            ["--quick", "--n", "64", "--d", "32", "--batch", "1,2", "--warmup", "0", "--json", str(out), "--quiet"]
        )
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    results = json.loads(out.read_text())
    assert {"meta", "grid", "sanity", "measurements", "checks", "complete"} <= results.keys()
    meta = results["meta"]
    for key in ("git_commit", "torch_version", "device_name", "cpu_model", "threads", "python_version", "timestamp"):
        assert key in meta
    assert meta["threads"] == 1
    assert results["complete"] is True
    assert results["sanity"]["agree"], results["sanity"]["mismatches"]
    assert results["grid"]["n"] == [64] and results["grid"]["d"] == [32] and results["grid"]["batch"] == [1, 2]

    methods = set(results["grid"]["methods"]) | {bench.BASELINE}
    rows = results["measurements"]
    assert {(m["method"], m["batch"]) for m in rows} == {(name, b) for name in methods for b in (1, 2)}
    for m in rows:
        for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s", "per_image_s", "times_s", "loop_over_method"):
            assert key in m
        assert m["n"] == 64 and m["d"] == 32 and m["k"] == 6 and m["repeats"] == 1
        assert m["per_image_s"] == pytest.approx(m["median_s"] / m["batch"])
        assert (m["batch_scaling"] is not None) == (m["batch"] == 2)
    assert any(c["name"] == "divprune speedup vs loop" for c in results["checks"])
    stdout = capsys.readouterr().out
    assert "divprune-loop" in stdout and "Targets:" in stdout
    summary = bench.summary_table(rows).splitlines()
    assert len(summary) == 2 + 2  # header, rule, one row per (N, D, B)
    assert bench.main(["--report", str(out), "--table", "markdown"]) == 0  # re-render a saved run


def test_baseline_matches_divprune(bench):
    import tokenprune

    visual = bench.make_inputs(80, 16, 3, seed=7, dtype=torch.float64)["visual"]
    ours = tokenprune.create_method("divprune")(visual, budget=9)
    reference = bench.divprune_loop(visual, 9)
    assert reference.shape == (3, 9) and reference.dtype == torch.int64
    assert torch.equal(ours, torch.sort(reference, dim=1).values)
    # float32 inputs run too, and keep distinct tokens
    single = bench.divprune_loop_single(visual[0].float(), 9)
    assert single.unique().numel() == 9


def test_e2e_run_writes_paired_ratios_added_time_and_verdicts(e2e, tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "e2e.json"
    argv = ["--families", "llava", "--methods", "zspa,fastv", "--keep", "0.5", "--repeats", "2", "--warmup", "0"]
    argv += ["--new-tokens", "2", "--direct-repeats", "2", "--json", str(out)]
    try:
        assert e2e.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    run = json.loads(out.read_text())
    assert run["complete"] is True
    meta = run["metadata"]
    assert meta["cache"] == "dynamic" and meta["compiled_decoding"] is False and meta["target"] == 1.03
    rows = {(r["method"], r["keep"]): r for r in run["results"]}
    assert set(rows) == {("zspa", 0.5), ("fastv", 0.5)}
    for (method, _keep), r in rows.items():
        assert len(r["raw"]["e2e"]) == len(r["raw"]["i_e2e"]) == 2
        paired = r["e2e_paired"]
        ratios = [a / b for a, b in zip(r["raw"]["e2e"], r["raw"]["i_e2e"], strict=True)]
        assert paired["n"] == 2 and paired["ratio"] == pytest.approx((ratios[0] * ratios[1]) ** 0.5)
        assert paired["low"] <= paired["ratio"] <= paired["high"]
        assert r["visual_tokens_kept"] == [288]
        if method == "fastv":  # pruning inside the LM: no pre-LM work to time, and no ideal of its own
            assert r["added_ms"] is None and r["verdict"]["time"].startswith("n/a")
        else:
            assert len(r["raw"]["added"]) == 2 and r["added_ms"] > 0
            assert r["added_share"] == pytest.approx(r["added_ms"] / r["ideal_e2e_ms"])
    unpruned = e2e.verdict({**rows[("zspa", 0.5)], "keep": 1.0}, inside_lm=False)
    assert unpruned == {"time": "n/a (nothing pruned)", "memory": "n/a (nothing pruned)"}
    assert rows[("zspa", 0.5)]["verdict"]["time"] in ("met", "missed", "not settled")
    assert rows[("zspa", 0.5)]["verdict"]["memory"] in ("met", "missed")
    stdout = capsys.readouterr().out
    assert "paired e2e / ideal [95% CI]" in stdout
    assert "llava zspa keep=0.5: time " in stdout and "llava fastv keep=0.5" not in stdout


def test_paired_ratio_is_a_geometric_mean_with_a_t_interval(e2e):
    from scipy import stats

    values, ideal = [110.0, 99.0, 104.0, 120.0], [100.0, 100.0, 100.0, 100.0]
    logs = [math.log(v / i) for v, i in zip(values, ideal, strict=True)]
    mean, sd = sum(logs) / 4, statistics.stdev(logs)
    half = stats.t.ppf(0.975, 3) * sd / 2
    paired = e2e.paired_ratio(values, ideal)
    assert paired["ratio"] == pytest.approx(math.exp(mean))
    assert (paired["low"], paired["high"]) == pytest.approx((math.exp(mean - half), math.exp(mean + half)))
    assert e2e.paired_ratio([5.0], [4.0]) == {"ratio": 1.25, "low": None, "high": None, "n": 1}
    with pytest.raises(ValueError, match="need paired, non-empty times; got 2 and 1"):
        e2e.paired_ratio([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [
        (0.98, 1.02, "met"),
        (1.0, 1.03, "met"),
        (1.01, 1.05, "not settled"),
        (1.031, 1.2, "missed"),
        (None, None, "not settled"),
    ],
)
def test_the_time_target_is_met_or_missed_only_when_the_interval_says_so(e2e, low, high, verdict):
    assert e2e.time_verdict({"ratio": 1.0, "low": low, "high": high}) == verdict


def test_e2e_with_a_static_cache(e2e, tmp_path, capsys):
    """Both arms decode with a static cache, each sized for its own call; FastV cannot, and is refused."""
    threads = torch.get_num_threads()
    out = tmp_path / "e2e.json"
    argv = ["--families", "llava", "--keep", "0.5", "--repeats", "1", "--warmup", "0", "--new-tokens", "2"]
    try:
        assert e2e.main([*argv, "--direct-repeats", "1", "--cache", "static", "--json", str(out)]) == 0
        with pytest.raises(SystemExit) as refused:
            e2e.main([*argv, "--methods", "zspa,fastv", "--cache", "static"])
    finally:
        torch.set_num_threads(threads)
    run = json.loads(out.read_text())
    assert run["metadata"]["cache"] == "static"
    (row,) = run["results"]
    assert row["e2e_paired"]["n"] == 1 and row["verdict"]["time"] == "not settled"
    assert refused.value.code == 2
    assert "--cache static cannot run fastv" in capsys.readouterr().err


def test_e2e_method_specs(e2e, capsys):
    import tokenprune

    assert isinstance(e2e.make_selector("zspa+graph"), tokenprune.graphs.Graphed)
    assert e2e.make_selector("divprune") == tokenprune.create_method("divprune")
    with pytest.raises(ValueError, match=r"random cannot be captured in a CUDA graph, so random\+graph does not exist"):
        e2e.make_selector("random+graph")
    with pytest.raises(SystemExit) as refused:
        e2e.main(["--methods", "zspa,nosuch", "--families", "llava"])
    assert refused.value.code == 2 and "--methods: " in capsys.readouterr().err


def test_a_missed_target_is_printed_and_fails_strict_runs(e2e, capsys):
    row = {
        "family": "llava",
        "method": "zspa",
        "keep": 0.1,
        "e2e_paired": {"ratio": 1.10, "low": 1.05, "high": 1.15, "n": 4},
        "added_ms": 30.0,
        "added_share": 0.1,
        "mem_ratio": 1.0,
    }
    row["verdict"] = e2e.verdict(row, inside_lm=False)
    assert row["verdict"] == {"time": "missed", "memory": "met"}
    assert e2e.print_verdicts([row]) is False
    out = capsys.readouterr().out
    assert "llava zspa keep=0.1: time MISSED (paired e2e / ideal 1.100 [1.050, 1.150]" in out
    assert "tokenprune's own work 30.00 ms = 10.00% of the ideal), memory MET (1.000)" in out
    met = {**row, "e2e_paired": {"ratio": 1.0, "low": 0.99, "high": 1.01, "n": 4}}
    met["verdict"] = e2e.verdict(met, inside_lm=False)
    assert e2e.print_verdicts([met]) is True


def test_e2e_prunes_a_video_beside_its_ideal(e2e, tmp_path):
    """qwen2_5_vl_video: the same Qwen2.5-VL given one video, pruned across its frames; its ideal encodes the
    video too (inputs shrunk here so the smoke test stays fast)."""
    small = e2e.make_inputs

    def make_inputs(family, model, batch, device):
        inputs = small(family, model, batch, device)
        if family == "qwen2_5_vl_video":  # 2 temporal patches of 8 x 8: 32 tokens instead of 2048
            grid = torch.tensor([[2, 8, 8]] * batch)
            ids = inputs["input_ids"][:, inputs["input_ids"][0] != e2e.VIDEO]
            at = int((ids[0] == e2e.VISION_START).nonzero()[0, 0]) + 1
            ids = torch.cat([ids[:, :at], torch.full((batch, 32), e2e.VIDEO), ids[:, at:]], dim=1)
            inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids), video_grid_thw=grid)
            inputs["mm_token_type_ids"] = 2 * (ids == e2e.VIDEO).long()
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"][: int(grid.prod(-1).sum())]
        return inputs

    threads = torch.get_num_threads()
    out = tmp_path / "e2e.json"
    argv = ["--families", "qwen2_5_vl_video", "--methods", "zspa", "--keep", "0.25", "--repeats", "2"]
    argv += ["--warmup", "0", "--new-tokens", "2", "--direct-repeats", "2", "--json", str(out)]
    e2e.make_inputs = make_inputs
    try:
        assert e2e.main(argv) == 0
    finally:
        e2e.make_inputs = small
        torch.set_num_threads(threads)
    (row,) = json.loads(out.read_text())["results"]
    assert row["family"] == "qwen2_5_vl_video" and row["visual_tokens_kept"] == [8]
    assert row["added_ms"] > 0 and len(row["raw"]["i_e2e"]) == 2
